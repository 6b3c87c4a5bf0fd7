"""The queries behind the cost explorer (``runmeter dashboard``): spend, tokens, TTFT, runs, threads.

Every function takes an open (read-only) store connection; aggregation runs in SQL and only small
results come back, so a page stays fast on a store of a million runs.

Spend is priced per group, not per run: runs are summed per (UTC day, api, model, tag value) and priced by
the grouped-pricing engine :func:`analysis.cost_by.price_groups` (shared with ``runmeter cost`` and the
reconciliation), so a group's meters are exactly the sum of its runs' meters (the same numbers
:func:`analysis.cost.price_run` gives run by run), and a run ``price_run`` would leave unpriced is counted
unpriced with its reason.

Thread history is :func:`analysis.threads.thread_growth`'s (one formula for every face, explained there);
:func:`thread_turns` and :func:`thread_table` only reshape its result for the threads page.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import duckdb
import polars as pl

from analysis.cost import METERS, RunCost, Usage, price_run
from analysis.cost_by import price_groups
from analysis.prices import PriceFileError, PriceTable, builtin_price_table, parse_price_table
from analysis.reconcile import Reconciliation
from analysis.snapshots import held_gb
from analysis.storage import StorageAssumptions
from analysis.threads import ThreadGrowth
from analysis.totals import StorageTotal
from analysis.whatif import WhatIfReport, WhatIfRow

DAY_SQL = "CAST(started_at AT TIME ZONE 'UTC' AS DATE)"
TOKEN_TYPES = ("input", "cached_input", "cache_write", "output", "reasoning")
STORAGE_METER = "storage"
"""The meter name of vector-store storage in the spend frames."""


# ------------------------------------------------------------------------------------------ prices

def price_table_with_overrides(base: PriceTable, overrides: str) -> PriceTable:
    """``base`` with a price-file fragment (JSON, the ``RUNMETER_PRICES`` format) laid over it.

    An empty text leaves ``base`` as it is. Raises :class:`~analysis.prices.PriceFileError` naming the
    key when the text is not a valid price file.
    """
    if not overrides.strip():
        return base
    try:
        data = json.loads(overrides, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise PriceFileError(f"price overrides: not valid JSON: {exc.msg} (line {exc.lineno})") from None
    return base.merged(parse_price_table(data, "price overrides", require_from=False))


def default_price_table() -> PriceTable:
    """The built-in price table (the dashboard's starting point before overrides)."""
    return builtin_price_table()


# ------------------------------------------------------------------------------------------- store

@dataclass(frozen=True, slots=True)
class StoreSpan:
    """What the store holds, for headers and default ranges."""

    runs: int
    first_day: date | None
    last_day: date | None
    snapshots: int
    last_snapshot: datetime | None
    chunks: int
    first_snapshot: datetime | None = None

    @property
    def empty(self) -> bool:
        """Whether there is nothing to show (no runs and no snapshots)."""
        return self.runs == 0 and self.snapshots == 0

    @property
    def end(self) -> date | None:
        """The day after the last day with runs or snapshots (an exclusive range end)."""
        days = [d for d in (self.last_day, self.last_snapshot.date() if self.last_snapshot else None) if d]
        return max(days) + timedelta(days=1) if days else None

    @property
    def start(self) -> date | None:
        """The first day with runs or snapshots."""
        snap = self.first_snapshot or self.last_snapshot
        days = [d for d in (self.first_day, snap.date() if snap else None) if d]
        return min(days) if days else None


def store_span(con: duckdb.DuckDBPyConnection) -> StoreSpan:
    """Counts and the day range of runs, snapshots and chunks."""
    row = con.execute(
        f"""
        SELECT (SELECT count(*) FROM runs), (SELECT min({DAY_SQL}) FROM runs),
               (SELECT max({DAY_SQL}) FROM runs), (SELECT count(*) FROM vector_store_snapshots),
               (SELECT max(observed_at) AT TIME ZONE 'UTC' FROM vector_store_snapshots),
               (SELECT count(*) FROM retrieved_chunks),
               (SELECT min(observed_at) AT TIME ZONE 'UTC' FROM vector_store_snapshots)
        """
    ).fetchone()
    assert row is not None
    runs, first, last, snaps, last_snap, chunks, first_snap = row
    return StoreSpan(int(runs), first, last, int(snaps), last_snap, int(chunks), first_snap)


def tag_keys(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Every tag key used by any run, sorted."""
    rows = con.execute("SELECT DISTINCT unnest(map_keys(tags)) AS k FROM runs ORDER BY k").fetchall()
    return [r[0] for r in rows if r[0] is not None]


UNTAGGED = "(untagged)"
"""The tag value of a run without the chosen tag key."""


def _tag_expr(tag_key: str | None) -> tuple[str, list[Any]]:
    if tag_key is None:
        return "NULL::VARCHAR", []
    return f"coalesce(tags[?], '{UNTAGGED}')", [tag_key]


def stored_now_gb(con: duckdb.DuckDBPyConnection, as_of: datetime, assumptions: StorageAssumptions) -> float:
    """GB held at ``as_of`` (:func:`analysis.snapshots.held_gb`: each store's latest snapshot up to then,
    unless expired, deleted or past its ``expires_at``)."""
    return held_gb(con, as_of, assumptions)


# ------------------------------------------------------------------------------------------- spend

@dataclass(frozen=True, slots=True)
class Spend:
    """Spend per UTC day, split by model, meter and (optionally) a tag's value."""

    meters: pl.DataFrame
    """Long frame: ``day, api, model, tag, meter, usd`` (one row per group and meter; priced runs only)."""
    runs: pl.DataFrame
    """``day, api, model, tag, runs, priced_runs``."""
    unpriced: Mapping[str, int] = field(default_factory=dict)
    """Reason -> runs left unpriced for it."""

    @property
    def total_usd(self) -> float:
        """The spend of every priced run."""
        return float(self.meters["usd"].sum()) if self.meters.height else 0.0


def spend_by_day(con: duckdb.DuckDBPyConnection, prices: PriceTable, *, tag_key: str | None = None) -> Spend:
    """Token and file_search spend per UTC day by api, model, meter and the value of ``tag_key``.

    Meters are :data:`analysis.cost.METERS`; storage is not per run (see :func:`storage_spend`).
    """
    by = ["day", "api", "model", *([f"tag:{tag_key}"] if tag_key is not None else [])]
    meter_rows: dict[str, list[Any]] = {k: [] for k in ("day", "api", "model", "tag", "meter", "usd")}
    run_rows: dict[tuple[Any, ...], list[int]] = {}
    unpriced: dict[str, int] = {}
    for g in price_groups(con, prices, by, no_tag=UNTAGGED):
        key = (*g.key, None) if tag_key is None else g.key
        counts = run_rows.setdefault(key, [0, 0])
        counts[0] += g.runs
        if g.reason is not None:
            unpriced[g.reason] = unpriced.get(g.reason, 0) + g.runs
            continue
        counts[1] += g.runs
        for meter in METERS:
            for col, value in zip(("day", "api", "model", "tag", "meter", "usd"),
                                  (*key, meter, float(g.meters[meter])), strict=True):
                meter_rows[col].append(value)
    meters = pl.DataFrame(meter_rows, schema={"day": pl.Date, "api": pl.String, "model": pl.String,
                                              "tag": pl.String, "meter": pl.String, "usd": pl.Float64})
    runs = pl.DataFrame(
        [{"day": k[0], "api": k[1], "model": k[2], "tag": k[3], "runs": v[0], "priced_runs": v[1]}
         for k, v in run_rows.items()],
        schema={"day": pl.Date, "api": pl.String, "model": pl.String, "tag": pl.String, "runs": pl.Int64,
                "priced_runs": pl.Int64},
    )
    return Spend(meters, runs, unpriced)


def spend_per_day(spend: Spend, by: str, storage: pl.DataFrame | None = None) -> pl.DataFrame:
    """Daily spend pivoted for a chart: ``day, <by>, usd`` with ``by`` one of model, meter, tag, api.

    ``storage`` (``day, cost_usd``, from :func:`analysis.storage.costs_frame`) adds a ``storage`` row per
    day: under ``meter`` as that meter, otherwise as ``(storage)``.
    """
    if by not in ("model", "meter", "tag", "api"):
        raise ValueError(f"spend can be split by model, meter, tag or api, not {by!r}")
    frame = spend.meters.group_by("day", by).agg(pl.col("usd").sum()).rename({by: "series"})
    frame = frame.with_columns(pl.col("series").fill_null("(none)"))
    if storage is not None and storage.height:
        label = STORAGE_METER if by == "meter" else f"({STORAGE_METER})"
        extra = storage.select("day", pl.lit(label).alias("series"), pl.col("cost_usd").alias("usd"))
        frame = pl.concat([frame, extra.filter(pl.col("usd") > 0)])
    return frame.sort("day", "series")


@dataclass(frozen=True, slots=True)
class SpendHeadline:
    """The overview's headline: token and tool spend, storage spend, their total, unpriced runs."""

    token_usd: float
    """:attr:`Spend.total_usd`."""
    storage_usd: float
    """:func:`analysis.totals.storage_total`'s ``cost_usd`` over the same days."""
    total_usd: float
    unpriced_runs: int
    """Runs left out of the token spend (every reason)."""


def spend_headline(spend: Spend, storage: StorageTotal) -> SpendHeadline:
    """The headline of ``spend`` with the storage cost ``storage`` of the same days."""
    token_usd, storage_usd = spend.total_usd, float(storage.cost_usd)
    return SpendHeadline(token_usd, storage_usd, token_usd + storage_usd, sum(spend.unpriced.values()))


# -------------------------------------------------------------------------------- tokens, status, ttft

def tokens_by_day(con: duckdb.DuckDBPyConnection, *, tag_key: str | None = None) -> pl.DataFrame:
    """Tokens per UTC day and type (:data:`TOKEN_TYPES`; cached/cache-write are parts of input,
    reasoning a part of output): ``day, tag, token_type, tokens``."""
    tag, params = _tag_expr(tag_key)
    wide = _polars(
        con,
        f"""
        SELECT {DAY_SQL} AS day, {tag} AS tag,
               sum(input_tokens)::BIGINT AS input, sum(cached_input_tokens)::BIGINT AS cached_input,
               sum(cache_write_tokens)::BIGINT AS cache_write, sum(output_tokens)::BIGINT AS output,
               sum(reasoning_tokens)::BIGINT AS reasoning
        FROM runs GROUP BY ALL ORDER BY ALL
        """,
        params,
    )
    if not wide.height:
        return pl.DataFrame(schema={"day": pl.Date, "tag": pl.String, "token_type": pl.String,
                                    "tokens": pl.Int64})
    return wide.unpivot(index=["day", "tag"], on=list(TOKEN_TYPES), variable_name="token_type",
                        value_name="tokens").with_columns(pl.col("tokens").fill_null(0).cast(pl.Int64))


def runs_by_status(con: duckdb.DuckDBPyConnection, *, tag_key: str | None = None) -> pl.DataFrame:
    """Runs per UTC day and status: ``day, tag, status, runs``."""
    tag, params = _tag_expr(tag_key)
    return _polars(
        con, f"SELECT {DAY_SQL} AS day, {tag} AS tag, coalesce(status, '(none)') AS status, count(*) AS runs "
        "FROM runs GROUP BY ALL ORDER BY ALL", params)


def ttft_by_day(con: duckdb.DuckDBPyConnection, *, tag_key: str | None = None) -> pl.DataFrame:
    """Time to first token per UTC day: ``day, tag, p50, p95, runs`` (seconds; runs with a TTFT)."""
    tag, params = _tag_expr(tag_key)
    return _polars(
        con,
        f"""
        SELECT {DAY_SQL} AS day, {tag} AS tag, quantile_cont(ttft_seconds, 0.5) AS p50,
               quantile_cont(ttft_seconds, 0.95) AS p95, count(*) AS runs
        FROM runs WHERE ttft_seconds IS NOT NULL GROUP BY ALL ORDER BY ALL
        """, params)


def _polars(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> pl.DataFrame:
    rel = con.sql(sql, params=params or None)
    assert rel is not None
    frame = pl.from_arrow(rel.to_arrow_table())
    assert isinstance(frame, pl.DataFrame)
    return frame


# -------------------------------------------------------------------------------------------- runs

RUN_COLUMNS = ("run_id", "started_at", "api", "model", "status", "input_tokens", "output_tokens",
               "file_search_calls", "retrieved_chunks", "max_num_results", "ttft_seconds", "tags")
"""The columns of the runs table, in display order (``cost_usd`` is added after them)."""

SORTABLE = ("started_at", "input_tokens", "output_tokens", "retrieved_chunks", "ttft_seconds")


@dataclass(frozen=True, slots=True)
class RunFilter:
    """What the runs table shows; ``None``/empty means no filter."""

    api: str | None = None
    model: str | None = None
    status: str | None = None
    tag_key: str | None = None
    tag_value: str | None = None
    run_id_contains: str | None = None
    with_file_search: bool = False
    sort: str = "started_at"
    descending: bool = True

    def where(self) -> tuple[str, list[Any]]:
        """The SQL condition and its parameters."""
        conds, params = ["TRUE"], []
        for column in ("api", "model", "status"):
            value = getattr(self, column)
            if value:
                conds.append(f"{column} = ?")
                params.append(value)
        if self.tag_key and self.tag_value:
            conds.append("tags[?] = ?")
            params += [self.tag_key, self.tag_value]
        if self.run_id_contains:
            conds.append("contains(run_id, ?)")
            params.append(self.run_id_contains)
        if self.with_file_search:
            conds.append("file_search_calls > 0")
        return " AND ".join(conds), params


def run_filter_options(con: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
    """Distinct apis, models and statuses (the choices of the runs filters)."""
    out = {}
    for column in ("api", "model", "status"):
        sql = f"SELECT DISTINCT {column} FROM runs WHERE {column} IS NOT NULL ORDER BY 1"
        rows = con.execute(sql).fetchall()
        out[column] = [r[0] for r in rows]
    return out


def _run_cost(prices: PriceTable, row: Mapping[str, Any]) -> RunCost:
    usage = Usage(row["input_tokens"], row["output_tokens"], row["cached_input_tokens"],
                  row["cache_write_tokens"], row["reasoning_tokens"], row["file_search_calls"])
    return price_run(prices, model=row["model"], api=row["api"], usage=usage, on=row["started_at"],
                     service_tier=row["service_tier"])


def runs_page(
    con: duckdb.DuckDBPyConnection, prices: PriceTable, flt: RunFilter, *, page: int, page_size: int = 50
) -> tuple[pl.DataFrame, int]:
    """One page (0-based) of runs matching ``flt`` and the number of matching runs; paged in SQL.

    Columns: :data:`RUN_COLUMNS` (``tags`` as ``key=value`` text) and ``cost_usd`` (null when unpriced).
    """
    if flt.sort not in SORTABLE:
        raise ValueError(f"runs can be sorted by {', '.join(SORTABLE)}, not {flt.sort!r}")
    if page < 0 or page_size < 1:
        raise ValueError("page must be >= 0 and page_size >= 1")
    where, params = flt.where()
    total_row = con.execute(f"SELECT count(*) FROM runs WHERE {where}", params).fetchone()
    total = int(total_row[0]) if total_row else 0
    order = f"{flt.sort} {'DESC' if flt.descending else 'ASC'} NULLS LAST, run_id"
    cur = con.execute(
        f"""
        SELECT run_id, started_at AT TIME ZONE 'UTC' AS started_at, api, model, status, input_tokens,
               output_tokens, file_search_calls, retrieved_chunks, max_num_results, ttft_seconds, tags,
               cached_input_tokens, cache_write_tokens, reasoning_tokens, service_tier
        FROM runs WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?
        """,
        [*params, page_size, page * page_size],
    )
    names = [d[0] for d in cur.description or ()]
    rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    costs = [_run_cost(prices, r).total for r in rows]
    schema: dict[str, pl.DataType | type[pl.DataType]] = {
        "run_id": pl.String, "started_at": pl.Datetime("us"), "api": pl.String, "model": pl.String,
        "status": pl.String, "input_tokens": pl.Int64, "output_tokens": pl.Int64,
        "file_search_calls": pl.Int64, "retrieved_chunks": pl.Int64, "max_num_results": pl.Int64,
        "ttft_seconds": pl.Float64, "tags": pl.String, "cost_usd": pl.Float64}
    data = [
        {**{k: r[k] for k in RUN_COLUMNS if k != "tags"},
         "tags": ", ".join(f"{k}={v}" for k, v in sorted((r["tags"] or {}).items())),
         "cost_usd": None if c is None else float(c)}
        for r, c in zip(rows, costs, strict=True)
    ]
    return pl.DataFrame(data, schema=schema), total


@dataclass(frozen=True, slots=True)
class RunDetail:
    """One run: its stored row, its cost and its retrieved chunks."""

    run: Mapping[str, Any]
    cost: RunCost
    chunks: pl.DataFrame
    """``call_id, rank, file_id, score, content_tokens, cited, cited_by`` by call and rank."""

    @property
    def cited_chunks(self) -> int:
        """Chunks the answer cited."""
        return int(self.chunks["cited"].sum()) if self.chunks.height else 0


def run_detail(con: duckdb.DuckDBPyConnection, prices: PriceTable, run_id: str) -> RunDetail | None:
    """The run ``run_id`` with its cost and chunks, or ``None`` when the store has no such run."""
    cur = con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id])
    names = [d[0] for d in cur.description or ()]
    found = cur.fetchall()
    if not found:
        return None
    run = dict(zip(names, found[0], strict=True))
    chunks = _polars(
        con, "SELECT call_id, rank, file_id, score, content_tokens, cited, cited_by FROM retrieved_chunks "
        "WHERE run_id = ? ORDER BY call_id, rank", [run_id])
    return RunDetail(run, _run_cost(prices, run), chunks)


# ----------------------------------------------------------------------------------------- threads

def thread_turns(growth: ThreadGrowth, *, max_turns: int = 20) -> pl.DataFrame:
    """:attr:`ThreadGrowth.by_turn <analysis.threads.ThreadGrowth>` over every API, turns past ``max_turns``
    counted as turn ``max_turns``: ``turn, runs, input_tokens_mean, history_tokens_mean, history_usd``
    (``history_usd`` null when no run of the turn was priced)."""
    schema = {"turn": pl.Int64, "runs": pl.Int64, "input_tokens": pl.Float64, "history": pl.Float64,
              "history_usd": pl.Float64}
    rows = [{"turn": min(t.turn, max_turns), "runs": t.runs, "input_tokens": t.input_tokens_mean * t.runs,
             "history": t.history_tokens_mean * t.runs, "history_usd": t.history_usd} for t in growth.by_turn]
    return (
        pl.DataFrame(rows, schema=schema).group_by("turn")
        .agg(pl.col("runs").sum(), pl.col("input_tokens").sum(), pl.col("history").sum(),
             pl.when(pl.col("history_usd").is_not_null().any()).then(pl.col("history_usd").sum()))
        .select("turn", "runs", (pl.col("input_tokens") / pl.col("runs")).alias("input_tokens_mean"),
                (pl.col("history") / pl.col("runs")).alias("history_tokens_mean"), "history_usd")
        .sort("turn")
    )


def thread_table(growth: ThreadGrowth) -> pl.DataFrame:
    """:attr:`ThreadGrowth.top_threads <analysis.threads.ThreadGrowth>` as a frame, most history first:
    ``thread, api, turns, input_tokens, history_tokens, history_usd, truncation``."""
    schema = {"thread": pl.String, "api": pl.String, "turns": pl.Int64, "input_tokens": pl.Float64,
              "history_tokens": pl.Float64, "history_usd": pl.Float64, "truncation": pl.String}
    return pl.DataFrame([asdict(t) for t in growth.top_threads], schema=schema)


# ----------------------------------------------------------------------------------- retrieval what-if

def whatif_curve(report: WhatIfReport) -> pl.DataFrame:
    """The ``max_num_results`` rows of a sweep as a frame for the curve.

    Columns: ``max_num_results, cost_per_1k_runs_usd, input_tokens_per_run, cost_per_month_usd,
    citation_recall, lose_all_cited_share, runs_affected, bound, known``; ``known`` is false where the
    figure needs results that were never retrieved (bound ``lower`` or ``unknown``): such a point is a
    bound, not a value.
    """
    rows = [
        {"max_num_results": r.max_num_results, "cost_per_1k_runs_usd": r.cost_per_1k_runs_usd,
         "input_tokens_per_run": r.input_tokens_per_run, "cost_per_month_usd": r.cost_per_month_usd,
         "citation_recall": r.citation_recall, "lose_all_cited_share": r.lose_all_cited_share,
         "runs_affected": r.runs_affected, "bound": r.bound, "known": is_known(r)}
        for r in report.rows if r.max_num_results is not None
    ]
    schema = {"max_num_results": pl.Int64, "cost_per_1k_runs_usd": pl.Float64,
              "input_tokens_per_run": pl.Float64, "cost_per_month_usd": pl.Float64,
              "citation_recall": pl.Float64,
              "lose_all_cited_share": pl.Float64, "runs_affected": pl.Int64, "bound": pl.String,
              "known": pl.Boolean}
    return pl.DataFrame(rows, schema=schema)


def is_known(row: WhatIfRow) -> bool:
    """Whether a what-if row's figures are values (bound ``exact`` or ``upper``), not bounds of figures that
    need results never retrieved (``lower``, ``unknown``)."""
    return row.bound in ("exact", "upper")


def whatif_at(report: WhatIfReport, *, max_num_results: int | None = None,
              score_threshold: float | None = None) -> WhatIfRow | None:
    """The sweep's row for one ``max_num_results`` or one ``score_threshold`` (``None``: not swept)."""
    for row in report.rows:
        if max_num_results is not None and row.max_num_results == max_num_results:
            return row
        if (score_threshold is not None and row.score_threshold is not None
                and abs(row.score_threshold - score_threshold) < 1e-9):
            return row
    return None


def runs_losing_all_cited(report: WhatIfReport, row: WhatIfRow) -> int | None:
    """How many runs that cited a result would keep none of the results they cited."""
    if row.lose_all_cited_share is None:
        return None
    return round(row.lose_all_cited_share * report.baseline.runs_with_citations)


# ------------------------------------------------------------------------------------- reconciliation

def reconciliation_by_day(result: Reconciliation) -> pl.DataFrame:
    """Recorded against billed USD per UTC day over every cost line (storage included).

    Columns ``day, recorded_usd, billed_usd, drift_usd, drift_pct, unpriced_lines``; ``billed_usd`` and the
    drift are null on a day with nothing billed (no bill fetched); unpriced recorded lines count as 0 and
    are counted in ``unpriced_lines``.
    """
    days: dict[date, list[Any]] = {}
    for c in result.costs:
        acc = days.setdefault(c.day, [0.0, None, 0])
        acc[0] += c.recorded_usd or 0.0
        if c.billed_usd is not None:
            acc[1] = (acc[1] or 0.0) + c.billed_usd
        if c.recorded_usd is None:
            acc[2] += 1
    rows = []
    for day in sorted(days):
        recorded, billed, unpriced = days[day]
        drift = None if billed is None else billed - recorded
        rows.append({"day": day, "recorded_usd": recorded, "billed_usd": billed, "drift_usd": drift,
                     "drift_pct": None if drift is None or not recorded else drift / recorded * 100.0,
                     "unpriced_lines": unpriced})
    return pl.DataFrame(rows, schema={"day": pl.Date, "recorded_usd": pl.Float64, "billed_usd": pl.Float64,
                                      "drift_usd": pl.Float64, "drift_pct": pl.Float64,
                                      "unpriced_lines": pl.Int64})


@dataclass(frozen=True, slots=True)
class ReconciliationTotals:
    """The reconciliation's headline over its days."""

    recorded_usd: float
    billed_usd: float | None
    """``None`` when no bill was fetched."""
    drift_usd: float | None
    """Billed minus recorded (``None`` when no bill was fetched)."""


def reconciliation_totals(per_day: pl.DataFrame, *, billed: bool) -> ReconciliationTotals:
    """The sums of :func:`reconciliation_by_day`'s ``per_day`` (``billed``: whether a bill was fetched; a
    day the bill has nothing for counts as $0 billed)."""
    recorded = float(per_day["recorded_usd"].sum()) if per_day.height else 0.0
    if not billed:
        return ReconciliationTotals(recorded, None, None)
    bill = float(per_day["billed_usd"].drop_nulls().sum()) if per_day.height else 0.0
    return ReconciliationTotals(recorded, bill, bill - recorded)


__all__ = [
    "RUN_COLUMNS",
    "SORTABLE",
    "STORAGE_METER",
    "TOKEN_TYPES",
    "ReconciliationTotals",
    "RunDetail",
    "RunFilter",
    "Spend",
    "SpendHeadline",
    "StoreSpan",
    "default_price_table",
    "is_known",
    "price_table_with_overrides",
    "reconciliation_by_day",
    "reconciliation_totals",
    "run_detail",
    "run_filter_options",
    "runs_by_status",
    "runs_losing_all_cited",
    "runs_page",
    "spend_by_day",
    "spend_headline",
    "spend_per_day",
    "store_span",
    "stored_now_gb",
    "tag_keys",
    "thread_table",
    "thread_turns",
    "tokens_by_day",
    "ttft_by_day",
    "whatif_at",
    "whatif_curve",
]
