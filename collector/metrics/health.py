"""The writer's health as the metrics see it: queue, spool backlog, drops and errors."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from collector.metrics import families as fam


@dataclass(frozen=True, slots=True)
class WriterHealth:
    """One reading of a writer's health (``pending`` and ``spooled`` are gauges, the rest counters)."""

    pending: int = 0
    spooled: int = 0
    dropped: int = 0
    errors: int = 0


class WriterLike(Protocol):
    """What health needs of :class:`collector.store.writer.Writer`."""

    @property
    def pending(self) -> int: ...

    spooled: int
    dropped: int
    errors: int


def process_writer_health(writer: WriterLike) -> WriterHealth:
    """A recording process's writer: its in-memory queue and the records it spooled."""
    return WriterHealth(writer.pending, writer.spooled, writer.dropped, writer.errors)


class SpoolBacklog:
    """Counts the run records waiting in a store's spool directory (every process's), cheaply.

    A sealed ``.jsonl`` file never changes, so its line count is cached by name; the cache forgets
    files once they are ingested.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lines: dict[str, int] = {}

    def records(self) -> int:
        """Records in sealed and in-progress spool files now."""
        try:
            with os.scandir(self.directory) as it:
                entries = [e for e in it if e.name.endswith((".jsonl", ".tmp"))]
        except OSError:
            return 0
        seen: dict[str, int] = {}
        total = 0
        for e in entries:
            n = self._lines.get(e.name) if e.name.endswith(".jsonl") else None
            if n is None:
                n = _count_lines(Path(e.path))
            seen[e.name] = n
            total += n
        self._lines = {k: v for k, v in seen.items() if k.endswith(".jsonl")}
        return total


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 16), b""))
    except OSError:
        return 0


def gauge(f: fam.Family, value: float) -> GaugeMetricFamily:
    """An unlabelled gauge family with one sample."""
    return GaugeMetricFamily(f.name, f.help, value=value)


def health_families(h: WriterHealth | None) -> Iterator[Metric]:
    """The writer's health families (zeros when there is no writer)."""
    h = h or WriterHealth()
    yield gauge(fam.WRITER_PENDING, float(h.pending))
    yield gauge(fam.WRITER_SPOOLED, float(h.spooled))
    yield CounterMetricFamily(fam.WRITER_DROPPED.base, fam.WRITER_DROPPED.help, value=float(h.dropped))
    yield CounterMetricFamily(fam.WRITER_ERRORS.base, fam.WRITER_ERRORS.help, value=float(h.errors))


def build_info() -> GaugeMetricFamily:
    """``runmeter_build_info{version}`` 1."""
    info = GaugeMetricFamily(fam.BUILD_INFO.name, fam.BUILD_INFO.help, labels=fam.BUILD_INFO.labels)
    info.add_metric([fam.version()], 1.0)
    return info
