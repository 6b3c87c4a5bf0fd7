"""Writer benchmarks, side by side in one run.

1. rows/s into DuckDB: the Writer (submit → background batches, merge with stored rows, Arrow
   inserts) vs. row-at-a-time ``executemany`` vs. a plain Arrow ``INSERT ... SELECT``.
2. ``submit()`` latency on the calling thread while another process holds the DuckDB file
   read-write for ``--hold`` seconds (the writer spools meanwhile, then ingests): p50/p99/max.
   Target: p99 < 1 ms.
3. Ingest cost per batch (``--ingest``): the Writer with its default ingest hooks (metrics counted at
   ingest, summary tables) over ``--rows`` new runs and then the same runs again with more usage (an
   upgrade: merged with the stored rows, only the difference counted), each hook timed on the writer
   thread; vs. the baseline of a bare Arrow batch insert of the same rows (runs and chunks tables, one
   transaction per batch) in the same run. ``reader_gap`` is 0 here: the pause the writer leaves readers
   between batches is not ingest cost.

Run: ``.venv/bin/python benchmarks/bench_writer.py [--rows 50000] [--hold 10] [--json] [--ingest]``
(``--ingest``: only part 3).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb

from collector.record import ChunkRecord, RunRecord
from collector.store import Writer, migrate, open_reader
from collector.store.schema import RUNS_COLUMNS, chunks_table, runs_table
from collector.store.writer import METRIC_COUNTS, SNAPSHOT_SPOOL, SUMMARY_TABLES, IngestHook, RunPairs


def make_record(i: int) -> RunRecord:
    """A realistic finished run with two retrieved chunks."""
    return RunRecord(
        run_id=f"run_{i:08d}",
        api="responses",
        model="gpt-4o-mini",
        status="completed",
        started_at=1_764_000_000.0 + i,
        first_token_at=1_764_000_000.4 + i,
        completed_at=1_764_000_002.0 + i,
        ttft_seconds=0.4,
        duration_seconds=2.0,
        input_tokens=5_000 + i % 100,
        cached_input_tokens=1_024,
        output_tokens=300,
        total_tokens=5_300 + i % 100,
        file_search_calls=1,
        retrieved_chunks=2,
        max_num_results=20,
        streams=1,
        tags={"customer": f"c{i % 50}"},
        chunks=[ChunkRecord("fs_1", 1, "file_a", 0.9, 800), ChunkRecord("fs_1", 2, "file_b", 0.7, 650)],
    )


def bench_writer(db: Path, n: int) -> float:
    """rows/s of Writer from the first submit until every record is committed."""
    records = [make_record(i) for i in range(n)]
    w = Writer(db, flush_interval=0.2, batch_size=5_000, queue_max=n, install_signal_handlers=False)
    w.flush()  # creates and migrates the store, as the other two runs do before timing
    t0 = time.perf_counter()
    for r in records:
        w.submit(r)
    w.flush(timeout=120)
    elapsed = time.perf_counter() - t0
    w.close()
    assert w.written == n, (w.written, w.errors)
    return n / elapsed


def bench_executemany(db: Path, n: int) -> float:
    """rows/s of a row-at-a-time executemany into the same runs table."""
    rows = runs_table([make_record(i) for i in range(n)], time.time()).to_pylist()
    names = [name for name, _ in RUNS_COLUMNS]
    params = [[None if name == "tags" else row[name] for name in names] for row in rows]
    with duckdb.connect(str(db)) as conn:
        migrate(conn)
        t0 = time.perf_counter()
        conn.executemany(f"INSERT INTO runs VALUES ({', '.join('?' for _ in names)})", params)
        return n / (time.perf_counter() - t0)


def bench_plain_arrow(db: Path, n: int) -> float:
    """rows/s of building one Arrow table and one INSERT ... SELECT (no merge, no chunks)."""
    records = [make_record(i) for i in range(n)]
    with duckdb.connect(str(db)) as conn:
        migrate(conn)
        t0 = time.perf_counter()
        frame = runs_table(records, time.time())
        conn.register("frame", frame)
        conn.execute("INSERT INTO runs SELECT * FROM frame")
        return n / (time.perf_counter() - t0)


def upgraded(r: RunRecord) -> RunRecord:
    """A later observation of ``r``: more output tokens and one more file_search call's chunks."""
    chunks = [*r.chunks, ChunkRecord("fs_2", 1, "file_c", 0.6, 700)]
    return replace(r, output_tokens=(r.output_tokens or 0) + 120, file_search_calls=2,
                   retrieved_chunks=len(chunks), chunks=chunks, tags=dict(r.tags))


class _Timed:
    """An ingest hook's run callback, timed (seconds per call)."""

    def __init__(self, fn: Callable[[duckdb.DuckDBPyConnection, RunPairs], object]) -> None:
        self.fn = fn
        self.seconds: list[float] = []

    def __call__(self, conn: duckdb.DuckDBPyConnection, pairs: RunPairs) -> object:
        t0 = time.perf_counter()
        try:
            return self.fn(conn, pairs)
        finally:
            self.seconds.append(time.perf_counter() - t0)


def _ingest_pass(w: Writer, records: list[RunRecord], timers: dict[str, _Timed]) -> dict[str, float]:
    for t in timers.values():
        t.seconds.clear()
    t0 = time.perf_counter()
    for r in records:
        w.submit(r)
    assert w.flush(timeout=600)
    elapsed = time.perf_counter() - t0
    batches = max(len(t.seconds) for t in timers.values())
    out = {"records_per_s": len(records) / elapsed, "batches": batches,
           "ms_per_batch": 1000 * elapsed / batches}
    for name, t in timers.items():
        out[f"{name}_ms_per_batch"] = 1000 * sum(t.seconds) / max(1, len(t.seconds))
    return out


def bench_ingest(db: Path, n: int, batch: int = 5_000) -> dict[str, Any]:
    """Per-batch cost of the Writer with its ingest hooks (new runs, then upgrades of the same runs), and
    of a bare Arrow insert of the same rows."""
    timers = {"metrics_hook": _Timed(_runs_of(METRIC_COUNTS)),
              "summary_hook": _Timed(_runs_of(SUMMARY_TABLES))}
    hooks = (SNAPSHOT_SPOOL, replace(METRIC_COUNTS, runs=timers["metrics_hook"]),
             replace(SUMMARY_TABLES, runs=timers["summary_hook"]))
    first = [make_record(i) for i in range(n)]
    again = [upgraded(r) for r in first]
    w = Writer(db, flush_interval=600, batch_size=batch, queue_max=n, install_signal_handlers=False,
               reader_gap=0.0, ingest_hooks=hooks)
    w.flush()
    new = _ingest_pass(w, first, timers)
    upgrade = _ingest_pass(w, again, timers)
    w.close()
    assert w.errors == 0 and w.written == 2 * n, (w.written, w.errors)
    with duckdb.connect(str(db), read_only=True) as conn:
        fresh = conn.execute("SELECT count(*) FROM summary_meta m WHERE m.runs = (SELECT count(*) FROM runs)"
                             ).fetchall()[0][0]
    assert fresh == 5, "the summary tables fell behind the runs"  # the hooks really ran every batch
    base = bench_bare_arrow(db.with_name("bare.duckdb"), [make_record(i) for i in range(n)], batch)
    return {"new": new, "upgrade": upgrade, "bare_arrow": base,
            "ratio_new": base["records_per_s"] / new["records_per_s"],
            "ratio_upgrade": base["records_per_s"] / upgrade["records_per_s"]}


def _runs_of(hook: IngestHook) -> Callable[[duckdb.DuckDBPyConnection, RunPairs], object]:
    assert hook.runs is not None
    return hook.runs


def bench_bare_arrow(db: Path, records: list[RunRecord], batch: int) -> dict[str, float]:
    """The baseline: each batch's runs and chunks built as Arrow tables and inserted in one transaction
    (no merge, no hooks; opening the file once)."""
    with duckdb.connect(str(db)) as conn:
        migrate(conn)
        t0 = time.perf_counter()
        for i in range(0, len(records), batch):
            part = records[i:i + batch]
            conn.execute("BEGIN TRANSACTION")
            conn.register("_b_runs", runs_table(part, time.time()))
            conn.execute("INSERT OR REPLACE INTO runs SELECT * FROM _b_runs")
            conn.register("_b_chunks", chunks_table(part))
            conn.execute("INSERT INTO retrieved_chunks SELECT * FROM _b_chunks")
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - t0
    batches = -(-len(records) // batch)
    return {"records_per_s": len(records) / elapsed, "ms_per_batch": 1000 * elapsed / batches}


def print_ingest(r: dict[str, Any]) -> None:
    """The ingest benchmark as a table."""
    print(f"{'ingest (5,000-record batches)':<34} {'records/s':>10} {'ms/batch':>9} {'metrics hook':>13} "
          f"{'summary hook':>13}")
    for name, key in (("Writer, new runs", "new"), ("Writer, upgraded runs", "upgrade")):
        p = r[key]
        print(f"{name:<34} {p['records_per_s']:>10,.0f} {p['ms_per_batch']:>9.1f} "
              f"{p['metrics_hook_ms_per_batch']:>10.1f} ms {p['summary_hook_ms_per_batch']:>10.1f} ms")
    b = r["bare_arrow"]
    print(f"{'bare Arrow insert (baseline)':<34} {b['records_per_s']:>10,.0f} {b['ms_per_batch']:>9.1f}")
    print(f"baseline / Writer: {r['ratio_new']:.1f}x (new runs), {r['ratio_upgrade']:.1f}x (upgraded runs)")


def bench_submit_while_locked(db: Path, hold: float, rate: float) -> dict[str, float]:
    """submit() latency on this thread while another process holds the file for ``hold`` seconds."""
    with duckdb.connect(str(db)) as conn:
        migrate(conn)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, time; c = duckdb.connect({str(db)!r}); print('locked', flush=True); "
            f"time.sleep({hold})",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    w = Writer(db, flush_interval=1.0, install_signal_handlers=False)
    records = [make_record(i) for i in range(int(hold * rate))]
    for r in records:
        for c in r.chunks:
            c.content_tokens, c.text = None, "retrieved chunk text " * 40
    latencies: list[int] = []
    t_start = time.perf_counter()
    for i, r in enumerate(records):
        t0 = time.perf_counter_ns()
        w.submit(r)
        latencies.append(time.perf_counter_ns() - t0)
        delay = t_start + (i + 1) / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    spooled_while_locked = w.spooled
    holder.wait()
    if holder.stdout is not None:
        holder.stdout.close()
    w.flush(timeout=60)
    w.close()
    with open_reader(db) as conn:
        stored = conn.execute("SELECT count(*) FROM runs").fetchone()
    latencies.sort()
    n = len(latencies)
    return {
        "submits": n,
        "p50_us": latencies[n // 2] / 1_000,
        "p99_us": latencies[min(n - 1, int(n * 0.99))] / 1_000,
        "max_us": latencies[-1] / 1_000,
        "spooled_while_locked": spooled_while_locked,
        "stored_after_release": stored[0] if stored else 0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000, help="rows for the Writer and plain-Arrow runs")
    ap.add_argument("--rows-slow", type=int, default=2_000, help="rows for the executemany run")
    ap.add_argument("--hold", type=float, default=10.0, help="seconds another process holds the file")
    ap.add_argument("--rate", type=float, default=2_000.0, help="submits per second during the hold")
    ap.add_argument("--json", action="store_true", help="print JSON")
    ap.add_argument("--ingest", action="store_true", help="only the ingest cost per batch (part 3)")
    args = ap.parse_args()
    if args.ingest:
        with tempfile.TemporaryDirectory() as tmp:
            ingest = bench_ingest(Path(tmp) / "i.duckdb", args.rows)
        if args.json:
            print(json.dumps(ingest, indent=2))
        else:
            print_ingest(ingest)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        result = {
            "writer_rows_per_s": bench_writer(d / "w.duckdb", args.rows),
            "executemany_rows_per_s": bench_executemany(d / "e.duckdb", args.rows_slow),
            "plain_arrow_rows_per_s": bench_plain_arrow(d / "a.duckdb", args.rows),
            "submit_while_locked": bench_submit_while_locked(d / "l.duckdb", args.hold, args.rate),
        }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    s = result["submit_while_locked"]
    assert isinstance(s, dict)
    print(f"{'Writer (batches, merge, chunks)':<34} {result['writer_rows_per_s']:>12,.0f} rows/s")
    print(f"{'executemany, row at a time':<34} {result['executemany_rows_per_s']:>12,.0f} rows/s")
    print(f"{'plain Arrow INSERT (runs only)':<34} {result['plain_arrow_rows_per_s']:>12,.0f} rows/s")
    print(
        f"submit() while another process holds the file {args.hold:g} s "
        f"({s['submits']:,} submits at {args.rate:,.0f}/s):"
    )
    print(
        f"  p50 {s['p50_us']:.1f} µs   p99 {s['p99_us']:.1f} µs   max {s['max_us']:.1f} µs   "
        f"(target p99 < 1000 µs: {'met' if s['p99_us'] < 1000 else 'MISSED'})"
    )
    print(
        f"  spooled while locked: {s['spooled_while_locked']:,}; stored after release: "
        f"{s['stored_after_release']:,}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
