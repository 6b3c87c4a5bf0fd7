"""Overview: spend per day by model, meter or tag; tokens by type; runs by status; TTFT p50/p95."""

import altair as alt
import polars as pl
import streamlit as st

from analysis import explorer
from dashboards import data

st.title("Overview")
path, version, found = data.require_store()
a = data.assumptions()
keys = data.tag_keys(path, version)
choice = st.selectbox("Split by tag", ["(none)", *keys], key="ov_tag")
tag_key = None if choice == "(none)" else choice
view = data.overview(path, version, a.price_overrides, a.storage(), tag_key)
spend: explorer.Spend = view["spend"]
head: explorer.SpendHeadline = view["headline"]

c = st.columns(5)
c[0].metric("Runs", f"{found.runs:,}")
c[1].metric("Token and tool spend", data.usd(head.token_usd))
c[2].metric("Storage spend", data.usd(head.storage_usd))
c[3].metric("Total spend", data.usd(head.total_usd))
c[4].metric("Unpriced runs", f"{head.unpriced_runs:,}")
st.caption(f"{found.start} to {found.end} (UTC days, end exclusive). Prices: built-in table"
           + (" with the sidebar's overrides." if a.price_overrides.strip() else "."))
if spend.unpriced:
    st.warning("Unpriced runs are left out of spend: "
               + "; ".join(f"{n:,} × {reason}" for reason, n in sorted(spend.unpriced.items())))

options = ["model", "meter", "api"] + (["tag"] if tag_key else [])
by = st.radio("Spend per day by", options, key="ov_by", horizontal=True)
daily = explorer.spend_per_day(spend, by, view["storage"])
st.subheader(f"Spend per day by {tag_key if by == 'tag' else by}")
st.altair_chart(
    alt.Chart(daily).mark_bar().encode(
        x=alt.X("yearmonthdate(day):O", title="day (UTC)"), y=alt.Y("sum(usd):Q", title="USD"),
        color=alt.Color("series:N", title=tag_key if by == "tag" else by),
        tooltip=["day:T", "series:N", alt.Tooltip("sum(usd):Q", format="$.4f")]),
    width="stretch")

left, right = st.columns(2)
tokens = view["tokens"]
left.subheader("Tokens by type")
left.altair_chart(
    alt.Chart(tokens).mark_line(point=True).encode(
        x=alt.X("day:T", title="day (UTC)"), y=alt.Y("tokens:Q"), color="token_type:N",
        tooltip=["day:T", "token_type:N", alt.Tooltip("tokens:Q", format=",")]),
    width="stretch")
left.caption("cached_input and cache_write are parts of input; reasoning is a part of output.")
status = view["status"]
right.subheader("Runs by status" + (f" and {tag_key}" if tag_key else ""))
right.altair_chart(
    alt.Chart(status).mark_bar().encode(
        x=alt.X("yearmonthdate(day):O", title="day (UTC)"), y=alt.Y("sum(runs):Q", title="runs"),
        color="status:N",
        column=alt.Column("tag:N", title=tag_key) if tag_key else alt.Undefined,
        tooltip=["day:T", "status:N", "sum(runs):Q"]),
    width="content" if tag_key else "stretch")

ttft = view["ttft"].unpivot(index=["day", "tag"], on=["p50", "p95"], variable_name="quantile",
                            value_name="seconds")
if tag_key:
    ttft = ttft.with_columns((pl.col("quantile") + " · " + pl.col("tag").fill_null("")).alias("quantile"))
st.subheader("Time to first token, p50 and p95")
st.altair_chart(
    alt.Chart(ttft).mark_line(point=True).encode(
        x=alt.X("day:T", title="day (UTC)"), y=alt.Y("seconds:Q", title="seconds"), color="quantile:N",
        tooltip=["day:T", "quantile:N", alt.Tooltip("seconds:Q", format=".3f")]),
    width="stretch")
