"""The exporter's storage gauges are analysis's numbers, and the exporter leaves no thread in DuckDB at exit.

Storage fixture (GiB = 2^30 bytes; T = when this module was imported; written by the poller's StoreSink):

* ``vs_big`` 2 GiB and ``vs_small`` 0.5 GiB, ``completed``, polled at T-3d, T-2d, T-1d and T-60s
  (``vs_big`` last active at T-60s, ``vs_small`` at T-3d);
* ``vs_gone`` 1 GiB, ``completed``, polled at T-3d and T-2d with ``expires_at`` T-1d, never polled again;
* ``vs_dead`` 1 GiB at T-3d, then a final ``deleted`` snapshot with 0 bytes at T-2d;
* ``vs_old`` 3 GiB, status ``expired``, polled once at T-1d.

Held now: vs_big + vs_small = 2.5 GiB = 2,684,354,560 bytes (vs_gone is past its ``expires_at``; the old
exporter's SQL ignored that and said 3.5 GiB). Billable beyond the free 1 GiB: 1.5 GiB; at $0.10 per
GiB-day: $0.15 a day. Stores by status: completed 3 (big, small, gone), expired 1, deleted ones not listed.

At T-1.5d: vs_big 2 + vs_small 0.5 + vs_gone 1 (not expired yet) = 3.5 GiB, billable 2.5, $0.25 a day;
vs_dead is deleted and vs_old not yet seen.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import duckdb
import pytest
from prometheus_client.parser import text_string_to_metric_families

from analysis.snapshots import held_by_store, held_bytes, held_gb
from analysis.storage import StorageAssumptions, gb_of_bytes, holding_cost, idle_stores, storage_forecast
from collector.metrics.exporter import StoreCollector
from collector.metrics.sidecar import Sidecar
from collector.storage_poller import SnapshotRow, StoreSink
from collector.store.migrations import StoreError

GIB = 2**30
DAY = 86_400.0
T = time.time()
DEFAULTS = StorageAssumptions()
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("exporter_storage") / "runmeter.duckdb"
    rows = []
    for t in (T - 3 * DAY, T - 2 * DAY, T - DAY, T - 60):
        rows.append(SnapshotRow("vs_big", t, 2 * GIB, "completed", "big", last_active_at=T - 60))
        rows.append(SnapshotRow("vs_small", t, GIB // 2, "completed", "small", last_active_at=T - 3 * DAY))
    for t in (T - 3 * DAY, T - 2 * DAY):
        rows.append(SnapshotRow("vs_gone", t, GIB, "completed", "gone", expires_at=T - DAY))
    rows.append(SnapshotRow("vs_dead", T - 3 * DAY, GIB, "completed", "dead"))
    rows.append(SnapshotRow("vs_dead", T - 2 * DAY, 0, "deleted", "dead"))
    rows.append(SnapshotRow("vs_old", T - DAY, 3 * GIB, "expired", "old"))
    assert StoreSink(db).write(rows) == "stored"
    return db


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 stores polled every 6 hours for 14 days (11,200 snapshots): a forecast takes tens of ms."""
    db = tmp_path_factory.mktemp("exporter_big") / "runmeter.duckdb"
    rows = [SnapshotRow(f"vs_{i:03d}", T - 3600 * h, 2**20 * (i + h), "completed")
            for i in range(200) for h in range(0, 14 * 24, 6)]
    assert StoreSink(db).write(rows) == "stored"
    return db


def _samples(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _collected(collector: StoreCollector) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in collector.collect() for s in family.samples}


def _per_store(s: Samples) -> dict[str, float]:
    return {dict(labels)["vector_store_id"]: v for (name, labels), v in s.items()
            if name == "runmeter_vector_store_usage_bytes"}


def _by_status(s: Samples) -> dict[str, float]:
    return {dict(labels)["status"]: v for (name, labels), v in s.items() if name == "runmeter_vector_stores"}


def _scrape(url: str) -> Samples:
    with urllib.request.urlopen(url + "metrics", timeout=10) as resp:
        return _samples(resp.read().decode())


def test_the_sidecar_scrape_is_what_analysis_says(store: Path) -> None:
    sidecar = Sidecar(store, port=0, flush_interval=0.2)
    try:
        s = _scrape(sidecar.url)
        sidecar.collector.wait_forecast()
        forecast = _scrape(sidecar.url)[("runmeter_storage_forecast_usd_per_day", ())]
    finally:
        sidecar.close()
    now = datetime.now(UTC)
    with duckdb.connect(str(store), read_only=True) as con:
        held, by_store = held_bytes(con, now), held_by_store(con, now)
        gb = held_gb(con, now, DEFAULTS)
        fc = storage_forecast(con, now.date(), until=now, assumptions=DEFAULTS)
    billable, cost = holding_cost(gb_of_bytes(held, DEFAULTS), DEFAULTS)
    # analysis itself, against the hand-computed figures of the module doc
    assert (held, gb, billable, cost) == (2_684_354_560, 2.5, Fraction(3, 2), Fraction(3, 20))
    assert by_store == {"vs_big": 2 * GIB, "vs_small": GIB // 2}
    # the exporter's gauges are exactly those values
    assert s[("runmeter_vector_stores_usage_bytes", ())] == held
    assert _per_store(s) == by_store  # expired, deleted and past-expires_at stores drop out
    assert s[("runmeter_storage_billable_gigabytes", ())] == float(billable) == 1.5
    assert s[("runmeter_storage_cost_usd_per_day", ())] == float(cost) == 0.15
    assert _by_status(s) == {"completed": 3, "expired": 1}
    assert s[("runmeter_storage_last_poll_timestamp_seconds", ())] == pytest.approx(T - 60, abs=1e-3)
    assert fc is not None and fc.points and forecast == fc.points[-1].cost_usd


def test_now_is_the_collector_clock(store: Path) -> None:
    then = T - 1.5 * DAY
    collector = StoreCollector(store, clock=lambda: then, forecast_ttl=1e9)
    s = _collected(collector)
    collector.close()
    at = datetime.fromtimestamp(then, UTC)
    with duckdb.connect(str(store), read_only=True) as con:
        held = held_bytes(con, at)
        assert _per_store(s) == held_by_store(con, at) == {"vs_big": 2 * GIB, "vs_small": GIB // 2,
                                                            "vs_gone": GIB}
    assert s[("runmeter_vector_stores_usage_bytes", ())] == held == 3.5 * GIB
    assert s[("runmeter_storage_billable_gigabytes", ())] == 2.5
    assert s[("runmeter_storage_cost_usd_per_day", ())] == 0.25
    assert _by_status(s) == {"completed": 3}  # vs_dead deleted at T-2d, vs_old first seen at T-1d


def test_other_assumptions_go_through_the_same_function(store: Path) -> None:
    a = StorageAssumptions(Decimal("0.07"), Decimal(2), "GB")
    collector = StoreCollector(store, assumptions=a, forecast_ttl=1e9)
    s = _collected(collector)
    collector.close()
    # 2,684,354,560 bytes = 2.68435456 GB; beyond the free 2 GB: 0.68435456; at $0.07: $0.0479048192
    assert s[("runmeter_storage_billable_gigabytes", ())] == 0.68435456
    assert s[("runmeter_storage_cost_usd_per_day", ())] == 0.0479048192
    assert holding_cost(Decimal("0.5"), a) == (Fraction(0), Fraction(0))


def test_the_other_latest_snapshot_readers(store: Path) -> None:
    # the poller's deleted-store check: every store whose latest snapshot is not `deleted`
    assert StoreSink(store).live_store_ids() == {"vs_big", "vs_small", "vs_gone", "vs_old"}
    with duckdb.connect(str(store), read_only=True) as con:
        # idle more than a day: vs_small (last active T-3d); vs_gone has no activity time, vs_old expired
        assert idle_stores(con, 1, datetime.fromtimestamp(T, UTC)) == ("vs_small",)


_READ_AND_EXIT = textwrap.dedent("""
    import sys, threading
    from collector.metrics.exporter import StoreCollector
    StoreCollector(sys.argv[1]).read()
    print(any(t.name == "runmeter-forecast" and t.is_alive() for t in threading.enumerate()), flush=True)
""")


def test_a_script_that_reads_then_exits_exits_cleanly(big_store: Path) -> None:
    # Before the fix this aborted ("terminate called ... FATAL: exception not rethrown", exit 134): the
    # forecast's daemon thread was still inside DuckDB when the interpreter finalised.
    proc = subprocess.run([sys.executable, "-c", _READ_AND_EXIT, str(big_store)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"  # the forecast was still being computed at exit
    assert "terminate called" not in proc.stderr and "FATAL" not in proc.stderr
    assert proc.stderr == ""


def test_close_stops_every_use_of_the_store(big_store: Path) -> None:
    collector = StoreCollector(big_store, forecast_ttl=1e9)
    first = _collected(collector)[("runmeter_vector_stores_usage_bytes", ())]
    collector.close()
    assert not any(t.name == "runmeter-forecast" and t.is_alive() for t in threading.enumerate())
    with pytest.raises(StoreError, match="closed"):
        collector.read()
    s = _collected(collector)  # a scrape after close: the last values, store down
    assert s[("runmeter_store_up", ())] == 0
    assert s[("runmeter_vector_stores_usage_bytes", ())] == first > 0
    collector.close()  # idempotent


def test_serve_stops_cleanly_on_sigterm_after_a_scrape(big_store: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "collector.cli", "serve", "--db", str(big_store),
                             "--port", "0", "--no-poll"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert _scrape(url)[("runmeter_store_up", ())] == 1  # the scrape starts a forecast
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "terminate called" not in err and "FATAL" not in err and "Traceback" not in err


def test_close_does_not_wait_out_a_forecast_still_opening_a_busy_store(store: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import duckdb, sys
        c = duckdb.connect({str(store)!r})  # read-write: readers wait
        print("held", flush=True)
        sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        collector = StoreCollector(store, read_timeout=20)
        assert collector._forecast_value() is None  # starts the forecast thread, which waits for the file
        time.sleep(0.3)
        t0 = time.monotonic()
        collector.close(timeout=10)
        assert time.monotonic() - t0 < 1.0  # not the 20 s the thread would have waited for the file
        assert not any(t.name == "runmeter-forecast" and t.is_alive() for t in threading.enumerate())
    finally:
        holder.communicate("", timeout=30)


def test_after_close_the_writers_readings_are_not_taken(store: Path) -> None:
    collector = StoreCollector(store)
    with duckdb.connect(str(store), read_only=True) as conn:
        collector.refresh_from(conn)
        collector.close()
        collector.refresh_from(conn)  # the writer's hook, after close: nothing is read
    s = _collected(collector)
    assert s[("runmeter_store_up", ())] == 0 and ("runmeter_vector_stores_usage_bytes", ()) not in s


def test_the_forecast_is_of_the_last_snapshot_day_when_the_poller_stopped(tmp_path: Path) -> None:
    """Polled daily at midnight for four days, then the poller stopped three days ago: the exporter's
    forecast is the CLI's (today = the last snapshot's day), not one over the empty days since."""
    db = tmp_path / "stopped.duckdb"
    midnight = (T // DAY) * DAY
    days = [midnight - k * DAY for k in (7, 6, 5, 4, 3)]
    assert StoreSink(db).write([SnapshotRow("vs_a", t, (2 + i) * GIB, "completed", "a")
                                for i, t in enumerate(days)]) == "stored"
    collector = StoreCollector(db, forecast_ttl=1e9)
    try:
        collector._forecast_value()
        collector.wait_forecast()
        gauge = _collected(collector)[("runmeter_storage_forecast_usd_per_day", ())]
    finally:
        collector.close()
    last = datetime.fromtimestamp(days[-1], UTC).replace(tzinfo=None)
    with duckdb.connect(str(db), read_only=True) as conn:
        fc = storage_forecast(conn, last.date(), until=last)
    # complete days 7..4 days ago hold 2, 3, 4, 5 GiB: slope 1 GiB/day, 30 days after the last, 35 GiB
    assert fc is not None and fc.slope_gb_per_day == pytest.approx(1.0)
    assert gauge == fc.points[-1].cost_usd == pytest.approx((35 - 1) * 0.10)
