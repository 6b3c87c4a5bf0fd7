"""Listing a finished run's steps with ``include``, off the request path.

A run that was not streamed (``create_and_poll``, ``retrieve``, ``create_and_run``) is observed
through ``GET .../runs/{id}`` bodies: usage, but no file_search chunks. When such a body shows a
terminal run with a file_search tool, :class:`StepsFetcher` lists the run's steps with the include
value in a background thread, with a plain HTTP client of its own and the original request's auth
headers, and hands the body to ``on_steps``. The auth headers live only in the pending job; they are
never logged or stored.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from collector._instrument_stream import Capture
from collector.include import RUN_STEP_INCLUDE_QUERY
from collector.record import TERMINAL_STATUSES

log = logging.getLogger("runmeter.instrument")

STEPS_QUERY = f"{RUN_STEP_INCLUDE_QUERY}&limit=100"
"""The query of runmeter's own steps listing."""

FORWARDED_HEADERS = ("authorization", "api-key", "openai-organization", "openai-project", "openai-beta")
"""Request headers the steps listing carries over from the observed request (auth and routing)."""

_FINAL = TERMINAL_STATUSES - {"requires_action"}
_FINAL_MARKERS = tuple(f'"status":{sep}"{s}"'.encode() for s in _FINAL for sep in ("", " "))


class HttpResponse(Protocol):
    """What the fetcher reads off a response (``httpx2.Response`` fits)."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content(self) -> bytes: ...


class HttpGet(Protocol):
    """A blocking HTTP client with ``get`` (``httpx2.Client`` fits)."""

    def get(self, url: str, *, headers: Mapping[str, str]) -> Any: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class StepsBody:
    """A steps listing as fetched, for the caller to feed to a tap."""

    path: str
    query: str
    status: int
    content_type: str
    body: bytes
    sent_wall: float
    sent_ns: int
    recv_ns: int


@dataclass(frozen=True, slots=True)
class _Job:
    url: str
    headers: Mapping[str, str]
    body: bytes


class StepsFetcher:
    """Fetches steps of finished file_search runs in one daemon thread; ``offer`` never blocks."""

    def __init__(self, http: HttpGet, on_steps: Callable[[StepsBody], None], *,
                 max_pending: int = 64, remember: int = 4096, wall: Callable[[], float] = time.time) -> None:
        self._http = http
        self._wall = wall
        self._on_steps = on_steps
        self._jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=max_pending)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._remember = remember
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def offer(self, url: str, headers: Mapping[str, str], body: bytes) -> None:
        """A non-streamed run-endpoint response: ``url`` of the request, its headers, the JSON body."""
        if self._closed:
            return
        forwarded = {k: v for k, v in headers.items() if k.lower() in FORWARDED_HEADERS}
        try:
            self._jobs.put_nowait(_Job(url, forwarded, body))
        except queue.Full:
            log.debug("runmeter: steps fetch queue full; run steps not fetched")
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="runmeter-steps", daemon=True)
                self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Finish the pending jobs (within ``timeout``), then stop the thread and the HTTP client."""
        self._closed = True
        with self._lock:
            thread = self._thread
        if thread is not None:
            with contextlib.suppress(queue.Full):
                self._jobs.put(None, timeout=timeout)
            thread.join(timeout)
        try:
            self._http.close()
        except Exception:
            log.debug("runmeter: steps HTTP client failed to close", exc_info=True)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                self._run(job)
            except Exception:
                log.exception("runmeter: fetching run steps failed")

    def _run(self, job: _Job) -> None:
        target = steps_url(job.url, job.body)
        if target is None:
            return
        with self._lock:
            if target in self._seen:
                return
            self._seen[target] = None
            if len(self._seen) > self._remember:
                self._seen.popitem(last=False)
        sent_wall, sent_ns = self._wall(), time.monotonic_ns()
        # Connection: close, so no idle keep-alive socket outlives the fetch.
        response = self._http.get(f"{target}?{STEPS_QUERY}", headers={**job.headers, "Connection": "close"})
        recv_ns = time.monotonic_ns()
        path = target.split("://", 1)[-1]
        path = path[path.find("/"):] if "/" in path else "/"
        self._on_steps(StepsBody(
            path=path, query=STEPS_QUERY, status=response.status_code,
            content_type=response.headers.get("content-type", ""), body=response.content,
            sent_wall=sent_wall, sent_ns=sent_ns, recv_ns=recv_ns,
        ))


def steps_url(request_url: str, body: bytes) -> str | None:
    """The steps URL of the run in ``body`` if it is a finished run with a file_search tool."""
    try:
        run: Any = json.loads(body)
    except ValueError:
        return None
    if not isinstance(run, dict) or run.get("object") != "thread.run" or run.get("status") not in _FINAL:
        return None
    tools = run.get("tools")
    if not isinstance(tools, list) or not any(isinstance(t, dict) and t.get("type") == "file_search"
                                              for t in tools):
        return None
    run_id, thread_id = run.get("id"), run.get("thread_id")
    if not isinstance(run_id, str) or not isinstance(thread_id, str):
        return None
    base = request_url.split("?", 1)[0]
    cut = base.rfind("/threads")
    if cut < 0:
        return None
    return f"{base[:cut]}/threads/{thread_id}/runs/{run_id}/steps"


def offer_when_finished(fetcher: StepsFetcher, capture: Any, url: str,
                        headers: Mapping[str, str]) -> Callable[[bool], None]:
    """An ``on_finish`` hook for a collecting capture: a complete JSON run body goes to ``fetcher``."""
    def offer(complete: bool) -> None:
        body = capture.body
        capture.body = None
        if not complete or not body:
            return
        data = b"".join(body)
        # Only a finished file_search run has steps worth listing: a cheap look at the bytes keeps
        # create_and_poll's in-progress polls from filling the fetch queue (the worker re-checks).
        if b'"file_search"' in data and any(m in data for m in _FINAL_MARKERS):
            fetcher.offer(url, headers, data)

    return offer


def fold_fetched(tap_for: Callable[..., Any], sink: Callable[[Any], None], fetched: StepsBody,
                 wall: Callable[[], float] = time.time) -> None:
    """A body fetched off the request path (a steps listing, a run read back): fold it through its
    tap into ``sink`` like any other exchange."""
    tap = tap_for("GET", fetched.path, fetched.query, None, sent_wall=fetched.sent_wall,
                  sent_ns=fetched.sent_ns)
    if tap is None:
        return
    capture = Capture(tap, sink, wall)
    capture.started(fetched.status, fetched.content_type, "")
    capture.feed(fetched.body)
    capture.finish(200 <= fetched.status < 300)
