"""Faults on demand: per request with the ``X-Runmeter-Fault`` header, or for the whole server.

A spec is ``MODE`` or ``MODE@P`` (applied to a share P of requests, drawn from the seeded
generator), optionally ``MODE:ARG`` (for ``stall``, the seconds to stall; default 2).
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

from aiohttp import web

FAULT_HEADER = "X-Runmeter-Fault"

MODES = frozenset({
    "rate_limit",        # 429 before the stream
    "server_error",      # 500 before the stream
    "error_event",       # mid-stream error event, wrapped: {"error": {...}} (SDK raises APIError)
    "error_event_flat",  # mid-stream error event, bare ErrorObject (SDK yields an event)
    "drop",              # the connection is cut mid-stream
    "stall",             # the stream stops for a while mid-stream, then goes on
    "failed",            # the run/response ends failed (server_error)
    "incomplete",        # ends incomplete (max tokens)
    "cancelled",         # ends cancelled
    "expired",           # ends expired (Assistants)
    "requires_action",   # stops at requires_action with a function call
})


DEFAULT_STALL_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault to apply to one request."""

    mode: str
    arg: float | None = None

    @property
    def stall_seconds(self) -> float:
        """How long a ``stall`` pauses the stream (``stall:S``; 2 s when not given)."""
        return DEFAULT_STALL_SECONDS if self.arg is None else self.arg


def parse(spec: str) -> tuple[Fault, float]:
    """``(fault, probability)`` from a spec; an unknown mode is an error listing the known ones."""
    prob = 1.0
    body = spec.strip()
    if "@" in body:
        body, p = body.split("@", 1)
        prob = float(p)
    arg: float | None = None
    if ":" in body:
        body, a = body.split(":", 1)
        arg = float(a)
    if body not in MODES:
        raise ValueError(f"unknown fault {body!r}; choose one of {sorted(MODES)}")
    return Fault(body, arg), prob


class FaultPicker:
    """Decides the fault (if any) for each request: the header wins over the server-wide setting."""

    def __init__(self, server_spec: str | None, seed: int) -> None:
        self._server = parse(server_spec) if server_spec else None
        self._rng = random.Random(f"faults:{seed}")
        self._lock = threading.Lock()

    def pick(self, request: web.Request) -> Fault | None:
        """The fault for this request, or ``None``."""
        header = request.headers.get(FAULT_HEADER)
        if header:
            fault, prob = parse(header)
        elif self._server is not None:
            fault, prob = self._server
        else:
            return None
        if prob >= 1.0:
            return fault
        with self._lock:
            return fault if self._rng.random() < prob else None
