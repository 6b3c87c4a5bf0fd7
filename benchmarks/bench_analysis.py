"""Analysis benchmarks over a large synthetic store: cost summary, storage GB-days, the what-if sweep.

The store is the real schema (migrations) filled in DuckDB SQL (``range()`` and hashes, no Python loops):
``--runs`` runs (default 10M), 20% of them with one file_search call returning 1–19 results (10 on
average: 20M ``retrieved_chunks`` rows at the default), and a year of daily snapshots for ``--stores``
vector stores. Each analysis runs once to warm up, then ``--repeat`` times; the best and the median are
printed (target: 2 s warm each).

Then the summary tables: built from scratch as the store's migration backfills them, then kept at ingest.
``--ingest`` new runs (default 50,000, the same mix, Assistants ones in threads) go through the real
:class:`~collector.store.writer.Writer` twice, once without the summary hook and once with it, to report
the writer's throughput (records/s, batches of 5,000) and the hook's time per batch; the analyses are
then timed again from the tables the writer kept current.

Run: ``.venv/bin/python benchmarks/bench_analysis.py [--runs 10000000] [--stores 1000] [--db PATH] [--json]
[--skip-raw] [--ingest 50000]`` (``--db`` keeps the generated store for another run; an existing file there
is reused, with the runs an earlier run ingested).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb

from analysis import cost_by as cost_by_module
from analysis import fit as fit_module
from analysis import summary_tables
from analysis import whatif as whatif_module
from analysis.cost_by import cost_by
from analysis.fit import fit_store
from analysis.prices import load_price_table
from analysis.storage import daily_gb_days
from analysis.whatif import materialize, whatif
from collector.record import Api, ChunkRecord, RunRecord
from collector.store import summary_hook
from collector.store.migrations import migrate
from collector.store.writer import METRIC_COUNTS, SNAPSHOT_SPOOL, IngestHook, Writer

START = datetime(2025, 11, 1, tzinfo=UTC)
YEAR_SECONDS = 365 * 86_400

_RUNS_SQL = """
INSERT INTO runs (run_id, api, model, status, started_at, input_tokens, cached_input_tokens, output_tokens,
                  file_search_calls, retrieved_chunks, max_num_results, score_threshold, model_steps, tags,
                  streams)
SELECT 'run_' || lpad(i::VARCHAR, 9, '0'),
       api, ['gpt-4o', 'gpt-4o-mini', 'gpt-4.1-mini', 'gpt-5-mini'][1 + (h1 % 4)::INTEGER],
       'completed',
       TIMESTAMPTZ '{start}' + to_microseconds((i * {step})::BIGINT),
       CASE WHEN fs THEN 1200 + k * (560 + 38) * (CASE WHEN api = 'responses' THEN 2 ELSE 1 END) + 300
            ELSE 400 + h2 % 3000 END,
       CASE WHEN api = 'responses' AND fs THEN 1024 ELSE 0 END,
       100 + h2 % 900,
       CASE WHEN fs THEN 1 ELSE 0 END,
       CASE WHEN fs THEN k END,
       CASE WHEN fs THEN 20 END,
       CASE WHEN fs THEN 0.0 END,
       CASE WHEN api = 'assistants' THEN CASE WHEN fs THEN 2 ELSE 1 END END,
       MAP {{'customer': 'cust_' || (h2 % 50)::VARCHAR,
            'feature': ['search', 'chat', 'agent'][1 + (h1 % 3)::INTEGER]}},
       1
FROM (
    SELECT i, h1, h2, i % 5 = 0 AS fs,
           CASE WHEN i % 5 = 0 THEN (CASE WHEN h1 % 2 = 0 THEN 'assistants' ELSE 'responses' END)
                ELSE ['assistants', 'responses', 'chat'][1 + (h2 % 3)::INTEGER] END AS api,
           (1 + h1 % 19)::INTEGER AS k
    FROM (SELECT i, hash(i) AS h1, hash(i * 7919 + 13) AS h2 FROM range({runs}) t(i))
)
"""

_CHUNKS_SQL = """
INSERT INTO retrieved_chunks
SELECT 'run_' || lpad(i::VARCHAR, 9, '0'), 'call_' || i::VARCHAR, r,
       'file-' || (hash(i, r) % 2000)::VARCHAR,
       greatest(0.01, 0.92 - r * 0.03 - (hash(r, i) % 100) / 2000.0),
       (200 + hash(i, r) % 720)::INTEGER,
       hash(r, i, 1) % 4 = 0,
       CASE WHEN hash(r, i, 1) % 4 = 0 THEN 'result' END
FROM (SELECT i, unnest(range(1, 2 + (hash(i) % 19)::INTEGER)) AS r FROM range(0, {runs}, 5) t(i))
"""

_SNAPSHOTS_SQL = """
INSERT INTO vector_store_snapshots (vector_store_id, observed_at, usage_bytes, status, name,
                                    file_counts_completed, file_counts_total)
SELECT 'vs_' || s::VARCHAR, TIMESTAMPTZ '{start}' + to_days(d::INTEGER) + to_hours((s % 24)::INTEGER),
       (hash(s) % 5000000000) + d * (hash(s, 1) % 10000000), 'completed', 'store ' || s::VARCHAR,
       10 + d % 7, 10 + d % 7
FROM range({stores}) a(s), range(365) b(d)
"""


def build(path: Path, runs: int, stores: int) -> dict[str, float]:
    """Fill a new store at ``path``; returns the seconds each table took."""
    took: dict[str, float] = {}
    with duckdb.connect(str(path)) as con:
        con.execute("SET enable_progress_bar = false")
        migrate(con, str(path))
        for name, sql in (
            ("runs", _RUNS_SQL.format(start=START.isoformat(), step=YEAR_SECONDS * 1_000_000 // runs,
                                      runs=runs)),
            ("retrieved_chunks", _CHUNKS_SQL.format(runs=runs)),
            ("vector_store_snapshots", _SNAPSHOTS_SQL.format(start=START.isoformat(), stores=stores)),
        ):
            t0 = time.perf_counter()
            con.execute(sql)
            took[name] = time.perf_counter() - t0
        con.execute("CHECKPOINT")
    return took


def timed(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    """Warm-up once, then ``repeat`` timings: best and median seconds."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"best_s": min(times), "median_s": statistics.median(times)}


SUMMARY_NAMES = (*cost_by_module.SUMMARIES, fit_module.FIT_SUMMARY, *whatif_module.SUMMARIES)


def new_runs(count: int, first: int, seed: int = 1) -> list[RunRecord]:
    """``count`` runs like the generated ones (20% with a file_search call of 1–19 results), ids from
    ``first`` on; Assistants runs three to a thread."""
    rng = random.Random(seed)
    out = []
    for j in range(count):
        i = first + j
        fs = i % 5 == 0
        api: Api = rng.choice(("assistants", "responses") if fs else ("assistants", "responses", "chat"))
        k = rng.randint(1, 19) if fs else 0
        chunks = [ChunkRecord(call_id=f"call_{i}", rank=r, file_id=f"file-{rng.randint(0, 1999)}",
                              score=max(0.01, 0.92 - r * 0.03 - rng.random() / 20),
                              content_tokens=rng.randint(200, 919), cited=rng.random() < 0.25)
                  for r in range(1, k + 1)]
        out.append(RunRecord(
            run_id=f"run_{i:09d}", api=api, model=rng.choice(("gpt-4o", "gpt-4o-mini", "gpt-4.1-mini",
                                                              "gpt-5-mini")),
            status="completed", thread_id=f"thread_{i // 3}" if api == "assistants" else None,
            started_at=START.timestamp() + YEAR_SECONDS + j, input_tokens=1500 + k * 600,
            cached_input_tokens=0, output_tokens=100 + rng.randint(0, 899), file_search_calls=1 if fs else 0,
            retrieved_chunks=k if fs else None, max_num_results=20 if fs else None,
            score_threshold=0.0 if fs else None,
            model_steps=(2 if fs else 1) if api == "assistants" else None,
            tags={"customer": f"cust_{rng.randint(0, 49)}",
                  "feature": rng.choice(("search", "chat", "agent"))},
            chunks=chunks, streams=1,
        ))
    return out


def ingest(path: Path, runs: Sequence[RunRecord], with_summaries: bool) -> dict[str, Any]:
    """Write ``runs`` through the real Writer (default hooks, with or without the summary hook)."""
    hook_s: list[float] = []

    def timed_maintain(conn: duckdb.DuckDBPyConnection, pairs: Any) -> object:
        t0 = time.perf_counter()
        try:
            return summary_hook.maintain(conn, pairs)
        finally:
            hook_s.append(time.perf_counter() - t0)

    hooks = [SNAPSHOT_SPOOL, METRIC_COUNTS]
    if with_summaries:
        hooks.append(IngestHook(lambda _db: False, lambda _c, _d: None, timed_maintain, summary_hook.prepare))
    w = Writer(path, flush_interval=3600.0, queue_max=len(runs) + 1, install_signal_handlers=False,
               ingest_hooks=hooks)
    t0 = time.perf_counter()
    for r in runs:
        w.submit(r)
    assert w.flush(3600.0)
    took = time.perf_counter() - t0
    w.close()
    assert w.errors == 0 and w.written == len(runs), (w.errors, w.written)
    out: dict[str, Any] = {"records": len(runs), "seconds": took, "records_per_s": len(runs) / took}
    if hook_s:
        out["hook_batches"] = len(hook_s)
        out["hook_s_median"] = statistics.median(hook_s)
        out["hook_s_max"] = max(hook_s)
        out["hook_s_total"] = sum(hook_s)
    return out


def _suite(con: duckdb.DuckDBPyConnection, prices: Any, repeat: int) -> dict[str, dict[str, float]]:
    fits = fit_store(con)
    start, end = START.date(), date(2026, 11, 1)
    return {
        "cost summary (api, model)": timed(lambda: cost_by(con, prices, ["api", "model"]), repeat),
        "cost by tag:customer": timed(lambda: cost_by(con, prices, ["tag:customer"]), repeat),
        "storage GB-days (1 year)": timed(lambda: daily_gb_days(con, start, end), repeat),
        "billing fit": timed(lambda: fit_store(con), repeat),
        "what-if sweep N=1..20 + 3 thresholds": timed(
            lambda: whatif(con, prices, score_thresholds=[0.3, 0.5, 0.7], fits=fits), repeat),
        "fit + what-if sweep": timed(
            lambda: whatif(con, prices, score_thresholds=[0.3, 0.5, 0.7]), repeat),
    }


def main() -> None:
    """Build (or reuse) the store, time the analyses and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10_000_000)
    ap.add_argument("--stores", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--db", type=Path, default=None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--skip-raw", action="store_true", help="do not time the analyses over the raw tables")
    ap.add_argument("--ingest", type=int, default=50_000, help="runs written through the Writer (0: none)")
    args = ap.parse_args()
    tmp = None
    if args.db is None:
        tmp = tempfile.TemporaryDirectory(prefix="runmeter-bench-")
        args.db = Path(tmp.name) / "bench.duckdb"
    built = {} if args.db.exists() else build(args.db, args.runs, args.stores)
    prices = load_price_table()
    out: dict[str, Any] = {"build_s": built}
    with duckdb.connect(str(args.db)) as con:  # summaries from an earlier run would hide the raw path
        migrate(con, str(args.db))
        con.execute(f"UPDATE {summary_tables.META} SET runs = -1")
        out["rows"] = {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0]
                       for t in ("runs", "retrieved_chunks", "vector_store_snapshots")}
    if not args.skip_raw:
        with duckdb.connect(str(args.db), read_only=True) as con:
            out["raw"] = _suite(con, prices, args.repeat)
    first = int(out["rows"]["runs"]) + 10**8  # ids no earlier run used
    if args.ingest:
        out["ingest_without_summaries"] = ingest(args.db, new_runs(args.ingest, first), False)
    with duckdb.connect(str(args.db)) as con:
        t0 = time.perf_counter()
        materialize(con)  # what the migration does to a store that predates the summary tables
        out["summaries_build_s"] = time.perf_counter() - t0
    if args.ingest:
        out["ingest_with_summaries"] = ingest(args.db, new_runs(args.ingest, first + args.ingest, 2), True)
    with duckdb.connect(str(args.db), read_only=True) as con:
        assert summary_tables.fresh(con, summary_tables.ALL), "the writer left the summaries stale"
        out["summary_rows"] = {n: con.execute(f"SELECT count(*) FROM {n}").fetchall()[0][0]
                               for n in SUMMARY_NAMES}
        out["summaries"] = _suite(con, prices, args.repeat)
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        print(f"rows: {out['rows']}")
        if built:
            print("build: " + ", ".join(f"{k} {v:.1f} s" for k, v in built.items()))
        for source in ("raw", "summaries"):
            if source not in out:
                continue
            print(f"\n-- from {'the raw tables' if source == 'raw' else 'summary tables kept at ingest'}")
            for name, t in out[source].items():
                flag = "ok" if t["best_s"] <= 2.0 else "SLOW"
                print(f"{name:42s} best {t['best_s']:6.2f} s   median {t['median_s']:6.2f} s   {flag}")
        print("\nsummaries built from scratch (the migration's backfill) in "
              f"{out['summaries_build_s']:.1f} s; rows after ingest: {out['summary_rows']}")
        for key in ("ingest_without_summaries", "ingest_with_summaries"):
            if key in out:
                i = out[key]
                hook = (f"; hook {i['hook_s_median'] * 1000:.0f} ms median, "
                        f"{i['hook_s_max'] * 1000:.0f} ms max per batch over {i['hook_batches']} batches"
                        if "hook_batches" in i else "")
                print(f"writer {key.replace('_', ' ')}: {i['records']:,} records in {i['seconds']:.1f} s = "
                      f"{i['records_per_s']:,.0f} records/s{hook}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
