"""Cost reports split by dimensions: api, model, UTC day or month, service tier, or any ``tags`` key.

``cost_by(con, prices, by=["tag:customer"])`` prices each (api, model, UTC day, service tier) once with
:func:`analysis.cost.price_run` (pricing is linear in tokens, so its per-token rates are read off unit
usages), then sums every run's meters in DuckDB on exact DECIMALs grouped by *your dimensions*. A run
whose usage cannot be priced (missing, negative or inconsistent counts; unpriced model or tier; calls
on an API without a call price) is kept out of the sums and counted as unpriced with its reason, as
:func:`analysis.cost.run_costs` would. ``tags['customer']`` is a plain
VARCHAR in the store (NULL when the run has no such tag), shown as ``(none)``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from analysis import summary_tables
from analysis.cost import METERS, USAGE_PROBLEM_SQL, Usage, price_run
from analysis.prices import PriceTable

DIMENSIONS = ("api", "model", "day", "month", "tier")
"""Dimensions besides ``tag:KEY``."""

NO_TAG = "(none)"

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


def _expr(dim: str, summary: bool = False) -> str:
    """SQL for a dimension over ``runs`` (or over the usage summary, whose day and tier are columns)."""
    m = _TAG.match(dim)
    if m:
        return f"coalesce(tags['{m.group(1)}'], '{NO_TAG}')"
    if summary:
        return {"api": "api", "model": "model", "day": "day", "month": "strftime(day, '%Y-%m')",
                "tier": "tier"}[dim]
    return {
        "api": "api",
        "model": "model",
        "day": "CAST(started_at AT TIME ZONE 'UTC' AS DATE)",
        "month": "strftime(started_at AT TIME ZONE 'UTC', '%Y-%m')",
        "tier": "nullif(nullif(service_tier, ''), 'default')",
    }[dim]


USAGE_SUMMARY = "summary_usage"

SUMMARIES = {USAGE_SUMMARY: f"""
    SELECT api, model, {_expr("day")} AS day, {_expr("tier")} AS tier, tags, {USAGE_PROBLEM_SQL} AS problem,
           coalesce(file_search_calls, 0) > 0 AS has_calls, count(*) AS runs,
           sum(input_tokens) AS inp, sum(output_tokens) AS outp,
           sum(coalesce(cached_input_tokens, 0)) AS cached, sum(coalesce(cache_write_tokens, 0)) AS written,
           sum(coalesce(file_search_calls, 0)) AS calls
    FROM runs GROUP BY ALL
"""}
"""Per (api, model, UTC day, tier, tags, usage problem, made calls): the run count and usage sums. Cost
reports over it are exact and need no runs row; a writer adds each batch's sums (minus replaced runs')."""


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


_RATE_COLUMNS = ("r_in", "r_cached", "r_write", "r_out", "r_call")
_RATE_TYPE = pa.decimal128(38, 15)
_RATE_QUANTUM = Decimal("1e-15")


def _unit_rates(prices: PriceTable, api: str | None, model: str | None, day: date | None,
                tier: str | None) -> tuple[list[Decimal | None], str | None, str | None]:
    """USD per token of each meter (and per call) for one combination, read off :func:`price_run` on unit
    usages (pricing is linear); or the reason it is unpriced, and the reason a run with calls would be."""
    plain = price_run(prices, model=model, api=api, on=day, service_tier=tier, usage=Usage(1, 1))
    if plain.total is None:
        return [None] * 5, plain.reason or "unpriced", None
    cached = price_run(prices, model=model, api=api, on=day, service_tier=tier,
                       usage=Usage(2, 0, cached_input_tokens=1, cache_write_tokens=1))
    call = price_run(prices, model=model, api=api, on=day, service_tier=tier,
                     usage=Usage(0, 0, file_search_calls=1))
    rates = [plain.meters["input"], cached.meters["cached_input"], cached.meters["cache_write"],
             plain.meters["output"], call.meters["file_search_calls"] if call.total is not None else None]
    return rates, None, None if call.total is not None else (call.reason or "unpriced")


def _rates_table(con: duckdb.DuckDBPyConnection, prices: PriceTable, source: str) -> pa.Table:
    combos = con.execute(f"SELECT DISTINCT api, model, day, tier FROM {source}").fetchall()
    cols: dict[str, list[Any]] = {k: [] for k in (*_BASE, *_RATE_COLUMNS, "reason", "call_reason")}
    for api, model, day, tier in combos:
        rates, reason, call_reason = _unit_rates(prices, api, model, day, tier)
        for k, v in zip(_BASE, (api, model, day, tier), strict=True):
            cols[k].append(v)
        for k, v in zip(_RATE_COLUMNS, rates, strict=True):
            cols[k].append(None if v is None else v.quantize(_RATE_QUANTUM))
        cols["reason"].append(reason)
        cols["call_reason"].append(call_reason)
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
           sum(coalesce(file_search_calls, 0)) AS calls
    FROM runs {where}
    GROUP BY ALL
"""

_AGG_SUMMARY = """
    SELECT api, model, day, tier, {dims} problem, has_calls, sum(runs) AS runs, sum(inp) AS inp,
           sum(outp) AS outp, sum(cached) AS cached, sum(written) AS written, sum(calls) AS calls
    FROM {summary} {where}
    GROUP BY ALL
"""

_COST_SQL = """
CREATE OR REPLACE TEMP TABLE {agg_name} AS {agg};
"""

_PRICE_SQL = """
SELECT {keys} why, sum(runs), sum(coalesce(inp, 0)),
       sum(inp) FILTER (WHERE why IS NULL), sum(cached) FILTER (WHERE why IS NULL),
       sum(outp) FILTER (WHERE why IS NULL), sum(calls) FILTER (WHERE why IS NULL),
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
"""


def cost_by(
    con: duckdb.DuckDBPyConnection,
    prices: PriceTable,
    by: Sequence[str] = (),
    *,
    since: date | None = None,
    until: date | None = None,
) -> list[CostGroup]:
    """Cost per group of ``by`` (validated by :func:`parse_by`) over runs started on UTC days
    ``[since, until)``, largest total first.

    Each (api, model, UTC day, tier) is priced once through :func:`analysis.cost.price_run`; the sums run
    in DuckDB (from :data:`USAGE_SUMMARY` when it is current, else from ``runs``) on exact DECIMALs.
    """
    dims = parse_by(by)
    summary = summary_tables.fresh(con, (USAGE_SUMMARY,))
    day = _expr("day", summary)
    where = [f"{day} >= DATE '{since.isoformat()}'"] if since is not None else []
    where += [f"{day} < DATE '{until.isoformat()}'"] if until is not None else []
    where_sql = f"WHERE {' AND '.join(where)}" if where else ""
    dim_sql = "".join(f"{_expr(d, summary)} AS d{i}, " for i, d in enumerate(dims))
    if summary:
        agg = _AGG_SUMMARY.format(dims=dim_sql, summary=USAGE_SUMMARY, where=where_sql)
    else:
        agg = _AGG_RAW.format(day=day, tier=_expr("tier"), dims=dim_sql, problem=USAGE_PROBLEM_SQL,
                              where=where_sql)
    suffix = uuid.uuid4().hex
    agg_name, rates_name = f"_runmeter_cost_agg_{suffix}", f"_runmeter_cost_rates_{suffix}"
    con.execute(_COST_SQL.format(agg_name=agg_name, agg=agg))
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
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        key = tuple(row[:len(dims)])
        why, runs, all_input, inp, cached, outp, calls, *meters = row[len(dims):]
        g = groups.setdefault(key, {"runs": 0, "priced": 0, "all_input": 0, "tokens": [0, 0, 0, 0],
                                    "meters": [Decimal(0)] * len(METERS), "unpriced": {}})
        g["runs"] += int(runs)
        g["all_input"] += int(all_input)
        if why is not None:
            g["unpriced"][why] = g["unpriced"].get(why, 0) + int(runs)
            continue
        g["priced"] += int(runs)
        g["tokens"] = [a + int(b or 0) for a, b in zip(g["tokens"], (inp, cached, outp, calls), strict=True)]
        g["meters"] = [a + (b or Decimal(0)) for a, b in zip(g["meters"], meters, strict=True)]
    result = []
    for key, g in groups.items():
        total = sum(g["meters"], Decimal(0))
        result.append(CostGroup(
            key=dict(zip(dims, key, strict=True)), runs=g["runs"], priced_runs=g["priced"],
            input_tokens=g["tokens"][0], cached_input_tokens=g["tokens"][1], output_tokens=g["tokens"][2],
            file_search_calls=g["tokens"][3],
            meters={m: float(v) for m, v in zip(METERS, g["meters"], strict=True)},
            total_usd=float(total), unpriced=g["unpriced"], all_input_tokens=g["all_input"],
        ))
    result.sort(key=lambda g: (-g.total_usd, [str(v) for v in g.key.values()]))
    return result


def group_rates(con: duckdb.DuckDBPyConnection, prices: PriceTable) -> tuple[pl.DataFrame, dict[str, int]]:
    """Per (api, model, UTC day, tier) of the runs that reported input tokens: ``runs, input_tokens``
    (all of them), ``priced_runs, cost_usd`` (null when none priced) and ``input_rate`` (mean USD per input
    token of the priced runs); and the unpriced runs per reason. What-ifs price saved tokens with it."""
    rows: dict[str, list[Any]] = {k: [] for k in _RATE_SCHEMA}
    unpriced: dict[str, int] = {}
    for g in cost_by(con, prices, _BASE):
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
