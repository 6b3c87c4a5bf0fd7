"""Storage math: hand-worked GB-day integration, daily cost, free allowance per day vs per hour, forecast,
what-ifs; the pure functions and the DuckDB ones must agree."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from analysis.storage import (
    Snapshot,
    StorageAssumptions,
    bucket_byte_micros,
    bucket_byte_micros_sql,
    costs_frame,
    costs_from_snapshots,
    daily_gb_days,
    daily_storage_costs,
    holding_intervals,
    idle_stores,
    linear_forecast,
    storage_forecast,
    whatif_delete_idle,
    whatif_expires_after,
)

D = Decimal
GIB = 2**30
CENT = D("0.01")
DAY1 = date(2026, 3, 1)


def at(day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, minute, tzinfo=UTC)


def snap(store: str, when: datetime, nbytes: int, status: str = "completed", **kw: datetime) -> Snapshot:
    return Snapshot(store, when, nbytes, status, kw.get("expires_at"), kw.get("last_active_at"))


@pytest.fixture
def con(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    c = duckdb.connect(str(tmp_path / "storage.duckdb"))
    c.execute("""
        CREATE TABLE vector_store_snapshots (
            vector_store_id VARCHAR, observed_at TIMESTAMPTZ, usage_bytes BIGINT, status VARCHAR,
            expires_at TIMESTAMPTZ, last_active_at TIMESTAMPTZ, name VARCHAR, file_count INTEGER
        )""")
    yield c
    c.close()


def load(con: duckdb.DuckDBPyConnection, snaps: Sequence[Snapshot]) -> None:
    con.executemany(
        "INSERT INTO vector_store_snapshots VALUES (?, ?, ?, ?, ?, ?, NULL, NULL)",
        [(s.vector_store_id, s.observed_at, s.usage_bytes, s.status, s.expires_at, s.last_active_at)
         for s in snaps],
    )


def test_assumption_defaults_and_validation() -> None:
    a = StorageAssumptions()
    assert (a.price_per_gb_day, a.free_gb, a.unit, a.free_per) == (D("0.10"), D(1), "GiB", "day")
    assert a.bytes_per_gb == GIB and StorageAssumptions(unit="GB").bytes_per_gb == 10**9
    with pytest.raises(ValueError, match="unit"):
        StorageAssumptions(unit="TB")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="free_per"):
        StorageAssumptions(free_per="week")  # type: ignore[arg-type]


def test_five_gb_for_thirty_days_costs_twelve_dollars(con: duckdb.DuckDBPyConnection) -> None:
    snaps = [snap("vs_a", at(1), 5 * GIB)]
    end = DAY1 + timedelta(days=30)
    pure = costs_from_snapshots(snaps, DAY1, end)
    assert len(pure) == 30 and all(c.gb_days == 5 and c.cost_usd == D("0.4") for c in pure)
    assert sum(c.cost_usd for c in pure) == D("12.00")
    load(con, snaps)
    assert daily_storage_costs(con, DAY1, end) == pure


def test_two_small_stores_cost_three_cents_a_day_and_deleting_one_saves_three(
    con: duckdb.DuckDBPyConnection,
) -> None:
    # 0.8 + 0.5 = 1.3 GB; 0.3 GB over the free GB at $0.10 = $0.03. Without the 0.5 GB store: 0.8 < 1 = $0.
    decimal_gb = StorageAssumptions(unit="GB")
    snaps = [
        snap("vs_big", at(1), 800_000_000, last_active_at=at(9)),
        snap("vs_idle", at(1), 500_000_000, last_active_at=at(1)),
    ]
    costs = costs_from_snapshots(snaps, date(2026, 3, 9), date(2026, 3, 10), until=at(10),
                                 assumptions=decimal_gb)
    assert [c.cost_usd for c in costs] == [D("0.03")]
    load(con, snaps)
    what = whatif_delete_idle(con, 7, date(2026, 3, 9), date(2026, 3, 10), as_of=at(10),
                              assumptions=decimal_gb)
    assert what.stores == ("vs_idle",)
    assert what.savings_last_day_usd == D("0.03") and what.savings_usd == D("0.03")
    assert [c.cost_usd for c in what.scenario_costs] == [D(0)]


def test_deleting_saves_three_cents_in_gib_too(con: duckdb.DuckDBPyConnection) -> None:
    snaps = [
        snap("vs_big", at(1), int(D("0.8") * GIB), last_active_at=at(9)),
        snap("vs_idle", at(1), GIB // 2, last_active_at=at(1)),
    ]
    load(con, snaps)
    what = whatif_delete_idle(con, 7, date(2026, 3, 5), date(2026, 3, 10), as_of=at(10))
    assert what.baseline[-1].cost_usd.quantize(CENT) == D("0.03")
    assert what.savings_last_day_usd.quantize(CENT) == D("0.03")
    assert what.savings_usd.quantize(CENT) == D("0.15")  # five days


def test_mid_day_changes_integrate_exactly(con: duckdb.DuckDBPyConnection) -> None:
    snaps = [
        # vs_a: 1 GiB 00-06, 3 GiB 06-18, deletion marker (0 bytes) at 18:00 -> 6 + 36 GiB-hours
        snap("vs_a", at(1, 0), GIB), snap("vs_a", at(1, 6), 3 * GIB), snap("vs_a", at(1, 18), 0),
        # vs_b: 2 GiB from 12:00, expired at 15:00 -> 6 GiB-hours; the later snapshot must not revive it
        snap("vs_b", at(1, 12), 2 * GIB), snap("vs_b", at(1, 15), 2 * GIB, "expired"),
        snap("vs_b", at(2, 12), 2 * GIB, "expired"),
        # vs_c: 1 GiB from 22:30 that expires at 01:30 the next day -> 1.5 + 1.5 GiB-hours
        snap("vs_c", at(1, 22, 30), GIB, expires_at=at(2, 1, 30)),
    ]
    costs = costs_from_snapshots(snaps, DAY1, date(2026, 3, 3), until=at(3))
    assert costs[0].gb_days == D(6 + 36 + 6 + D("1.5")) / 24  # 49.5 GiB-hours
    assert costs[1].gb_days == D("1.5") / 24
    assert costs[0].billable_gb_days == D("49.5") / 24 - 1
    assert costs[0].cost_usd == (D("49.5") / 24 - 1) * D("0.1")
    assert costs[1].cost_usd == 0
    load(con, snaps)
    assert daily_storage_costs(con, DAY1, date(2026, 3, 3), until=at(3)) == costs
    frame = daily_gb_days(con, DAY1, date(2026, 3, 3), until=at(3))
    rows = {(r["day"], r["vector_store_id"]): r["gb_days"] for r in frame.iter_rows(named=True)}
    assert rows == {
        (DAY1, "vs_a"): pytest.approx(42 / 24), (DAY1, "vs_b"): pytest.approx(6 / 24),
        (DAY1, "vs_c"): pytest.approx(1.5 / 24), (date(2026, 3, 2), "vs_c"): pytest.approx(1.5 / 24),
    }


def test_free_allowance_per_hour_differs_from_per_day(con: duckdb.DuckDBPyConnection) -> None:
    # 2 GiB for 12 hours then nothing. Per day: mean 1 GiB - 1 free = $0.
    # Per hour: 12 hours of (2 - 1) GiB at $0.10/24 an hour = $0.05.
    snaps = [snap("vs_a", at(1, 0), 2 * GIB), snap("vs_a", at(1, 12), 0)]
    hourly = StorageAssumptions(free_per="hour")
    per_day = costs_from_snapshots(snaps, DAY1, date(2026, 3, 2))
    per_hour = costs_from_snapshots(snaps, DAY1, date(2026, 3, 2), assumptions=hourly)
    assert per_day[0].cost_usd == 0 and per_day[0].gb_days == 1
    assert per_hour[0].cost_usd == D("0.05") and per_hour[0].billable_gb_days == D("0.5")
    load(con, snaps)
    assert daily_storage_costs(con, DAY1, date(2026, 3, 2), assumptions=hourly) == per_hour


def test_hourly_buckets_split_at_hour_boundaries() -> None:
    intervals = holding_intervals([snap("vs_a", at(1, 0, 30), 1000)], until=at(1, 2, 15))
    buckets = bucket_byte_micros(intervals, DAY1, date(2026, 3, 2), "hour")
    minute = 60_000_000
    assert buckets == {
        (datetime(2026, 3, 1, 0), "vs_a"): 1000 * 30 * minute,
        (datetime(2026, 3, 1, 1), "vs_a"): 1000 * 60 * minute,
        (datetime(2026, 3, 1, 2), "vs_a"): 1000 * 15 * minute,
    }


def test_sql_integration_matches_pure_on_a_busy_series(con: duckdb.DuckDBPyConnection) -> None:
    snaps = []
    for i in range(60):
        when = at(1) + timedelta(hours=7 * i, minutes=13 * i)
        snaps.append(snap("vs_a", when, (i * 37_000_003) % (3 * GIB)))
        snaps.append(snap("vs_b", when + timedelta(minutes=41), GIB + i * 1_000_001,
                          "expired" if i == 50 else "completed"))
    load(con, snaps)
    start, end, until = DAY1, date(2026, 3, 25), at(24, 5, 7)
    for bucket in ("day", "hour"):
        pure = bucket_byte_micros(holding_intervals(snaps, until), start, end, bucket)
        assert bucket_byte_micros_sql(con, start, end, until=until, bucket=bucket) == pure
    for per in ("day", "hour"):
        a = StorageAssumptions(free_per=per)
        assert daily_storage_costs(con, start, end, until=until, assumptions=a) == costs_from_snapshots(
            snaps, start, end, until=until, assumptions=a
        )


def test_window_excludes_time_outside_it() -> None:
    snaps = [snap("vs_a", at(1), 2 * GIB)]
    costs = costs_from_snapshots(snaps, date(2026, 3, 5), date(2026, 3, 7), until=at(6, 12))
    assert [c.gb_days for c in costs] == [2, 1]
    assert [c.day for c in costs] == [date(2026, 3, 5), date(2026, 3, 6)]
    frame = costs_frame(costs)
    assert frame["cost_usd"].to_list() == [pytest.approx(0.1), 0.0]


def test_forecast_on_linear_series_reproduces_the_line() -> None:
    history = [(DAY1 + timedelta(days=i), 2.0 + 0.5 * i) for i in range(20)]
    fc = linear_forecast(history, horizon_days=30, window_days=14)
    assert fc.slope_gb_per_day == pytest.approx(0.5)
    assert fc.fitted_days == tuple(d for d, _ in history[-14:])
    assert fc.intercept_gb == pytest.approx(2.0 + 0.5 * 6)
    assert len(fc.points) == 30 and fc.points[0].day == date(2026, 3, 21)
    for k, point in enumerate(fc.points, start=20):
        assert point.gb == pytest.approx(2.0 + 0.5 * k)
        assert point.cost_usd == pytest.approx(0.1 * (1.0 + 0.5 * k))
    assert "least-squares" in fc.method and "14" in fc.method and "clamped at 0" in fc.method


def test_forecast_clamps_at_zero_and_handles_short_history() -> None:
    falling = [(DAY1 + timedelta(days=i), 10.0 - 2.0 * i) for i in range(5)]
    fc = linear_forecast(falling)
    assert fc.points[0].gb == 0.0 and fc.points[-1].gb == 0.0 and fc.total_cost_usd == 0.0
    one = linear_forecast([(DAY1, 3.0)], horizon_days=2)
    assert [p.gb for p in one.points] == [3.0, 3.0] and "flat" in one.method
    none = linear_forecast([], horizon_days=2)
    assert none.points == () and "no history" in none.method


def test_storage_forecast_from_duckdb(con: duckdb.DuckDBPyConnection) -> None:
    # One store growing by 1 GiB at each midnight: day i holds (i + 1) GiB.
    load(con, [snap("vs_a", at(1) + timedelta(days=i), (i + 1) * GIB) for i in range(20)])
    today = date(2026, 3, 21)
    fc = storage_forecast(con, today, until=at(21))
    assert fc is not None
    assert fc.slope_gb_per_day == pytest.approx(1.0)
    assert fc.points[0].day == today and fc.points[0].gb == pytest.approx(21.0)
    assert fc.points[0].cost_usd == pytest.approx(2.0)


def test_whatif_expires_after_stops_idle_stores(con: duckdb.DuckDBPyConnection) -> None:
    snaps = [
        # vs_old: 2 GiB, last active Mar 1, observed daily -> with expires_after 3 days it ends Mar 4 00:00.
        *[snap("vs_old", at(1 + i), 2 * GIB, last_active_at=at(1)) for i in range(9)],
        # vs_busy: active every day, never idle 3 days.
        *[snap("vs_busy", at(1 + i), GIB, last_active_at=at(1 + i)) for i in range(9)],
    ]
    load(con, snaps)
    what = whatif_expires_after(con, 3, DAY1, date(2026, 3, 10), as_of=at(10))
    assert what.stores == ("vs_old",)
    # Baseline: 3 GiB/day -> $0.20/day for 9 days. Scenario: $0.20 on Mar 1-3, then 1 GiB -> $0.
    assert [c.cost_usd for c in what.baseline] == [D("0.2")] * 9
    assert [c.cost_usd for c in what.scenario_costs] == [D("0.2")] * 3 + [D(0)] * 6
    assert what.savings_usd == D("1.2") and what.savings_last_day_usd == D("0.2")
    pure = costs_from_snapshots(snaps, DAY1, date(2026, 3, 10), until=at(10), expire_after_days=3)
    assert list(what.scenario_costs) == pure


def test_idle_stores_ignore_expired_and_unknown_activity(con: duckdb.DuckDBPyConnection) -> None:
    load(con, [
        snap("vs_idle", at(1), GIB, last_active_at=at(1)),
        snap("vs_gone", at(1), GIB, "expired", last_active_at=at(1)),
        snap("vs_unknown", at(1), GIB),
        snap("vs_revived", at(1), GIB, last_active_at=at(1)),
        snap("vs_revived", at(9), GIB, last_active_at=at(9)),
    ])
    assert idle_stores(con, 5, at(10)) == ("vs_idle",)


def test_idle_stores_ignore_snapshots_after_as_of(con: duckdb.DuckDBPyConnection) -> None:
    load(con, [
        snap("vs_a", at(1), GIB, last_active_at=at(1)),
        snap("vs_a", at(20), GIB, last_active_at=at(20)),
    ])
    assert idle_stores(con, 5, at(10)) == ("vs_a",)
    assert idle_stores(con, 5, at(21)) == ()


def test_storage_costs_against_the_real_store_schema(tmp_path: Path) -> None:
    from collector.store.migrations import migrate

    con = duckdb.connect(str(tmp_path / "store.duckdb"))
    try:
        migrate(con)
        con.execute(
            "INSERT INTO vector_store_snapshots (vector_store_id, observed_at, usage_bytes, status) VALUES "
            "('vs_a', TIMESTAMPTZ '2026-03-01 00:00:00+00', 3221225472, 'completed'), "
            "('vs_a', TIMESTAMPTZ '2026-03-01 12:00:00+00', 1073741824, 'completed')"
        )
        costs = daily_storage_costs(con, DAY1, date(2026, 3, 3))
    finally:
        con.close()
    # Day 1: 3 GiB x 12 h + 1 GiB x 12 h = 2 GiB-days -> $0.10; day 2: 1 GiB -> $0.
    assert [(c.gb_days, c.cost_usd) for c in costs] == [(2, D("0.1")), (1, 0)]
