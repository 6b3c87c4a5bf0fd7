"""Metrics benchmarks.

1. A scrape of ``runmeter serve`` (HTTP GET /metrics through the real sidecar) on a store holding
   ``--runs`` runs (default 1M) and ``--stores`` vector stores (default 1,000, with ``--polls``
   snapshots each over 14 days): the first scrape (storage forecast computed) and p50/p99/max of the
   next ones. Target: at most 100 ms.
2. In-process live metrics on the request thread: the cost ``Recorder(..., metrics_port=N)`` adds per
   run (the observer's queue append), and for reference the off-thread counting per run.
   Target: at most 5 µs per run.

Run: ``.venv/bin/python benchmarks/bench_metrics.py [--runs 1000000] [--stores 1000] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

import duckdb
from prometheus_client import CollectorRegistry

from analysis.prices import builtin_price_table
from collector.metrics.exporter import StoreCollector
from collector.metrics.ingest import Labeller, count_runs
from collector.metrics.live import LiveMetrics
from collector.metrics.server import MetricsServer
from collector.metrics.sidecar import Sidecar
from collector.record import RunRecord
from collector.recorder import Recorder
from collector.store import migrate

APIS = ("assistants", "responses", "chat")
MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-5", "gpt-5-mini", "o3", "o4-mini",
          "ft:custom")
STATUSES = ("completed", "incomplete", "failed", "cancelled", "expired", "requires_action", "interrupted")
T0 = 1_764_000_000.0


def _record(i: int) -> RunRecord:
    return RunRecord(
        run_id=f"run_{i:08d}", api=APIS[i % 3], model=MODELS[(i // 3) % len(MODELS)],  # type: ignore[arg-type]
        status=STATUSES[(i // 27) % len(STATUSES)], started_at=T0 + i, ttft_seconds=0.01 * (i % 3000),
        duration_seconds=0.05 * (i % 5000), input_tokens=4000 + i % 997, cached_input_tokens=1024,
        output_tokens=300 + i % 211, reasoning_tokens=i % 50, file_search_calls=1 + i % 2,
        retrieved_chunks=i % 40, streams=1,
    )


def build_store(db: Path, runs: int, stores: int, polls: int) -> None:
    """``runs`` rows in ``runs`` (bulk SQL), the metric tables as ingest leaves them (every label
    combination counted), and ``stores`` x ``polls`` snapshots over the last 14 days."""
    with duckdb.connect(str(db)) as conn:
        migrate(conn, str(db))
        conn.execute(f"""
            INSERT INTO runs (run_id, api, model, status, started_at, ttft_seconds, duration_seconds,
                              input_tokens, output_tokens, file_search_calls, retrieved_chunks, streams)
            SELECT 'run_' || i, ['assistants', 'responses', 'chat'][i % 3 + 1], 'gpt-4o-mini', 'completed',
                   to_timestamp({T0} + i), 0.4, 2.0, 5000, 300, 1, i % 20, 1
            FROM range({runs}) t(i)""")
        conn.execute("BEGIN TRANSACTION")
        # Every api x model x status combination, with all token types, meters and histogram buckets.
        count_runs(conn, [(None, _record(i)) for i in range(3 * len(MODELS) * len(STATUSES) * 40)],
                   Labeller(builtin_price_table()))
        conn.execute("COMMIT")
        now = time.time()
        step = 14 * 86400 / polls
        conn.execute(f"""
            INSERT INTO vector_store_snapshots (vector_store_id, observed_at, usage_bytes, status, name)
            SELECT 'vs_' || s, to_timestamp({now} - 14 * 86400 + p * {step}), (s + 1) * 1000000 + p * 1000,
                   CASE WHEN s % 50 = 0 THEN 'expired' ELSE 'completed' END, 'store ' || s
            FROM range({stores}) a(s), range({polls}) b(p)""")


def bench_scrape(db: Path, scrapes: int, fed: bool) -> dict[str, float]:
    """Milliseconds per HTTP scrape: the first, then p50/p99/max.

    ``fed``: the sidecar as ``runmeter serve`` runs it (its writer hands each ingest cycle's connection
    to the exporter); otherwise a bare exporter that opens the file per scrape (what the sidecar falls
    back to while another process holds the writer role).
    """
    if fed:
        sidecar: Sidecar | None = Sidecar(db, port=0, flush_interval=1.0)
        assert sidecar is not None
        collector, url = sidecar.collector, sidecar.url + "metrics"
        server = None
        time.sleep(1.5)  # the writer's first cycles: it takes the role and feeds the exporter
    else:
        sidecar = None
        collector = StoreCollector(db)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        server = MetricsServer(registry, port=0).start()
        url = f"http://127.0.0.1:{server.port}/metrics"
    try:

        def once() -> float:
            t0 = time.perf_counter()
            with urllib.request.urlopen(url, timeout=30) as resp:
                body = resp.read()
            assert b"runmeter_store_up 1.0" in body, body[-500:]
            return (time.perf_counter() - t0) * 1000

        first = once()
        collector.wait_forecast()
        times = []
        for _ in range(scrapes):
            times.append(once())
            time.sleep(0.02)
        times.sort()
        series = sum(1 for line in body_lines(url) if line and not line.startswith("#"))
    finally:
        if sidecar is not None:
            sidecar.close()
        if server is not None:
            server.stop()
    p99 = times[int(0.99 * (len(times) - 1))]
    return {"first_ms": first, "p50_ms": statistics.median(times), "p99_ms": p99, "max_ms": times[-1],
            "series": series}


def body_lines(url: str) -> list[str]:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.read().decode().splitlines()


def bench_recorder_sink(tmp: Path, n: int) -> dict[str, float]:
    """µs per run of the Recorder's request-path hand-off, without and with live metrics."""
    out = {}
    for label, kw in (("sink_us_without_live", {}), ("sink_us_with_live", {"registry": CollectorRegistry()})):
        rec = Recorder(tmp / f"{label}.duckdb", flush_interval=3600, **kw)  # type: ignore[arg-type]
        records = [_record(i) for i in range(n)]
        t0 = time.perf_counter()
        for r in records:
            rec._sink(r)
        out[label] = (time.perf_counter() - t0) / n * 1e6
        rec.close()
    out["added_us"] = out["sink_us_with_live"] - out["sink_us_without_live"]
    return out


def bench_live(n: int) -> dict[str, float]:
    """µs per run: the request-thread observer append, and the off-thread counting."""
    live = LiveMetrics(builtin_price_table(), drain_interval=0)
    records = [_record(i) for i in range(n)]
    t0 = time.perf_counter()
    for r in records:
        live.observe(r)
    observe_us = (time.perf_counter() - t0) / n * 1e6
    t0 = time.perf_counter()
    live.drain()
    drain_us = (time.perf_counter() - t0) / n * 1e6
    live.close()
    return {"observe_us": observe_us, "count_off_thread_us": drain_us}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=1_000_000)
    p.add_argument("--stores", type=int, default=1_000)
    p.add_argument("--polls", type=int, default=100, help="snapshots per store over 14 days")
    p.add_argument("--scrapes", type=int, default=50)
    p.add_argument("--live-runs", type=int, default=100_000)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.duckdb"
        t0 = time.perf_counter()
        build_store(db, args.runs, args.stores, args.polls)
        built = time.perf_counter() - t0
        scrape = bench_scrape(db, args.scrapes, fed=True)
        direct = bench_scrape(db, args.scrapes, fed=False)
        sink = bench_recorder_sink(Path(tmp), min(args.live_runs, 20_000))
    live = bench_live(args.live_runs)
    live.update(sink)
    result = {"runs": args.runs, "stores": args.stores, "snapshots": args.stores * args.polls,
              "build_s": round(built, 1), "scrape_serve": scrape, "scrape_opening_the_file": direct,
              "live": live, "targets": {"scrape_ms": 100, "live_us_per_run": 5},
              "ok": max(scrape["first_ms"], scrape["p99_ms"]) <= 100 and live["added_us"] <= 5}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"store: {args.runs:,} runs, {args.stores:,} vector stores x {args.polls} snapshots "
          f"(built in {built:.1f} s); {scrape['series']:.0f} series per scrape")
    for label, r in (("runmeter serve", scrape), ("opening the file per scrape", direct)):
        print(f"scrape /metrics, {label}: first {r['first_ms']:.1f} ms, then p50 {r['p50_ms']:.1f} ms, "
              f"p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.1f} ms (target <= 100 ms)")
    print(f"live metrics: {live['observe_us']:.2f} µs per run on the request thread (target <= 5 µs); "
          f"{live['count_off_thread_us']:.1f} µs per run counted off the request thread")
    print(f"Recorder request path: {live['sink_us_without_live']:.2f} µs per run without live metrics, "
          f"{live['sink_us_with_live']:.2f} µs with them (+{live['added_us']:.2f} µs)")
    print("OK" if result["ok"] else "OVER TARGET")

if __name__ == "__main__":
    main()
