"""Fetching an interrupted run's final state, off the request path.

OpenAI bills a run whose stream broke or was abandoned: the run goes on on the server. When a capture
ends ``interrupted``, :class:`FinalFetcher` polls the run (Assistants ``GET .../runs/{id}``) or the
stored response (``GET /responses/{id}``) in a daemon thread, with backoff, until it is terminal, and
hands the body to ``on_body`` to be folded like any other exchange: the row is upgraded to the billed
usage. Chat completions cannot be fetched. The auth headers live only in the pending job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from collector._instrument_steps import FORWARDED_HEADERS, HttpGet, StepsBody
from collector.record import INTERRUPTED, RunRecord

log = logging.getLogger("runmeter.instrument")

DEFAULT_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)
"""Seconds to wait before each attempt (about four minutes in all): a run cut off mid-stream
usually finishes within seconds, a long one within minutes."""

_NOT_DONE = (b'"status":"queued"', b'"status":"in_progress"', b'"status":"cancelling"',
             b'"status": "queued"', b'"status": "in_progress"', b'"status": "cancelling"')


def final_url(request_url: str, record: RunRecord) -> str | None:
    """Where the run of an interrupted ``record`` can be read back, or ``None``."""
    base = request_url.split("?", 1)[0]
    if record.api == "assistants" and record.thread_id and record.run_id.startswith("run_"):
        cut = base.rfind("/threads")
        return f"{base[:cut]}/threads/{record.thread_id}/runs/{record.run_id}" if cut >= 0 else None
    if record.api == "responses" and record.run_id.startswith("resp_"):
        cut = base.rfind("/responses")
        return f"{base[:cut]}/responses/{record.run_id}" if cut >= 0 else None
    return None


class FinalFetcher:
    """Polls interrupted runs until they are terminal, one daemon thread per run (they are rare)."""

    def __init__(self, http: HttpGet, on_body: Callable[[StepsBody, str, Mapping[str, str]], None], *,
                 delays: Sequence[float] = DEFAULT_DELAYS, wall: Callable[[], float] = time.time,
                 max_active: int = 32) -> None:
        self._http = http
        self._on_body = on_body
        self._delays = tuple(delays)
        self._wall = wall
        self._stop = threading.Event()
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._max_active = max_active

    def offer(self, request_url: str, headers: Mapping[str, str], record: RunRecord) -> None:
        """Called with every record a capture produced; acts on interrupted, fetchable runs only."""
        if record.status != INTERRUPTED or self._stop.is_set():
            return
        url = final_url(request_url, record)
        if url is None:
            return
        forwarded = {k: v for k, v in headers.items() if k.lower() in FORWARDED_HEADERS}
        with self._lock:
            self._threads = {t for t in self._threads if t.is_alive()}
            if len(self._threads) >= self._max_active:
                log.warning("runmeter: too many interrupted runs being fetched; %s not fetched",
                            record.run_id)
                return
            t = threading.Thread(target=self._poll, args=(url, forwarded), name="runmeter-final", daemon=True)
            self._threads.add(t)
        t.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop polling; runs not yet terminal stay as recorded."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _poll(self, url: str, headers: Mapping[str, str]) -> None:
        path = url.split("://", 1)[-1]
        path = path[path.find("/"):] if "/" in path else "/"
        for delay in self._delays:
            if self._stop.wait(delay):
                return
            try:
                sent_wall, sent_ns = self._wall(), time.monotonic_ns()
                response = self._http.get(url, headers={**headers, "Connection": "close"})
                body = response.content
            except Exception:
                log.debug("runmeter: fetching %s failed; will retry", path, exc_info=True)
                continue
            if response.status_code == 404:
                return  # not stored (Responses with store=false) or deleted: nothing more to learn
            if response.status_code != 200 or any(marker in body for marker in _NOT_DONE):
                continue
            try:
                self._on_body(StepsBody(path=path, query="", status=response.status_code,
                                        content_type=response.headers.get("content-type", ""), body=body,
                                        sent_wall=sent_wall, sent_ns=sent_ns, recv_ns=time.monotonic_ns()),
                              url, headers)
            except Exception:
                log.exception("runmeter: folding a fetched run failed")
            return
        log.info("runmeter: %s did not reach a final status while polled; left interrupted", path)
