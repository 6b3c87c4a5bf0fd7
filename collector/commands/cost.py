"""``runmeter cost``: what the recorded runs cost, split by api, model, day, month, tier or any tag."""

from __future__ import annotations

import argparse
import json
import os
from datetime import timedelta
from typing import Any

from collector.commands._args import (
    add_day_flag,
    add_db_flag,
    add_json_flag,
    add_prices_flag,
    flag_name,
    parse_span,
)
from collector.commands._table import table

NAME = "cost"
HELP = "What the recorded runs cost per meter, split by api, model, day, month, tier or a tag (--by tag:KEY)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--db``, ``--prices``, ``--by``, ``--from`` (``--since``), ``--to`` or ``--until``, ``--json``."""
    add_db_flag(p)
    add_prices_flag(p)
    p.add_argument("--by", action="append", default=[], metavar="DIM",
                   help="split by api, model, day, month, tier or tag:KEY (repeat or comma-separate; "
                        "default: api,model)")
    add_day_flag(p, "--from", "runs started on or after this UTC day", dest="since", aliases=("--since",))
    add_day_flag(p, "--to", "runs started on or before this UTC day (included)")
    add_day_flag(p, "--until", "runs started before this UTC day (excluded; instead of --to)")
    add_json_flag(p)


def render(groups: list[Any], dims: list[str]) -> str:
    """The groups as a readable table with a total line (:func:`analysis.totals.cost_total`)."""
    from analysis.totals import cost_total, unpriced_runs

    headers = [*dims, "runs", "unpriced", "input tok", "cached tok", "output tok", "fs calls", "total USD"]
    rows: list[list[object]] = []
    for g in groups:
        rows.append([*(str(g.key[d]) if g.key[d] is not None else None for d in dims), g.runs,
                     unpriced_runs(g), g.input_tokens, g.cached_input_tokens, g.output_tokens,
                     g.file_search_calls, f"{g.total_usd:,.4f}"])
    t = cost_total(groups)
    rows.append([*(["total"] + [""] * (len(dims) - 1)), t.runs, t.unpriced_runs, t.input_tokens,
                 t.cached_input_tokens, t.output_tokens, t.file_search_calls, f"{t.total_usd:,.4f}"])
    out = table(headers, rows, title=f"Cost by {', '.join(dims)}")
    if t.unpriced:
        out += "\n\nUnpriced runs (not in the totals):\n" + "\n".join(
            f"- {n:,} × {r}" for r, n in t.unpriced.items())
    return out


def run(args: argparse.Namespace) -> int:
    """Print the cost report of ``--db``."""
    from analysis.cost_by import cost_by, parse_by
    from analysis.prices import load_price_table, price_file_from_env
    from collector.store.reader import open_reader

    # bad input (a price file, a date, --by, the store) is a one-line error from collector.cli.main
    dims = parse_by(args.by) or ["api", "model"]
    if args.to is not None and args.until is not None:
        raise ValueError("give --to (included) or --until (excluded), not both")
    if args.to is not None:
        since, last = parse_span(args.since, flag_name(args, "since", "--from"), args.to, "--to")
        until = last + timedelta(days=1) if last is not None else None
    else:
        since, until = parse_span(args.since, flag_name(args, "since", "--from"), args.until, "--until",
                                  last_included=False)
    prices = load_price_table(price_file_from_env(args.prices, os.environ))
    with open_reader(args.db) as conn:
        groups = cost_by(conn, prices, dims, since=since, until=until)
    if args.json:
        print(json.dumps([g.to_json() for g in groups], indent=2))
    else:
        print(render(groups, dims))
    return 0
