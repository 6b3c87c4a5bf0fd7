"""Runs: a filterable table paged in SQL; open one run to see its chunks, scores, citations and cost."""

import math

import polars as pl
import streamlit as st

from analysis import explorer
from dashboards import data

st.title("Runs")
path, version, found = data.require_store()
a = data.assumptions()
options = data.run_filter_options(path, version)
keys = data.tag_keys(path, version)

f = st.columns(4)
api = f[0].selectbox("API", ["(any)", *options["api"]], key="runs_api")
model = f[1].selectbox("Model", ["(any)", *options["model"]], key="runs_model")
status = f[2].selectbox("Status", ["(any)", *options["status"]], key="runs_status")
run_id = f[3].text_input("Run id contains", key="runs_id")
g = st.columns(4)
tag_key = g[0].selectbox("Tag", ["(any)", *keys], key="runs_tag")
tag_value = g[1].text_input("Tag value", key="runs_tag_value")
sort = g[2].selectbox("Sort by", explorer.SORTABLE, key="runs_sort")
descending = g[3].checkbox("Descending", value=True, key="runs_desc")
file_search = g[3].checkbox("Only runs with file_search", key="runs_fs")


def _count(value: int | None) -> str:
    """A stored count as shown: ``—`` where the wire did not carry it (never 0)."""
    return "—" if value is None else f"{value:,}"


def _pick(value: str) -> str | None:
    return None if value == "(any)" else value


flt = explorer.RunFilter(api=_pick(api), model=_pick(model), status=_pick(status), tag_key=_pick(tag_key),
                         tag_value=tag_value or None, run_id_contains=run_id or None,
                         with_file_search=file_search, sort=sort, descending=descending)
page_size = 50
first, total = data.runs_page(path, version, a.price_overrides, flt, 0, page_size)
pages = max(1, math.ceil(total / page_size))
page = int(st.number_input(f"Page (of {pages:,})", min_value=1, max_value=pages, value=1,
                           key="runs_page")) - 1
rows = first if page == 0 else data.runs_page(path, version, a.price_overrides, flt, page, page_size)[0]
st.metric("Matching runs", f"{total:,}")
st.dataframe(rows, hide_index=True, key="runs_table", column_config={
    "cost_usd": st.column_config.NumberColumn("cost USD", format="$%.6f"),
    "started_at": st.column_config.DatetimeColumn("started (UTC)", format="YYYY-MM-DD HH:mm:ss")})

if rows.height:
    chosen = st.selectbox("Open a run", rows["run_id"].to_list(), key="runs_open")
    detail = data.run_detail(path, version, a.price_overrides, chosen)
    if detail is None:
        st.warning(f"Run {chosen} is no longer in the store.")
    else:
        st.subheader(f"Run {chosen}")
        run = detail.run
        m = st.columns(5)
        m[0].metric("Cost", data.usd(None if detail.cost.total is None else float(detail.cost.total), 6))
        m[1].metric("Input tokens", _count(run["input_tokens"]))
        m[2].metric("Output tokens", _count(run["output_tokens"]))
        m[3].metric("Chunks retrieved", _count(run["retrieved_chunks"]))
        # known when the run's results were recorded (a search that found nothing cites 0 chunks)
        known = detail.chunks.height or run["retrieved_chunks"] is not None
        m[4].metric("Chunks cited", _count(detail.cited_chunks if known else None))
        if detail.cost.total is None:
            st.warning(f"Unpriced: {detail.cost.reason}")
        else:
            st.caption(f"Priced as {detail.cost.priced_as} (prices from {detail.cost.price_from}).")
            meters = pl.DataFrame({"meter": list(detail.cost.meters),
                                   "usd": [float(v) for v in detail.cost.meters.values()]})
            st.dataframe(meters, hide_index=True, key="runs_meters",
                         column_config={"usd": st.column_config.NumberColumn("USD", format="$%.6f")})
        st.dataframe(detail.chunks, hide_index=True, key="runs_chunks")
        with st.expander("All stored fields"):
            st.json({k: str(v) if v is not None else None for k, v in run.items()})
