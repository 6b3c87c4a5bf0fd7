"""Reconciliation's recorded side on a store of a million runs, and the dashboard page that shows it.

The store is ``bench_dashboard``'s (1M runs over 30 days, four models, three APIs, a flex tier, runs
without usage; five vector stores snapshotted every 6 hours). It times:

- ``recorded_from_store``: the runs summed per (UTC day, api, model, status) in SQL and priced per group
  (:func:`analysis.cost_by.price_groups`), plus the storage integration; best of ``--repeat``;
- ``run_costs``: the per-run pricing it replaced (one priced row per run, brought into Python), for scale;
- the reconciliation page under Streamlit's AppTest: ``cold`` (caches cleared: the queries run, what a
  person waits for on first load) and ``warm`` (cached).

Target: the page's cold run within ``--budget`` seconds (default 2); the exit code is 1 when it is over.

Run: ``.venv/bin/python benchmarks/bench_reconcile.py [--runs 1000000] [--db PATH] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
from bench_dashboard import _timed_run, build_store  # the store and the page timing are shared

from analysis.cost import run_costs
from analysis.prices import builtin_price_table
from analysis.reconcile import default_range, recorded_from_store
from analysis.storage import StorageAssumptions
from collector.commands.dashboard import app_path


def _best(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_recorded(db: Path, repeat: int) -> dict[str, Any]:
    """Seconds of ``recorded_from_store`` and of the per-run ``run_costs`` over the whole store."""
    table = builtin_price_table()
    con = duckdb.connect(str(db), read_only=True)
    try:
        start, end = default_range(con, datetime.now(UTC).date())
        hourly = StorageAssumptions(free_per="hour")
        recorded = recorded_from_store(con, table, start, end, hourly)
        return {
            "days": (end - start) // timedelta(days=1),
            "cost_lines": len(recorded.costs),
            "recorded_from_store_s": _best(
                lambda: recorded_from_store(con, table, start, end, hourly), repeat),
            "run_costs_per_run_s": _best(lambda: run_costs(con, table), 1),
        }
    finally:
        con.close()


def bench_page(db: Path) -> dict[str, float]:
    """Cold and warm script-run seconds of the reconciliation page (no admin key: recorded side only)."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    os.environ["RUNMETER_DB"] = str(db)
    os.environ.pop("OPENAI_ADMIN_KEY", None)
    at = AppTest.from_file(str(app_path()), default_timeout=300)
    at.run()  # imports, and registers the pages with st.navigation
    at.switch_page("views/reconciliation.py")
    _timed_run(at)  # the first visit also imports the page's modules
    st.cache_data.clear()
    cold = _timed_run(at)
    return {"cold_s": cold, "warm_s": _timed_run(at)}


def main(argv: list[str] | None = None) -> int:
    """Build (or reuse) the store, time the recorded side and the page; 1 when the page is over budget."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=1_000_000)
    p.add_argument("--db", type=Path, help="reuse this store (built there when missing)")
    p.add_argument("--repeat", type=int, default=5, help="best of this many recorded_from_store calls")
    p.add_argument("--budget", type=float, default=2.0, help="seconds allowed for the page's cold run")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="runmeter-bench-") as tmp:
        db = args.db or Path(tmp) / "bench.duckdb"
        built = build_store(db, args.runs) if not db.exists() else 0.0
        recorded = bench_recorded(db, args.repeat)
        page = bench_page(db)
    over = page["cold_s"] > args.budget
    if args.json:
        print(json.dumps({"runs": args.runs, "build_s": built, "budget_s": args.budget, **recorded,
                          "page": page, "over_budget": over}, indent=2))
    else:
        print(f"store: {args.runs:,} runs over {recorded['days']} days (built in {built:.1f} s); "
              f"{recorded['cost_lines']} recorded cost lines")
        grouped, per_run = recorded["recorded_from_store_s"], recorded["run_costs_per_run_s"]
        print(f"recorded_from_store (grouped, best of {args.repeat}): {grouped:.3f} s")
        print(f"run_costs (per run, for scale):            {per_run:.3f} s")
        print(f"reconciliation page: cold {page['cold_s']:.3f} s, warm {page['warm_s']:.3f} s "
              f"({'over' if over else 'within'} the {args.budget:g} s budget)")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
