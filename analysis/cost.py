"""What a run cost, meter by meter, from its usage and the price table.

Formula (USD; prices per 1M tokens, ``file_search`` per 1,000 calls)::

    input        = (input_tokens - cached_input_tokens - cache_write_tokens) * input price
    cached_input = cached_input_tokens * cached-input price (input price when the model has none)
    cache_write  = cache_write_tokens * cache-write price (input price when none is known)
    output       = output_tokens * output price          (reasoning tokens are inside output_tokens)
    file_search_calls = calls * per-call price of the API ($2.50 / 1,000 on Responses, 0 on Assistants)

Token meters are multiplied by the service tier's multiplier (``flex``/``batch`` 0.5; ``priority`` only where
the model's entry knows it; anything else leaves the run unpriced).

Precision: every amount is an exact :class:`~decimal.Decimal` (prices are read from the file's text, token
counts are integers, so ``600 * 2.50 / 1M`` is exactly ``0.0015``); nothing is rounded until
:meth:`RunCost.rounded` is asked for (cents, ``ROUND_HALF_EVEN``). :func:`run_costs` does the same
arithmetic in DuckDB on ``DECIMAL(38,15)`` per-token rates (exact for prices with up to 9 decimal places per
1M tokens; finer user prices are rounded to 1e-15 USD per token) and returns each amount as the float64
nearest the exact value; round sums to cents for display.

A run that cannot be priced (unknown model, unknown tier, missing usage) gets ``total=None`` and a reason,
never $0.

The formula is written once in Python, :func:`price_counts` (counts x :class:`MeterRates`): :func:`price_run`
and the ingest-time metrics use it. The SQL of :func:`run_costs` and of the grouped pricing
(:func:`analysis.cost_by.price_groups`, per day, model, tag, status...) multiplies the same rates
(:func:`meter_rates`) the same way, on DECIMALs; :func:`price_counts` is their reference.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from analysis.prices import PriceTable
from collector.record import RunRecord

METERS = ("input", "cached_input", "cache_write", "output", "file_search_calls")
"""The meters of a run's cost breakdown, in display order."""

_PER_TOKEN = Decimal(1_000_000)
_PER_CALL = Decimal(1_000)
_CENT = Decimal("0.01")
_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Usage:
    """A run's metered usage as the wire reported it (``None`` = not reported).

    ``cached_input_tokens`` and ``cache_write_tokens`` are parts of ``input_tokens``; ``reasoning_tokens``
    is part of ``output_tokens`` and is not priced again.
    """

    input_tokens: int | None
    output_tokens: int | None
    cached_input_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    file_search_calls: int | None = None


@dataclass(frozen=True, slots=True)
class RunCost:
    """A run's cost per meter (exact Decimals, USD), or why it could not be priced."""

    model: str | None
    priced_as: str | None
    """Price-table entry used (``gpt-4o-mini`` for ``gpt-4o-mini-2024-07-18``)."""
    price_from: date | None
    """First day of the price period applied."""
    service_tier: str | None
    meters: Mapping[str, Decimal] = field(default_factory=dict)
    """``METERS`` -> USD; empty when unpriced."""
    total: Decimal | None = None
    reason: str | None = None
    """Why ``total`` is ``None``."""

    @property
    def priced(self) -> bool:
        """Whether the run has a cost."""
        return self.total is not None

    def rounded(self, quantum: Decimal = _CENT) -> Decimal | None:
        """``total`` rounded to ``quantum`` (cents by default, half-even); ``None`` when unpriced."""
        return None if self.total is None else self.total.quantize(quantum, rounding=ROUND_HALF_EVEN)


def utc_day(value: date | datetime | float | int | None) -> date | None:
    """The UTC calendar day of a timestamp (naive datetimes are taken as UTC; numbers as Unix seconds)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.date()
    if isinstance(value, date):
        return value
    return datetime.fromtimestamp(float(value), tz=UTC).date()


@dataclass(frozen=True, slots=True)
class MeterRates:
    """USD per token of each token meter (service tier applied) and per file_search call, for one (model,
    UTC day, tier, api); or why there are none. The one source of rates: :func:`price_run`, :func:`run_costs`
    and the grouped pricing of :mod:`analysis.cost_by` all multiply these."""

    priced_as: str | None
    price_from: date | None
    input: Decimal | None = None
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None
    output: Decimal | None = None
    per_call: Decimal | None = None
    reason: str | None = None
    """Model or tier has no price."""
    call_reason: str | None = None
    """Why a run with file_search calls is unpriced (the API has no per-call price)."""


def normal_tier(service_tier: str | None) -> str | None:
    """A run's service tier as pricing sees it: ``None`` for the default tier (``None``, ``''``,
    ``'default'``)."""
    return None if service_tier in (None, "", "default") else service_tier


def meter_rates(
    table: PriceTable, model: str | None, day: date | None, tier: str | None, api: str | None
) -> MeterRates:
    """The rates of ``model`` on UTC ``day`` under service ``tier`` (``None`` = default; see
    :func:`normal_tier`) and the per-call price of ``api`` (pure)."""
    match = table.lookup(model, day)
    per_1k = table.file_search_call_per_1k.get(api or "")
    per_call = None if per_1k is None else per_1k / _PER_CALL
    call_reason = None if per_1k is not None else f"file_search call price unknown for api {api!r}"
    price = match.price
    if price is None:
        return MeterRates(match.priced_as, None, reason=match.reason or "unpriced", call_reason=call_reason)
    factor = table.tier_multiplier(price, tier)
    if factor is None:
        reason = f"service tier {tier!r} has no known price for {match.priced_as}"
        return MeterRates(match.priced_as, price.effective_from, reason=reason, call_reason=call_reason)
    cached = price.cached_input if price.cached_input is not None else price.input
    write = price.cache_write if price.cache_write is not None else price.input
    return MeterRates(
        match.priced_as,
        price.effective_from,
        input=price.input * factor / _PER_TOKEN,
        cached_input=cached * factor / _PER_TOKEN,
        cache_write=write * factor / _PER_TOKEN,
        output=price.output * factor / _PER_TOKEN,
        per_call=per_call,
        call_reason=call_reason,
    )


def price_counts(
    rates: MeterRates, input_tokens: int, cached_input_tokens: int, cache_write_tokens: int,
    output_tokens: int, file_search_calls: int,
) -> dict[str, Decimal] | None:
    """A run's cost per meter (:data:`METERS` -> exact USD) from its counts and ``rates`` (pure): the one
    place the per-run formula of this module's docstring is written.

    The counts must be sound (not negative; cached + cache-write tokens within input; see
    :func:`price_run`, which checks them). ``None`` when ``rates`` have no price (model or tier unpriced),
    or when the run made file_search calls and the API has no per-call price.

    :func:`price_run` computes its meters here; the ingest-time metrics
    (:meth:`collector.metrics.contributions.Labeller.meters`) call it with cached :func:`meter_rates`.
    The SQL of :func:`run_costs` and of :func:`analysis.cost_by.price_groups` multiplies the same rates
    the same way, on DECIMALs.
    """
    r_in, r_cached, r_write, r_out = rates.input, rates.cached_input, rates.cache_write, rates.output
    if r_in is None or r_cached is None or r_write is None or r_out is None:
        return None
    if rates.per_call is None and file_search_calls:
        return None
    return {
        "input": (input_tokens - cached_input_tokens - cache_write_tokens) * r_in,
        "cached_input": cached_input_tokens * r_cached,
        "cache_write": cache_write_tokens * r_write,
        "output": output_tokens * r_out,
        "file_search_calls": file_search_calls * (rates.per_call or _ZERO),
    }


def _usage_problem(usage: Usage) -> str | None:
    if usage.input_tokens is None or usage.output_tokens is None:
        missing = "input_tokens" if usage.input_tokens is None else "output_tokens"
        return f"usage not recorded ({missing} missing)"
    counts = {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cached_input_tokens": usage.cached_input_tokens or 0,
        "cache_write_tokens": usage.cache_write_tokens or 0,
        "file_search_calls": usage.file_search_calls or 0,
    }
    negative = [k for k, v in counts.items() if v < 0]
    if negative:
        return f"negative usage: {', '.join(negative)}"
    cached, written = counts["cached_input_tokens"], counts["cache_write_tokens"]
    if cached + written > usage.input_tokens:
        return (
            f"inconsistent usage: cached ({cached}) + cache-write ({written}) tokens exceed input "
            f"({usage.input_tokens})"
        )
    return None


def price_run(
    table: PriceTable,
    *,
    model: str | None,
    api: str | None,
    usage: Usage,
    on: date | datetime | float | None,
    service_tier: str | None = None,
) -> RunCost:
    """The cost of one run, priced by the model's price on the UTC day ``on`` (pure).

    An unpriced run's reason is, in this order: usage missing, negative or inconsistent; the model has no
    price; the service tier has no price; the API has no file_search call price (only if it made calls).
    ``priced_as`` names the table entry whenever the model is known, priced or not.
    """
    tier = normal_tier(service_tier)
    rates = meter_rates(table, model, utc_day(on), tier, api)
    calls = usage.file_search_calls or 0
    reason = _usage_problem(usage) or rates.reason or (rates.call_reason if calls else None)
    if reason is not None:
        return RunCost(model, rates.priced_as, rates.price_from, tier, reason=reason)
    assert usage.input_tokens is not None and usage.output_tokens is not None
    meters = price_counts(rates, usage.input_tokens, usage.cached_input_tokens or 0,
                          usage.cache_write_tokens or 0, usage.output_tokens, calls)
    assert meters is not None  # the rates' reasons were checked above
    total = sum(meters.values(), Decimal(0))
    return RunCost(model, rates.priced_as, rates.price_from, tier, meters, total)


def usage_of(record: RunRecord) -> Usage:
    """The :class:`Usage` carried by a run record."""
    return Usage(
        input_tokens=record.input_tokens,
        output_tokens=record.output_tokens,
        cached_input_tokens=record.cached_input_tokens,
        cache_write_tokens=record.cache_write_tokens,
        reasoning_tokens=record.reasoning_tokens,
        file_search_calls=record.file_search_calls,
    )


def price_record(table: PriceTable, record: RunRecord) -> RunCost:
    """The cost of a :class:`~collector.record.RunRecord`, priced by its ``started_at`` day."""
    return price_run(
        table,
        model=record.model,
        api=record.api,
        usage=usage_of(record),
        on=record.started_at,
        service_tier=record.service_tier,
    )


def tier_sql(con: duckdb.DuckDBPyConnection) -> str:
    """SQL for a ``runs`` row's service tier normalised as :func:`normal_tier` does (NULL when the table
    has no ``service_tier`` column)."""
    rows = con.execute(
        "select 1 from information_schema.columns where table_name = 'runs' and column_name = 'service_tier'"
    ).fetchall()
    return TIER_SQL if rows else "NULL::VARCHAR"


TIER_SQL = "nullif(nullif(service_tier, ''), 'default')"
"""SQL for a ``runs`` row's service tier normalised as :func:`normal_tier` does."""


_RATE_TYPE = pa.decimal128(38, 15)
"""USD per token or call: exact for prices with up to 9 decimal places (per 1M tokens)."""

_RATE_QUANTUM = Decimal("1e-15")


def _fit(value: Decimal | None) -> Decimal | None:
    return None if value is None else value.quantize(_RATE_QUANTUM)


_COSTS_SQL = """
WITH base AS (
    SELECT run_id, api, model, started_at AT TIME ZONE 'UTC' AS started_at,
           CAST(started_at AT TIME ZONE 'UTC' AS DATE) AS day,
           {tier} AS service_tier,
           input_tokens, output_tokens,
           coalesce(cached_input_tokens, 0) AS cached, coalesce(cache_write_tokens, 0) AS written,
           coalesce(file_search_calls, 0) AS calls
    FROM runs {where}
),
checked AS (
    SELECT b.*, r.priced_as, r.r_in, r.r_cached, r.r_write, r.r_out, r.r_call,
        CASE
            WHEN input_tokens IS NULL THEN 'usage not recorded (input_tokens missing)'
            WHEN output_tokens IS NULL THEN 'usage not recorded (output_tokens missing)'
            WHEN input_tokens < 0 OR output_tokens < 0 OR cached < 0 OR written < 0 OR calls < 0 THEN
                'negative usage: ' || concat_ws(', ',
                    CASE WHEN input_tokens < 0 THEN 'input_tokens' END,
                    CASE WHEN output_tokens < 0 THEN 'output_tokens' END,
                    CASE WHEN cached < 0 THEN 'cached_input_tokens' END,
                    CASE WHEN written < 0 THEN 'cache_write_tokens' END,
                    CASE WHEN calls < 0 THEN 'file_search_calls' END)
            WHEN cached + written > input_tokens THEN
                'inconsistent usage: cached (' || cached || ') + cache-write (' || written
                || ') tokens exceed input (' || input_tokens || ')'
            WHEN r.reason IS NOT NULL THEN r.reason
            WHEN calls > 0 THEN r.call_reason
        END AS unpriced_reason
    FROM base b JOIN {rates} r
      ON b.model IS NOT DISTINCT FROM r.model AND b.day IS NOT DISTINCT FROM r.day
     AND b.service_tier IS NOT DISTINCT FROM r.service_tier AND b.api IS NOT DISTINCT FROM r.api
),
metered AS (
    SELECT run_id, api, model, started_at, service_tier, priced_as, unpriced_reason,
           CASE WHEN unpriced_reason IS NULL THEN (input_tokens - cached - written) * r_in END AS m_in,
           CASE WHEN unpriced_reason IS NULL THEN cached * r_cached END AS m_cached,
           CASE WHEN unpriced_reason IS NULL THEN written * r_write END AS m_write,
           CASE WHEN unpriced_reason IS NULL THEN output_tokens * r_out END AS m_out,
           CASE WHEN unpriced_reason IS NULL THEN calls * coalesce(r_call, 0) END AS m_call
    FROM checked
)
SELECT run_id, api, model, started_at, service_tier, priced_as,
       m_in::DOUBLE AS input_usd, m_cached::DOUBLE AS cached_input_usd, m_write::DOUBLE AS cache_write_usd,
       m_out::DOUBLE AS output_usd, m_call::DOUBLE AS file_search_calls_usd,
       (m_in + m_cached + m_write + m_out + m_call)::DOUBLE AS total_usd,
       unpriced_reason
FROM metered
ORDER BY started_at, run_id
"""


def run_costs(
    con: duckdb.DuckDBPyConnection,
    table: PriceTable,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pl.DataFrame:
    """One row per run in ``runs`` (``since <= started_at < until``; pass aware datetimes) with its cost.

    The SQL (``_COSTS_SQL``) is :func:`price_counts`' formula on DECIMAL rates, meter for meter: that
    function is the reference (change both together; ``tests/test_cost.py`` checks they agree).

    Columns: ``run_id, api, model, started_at`` (naive UTC), ``service_tier, priced_as``, one
    ``<meter>_usd`` float column per :data:`METERS`, ``total_usd`` (null when unpriced) and
    ``unpriced_reason``; the same numbers and reasons as :func:`price_run`. Prices are looked up once per
    distinct (model, UTC day, tier, api); the arithmetic runs in DuckDB on exact DECIMALs and is
    converted to float64 only at the end. Uses the ``service_tier`` column when the table has one.
    """
    tier_expr = tier_sql(con)
    where, params = [], []
    if since is not None:
        where.append("started_at >= ?")
        params.append(since)
    if until is not None:
        where.append("started_at < ?")
        params.append(until)
    where_sql = ("WHERE " + " AND ".join(where)) if where else ""
    combos = con.execute(
        f"SELECT DISTINCT model, CAST(started_at AT TIME ZONE 'UTC' AS DATE), "
        f"{tier_expr}, api FROM runs {where_sql}",
        params,
    ).fetchall()
    columns: dict[str, list[Any]] = {k: [] for k in (
        "model", "day", "service_tier", "api", "priced_as", "r_in", "r_cached", "r_write", "r_out", "r_call",
        "reason", "call_reason",
    )}
    for model, day, tier, api in combos:
        rates = meter_rates(table, model, day, tier, api)
        for key, value in (
            ("model", model), ("day", day), ("service_tier", tier), ("api", api),
            ("priced_as", rates.priced_as), ("r_in", rates.input), ("r_cached", rates.cached_input),
            ("r_write", rates.cache_write), ("r_out", rates.output), ("r_call", rates.per_call),
            ("reason", rates.reason), ("call_reason", rates.call_reason),
        ):
            columns[key].append(value)
    rate_table = pa.table({
        **{k: pa.array(columns[k], pa.string()) for k in ("model", "service_tier", "api", "priced_as")},
        "day": pa.array(columns["day"], pa.date32()),
        **{k: pa.array([_fit(v) for v in columns[k]], _RATE_TYPE)
           for k in ("r_in", "r_cached", "r_write", "r_out", "r_call")},
        **{k: pa.array(columns[k], pa.string()) for k in ("reason", "call_reason")},
    })
    name = f"_runmeter_rates_{uuid.uuid4().hex}"
    con.register(name, rate_table)
    try:
        relation = con.sql(_COSTS_SQL.format(tier=tier_expr, where=where_sql, rates=name), params=params)
        assert relation is not None
        arrow = relation.to_arrow_table()
    finally:
        con.unregister(name)
    frame = pl.from_arrow(arrow)
    assert isinstance(frame, pl.DataFrame)
    return frame.with_columns(pl.col("started_at").cast(pl.Datetime("us")))
