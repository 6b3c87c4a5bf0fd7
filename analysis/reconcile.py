"""Reconciliation: what runmeter recorded against what OpenAI's organization Costs and Usage APIs billed.

Per UTC day:

- **Costs per line item.** Recorded: the runs in the store summed per UTC day (of ``started_at``), api,
  model and status in SQL and priced per group with :func:`analysis.cost_by.price_groups` (exactly the
  sum of the runs' own costs), split like the bill's line items: ``"<model>, input"`` (uncached and
  cache-write tokens), ``"<model>, cached input"``, ``"<model>, output"``, ``"file search tool calls"``;
  ``"vector storage"`` from the snapshots under the given
  :class:`~analysis.storage.StorageAssumptions` (those of ``runmeter storage report``; the bill meters
  ``gibibyte_hours``, so ``free_per="hour"`` may match it better). Billed line items name dated snapshots
  (``gpt-4o-2024-08-06, input``); both sides are keyed by the price table's entry for the model
  (``gpt-4o``), so an alias and its snapshot meet on one row.
- **Tokens and calls** (these must match exactly): input, cached input and output tokens and model
  requests per day and model from ``/usage/completions``, and file_search calls from
  ``/usage/file_search_calls``. Recorded model requests are a run's ``model_steps`` (Assistants), else 1;
  recorded calls count the APIs that bill per call (the price table's per-call price is above 0).
- **Storage**: GiB-hours from the snapshots against the bill's ``vector storage`` quantity (they agree to
  within the snapshots' sampling error), and the cost.

Drift is ``billed - recorded`` (positive: billed more than runmeter saw); percent is of recorded.
The explanation names known causes: no runs recorded on a billed day (another app or an un-instrumented
client), interrupted runs without usage (billed but unseen), runs recorded without usage, unpriced
models, usage runmeter recorded that is not on the bill, storage after the last snapshot.

The SQL half (:func:`recorded_from_store`) reads the store; :func:`reconcile` is pure.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import duckdb

from analysis.cost_by import price_groups
from analysis.prices import PriceTable
from analysis.storage import StorageAssumptions, bucket_byte_micros_sql, daily_costs

LINE_FILE_SEARCH = "file search tool calls"
LINE_STORAGE = "vector storage"
TOKEN_MEASURES = ("input_tokens", "cached_input_tokens", "output_tokens", "num_model_requests")
STORAGE_TOLERANCE_PCT = 1.0
"""Storage drift within this percentage is sampling error of the snapshots, not a discrepancy."""

_METER_LINES = {"input": "input", "cache_write": "input", "cached_input": "cached input", "output": "output"}
"""Cost meters (:data:`analysis.cost.METERS`) -> the bill's line-item meter."""
_GIB_HOUR_BYTE_US = 2**30 * 3_600_000_000
_EPS = 1e-9


# --------------------------------------------------------------------------------------------- bill

@dataclass(frozen=True, slots=True)
class BilledCost:
    """One line item of one day of ``/organization/costs`` (grouped by ``line_item``)."""

    day: date
    line_item: str
    amount_usd: float
    quantity: float | None = None
    quantity_unit: str | None = None


@dataclass(frozen=True, slots=True)
class BilledTokens:
    """One model's day of ``/organization/usage/completions`` (grouped by ``model``)."""

    day: date
    model: str
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    num_model_requests: int


@dataclass(frozen=True, slots=True)
class Bill:
    """Everything fetched from the organization APIs for a range of days."""

    costs: tuple[BilledCost, ...] = ()
    tokens: tuple[BilledTokens, ...] = ()
    file_search_calls: Mapping[date, int] = field(default_factory=dict)
    """``/usage/file_search_calls`` ``num_requests`` per day."""
    storage_bytes: Mapping[date, int] = field(default_factory=dict)
    """``/usage/vector_stores`` ``usage_bytes`` per day."""


def split_line_item(line_item: str) -> tuple[str | None, str]:
    """``"gpt-4o-2024-08-06, cached input"`` -> ``("gpt-4o-2024-08-06", "cached input")``; tool and storage
    items have no model (``"file search tool calls"`` -> ``(None, "file search tool calls")``)."""
    model, sep, meter = line_item.partition(", ")
    if not sep:
        return None, line_item
    return model, meter


# -------------------------------------------------------------------------------------------- store

@dataclass(frozen=True, slots=True)
class DayContext:
    """What the store says about one UTC day and model (``model`` ``None``: the whole day)."""

    runs: int = 0
    interrupted_without_usage: int = 0
    without_usage: int = 0
    """Runs with no usage on the wire that were not interrupted (e.g. chat without include_usage)."""
    unpriced_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Recorded:
    """runmeter's side, keyed like the bill (model names already mapped to price-table entries)."""

    costs: Mapping[tuple[date, str], float | None]
    """(day, line item) -> USD; ``None`` when the runs behind it are unpriced."""
    tokens: Mapping[tuple[date, str], Mapping[str, int]]
    """(day, model) -> :data:`TOKEN_MEASURES` sums over runs with usage."""
    file_search_calls: Mapping[date, int]
    storage_gib_hours: Mapping[date, float]
    storage_usd: Mapping[date, float]
    context: Mapping[tuple[date, str | None], DayContext]
    last_snapshot: datetime | None = None
    storage_assumptions: StorageAssumptions | None = None
    """How ``storage_usd`` was priced (``None``: not known to the producer)."""


_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")


def model_key(table: PriceTable, model: str | None) -> str:
    """The name both sides are keyed by: the price-table entry, else the model without a snapshot date."""
    if model is None:
        return "(unknown model)"
    return table.lookup(model).priced_as or _SNAPSHOT.sub("", model)


def _line(model: str, meter: str) -> str:
    return f"{model}, {meter}"


def recorded_from_store(
    con: duckdb.DuckDBPyConnection,
    table: PriceTable,
    start: date,
    end: date,
    storage: StorageAssumptions | None = None,
) -> Recorded:
    """runmeter's recorded costs, tokens, calls and storage over UTC days ``[start, end)`` (SQL).

    Runs are summed in SQL per UTC day, api, model and status and priced per group
    (:func:`analysis.cost_by.price_groups`), so the cost is the exact sum of the runs' own costs and the time
    grows with the groups, not the runs. Storage cost follows ``storage`` (price, free GB, unit, free GB per
    day or hour: the same assumptions as ``runmeter storage report``); GiB-hours are always GiB (the bill's
    ``gibibyte_hours``), whatever ``storage.unit`` is. ``None``: the defaults of
    :class:`~analysis.storage.StorageAssumptions`.
    """
    storage = storage or StorageAssumptions()
    amounts: dict[tuple[date, str], Decimal | None] = {}
    context: dict[tuple[date, str | None], DayContext] = {}
    per_call_apis = {api for api, price in table.file_search_call_per_1k.items() if price > 0}
    tokens: dict[tuple[date, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(TOKEN_MEASURES, 0))
    calls: dict[date, int] = defaultdict(int)
    groups = price_groups(con, table, ("day", "api", "model", "status"), since=start, until=end,
                          model_requests=True)
    for g in groups:
        day, api, model, status = g.key
        key, n = model_key(table, model), g.runs
        has_usage = g.input_tokens is not None
        unpriced = None
        # runs without usage are counted in the day's context, not priced: they must not unprice the model
        if g.input_tokens is not None and g.output_tokens is not None:
            if g.reason is not None:
                unpriced = g.reason
                for meter in ("input", "cached input", "output"):
                    amounts[(day, _line(key, meter))] = None
            else:
                _add_meters(amounts, day, key, g.meters)
        for ctx_key in ((day, key), (day, None)):
            ctx = context.get(ctx_key, DayContext())
            interrupted = n if not has_usage and status == "interrupted" else 0
            silent = n if not has_usage and status != "interrupted" else 0
            reason = unpriced if unpriced is not None and ctx_key[1] is not None else ctx.unpriced_reason
            context[ctx_key] = DayContext(ctx.runs + n, ctx.interrupted_without_usage + interrupted,
                                          ctx.without_usage + silent, reason)
        if api in per_call_apis and g.file_search_calls:
            calls[day] += g.file_search_calls
        if not has_usage:
            continue
        acc = tokens[(day, key)]
        acc["input_tokens"] += g.input_tokens or 0
        acc["cached_input_tokens"] += g.cached_input_tokens
        acc["output_tokens"] += g.output_tokens or 0
        acc["num_model_requests"] += g.model_requests or 0

    costs = {k: None if v is None else float(v) for k, v in amounts.items()}
    last = con.execute("SELECT max(observed_at) FROM vector_store_snapshots").fetchone()
    last_snapshot = last[0] if last is not None else None
    gib_hours: dict[date, float] = {}
    storage_usd: dict[date, float] = {}
    if last_snapshot is not None:
        byte_us = bucket_byte_micros_sql(con, start, end, until=last_snapshot, bucket=storage.free_per)
        held: dict[date, int] = defaultdict(int)
        for (bucket, _store), value in byte_us.items():
            held[bucket.date()] += value
        for c in daily_costs(byte_us, start, end, storage):
            gib_hours[c.day] = float(Fraction(held.get(c.day, 0), _GIB_HOUR_BYTE_US))
            storage_usd[c.day] = float(c.cost_usd)
    return Recorded(costs, {k: dict(v) for k, v in tokens.items()}, dict(calls), gib_hours, storage_usd,
                    context, last_snapshot, storage)


def _add_meters(amounts: dict[tuple[date, str], Decimal | None], day: date, key: str,
                meters: Mapping[str, Decimal]) -> None:
    """Add a priced group's meters to its day's lines, unless a line is already unpriced (``None``)."""
    for meter, line_meter in _METER_LINES.items():
        line = (day, _line(key, line_meter))
        if meters[meter] and (line not in amounts or amounts[line] is not None):
            amounts[line] = (amounts.get(line) or Decimal(0)) + meters[meter]
    if meters["file_search_calls"]:
        line = (day, LINE_FILE_SEARCH)
        amounts[line] = (amounts.get(line) or Decimal(0)) + meters["file_search_calls"]


# ------------------------------------------------------------------------------------------- result

@dataclass(frozen=True, slots=True)
class CostDrift:
    """One day and line item: recorded against billed USD."""

    day: date
    line_item: str
    """runmeter's key (``gpt-4o, output``); ``billed_as`` holds the bill's own names."""
    billed_as: tuple[str, ...]
    recorded_usd: float | None
    billed_usd: float | None
    drift_usd: float | None
    drift_pct: float | None
    explanation: str

    @property
    def matches(self) -> bool:
        """Whether both sides agree (to floating-point noise)."""
        if self.drift_usd is None:
            return False
        return abs(self.drift_usd) <= _EPS * max(1.0, abs(self.billed_usd or 0))


@dataclass(frozen=True, slots=True)
class CountDrift:
    """One day, model and measure (tokens, model requests, file_search calls): must match exactly."""

    day: date
    model: str | None
    measure: str
    recorded: int
    billed: int
    drift: int
    explanation: str


@dataclass(frozen=True, slots=True)
class StorageDrift:
    """One day of vector-store storage."""

    day: date
    recorded_gib_hours: float | None
    billed_gib_hours: float | None
    drift_pct: float | None
    recorded_usd: float | None
    billed_usd: float | None
    billed_mean_bytes: int | None
    explanation: str


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """The whole comparison over UTC days ``[start, end)``."""

    start: date
    end: date
    costs: tuple[CostDrift, ...]
    counts: tuple[CountDrift, ...]
    storage: tuple[StorageDrift, ...]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (dates as ISO strings)."""
        def conv(value: Any) -> Any:
            if isinstance(value, date):
                return value.isoformat()
            if isinstance(value, dict):
                return {k: conv(v) for k, v in value.items()}
            if isinstance(value, list | tuple):
                return [conv(v) for v in value]
            return value

        return {"start": self.start.isoformat(), "end": self.end.isoformat(),
                "costs": [conv(asdict(c)) for c in self.costs],
                "counts": [conv(asdict(c)) for c in self.counts],
                "storage": [conv(asdict(s)) for s in self.storage]}


# ---------------------------------------------------------------------------------------- reconcile

def explain(ctx_day: DayContext, ctx_model: DayContext | None, recorded: float | None, billed: float | None,
            *, matched: bool) -> str:
    """The known causes of one row's drift (pure); empty when the row matches."""
    if matched:
        return ""
    causes = []
    if ctx_model is not None and ctx_model.unpriced_reason:
        causes.append(f"unpriced in runmeter: {ctx_model.unpriced_reason}")
    if (billed or 0) > 0 and not recorded and ctx_day.runs == 0:
        causes.append("runs not seen by runmeter: no runs recorded this day (another app or an "
                      "un-instrumented client)")
    scope = ctx_model if ctx_model is not None else ctx_day
    if scope.interrupted_without_usage and (billed or 0) > (recorded or 0):
        causes.append(
            f"{scope.interrupted_without_usage} interrupted run(s) without usage: billed but unseen"
        )
    if scope.without_usage and (billed or 0) > (recorded or 0):
        causes.append(f"{scope.without_usage} run(s) recorded without usage (e.g. a chat stream without "
                      "stream_options.include_usage)")
    if (recorded or 0) > 0 and not billed:
        causes.append("not on the bill: billing lag, or the usage fell on another UTC day")
    if not causes:
        if (billed or 0) > 0 and ctx_day.runs and ctx_model is not None and ctx_model.runs == 0:
            causes.append("runs not seen by runmeter: this model has no recorded runs this day")
        else:
            causes.append("unexplained")
    return "; ".join(causes)


def _pct(drift: float | None, recorded: float | None) -> float | None:
    if drift is None or not recorded:
        return None
    return drift / recorded * 100.0


def _billed_cost_lines(bill: Bill, table: PriceTable) -> dict[tuple[date, str], tuple[float, list[str]]]:
    out: dict[tuple[date, str], tuple[float, list[str]]] = {}
    for c in bill.costs:
        model, meter = split_line_item(c.line_item)
        key = (c.day, meter if model is None else _line(model_key(table, model), meter))
        amount, names = out.get(key, (0.0, []))
        out[key] = (amount + c.amount_usd, [*names, c.line_item] if c.line_item not in names else names)
    return out


def _cost_rows(rec: Recorded, bill: Bill, table: PriceTable) -> list[CostDrift]:
    billed = _billed_cost_lines(bill, table)
    keys = sorted(set(rec.costs) | set(billed) | {(d, LINE_STORAGE) for d in rec.storage_usd})
    rows = []
    for day, line in keys:
        amount, names = billed.get((day, line), (None, []))
        if line == LINE_STORAGE:
            recorded: float | None = rec.storage_usd.get(day)
        else:
            recorded = rec.costs.get((day, line), 0.0)
        if amount is None and (recorded is None or (line == LINE_STORAGE and not recorded)):
            continue
        model, _meter = split_line_item(line)
        drift = None if recorded is None else (amount or 0.0) - recorded
        row = CostDrift(day, line, tuple(names), recorded, amount, drift, _pct(drift, recorded), "")
        # storage is also compared by quantity in its own table; here it is one more cost line
        ctx_day = rec.context.get((day, None), DayContext())
        ctx_model = rec.context.get((day, model), DayContext()) if model is not None else None
        if line == LINE_STORAGE:
            text = "" if row.matches else _storage_note(rec, day) + _assumption_note(rec)
        else:
            text = explain(ctx_day, ctx_model, recorded, amount, matched=row.matches)
        rows.append(dataclasses.replace(row, explanation=text))
    return rows


def _assumption_note(rec: Recorded) -> str:
    a = rec.storage_assumptions
    if a is None:
        return ""
    hint = " (the bill meters gibibyte_hours: the free GB may apply per hour)" if a.free_per == "day" else ""
    return (f"; recorded storage assumes ${a.price_per_gb_day} per {a.unit}-day, {a.free_gb} {a.unit} free "
            f"per {a.free_per}{hint}")


def _storage_note(rec: Recorded, day: date) -> str:
    if rec.last_snapshot is None:
        return "no vector-store snapshots in the store (run `runmeter storage poll`)"
    last = rec.last_snapshot.astimezone(UTC) if rec.last_snapshot.tzinfo else rec.last_snapshot
    if day >= last.date():
        return (f"storage after the last snapshot ({last:%Y-%m-%d %H:%M} UTC) is not observed; "
                "snapshots sample usage_bytes, so small drift is expected")
    return "snapshots sample usage_bytes, so small drift is expected"


def _count_rows(rec: Recorded, bill: Bill, table: PriceTable) -> list[CountDrift]:
    billed: dict[tuple[date, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(TOKEN_MEASURES, 0))
    for t in bill.tokens:
        acc = billed[(t.day, model_key(table, t.model))]
        for m in TOKEN_MEASURES:
            acc[m] += getattr(t, m)
    rows = []
    for day, model in sorted(set(rec.tokens) | set(billed)):
        have = rec.tokens.get((day, model), dict.fromkeys(TOKEN_MEASURES, 0))
        want = billed.get((day, model), dict.fromkeys(TOKEN_MEASURES, 0))
        ctx_day = rec.context.get((day, None), DayContext())
        ctx_model = rec.context.get((day, model), DayContext())
        for m in TOKEN_MEASURES:
            r, b = have[m], want[m]
            text = explain(ctx_day, DayContext(ctx_model.runs, ctx_model.interrupted_without_usage,
                                               ctx_model.without_usage), r, b, matched=r == b)
            rows.append(CountDrift(day, model, m, r, b, b - r, text))
    for day in sorted(set(rec.file_search_calls) | set(bill.file_search_calls)):
        r, b = rec.file_search_calls.get(day, 0), bill.file_search_calls.get(day, 0)
        text = explain(rec.context.get((day, None), DayContext()), None, r, b, matched=r == b)
        rows.append(CountDrift(day, None, "file_search_calls", r, b, b - r, text))
    return rows


def _storage_rows(rec: Recorded, bill: Bill) -> list[StorageDrift]:
    billed_q = {c.day: c.quantity for c in bill.costs if c.line_item == LINE_STORAGE}
    billed_usd = {c.day: c.amount_usd for c in bill.costs if c.line_item == LINE_STORAGE}
    days = sorted(set(billed_q) | {d for d, v in rec.storage_gib_hours.items() if v > 0}
                  | set(bill.storage_bytes))
    rows = []
    for day in days:
        r, b = rec.storage_gib_hours.get(day), billed_q.get(day)
        pct = None if not r or b is None else (b - r) / r * 100.0
        ok = pct is not None and abs(pct) <= STORAGE_TOLERANCE_PCT
        text = ("within the snapshots' sampling error" if ok and abs(pct or 0) > _EPS
                else "" if ok else _storage_note(rec, day))
        rows.append(StorageDrift(day, r, b, pct, rec.storage_usd.get(day), billed_usd.get(day),
                                 bill.storage_bytes.get(day), text))
    return rows


def reconcile(rec: Recorded, bill: Bill, table: PriceTable, start: date, end: date) -> Reconciliation:
    """Compare runmeter's records with the bill (pure)."""
    return Reconciliation(
        start, end, tuple(_cost_rows(rec, bill, table)), tuple(_count_rows(rec, bill, table)),
        tuple(_storage_rows(rec, bill)),
    )


def default_range(con: duckdb.DuckDBPyConnection, today: date) -> tuple[date, date]:
    """The days the store covers (runs and snapshots), or the week before ``today`` when it is empty."""
    row = con.execute(
        """
        SELECT min(d), max(d) FROM (
            SELECT CAST(started_at AT TIME ZONE 'UTC' AS DATE) AS d FROM runs
            UNION ALL
            SELECT CAST(observed_at AT TIME ZONE 'UTC' AS DATE) FROM vector_store_snapshots
        )
        """
    ).fetchone()
    if row is None or row[0] is None:
        return today - timedelta(days=7), today + timedelta(days=1)
    return row[0], row[1] + timedelta(days=1)


__all__ = [
    "LINE_FILE_SEARCH",
    "LINE_STORAGE",
    "STORAGE_TOLERANCE_PCT",
    "TOKEN_MEASURES",
    "Bill",
    "BilledCost",
    "BilledTokens",
    "CostDrift",
    "CountDrift",
    "DayContext",
    "Reconciliation",
    "Recorded",
    "StorageDrift",
    "default_range",
    "explain",
    "model_key",
    "reconcile",
    "recorded_from_store",
    "split_line_item",
]
