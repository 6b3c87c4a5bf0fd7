"""Storage: GB per vector store against the free tier, cost per day, the 30-day forecast and what-ifs."""

import altair as alt
import polars as pl
import streamlit as st

from dashboards import data

st.title("Vector-store storage")
path, version, found = data.require_store()
if found.snapshots == 0:
    st.info("The store has runs but no vector-store snapshots, so storage cannot be shown. "
            "Snapshots are recorded by `runmeter demo` and by the storage poller.")
    st.stop()
a = data.assumptions()
cols = st.columns(2)
idle_days = int(cols[0].number_input("What-if: delete stores idle more than (days)", min_value=1,
                                     max_value=365, value=7, key="st_idle"))
expire_days = int(cols[1].number_input("What-if: every store has expires_after (days)", min_value=1,
                                       max_value=365, value=7, key="st_expire"))
view = data.storage(path, version, a.storage(), idle_days, expire_days)

c = st.columns(4)
c[0].metric(f"Stored now ({a.unit})", f"{view.stored_now_gb:,.3f}", help="At the last snapshot")
c[1].metric("Storage spend", data.usd(view.spend_usd))
if view.forecast_reason is None:
    c[2].metric("Forecast, next 30 days", data.usd(view.forecast_total_usd))
else:
    c[2].metric("Forecast, next 30 days", "not yet", help=view.forecast_reason)
c[3].metric(f"Free allowance ({a.unit})", f"{a.free_gb:g}")

st.subheader(f"{a.unit} per store per day, against the free tier")
bars = alt.Chart(view.gb).mark_area().encode(
    x=alt.X("day:T", title="day (UTC)"), y=alt.Y("gb_days:Q", stack=True, title=f"mean {a.unit} held"),
    color=alt.Color("vector_store_id:N", title="vector store"),
    tooltip=["day:T", "vector_store_id:N", alt.Tooltip("gb_days:Q", format=".4f")])
free = alt.Chart(pl.DataFrame({"free": [a.free_gb]})).mark_rule(color="red", strokeDash=[6, 3]).encode(
    y="free:Q")
st.altair_chart(bars + free, width="stretch")
st.caption(f"Red line: the free {a.free_gb:g} {a.unit}, applied once to the whole organization per "
           f"{a.free_per}.")

left, right = st.columns(2)
left.subheader("Cost per day")
left.altair_chart(alt.Chart(view.costs).mark_bar().encode(
    x=alt.X("yearmonthdate(day):O", title="day (UTC)"), y=alt.Y("cost_usd:Q", title="USD"),
    tooltip=["day:T", alt.Tooltip("cost_usd:Q", format="$.4f"),
             alt.Tooltip("billable_gb_days:Q", format=".4f")]),
    width="stretch")
right.subheader("30-day forecast")
if view.forecast_reason is not None:
    right.info(f"No forecast yet: {view.forecast_reason}.")
else:
    history = view.costs.select("day", pl.col("gb_days").alias("gb"), pl.lit("observed").alias("series"))
    ahead = view.forecast.select("day", "gb", pl.lit("forecast").alias("series"))
    right.altair_chart(alt.Chart(pl.concat([history, ahead])).mark_line(point=True).encode(
        x=alt.X("day:T", title="day (UTC)"), y=alt.Y("gb:Q", title=a.unit), color="series:N",
        tooltip=["day:T", "series:N", alt.Tooltip("gb:Q", format=".4f")]), width="stretch")
    right.caption(f"Method: {view.forecast_method}.")

st.subheader("What-ifs")
for whatif in (view.delete_idle, view.expires_after):
    w = st.container(border=True)
    w.markdown(f"**{whatif.scenario}**")
    m = w.columns(3)
    m[0].metric("Saved over the store's days", data.usd(float(whatif.savings_usd), 4))
    m[1].metric("Saved per day now", data.usd(float(whatif.savings_last_day_usd), 4))
    m[2].metric("Stores affected", f"{len(whatif.stores)}")
    if whatif.stores:
        w.caption("Stores: " + ", ".join(whatif.stores))
