"""Writer benchmarks, side by side in one run.

1. rows/s into DuckDB: the Writer (submit → background batches, merge with stored rows, Arrow
   inserts) vs. row-at-a-time ``executemany`` vs. a plain Arrow ``INSERT ... SELECT``.
2. ``submit()`` latency on the calling thread while another process holds the DuckDB file
   read-write for ``--hold`` seconds (the writer spools meanwhile, then ingests): p50/p99/max.
   Target: p99 < 1 ms.

Run: ``.venv/bin/python benchmarks/bench_writer.py [--rows 50000] [--hold 10] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

from collector.record import ChunkRecord, RunRecord
from collector.store import Writer, migrate, open_reader
from collector.store.schema import RUNS_COLUMNS, runs_table


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
    args = ap.parse_args()
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
