"""Vector-store storage: GB-days from usage snapshots, daily cost, a 30-day forecast and what-ifs.

Integration (the same in the pure functions and in SQL): a snapshot's ``usage_bytes`` holds from its
``observed_at`` until the next snapshot of that store, or until ``until`` (the time of the last observation
run, "now") for the latest one, and no later than the snapshot's ``expires_at``. A snapshot whose status is
``expired`` or ``deleted`` holds nothing (the store stopped billing there); a snapshot with 0 bytes holds 0.
The held byte-time is split at UTC day (or hour) boundaries and summed exactly as integer
byte-microseconds; GB = bytes / 2^30 (``GiB``, the default) or / 10^9.

Cost: see :class:`StorageAssumptions`. Day sums are computed as exact fractions and returned as
:class:`~decimal.Decimal` (USD; exact whenever the value terminates within 28 significant digits, as every
hand-worked example does); the forecast is an estimate and uses floats.

A poller that finds a store gone (404) should record a snapshot with status ``deleted`` (or 0 bytes).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Literal

import duckdb
import polars as pl

Unit = Literal["GiB", "GB"]
FreePer = Literal["day", "hour"]
Bucket = Literal["day", "hour"]

STOPPED_STATUSES = frozenset({"expired", "deleted"})
"""Snapshot statuses after which a store no longer bills."""

_US = {"day": 86_400_000_000, "hour": 3_600_000_000}
_STEP = {"day": timedelta(days=1), "hour": timedelta(hours=1)}


@dataclass(frozen=True, slots=True)
class StorageAssumptions:
    """How vector-store storage is billed. The defaults are runmeter's assumptions, not documented facts.

    - ``price_per_gb_day``: $0.10 per GB per day (OpenAI pricing page as quoted by modelcostwatch.com,
      checked 2026-03-12; see openai-wire.md section 6).
    - ``free_gb``: the first 1 GB is free, applied once for the whole organization (over the sum of all
      stores), not per store; the scope is not stated by OpenAI.
    - ``unit``: ``GiB`` (2^30 bytes), as a third-party summary reports; ``GB`` uses 10^9 bytes.
    - ``free_per``: ``day`` subtracts the free GB from each UTC day's mean GB (its GB-days); ``hour``
      subtracts it from each hour's mean GB and bills that hour at price/24 (the org costs API meters
      storage in ``gibibyte_hours``, so hourly billing is plausible).
    """

    price_per_gb_day: Decimal = Decimal("0.10")
    free_gb: Decimal = Decimal(1)
    unit: Unit = "GiB"
    free_per: FreePer = "day"

    def __post_init__(self) -> None:
        if self.unit not in ("GiB", "GB"):
            raise ValueError(f"StorageAssumptions.unit must be 'GiB' or 'GB', got {self.unit!r}")
        if self.free_per not in ("day", "hour"):
            raise ValueError(f"StorageAssumptions.free_per must be 'day' or 'hour', got {self.free_per!r}")
        if self.price_per_gb_day < 0 or self.free_gb < 0:
            raise ValueError("StorageAssumptions: price and free allowance must not be negative")

    @property
    def bytes_per_gb(self) -> int:
        """Bytes in one billed GB."""
        return 2**30 if self.unit == "GiB" else 10**9


def holding_cost(gb: Fraction | Decimal | int, assumptions: StorageAssumptions) -> tuple[Fraction, Fraction]:
    """Holding ``gb`` GB (in ``assumptions.unit``) over one day: its billable GB and its cost in USD (pure,
    exact): ``billable = max(0, gb - free_gb)``, ``cost = billable * price_per_gb_day``.

    The one place the storage price is applied: the daily costs (:func:`daily_costs`, per day or per hour
    at 1/24 of it), the forecast (:func:`linear_forecast`) and the exporter's
    ``runmeter_storage_cost_usd_per_day`` all call it. Bytes become GB with :func:`gb_of_bytes`.
    """
    billable = max(Fraction(0), Fraction(gb) - Fraction(assumptions.free_gb))
    return billable, billable * Fraction(assumptions.price_per_gb_day)


def gb_of_bytes(nbytes: int, assumptions: StorageAssumptions) -> Fraction:
    """``nbytes`` in the billed GB of ``assumptions`` (GiB, 2^30 bytes, or GB, 10^9), exactly (pure)."""
    return Fraction(nbytes, assumptions.bytes_per_gb)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One observation of a vector store (a row of ``vector_store_snapshots``)."""

    vector_store_id: str
    observed_at: datetime
    usage_bytes: int
    status: str | None = None
    expires_at: datetime | None = None
    last_active_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Interval:
    """``usage_bytes`` held by a store over ``[start, end)`` (naive UTC)."""

    vector_store_id: str
    start: datetime
    end: datetime
    usage_bytes: int


@dataclass(frozen=True, slots=True)
class DailyStorageCost:
    """One UTC day of storage for the whole organization."""

    day: date
    gb_days: Decimal
    """Mean GB held over the day, summed over stores."""
    billable_gb_days: Decimal
    """GB-days left after the free allowance."""
    cost_usd: Decimal


def _utc(value: datetime) -> datetime:
    """A naive UTC datetime (aware values are converted; naive ones are taken as UTC)."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time())


def _micros(delta: timedelta) -> int:
    return delta // timedelta(microseconds=1)


def holding_intervals(
    snapshots: Iterable[Snapshot], until: datetime, *, expire_after_days: int | None = None
) -> list[Interval]:
    """The intervals over which each store held bytes, per the module's integration rule (pure).

    ``expire_after_days``: the what-if of every store having ``expires_after`` N days: a store stops at
    the first moment it has been idle (``last_active_at``) for N days, and never comes back.
    """
    until = _utc(until)
    by_store: dict[str, list[Snapshot]] = defaultdict(list)
    for snap in snapshots:
        by_store[snap.vector_store_id].append(snap)
    out: list[Interval] = []
    for store, snaps in by_store.items():
        snaps.sort(key=lambda s: _utc(s.observed_at))
        pieces: list[tuple[datetime, datetime, int, datetime | None]] = []
        for i, snap in enumerate(snaps):
            start = _utc(snap.observed_at)
            end = _utc(snaps[i + 1].observed_at) if i + 1 < len(snaps) else until
            end = min(end, until)
            if snap.expires_at is not None:
                end = min(end, _utc(snap.expires_at))
            if (snap.status or "") in STOPPED_STATUSES:
                continue
            cutoff = None
            if expire_after_days is not None and snap.last_active_at is not None:
                cutoff = _utc(snap.last_active_at) + timedelta(days=expire_after_days)
            pieces.append((start, end, snap.usage_bytes, cutoff))
        expiry = min((c for s, e, _, c in pieces if c is not None and c < e), default=None)
        for start, end, nbytes, _ in pieces:
            if expiry is not None:
                end = min(end, expiry)
            if end > start and nbytes > 0:
                out.append(Interval(store, start, end, nbytes))
    return out


def bucket_byte_micros(
    intervals: Iterable[Interval], start: date, end: date, bucket: Bucket = "day"
) -> dict[tuple[datetime, str], int]:
    """Byte-microseconds held per (UTC bucket start, store) within ``[start, end)`` days (pure)."""
    lo, hi, step = _midnight(start), _midnight(end), _STEP[bucket]
    out: dict[tuple[datetime, str], int] = defaultdict(int)
    for iv in intervals:
        a, b = max(iv.start, lo), min(iv.end, hi)
        if b <= a:
            continue
        cursor = _truncate(a, bucket)
        while cursor < b:
            nxt = cursor + step
            seg = _micros(min(b, nxt) - max(a, cursor))
            out[(cursor, iv.vector_store_id)] += iv.usage_bytes * seg
            cursor = nxt
    return dict(out)


def _dec(value: Fraction) -> Decimal:
    """A fraction as a Decimal (exact when it terminates within 28 significant digits)."""
    return Decimal(value.numerator) / Decimal(value.denominator)


def _truncate(value: datetime, bucket: Bucket) -> datetime:
    if bucket == "day":
        return value.replace(hour=0, minute=0, second=0, microsecond=0)
    return value.replace(minute=0, second=0, microsecond=0)


def daily_costs(
    byte_micros: Mapping[tuple[datetime, str], int],
    start: date,
    end: date,
    assumptions: StorageAssumptions = StorageAssumptions(),
) -> list[DailyStorageCost]:
    """Every UTC day in ``[start, end)`` with its GB-days and cost, from bucketed byte-microseconds (pure).

    The buckets must be days when ``assumptions.free_per`` is ``day`` and hours when it is ``hour``.
    The free allowance is applied to the organization's total in each bucket.
    """
    bucket: Bucket = assumptions.free_per
    bucket_us, day_us = _US[bucket], _US["day"]
    per_bucket: dict[datetime, int] = defaultdict(int)
    for (b0, _store), value in byte_micros.items():
        per_bucket[b0] += value
    # Exact rational arithmetic until the end: 1/24 of a day has no finite decimal expansion.
    gb = assumptions.bytes_per_gb
    buckets_per_day = day_us // bucket_us
    gb_days: dict[date, Fraction] = defaultdict(Fraction)
    billable: dict[date, Fraction] = defaultdict(Fraction)
    cost: dict[date, Fraction] = defaultdict(Fraction)
    for b0, value in per_bucket.items():
        gb_days[b0.date()] += Fraction(value, gb * day_us)
        # an hour bucket bills its mean GB for 1/24 of a day
        due, usd = holding_cost(Fraction(value, gb * bucket_us), assumptions)
        billable[b0.date()] += due / buckets_per_day
        cost[b0.date()] += usd / buckets_per_day
    out = []
    day = start
    while day < end:
        held, due, usd = (x.get(day, Fraction(0)) for x in (gb_days, billable, cost))
        out.append(DailyStorageCost(day, _dec(held), _dec(due), _dec(usd)))
        day += timedelta(days=1)
    return out


def costs_from_snapshots(
    snapshots: Iterable[Snapshot],
    start: date,
    end: date,
    *,
    until: datetime | None = None,
    assumptions: StorageAssumptions = StorageAssumptions(),
    exclude: Iterable[str] = (),
    expire_after_days: int | None = None,
) -> list[DailyStorageCost]:
    """Daily storage cost over ``[start, end)`` from in-memory snapshots (pure).

    ``until`` (default: midnight UTC ending ``end``) is when the latest snapshot of each store stops holding.
    """
    skip = set(exclude)
    kept = [s for s in snapshots if s.vector_store_id not in skip]
    horizon = _midnight(end) if until is None else until
    intervals = holding_intervals(kept, horizon, expire_after_days=expire_after_days)
    byte_us = bucket_byte_micros(intervals, start, end, assumptions.free_per)
    return daily_costs(byte_us, start, end, assumptions)


# --- SQL-backed (DuckDB): the same integration over vector_store_snapshots -------------------------------

_BUCKET_SQL = """
WITH snaps AS (
    SELECT vector_store_id,
           observed_at AT TIME ZONE 'UTC' AS t0,
           lead(observed_at AT TIME ZONE 'UTC')
               OVER (PARTITION BY vector_store_id ORDER BY observed_at) AS t_next,
           usage_bytes, status,
           expires_at AT TIME ZONE 'UTC' AS exp_at,
           last_active_at AT TIME ZONE 'UTC' AS active_at
    FROM vector_store_snapshots
    WHERE NOT list_contains($exclude, vector_store_id)
),
pieces AS (
    SELECT vector_store_id, t0, usage_bytes,
           least(coalesce(t_next, $until), $until, exp_at) AS t1,
           active_at + to_days($expire_days) AS cutoff
    FROM snaps
    WHERE coalesce(status, '') NOT IN ('expired', 'deleted')
),
expiry AS (
    SELECT vector_store_id, min(cutoff) FILTER (WHERE cutoff < t1) AS expires
    FROM pieces GROUP BY vector_store_id
),
clipped AS (
    SELECT p.vector_store_id, p.usage_bytes,
           greatest(p.t0, $lo) AS t0,
           least(p.t1, coalesce(e.expires, p.t1), $hi) AS t1
    FROM pieces p JOIN expiry e USING (vector_store_id)
    WHERE p.usage_bytes > 0
),
spread AS (
    SELECT vector_store_id, usage_bytes, t0, t1,
           unnest(generate_series(date_trunc('{unit}', t0), t1 - INTERVAL 1 MICROSECOND,
                                  INTERVAL 1 {unit})) AS b0
    FROM clipped
    WHERE t1 > t0
)
SELECT b0, vector_store_id,
       sum(usage_bytes::HUGEINT
           * (epoch_us(least(t1, b0 + INTERVAL 1 {unit})) - epoch_us(greatest(t0, b0)))) AS byte_us
FROM spread
GROUP BY b0, vector_store_id
ORDER BY b0, vector_store_id
"""


def bucket_byte_micros_sql(
    con: duckdb.DuckDBPyConnection,
    start: date,
    end: date,
    *,
    until: datetime | None = None,
    bucket: Bucket = "day",
    exclude: Iterable[str] = (),
    expire_after_days: int | None = None,
) -> dict[tuple[datetime, str], int]:
    """:func:`bucket_byte_micros` computed in DuckDB over ``vector_store_snapshots`` (window functions).

    ``until`` (default: midnight UTC ending ``end``) is when the latest snapshot of each store stops holding.
    """
    if bucket not in _US:
        raise ValueError(f"bucket must be 'day' or 'hour', got {bucket!r}")
    params = {
        "exclude": list(exclude),
        "until": _midnight(end) if until is None else _utc(until),
        "lo": _midnight(start),
        "hi": _midnight(end),
        # A NULL day count leaves every cutoff NULL, which turns the expires-after what-if off.
        "expire_days": expire_after_days,
    }
    rows = con.execute(_BUCKET_SQL.format(unit=bucket.upper()), params).fetchall()
    return {(b0, store): int(value) for b0, store, value in rows}


def daily_storage_costs(
    con: duckdb.DuckDBPyConnection,
    start: date,
    end: date,
    *,
    until: datetime | None = None,
    assumptions: StorageAssumptions = StorageAssumptions(),
    exclude: Iterable[str] = (),
    expire_after_days: int | None = None,
) -> list[DailyStorageCost]:
    """Daily storage cost of the organization over UTC days ``[start, end)``, from DuckDB snapshots."""
    byte_us = bucket_byte_micros_sql(
        con, start, end, until=until, bucket=assumptions.free_per, exclude=exclude,
        expire_after_days=expire_after_days,
    )
    return daily_costs(byte_us, start, end, assumptions)


def daily_gb_days(
    con: duckdb.DuckDBPyConnection,
    start: date,
    end: date,
    *,
    until: datetime | None = None,
    assumptions: StorageAssumptions = StorageAssumptions(),
) -> pl.DataFrame:
    """GB-days per store per UTC day: columns ``day`` (date), ``vector_store_id``, ``gb_days`` (float)."""
    byte_us = bucket_byte_micros_sql(con, start, end, until=until, bucket="day")
    scale = assumptions.bytes_per_gb * _US["day"]
    rows = [
        {"day": b0.date(), "vector_store_id": store, "gb_days": float(Decimal(v) / scale)}
        for (b0, store), v in sorted(byte_us.items())
    ]
    schema = {"day": pl.Date, "vector_store_id": pl.String, "gb_days": pl.Float64}
    return pl.DataFrame(rows, schema=schema)


def costs_frame(costs: Sequence[DailyStorageCost]) -> pl.DataFrame:
    """Daily costs as a frame (``day, gb_days, billable_gb_days, cost_usd``; floats for display)."""
    rows = [
        {"day": c.day, "gb_days": float(c.gb_days), "billable_gb_days": float(c.billable_gb_days),
         "cost_usd": float(c.cost_usd)}
        for c in costs
    ]
    schema = {"day": pl.Date, "gb_days": pl.Float64, "billable_gb_days": pl.Float64, "cost_usd": pl.Float64}
    return pl.DataFrame(rows, schema=schema)


# --- forecast -------------------------------------------------------------------------------------------

FORECAST_METHOD = (
    "ordinary least-squares line y = a + b*x fitted to the daily GB (GB-days per UTC day, all stores) of "
    "the last {window} complete days (x = day index); projected {horizon} days ahead, GB clamped at 0, "
    "each day's cost = price * max(0, GB - free GB)"
)


@dataclass(frozen=True, slots=True)
class ForecastPoint:
    """One forecast day."""

    day: date
    gb: float
    cost_usd: float


@dataclass(frozen=True, slots=True)
class StorageForecast:
    """A storage forecast and the method that produced it."""

    method: str
    slope_gb_per_day: float
    intercept_gb: float
    """Fitted GB at the first day of the fitted window."""
    fitted_days: tuple[date, ...]
    points: tuple[ForecastPoint, ...] = field(default_factory=tuple)

    @property
    def total_cost_usd(self) -> float:
        """Sum of the forecast days' costs."""
        return sum(p.cost_usd for p in self.points)


def linear_forecast(
    history: Sequence[tuple[date, float]],
    *,
    horizon_days: int = 30,
    window_days: int = 14,
    assumptions: StorageAssumptions = StorageAssumptions(),
) -> StorageForecast:
    """Forecast daily GB for the ``horizon_days`` after the last history day (pure).

    Method: ordinary least squares over the last ``window_days`` points of ``history`` (day, GB-days),
    with x the day offset from the window's first day; the line is extended past the last day and clamped
    at 0 GB. With one point the forecast is flat at it; with none, 0. The method text is returned as
    :attr:`StorageForecast.method`.
    """
    points = sorted(history)[-window_days:]
    method = FORECAST_METHOD.format(window=window_days, horizon=horizon_days)
    if not points:
        return StorageForecast(method + " (no history: flat 0)", 0.0, 0.0, ())
    origin = points[0][0]
    xs = [float((d - origin).days) for d, _ in points]
    ys = [float(v) for _, v in points]
    n = len(points)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = 0.0 if sxx == 0 else sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = mean_y - slope * mean_x
    if n == 1:
        method += " (one day of history: flat)"
    last = points[-1][0]
    out = []
    for k in range(1, horizon_days + 1):
        day = last + timedelta(days=k)
        gb = max(0.0, intercept + slope * (day - origin).days)
        out.append(ForecastPoint(day, gb, float(holding_cost(Fraction(gb), assumptions)[1])))
    return StorageForecast(method, slope, intercept, tuple(d for d, _ in points), tuple(out))


def first_snapshot_at(con: duckdb.DuckDBPyConnection) -> datetime | None:
    """The time of the first vector-store snapshot (naive UTC), or ``None`` when there is none."""
    row = con.execute(
        "SELECT min(observed_at) AT TIME ZONE 'UTC' FROM vector_store_snapshots").fetchone()
    return None if row is None else row[0]


def complete_days(first: datetime, today: date, window: int) -> int:
    """How many of the ``window`` UTC days before ``today`` the snapshots cover whole: a day counts from
    its midnight, so the first snapshot's day counts only if it began at midnight (a forecast fits these)."""
    first = _utc(first)
    first_full = first.date() if first.time() == time() else first.date() + timedelta(days=1)
    return min(window, (today - first_full).days)


def no_forecast_reason(today: date, first: datetime | None, until: datetime | None) -> str:
    """Why :func:`storage_forecast` returned ``None``: the one sentence every face shows."""
    stamps = [f"first snapshot {_stamp(first)}" if first is not None else "no snapshot",
              *([f"last poll {_stamp(until)}"] if until is not None else [])]
    return f"forecast needs one complete UTC day of snapshots before {today} ({', '.join(stamps)})"


def _stamp(value: datetime) -> str:
    return _utc(value).strftime("%Y-%m-%d %H:%M:%S UTC")


def storage_forecast(
    con: duckdb.DuckDBPyConnection,
    today: date,
    *,
    until: datetime | None = None,
    horizon_days: int = 30,
    window_days: int = 14,
    assumptions: StorageAssumptions = StorageAssumptions(),
) -> StorageForecast | None:
    """Forecast from the complete UTC days the snapshots cover among the ``window_days`` before ``today``
    (see :func:`linear_forecast` and :func:`complete_days`); ``None`` when there is no such day (say why
    with :func:`no_forecast_reason`).

    Days before the first snapshot and its partial first day are left out: they hold less than the
    stores did, and fitting them would pull the line down (a store polled once today would forecast $0).
    """
    first = first_snapshot_at(con)
    fit_days = 0 if first is None else complete_days(first, today, window_days)
    if fit_days < 1:
        return None
    start = today - timedelta(days=fit_days)
    day_assumptions = StorageAssumptions(
        assumptions.price_per_gb_day, assumptions.free_gb, assumptions.unit, "day"
    )
    history = daily_storage_costs(con, start, today, until=until, assumptions=day_assumptions)
    return linear_forecast(
        [(c.day, float(c.gb_days)) for c in history],
        horizon_days=horizon_days, window_days=fit_days, assumptions=assumptions,
    )


# --- what-ifs -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WhatIf:
    """A scenario's cost against the observed baseline over the same days."""

    scenario: str
    stores: tuple[str, ...]
    """Stores the scenario removes or expires."""
    baseline: tuple[DailyStorageCost, ...]
    scenario_costs: tuple[DailyStorageCost, ...]

    @property
    def savings_usd(self) -> Decimal:
        """Baseline minus scenario cost, over all days."""
        return sum((b.cost_usd for b in self.baseline), Decimal(0)) - sum(
            (s.cost_usd for s in self.scenario_costs), Decimal(0)
        )

    @property
    def savings_last_day_usd(self) -> Decimal:
        """Saving on the last day: the current daily run-rate of the saving."""
        if not self.baseline:
            return Decimal(0)
        return self.baseline[-1].cost_usd - self.scenario_costs[-1].cost_usd


def idle_stores(con: duckdb.DuckDBPyConnection, idle_days: int, as_of: datetime) -> tuple[str, ...]:
    """Stores whose latest snapshot up to ``as_of`` shows no activity in the ``idle_days`` before it.

    Stores already expired or deleted, or with no ``last_active_at``, are not listed.
    """
    from analysis.snapshots import LATEST_SQL  # here: analysis.snapshots imports this module

    rows = con.execute(
        f"""
        SELECT vector_store_id FROM ({LATEST_SQL})
        WHERE coalesce(status, '') NOT IN ('expired', 'deleted')
          AND last_active_at IS NOT NULL AND last_active_at AT TIME ZONE 'UTC' < $cut
        ORDER BY vector_store_id
        """,
        {"cut": _utc(as_of) - timedelta(days=idle_days), "as_of": _utc(as_of)},
    ).fetchall()
    return tuple(r[0] for r in rows)


def whatif_delete_idle(
    con: duckdb.DuckDBPyConnection,
    idle_days: int,
    start: date,
    end: date,
    *,
    as_of: datetime,
    assumptions: StorageAssumptions = StorageAssumptions(),
) -> WhatIf:
    """Savings over ``[start, end)`` had the stores idle more than ``idle_days`` at ``as_of`` not existed.

    The scenario re-runs the daily cost without those stores, so the organization's free GB is applied to
    what is left (deleting 0.5 GB of 0.8 + 0.5 GB saves $0.03 a day, not $0.05).
    """
    stores = idle_stores(con, idle_days, as_of)
    base = daily_storage_costs(con, start, end, until=as_of, assumptions=assumptions)
    scen = daily_storage_costs(con, start, end, until=as_of, assumptions=assumptions, exclude=stores)
    return WhatIf(f"delete stores idle more than {idle_days} days", stores, tuple(base), tuple(scen))


def whatif_expires_after(
    con: duckdb.DuckDBPyConnection,
    days: int,
    start: date,
    end: date,
    *,
    as_of: datetime,
    assumptions: StorageAssumptions = StorageAssumptions(),
) -> WhatIf:
    """Savings over ``[start, end)`` had every store had ``expires_after`` = ``days`` (anchor last_active_at).

    A store then expires at the first moment it has been idle for ``days`` days and stops billing for good.
    """
    base = daily_storage_costs(con, start, end, until=as_of, assumptions=assumptions)
    scen = daily_storage_costs(
        con, start, end, until=as_of, assumptions=assumptions, expire_after_days=days
    )
    affected = _expired_by_rule(con, days, as_of)
    return WhatIf(f"every store expires {days} days after last activity", affected, tuple(base), tuple(scen))


def _expired_by_rule(con: duckdb.DuckDBPyConnection, days: int, as_of: datetime) -> tuple[str, ...]:
    rows = con.execute(
        """
        SELECT DISTINCT vector_store_id FROM (
            SELECT vector_store_id, status, observed_at AT TIME ZONE 'UTC' AS t0,
                   last_active_at AT TIME ZONE 'UTC' + to_days($days) AS cutoff,
                   least(coalesce(lead(observed_at AT TIME ZONE 'UTC')
                       OVER (PARTITION BY vector_store_id ORDER BY observed_at), $as_of), $as_of) AS t1
            FROM vector_store_snapshots
        )
        WHERE coalesce(status, '') NOT IN ('expired', 'deleted') AND cutoff < t1 AND t0 < $as_of
        ORDER BY vector_store_id
        """,
        {"days": days, "as_of": _utc(as_of)},
    ).fetchall()
    return tuple(r[0] for r in rows)
