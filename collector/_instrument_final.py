"""Fetching an interrupted run's final state, off the request path.

OpenAI bills a run whose stream broke or was abandoned: the run goes on on the server. When a capture
ends ``interrupted``, :class:`FinalFetcher` polls the run (Assistants ``GET .../runs/{id}``) or the
stored response (``GET /responses/{id}``) from one worker thread, with backoff, until it is terminal,
and hands the body to ``on_body`` to be folded like any other exchange: the row is upgraded to the
billed usage. Chat completions cannot be fetched. The auth headers live only in the pending job.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from collector._instrument_steps import FORWARDED_HEADERS, HttpGet, StepsBody
from collector.record import INTERRUPTED, RunRecord

log = logging.getLogger("runmeter.instrument")

DEFAULT_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)
"""Seconds to wait before each attempt (about four minutes in all): a run cut off mid-stream
usually finishes within seconds, a long one within minutes."""

_NOT_DONE = (b'"status":"queued"', b'"status":"in_progress"', b'"status":"cancelling"',
             b'"status": "queued"', b'"status": "in_progress"', b'"status": "cancelling"')

_TICK = 0.05
"""How often the worker looks for new jobs (offer() only appends: it may run inside a finaliser)."""


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


def final_sink(sink: Callable[[RunRecord], None], final: FinalFetcher, url: str,
               headers: Mapping[str, str]) -> Callable[[RunRecord], None]:
    """``sink``, plus: an interrupted run of the request to ``url`` is polled until terminal."""

    def record(r: RunRecord) -> None:
        sink(r)
        final.offer(url, headers, r)

    return record


@dataclass(order=True)
class _Job:
    due: float
    seq: int
    url: str = field(compare=False)
    headers: Mapping[str, str] = field(compare=False)
    attempt: int = field(default=0, compare=False)


class FinalFetcher:
    """Polls interrupted runs until they are terminal, all from one daemon worker thread."""

    def __init__(self, http: HttpGet, on_body: Callable[[StepsBody, str, Mapping[str, str]], None], *,
                 delays: Sequence[float] = DEFAULT_DELAYS, wall: Callable[[], float] = time.time,
                 max_pending: int = 256) -> None:
        self._http = http
        self._on_body = on_body
        self._delays = tuple(delays) or (0.0,)
        self._wall = wall
        self._max_pending = max_pending
        self._inbox: collections.deque[tuple[str, Mapping[str, str]]] = collections.deque()
        self._stop = threading.Event()
        self._seq = itertools.count()
        # Started here, in ordinary code: offer() must not start threads or take locks.
        self._thread = threading.Thread(target=self._work, name="runmeter-final", daemon=True)
        self._thread.start()

    def offer(self, request_url: str, headers: Mapping[str, str], record: RunRecord) -> None:
        """Called with every record a capture produced; acts on interrupted, fetchable runs only."""
        if record.status != INTERRUPTED or self._stop.is_set():
            return
        url = final_url(request_url, record)
        if url is None:
            return
        if len(self._inbox) >= self._max_pending:
            log.warning("runmeter: too many interrupted runs waiting; %s not fetched", record.run_id)
            return
        self._inbox.append((url, {k: v for k, v in headers.items() if k.lower() in FORWARDED_HEADERS}))

    def close(self, timeout: float = 5.0) -> None:
        """Stop polling; runs not yet terminal stay as recorded."""
        self._stop.set()
        self._thread.join(timeout)

    def _work(self) -> None:
        jobs: list[_Job] = []
        while not self._stop.is_set():
            while self._inbox:
                url, headers = self._inbox.popleft()
                heapq.heappush(jobs, _Job(time.monotonic() + self._delays[0], next(self._seq), url, headers))
            now = time.monotonic()
            while jobs and jobs[0].due <= now and not self._stop.is_set():
                job = heapq.heappop(jobs)
                if not self._attempt(job):
                    job.attempt += 1
                    if job.attempt < len(self._delays):
                        job.due = time.monotonic() + self._delays[job.attempt]
                        heapq.heappush(jobs, job)
                    else:
                        log.info("runmeter: %s did not reach a final status while polled; left interrupted",
                                 job.url.rsplit("/", 1)[-1])
            wait = _TICK if not jobs else min(_TICK, max(0.0, jobs[0].due - time.monotonic()))
            self._stop.wait(wait)

    def _attempt(self, job: _Job) -> bool:
        """One GET; True when the job is over (folded, or nothing more to learn)."""
        path = job.url.split("://", 1)[-1]
        path = path[path.find("/"):] if "/" in path else "/"
        try:
            sent_wall, sent_ns = self._wall(), time.monotonic_ns()
            response = self._http.get(job.url, headers={**job.headers, "Connection": "close"})
            body = response.content
        except Exception:
            log.debug("runmeter: fetching %s failed; will retry", path, exc_info=True)
            return False
        if response.status_code == 404:
            return True  # not stored (Responses with store=false) or deleted
        if response.status_code != 200 or any(marker in body for marker in _NOT_DONE):
            return False
        try:
            self._on_body(StepsBody(path=path, query="", status=response.status_code,
                                    content_type=response.headers.get("content-type", ""), body=body,
                                    sent_wall=sent_wall, sent_ns=sent_ns, recv_ns=time.monotonic_ns()),
                          job.url, job.headers)
        except Exception:
            log.exception("runmeter: folding a fetched run failed")
        return True
