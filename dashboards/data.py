"""The dashboard's access to the store: cached, read-only queries and the sidebar's assumptions.

The store path comes from ``RUNMETER_DB`` (``runmeter dashboard --db`` sets it for the Streamlit
process). Each load opens the store read-only with :func:`collector.store.reader.open_reader` (which waits
out a recorder's short write batches) and closes it at once, so recorders keep writing while the page is
open. Results are cached with ``st.cache_data`` keyed on the path, the file's modification time and the
assumptions: a rerun that changes only a widget costs no query, and new writes are picked up on the next
rerun. Every number is computed in :mod:`analysis`; this module only fetches and caches.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import streamlit as st

from analysis import explorer
from analysis.prices import PriceFileError, PriceTable, load_price_table, price_file_from_env
from analysis.reconcile import Bill, Reconciliation, reconcile, recorded_from_store
from analysis.storage import (
    FreePer,
    StorageAssumptions,
    Unit,
    WhatIf,
    costs_frame,
    daily_gb_days,
    daily_storage_costs,
    first_snapshot_at,
    no_forecast_reason,
    storage_forecast,
    whatif_delete_idle,
    whatif_expires_after,
)
from analysis.threads import ThreadGrowth, thread_growth
from analysis.totals import storage_total
from analysis.whatif import MAX_N, WhatIfReport, whatif
from collector import settings
from collector.store.migrations import StoreError
from collector.store.reader import open_reader

MAKE_DATA = ("Record some runs with `runmeter demo` (a simulated workload), or point `--db` at a recorder's "
             "store.")
THRESHOLDS = tuple(round(i / 100, 2) for i in range(0, 100))
"""The score thresholds the what-if sweeps (the what-if's 0.01 score bins: each is exact)."""


def db_path() -> str:
    """The store the dashboard shows (``RUNMETER_DB``, default ``./runmeter.duckdb``)."""
    return settings.env_str(settings.RUNMETER_DB, "runmeter.duckdb")


def store_version(path: str) -> int:
    """The file's modification time in ns (-1 when missing): part of every cache key."""
    try:
        return Path(path).stat().st_mtime_ns
    except OSError:
        return -1


@contextmanager
def reader(path: str) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection to the store, closed on exit."""
    con = open_reader(path, timeout=10.0)
    try:
        yield con
    finally:
        con.close()


# -------------------------------------------------------------------------------------- assumptions

@dataclass(frozen=True, slots=True)
class Assumptions:
    """What the sidebar lets a person change; hashable, so it can key caches."""

    price_per_gb_day: float = 0.10
    free_gb: float = 1.0
    unit: str = "GiB"
    free_per: str = "day"
    price_overrides: str = ""

    def storage(self) -> StorageAssumptions:
        """As :class:`analysis.storage.StorageAssumptions` (exact decimals of what was typed)."""
        unit: Unit = "GB" if self.unit == "GB" else "GiB"
        per: FreePer = "hour" if self.free_per == "hour" else "day"
        return StorageAssumptions(Decimal(str(self.price_per_gb_day)), Decimal(str(self.free_gb)), unit, per)


_DEFAULTS = Assumptions()
_WIDGETS = {"a_price_per_gb_day": _DEFAULTS.price_per_gb_day, "a_free_gb": _DEFAULTS.free_gb,
            "a_unit": _DEFAULTS.unit, "a_free_per": _DEFAULTS.free_per, "a_price_overrides": ""}
_KEPT = "_kept_"


def sidebar() -> Assumptions:
    """Render the assumptions in the sidebar and return them (every page calls this).

    A widget drawn by another page is another widget to Streamlit, which would start it at its default;
    so each change is also kept under a plain key (``on_change``) and put back before the widgets are drawn.
    """
    state = st.session_state
    for key, default in _WIDGETS.items():
        state[key] = state.get(_KEPT + key, default)
    side = st.sidebar
    side.caption(f"Store: `{db_path()}`")
    side.subheader("Assumptions")
    side.number_input("Storage price (USD per GB-day)", min_value=0.0, step=0.01, format="%.4f",
                      key="a_price_per_gb_day", on_change=_keep, args=("a_price_per_gb_day",))
    side.number_input("Free storage (GB, whole organization)", min_value=0.0, step=0.5, key="a_free_gb",
                      on_change=_keep, args=("a_free_gb",))
    side.selectbox("GB unit", ("GiB", "GB"), key="a_unit", help="GiB = 2^30 bytes, GB = 10^9 bytes",
                   on_change=_keep, args=("a_unit",))
    side.selectbox("Free GB applied per", ("day", "hour"), key="a_free_per", on_change=_keep,
                   args=("a_free_per",))
    side.text_area(
        "Price-table overrides (JSON, the RUNMETER_PRICES format)", key="a_price_overrides", height=120,
        placeholder='{"models": {"gpt-4o": [{"from": "2024-08-06", "input": 2.5, "output": 10}]}}',
        on_change=_keep, args=("a_price_overrides",),
    )
    a = assumptions()
    problem = price_problem(a.price_overrides)
    if problem:
        side.error(f"{problem} — using the price table without these overrides.")
    return a


def _keep(key: str) -> None:
    st.session_state[_KEPT + key] = st.session_state[key]


def assumptions() -> Assumptions:
    """The current assumptions (as last drawn in the sidebar; the defaults before that)."""
    s = st.session_state
    return Assumptions(
        float(s.get("a_price_per_gb_day", _DEFAULTS.price_per_gb_day)),
        float(s.get("a_free_gb", _DEFAULTS.free_gb)),
        str(s.get("a_unit", _DEFAULTS.unit)),
        str(s.get("a_free_per", _DEFAULTS.free_per)),
        str(s.get("a_price_overrides", "") or ""),
    )


@st.cache_resource(show_spinner=False)
def _base_prices() -> PriceTable:
    return load_price_table(price_file_from_env(None, os.environ))


def price_problem(overrides: str) -> str | None:
    """Why the overrides cannot be used, or ``None``."""
    try:
        explorer.price_table_with_overrides(_base_prices(), overrides)
    except PriceFileError as exc:
        return str(exc)
    return None


def prices(overrides: str) -> PriceTable:
    """The price table with the sidebar's overrides (without them when they are invalid)."""
    try:
        return explorer.price_table_with_overrides(_base_prices(), overrides)
    except PriceFileError:
        return _base_prices()


# ----------------------------------------------------------------------------------------- the store

@st.cache_data(show_spinner=False, max_entries=16)
def span(path: str, version: int) -> explorer.StoreSpan:
    """What the store holds (cached)."""
    with reader(path) as con:
        return explorer.store_span(con)


def require_store() -> tuple[str, int, explorer.StoreSpan]:
    """Draw the sidebar, then the store's path, version and span; stops the page with a message when there
    is nothing to show."""
    sidebar()
    path = db_path()
    version = store_version(path)
    if version < 0:
        st.info(f"There is no runmeter store at `{path}` yet. {MAKE_DATA}")
        st.stop()
    try:
        found = span(path, version)
    except StoreError as exc:
        st.warning(f"This store cannot be shown: {exc}. {MAKE_DATA}")
        st.stop()
    if found.empty:
        st.info(f"The store at `{path}` has no runs or vector-store snapshots yet. {MAKE_DATA}")
        st.stop()
    return path, version, found


def range_of(found: explorer.StoreSpan) -> tuple[date, date]:
    """The days ``[start, end)`` a page covers: every day with runs or snapshots."""
    start, end = found.start, found.end
    assert start is not None and end is not None
    return start, end


def as_of(found: explorer.StoreSpan) -> datetime:
    """The store's "now": its last snapshot, else the end of its last day."""
    if found.last_snapshot is not None:
        return found.last_snapshot.replace(tzinfo=None)
    return datetime.combine(range_of(found)[1], datetime.min.time())


# ------------------------------------------------------------------------------------------- loaders

@st.cache_data(show_spinner="Reading the store…", max_entries=16)
def overview(path: str, version: int, overrides: str, storage: StorageAssumptions,
             tag_key: str | None) -> dict[str, Any]:
    """Spend (with its headline and storage spend), tokens, statuses and TTFT per day; spend, statuses and
    TTFT optionally split by a tag key."""
    table = prices(overrides)
    with reader(path) as con:
        found = explorer.store_span(con)
        spend = explorer.spend_by_day(con, table, tag_key=tag_key)
        start, end = range_of(found)
        daily = daily_storage_costs(con, start, end, until=as_of(found), assumptions=storage)
        return {
            "spend": spend,
            "headline": explorer.spend_headline(spend, storage_total(daily)),
            "storage": costs_frame(daily),
            "tokens": explorer.tokens_by_day(con),
            "status": explorer.runs_by_status(con, tag_key=tag_key),
            "ttft": explorer.ttft_by_day(con, tag_key=tag_key),
            "tag_keys": explorer.tag_keys(con),
        }


@st.cache_data(show_spinner=False, max_entries=16)
def tag_keys(path: str, version: int) -> list[str]:
    """Every tag key in the store."""
    with reader(path) as con:
        return explorer.tag_keys(con)


@dataclass(frozen=True, slots=True)
class StorageView:
    """What the storage page shows."""

    gb: pl.DataFrame
    stored_now_gb: float
    costs: pl.DataFrame
    spend_usd: float
    """:func:`analysis.totals.storage_total` of ``costs``."""
    forecast: pl.DataFrame
    """The forecast days (``day, gb, cost_usd``); empty when there is no forecast."""
    forecast_total_usd: float | None
    """``None`` when there is no forecast (see ``forecast_reason``)."""
    forecast_method: str | None
    delete_idle: WhatIf
    expires_after: WhatIf
    forecast_reason: str | None = None
    """Why there is no forecast (:func:`analysis.storage.no_forecast_reason`), or ``None``."""


@st.cache_data(show_spinner="Integrating storage snapshots…", max_entries=16)
def storage(path: str, version: int, a: StorageAssumptions, idle_days: int, expire_days: int) -> StorageView:
    """Storage GB, cost, forecast and what-ifs over the store's days under ``a``."""
    with reader(path) as con:
        found = explorer.store_span(con)
        start, end = range_of(found)
        now = as_of(found)
        gb = daily_gb_days(con, start, end, until=now, assumptions=a)
        now_gb = explorer.stored_now_gb(con, now, a)
        daily = daily_storage_costs(con, start, end, until=now, assumptions=a)
        fc = storage_forecast(con, now.date(), until=now, assumptions=a)
        reason = None if fc is not None else no_forecast_reason(now.date(), first_snapshot_at(con), now)
        points = pl.DataFrame(
            [{"day": p.day, "gb": p.gb, "cost_usd": p.cost_usd} for p in (fc.points if fc else ())],
            schema={"day": pl.Date, "gb": pl.Float64, "cost_usd": pl.Float64},
        )
        idle = whatif_delete_idle(con, idle_days, start, end, as_of=now, assumptions=a)
        expire = whatif_expires_after(con, expire_days, start, end, as_of=now, assumptions=a)
    return StorageView(gb, now_gb, costs_frame(daily), float(storage_total(daily).cost_usd), points,
                       None if fc is None else fc.total_cost_usd, None if fc is None else fc.method,
                       idle, expire, reason)


@st.cache_data(show_spinner="Sweeping max_num_results and score thresholds…", max_entries=8)
def retrieval_whatif(path: str, version: int, overrides: str) -> WhatIfReport:
    """The what-if sweep over every ``max_num_results`` 1–50 and every threshold in :data:`THRESHOLDS`."""
    with reader(path) as con:
        return whatif(con, prices(overrides), max_num_results=list(range(1, MAX_N + 1)),
                      score_thresholds=THRESHOLDS)


@dataclass(frozen=True, slots=True)
class ThreadsView:
    """What the threads page shows: :func:`analysis.threads.thread_growth` and two reshapings of it."""

    growth: ThreadGrowth
    per_turn: pl.DataFrame
    """:func:`analysis.explorer.thread_turns` of ``growth``."""
    top: pl.DataFrame
    """:func:`analysis.explorer.thread_table` of ``growth``."""


@st.cache_data(show_spinner="Reading threads…", max_entries=8)
def threads(path: str, version: int, overrides: str, max_turns: int) -> ThreadsView:
    """Input growth and history cost per thread turn, and the threads with the most history (the figures
    of ``runmeter whatif --threads``)."""
    with reader(path) as con:
        growth = thread_growth(con, prices(overrides))
    return ThreadsView(growth, explorer.thread_turns(growth, max_turns=max_turns),
                       explorer.thread_table(growth))


@st.cache_data(show_spinner=False, max_entries=8)
def run_filter_options(path: str, version: int) -> dict[str, list[str]]:
    """The choices of the runs page's filters."""
    with reader(path) as con:
        return explorer.run_filter_options(con)


@st.cache_data(show_spinner=False, max_entries=64)
def runs_page(path: str, version: int, overrides: str, flt: explorer.RunFilter, page: int,
              page_size: int) -> tuple[pl.DataFrame, int]:
    """One page of the runs table and the number of matching runs."""
    with reader(path) as con:
        return explorer.runs_page(con, prices(overrides), flt, page=page, page_size=page_size)


@st.cache_data(show_spinner=False, max_entries=64)
def run_detail(path: str, version: int, overrides: str, run_id: str) -> explorer.RunDetail | None:
    """One run with its cost and chunks."""
    with reader(path) as con:
        return explorer.run_detail(con, prices(overrides), run_id)


@dataclass(frozen=True, slots=True)
class ReconcileView:
    """The reconciliation and where the billed side came from."""

    result: Reconciliation
    billed: bool
    note: str


def _fetch_bill(start: date, end: date) -> tuple[Bill, bool, str]:
    if not os.environ.get(settings.OPENAI_ADMIN_KEY):
        return Bill(), False, (
            f"{settings.OPENAI_ADMIN_KEY} is not set, so only runmeter's recorded numbers are shown. Set it "
            f"(and {settings.OPENAI_BASE_URL} for a non-default endpoint) before `runmeter dashboard` to "
            "compare them with the organization Costs and Usage APIs."
        )
    from collector.reconcile_client import BillFetcher, ReconcileError, admin_client

    try:
        return BillFetcher(admin_client(os.environ)).fetch(start, end), True, ""
    except ReconcileError as exc:
        return Bill(), False, f"The bill could not be read ({exc}); only recorded numbers are shown."


def bill_source() -> str:
    """Which bill the reconciliation reads (part of its cache key; the key itself only as a digest)."""
    key = os.environ.get(settings.OPENAI_ADMIN_KEY, "")
    if not key:
        return ""
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"{os.environ.get(settings.OPENAI_BASE_URL, '')}#{digest}"


@st.cache_data(show_spinner="Reconciling…", max_entries=8)
def reconciliation(path: str, version: int, overrides: str, source: str,
                   storage: StorageAssumptions | None = None) -> ReconcileView:
    """Recorded against billed over the store's days (recorded only without an admin key); ``source``
    is :func:`bill_source`; ``storage`` prices the recorded storage (the sidebar's assumptions)."""
    table = prices(overrides)
    with reader(path) as con:
        start, end = range_of(explorer.store_span(con))
        recorded = recorded_from_store(con, table, start, end, storage)
    bill, billed, note = _fetch_bill(start, end)
    return ReconcileView(reconcile(recorded, bill, table, start, end), billed, note)


def usd(value: float | None, places: int = 2) -> str:
    """A dollar amount as shown on every page (``—`` for none)."""
    if value is None:
        return "—"
    return f"-${-value:,.{places}f}" if value < 0 else f"${value:,.{places}f}"
