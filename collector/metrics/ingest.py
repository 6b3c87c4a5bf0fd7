"""Counting at ingest: the writer's run hook adds each batch's deltas to the aggregate tables.

The store's writer (whichever process holds the writer role) calls :func:`count_runs` inside the
transaction that writes the runs, with each run's stored merged record (before) and new merged record
(after). The counters therefore move exactly once per ingested change, whichever process recorded the
run, and a scrape of ``runmeter serve`` reads a few hundred rows however many runs the store holds.
Cost is priced with the price table at ingest (built-in + ``RUNMETER_PRICES``) and never recomputed.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence

import duckdb
import pyarrow as pa

from analysis.prices import PriceTable, builtin_price_table, load_price_table, price_file_from_env
from collector.metrics import families as fam
from collector.metrics.aggregates import Aggregates, Histogram
from collector.metrics.contributions import Delta, Labeller
from collector.record import RunRecord

_LOG = logging.getLogger("runmeter.metrics")
_LABELLER: Labeller | None = None


def default_prices() -> PriceTable:
    """The built-in price table with the user's ``RUNMETER_PRICES`` file over it (built-in if it is bad)."""
    try:
        return load_price_table(price_file_from_env(None, os.environ))
    except (OSError, ValueError) as exc:
        _LOG.warning("runmeter: price file unusable, pricing metrics with the built-in table: %s", exc)
        return builtin_price_table()


def labeller() -> Labeller:
    """The process-wide labeller for ingest (the price table is read once)."""
    global _LABELLER
    if _LABELLER is None:
        _LABELLER = Labeller(default_prices())
    return _LABELLER


def batch_delta(pairs: Sequence[tuple[RunRecord | None, RunRecord]], lab: Labeller) -> Delta:
    """The summed delta of a batch of (before, after) runs."""
    total = Delta()
    add = lab.add_delta
    for before, after in pairs:
        add(total, before, after)
    return total


def count_runs(conn: duckdb.DuckDBPyConnection, pairs: Sequence[tuple[RunRecord | None, RunRecord]],
               lab: Labeller | None = None) -> Delta:
    """Add the batch's deltas to ``metric_counters`` and ``metric_histograms`` (inside the caller's
    transaction); returns what was added."""
    delta = batch_delta(pairs, lab or labeller())
    agg = Aggregates()
    agg.apply(delta)
    if agg.counters:
        keys = list(agg.counters)
        conn.register("_rm_mc", pa.table({
            "family": [k[0] for k in keys],
            "labels": [json.dumps(k[1]) for k in keys],
            "value": [agg.counters[k] for k in keys],
        }))
        conn.execute("INSERT INTO metric_counters SELECT * FROM _rm_mc "
                     "ON CONFLICT (family, labels) DO UPDATE SET value = value + excluded.value")
        conn.unregister("_rm_mc")
    if agg.histograms:
        fams, labels, les, counts = [], [], [], []
        for (name, values), h in agg.histograms.items():
            bounds = (*fam.BY_NAME[name].buckets, math.inf)
            for le, n in zip(bounds, h.counts, strict=True):
                if n:
                    fams.append(name)
                    labels.append(json.dumps(values))
                    les.append(float(le))
                    counts.append(n)
        conn.register("_rm_mh", pa.table({"family": fams, "labels": labels, "bucket_le": les,
                                          "count": pa.array(counts, pa.int64())}))
        conn.execute("INSERT INTO metric_histograms SELECT * FROM _rm_mh "
                     "ON CONFLICT (family, labels, bucket_le) DO UPDATE SET count = count + excluded.count")
        conn.unregister("_rm_mh")
        keys = list(agg.histograms)
        conn.register("_rm_ms", pa.table({
            "family": [k[0] for k in keys],
            "labels": [json.dumps(k[1]) for k in keys],
            "sum": [agg.histograms[k].sum for k in keys],
        }))
        conn.execute("INSERT INTO metric_histogram_sums SELECT * FROM _rm_ms "
                     "ON CONFLICT (family, labels) DO UPDATE SET sum = sum + excluded.sum")
        conn.unregister("_rm_ms")
    return delta


_LABELS: dict[str, tuple[str, ...]] = {}


def _labels(text: str) -> tuple[str, ...]:
    """Parsed label values, memoised: a scrape sees the same few hundred label sets every time."""
    values = _LABELS.get(text)
    if values is None:
        values = tuple(json.loads(text))
        if len(_LABELS) < 100_000:
            _LABELS[text] = values
    return values


def load_aggregates(conn: duckdb.DuckDBPyConnection) -> Aggregates:
    """The store's counters and histograms (families this version does not know are skipped)."""
    agg = Aggregates()
    for name, labels, value in conn.execute("SELECT family, labels, value FROM metric_counters").fetchall():
        if name in fam.BY_NAME:
            agg.counters[(name, _labels(labels))] = value
    for name, labels, le, count in conn.execute(
        "SELECT family, labels, bucket_le, count FROM metric_histograms"
    ).fetchall():
        f = fam.BY_NAME.get(name)
        if f is None:
            continue
        h = agg.histogram((name, _labels(labels)))
        # A bound no longer in the bucket list counts in the next larger one (still cumulative-correct).
        h.counts[_bucket_index(f.buckets, le)] += count
    for name, labels, total in conn.execute(
        "SELECT family, labels, sum FROM metric_histogram_sums"
    ).fetchall():
        key = (name, _labels(labels))
        h2: Histogram | None = agg.histograms.get(key)
        if h2 is not None:
            h2.sum = total
    return agg


def _bucket_index(buckets: tuple[float, ...], le: float) -> int:
    for i, b in enumerate(buckets):
        if le <= b:
            return i
    return len(buckets)
