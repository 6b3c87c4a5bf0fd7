"""Taps: one pure fold per API from the bytes of one HTTP exchange to run observations.

The in-process Recorder and the proxy both call :func:`tap_for` when a request is sent, then feed the
response into the returned :class:`Tap` and ``close()`` it. Observations of the same run merge with
:func:`collector.merge.merge`.
"""

from __future__ import annotations

import re

from collector.taps.assistants import AssistantsTap
from collector.taps.base import Request, Tap
from collector.taps.chat import ChatTap
from collector.taps.responses import ResponsesTap

__all__ = ["Tap", "tap_for"]

_ID = r"([^/]+)"
# Matched against the end of the path, so any prefix (/v1, an Azure or proxy mount) works.
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(rf"/threads/{_ID}/runs$"), "assistants"),
    ("POST", re.compile(r"/threads/runs$"), "assistants"),
    ("POST", re.compile(rf"/threads/{_ID}/runs/{_ID}/submit_tool_outputs$"), "assistants"),
    ("POST", re.compile(rf"/threads/{_ID}/runs/{_ID}/cancel$"), "assistants"),
    ("GET", re.compile(rf"/threads/{_ID}/runs/{_ID}/steps$"), "assistants"),
    ("GET", re.compile(rf"/threads/{_ID}/runs/{_ID}$"), "assistants"),
    ("POST", re.compile(r"/responses$"), "responses"),
    ("GET", re.compile(rf"/responses/{_ID}$"), "responses"),
    ("POST", re.compile(rf"/responses/{_ID}/cancel$"), "responses"),
    ("POST", re.compile(r"/chat/completions$"), "chat"),
]


def tap_for(
    method: str, path: str, query: str, request_body: bytes | None, *, sent_wall: float, sent_ns: int
) -> Tap | None:
    """A tap for this request, or None if runmeter does not record it.

    ``path`` is the URL path (e.g. ``/v1/threads/thread_x/runs``); ``query`` the raw query string;
    ``sent_wall`` = ``time.time()`` and ``sent_ns`` = ``time.monotonic_ns()`` when the request was
    sent. Single-step retrieves, message lists and every other endpoint return None.
    """
    method = method.upper()
    path = path.rstrip("/")
    for route_method, pattern, api in _ROUTES:
        if method != route_method:
            continue
        m = pattern.search(path)
        if m is None:
            continue
        request = Request(method, path, query, request_body, sent_wall, sent_ns)
        if api == "chat":
            return ChatTap(request)
        groups = m.groups()
        if api == "responses":
            return ResponsesTap(request, response_id=groups[0] if groups else None)
        return AssistantsTap(
            request, thread_id=groups[0] if groups else None, run_id=groups[1] if len(groups) > 1 else None
        )
    return None
