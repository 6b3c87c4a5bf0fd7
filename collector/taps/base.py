"""What every tap shares: the exchange's clock and body plumbing, usage mapping, citations.

A tap sees one HTTP exchange. :class:`ExchangeTap` routes the body to an SSE decoder or a JSON
buffer, keeps the exchange's timestamps, and turns any error inside the tap into a log line: the
program being observed never sees one. Subclasses implement ``_on_event`` (streams), ``_on_json``
(plain bodies) and ``_records``.
"""

from __future__ import annotations

import json
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from collector.record import INTERRUPTED, ChunkRecord, RunRecord
from collector.taps.sse import SSEDecoder, join_data

log = logging.getLogger("runmeter.taps")

FINAL_STATUSES = frozenset({"completed", "incomplete", "failed", "cancelled", "expired"})
"""Statuses after which nothing about the run changes (``requires_action`` only pauses it)."""


class Tap(Protocol):
    """Folds the response of one HTTP exchange into run observations."""

    def response_started(self, status: int, content_type: str, recv_ns: int) -> None:
        """The response head arrived (``recv_ns`` = ``time.monotonic_ns()``)."""

    def feed(self, data: bytes, recv_ns: int) -> None:
        """Body bytes as they arrive, split anywhere."""

    def close(self, *, complete: bool, now_wall: float, now_ns: int) -> list[RunRecord]:
        """One observation per run seen; ``complete=False`` if the body broke off. Never raises."""


@dataclass(frozen=True, slots=True)
class Request:
    """The request side of an exchange, as the tap received it."""

    method: str
    path: str
    query: str
    body: bytes | None
    sent_wall: float
    sent_ns: int

    def json(self) -> dict[str, Any]:
        """The request body as a JSON object, or ``{}`` when absent or not an object."""
        if not self.body:
            return {}
        try:
            obj = json.loads(self.body)
        except ValueError:
            return {}
        return obj if isinstance(obj, dict) else {}


_BUFFER_CHUNKS = 256
"""Buffered chunks decoded at once: bounds memory on very long streams."""


class ExchangeTap(ABC):
    """Base of the per-API taps (see the module docstring)."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.http_status: int | None = None
        self.streaming = False
        self._decoder: SSEDecoder | None = None
        self._body: list[bytes] = []
        self.buffer: list[bytes] | None = None
        """Stream bytes kept undecoded once the first token is seen, decoded in bulk at close (or every
        256 chunks). A caller may append to it directly instead of calling :meth:`feed` (the in-process
        stream wrapper does); end times then come from the close."""
        self._now_ns = request.sent_ns
        self._last_ns: int | None = None
        self.first_token_ns: int | None = None
        self.first_chunk_ns: int | None = None
        self.done = False
        """``data: [DONE]`` arrived: the SDK stops reading here, so the tap does too."""
        self._broken = False
        self._closed = False
        self.body_ok = False
        """A plain body parsed as a JSON object."""

    # -- Tap protocol ---------------------------------------------------------------------------
    def response_started(self, status: int, content_type: str, recv_ns: int) -> None:
        """See :class:`Tap`."""
        try:
            self.http_status = status
            self._last_ns = recv_ns
            if "event-stream" in (content_type or "").lower():
                self.streaming = True
                self._decoder = SSEDecoder(self._dispatch)
        except Exception:
            self._fail("response_started")

    def feed(self, data: bytes, recv_ns: int) -> None:
        """See :class:`Tap`."""
        buf = self.buffer
        if buf is not None:
            # After the first token nothing is time-critical: keep the bytes, decode them in bulk.
            self._last_ns = recv_ns
            buf.append(data)
            if len(buf) >= _BUFFER_CHUNKS:
                self._drain()
            return
        if self._broken or self.done or self._closed:
            return
        try:
            self._now_ns = self._last_ns = recv_ns
            if self.first_chunk_ns is None and data:
                self.first_chunk_ns = recv_ns
            if self._decoder is not None:
                self._decoder.feed(data)
            else:
                self._body.append(data)
        except Exception:
            self._fail("feed")

    def close(self, *, complete: bool, now_wall: float, now_ns: int) -> list[RunRecord]:
        """See :class:`Tap`."""
        if self._closed:
            return []  # the Recorder and a stream wrapper may both close; records go out once
        self._closed = True
        try:
            if self.buffer:
                self._drain()
            if self.http_status is None or not 200 <= self.http_status < 300:
                return []
            if not self.streaming and self._body and not self._broken:
                self._parse_json_body()
            end_ns = self._last_ns if complete and self._last_ns is not None else now_ns
            return self._records(complete=complete, end_ns=max(end_ns, self.request.sent_ns))
        except Exception:
            self._fail("close")
            return []
        finally:
            # The decoder calls back into this tap (a reference cycle): dropped here, a closed tap is
            # freed at once instead of at the next full GC (a proxy relays thousands of them).
            self._decoder = None
            self.buffer = None

    def _drain(self) -> None:
        buf = self.buffer
        if not buf or self._decoder is None:
            return
        data = b"".join(buf)
        buf.clear()
        if self._broken or self.done:
            return
        try:
            self._now_ns = self._last_ns or self._now_ns
            self._decoder.feed(data)
        except Exception:
            self._fail("feed")

    # -- helpers for subclasses -----------------------------------------------------------------
    def _dispatch(self, event: bytes | None, data: list[bytes]) -> None:
        if self.done:
            return
        if data and data[0].startswith(b"[DONE]"):
            self.done = True
            return
        self._on_event(event, data)

    def _parse_json_body(self) -> None:
        try:
            obj = json.loads(b"".join(self._body))
        except ValueError:
            log.debug("runmeter: %s %s: body is not JSON", self.request.method, self.request.path)
            return
        if isinstance(obj, dict):
            self.body_ok = True
            self._on_json(obj)

    @property
    def whole(self) -> bool:
        """Whether the exchange delivered a readable whole: a stream read to its end, or a JSON body."""
        return not self._broken and (self.streaming or self.body_ok)

    skip_after_first_token: Callable[[bytes], bool] | None = None
    """A predicate on raw SSE event blocks this tap no longer needs once the first token is seen
    (the text deltas): the decoder drops them unparsed, which keeps the per-delta cost tiny."""

    def _first_token(self) -> None:
        if self.first_token_ns is None:
            self.first_token_ns = self._now_ns
            if self._decoder is not None:
                self._decoder.skip = self.skip_after_first_token
                self.buffer = []
                self._last_ns = None  # chunks appended straight to the buffer carry no time

    def _fail(self, where: str) -> None:
        self._broken = True
        log.warning(
            "runmeter: tap for %s %s failed in %s",
            self.request.method,
            self.request.path,
            where,
            exc_info=True,
        )

    def _base_record(self, run_id: str, api: Any, *, final: bool, end_ns: int) -> RunRecord:
        """A record with the exchange's clock filled in (``final``: the run ended or broke off)."""
        req = self.request
        rec = RunRecord(run_id=run_id, api=api, streams=1 if self.streaming else 0)
        rec.started_at = req.sent_wall
        rec.duration_seconds = (end_ns - req.sent_ns) / 1e9
        if final:
            rec.completed_at = req.sent_wall + rec.duration_seconds
        if self.streaming and self.first_chunk_ns is not None:
            rec.first_chunk_seconds = (self.first_chunk_ns - req.sent_ns) / 1e9
        if self.first_token_ns is not None:
            rec.ttft_seconds = (self.first_token_ns - req.sent_ns) / 1e9
            rec.first_token_at = req.sent_wall + rec.ttft_seconds
        return rec

    @staticmethod
    def _loads(data: list[bytes]) -> dict[str, Any] | None:
        try:
            obj = json.loads(join_data(data))
        except ValueError:
            return None
        return obj if isinstance(obj, dict) else None

    @abstractmethod
    def _on_event(self, event: bytes | None, data: list[bytes]) -> None:
        """One SSE event (``[DONE]`` already handled)."""

    @abstractmethod
    def _on_json(self, obj: dict[str, Any]) -> None:
        """A plain JSON response body."""

    @abstractmethod
    def _records(self, *, complete: bool, end_ns: int) -> list[RunRecord]:
        """The observations of this exchange."""


def observed_status(status: str | None, *, streaming: bool, complete: bool) -> str | None:
    """The observation's status: the API's, or ``interrupted`` when the exchange ended before a
    terminal one (broken off, a stream whose bytes ran out, a body that was not JSON)."""
    if status in FINAL_STATUSES or status == "requires_action":
        return status
    if not complete or streaming:
        return INTERRUPTED
    return status


# -- usage -----------------------------------------------------------------------------------------
class Usage(NamedTuple):
    """Token counts in runmeter's one vocabulary; ``None`` = the wire did not say."""

    input: int | None
    cached: int | None
    cache_write: int | None
    output: int | None
    reasoning: int | None
    total: int | None

    def apply(self, rec: RunRecord) -> None:
        """Write these counts into the record."""
        rec.input_tokens, rec.cached_input_tokens, rec.cache_write_tokens = (
            self.input,
            self.cached,
            self.cache_write,
        )
        rec.output_tokens, rec.reasoning_tokens, rec.total_tokens = self.output, self.reasoning, self.total

    @classmethod
    def of(cls, rec: RunRecord) -> Usage:
        """The counts a record holds."""
        return cls(
            rec.input_tokens,
            rec.cached_input_tokens,
            rec.cache_write_tokens,
            rec.output_tokens,
            rec.reasoning_tokens,
            rec.total_tokens,
        )

    @classmethod
    def sum(cls, parts: list[Usage]) -> Usage | None:
        """Field-wise sum; a field any part lacks is unknown (``None``)."""
        if not parts:
            return None
        out: list[int | None] = []
        for values in zip(*parts, strict=True):
            out.append(None if any(v is None for v in values) else sum(v for v in values if v is not None))
        return cls(*out)


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _detail(u: dict[str, Any], *keys: str) -> dict[str, Any]:
    for k in keys:
        d = u.get(k)
        if isinstance(d, dict):
            return d
    return {}


def completion_usage(u: Any) -> Usage | None:
    """Assistants run/step usage and Chat usage (``prompt_tokens`` ...; both detail spellings)."""
    if not isinstance(u, dict):
        return None
    pd = _detail(u, "prompt_token_details", "prompt_tokens_details")
    cd = _detail(u, "completion_tokens_details", "completion_token_details")
    return Usage(
        _int(u.get("prompt_tokens")),
        _int(pd.get("cached_tokens")),
        _int(pd.get("cache_write_tokens")),
        _int(u.get("completion_tokens")),
        _int(cd.get("reasoning_tokens")),
        _int(u.get("total_tokens")),
    )


def responses_usage(u: Any) -> Usage | None:
    """Responses usage (``input_tokens`` ...)."""
    if not isinstance(u, dict):
        return None
    idt = _detail(u, "input_tokens_details")
    odt = _detail(u, "output_tokens_details")
    return Usage(
        _int(u.get("input_tokens")),
        _int(idt.get("cached_tokens")),
        _int(idt.get("cache_write_tokens")),
        _int(u.get("output_tokens")),
        _int(odt.get("reasoning_tokens")),
        _int(u.get("total_tokens")),
    )


# -- small field helpers -----------------------------------------------------------------------------
def as_str(v: Any) -> str | None:
    """``v`` if it is a non-empty string."""
    return v if isinstance(v, str) and v else None


def as_float(v: Any) -> float | None:
    """``v`` as a float if it is a number."""
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def error_code(err: Any) -> str | None:
    """The ``code`` (else ``type``) of an error object, bare or wrapped as ``{"error": {...}}``."""
    if isinstance(err, dict) and isinstance(err.get("error"), dict):
        err = err["error"]
    if not isinstance(err, dict):
        return None
    return as_str(err.get("code")) or as_str(err.get("type"))


def tags_from(echo: dict[str, Any], body: dict[str, Any]) -> dict[str, str]:
    """The run's tags: ``metadata`` (the request's, overridden by the API's echo) plus ``user`` /
    ``safety_identifier`` (the request body's, else the echo's)."""
    tags: dict[str, str] = {}
    for source in (body, echo):
        metadata = source.get("metadata")
        if isinstance(metadata, dict):
            tags.update({str(k): str(v) for k, v in metadata.items()})
    for key in ("user", "safety_identifier"):
        value = as_str(body.get(key)) or as_str(echo.get(key))
        if value is not None:
            tags[key] = value
    return tags


def file_search_tool(tools: Any) -> dict[str, Any] | None:
    """The ``file_search`` tool definition in a tools list (Assistants nest it, Responses do not)."""
    if not isinstance(tools, list):
        return None
    for tool in tools:
        if isinstance(tool, dict) and tool.get("type") == "file_search":
            inner = tool.get("file_search")
            return inner if isinstance(inner, dict) else tool
    return None


def result_chunks(call_id: str, results: list[Any]) -> list[ChunkRecord]:
    """One chunk per file_search result, ranked 1.. in the order the API returned them."""
    chunks = []
    for rank, r in enumerate(results, start=1):
        if not isinstance(r, dict):
            r = {}
        text = r.get("text")
        if not isinstance(text, str):  # Assistants: content = [{"type": "text", "text": ...}]
            parts = r.get("content")
            texts = [p.get("text") for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []
            text = "".join(t for t in texts if isinstance(t, str)) if texts else None
        chunks.append(
            ChunkRecord(
                call_id=call_id,
                rank=rank,
                file_id=as_str(r.get("file_id")),
                score=as_float(r.get("score")),
                text=text,
            )
        )
    return chunks


# -- citations -------------------------------------------------------------------------------------
_MARKER = re.compile(r"【(\d+):(\d+)†")


def citation_markers(text: Any, file_id: Any) -> list[tuple[int, int, str | None]]:
    """``(source, result index, file_id)`` for an Assistants marker like ``【4:0†file.txt】``.

    The second number is the 0-based index into the cited call's ``results``: in both real captures
    (FileSearchStreamingWorks, FileSearchWorks) ``【4:0†...】`` names the file of ``results[0]``.
    """
    if not isinstance(text, str):
        return []
    return [(int(m.group(1)), int(m.group(2)), as_str(file_id)) for m in _MARKER.finditer(text)]


def resolve_citations(rec: RunRecord) -> None:
    """Mark the record's chunks cited, from the citation facts kept in ``rec.extra``.

    Assistants markers name a result index; the marker's first number tells calls apart, and is only
    trusted when there are as many distinct numbers as calls. Responses annotations name only a
    file, so every chunk of a cited file counts as cited.
    """
    for c in rec.chunks:
        c.cited, c.cited_by = False, None
    markers: list[list[Any]] = rec.extra.get("citations", [])
    if markers:
        call_ids = list(dict.fromkeys(c.call_id for c in rec.chunks))
        sources = sorted({m[0] for m in markers})
        for source, index, fid in markers:
            hits = [
                c for c in rec.chunks if c.rank == index + 1 and (fid is None or c.file_id in (fid, None))
            ]
            if len({c.call_id for c in hits}) > 1:
                hits = [
                    c
                    for c in hits
                    if len(sources) == len(call_ids) and c.call_id == call_ids[sources.index(source)]
                ]
            for c in hits:
                c.cited, c.cited_by = True, "result"
    cited_files = rec.extra.get("cited_files")
    if cited_files:
        for c in rec.chunks:
            if not c.cited and c.file_id in cited_files:
                c.cited, c.cited_by = True, "file"


# -- file_search calls -------------------------------------------------------------------------------
Calls = dict[str, list[ChunkRecord] | None]
"""file_search call id → its results as chunks, ``None`` when the wire did not carry the results."""


def set_calls(rec: RunRecord, calls: Calls, *, count_known: bool) -> None:
    """Fill the record's file_search fields from its calls.

    ``count_known``: the exchange saw the whole list of the run's tool calls, so zero calls is a fact.
    ``retrieved_chunks`` is only a number when every call's results were carried.
    """
    rec.extra["fs_calls"] = {cid: chunks is not None for cid, chunks in calls.items()}
    rec.chunks = [c for chunks in calls.values() if chunks for c in chunks]
    rec.file_search_calls = len(calls) if calls or count_known else None
    known = all(chunks is not None for chunks in calls.values())
    rec.retrieved_chunks = (
        sum(len(ch) for ch in calls.values() if ch) if known and rec.file_search_calls is not None else None
    )


def calls_of(rec: RunRecord) -> Calls:
    """The inverse of :func:`set_calls`: the record's calls with their chunks."""
    flags: dict[str, bool] = rec.extra.get("fs_calls", {})
    calls: Calls = {cid: [] if known else None for cid, known in flags.items()}
    for c in rec.chunks:
        existing = calls.get(c.call_id)
        if existing is None:
            calls[c.call_id] = existing = []
        existing.append(c)
    return calls
