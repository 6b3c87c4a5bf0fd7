"""Reconciliation: what runmeter recorded against what the organization was billed, per day, with drift."""

import altair as alt
import polars as pl
import streamlit as st

from analysis import explorer
from dashboards import data

st.title("Reconciliation")
path, version, found = data.require_store()
a = data.assumptions()
view = data.reconciliation(path, version, a.price_overrides, data.bill_source(), a.storage())
if view.note:
    st.info(view.note)
s = a.storage()
st.caption(f"Recorded storage is priced with the sidebar's assumptions: ${s.price_per_gb_day} per {s.unit} "
           f"per day, the first {s.free_gb} {s.unit} free per {s.free_per}.")
per_day = explorer.reconciliation_by_day(view.result)

totals = explorer.reconciliation_totals(per_day, billed=view.billed)

c = st.columns(3)
c[0].metric("Recorded", data.usd(totals.recorded_usd))
c[1].metric("Billed", data.usd(totals.billed_usd) if view.billed else "not fetched")
c[2].metric("Drift (billed − recorded)", data.usd(totals.drift_usd))

st.subheader("Per day")
long = per_day.unpivot(index=["day"], on=["recorded_usd", "billed_usd"], variable_name="side",
                       value_name="usd").drop_nulls("usd")
st.altair_chart(alt.Chart(long).mark_bar().encode(
    x=alt.X("yearmonthdate(day):O", title="day (UTC)"), xOffset="side:N", y=alt.Y("usd:Q", title="USD"),
    color="side:N",
    tooltip=["day:T", "side:N", alt.Tooltip("usd:Q", format="$.4f")]), width="stretch")
st.dataframe(per_day if view.billed else per_day.select("day", "recorded_usd", "unpriced_lines"),
             hide_index=True, key="rc_days", column_config={
    "day": st.column_config.DateColumn("day", format="YYYY-MM-DD"),
    "recorded_usd": st.column_config.NumberColumn("recorded", format="$%.4f"),
    "billed_usd": st.column_config.NumberColumn("billed", format="$%.4f"),
    "drift_usd": st.column_config.NumberColumn("drift", format="$%.4f"),
    "drift_pct": st.column_config.NumberColumn("drift %", format="%.2f%%")})

st.subheader("Line items")
lines = pl.DataFrame(
    [{"day": r.day, "line_item": r.line_item, "recorded_usd": r.recorded_usd, "billed_usd": r.billed_usd,
      "drift_usd": r.drift_usd, "explanation": r.explanation} for r in view.result.costs],
    schema={"day": pl.Date, "line_item": pl.String, "recorded_usd": pl.Float64, "billed_usd": pl.Float64,
            "drift_usd": pl.Float64, "explanation": pl.String})
if not view.billed:
    lines = lines.select("day", "line_item", "recorded_usd")
st.dataframe(lines, hide_index=True, key="rc_lines",
             column_config={"day": st.column_config.DateColumn("day", format="YYYY-MM-DD")})
if view.billed and view.result.counts:
    st.subheader("Tokens and calls (must match exactly)")
    counts = pl.DataFrame([{"day": r.day, "model": r.model, "measure": r.measure, "recorded": r.recorded,
                            "billed": r.billed, "drift": r.drift, "explanation": r.explanation}
                           for r in view.result.counts])
    st.dataframe(counts, hide_index=True, key="rc_counts")
