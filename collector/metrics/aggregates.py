"""The run counters and histograms as numbers in memory, and as prometheus_client metric families.

Both exporters render through here: ``runmeter serve`` loads the store's aggregate tables into an
:class:`Aggregates`; live metrics apply each run's :class:`~collector.metrics.contributions.Delta` to one.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from collector.metrics import families as fam
from collector.metrics.contributions import Delta, Key


@dataclass(slots=True)
class Histogram:
    """Per-bucket (not cumulative) counts, the last one for ``+Inf``, and the sum of observations."""

    counts: list[int]
    sum: float = 0.0

    def observe(self, buckets: tuple[float, ...], value: float) -> None:
        """Count ``value`` in the first bucket whose upper bound is >= it."""
        self.counts[bisect.bisect_left(buckets, value)] += 1
        self.sum += value


@dataclass(slots=True)
class Aggregates:
    """Counter values and histograms keyed by (family, label values)."""

    counters: dict[Key, float] = field(default_factory=dict)
    histograms: dict[Key, Histogram] = field(default_factory=dict)

    def apply(self, delta: Delta) -> None:
        """Add a run's delta."""
        for key, value in delta.counters.items():
            self.counters[key] = self.counters.get(key, 0.0) + value
        for key, value in delta.observations:
            self.histogram(key).observe(fam.BY_NAME[key[0]].buckets, value)

    def histogram(self, key: Key) -> Histogram:
        """The histogram of ``key``, created empty when missing."""
        h = self.histograms.get(key)
        if h is None:
            h = self.histograms[key] = Histogram([0] * (len(fam.BY_NAME[key[0]].buckets) + 1))
        return h

    def metric_families(self) -> Iterator[Metric]:
        """One family per run counter and histogram (empty families included, so TYPE lines stay)."""
        by_family: dict[str, list[tuple[tuple[str, ...], float]]] = {}
        for (name, labels), value in self.counters.items():
            by_family.setdefault(name, []).append((labels, value))
        for f in fam.RUN_COUNTERS:
            c = CounterMetricFamily(f.base, f.help, labels=f.labels)
            for labels, value in sorted(by_family.get(f.name, ())):
                c.add_metric(labels, value)
            yield c
        hists: dict[str, list[tuple[tuple[str, ...], Histogram]]] = {}
        for (name, labels), h in self.histograms.items():
            hists.setdefault(name, []).append((labels, h))
        for f in fam.RUN_HISTOGRAMS:
            m = HistogramMetricFamily(f.name, f.help, labels=f.labels)
            for labels, h in sorted(hists.get(f.name, ()), key=lambda item: item[0]):
                cumulative, total = [], 0
                for le, n in zip((*f.buckets, float("inf")), h.counts, strict=True):
                    total += n
                    cumulative.append((_le(le), float(total)))
                m.add_metric(labels, cumulative, h.sum)
            yield m


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else f"{bound:g}"
