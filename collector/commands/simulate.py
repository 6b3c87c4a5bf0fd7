"""``runmeter simulate``: serve the wire-faithful OpenAI simulator until stopped."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

from collector import settings

NAME = "simulate"
HELP = ("Serve runmeter's OpenAI simulator (Assistants v2, Responses, Chat, files, vector stores) "
        "and print its base URL on the first line.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags, each defaulting to its ``RUNMETER_*`` variable."""
    p.add_argument("--host", default=settings.env_str(settings.RUNMETER_HOST, "127.0.0.1"),
                   help="interface to bind (env RUNMETER_HOST; default 127.0.0.1; 0.0.0.0 exposes it "
                        "to the network)")
    p.add_argument("--port", type=int, default=settings.env_int(settings.RUNMETER_SIMULATOR_PORT, 0),
                   help="port to bind, 0 for a free one (env RUNMETER_SIMULATOR_PORT; default 0)")
    p.add_argument("--seed", type=int, default=settings.env_int(settings.RUNMETER_SEED, 0),
                   help="seed of every generator: same seed, epoch and requests give the same bodies "
                        "(env RUNMETER_SEED; default 0)")
    p.add_argument("--epoch", type=float, default=settings.env_float(settings.RUNMETER_EPOCH, None),
                   help="unix time the simulated clock starts at; given, the clock is logical "
                        "(env RUNMETER_EPOCH; default: real time)")
    p.add_argument("--latency", default=settings.env_str(settings.RUNMETER_LATENCY, "realistic"),
                   choices=["realistic", "fast", "none"],
                   help="latency profile (env RUNMETER_LATENCY; default realistic)")
    p.add_argument("--fault", default=settings.env_str(settings.RUNMETER_FAULT, "") or None,
                   help="fault applied to every request, e.g. drop@0.1 (env RUNMETER_FAULT)")


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted."""
    from collector.simulator.app import SimulatorConfig, serve
    from collector.simulator.faults import parse

    if args.fault:
        parse(args.fault)  # a bad spec is a one-line error before binding
    config = SimulatorConfig(seed=args.seed, epoch=args.epoch, latency=args.latency, fault=args.fault)

    def announce(url: str) -> None:
        print(url, flush=True)
        print(f"runmeter simulator serving (seed {args.seed}, latency {args.latency}); Ctrl-C stops",
              file=sys.stderr, flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config, args.host, args.port, announce))
    return 0
