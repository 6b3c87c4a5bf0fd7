"""Retrieval what-if: what a lower max_num_results or a higher score threshold would cost and lose."""

import altair as alt
import polars as pl
import streamlit as st

from analysis import explorer
from analysis.totals import baseline_cost_per_1k_runs
from dashboards import data

st.title("Retrieval what-if")
path, version, found = data.require_store()
a = data.assumptions()
report = data.retrieval_whatif(path, version, a.price_overrides)
base = report.baseline
if base.file_search_runs == 0:
    st.info("No run in the store used file_search, so there is nothing to project. " + data.MAKE_DATA)
    st.stop()
current = base.current_max_num_results or 20

c = st.columns(4)
c[0].metric("Current max_num_results (highest recorded)", f"{current}")
c[1].metric("Cost per 1,000 runs now", data.usd(baseline_cost_per_1k_runs(base), 4))
c[2].metric("Runs with file_search", f"{base.file_search_runs:,}")
c[3].metric("Runs that cited a result", f"{base.runs_with_citations:,}")

n = st.slider("max_num_results", min_value=1, max_value=50, value=current, key="wi_n")
row = explorer.whatif_at(report, max_num_results=n)
assert row is not None


def show(row_label: str, r: object) -> None:
    """Metrics of one scenario row; figures that need results never retrieved are shown as unknown."""
    assert r is not None
    from analysis.whatif import WhatIfRow

    assert isinstance(r, WhatIfRow)
    known = explorer.is_known(r)
    m = st.columns(5)
    cost = data.usd(r.cost_per_1k_runs_usd, 4)
    m[0].metric(f"Projected cost per 1,000 runs ({row_label})", cost if known else f"unknown (≥ {cost})")
    month = data.usd(r.cost_per_month_usd)
    m[1].metric("Projected per month", month if known else f"unknown (≥ {month})")
    tokens = f"{r.input_tokens_per_run:,.1f}" if r.input_tokens_per_run is not None else "—"
    m[2].metric("Input tokens per run", tokens if known else f"unknown (≥ {tokens})")
    recall = f"{r.citation_recall:.1%}" if r.citation_recall is not None else "—"
    m[3].metric("Citation recall", recall if known else "unknown")
    lost = explorer.runs_losing_all_cited(report, r)
    m[4].metric("Runs losing every cited chunk", "—" if lost is None else f"{lost:,}")
    for note in r.notes:
        st.caption(note)


show(f"N = {n}", row)

curve = explorer.whatif_curve(report).with_columns(
    pl.when(pl.col("known")).then(pl.lit("known")).otherwise(pl.lit("unknown (lower bound)")).alias("figure"))
st.subheader("Cost and tokens across max_num_results")
marks = pl.DataFrame({"max_num_results": [current, n], "mark": ["current setting", "selected"]})
rules = alt.Chart(marks).mark_rule(strokeDash=[4, 3]).encode(x="max_num_results:Q", color=alt.Color(
    "mark:N", scale=alt.Scale(range=["#d62728", "#2ca02c"]), title=""))
cost_chart = alt.Chart(curve).mark_line(point=True).encode(
    x=alt.X("max_num_results:Q", title="max_num_results"),
    y=alt.Y("cost_per_1k_runs_usd:Q", title="USD per 1,000 runs", scale=alt.Scale(zero=False)),
    shape=alt.Shape("figure:N", title=""),
    tooltip=["max_num_results:Q", alt.Tooltip("cost_per_1k_runs_usd:Q", format="$.4f"), "bound:N",
             alt.Tooltip("citation_recall:Q", format=".1%")])
token_chart = alt.Chart(curve).mark_line(point=True, color="#9467bd").encode(
    x=alt.X("max_num_results:Q", title="max_num_results"),
    y=alt.Y("input_tokens_per_run:Q", title="input tokens per run", scale=alt.Scale(zero=False)),
    shape=alt.Shape("figure:N", title=""))
left, right = st.columns(2)
left.altair_chart(cost_chart + rules, width="stretch")
right.altair_chart(token_chart + rules, width="stretch")
st.caption("Points above the highest recorded setting need results that were never retrieved: they are "
           "lower bounds, shown as unknown.")

st.subheader("Score threshold")
t = st.select_slider("score_threshold (results scoring at or below it are dropped)", options=data.THRESHOLDS,
                     value=0.0, key="wi_t")
t_row = explorer.whatif_at(report, score_threshold=t)
show(f"threshold {t:.2f}", t_row)
