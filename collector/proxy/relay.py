"""The relay: a caller's request to the upstream, the upstream's bytes back to the caller as they come.

It works at the level of asyncio protocols with llhttp (``httptools``) parsing both directions, so an
event crosses the proxy inside two ``data_received`` calls with no task switch: upstream read, one
write to the caller, then the tap. Per exchange (:class:`Exchange`):

1. the request is parsed (:class:`CallerConnection`); a JSON-sized body (up to
   :data:`MAX_BUFFERED_BODY` with a ``Content-Length``) is read whole first, so the tap and the
   optional ``include`` (:mod:`collector.include`) see it; bigger or chunked uploads stream through
   unread as they arrive;
2. it goes upstream on a pooled keep-alive connection (:mod:`collector.proxy.upstream`) with its
   method, raw path and query, end-to-end headers (:mod:`collector.proxy.headers`) and body bytes;
3. the upstream's status, reason and end-to-end headers go back, then each read of body bytes is
   written to the caller the moment it arrives, and only then fed to the tap;
4. the tap is closed exactly once and its records go to ``sink``: complete at the body's end,
   interrupted when the caller walked away (the upstream connection is closed too) or the upstream
   broke off (the caller's connection is cut as well: nothing is invented).

Compressed bodies are relayed compressed; only the tap's copy is decoded. Request headers are never
logged or stored; the background fetchers hold the auth headers only while their job is pending.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib
import logging
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import cast

import httptools

from collector._instrument_final import FinalFetcher, final_sink
from collector._instrument_steps import StepsBody, StepsFetcher, fold_fetched, offer_when_finished
from collector._instrument_stream import Capture, CollectingCapture, Sink, TapLike
from collector.include import inject_include
from collector.proxy.headers import accept_encoding_for_tap, request_headers, response_headers
from collector.proxy.upstream import UpstreamConnection, UpstreamPool, UpstreamProtocolError, set_nodelay
from collector.proxy.wire import (
    CONTINUE,
    LAST_CHUNK,
    MAX_HEAD,
    Framing,
    HeadMeter,
    chunk,
    error_response,
    request_head,
    response_framing,
    response_head,
)

__all__ = ["DECODABLE", "MAX_BUFFERED_BODY", "MAX_HEAD", "CallerConnection", "Exchange", "LocalRoute",
           "Relay", "RelayOptions", "TapFactory"]

log = logging.getLogger("runmeter.proxy")


def _decodable() -> frozenset[str]:
    codings = {"gzip", "x-gzip", "deflate"}
    # content_decoder() finds these through sys.modules, so importing them here is what enables them.
    for module, coding in (("brotli", "br"), ("brotlicffi", "br"), ("zstandard", "zstd")):
        with contextlib.suppress(ImportError):
            mod = importlib.import_module(module)
            if module == "brotlicffi":
                sys.modules.setdefault("brotli", mod)
            codings.add(coding)
    return frozenset(codings)


DECODABLE = _decodable()
"""Content codings the tap's copy can be decoded from (gzip/deflate always; br, zstd if installed)."""

MAX_BUFFERED_BODY = 32 * 1024 * 1024
"""Request bodies up to this size are read before forwarding (taps and ``include`` need them);
bigger ones, and chunked ones, stream through to the upstream unread."""

MAX_PIPELINED = 1024 * 1024
"""Bytes of pipelined requests held while an earlier exchange on the connection is relayed; beyond
this the caller's connection is not read until the earlier exchange ends."""

WRITE_BUFFER_HIGH = 16 * 1024
"""Bytes a slow caller may have pending before the upstream is no longer read for it (the rest waits
in the kernel's socket buffers, not in this process)."""

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
"""Methods the relay may send again when a pooled connection turns out dead before any response."""

_RUN_PATH = re.compile(r"/threads/(?:[^/]+/)?runs(?:/[^/]+(?:/submit_tool_outputs|/cancel)?)?/?$")
"""Endpoints whose non-streamed body is a Run (the steps fetcher looks at those)."""

TapFactory = Callable[..., TapLike | None]
"""The signature of :func:`collector.taps.tap_for`."""

LocalRoute = Callable[[], tuple[str, bytes]]
"""A route the proxy answers itself (outside the prefix): returns ``(content_type, body)``."""


@dataclass(frozen=True, slots=True)
class RelayOptions:
    """How the relay behaves.

    ``upstream``: base URL the prefix maps to (``https://api.openai.com/v1``). ``include_results``:
    add runmeter's ``include`` to runs and file_search responses (off: the proxy then forwards every
    request byte for byte). ``prefix``: the local path prefix. ``routes``: ``GET`` paths outside the
    prefix the proxy answers itself (the sidecar seam); everything else outside it is a 404.
    """

    upstream: str
    include_results: bool = False
    prefix: str = "/v1"
    routes: Mapping[str, LocalRoute] | None = None


class Relay:
    """What every connection of one proxy shares: options, the upstream pool, the sink, the fetchers.

    ``sink`` receives each finished run record on the event loop thread and must be cheap
    (``Writer.submit``). ``steps``: lists a finished non-streamed file_search run's steps off the
    request path; ``final``: polls runs whose exchange was cut off until they are terminal.
    """

    def __init__(self, options: RelayOptions, pool: UpstreamPool, sink: Sink, tap_for: TapFactory, *,
                 steps: StepsFetcher | None = None, final: FinalFetcher | None = None) -> None:
        self.options = options
        self.pool = pool
        self.sink = sink
        self.tap_for = tap_for
        self.steps = steps
        self.final = final
        self.upstream = options.upstream.rstrip("/")
        self.prefix = options.prefix
        self.routes: Mapping[str, LocalRoute] = options.routes or {}
        self.callers: set[CallerConnection] = set()
        self.active = 0
        """Exchanges in flight (the tests and a graceful shutdown read it)."""

    def caller(self) -> CallerConnection:
        """A protocol for one new caller connection (``loop.create_server``'s factory)."""
        return CallerConnection(self)

    def close(self) -> None:
        """Cut every connection; open exchanges are recorded as interrupted (or complete, if their
        end-of-stream marker was already relayed)."""
        for caller in list(self.callers):
            caller.abort()
        self.pool.close()

    # -- recording ----------------------------------------------------------------------------------
    def begin(self, method: str, path: str, query: str, body: bytes | None,
              headers: list[tuple[str, str]]) -> Capture | None:
        """The capture for one exchange, or ``None`` when runmeter does not record it."""
        try:
            tap = self.tap_for(method, path, query, body, sent_wall=time.time(), sent_ns=time.monotonic_ns())
            if tap is None:
                return None
            url = self.upstream + path[len(self.prefix):]
            sink = self.sink
            caller_headers = dict(headers)  # the fetchers forward only auth and routing headers
            if self.final is not None:
                sink = final_sink(sink, self.final, url, caller_headers)
            if self.steps is not None and _RUN_PATH.search(path):
                collecting = CollectingCapture(tap, sink)
                collecting.on_finish = offer_when_finished(self.steps, collecting, url, caller_headers)
                return collecting
            return Capture(tap, sink)
        except Exception:
            log.exception("runmeter proxy: tap_for failed; exchange not recorded")
            return None

    def on_steps(self, steps: StepsBody) -> None:
        """A body fetched in the background (steps listing, final run): fold it like an exchange."""
        fold_fetched(self.tap_for, self.sink, steps)

    def on_final(self, fetched: StepsBody, url: str, headers: Mapping[str, str]) -> None:
        """A cut-off run read back in its final state: fold it, then list its steps."""
        self.on_steps(fetched)
        if self.steps is not None:
            self.steps.offer(url, headers, fetched.body)

    def local(self, method: str, path: str) -> bytes:
        """The whole response to a request outside the prefix."""
        route = self.routes.get(path) if method in ("GET", "HEAD") else None
        if route is None:
            return error_response(404, f"runmeter proxy: no route for {method} {path}; API calls go under "
                                       f"{self.prefix}/", type_="invalid_request_error", code=None)
        try:
            content_type, body = route()
        except Exception:
            log.exception("runmeter proxy: local route %s failed", path)
            return error_response(500, "runmeter proxy: local route failed", type_="server_error", code=None)
        head = response_head(200, "OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))],
                             Framing.LENGTH, close=False)
        return head + (b"" if method == "HEAD" else body)


class Exchange:
    """One request and its response, between a caller's connection and an upstream connection.

    The caller's connection feeds it the request (:meth:`add_body`, :meth:`body_complete`) and starts
    it (:meth:`start`) when it is its turn; the upstream connection reports the response as a
    :class:`collector.proxy.upstream.Listener`.
    """

    __slots__ = ("_caller", "_relay", "body", "body_done", "buffered", "capture", "client_framing", "conn",
                 "continue_", "finished", "head_sent", "headers", "holding", "http11", "keep_alive", "local",
                 "method", "path", "paused", "pending", "query", "replay", "retried", "started",
                 "upstream_framing")

    def __init__(self, relay: Relay, caller: CallerConnection, method: str, path: str, query: str,
                 headers: list[tuple[str, str]], *, http11: bool, keep_alive: bool, length: int | None,
                 chunked: bool) -> None:
        self._relay = relay
        self._caller = caller
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.http11 = http11
        self.keep_alive = keep_alive
        prefix = relay.prefix
        self.local = not (path.startswith(prefix) and path[len(prefix):len(prefix) + 1] == "/")
        self.buffered = not chunked and (length or 0) <= MAX_BUFFERED_BODY
        self.upstream_framing = (Framing.CHUNKED if chunked else Framing.LENGTH if length is not None
                                 else Framing.NONE)
        self.continue_ = any(n.lower() == "expect" and v.lower() == "100-continue" for n, v in headers)
        self.body: list[bytes] = []
        self.body_done = False
        self.started = False
        self.finished = False
        self.head_sent = False
        self.paused = False
        self.pending = 0
        self.holding = False
        self.retried = False
        self.replay: bytes | None = None
        self.conn: UpstreamConnection | None = None
        self.capture: Capture | None = None
        self.client_framing = Framing.NONE

    @property
    def ready(self) -> bool:
        """Whether the exchange can start: its body is whole, or it streams."""
        return self.body_done or not (self.buffered or self.local)

    # -- the request ---------------------------------------------------------------------------------
    def add_body(self, piece: bytes) -> None:
        """Request body bytes from the caller."""
        conn = self.conn
        if conn is not None and self.started and not self.buffered:
            conn.write(chunk(piece) if self.upstream_framing is Framing.CHUNKED else piece)
        elif not self.local:
            self.body.append(piece)
            if self.started and not self.buffered:  # a streamed body while the upstream connection opens
                self.pending += len(piece)
                if self.pending > MAX_PIPELINED and not self.paused:
                    self.paused = True
                    self._caller.pause_reading(True)

    def body_complete(self) -> None:
        """The caller sent the whole request."""
        self.body_done = True
        conn = self.conn
        if conn is not None and self.started and not self.buffered \
                and self.upstream_framing is Framing.CHUNKED:
            conn.write(LAST_CHUNK)

    def start(self) -> None:
        """Send the request upstream (or answer it here, outside the prefix)."""
        self.started = True
        relay = self._relay
        if self.local:
            self._caller.write(relay.local(self.method, self.path))
            self._done(close=not self.keep_alive)
            return
        relay.active += 1
        query = self.query
        accept_override: str | None = None
        if self.buffered:
            body: bytes | None = b"".join(self.body) if self.body else None
            self.body = []
            if relay.options.include_results:
                query, body = _inject(self.method, self.path, query, body)
            self.capture = relay.begin(self.method, self.path, query, body, self.headers)
            if self.capture is not None:
                accept = next((v for n, v in self.headers if n.lower() == "accept-encoding"), None)
                if accept:
                    accept_override = accept_encoding_for_tap(accept, DECODABLE)
            sent_length = any(n.lower() == "content-length" for n, _ in self.headers)
            framing = Framing.LENGTH if body or sent_length else Framing.NONE
            payload = body or b""
            length = len(payload)
        else:
            framing, payload = self.upstream_framing, b""
            length = next((int(v) for n, v in self.headers if n.lower() == "content-length"), 0)
        target = relay.pool.base_path + self.path[len(relay.prefix):] + (f"?{query}" if query else "")
        head = request_head(self.method, target, relay.pool.host_header,
                            request_headers(self.headers, accept_encoding=accept_override), framing, length)
        if self.buffered:
            self.replay = head + payload
            self._send(self.replay)
        else:
            self._send(None, head)

    def _streamed(self, head: bytes) -> bytes:
        """``head`` and the streamed body received so far, framed for the upstream."""
        pending, self.body = self.body, []
        self.pending = 0
        if self.upstream_framing is Framing.CHUNKED:
            return head + b"".join(chunk(p) for p in pending) + (LAST_CHUNK if self.body_done else b"")
        return head + b"".join(pending)

    def _send(self, data: bytes | None, head: bytes = b"") -> None:
        """Send ``data`` (a whole request), or when it is ``None`` ``head`` and the streamed body."""
        conn = self._relay.pool.take()
        if conn is not None:
            self._attach(conn)
            conn.send(self, self._streamed(head) if data is None else data, head_only=self.method == "HEAD")
        else:
            # A streamed body collects in self.body meanwhile (up to MAX_PIPELINED, then it waits in the
            # socket); the caller's connection is still read so that a caller hanging up is seen.
            asyncio.get_running_loop().create_task(self._connect_and_send(data, head))

    def _attach(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        if self._caller.write_paused:  # the caller still has not taken an earlier response's tail
            conn.pause(True)

    async def _connect_and_send(self, data: bytes | None, head: bytes = b"") -> None:
        try:
            conn = await self._relay.pool.connect()
        except asyncio.CancelledError:
            self._fail_before_response(ConnectionAbortedError("the proxy is shutting down"))
            raise
        except (OSError, TimeoutError, ValueError) as exc:
            log.warning("runmeter proxy: upstream %s unreachable for %s %s: %s", self._relay.upstream,
                        self.method, self.path, type(exc).__name__)
            self._fail_before_response(exc)
            return
        finally:
            if self.paused:
                self.paused = False
                self._caller.pause_reading(False)
        if self.finished:  # the caller left while the connection opened: keep it for the next one
            self._relay.pool.release(conn)
            return
        self._attach(conn)
        conn.send(self, self._streamed(head) if data is None else data, head_only=self.method == "HEAD")

    # -- the response (collector.proxy.upstream.Listener) --------------------------------------------
    def on_head(self, status: int, reason: str, headers: list[tuple[str, str]], framing: Framing) -> None:
        """The upstream's status line and headers: send them on, then start the tap."""
        self.client_framing = response_framing(self.method, status, framing, self.http11)
        # A response that comes before the whole request did leaves the caller's connection mid-body.
        self.keep_alive = self.keep_alive and self.body_done and self.client_framing is not Framing.CLOSE
        self.head_sent = True
        self._caller.write(response_head(status, reason, response_headers(headers), self.client_framing,
                                         close=not self.keep_alive))
        capture = self.capture
        if capture is not None:
            content_type = encoding = ""
            for name, value in headers:
                low = name.lower()
                if low == "content-type":
                    content_type = value
                elif low == "content-encoding":
                    encoding = value
            capture.started(status, content_type, encoding)
            if isinstance(capture, CollectingCapture) and not (status == 200 and "json" in content_type):
                capture.body = None
                capture.on_finish = None

    def on_data(self, pieces: list[bytes]) -> None:
        """Body bytes from one upstream read: to the caller first (one write, no copy), then the tap."""
        framing = self.client_framing
        if framing is Framing.CHUNKED:
            size = 0
            for piece in pieces:
                size += len(piece)
            self._caller.writelines([b"%x\r\n" % size, *pieces, b"\r\n"])
        elif framing is not Framing.NONE:
            self._caller.writelines(pieces)
        capture = self.capture
        if capture is not None:
            for piece in pieces:
                capture.push(piece)  # after the first token, a plain list append

    def on_end(self) -> None:
        """The upstream's response ended cleanly."""
        if self.finished:
            return
        if self.client_framing is Framing.CHUNKED:
            self._caller.write(LAST_CHUNK)
        self.conn = None
        self._done(close=not self.keep_alive)  # the caller sees the end before the tap's closing work
        if self.capture is not None:
            self.capture.finish(True)

    def on_lost(self, exc: BaseException, *, nothing_received: bool) -> None:
        """The upstream connection broke (or went silent too long) before the response ended."""
        if self.finished:
            return
        conn, self.conn = self.conn, None
        if (nothing_received and conn is not None and conn.reused and self.replay is not None
                and not self.retried and self.method in IDEMPOTENT):
            # A pooled connection the server had already closed: send again on a fresh one. Only an
            # idempotent request (RFC 9110 9.2.2): a POST that reached the server may have started a
            # billed run, so its caller gets the 502 and decides (the SDKs retry 502s themselves).
            self.retried = True
            asyncio.get_running_loop().create_task(self._connect_and_send(self.replay))
            return
        if not self.head_sent:
            log.warning("runmeter proxy: upstream %s failed for %s %s: %s", self._relay.upstream,
                        self.method, self.path,
                        exc if isinstance(exc, UpstreamProtocolError) else type(exc).__name__)
            self._fail_before_response(exc)
            return
        # Mid-body: the caller must see a broken body too, not a clean end.
        log.info("runmeter proxy: upstream broke off %s %s: %s", self.method, self.path, type(exc).__name__)
        self.finished = True
        self._relay.active -= 1
        if self.capture is not None:
            self.capture.finish(False)
        self._caller.abort()

    def on_upstream_writable(self, writable: bool) -> None:
        """The upstream's send buffer filled (or drained) while a request body streams."""
        if self.holding != (not writable):
            self.holding = not writable
            self._caller.pause_reading(self.holding)

    # -- the caller ----------------------------------------------------------------------------------
    def caller_writable(self, writable: bool) -> None:
        """The caller's send buffer filled (or drained): hold (or resume) reading the upstream."""
        if self.conn is not None:
            self.conn.pause(not writable)

    def caller_gone(self) -> None:
        """The caller's connection closed: close the upstream's too. The exchange is complete only if
        the end-of-stream marker was already relayed."""
        if self.finished:
            return
        self.finished = True
        if self.started and not self.local:
            self._relay.active -= 1
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abandon()
        if self.capture is not None:
            self.capture.closed_early()

    # -- endings -------------------------------------------------------------------------------------
    def _fail_before_response(self, exc: BaseException) -> None:
        if self.finished:
            return
        timeout = isinstance(exc, TimeoutError)
        if timeout:
            message, code = "runmeter proxy: the upstream did not answer in time", "upstream_timeout"
        elif isinstance(exc, UpstreamProtocolError):
            message, code = f"runmeter proxy: {exc}", "upstream_invalid_response"
        else:
            message, code = f"runmeter proxy: could not reach the upstream ({type(exc).__name__})", \
                "upstream_unreachable"
        close = not (self.keep_alive and self.body_done)
        self._caller.write(error_response(504 if timeout else 502, message, type_="upstream_error", code=code,
                                          close=close))
        self.conn = None
        self._done(close=close)
        if self.capture is not None:
            self.capture.finish(False)

    def _done(self, *, close: bool) -> None:
        self.finished = True
        if self.holding:  # the upstream connection went away full: the caller's next request is read
            self.holding = False
            self._caller.pause_reading(False)
        if not self.local:
            self._relay.active -= 1
        self._caller.exchange_done(self, close=close)


def _upgrade(headers: list[tuple[str, str]]) -> bool:
    """Whether a request asks to switch protocols (an ``Upgrade`` named in ``Connection``)."""
    upgrade = any(n.lower() == "upgrade" for n, _ in headers)
    return upgrade and any(n.lower() == "connection" and "upgrade" in v.lower() for n, v in headers)


def _inject(method: str, path: str, query: str, body: bytes | None) -> tuple[str, bytes | None]:
    try:
        injected = inject_include(method, path, query, body)
    except Exception:
        log.exception("runmeter proxy: include injection failed; request forwarded as sent")
        return query, body
    if injected is None:
        return query, body
    return injected.query, injected.body if injected.body is not None else body


class _NoCallbacks:
    """The protocol of the parser a closed connection keeps: it is never fed."""


_NO_REQUEST_PARSER = httptools.HttpRequestParser(_NoCallbacks())


class CallerConnection(asyncio.Protocol):
    """One connection from a caller: parses its requests and relays them one at a time, in order."""

    def __init__(self, relay: Relay) -> None:
        self._relay = relay
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head = HeadMeter()
        self._parsing: Exchange | None = None
        self._active: Exchange | None = None
        self._queue: collections.deque[Exchange] = collections.deque()
        self._queued_bytes = 0
        self._queue_full = False
        self._reading_paused = 0
        self._closing = False
        self.write_paused = False
        """Whether the caller's send buffer is over its high-water mark (upstream reads are held)."""

    # -- what exchanges call -------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Bytes to the caller."""
        transport = self.transport
        if transport is not None and not self._closing:
            transport.write(data)

    def writelines(self, data: list[bytes]) -> None:
        """Bytes to the caller, in one write."""
        transport = self.transport
        if transport is not None and not self._closing:
            transport.writelines(data)

    def abort(self) -> None:
        """Cut the connection at once (the caller sees a broken response)."""
        if self.transport is not None:
            self.transport.abort()

    def pause_reading(self, paused: bool) -> None:
        """Stop reading the caller (counted: several reasons may hold it)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._reading_paused += 1 if paused else -1
        if paused and self._reading_paused == 1:
            transport.pause_reading()
        elif not paused and self._reading_paused == 0:
            transport.resume_reading()

    def exchange_done(self, exchange: Exchange, *, close: bool) -> None:
        """``exchange`` sent its whole response: close, or start the next queued request."""
        if exchange is not self._active:
            return
        self._active = None
        if close:
            self._closing = True
            if self.transport is not None:
                self.transport.close()
            return
        if self._queue:
            self._next()

    # -- asyncio.Protocol ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        set_nodelay(transport)
        self.transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        self._relay.callers.add(self)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        head = self._head
        was_in_head, heads = head.in_head, head.heads
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject("runmeter proxy: protocol upgrades (WebSocket) and CONNECT are not relayed")
            return
        except httptools.HttpParserError as exc:
            if head.over:
                self._reject(f"runmeter proxy: request headers larger than {MAX_HEAD} bytes", status=431)
            else:
                self._reject(f"runmeter proxy: malformed request ({exc})")
            return
        if was_in_head and head.over_by_reads(was_in_head, heads, len(data)):
            self._reject(f"runmeter proxy: request headers larger than {MAX_HEAD} bytes", status=431)

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        # The parser calls back into this protocol (a reference cycle): a closed connection lets go of
        # it, so it is freed at once instead of at the next full GC.
        self._parser = _NO_REQUEST_PARSER
        self._relay.callers.discard(self)
        self._closing = True
        self.transport = None
        active, self._active = self._active, None
        if active is not None:
            active.caller_gone()
        self._queue.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self._active is not None:
            self._active.caller_writable(False)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._active is not None:
            self._active.caller_writable(True)

    # -- httptools callbacks ---------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._head.begin()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head.count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._head.count(len(name) + len(value) + 4)

    def on_headers_complete(self) -> None:
        self._head.done()
        parser = self._parser
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self._headers]
        length: int | None = None
        chunked = False
        for name, value in headers:
            low = name.lower()
            if low == "content-length":
                length = int(value)
            elif low == "transfer-encoding":
                chunked = "chunked" in value.lower()
        method = parser.get_method().decode("ascii")
        if method == "CONNECT" or _upgrade(headers):
            # llhttp raises HttpParserUpgrade right after this: data_received refuses it with a 400;
            # nothing of it goes upstream.
            self._parsing = None
            return
        path, _, query = self._url.decode("latin-1").partition("?")
        exchange = Exchange(self._relay, self, method, path, query, headers,
                            http11=parser.get_http_version() == "1.1", keep_alive=parser.should_keep_alive(),
                            length=length, chunked=chunked)
        self._parsing = exchange
        if self._active is None and not self._queue:
            self._active = exchange
            if exchange.continue_:
                self.write(CONTINUE)  # the body is read here before it goes on
            if exchange.ready:
                exchange.start()
        else:
            self._queue.append(exchange)

    def on_body(self, body: bytes) -> None:
        exchange = self._parsing
        if exchange is not None:
            if exchange is not self._active:
                self._queued_bytes += len(body)
                if self._queued_bytes > MAX_PIPELINED and not self._queue_full:
                    self._queue_full = True
                    self.pause_reading(True)
            exchange.add_body(body)

    def on_message_complete(self) -> None:
        exchange, self._parsing = self._parsing, None
        if exchange is None:
            return
        exchange.body_complete()
        if exchange is self._active and not exchange.started:
            exchange.start()

    # -- internals ---------------------------------------------------------------------------------------
    def _next(self) -> None:
        exchange = self._queue.popleft()
        self._active = exchange
        self._queued_bytes = max(0, self._queued_bytes - sum(len(p) for p in exchange.body))
        if self._queue_full and self._queued_bytes <= MAX_PIPELINED:
            self._queue_full = False
            self.pause_reading(False)
        if exchange.continue_:
            self.write(CONTINUE)
        if exchange.ready:
            exchange.start()

    def _reject(self, message: str, *, status: int = 400) -> None:
        active = self._active
        if active is not None and active.head_sent:
            self.abort()
            return
        self.write(error_response(status, message, type_="invalid_request_error", code=None, close=True))
        self._closing = True
        if self.transport is not None:
            self.transport.close()
        if active is not None:
            active.caller_gone()
        self._active = None
        self._queue.clear()
