"""The store exporter: a prometheus_client custom collector that reads the store at scrape time.

Per scrape it opens the store read-only for a few milliseconds and reads small tables only: the
counters and histograms counted at ingest (:mod:`collector.metrics.ingest`) and the latest snapshot
of each vector store, so a scrape costs the same with a thousand runs or a million. The storage
forecast (a 14-day integration) is recomputed at most every ``forecast_ttl`` seconds, on a thread of
its own; until the snapshots cover one complete UTC day there is no forecast and
``runmeter_storage_forecast_usd_per_day`` is left out (:func:`analysis.storage.storage_forecast`).

Storage numbers are analysis's own: the bytes held now are :func:`analysis.snapshots.held_bytes` (each
store's latest snapshot unless expired, deleted or past its ``expires_at``), the per-store gauge lists
:func:`analysis.snapshots.held_by_store`, and the billable GB and daily cost are
:func:`analysis.storage.holding_cost` of them. "Now" is ``clock``.

A scrape never fails: when the store is missing, foreign or stays busy past ``read_timeout``, the
last good values are served and ``runmeter_store_up`` is 0; the writer's health and build info are
always there.

Shutdown: :meth:`StoreCollector.close` interrupts and joins the forecast thread and waits for reads in
flight; after it nothing of this collector touches DuckDB. Collectors still open at interpreter exit are
closed by an ``atexit`` hook, because a daemon thread still inside DuckDB when the interpreter finalises
aborts the process ("terminate called ... FATAL: exception not rethrown").
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
from prometheus_client.core import GaugeMetricFamily, Metric

from analysis.snapshots import held_by_store, latest_snapshots, snapshot_span
from analysis.storage import StorageAssumptions, gb_of_bytes, holding_cost, storage_forecast
from collector.metrics import families as fam
from collector.metrics.aggregates import Aggregates
from collector.metrics.health import WriterHealth, build_info, gauge, health_families
from collector.metrics.ingest import load_aggregates
from collector.store.migrations import StoreError, check_store
from collector.store.reader import is_lock_error

_LOG = logging.getLogger("runmeter.metrics")

_LIVE: weakref.WeakSet[StoreCollector] = weakref.WeakSet()
"""Collectors not closed yet (closed at interpreter exit by :func:`_close_all`)."""


@dataclass(slots=True)
class StoreReading:
    """What one successful read of the store found."""

    aggregates: Aggregates = field(default_factory=Aggregates)
    usage_bytes: int = 0
    top: list[tuple[str, int]] = field(default_factory=list)
    by_status: dict[str, int] = field(default_factory=dict)
    last_snapshot_at: float | None = None
    billable_gb: float = 0.0
    cost_per_day: float = 0.0
    forecast_per_day: float | None = None


class StoreCollector:
    """Exports the store at ``path`` (register it in a ``CollectorRegistry``).

    Args:
        path: the DuckDB store.
        health: the writer's health now (``runmeter serve``'s own writer), or ``None``.
        last_poll: unix time of the storage poller's last successful poll (falls back to the newest
            snapshot in the store when it returns ``None``).
        assumptions: how storage is billed (price per GB-day, free GB, GB unit).
        read_timeout: seconds to wait for the writer to let go of the file before serving the cache.
        forecast_ttl: seconds a storage forecast is reused.
        clock: unix-seconds clock: "now" for the bytes held (a store past its ``expires_at`` holds
            nothing) and the forecast's "today".

    Call :meth:`close` when done (``runmeter serve`` does on SIGTERM).
    """

    def __init__(self, path: str | Path, *, health: Callable[[], WriterHealth] | None = None,
                 last_poll: Callable[[], float | None] | None = None,
                 assumptions: StorageAssumptions | None = None, read_timeout: float = 0.5,
                 forecast_ttl: float = 300.0, top_n: int = fam.TOP_STORES,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.health = health
        self.last_poll = last_poll
        self.assumptions = assumptions or StorageAssumptions()
        self.read_timeout = read_timeout
        self.forecast_ttl = forecast_ttl
        self.top_n = top_n
        self.clock = clock
        self.problem: str | None = None
        """Why the last scrape could not read the store (``None`` when it could)."""
        self._last: StoreReading | None = None
        self._forecast: tuple[float, float | None] | None = None  # (computed at, value)
        self._forecast_lock = threading.Lock()
        self._forecast_thread: threading.Thread | None = None
        self._verified = False
        self.feed_max_age = 3.0
        self._fed: tuple[float, StoreReading] | None = None
        self._forecast_conn: duckdb.DuckDBPyConnection | None = None
        self._users = threading.Condition()  # guards _closed and _active
        self._closed = False
        self._active = 0
        _LIVE.add(self)

    def describe(self) -> list[Metric]:
        """Nothing: registering must not read the store."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Every family: store values (fresh, or the last good ones), writer health, up, build info."""
        reading: StoreReading | None
        try:
            reading = self.read()
            self._last, self.problem = reading, None
        except StoreError as exc:
            self.problem = str(exc)
            reading = self._last
        except Exception as exc:  # a scrape never fails: say why and serve the cache
            self.problem = f"reading {self.path} failed: {exc}"
            _LOG.warning("runmeter: %s", self.problem, exc_info=True)
            reading = self._last
        yield from (reading.aggregates if reading else Aggregates()).metric_families()
        yield from self._storage(reading)
        yield from health_families(self.health() if self.health else None)
        yield gauge(fam.STORE_UP, 0.0 if self.problem else 1.0)
        yield build_info()

    def read(self) -> StoreReading:
        """Read the store now (or take the writer's fresh reading, see :meth:`refresh_from`); raises
        StoreError when it is missing, foreign or stays busy."""
        if self._closed:
            raise StoreError(f"the exporter of {self.path} is closed")
        fed = self._fed
        if fed is not None and time.monotonic() - fed[0] <= self.feed_max_age:
            reading = dataclasses.replace(fed[1])
        else:
            with self._using_store():
                conn = _open(self.path, self.read_timeout)
                try:
                    reading = self._read_conn(conn)
                finally:
                    conn.close()
        reading.forecast_per_day = self._forecast_value()
        return reading

    @contextlib.contextmanager
    def _using_store(self) -> Iterator[None]:
        """Marks a use of the store file in flight (so :meth:`close` can wait for it); refuses after close."""
        with self._users:
            if self._closed:
                raise StoreError(f"the exporter of {self.path} is closed")
            self._active += 1
        try:
            yield
        finally:
            with self._users:
                self._active -= 1
                self._users.notify_all()

    def close(self, timeout: float = 10.0) -> None:
        """Stop using the store: no new reads or forecasts; the forecast being computed is interrupted and
        joined, and reads in flight (scrapes on server threads) are waited for, up to ``timeout`` seconds.
        Idempotent; later scrapes serve the last values with ``runmeter_store_up`` 0."""
        deadline = time.monotonic() + timeout
        with self._users:
            self._closed = True
        thread = self._forecast_thread
        # DuckDB drops an interrupt sent between two queries, and the thread may still be opening the
        # file: interrupt again until it has stopped (it checks _closed between its steps).
        while (thread is not None and thread is not threading.current_thread() and thread.is_alive()
               and time.monotonic() < deadline):
            with self._forecast_lock:
                if self._forecast_conn is not None:
                    self._forecast_conn.interrupt()
            thread.join(min(0.05, max(0.0, deadline - time.monotonic())))
        with self._users:
            self._users.wait_for(lambda: self._active == 0, max(0.0, deadline - time.monotonic()))
        _LIVE.discard(self)

    def refresh_from(self, conn: duckdb.DuckDBPyConnection, _db: object = None) -> None:
        """Read through a connection the store's writer already holds (an ingest hook of the sidecar's
        own writer), so scrapes skip opening the file: ~1 ms instead of ~15-20 ms per scrape. Scrapes
        fall back to opening the file once this reading is ``feed_max_age`` seconds old."""
        if not self._closed:
            self._fed = (time.monotonic(), self._read_conn(conn))

    def _read_conn(self, conn: duckdb.DuckDBPyConnection) -> StoreReading:
        tables = {r[0] for r in conn.execute(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'").fetchall()}
        if "runmeter_meta" not in tables:
            check_store(conn, str(self.path))  # raises for a foreign file
            raise StoreError(f"{self.path} is an empty DuckDB file, not yet a runmeter store")
        if not self._verified:
            check_store(conn, str(self.path))
            self._verified = True
        reading = StoreReading()
        if "metric_counters" in tables:
            reading.aggregates = load_aggregates(conn)
        self._fill_storage(reading, conn, datetime.fromtimestamp(self.clock(), UTC))
        return reading

    def _fill_storage(self, reading: StoreReading, conn: duckdb.DuckDBPyConnection, now: datetime) -> None:
        """The storage gauges as analysis computes them at ``now``."""
        latest = latest_snapshots(conn, now)
        for snap in latest:
            st = snap["status"] or "unknown"
            if st != "deleted":  # a deleted store is gone; an expired one still exists (and bills nothing)
                reading.by_status[st] = reading.by_status.get(st, 0) + 1
        reading.last_snapshot_at = max(
            (s["observed_at"].replace(tzinfo=UTC).timestamp() for s in latest), default=None)
        held = held_by_store(conn, now)
        reading.usage_bytes = sum(held.values())  # held_bytes, without a second scan
        reading.top = sorted(held.items(), key=lambda x: (-x[1], x[0]))[: self.top_n]
        billable, cost = holding_cost(gb_of_bytes(reading.usage_bytes, self.assumptions), self.assumptions)
        reading.billable_gb, reading.cost_per_day = float(billable), float(cost)

    def _forecast_value(self) -> float | None:
        """The cached forecast; a stale one is refreshed on a thread of its own (it integrates 14 days of
        snapshots, too slow for a scrape), so the first scrapes go without the gauge."""
        now = self.clock()
        with self._forecast_lock:
            due = (self._forecast is None or now - self._forecast[0] >= self.forecast_ttl)
            if due and not self._closed and (self._forecast_thread is None
                                             or not self._forecast_thread.is_alive()):
                self._forecast_thread = threading.Thread(target=self._refresh_forecast, args=(now,),
                                                         name="runmeter-forecast", daemon=True)
                self._forecast_thread.start()
            return None if self._forecast is None else self._forecast[1]

    def _refresh_forecast(self, now: float) -> None:
        try:
            with self._using_store():
                conn = _open(self.path, self.read_timeout, cancelled=lambda: self._closed)
                with self._forecast_lock:
                    self._forecast_conn = conn  # close() interrupts it
                try:
                    fc = None
                    span = snapshot_span(conn) if not self._closed else None
                    if span is not None and not self._closed:
                        # "today" is the last snapshot's day, as `runmeter storage forecast` and the
                        # dashboard take it: a poller that stopped does not make empty days count
                        until = min(datetime.fromtimestamp(now, UTC).replace(tzinfo=None), span[1])
                        fc = storage_forecast(conn, until.date(), until=until, assumptions=self.assumptions)
                finally:
                    with self._forecast_lock:
                        self._forecast_conn = None
                    conn.close()
            # No forecast (no complete UTC day of snapshots yet) leaves the gauge out, as the CLI and the
            # dashboard show none; a forecast always has points (horizon 30 days).
            value: float | None = fc.points[-1].cost_usd if fc is not None and fc.points else None
        except Exception:  # the forecast is an estimate: a failure leaves the gauge out until the next try
            if not self._closed:
                _LOG.warning("runmeter: storage forecast failed", exc_info=True)
            value = None
        with self._forecast_lock:
            self._forecast = (now, value)

    def wait_forecast(self, timeout: float = 30.0) -> None:
        """Wait for a forecast being computed (tests, benchmarks)."""
        t = self._forecast_thread
        if t is not None:
            t.join(timeout)

    def _storage(self, reading: StoreReading | None) -> Iterator[Metric]:
        r = reading or StoreReading()
        if reading is not None:
            yield gauge(fam.USAGE_ALL, float(r.usage_bytes))
            top = GaugeMetricFamily(fam.USAGE_TOP.name, fam.USAGE_TOP.help, labels=fam.USAGE_TOP.labels)
            for vs, b in r.top:
                top.add_metric([vs], float(b))
            yield top
            stores = GaugeMetricFamily(fam.STORES.name, fam.STORES.help, labels=fam.STORES.labels)
            for st, n in sorted(r.by_status.items()):
                stores.add_metric([st], float(n))
            yield stores
            yield gauge(fam.BILLABLE_GB, r.billable_gb)
            yield gauge(fam.STORAGE_COST, r.cost_per_day)
            if r.forecast_per_day is not None:
                yield gauge(fam.STORAGE_FORECAST, r.forecast_per_day)
        polled = self.last_poll() if self.last_poll else None
        if polled is None:
            polled = r.last_snapshot_at
        if polled is not None:
            yield gauge(fam.LAST_POLL, polled)


def _open(path: Path, timeout: float,
          cancelled: Callable[[], bool] = lambda: False) -> duckdb.DuckDBPyConnection:
    """The store read-only, retrying while a writer (another process's, or this one's) holds it (and
    ``cancelled()`` is false)."""
    if not path.exists():
        raise StoreError(f"no runmeter store at {path} yet (it is created when the first run is ingested)")
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = duckdb.connect(str(path), read_only=True)
            break
        except duckdb.Error as exc:
            # "different configuration": this process's own writer has the file open read-write.
            if not (is_lock_error(exc) or "different configuration" in str(exc)):
                raise StoreError(f"cannot open {path}: {exc}") from None
            if time.monotonic() >= deadline or cancelled():
                raise StoreError(f"{path} stayed busy for {timeout:g} s; serving the last values") from None
            time.sleep(0.005)
    return conn


@atexit.register
def _close_all() -> None:
    """Close the collectors still open at interpreter exit: atexit runs before daemon threads are frozen,
    so no forecast or scrape is left inside DuckDB when the interpreter finalises."""
    for collector in list(_LIVE):
        collector.close()


__all__ = ["StoreCollector", "StoreReading"]
