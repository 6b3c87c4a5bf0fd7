"""Grouped pricing: the one engine that prices runs per group, for every report that shows a cost.

:func:`price_groups` sums the runs' usage in DuckDB per (api, model, UTC day, service tier) and the
caller's dimensions (api, model, UTC day or month, tier, status, any ``tags`` key), attaches each (api,
model, day, tier)'s per-meter rates from :func:`analysis.cost.meter_rates` (the rates :func:`price_run`
multiplies; looked up once per combination) and multiplies them on exact DECIMALs. Pricing is linear in
the counts and one UTC day has one price period, so a group's meters are exactly the sum of what
:func:`analysis.cost.price_run` gives its runs one by one.

A run whose own usage cannot be priced (missing, negative or inconsistent counts), whose model or tier has
no price, or that made file_search calls on an API without a call price is kept out of the sums and counted
apart with its reason, as :func:`analysis.cost.price_run` would leave it; runs with and without calls are
summed apart first, so a call price missing unprices only the runs that made calls.

Its users: :func:`cost_by` (``runmeter cost --by``), :func:`group_rates` (what-if and thread-history
prices), :func:`analysis.reconcile.recorded_from_store` (per status) and the explorer's spend and thread
pages (:mod:`analysis.explorer`). Over the usage summary (:data:`SUMMARIES`), when it is current and the
dimensions allow, the sums need no ``runs`` row.

Precision: rates are DECIMAL(38,21) USD per token (exact for prices with up to 15 decimal places per 1M
tokens, tier multiplier applied); meters come back as exact :class:`~decimal.Decimal`.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from analysis import summary_tables
from analysis.cost import METERS, TIER_SQL, meter_rates, tier_sql
from analysis.prices import PriceTable

DIMENSIONS = ("api", "model", "day", "month", "tier")
"""Dimensions of ``runmeter cost --by`` besides ``tag:KEY``."""

GROUP_DIMENSIONS = (*DIMENSIONS, "status")
"""Dimensions :func:`price_groups` takes besides ``tag:KEY`` (``status`` needs the ``runs`` rows)."""

NO_TAG = "(none)"
"""The value of ``tag:KEY`` for a run without that tag (unless the caller names another)."""

_TAG = re.compile(r"^tag:([A-Za-z0-9_.\-]{1,64})$")
_BASE = ("api", "model", "day", "tier")

_NO_INPUT = "usage not recorded (input_tokens missing)"


class DimensionError(ValueError):
    """A ``--by`` value that is not a known dimension (the message names it)."""


def parse_by(values: Sequence[str]) -> list[str]:
    """Validate ``--by`` values (comma lists allowed): ``api model day month tier tag:KEY``."""
    out: list[str] = []
    for raw in values:
        for item in (v.strip() for v in raw.split(",")):
            if not item:
                continue
            if item not in DIMENSIONS and not _TAG.match(item):
                raise DimensionError(
                    f"--by {item!r} is not a dimension (use {', '.join(DIMENSIONS)} or tag:KEY)"
                )
            if item not in out:
                out.append(item)
    return out


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _expr(dim: str, summary: bool = False, no_tag: str = NO_TAG, tier: str = TIER_SQL) -> str:
    """SQL for a dimension over ``runs`` (or over the usage summary, whose day and tier are columns)."""
    if dim.startswith("tag:"):
        return f"coalesce(tags[{_literal(dim[4:])}], {_literal(no_tag)})"
    if summary:
        return {"api": "api", "model": "model", "day": "day", "month": "strftime(day, '%Y-%m')",
                "tier": "tier"}[dim]
    return {
        "api": "api",
        "model": "model",
        "day": "CAST(started_at AT TIME ZONE 'UTC' AS DATE)",
        "month": "strftime(started_at AT TIME ZONE 'UTC', '%Y-%m')",
        "tier": tier,
        "status": "status",
    }[dim]


# The per-run checks of price_run, in its order, so a run price_run would leave unpriced for its own usage is
# never summed with runs that can be priced. Negative counts are named as price_run names them.
USAGE_PROBLEM_SQL = """
CASE
    WHEN input_tokens IS NULL THEN 'usage not recorded (input_tokens missing)'
    WHEN output_tokens IS NULL THEN 'usage not recorded (output_tokens missing)'
    WHEN input_tokens < 0 OR output_tokens < 0 OR coalesce(cached_input_tokens, 0) < 0
         OR coalesce(cache_write_tokens, 0) < 0 OR coalesce(file_search_calls, 0) < 0 THEN
        'negative usage: ' || concat_ws(', ',
            CASE WHEN input_tokens < 0 THEN 'input_tokens' END,
            CASE WHEN output_tokens < 0 THEN 'output_tokens' END,
            CASE WHEN coalesce(cached_input_tokens, 0) < 0 THEN 'cached_input_tokens' END,
            CASE WHEN coalesce(cache_write_tokens, 0) < 0 THEN 'cache_write_tokens' END,
            CASE WHEN coalesce(file_search_calls, 0) < 0 THEN 'file_search_calls' END)
    WHEN coalesce(cached_input_tokens, 0) + coalesce(cache_write_tokens, 0) > input_tokens
        THEN 'inconsistent usage: cached + cache-write tokens exceed input'
END
"""
"""SQL over a ``runs`` row: why :func:`analysis.cost.price_run` would reject its usage (NULL: it would not);
a group sums the numbers an inconsistency names, so the text names none."""

USAGE_SUMMARY = "summary_usage"

SUMMARIES = {USAGE_SUMMARY: f"""
    SELECT api, model, {_expr("day")} AS day, {_expr("tier")} AS tier, tags, {USAGE_PROBLEM_SQL} AS problem,
           coalesce(file_search_calls, 0) > 0 AS has_calls, count(*) AS runs,
           sum(input_tokens) AS inp, sum(output_tokens) AS outp,
           sum(coalesce(cached_input_tokens, 0)) AS cached, sum(coalesce(cache_write_tokens, 0)) AS written,
           sum(coalesce(file_search_calls, 0)) AS calls
    FROM runs GROUP BY ALL
"""}
"""Per (api, model, UTC day, tier, tags, usage problem, made calls): the run count and usage sums. Grouped
pricing over it is exact and needs no runs row; a writer adds each batch's sums (minus replaced runs')."""


# ------------------------------------------------------------------------------------------ engine

@dataclass(frozen=True, slots=True)
class PricedGroup:
    """The runs sharing one value of each dimension and one unpriced reason (``None``: priced)."""

    key: tuple[Any, ...]
    """The dimensions' values, in the order asked for."""
    reason: str | None
    """Why these runs are unpriced, as :func:`analysis.cost.price_run` says it; ``None`` when priced."""
    runs: int
    input_tokens: int | None
    """Sum over the runs; ``None`` when none reported it (``reason`` then says so)."""
    output_tokens: int | None
    """Sum over the runs; ``None`` when none reported it."""
    cached_input_tokens: int
    cache_write_tokens: int
    file_search_calls: int
    model_requests: int | None
    """A run's ``model_steps`` (Assistants), else 1, summed; ``None`` unless asked for."""
    meters: Mapping[str, Decimal] = field(default_factory=dict)
    """:data:`analysis.cost.METERS` -> exact USD; empty when unpriced."""

    @property
    def total(self) -> Decimal | None:
        """The meters' sum; ``None`` when unpriced."""
        return None if self.reason is not None else sum(self.meters.values(), Decimal(0))


_RATE_COLUMNS = ("r_in", "r_cached", "r_write", "r_out", "r_call")
_RATE_TYPE = pa.decimal128(38, 21)
_RATE_QUANTUM = Decimal("1e-21")


def _fit(value: Decimal | None) -> Decimal | None:
    return None if value is None else value.quantize(_RATE_QUANTUM)


def _rates_table(con: duckdb.DuckDBPyConnection, prices: PriceTable, source: str) -> pa.Table:
    """The rates of every (api, model, day, tier) in ``source``, from :func:`analysis.cost.meter_rates`."""
    combos = con.execute(f"SELECT DISTINCT api, model, day, tier FROM {source}").fetchall()
    cols: dict[str, list[Any]] = {k: [] for k in (*_BASE, *_RATE_COLUMNS, "reason", "call_reason")}
    for api, model, day, tier in combos:
        r = meter_rates(prices, model, day, tier, api)
        for k, v in zip((*_BASE, *_RATE_COLUMNS, "reason", "call_reason"),
                        (api, model, day, tier, _fit(r.input), _fit(r.cached_input), _fit(r.cache_write),
                         _fit(r.output), _fit(r.per_call), r.reason, r.call_reason), strict=True):
            cols[k].append(v)
    return pa.table({
        "api": pa.array(cols["api"], pa.string()), "model": pa.array(cols["model"], pa.string()),
        "day": pa.array(cols["day"], pa.date32()), "tier": pa.array(cols["tier"], pa.string()),
        **{k: pa.array(cols[k], _RATE_TYPE) for k in _RATE_COLUMNS},
        "reason": pa.array(cols["reason"], pa.string()),
        "call_reason": pa.array(cols["call_reason"], pa.string()),
    })


# Usage is summed per combination first (integers only); pricing is linear, so the meters are then the
# combination's rates times its sums: the DECIMAL arithmetic runs on a few thousand rows, not every run.
_AGG_RAW = """
    SELECT api, model, {day} AS day, {tier} AS tier, {dims} {problem} AS problem,
           coalesce(file_search_calls, 0) > 0 AS has_calls, count(*) AS runs,
           sum(input_tokens) AS inp, sum(output_tokens) AS outp,
           sum(coalesce(cached_input_tokens, 0)) AS cached, sum(coalesce(cache_write_tokens, 0)) AS written,
           sum(coalesce(file_search_calls, 0)) AS calls, {steps} AS steps
    FROM runs {where}
    GROUP BY ALL
"""

_AGG_SUMMARY = """
    SELECT api, model, day, tier, {dims} problem, has_calls, sum(runs) AS runs, sum(inp) AS inp,
           sum(outp) AS outp, sum(cached) AS cached, sum(written) AS written, sum(calls) AS calls,
           NULL::HUGEINT AS steps
    FROM {summary} {where}
    GROUP BY ALL
"""

_PRICE_SQL = """
SELECT {keys} why, sum(runs), sum(inp), sum(outp), sum(cached), sum(written), sum(calls), sum(steps),
       sum((inp - cached - written) * r_in) FILTER (WHERE why IS NULL),
       sum(cached * r_cached) FILTER (WHERE why IS NULL), sum(written * r_write) FILTER (WHERE why IS NULL),
       sum(outp * r_out) FILTER (WHERE why IS NULL),
       sum(calls * coalesce(r_call, 0)) FILTER (WHERE why IS NULL)
FROM (
    SELECT a.*, r.r_in, r.r_cached, r.r_write, r.r_out, r.r_call,
           coalesce(a.problem, r.reason, CASE WHEN a.has_calls THEN r.call_reason END) AS why
    FROM {agg_name} a JOIN {rates} r
      ON a.api IS NOT DISTINCT FROM r.api AND a.model IS NOT DISTINCT FROM r.model
     AND a.day IS NOT DISTINCT FROM r.day AND a.tier IS NOT DISTINCT FROM r.tier
)
GROUP BY ALL
ORDER BY ALL
"""


def _check_dims(by: Sequence[str]) -> list[str]:
    dims = list(by)
    for d in dims:
        if d not in GROUP_DIMENSIONS and not d.startswith("tag:"):
            raise DimensionError(f"{d!r} is not a dimension (use {', '.join(GROUP_DIMENSIONS)} or tag:KEY)")
    return dims


def _midnight(day: date | None) -> datetime | None:
    return None if day is None else datetime.combine(day, time(), tzinfo=UTC)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def price_groups(
    con: duckdb.DuckDBPyConnection,
    prices: PriceTable,
    by: Sequence[str] = (),
    *,
    since: date | None = None,
    until: date | None = None,
    where: str | None = None,
    no_tag: str = NO_TAG,
    model_requests: bool = False,
) -> list[PricedGroup]:
    """The runs started on UTC days ``[since, until)`` priced per value of ``by`` and unpriced reason,
    ordered by key, then reason (the priced runs' row, reason ``None``, last).

    ``by``: :data:`GROUP_DIMENSIONS` or ``tag:KEY`` (any key; a run without it has ``no_tag``).
    ``where``: a trusted SQL condition over a ``runs`` row (e.g. ``"thread_id IS NOT NULL"``).
    ``model_requests``: also sum the model requests. The usage summary answers when it is current and
    nothing needs the ``runs`` rows (``status``, ``where``, ``model_requests``). Raises
    :class:`DimensionError` for an unknown dimension.
    """
    dims = _check_dims(by)
    summary = (where is None and not model_requests and "status" not in dims
               and summary_tables.fresh(con, (USAGE_SUMMARY,)))
    conds: list[str] = [where] if where else []
    params: list[Any] = []
    bounds: list[tuple[str, date | None]] = [("day >= ?", since), ("day < ?", until)]
    if not summary:
        # on started_at itself (not its day) so DuckDB can skip row groups; the same runs as by UTC day
        bounds = [("started_at >= ?", _midnight(since)), ("started_at < ?", _midnight(until))]
    for cond, value in bounds:
        if value is not None:
            conds.append(cond)
            params.append(value)
    where_sql = f"WHERE {' AND '.join(f'({c})' for c in conds)}" if conds else ""
    tier = TIER_SQL if summary else tier_sql(con)
    dim_sql = "".join(f"{_expr(d, summary, no_tag, tier)} AS d{i}, " for i, d in enumerate(dims))
    if summary:
        agg = _AGG_SUMMARY.format(dims=dim_sql, summary=USAGE_SUMMARY, where=where_sql)
    else:
        agg = _AGG_RAW.format(day=_expr("day"), tier=tier, dims=dim_sql, problem=USAGE_PROBLEM_SQL,
                              where=where_sql,
                              steps="sum(coalesce(model_steps, 1))" if model_requests else "NULL::HUGEINT")
    suffix = uuid.uuid4().hex
    agg_name, rates_name = f"_runmeter_cost_agg_{suffix}", f"_runmeter_cost_rates_{suffix}"
    con.execute(f"CREATE OR REPLACE TEMP TABLE {agg_name} AS {agg}", params)
    try:
        con.register(rates_name, _rates_table(con, prices, agg_name))
        try:
            rows = con.execute(_PRICE_SQL.format(
                keys="".join(f"d{i}, " for i in range(len(dims))), agg_name=agg_name, rates=rates_name,
            )).fetchall()
        finally:
            con.unregister(rates_name)
    finally:
        con.execute(f"DROP TABLE IF EXISTS {agg_name}")
    out = []
    for row in rows:
        why, runs, inp, outp, cached, written, calls, steps, *meters = row[len(dims):]
        priced = {m: v or Decimal(0) for m, v in zip(METERS, meters, strict=True)} if why is None else {}
        out.append(PricedGroup(
            key=tuple(row[:len(dims)]), reason=why, runs=int(runs), input_tokens=_int(inp),
            output_tokens=_int(outp), cached_input_tokens=int(cached or 0),
            cache_write_tokens=int(written or 0), file_search_calls=int(calls or 0),
            model_requests=_int(steps), meters=priced,
        ))
    return out


# ------------------------------------------------------------------------------------- cost reports

@dataclass(frozen=True, slots=True)
class CostGroup:
    """The cost of the runs sharing one value of each ``by`` dimension."""

    key: Mapping[str, Any]
    runs: int
    priced_runs: int
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    file_search_calls: int
    """Sums over the priced runs (``input_tokens`` too)."""
    meters: Mapping[str, float]
    """USD per meter (see :data:`analysis.cost.METERS`) over the priced runs."""
    total_usd: float
    unpriced: Mapping[str, int] = field(default_factory=dict)
    """Reason -> runs left unpriced."""
    all_input_tokens: int = 0
    """Input tokens of every run of the group that reported them, priced or not."""

    @property
    def input_rate(self) -> float | None:
        """Mean USD per input token of the priced runs (input, cached-input and cache-write meters)."""
        if not self.input_tokens:
            return None
        return sum(self.meters[m] for m in ("input", "cached_input", "cache_write")) / self.input_tokens

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        out = asdict(self)
        out["key"] = {k: (str(v) if v is not None else None) for k, v in self.key.items()}
        out["meters"] = dict(self.meters)
        out["unpriced"] = dict(self.unpriced)
        return out


def _cost_groups(dims: Sequence[str], priced: Sequence[PricedGroup]) -> list[CostGroup]:
    """:func:`price_groups`' rows folded per key (priced and unpriced runs of a key together)."""
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for p in priced:
        g = groups.setdefault(p.key, {"runs": 0, "priced": 0, "all_input": 0, "tokens": [0, 0, 0, 0],
                                      "meters": dict.fromkeys(METERS, Decimal(0)), "unpriced": {}})
        g["runs"] += p.runs
        g["all_input"] += p.input_tokens or 0
        if p.reason is not None:
            g["unpriced"][p.reason] = g["unpriced"].get(p.reason, 0) + p.runs
            continue
        g["priced"] += p.runs
        g["tokens"] = [a + b for a, b in zip(g["tokens"], (p.input_tokens or 0, p.cached_input_tokens,
                                                            p.output_tokens or 0, p.file_search_calls),
                                             strict=True)]
        for m in METERS:
            g["meters"][m] += p.meters[m]
    result = []
    for key, g in groups.items():
        result.append(CostGroup(
            key=dict(zip(dims, key, strict=True)), runs=g["runs"], priced_runs=g["priced"],
            input_tokens=g["tokens"][0], cached_input_tokens=g["tokens"][1], output_tokens=g["tokens"][2],
            file_search_calls=g["tokens"][3], meters={m: float(v) for m, v in g["meters"].items()},
            total_usd=float(sum(g["meters"].values(), Decimal(0))), unpriced=g["unpriced"],
            all_input_tokens=g["all_input"],
        ))
    return result


def cost_by(
    con: duckdb.DuckDBPyConnection,
    prices: PriceTable,
    by: Sequence[str] = (),
    *,
    since: date | None = None,
    until: date | None = None,
) -> list[CostGroup]:
    """Cost per group of ``by`` (validated by :func:`parse_by`) over runs started on UTC days
    ``[since, until)``, largest total first (:func:`price_groups` folded per key, as floats)."""
    dims = parse_by(by)
    result = _cost_groups(dims, price_groups(con, prices, dims, since=since, until=until))
    result.sort(key=lambda g: (-g.total_usd, [str(v) for v in g.key.values()]))
    return result


def group_rates(
    con: duckdb.DuckDBPyConnection, prices: PriceTable, *, where: str | None = None
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Per (api, model, UTC day, tier) of the runs that reported input tokens: ``runs, input_tokens``
    (all of them), ``priced_runs, cost_usd`` (null when none priced) and ``input_rate`` (mean USD per input
    token of the priced runs); and the unpriced runs per reason. What-ifs and thread histories price saved
    or re-read tokens with it. ``where``: only the runs it holds for (see :func:`price_groups`)."""
    rows: dict[str, list[Any]] = {k: [] for k in _RATE_SCHEMA}
    unpriced: dict[str, int] = {}
    groups = _cost_groups(_BASE, price_groups(con, prices, _BASE, where=where))
    # cost_by's order: float sums over the frame must not depend on the engine's row order
    groups.sort(key=lambda g: (-g.total_usd, [str(v) for v in g.key.values()]))
    for g in groups:
        no_input = g.unpriced.get(_NO_INPUT, 0)
        if g.runs == no_input:
            continue
        for k in _BASE:
            rows[k].append(g.key[k])
        rows["runs"].append(g.runs - no_input)
        rows["input_tokens"].append(float(g.all_input_tokens))
        rows["priced_runs"].append(g.priced_runs)
        rows["cost_usd"].append(g.total_usd if g.priced_runs else None)
        rows["input_rate"].append(g.input_rate)
        for reason, n in g.unpriced.items():
            if reason != _NO_INPUT:
                unpriced[reason] = unpriced.get(reason, 0) + n
    return pl.DataFrame(rows, schema=_RATE_SCHEMA), unpriced


_RATE_SCHEMA = {"api": pl.String, "model": pl.String, "day": pl.Date, "tier": pl.String, "runs": pl.Int64,
                "input_tokens": pl.Float64, "priced_runs": pl.Int64, "cost_usd": pl.Float64,
                "input_rate": pl.Float64}
