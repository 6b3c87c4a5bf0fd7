"""Cost-explorer page timings on a store of a million runs (Streamlit AppTest, no browser).

The store is generated in DuckDB SQL (``range()``): 1M runs over 30 days across four models, three APIs
and three tenants, 250k four-turn threads, ~0.9M retrieved chunks and five vector stores snapshotted
every 6 hours. For each page it times:

- ``cold``: the page's script run with every ``st.cache_data`` entry cleared (the first view after the
  store changed: the queries run);
- ``warm``: the next run (what every widget interaction and page revisit costs: cached results);
- for the what-if page, moving the ``max_num_results`` slider (a warm run with a new value).

Target: every run, cold and warm, and the slider move within ``--budget`` seconds (default 2); the exit
code is 1 when one is over. The store carries the summary tables the writer keeps at ingest (built here
with ``materialize_all`` since the rows are inserted by SQL).

Run: ``.venv/bin/python benchmarks/bench_dashboard.py [--runs 1000000] [--db PATH] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import duckdb

from analysis.summary_tables import materialize_all
from collector.commands.dashboard import app_path
from collector.store.migrations import migrate

PAGES = ("overview", "storage", "whatif", "threads", "runs", "reconciliation")

_RUNS_SQL = """
INSERT INTO runs (run_id, api, model, status, thread_id, started_at, ttft_seconds, duration_seconds,
  input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, reasoning_tokens, file_search_calls,
  retrieved_chunks, max_num_results, service_tier, streams, tags, model_steps, recorded_at)
SELECT 'run_' || lpad(i::VARCHAR, 8, '0'),
  CASE i % 3 WHEN 0 THEN 'assistants' WHEN 1 THEN 'responses' ELSE 'chat' END,
  CASE i % 4 WHEN 0 THEN 'gpt-4o' WHEN 1 THEN 'gpt-4o-mini' WHEN 2 THEN 'gpt-4.1-mini' ELSE 'gpt-5-mini' END,
  CASE WHEN i % 50 = 0 THEN 'failed' WHEN i % 97 = 0 THEN 'incomplete' ELSE 'completed' END,
  CASE WHEN i % 3 = 0 THEN 'thread_' || (i // 12) END,
  TIMESTAMPTZ '2026-10-01 00:00:00+00' + to_microseconds((i * 2592000000000 // {n})::BIGINT),
  0.3 + (i % 100) / 100.0, 2.0 + (i % 7) / 10.0,
  CASE WHEN i % 3 = 2 AND i % 10 = 0 THEN NULL ELSE 1000 + (i % 4) * 800 + (i % 7) * 10 END,
  (i % 5) * 100, 0, 150 + i % 50, 0,
  CASE WHEN i % 3 = 2 THEN 0 ELSE 1 END,
  CASE WHEN i % 3 = 2 THEN NULL ELSE 1 + i % 10 END,
  CASE WHEN i % 3 = 2 THEN NULL ELSE 10 END,
  CASE WHEN i % 11 = 0 THEN 'flex' END, 1,
  MAP {{'tenant': CASE i % 3 WHEN 0 THEN 'acme' WHEN 1 THEN 'globex' ELSE 'initech' END,
       'feature': 'f' || (i % 4)}},
  CASE WHEN i % 3 = 0 THEN 2 END, now()
FROM range({n}) t(i)
"""

_CHUNKS_SQL = """
INSERT INTO retrieved_chunks
SELECT 'run_' || lpad(i::VARCHAR, 8, '0'), 'call_' || i, r, 'file_' || ((i + r) % 40),
       round(0.95 - r * 0.05, 2), 200 + (i * 7 + r * 13) % 300, r <= 1 + i % 3, NULL
FROM range(0, {n}, 6) t(i), range(1, 11) s(r)
WHERE r <= 1 + i % 10
"""

_SNAPSHOTS_SQL = """
INSERT INTO vector_store_snapshots
SELECT 'vs_' || s, TIMESTAMPTZ '2026-10-01 00:00:00+00' + to_hours(h),
       (s + 1) * 300000000 + h * 1000000, 'completed', 'store ' || s, 0, 10, 0, 0, 10, NULL, NULL,
       TIMESTAMPTZ '2026-10-01 00:00:00+00' + to_hours(CASE WHEN s = 0 THEN 24 ELSE h END)
FROM range(5) a(s), range(0, 24 * 30, 6) b(h)
"""


def build_store(path: Path, runs: int) -> float:
    """Create the benchmark store at ``path`` (real schema); returns the seconds it took."""
    start = time.perf_counter()
    con = duckdb.connect(str(path))
    try:
        migrate(con, str(path))
        con.execute(_RUNS_SQL.format(n=runs))
        con.execute(_CHUNKS_SQL.format(n=runs))
        con.execute(_SNAPSHOTS_SQL)
        # The writer keeps the analyses' summary tables at ingest; rows inserted by SQL need them built.
        materialize_all(con)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return time.perf_counter() - start


def _timed_run(at: object) -> float:
    from streamlit.testing.v1 import AppTest

    assert isinstance(at, AppTest)
    start = time.perf_counter()
    at.run()
    elapsed = time.perf_counter() - start
    if at.exception:
        raise RuntimeError(f"the page raised: {[e.value for e in at.exception]}")
    return elapsed


def bench(db: Path) -> dict[str, dict[str, float]]:
    """Cold and warm script-run seconds of every page over the store ``db``."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    os.environ["RUNMETER_DB"] = str(db)
    at = AppTest.from_file(str(app_path()), default_timeout=300)
    at.run()  # imports, and registers the pages with st.navigation
    out: dict[str, dict[str, float]] = {}
    for page in PAGES:
        st.cache_data.clear()
        at.switch_page(f"views/{page}.py")
        cold = _timed_run(at)
        warm = _timed_run(at)
        out[page] = {"cold_s": cold, "warm_s": warm}
        if page == "whatif":
            at.slider(key="wi_n").set_value(5)
            out[page]["slider_s"] = _timed_run(at)
    return out


def main(argv: list[str] | None = None) -> int:
    """Build (or reuse) the store, time the pages, print a table or JSON; 1 when over budget."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=1_000_000)
    p.add_argument("--db", type=Path, help="reuse this store (built there when missing)")
    p.add_argument("--budget", type=float, default=2.0, help="seconds allowed for a warm run")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="runmeter-bench-") as tmp:
        db = args.db or Path(tmp) / "bench.duckdb"
        built = build_store(db, args.runs) if not db.exists() else 0.0
        results = bench(db)
    over = [f"{page} {k}" for page, r in results.items() for k, v in r.items() if v > args.budget]
    if args.json:
        print(json.dumps({"runs": args.runs, "build_s": built, "budget_s": args.budget, "pages": results,
                          "over_budget": over}, indent=2))
    else:
        print(f"store: {args.runs:,} runs (built in {built:.1f} s)")
        print(f"{'page':<16}{'cold s':>9}{'warm s':>9}{'slider s':>10}")
        for page, r in results.items():
            slider = f"{r['slider_s']:.3f}" if "slider_s" in r else ""
            print(f"{page:<16}{r['cold_s']:>9.3f}{r['warm_s']:>9.3f}{slider:>10}")
        print("over budget: " + (", ".join(over) if over else f"none (every run ≤ {args.budget:g} s)"))
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
