"""``runmeter reconcile``: recorded cost per day and line item against the organization usage APIs."""

from __future__ import annotations

import argparse
import json
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from collector.commands._args import (
    add_day_flag,
    add_db_flag,
    add_json_flag,
    add_prices_flag,
    check_span,
    flag_name,
    parse_span,
)
from collector.commands._table import table

NAME = "reconcile"
HELP = ("Compare recorded cost, tokens, file_search calls and storage per UTC day with OpenAI's organization "
        "Costs and Usage APIs (needs OPENAI_ADMIN_KEY) and explain the drift.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--db``, ``--from``, ``--to``, ``--prices``, ``--json`` and the storage billing assumptions (the
    flags of ``runmeter storage report``)."""
    from collector.commands.storage import add_assumption_flags

    add_db_flag(p)
    add_day_flag(p, "--from", "first UTC day (default: the store's first day)", dest="start",
                 aliases=("--start",))
    add_day_flag(p, "--to", "last UTC day, included (default: the store's last day)", dest="end",
                 aliases=("--end",))
    add_prices_flag(p)
    add_json_flag(p)
    add_assumption_flags(p)


def _usd(value: float | None) -> str | None:
    return None if value is None else f"{value:,.6f}"


def _pct(value: float | None) -> str | None:
    return None if value is None else f"{value:+.2f}%"


def _count_rows(rec: object) -> list[tuple[object, ...]]:
    """One row per day and model: each measure as one number when both sides agree, else ``a≠b``."""
    from analysis.reconcile import TOKEN_MEASURES, Reconciliation

    assert isinstance(rec, Reconciliation)
    measures = (*TOKEN_MEASURES, "file_search_calls")
    values: dict[tuple[str, str], dict[str, str]] = {}
    notes: dict[tuple[str, str], list[str]] = {}
    for c in rec.counts:
        key = (str(c.day), c.model or "(all)")
        values.setdefault(key, {})[c.measure] = (f"{c.recorded:,}" if c.drift == 0
                                                 else f"{c.recorded:,}≠{c.billed:,}")
        seen = notes.setdefault(key, [])
        if c.explanation and c.explanation not in seen:
            seen.append(c.explanation)
    return [(day, model, *(values[key].get(m) for m in measures), "; ".join(notes[key]) or "ok")
            for key in values for day, model in [key]]


def storage_assumptions_line(a: Any) -> str:
    """One sentence naming the storage billing assumptions the recorded storage cost used."""
    return (f"Recorded storage cost assumes ${a.price_per_gb_day} per {a.unit} per day, the first "
            f"{a.free_gb} {a.unit} free per {a.free_per} for the organization (change with "
            "--price-per-gb-day, --free-gb, --unit, --free-per); GiB-hours are 2^30-byte hours, as billed.")


def render(rec: object, assumptions: Any = None) -> str:
    """The reconciliation as readable tables (``assumptions``: the storage assumptions, named under them)."""
    from analysis.reconcile import Reconciliation

    assert isinstance(rec, Reconciliation)
    span = f"{rec.start} to {rec.end} (exclusive), UTC days"
    costs = table(
        ["day", "line item", "recorded $", "billed $", "drift $", "drift %", "explanation"],
        [(str(c.day), c.line_item, _usd(c.recorded_usd), _usd(c.billed_usd), _usd(c.drift_usd),
          _pct(c.drift_pct), c.explanation or "ok") for c in rec.costs],
        title=f"Costs by day and line item, {span}")
    counts = table(
        ["day", "model", "input", "cached input", "output", "model requests", "file_search calls",
         "explanation"],
        _count_rows(rec),
        title="\nTokens, model requests and file_search calls (must match exactly; 'a≠b' is recorded≠billed)")
    storage = table(
        ["day", "recorded GiB-h", "billed GiB-h", "drift %", "recorded $", "billed $", "billed mean bytes",
         "explanation"],
        [(str(s.day), s.recorded_gib_hours, s.billed_gib_hours, _pct(s.drift_pct), _usd(s.recorded_usd),
          _usd(s.billed_usd), s.billed_mean_bytes, s.explanation or "ok") for s in rec.storage],
        title="\nVector-store storage")
    if assumptions is not None:
        storage += "\n" + storage_assumptions_line(assumptions)
    off = sum(1 for c in rec.costs if c.explanation) + sum(1 for c in rec.counts if c.drift)
    verdict = "\nAll lines match." if not off else f"\n{off} line(s) drift; see the explanation column."
    return "\n".join([costs, counts, storage, verdict])


def run(args: argparse.Namespace) -> int:
    """Fetch the bill for the range, read the store, print the comparison."""
    from analysis.prices import load_price_table, price_file_from_env
    from analysis.reconcile import default_range, reconcile, recorded_from_store
    from collector.commands.storage import assumptions_from, assumptions_json
    from collector.reconcile_client import BillFetcher, admin_client
    from collector.store.reader import open_reader

    from_flag, to_flag = flag_name(args, "start", "--from"), flag_name(args, "end", "--to")
    day_start, day_end = parse_span(args.start, from_flag, args.end, to_flag)
    storage = assumptions_from(args)
    client = admin_client(os.environ)
    table_ = load_price_table(price_file_from_env(args.prices, os.environ))
    with open_reader(args.db) as con:  # a StoreError is a one-line error from collector.cli.main
        first, stop = default_range(con, datetime.now(UTC).date())
        start = day_start or first
        last = day_end or stop - timedelta(days=1)
        check_span(start, from_flag if day_start else "the store's first day",
                   last, to_flag if day_end else "the store's last day")
        end = last + timedelta(days=1)
        recorded = recorded_from_store(con, table_, start, end, storage)
    with client:
        bill = BillFetcher(client).fetch(start, end)
    result = reconcile(recorded, bill, table_, start, end)
    if args.json:
        print(json.dumps({**result.to_json(), "storage_assumptions": assumptions_json(storage)}, indent=2))
    else:
        print(render(result, storage))
    return 0
