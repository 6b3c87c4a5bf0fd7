"""Cost reports split by dimensions: api, model, UTC day or month, service tier, or any ``tags`` key.

``cost_by(con, prices, by=["tag:customer"])`` sums usage in SQL per (api, model, UTC day, service tier,
*your dimensions*) and prices each group once with :func:`analysis.cost.price_run` on its summed usage.
Pricing is linear in tokens, so a group's price is exactly the sum of its runs' prices; a run whose usage
cannot be priced on its own (missing, negative or inconsistent counts) is kept out of the sums and counted
as unpriced with its reason, as :func:`analysis.cost.run_costs` would. ``tags['customer']`` is a plain
VARCHAR in the store (NULL when the run has no such tag), shown as ``(none)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

import duckdb
import polars as pl

from analysis.cost import METERS, Usage, price_run
from analysis.prices import PriceTable

DIMENSIONS = ("api", "model", "day", "month", "tier")
"""Dimensions besides ``tag:KEY``."""

NO_TAG = "(none)"

_TAG = re.compile(r"^tag:([A-Za-z0-9_.\-]{1,64})$")
_BASE = ("api", "model", "day", "tier")

# Mirrors the per-run usage checks of analysis.cost (run_costs) so a bad run is not summed into a group.
_PROBLEM_SQL = """
CASE
    WHEN input_tokens IS NULL THEN 'usage not recorded (input_tokens missing)'
    WHEN output_tokens IS NULL THEN 'usage not recorded (output_tokens missing)'
    WHEN input_tokens < 0 OR output_tokens < 0 OR coalesce(cached_input_tokens, 0) < 0
         OR coalesce(cache_write_tokens, 0) < 0 OR coalesce(file_search_calls, 0) < 0 THEN 'negative usage'
    WHEN coalesce(cached_input_tokens, 0) + coalesce(cache_write_tokens, 0) > input_tokens
         THEN 'inconsistent usage: cached + cache-write tokens exceed input'
END
"""


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


def _expr(dim: str) -> str:
    m = _TAG.match(dim)
    if m:
        return f"coalesce(tags['{m.group(1)}'], '{NO_TAG}')"
    return {
        "api": "api",
        "model": "model",
        "day": "CAST(started_at AT TIME ZONE 'UTC' AS DATE)",
        "month": "strftime(started_at AT TIME ZONE 'UTC', '%Y-%m')",
        "tier": "nullif(nullif(service_tier, ''), 'default')",
    }[dim]


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


@dataclass(slots=True)
class _Acc:
    runs: int = 0
    priced: int = 0
    tokens: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    all_input: int = 0
    meters: dict[str, Decimal] = field(default_factory=lambda: {m: Decimal(0) for m in METERS})
    unpriced: dict[str, int] = field(default_factory=dict)


def cost_by(
    con: duckdb.DuckDBPyConnection,
    prices: PriceTable,
    by: Sequence[str] = (),
    *,
    where: str = "",
    params: Sequence[Any] = (),
) -> list[CostGroup]:
    """Cost per group of ``by`` (validated by :func:`parse_by`), largest total first.

    ``where`` (SQL over ``runs``, with ``params``) narrows the runs; the result is exact per group.
    """
    dims = parse_by(by)
    exprs = [f"{_expr(d)} AS d{i}" for i, d in enumerate(dims)]
    select = ", ".join([
        "api", "model", "CAST(started_at AT TIME ZONE 'UTC' AS DATE) AS day",
        "nullif(nullif(service_tier, ''), 'default') AS tier", *exprs,
    ])
    sql = f"""
        SELECT {select}, {_PROBLEM_SQL} AS problem, count(*),
               sum(input_tokens), sum(output_tokens), sum(coalesce(cached_input_tokens, 0)),
               sum(coalesce(cache_write_tokens, 0)), sum(coalesce(file_search_calls, 0))
        FROM runs {('WHERE ' + where) if where else ''}
        GROUP BY ALL
    """
    groups: dict[tuple[Any, ...], _Acc] = {}
    for row in con.execute(sql, list(params)).fetchall():
        api, model, day, tier = row[:4]
        key = tuple(row[4:4 + len(dims)])
        problem, runs, inp, out, cached, written, calls = row[4 + len(dims):]
        acc = groups.setdefault(key, _Acc())
        acc.runs += int(runs)
        acc.all_input += int(inp or 0)
        if problem is not None:
            acc.unpriced[problem] = acc.unpriced.get(problem, 0) + int(runs)
            continue
        cost = price_run(prices, model=model, api=api, on=day, service_tier=tier,
                         usage=Usage(int(inp), int(out), int(cached), int(written),
                                     file_search_calls=int(calls)))
        if cost.total is None:
            reason = cost.reason or "unpriced"
            acc.unpriced[reason] = acc.unpriced.get(reason, 0) + int(runs)
            continue
        acc.priced += int(runs)
        for i, v in enumerate((inp, cached, out, calls)):
            acc.tokens[i] += int(v)
        for m in METERS:
            acc.meters[m] += cost.meters[m]
    result = [
        CostGroup(
            key=dict(zip(dims, key, strict=True)), runs=acc.runs, priced_runs=acc.priced,
            input_tokens=acc.tokens[0], cached_input_tokens=acc.tokens[1], output_tokens=acc.tokens[2],
            file_search_calls=acc.tokens[3], meters={m: float(v) for m, v in acc.meters.items()},
            total_usd=float(sum(acc.meters.values(), Decimal(0))), unpriced=acc.unpriced,
            all_input_tokens=acc.all_input,
        )
        for key, acc in groups.items()
    ]
    result.sort(key=lambda g: (-g.total_usd, [str(v) for v in g.key.values()]))
    return result


def group_rates(con: duckdb.DuckDBPyConnection, prices: PriceTable) -> tuple[pl.DataFrame, dict[str, int]]:
    """Per (api, model, UTC day, tier) of the runs that reported input tokens: ``runs, input_tokens``
    (all of them), ``priced_runs, cost_usd`` (null when none priced) and ``input_rate`` (mean USD per input
    token of the priced runs); and the unpriced runs per reason. What-ifs price saved tokens with it."""
    rows: dict[str, list[Any]] = {k: [] for k in _RATE_SCHEMA}
    unpriced: dict[str, int] = {}
    for g in cost_by(con, prices, _BASE, where="input_tokens IS NOT NULL"):
        for k in _BASE:
            rows[k].append(g.key[k])
        rows["runs"].append(g.runs)
        rows["input_tokens"].append(float(g.all_input_tokens))
        rows["priced_runs"].append(g.priced_runs)
        rows["cost_usd"].append(g.total_usd if g.priced_runs else None)
        rows["input_rate"].append(g.input_rate)
        for reason, n in g.unpriced.items():
            unpriced[reason] = unpriced.get(reason, 0) + n
    return pl.DataFrame(rows, schema=_RATE_SCHEMA), unpriced


_RATE_SCHEMA = {"api": pl.String, "model": pl.String, "day": pl.Date, "tier": pl.String, "runs": pl.Int64,
                "input_tokens": pl.Float64, "priced_runs": pl.Int64, "cost_usd": pl.Float64,
                "input_rate": pl.Float64}
