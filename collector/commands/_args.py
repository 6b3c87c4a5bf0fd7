"""Flags and flag parsing that several subcommands share: ``--db``, ``--prices``, ``--json`` and UTC days.

Values are parsed after argparse has run, not as ``type=``: a ``ValueError`` raised from a command's
``run`` becomes the one line ``runmeter <cmd>: error: ...`` (exit 2) in :func:`collector.cli.main`,
whereas a ``type=`` error would print argparse's usage block above it.
"""

from __future__ import annotations

import argparse
import re
from datetime import date

from collector import settings

DAY_METAVAR = "YYYY-MM-DD"

_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def add_db_flag(p: argparse.ArgumentParser) -> None:
    """``--db PATH``, the store to read, defaulting to ``RUNMETER_DB`` and then ``./runmeter.duckdb``."""
    p.add_argument("--db", default=settings.env_str(settings.RUNMETER_DB, "runmeter.duckdb"),
                   help="path of the store (env RUNMETER_DB; default ./runmeter.duckdb)")


def add_prices_flag(p: argparse.ArgumentParser) -> None:
    """``--prices FILE``; :func:`analysis.prices.price_file_from_env` falls back to ``RUNMETER_PRICES``."""
    p.add_argument("--prices", default=None,
                   help="a price file merged over the built-in table (env RUNMETER_PRICES)")


def add_json_flag(p: argparse.ArgumentParser) -> None:
    """``--json``: print machine-readable JSON instead of the readable tables."""
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")


class _DayFlag(argparse.Action):
    """Stores the value and which of the flag's names was typed (``<dest>_flag``), for the error."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        setattr(namespace, self.dest + "_flag", option_string or self.option_strings[0])


def add_day_flag(p: argparse.ArgumentParser, flag: str, help: str, dest: str | None = None,
                 aliases: tuple[str, ...] = ()) -> None:
    """A ``YYYY-MM-DD`` flag kept as text; turn it into a date with :func:`parse_day` in ``run``
    (:func:`flag_name` names it as typed).

    ``--from`` and ``--to`` (both days included) are the span every command that takes days accepts;
    a command's older names for the same value are ``aliases``.
    """
    p.add_argument(flag, *aliases, dest=dest or flag.lstrip("-").replace("-", "_"), default=None,
                   metavar=DAY_METAVAR, help=help, action=_DayFlag)


def flag_name(args: argparse.Namespace, dest: str, default: str) -> str:
    """The name a day flag was given under on the command line (``--since`` or ``--from``), else
    ``default``: errors name what the user typed."""
    name: str = getattr(args, dest + "_flag", default)
    return name


def parse_day(value: str | None, flag: str) -> date | None:
    """``value`` as a UTC calendar day, or None when the flag was not given.

    Only ``YYYY-MM-DD`` is taken: Python 3.11's ``date.fromisoformat`` also reads ``20250101`` and ISO
    week dates, which the help does not promise. Raises ``ValueError`` naming the flag and the value.
    """
    if value is None:
        return None
    try:
        if not _DAY.fullmatch(value):
            raise ValueError(value)
        day = date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{flag} {value!r} is not a date ({DAY_METAVAR})") from None
    if day == date.max:  # a span's end is the day after its last day: this one has none
        raise ValueError(f"{flag} {value!r} is past the last day runmeter counts to (9999-12-30)")
    return day


def check_span(first: date, first_name: str, last: date, last_name: str, *,
               last_included: bool = True) -> None:
    """Raise ``ValueError`` unless ``last`` comes after ``first`` (or is the same day, when included).

    The names are the flags, or where a default came from ("the last poll's day"), so the error says
    which value to change.
    """
    if last < first:
        raise ValueError(f"{last_name} {last} is before {first_name} {first}")
    if last == first and not last_included:
        raise ValueError(f"{last_name} {last} is not after {first_name} {first} (its day is excluded)")


def parse_span(first: str | None, first_flag: str, last: str | None, last_flag: str, *,
               last_included: bool = True) -> tuple[date | None, date | None]:
    """Two day flags read with :func:`parse_day`; when both are given, ordered as :func:`check_span` asks."""
    first_day, last_day = parse_day(first, first_flag), parse_day(last, last_flag)
    if first_day is not None and last_day is not None:
        check_span(first_day, first_flag, last_day, last_flag, last_included=last_included)
    return first_day, last_day
