"""``runmeter report``: runs by api, model and status; tokens by type; TTFT; chunks per run."""

from __future__ import annotations

import argparse
import json

from collector.commands._args import add_db_flag, add_json_flag
from collector.commands._table import table

NAME = "report"
HELP = "Summarise a runmeter store: runs by api, model and status, tokens by type, TTFT, chunks per run."


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--db`` and ``--json``."""
    add_db_flag(p)
    add_json_flag(p)


def render(summary: object) -> str:
    """The summary as readable tables."""
    from analysis.summary import Summary

    assert isinstance(summary, Summary)
    parts = [table(["api", "model", "status", "runs"],
                   [(g.api, g.model, g.status, g.runs) for g in summary.groups],
                   title=f"Runs: {summary.runs:,}")]
    parts.append(table(["token type", "tokens"], list(summary.tokens.items()),
                       title=f"\nTokens (runs without usage on the wire: {summary.runs_without_usage:,})"))
    parts.append(table(
        ["measure", "value"],
        [("TTFT p50 (s)", summary.ttft_p50_seconds), ("TTFT p95 (s)", summary.ttft_p95_seconds),
         ("runs with file_search", summary.file_search_runs),
         ("chunks per run, mean", summary.chunks_per_run_mean),
         ("chunks per run, p95", summary.chunks_per_run_p95)],
        title="\nLatency and retrieval"))
    return "\n".join(parts)


def run(args: argparse.Namespace) -> int:
    """Print the report of ``--db``."""
    from analysis.summary import summarize
    from collector.store.reader import open_reader

    with open_reader(args.db) as conn:
        summary = summarize(conn)
    if args.json:
        print(json.dumps(summary.to_json(), indent=2))
    else:
        print(render(summary))
    return 0
