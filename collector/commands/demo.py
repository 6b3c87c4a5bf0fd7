"""``runmeter demo``: the simulator, a mixed workload through the instrumented SDK, then a report."""

from __future__ import annotations

import argparse
import sys
import time

from collector import settings

NAME = "demo"
HELP = (
    "Start runmeter's OpenAI simulator, drive a mixed workload (Assistants with file_search at several "
    "max_num_results, a function-tool run, Responses with file_search, chat) through the instrumented "
    "SDK into a store, poll its vector stores' storage once, then print the summary and the cost."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--db``, ``--runs``, ``--seed``, ``--fast``."""
    p.add_argument(
        "--db",
        default=settings.env_str(settings.RUNMETER_DB, "runmeter.duckdb"),
        help="store to record into (env RUNMETER_DB; default ./runmeter.duckdb)",
    )
    p.add_argument("--runs", type=int, default=30, help="number of runs in the workload (default 30)")
    p.add_argument(
        "--seed",
        type=int,
        default=settings.env_int(settings.RUNMETER_SEED, 0),
        help="seed of the simulator and the workload (env RUNMETER_SEED; default 0)",
    )
    p.add_argument(
        "--fast",
        action="store_true",
        help="use the test latency profile (milliseconds) instead of the realistic one (seconds)",
    )


class _Progress:
    """A one-line progress bar on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.start = time.monotonic()
        self.tty = sys.stderr.isatty()

    def __call__(self, done: int, kind: str) -> None:
        width = 30
        filled = int(width * done / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        line = f"[{bar}] {done}/{self.total} runs ({kind}), {time.monotonic() - self.start:.1f}s"
        if self.tty:
            print("\r" + line, end="" if done < self.total else "\n", file=sys.stderr, flush=True)
        elif done == self.total or done % 10 == 0:
            print(line, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Run the demo and print the store's summary."""
    import openai

    from analysis.cost_by import cost_by
    from analysis.prices import load_price_table
    from analysis.summary import summarize
    from collector import workload
    from collector.commands.cost import render as render_cost
    from collector.commands.report import render
    from collector.recorder import Recorder
    from collector.simulator import Simulator
    from collector.storage_poller import StoragePoller, StoreSink
    from collector.store.reader import open_reader

    if args.runs < 1:
        raise ValueError(f"--runs must be at least 1, got {args.runs}")
    latency = "fast" if args.fast else "realistic"
    with Simulator(seed=args.seed, latency=latency) as sim:
        print(f"simulator at {sim.base_url} (latency {latency}); recording into {args.db}", file=sys.stderr)
        with Recorder(args.db) as rec:
            client = rec.instrument(openai.OpenAI(base_url=sim.base_url, api_key="sk-runmeter-demo"))
            fx = workload.setup(client, seed=args.seed)
            counts = workload.run(client, fx, runs=args.runs, seed=args.seed, progress=_Progress(args.runs))
            client.close()
        # One storage snapshot of the simulator's vector stores, as `runmeter storage poll --once` takes,
        # so that `runmeter storage report` and the dashboard's storage page have something to show.
        with openai.OpenAI(base_url=sim.base_url, api_key="sk-runmeter-demo") as admin:
            polled = StoragePoller(admin, StoreSink(args.db)).poll_once()
    if counts.get("errors"):
        print(f"{counts['errors']} runs ended in an API error (recorded as such)", file=sys.stderr)
    with open_reader(args.db) as conn:
        print(render(summarize(conn)))
        print()
        print(render_cost(cost_by(conn, load_price_table(), ["api", "model"]), ["api", "model"]))
    print(f"\nStorage: {len(polled.rows)} vector store(s) polled once. Next: runmeter cost --by tag:tenant | "
          f"runmeter whatif | runmeter storage report | runmeter dashboard (all read {args.db}).")
    return 0
