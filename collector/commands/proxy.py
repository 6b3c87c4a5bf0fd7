"""``runmeter proxy``: an OpenAI-compatible pass-through that records every run into the store."""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any

from collector import settings

NAME = "proxy"
HELP = ("Run an OpenAI-compatible proxy beside an application in any language: point the SDK's base "
        "URL at the printed URL; calls are relayed unchanged and their runs recorded.")

DEFAULT_PORT = 8787


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags, each defaulting to its ``RUNMETER_*`` variable."""
    from collector.proxy import DEFAULT_UPSTREAM

    p.add_argument("--upstream", default=settings.env_str(settings.RUNMETER_UPSTREAM, DEFAULT_UPSTREAM),
                   help=f"API base URL calls are relayed to (env RUNMETER_UPSTREAM; "
                        f"default {DEFAULT_UPSTREAM})")
    p.add_argument("--host", default=settings.env_str(settings.RUNMETER_HOST, "127.0.0.1"),
                   help="interface to bind (env RUNMETER_HOST; default 127.0.0.1; 0.0.0.0 exposes it, and "
                        "the API keys that pass through it, to the network)")
    p.add_argument("--port", type=int, default=settings.env_int(settings.RUNMETER_PROXY_PORT, DEFAULT_PORT),
                   help=f"port to bind, 0 for a free one (env RUNMETER_PROXY_PORT; default {DEFAULT_PORT})")
    p.add_argument("--db", default=settings.env_str(settings.RUNMETER_DB, "runmeter.duckdb"),
                   help="DuckDB store the runs are written to (env RUNMETER_DB; default ./runmeter.duckdb)")
    p.add_argument("--include-results", action=argparse.BooleanOptionalAction,
                   default=settings.env_flag(settings.RUNMETER_PROXY_INCLUDE, False),
                   help="add runmeter's include so the wire carries file_search chunk results "
                        "(env RUNMETER_PROXY_INCLUDE; default off: requests are relayed byte for byte)")
    p.add_argument("--fetch-final", action=argparse.BooleanOptionalAction,
                   default=settings.env_flag(settings.RUNMETER_FETCH_FINAL, True),
                   help="read runs back from the upstream off the request path, with the caller's own "
                        "key, held only while the job is pending: a run whose stream was cut off until it is "
                        "final (its billed usage), a finished file_search run's steps (its chunks) "
                        "(env RUNMETER_FETCH_FINAL; default on)")
    p.add_argument("--serve-port", type=int, default=settings.env_int(settings.RUNMETER_PROXY_SERVE_PORT, -1),
                   help="also act as the `runmeter serve` sidecar: Prometheus /metrics on this port, the "
                        "store's writer and the storage poller (through the upstream, with OPENAI_API_KEY) "
                        "(env RUNMETER_PROXY_SERVE_PORT; default off; 0 picks a free port)")
    p.add_argument("--read-timeout", type=float,
                   default=settings.env_float(settings.RUNMETER_PROXY_READ_TIMEOUT, 600.0),
                   help="seconds of upstream silence tolerated inside a response "
                        "(env RUNMETER_PROXY_READ_TIMEOUT; default 600)")


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; every pending record is written before exit."""
    from collector.proxy import ProxyConfig, serve_forever
    from collector.proxy.app import run as run_loop
    from collector.store.writer import Writer

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port} is not a port number (0-65535)")
    if args.read_timeout is None or args.read_timeout <= 0:
        raise ValueError("--read-timeout must be a positive number of seconds")
    config = ProxyConfig(upstream=args.upstream, include_results=args.include_results,
                         fetch_steps=args.fetch_final, fetch_final=args.fetch_final,
                         read_timeout=args.read_timeout)
    sidecar, poll_client = _sidecar(args) if args.serve_port >= 0 else (None, None)
    writer = sidecar.writer if sidecar is not None and sidecar.writer is not None else Writer(args.db)
    try:
        def announce(url: str) -> None:
            print(url, flush=True)
            print(f"runmeter proxy relaying to {config.upstream}, recording into {args.db}; Ctrl-C stops",
                  file=sys.stderr, flush=True)

        with contextlib.suppress(KeyboardInterrupt):
            run_loop(serve_forever(config, writer.submit, args.host, args.port, announce))
    finally:
        if sidecar is not None:
            sidecar.close()  # closes its writer and stops its poller
        if poll_client is not None:
            poll_client.close()
        if sidecar is None or sidecar.writer is not writer:
            writer.close()
    return 0


def _sidecar(args: argparse.Namespace) -> tuple[Any, Any]:
    """The serve sidecar inside the proxy process: its writer takes the store's writer role."""
    import openai

    from collector.metrics.sidecar import Sidecar
    from collector.storage_poller import StoragePoller, StoreSink, start_background

    if not 0 <= args.serve_port <= 65535:
        raise ValueError(f"--serve-port {args.serve_port} is not a port number (0-65535)")
    poller = client = None
    try:
        client = openai.OpenAI(base_url=args.upstream)
        poller = start_background(StoragePoller(client, StoreSink(args.db)),
                                  settings.env_float(settings.RUNMETER_STORAGE_POLL_INTERVAL, 300.0) or 300.0)
    except openai.OpenAIError as exc:
        print(f"runmeter proxy: storage poller off: {exc}", file=sys.stderr)
    try:
        sidecar = Sidecar(args.db, host=args.host, port=args.serve_port, poller=poller)
    except OSError as exc:
        if poller is not None:
            poller.stop()
        if client is not None:
            client.close()
        raise ValueError(f"cannot serve metrics on {args.host}:{args.serve_port}: "
                         f"{exc.strerror or exc}") from None
    print(f"runmeter proxy: sidecar metrics at {sidecar.url}metrics", file=sys.stderr, flush=True)
    return sidecar, client
