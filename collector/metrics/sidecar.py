"""``runmeter serve`` assembled: the store's writer, the storage poller and the exporter on one port.

The sidecar takes the writer role (its :class:`~collector.store.writer.Writer` ingests every process's
spool once a second, counting the metrics at ingest), polls vector-store usage when it has an OpenAI
client, and serves ``/metrics`` from a :class:`~collector.metrics.exporter.StoreCollector`. On a
foreign or newer store it writes nothing and still serves its own health metrics.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import duckdb
from prometheus_client import CollectorRegistry

from analysis.storage import StorageAssumptions
from collector.metrics.exporter import StoreCollector
from collector.metrics.health import SpoolBacklog, WriterHealth
from collector.metrics.server import MetricsServer
from collector.store.migrations import StoreError
from collector.store.reader import is_lock_error
from collector.store.writer import METRIC_COUNTS, SNAPSHOT_SPOOL, IngestHook, Writer, spool_dir

_LOG = logging.getLogger("runmeter.serve")


def store_problem(path: Path) -> str | None:
    """Why runmeter must not write into ``path`` (foreign or newer store), else ``None``.

    A missing file is fine (the writer creates it); a file locked by another writer is checked later.
    """
    if not path.exists():
        return None
    try:
        conn = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        if is_lock_error(exc):
            return None
        return f"{path} is not a DuckDB file runmeter can open: {exc}"
    try:
        from collector.store.migrations import MIGRATIONS, applied_migrations, check_store

        check_store(conn, str(path))
        unknown = set(applied_migrations(conn)) - {fn.__name__ for fn in MIGRATIONS}
        if unknown:
            return f"the store {path} was migrated by a newer runmeter; upgrade runmeter to use it"
    except StoreError as exc:
        return str(exc)
    finally:
        conn.close()
    return None


class Sidecar:
    """The parts of ``runmeter serve``; :meth:`close` stops them all.

    Args:
        path: the store.
        host, port: where ``/metrics`` is served (``port=0``: a free port).
        poller: a started :class:`~collector.storage_poller.BackgroundPoller`, or ``None``.
        assumptions: storage billing assumptions for the modelled cost.
        flush_interval: seconds between the writer's ingest cycles.
    """

    def __init__(self, path: str | Path, *, host: str = "127.0.0.1", port: int = 9464, poller: Any = None,
                 assumptions: StorageAssumptions | None = None, flush_interval: float = 1.0) -> None:
        self.path = Path(path)
        self.poller = poller
        self.refused = store_problem(self.path)
        self.writer: Writer | None = None
        self._backlog = SpoolBacklog(spool_dir(self.path))
        self.collector = StoreCollector(self.path, health=self.health, last_poll=self._last_poll,
                                        assumptions=assumptions)
        self.collector.feed_max_age = 2 * flush_interval + 1.0
        if self.refused is None:
            # After every ingest cycle the writer hands its open connection to the exporter, which
            # reads the few small tables then; scrapes serve that reading instead of opening the file.
            feed = IngestHook(lambda _db: True, self.collector.refresh_from)
            self.writer = Writer(self.path, flush_interval=flush_interval, install_signal_handlers=False,
                                 ingest_hooks=(SNAPSHOT_SPOOL, METRIC_COUNTS, feed))
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self.server = MetricsServer(self.registry, host, port, status=self.status,
                                    title="runmeter serve").start()

    @property
    def url(self) -> str:
        """The landing page's URL."""
        return f"http://{self.server.host}:{self.server.port}/"

    def health(self) -> WriterHealth:
        """The writer's health: records waiting in the spool (every process's) count as pending."""
        spooled = self._backlog.records()
        w = self.writer
        if w is None:
            return WriterHealth(0, spooled, 0, 0)
        return WriterHealth(w.pending + spooled, spooled, w.dropped, w.errors)

    def _last_poll(self) -> float | None:
        return None if self.poller is None else self.poller.last_poll_at

    def status(self) -> list[str]:
        """Lines for the landing page."""
        lines = [f"Store: {self.path}"]
        if self.refused:
            lines.append(f"Not writing: {self.refused}. Only the sidecar's own health metrics are served.")
        elif self.collector.problem:
            lines.append(f"Store not readable at the last scrape: {self.collector.problem}")
        lines.append("Storage poller: " + ("off (no OpenAI client)" if self.poller is None else "on"))
        lines.append("Scrape this sidecar or the applications' live metrics, never both.")
        return lines

    def close(self) -> None:
        """Stop serving and polling; the writer ingests what is left and lets go of the role."""
        self.server.stop()
        self.collector.close()  # no scrape or forecast thread is left inside DuckDB
        if self.poller is not None:
            self.poller.stop()
        if self.writer is not None:
            self.writer.close()


__all__ = ["Sidecar", "store_problem"]
