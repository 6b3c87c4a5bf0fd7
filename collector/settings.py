"""Every environment variable runmeter reads, declared once.

The SDK's own variables (``OPENAI_API_KEY``, ``OPENAI_BASE_URL``, ``OPENAI_ADMIN_KEY``) are honoured
as they are; runmeter's own carry the ``RUNMETER_`` prefix. Each CLI flag's default comes from the
variable named here, so ``runmeter simulate --port 0`` and ``RUNMETER_SIMULATOR_PORT=0 runmeter simulate``
agree. Each server has its own port variable, so one exported for one server never moves another.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

RUNMETER_DB = "RUNMETER_DB"
"""Path of the DuckDB store (default ``./runmeter.duckdb``)."""

RUNMETER_HOST = "RUNMETER_HOST"
"""Interface a server binds (default ``127.0.0.1``)."""

RUNMETER_SERVE_PORT = "RUNMETER_SERVE_PORT"
"""Port ``runmeter serve`` binds for ``/metrics`` (default 9464; ``0`` picks a free port)."""

RUNMETER_PROXY_PORT = "RUNMETER_PROXY_PORT"
"""Port ``runmeter proxy`` binds (default 8787; ``0`` picks a free port)."""

RUNMETER_DASHBOARD_PORT = "RUNMETER_DASHBOARD_PORT"
"""Port ``runmeter dashboard`` binds (default 8501; ``0`` picks a free port)."""

RUNMETER_SIMULATOR_PORT = "RUNMETER_SIMULATOR_PORT"
"""Port ``runmeter simulate`` binds (default ``0``: a free port, printed first)."""

RUNMETER_SEED = "RUNMETER_SEED"
"""Seed of the simulator's deterministic generators (default ``0``)."""

RUNMETER_EPOCH = "RUNMETER_EPOCH"
"""Unix time the simulator's clock starts at (default: the real time at start)."""

RUNMETER_LATENCY = "RUNMETER_LATENCY"
"""Simulator latency profile: ``realistic`` (seconds), ``fast`` (tests) or ``none``."""

RUNMETER_FAULT = "RUNMETER_FAULT"
"""A fault the simulator applies to every request (see the simulator's README section)."""

RUNMETER_PRICES = "RUNMETER_PRICES"
"""A user's price file (JSON, or TOML when it ends in ``.toml``) merged over the built-in table
``analysis/prices.json``; ``--prices FILE`` wins over it. A model listed there replaces the built-in entry;
``service_tiers`` and ``tools`` merge key by key. A malformed file is an error naming the file and the key."""

RUNMETER_INCLUDE_RESULTS = "RUNMETER_INCLUDE_RESULTS"
"""``0`` turns off the ``include`` runmeter adds to get file_search results (default on)."""

RUNMETER_FETCH_FINAL = "RUNMETER_FETCH_FINAL"
"""``0`` turns off fetching an interrupted run's final state (default on)."""

RUNMETER_UPSTREAM = "RUNMETER_UPSTREAM"
"""The proxy's upstream base URL (default ``https://api.openai.com/v1``)."""

RUNMETER_PROXY_INCLUDE = "RUNMETER_PROXY_INCLUDE"
"""``1`` makes ``runmeter proxy`` add runmeter's ``include`` for file_search chunk results (default off:
the proxy forwards every request byte for byte)."""

RUNMETER_PROXY_READ_TIMEOUT = "RUNMETER_PROXY_READ_TIMEOUT"
"""Seconds of silence ``runmeter proxy`` tolerates inside an upstream response (default 600)."""

RUNMETER_PROXY_SERVE_PORT = "RUNMETER_PROXY_SERVE_PORT"
"""``runmeter proxy`` also acts as the ``runmeter serve`` sidecar on this port (default off)."""

RUNMETER_REQUIRE_BINARIES = "RUNMETER_REQUIRE_BINARIES"
"""Set by ``.ci/run``: tests that need promtool or chromium fail instead of skipping."""

RUNMETER_STORAGE_POLL_INTERVAL = "RUNMETER_STORAGE_POLL_INTERVAL"
"""Seconds between two vector-store storage polls (``runmeter storage poll``, ``serve``; default 300)."""

RUNMETER_STORAGE_PRICE_PER_GB_DAY = "RUNMETER_STORAGE_PRICE_PER_GB_DAY"
"""USD per GB of vector-store storage per day (default 0.10, OpenAI's published file_search storage price)."""

RUNMETER_STORAGE_FREE_GB = "RUNMETER_STORAGE_FREE_GB"
"""Free vector-store GB, applied once to the organization's total (default 1)."""

RUNMETER_STORAGE_UNIT = "RUNMETER_STORAGE_UNIT"
"""What a billed storage GB is: ``gib`` (2^30 bytes, the default) or ``gb`` (10^9 bytes)."""

RUNMETER_STORAGE_FREE_PER = "RUNMETER_STORAGE_FREE_PER"
"""Whether the free storage allowance applies to each UTC ``day``'s mean GB (default) or each ``hour``'s."""

OPENAI_API_KEY = "OPENAI_API_KEY"
OPENAI_BASE_URL = "OPENAI_BASE_URL"
OPENAI_ADMIN_KEY = "OPENAI_ADMIN_KEY"


def env_str(name: str, default: str) -> str:
    """The variable's value, or ``default`` when unset or empty."""
    value = os.environ.get(name, "")
    return value if value else default


def env_int(name: str, default: int) -> int:
    """The variable as an int; a malformed value is an error naming the variable."""
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None


def env_float(name: str, default: float | None) -> float | None:
    """The variable as a float; a malformed value is an error naming the variable."""
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None


def env_flag(name: str, default: bool) -> bool:
    """The variable as a boolean (``0``, ``false``, ``no``, ``off`` are false)."""
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    return raw not in {"0", "false", "no", "off"}


def renamed_settings(command: str, env: Mapping[str, str]) -> list[str]:
    """Notices for variables an earlier runmeter read that ``command`` no longer does (pure): a setting
    that silently stops working is worse than a line on stderr."""
    notices = []
    if "RUNMETER_PORT" in env:
        notices.append("RUNMETER_PORT is no longer read: each server has its own port variable "
                       f"({RUNMETER_SERVE_PORT}, {RUNMETER_PROXY_PORT}, {RUNMETER_DASHBOARD_PORT}, "
                       f"{RUNMETER_SIMULATOR_PORT})")
    if command == "proxy" and RUNMETER_SERVE_PORT in env and RUNMETER_PROXY_SERVE_PORT not in env:
        notices.append(f"{RUNMETER_SERVE_PORT} is runmeter serve's port; the proxy's own sidecar port is "
                       f"{RUNMETER_PROXY_SERVE_PORT}")
    return notices
