"""The ``include`` runmeter adds to a request so the wire carries file_search results.

A pure function of the request (method, path, raw query, body): it returns the new query and body,
or ``None`` when the request is left as it is. Two requests are changed, nothing else:

- Assistants ``POST .../threads/{thread_id}/runs``: the query gains
  ``include[]=step_details.tool_calls[*].file_search.results[*].content`` (bracket format, encoded as
  the SDK encodes it) unless the caller already asked for it.
- Responses ``POST .../responses`` with a ``file_search`` tool: the JSON body's ``include`` list gains
  ``"file_search_call.results"`` unless present.

Neither changes billing; the caller sees only the added result fields. Chat's ``stream_options`` is
never touched: the extra usage chunk it brings breaks plain loops over ``choices[0]``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote

__all__ = [
    "RESPONSES_INCLUDE",
    "RUN_STEP_INCLUDE",
    "RUN_STEP_INCLUDE_QUERY",
    "Injected",
    "inject_include",
]

RUN_STEP_INCLUDE = "step_details.tool_calls[*].file_search.results[*].content"
"""The one ``RunStepInclude`` value: file_search result chunks with their text."""

RUN_STEP_INCLUDE_QUERY = "include%5B%5D=" + quote(RUN_STEP_INCLUDE, safe="")
"""``RUN_STEP_INCLUDE`` as the SDK puts it in a query string (``include%5B%5D=...%5B%2A%5D...``)."""

RESPONSES_INCLUDE = "file_search_call.results"
"""The Responses ``include`` value that fills ``file_search_call.results``."""

_RUNS_CREATE = re.compile(r"/threads/[^/]+/runs/?$")
_RESPONSES_CREATE = re.compile(r"/responses/?$")


@dataclass(frozen=True, slots=True)
class Injected:
    """The request after injection: its raw query string (no ``?``) and body."""

    query: str
    body: bytes | None


def inject_include(method: str, path: str, query: str, body: bytes | None) -> Injected | None:
    """The request with runmeter's ``include`` added, or ``None`` when nothing changes.

    ``path`` is the URL path (any prefix such as ``/v1`` is fine), ``query`` the raw query string
    without ``?``. Malformed or unexpected input is left untouched, never an error.
    """
    if method.upper() != "POST":
        return None
    if _RUNS_CREATE.search(path):
        new_query = _with_run_step_include(query)
        return None if new_query is None else Injected(new_query, body)
    if _RESPONSES_CREATE.search(path):
        new_body = _with_responses_include(body)
        return None if new_body is None else Injected(query, new_body)
    return None


def _with_run_step_include(query: str) -> str | None:
    try:
        pairs = parse_qsl(query, keep_blank_values=True)
    except ValueError:
        return None
    for key, value in pairs:
        if key in ("include[]", "include") and value == RUN_STEP_INCLUDE:
            return None
    return f"{query}&{RUN_STEP_INCLUDE_QUERY}" if query else RUN_STEP_INCLUDE_QUERY


def _with_responses_include(body: bytes | None) -> bytes | None:
    if not body or body[:1] != b"{":
        return None
    try:
        payload: Any = json.loads(body)
    except ValueError:
        return None
    if not isinstance(payload, dict) or not _has_file_search(payload.get("tools")):
        return None
    include = payload.get("include")
    if include is None:
        include = []
    if not isinstance(include, list) or RESPONSES_INCLUDE in include:
        return None
    payload["include"] = [*include, RESPONSES_INCLUDE]
    try:
        # The SDK's own encoding (openapi_dumps), so the body differs only by the added value.
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:
        return None


def _has_file_search(tools: Any) -> bool:
    return isinstance(tools, list) and any(
        isinstance(tool, dict) and tool.get("type") == "file_search" for tool in tools
    )
