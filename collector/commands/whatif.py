"""``runmeter whatif``: what a lower ``max_num_results`` or a higher ``score_threshold`` would save and lose.

``runmeter whatif --db PATH --json`` prints a JSON list, one object per N (then one per threshold asked
with ``--score-threshold``). ``--details`` prints the baseline and the billing fit too (with ``--json``:
an object with ``baseline``, ``fits`` and ``rows``). ``--threads`` adds thread growth.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from collector.commands._args import add_db_flag, add_json_flag, add_prices_flag
from collector.commands._table import table

NAME = "whatif"
HELP = ("What a lower max_num_results (or a higher score_threshold) would save in input tokens and cost, and "
        "lose in citations; with the billing fit it rests on.")


def _n_list(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, _, hi = part.partition("-")
            if int(hi) < int(lo):
                raise ValueError(f"--n {part}: a range runs from low to high (e.g. {hi}-{lo})")
            out.extend(range(int(lo), int(hi) + 1))
        else:
            out.append(int(part))
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--db``, ``--prices``, ``--n``, ``--score-threshold``, ``--details``, ``--threads``, ``--json``."""
    add_db_flag(p)
    add_prices_flag(p)
    p.add_argument("--n", default=None, metavar="LIST",
                   help="max_num_results values, e.g. 5,10 or 1-20 (1–50; default: 1 to the highest recorded "
                        "setting)")
    p.add_argument("--score-threshold", default="", metavar="LIST",
                   help="score_threshold values to try, e.g. 0.3,0.5 (0–1)")
    p.add_argument("--details", action="store_true", help="also print the baseline and the billing fit")
    p.add_argument("--threads", action="store_true", help="also print thread growth (history per turn)")
    add_json_flag(p)


def _parse(args: argparse.Namespace) -> tuple[list[int] | None, list[float]]:
    from analysis.whatif import check_n, check_thresholds

    try:
        ns = check_n(_n_list(args.n)) if args.n is not None else None
    except ValueError as exc:
        msg = str(exc) if "outside" in str(exc) or "low to high" in str(exc) else \
            f"--n {args.n!r} is not a list of integers"
        raise ValueError(msg) from None
    try:
        ts = [float(v) for v in args.score_threshold.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--score-threshold {args.score_threshold!r} is not a list of numbers") from None
    return ns, check_thresholds(ts)


def _pct(v: float | None, digits: int = 1) -> str | None:
    return None if v is None else f"{v * 100:.{digits}f}%"


def _setting(row: Any) -> str:
    if row.max_num_results is not None:
        return f"N={row.max_num_results}"
    return f"threshold={row.score_threshold:g}"


def render(report: Any, growth: Any | None, details: bool) -> str:
    """The report as readable tables."""
    from analysis.totals import baseline_cost_per_1k_runs, baseline_input_tokens_per_run

    b = report.baseline
    parts = []
    if details:
        parts.append(table(
            ["measure", "value"],
            [("runs", b.runs), ("priced runs", b.priced_runs), ("runs with file_search", b.file_search_runs),
             ("input tokens per run", baseline_input_tokens_per_run(b)),
             ("cost per 1,000 runs (USD)", baseline_cost_per_1k_runs(b)),
             ("runs per day (observed)", b.runs_per_day),
             ("highest max_num_results", b.current_max_num_results)],
            title="Baseline"))
        parts.append(table(
            ["api", "runs", "repeat", "overhead/result", "tokens/chunk (fitted)", "tokens/unknown result",
             "held-out error"],
            [(f.api, f.runs, f.repeat, f.overhead_per_result, f.tokens_per_unknown_chunk,
              f.per_unknown_result, _pct(f.mape_holdout, 2)) for f in report.fits.values()],
            title="\nBilling fit (input ≈ base + repeat × (chunk tokens + overhead × results + per call))"))
    rows = list(report.rows)
    parts.append(table(
        ["setting", "affected", "unknown", "input tok/run", "$/1k runs", "$/month", "cite recall",
         "score kept", "lose all cited", "bound"],
        [(_setting(r), r.runs_affected, r.runs_unknown, r.input_tokens_per_run, r.cost_per_1k_runs_usd,
          r.cost_per_month_usd, _pct(r.citation_recall), _pct(r.score_mass_kept),
          _pct(r.lose_all_cited_share), r.bound)
         for r in rows],
        title=("\n" if details else "") + f"What-if over {b.runs:,} runs"))
    notes = [f"- {_setting(r)}: {n}" for r in rows for n in r.notes]
    if notes:
        parts.append("\n".join(["", "Notes:", *notes]))
    if growth is not None and not growth.by_turn:
        parts.append("\nThread growth: no thread has two or more recorded turns.")
    elif growth is not None:
        parts.append(table(
            ["api", "turn", "runs", "input tok (mean)", "history tok (mean)", "history share", "history $"],
            [(t.api, t.turn, t.runs, t.input_tokens_mean, t.history_tokens_mean, _pct(t.history_share),
              t.history_usd) for t in growth.by_turn],
            title=f"\nThread growth: {growth.threads:,} threads with 2+ turns (of {growth.all_threads:,}), "
                  f"history is {_pct(growth.history_share)} of their input tokens, costing "
                  + ("an unknown amount (no thread run could be priced)" if growth.history_usd is None
                     else f"${growth.history_usd:,.4f}")))
        parts.append(table(
            ["thread", "api", "turns", "input tok", "history tok", "history $", "truncation"],
            [(t.thread, t.api, t.turns, t.input_tokens, t.history_tokens, t.history_usd, t.truncation)
             for t in growth.top_threads],
            title=f"\nThe {len(growth.top_threads)} threads with the most history"))
    return "\n".join(parts)


def run(args: argparse.Namespace) -> int:
    """Run the sweep over ``--db`` and print it."""

    from analysis.fit import fit_store
    from analysis.prices import load_price_table, price_file_from_env
    from analysis.threads import thread_growth
    from analysis.whatif import whatif
    from collector.store.reader import open_reader

    # bad input (N, a threshold, a price file, the store) is a one-line error from collector.cli.main
    ns, ts = _parse(args)
    prices = load_price_table(price_file_from_env(args.prices, os.environ))
    with open_reader(args.db) as conn:
        fits = fit_store(conn)
        report = whatif(conn, prices, max_num_results=ns, score_thresholds=ts, fits=fits)
        growth = thread_growth(conn, prices, fits) if args.threads else None
    if args.json:
        if args.details or growth is not None:
            out: Any = report.to_json()
            if growth is not None:
                out["threads"] = growth.to_json()
        else:
            out = [r.to_json() for r in report.rows]
        print(json.dumps(out, indent=2, default=str))
    else:
        print(render(report, growth, args.details))
    return 0
