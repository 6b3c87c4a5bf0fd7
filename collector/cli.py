"""The ``runmeter`` console script: a thin shell over the library.

Each subcommand lives in its own module under :mod:`collector.commands` and exposes
``NAME``, ``HELP`` and ``add_arguments(parser)`` / ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType

import collector.commands
from collector.metrics.families import version


def command_modules() -> list[ModuleType]:
    """Every subcommand module, in name order."""
    mods = []
    for info in sorted(pkgutil.iter_modules(collector.commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mods.append(importlib.import_module(f"collector.commands.{info.name}"))
    return mods


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used by the test that every command has help text)."""
    parser = argparse.ArgumentParser(
        prog="runmeter",
        description="Cost and usage observability for OpenAI file_search (Assistants, Responses, Chat).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr")
    parser.add_argument("--version", action="version", version=f"runmeter {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for mod in command_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``runmeter`` script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import duckdb

    from collector.settings import renamed_settings
    from collector.store.migrations import StoreError

    for notice in renamed_settings(args.command, os.environ):
        print(f"runmeter {args.command}: note: {notice}", file=sys.stderr)

    try:
        code: int = args._run(args)
        sys.stdout.flush()  # here, where a closed pipe is caught below, not at exit
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `runmeter report | head`: the reader left. Python's own advice: point stdout at devnull so the
        # flush at exit does not raise again, and end quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except (ValueError, FileNotFoundError, PermissionError, StoreError) as exc:
        # bad input is one clear line, not a traceback
        print(f"runmeter {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except duckdb.Error as exc:  # a DuckDB file of another shape
        db = getattr(args, "db", "the store")
        print(f"runmeter {args.command}: error: {db} is not a readable runmeter store: "
              f"{str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
