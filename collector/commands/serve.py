"""``runmeter serve``: the sidecar. Exports the store on ``/metrics``, writes the store, polls storage."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from collector import settings

NAME = "serve"
HELP = ("The sidecar: Prometheus /metrics for everything recorded into the store (one scrape target for "
        "every process), the store's writer, and the vector-store storage poller.")

DEFAULT_PORT = 9464
_MAX_INTERVAL = 86_400.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags, each defaulting to its ``RUNMETER_*`` variable."""
    from collector.commands.storage import add_assumption_flags

    p.add_argument("--db", default=settings.env_str(settings.RUNMETER_DB, "runmeter.duckdb"),
                   help="the store to export and write (env RUNMETER_DB; default ./runmeter.duckdb)")
    p.add_argument("--host", default=settings.env_str(settings.RUNMETER_HOST, "127.0.0.1"),
                   help="interface to bind (env RUNMETER_HOST; default 127.0.0.1)")
    p.add_argument("--port", type=int, default=settings.env_int(settings.RUNMETER_SERVE_PORT, DEFAULT_PORT),
                   help=f"port to bind, 0 for a free one (env RUNMETER_SERVE_PORT; default {DEFAULT_PORT})")
    p.add_argument("--poll-interval", type=float,
                   default=settings.env_float(settings.RUNMETER_STORAGE_POLL_INTERVAL, 300.0),
                   help="seconds between vector-store storage polls (env RUNMETER_STORAGE_POLL_INTERVAL; "
                        "default 300; needs OPENAI_API_KEY)")
    p.add_argument("--no-poll", action="store_true", help="do not poll vector-store storage")
    add_assumption_flags(p)


def _poller(args: argparse.Namespace) -> tuple[Any, Any]:
    """(background poller, client), or (None, None) with a note when polling is off or impossible."""
    if args.no_poll:
        return None, None
    import openai

    from collector.storage_poller import StoragePoller, StoreSink, start_background

    try:
        client = openai.OpenAI()
    except openai.OpenAIError as exc:
        print(f"runmeter serve: storage poller off: {exc}", file=sys.stderr)
        return None, None
    return start_background(StoragePoller(client, StoreSink(args.db)), args.poll_interval), client


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; the writer ingests what is left before exit."""
    from collector.commands.storage import assumptions_from
    from collector.metrics.sidecar import Sidecar, store_problem

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port} is not a port number (0-65535)")
    if args.poll_interval is None or not 0 < args.poll_interval <= _MAX_INTERVAL:
        raise ValueError("--poll-interval must be a number of seconds above 0 and at most 86400")
    assumptions = assumptions_from(args)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    # No poller on a store runmeter must not write (it would spool snapshots nobody ingests).
    poller, client = (None, None) if store_problem(Path(args.db)) else _poller(args)
    missing = not Path(args.db).exists()
    try:
        try:
            sidecar = Sidecar(args.db, host=args.host, port=args.port, poller=poller, assumptions=assumptions)
        except OSError as exc:
            raise ValueError(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}") from None
        try:
            if missing:
                print(f"runmeter serve: no store at {args.db} yet; its writer creates it now",
                      file=sys.stderr, flush=True)
            if sidecar.refused:
                print(f"runmeter serve: {sidecar.refused}; not writing to it, serving health metrics only",
                      file=sys.stderr, flush=True)
            print(sidecar.url, flush=True)
            print(f"runmeter serve: exporting {args.db} at {sidecar.url}metrics; Ctrl-C stops",
                  file=sys.stderr, flush=True)
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            sidecar.close()
    finally:
        if poller is not None:
            poller.stop()
        if client is not None:
            client.close()
        signal.signal(signal.SIGTERM, previous)
    return 0
