"""Threads: how input grows with each turn, and what re-reading thread history costs.

Every figure is :func:`analysis.threads.thread_growth`'s, the same as ``runmeter whatif --threads``.
"""

import altair as alt
import streamlit as st

from dashboards import data

st.title("Threads")
path, version, found = data.require_store()
a = data.assumptions()
max_turns = int(st.number_input("Group turns beyond", min_value=2, max_value=100, value=20, key="th_max"))
view = data.threads(path, version, a.price_overrides, max_turns)
growth = view.growth
if growth.all_threads == 0:
    st.info("No run in the store belongs to a thread (Assistants runs do). " + data.MAKE_DATA)
    st.stop()

c = st.columns(5)
c[0].metric("Threads", f"{growth.all_threads:,}")
c[1].metric("Threads with 2+ turns", f"{growth.threads:,}")
c[2].metric("History tokens", f"{growth.history_tokens:,.0f}")
c[3].metric("History share", "—" if growth.history_share is None else f"{growth.history_share:.1%}",
            help="History tokens over the input tokens of the threads with 2+ turns")
c[4].metric("Thread history cost", data.usd(growth.history_usd, 4), help="What not truncating costs")
st.caption(
    "History tokens of turn k: its input without the retrieved chunks (the billing fit's share), minus the "
    "first turn's input scaled by the model steps (every step re-reads the thread), priced at the run "
    f"group's mean input price per token. Same figures as `runmeter whatif --threads`. Turns past "
    f"{max_turns} are counted as turn {max_turns}.")
if growth.threads == 0:
    st.info("No thread has two or more recorded turns yet, so none has history.")
    st.stop()

per_turn = view.per_turn.unpivot(index=["turn"], on=["input_tokens_mean", "history_tokens_mean"],
                                 variable_name="tokens", value_name="mean")
left, right = st.columns(2)
left.subheader("Input tokens per turn")
left.altair_chart(alt.Chart(per_turn).mark_line(point=True).encode(
    x=alt.X("turn:O", title="turn"), y=alt.Y("mean:Q", title="mean tokens per run"), color="tokens:N",
    tooltip=["turn:O", "tokens:N", alt.Tooltip("mean:Q", format=",.1f")]), width="stretch")
right.subheader("History cost per turn")
right.altair_chart(alt.Chart(view.per_turn).mark_bar().encode(
    x=alt.X("turn:O", title="turn"), y=alt.Y("history_usd:Q", title="USD"),
    tooltip=["turn:O", "runs:Q", alt.Tooltip("history_usd:Q", format="$.4f")]), width="stretch")
st.dataframe(view.per_turn, hide_index=True, key="th_table", column_config={
    "history_usd": st.column_config.NumberColumn("history USD", format="$%.4f"),
    "input_tokens_mean": st.column_config.NumberColumn("input tokens (mean)", format="%.1f"),
    "history_tokens_mean": st.column_config.NumberColumn("history tokens (mean)", format="%.1f")})

st.subheader(f"The {len(growth.top_threads)} threads with the most history")
st.dataframe(view.top, hide_index=True, key="th_top", column_config={
    "history_usd": st.column_config.NumberColumn("history USD", format="$%.4f"),
    "input_tokens": st.column_config.NumberColumn("input tokens", format="%.0f"),
    "history_tokens": st.column_config.NumberColumn("history tokens", format="%.1f")})
