"""Live metrics in a recording process: ``Recorder(..., metrics_port=N)`` or ``registry=...``.

On the request thread :meth:`LiveMetrics.observe` only appends the run observation to a deque (well
under a microsecond). A daemon thread (and every scrape) drains it: observations of a run already seen
are merged with it (:func:`collector.merge.merge`, as the writer does) and only the difference is
counted, exactly like counting at ingest (:mod:`collector.metrics.contributions`). The last
``memory`` runs are remembered for that; an observation of an older run counts as a new run.

Scrape this process or ``runmeter serve``, never both: both count the same runs.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from analysis.prices import PriceTable
from collector.merge import merge
from collector.metrics.aggregates import Aggregates
from collector.metrics.contributions import Labeller
from collector.metrics.health import WriterHealth, build_info, health_families, process_writer_health
from collector.metrics.ingest import default_prices
from collector.metrics.server import MetricsServer
from collector.record import RunRecord

_LOG = logging.getLogger("runmeter.metrics")


class LiveMetrics:
    """A prometheus_client collector of the runs this process observed.

    Args:
        prices: the price table for cost and model folding (default: built-in + ``RUNMETER_PRICES``).
        health: the process writer's health, exported alongside.
        memory: runs remembered for merging later observations of the same run.
        drain_interval: seconds between background drains (``0``: drain only at scrapes and
            :meth:`drain`).
    """

    def __init__(self, prices: PriceTable | None = None, *, health: Callable[[], WriterHealth] | None = None,
                 memory: int = 4096, drain_interval: float = 0.5) -> None:
        self._labeller = Labeller(prices or default_prices())
        self.health = health
        self.memory = memory
        self.aggregates = Aggregates()
        self._queue: deque[RunRecord] = deque()
        self._runs: OrderedDict[str, RunRecord] = OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if drain_interval > 0:
            self._thread = threading.Thread(target=self._run, args=(drain_interval,),
                                            name="runmeter-live-metrics", daemon=True)
            self._thread.start()

    def observe(self, record: RunRecord) -> None:
        """A run observation (a Recorder observer): queued, counted off the request thread."""
        self._queue.append(record)

    def drain(self) -> None:
        """Count every queued observation now."""
        with self._lock:
            q = self._queue
            while q:
                record = q.popleft()
                try:
                    self._count(record)
                except Exception:  # telemetry never breaks the program it observes
                    _LOG.warning("runmeter: could not count run %s", record.run_id, exc_info=True)

    def _count(self, record: RunRecord) -> None:
        before = self._runs.pop(record.run_id, None)
        after = merge(before, record) if before is not None else record
        self.aggregates.apply(self._labeller.delta(before, after))
        self._runs[record.run_id] = after
        while len(self._runs) > self.memory:
            self._runs.popitem(last=False)

    def describe(self) -> list[Metric]:
        """Nothing: the families are built at collect time."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The run counters and histograms, the writer's health and build info."""
        self.drain()
        with self._lock:
            families = list(self.aggregates.metric_families())
        yield from families
        yield from health_families(self.health() if self.health else None)
        yield build_info()

    def close(self) -> None:
        """Stop the background drain (counting what is queued first)."""
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=5)
        self.drain()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.drain()


class LiveHandle:
    """Live metrics attached to a Recorder: the collector, and the server when it has a port."""

    def __init__(self, metrics: LiveMetrics, registry: CollectorRegistry,
                 server: MetricsServer | None) -> None:
        self.metrics = metrics
        self.registry = registry
        self.server = server

    @property
    def port(self) -> int | None:
        """The port serving ``/metrics`` (``None`` without a server)."""
        return self.server.port if self.server else None

    def close(self) -> None:
        """Stop serving and counting."""
        if self.server is not None:
            self.server.stop()
        self.metrics.close()


def attach_live(recorder: Any, port: int | None, registry: CollectorRegistry | None,
                host: str = "127.0.0.1") -> LiveHandle:
    """Count ``recorder``'s runs live, in ``registry`` (the app's own) or served on ``host:port``.

    A port that cannot be bound is logged and the process goes on recording without the server.
    """
    live = LiveMetrics(health=lambda: process_writer_health(recorder.writer))
    recorder.observers.append(live.observe)
    server: MetricsServer | None = None
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(live)
        if port is not None:
            try:
                server = MetricsServer(registry, host, port, title="runmeter (live, this process)").start()
            except OSError as exc:
                _LOG.warning("runmeter: cannot serve live metrics on %s:%s: %s", host, port, exc)
    else:
        registry.register(live)
    return LiveHandle(live, registry, server)
