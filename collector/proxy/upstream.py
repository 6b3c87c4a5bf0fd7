"""Connections to the upstream API: one asyncio protocol per connection, a keep-alive pool over them.

An :class:`UpstreamConnection` carries one exchange at a time. It parses the response with llhttp
(``httptools``) right in ``data_received`` and reports to its :class:`Listener` (the relay's exchange)
synchronously: the head, each read's body bytes (the pieces between the chunk framing, otherwise
as they came), the end, or the loss of the connection. No task, queue or buffer sits between the
upstream's socket and the caller's.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from typing import Any, Protocol, cast

import httptools
from yarl import URL

from collector.proxy.wire import MAX_HEAD, Framing, HeadMeter

__all__ = ["Listener", "UpstreamConnection", "UpstreamPool", "UpstreamProtocolError", "check_upstream"]

IDLE_TIMEOUT = 15.0
"""Seconds a pooled connection may sit idle before it is not reused (servers drop idle ones too)."""


def check_upstream(base_url: str) -> URL:
    """``base_url`` parsed, or a ``ValueError`` saying what an upstream URL looks like."""
    url = URL(base_url)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"upstream {base_url!r} is not an http(s) URL such as https://api.openai.com/v1")
    return url


class Listener(Protocol):
    """What an upstream connection reports to: the exchange it carries."""

    def on_head(self, status: int, reason: str, headers: list[tuple[str, str]], framing: Framing) -> None: ...

    def on_data(self, pieces: list[bytes]) -> None: ...

    def on_end(self) -> None: ...

    def on_lost(self, exc: BaseException, *, nothing_received: bool) -> None: ...

    def on_upstream_writable(self, writable: bool) -> None: ...


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Small writes (one SSE event) leave at once."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _NoCallbacks:
    """The protocol of the parser a closed connection keeps: it is never fed."""


_NO_RESPONSE_PARSER = httptools.HttpResponseParser(_NoCallbacks())


class UpstreamProtocolError(Exception):
    """The upstream answered with something the proxy cannot relay (not HTTP/1.x, a protocol switch,
    a head beyond :data:`~collector.proxy.wire.MAX_HEAD`); the message says which."""


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to the upstream (see the module docstring)."""

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.listener: Listener | None = None
        self.reused = False
        self.idle_since = 0.0
        self._head_only = False
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head = HeadMeter()
        self._pieces: list[bytes] = []
        self._ended = False
        self._interim = False
        self._surplus = False
        self._framing = Framing.NONE
        self._received = False
        self._reusable = True
        self._last_rx = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # -- the exchange's side -----------------------------------------------------------------------
    def send(self, listener: Listener, data: bytes, *, head_only: bool) -> None:
        """Carry ``listener``'s exchange: write its request (head and whatever body is ready)."""
        assert self.transport is not None
        self.listener = listener
        self._head_only = head_only
        self._ended = self._received = self._surplus = False
        self._last_rx = self._pool.loop.time()
        self._timer = self._pool.loop.call_later(self._pool.read_timeout, self._check_silence)
        self.transport.write(data)

    def write(self, data: bytes) -> None:
        """More of the request body."""
        if self.transport is not None:
            self._last_rx = self._pool.loop.time()
            self.transport.write(data)

    def abandon(self) -> None:
        """The exchange is over before its response was: this connection cannot be reused."""
        self.listener = None
        self._cancel_timer()
        if self.transport is not None:
            self.transport.abort()

    def pause(self, paused: bool) -> None:
        """Stop (or resume) reading the response while the caller cannot take more."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if paused:
                transport.pause_reading()
            else:
                transport.resume_reading()

    # -- asyncio.Protocol --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        set_nodelay(transport)
        self._pool.opened(self)

    def data_received(self, data: bytes) -> None:
        listener = self.listener
        if listener is None:  # bytes nobody asked for: the connection is not fit for reuse
            self._reusable = False
            if self.transport is not None:
                self.transport.close()
            return
        self._received = True
        self._last_rx = self._pool.loop.time()
        head = self._head
        was_in_head, heads = head.in_head, head.heads
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:  # (not subclasses)
            if not self._ended:
                if isinstance(exc, httptools.HttpParserUpgrade):
                    reason = "the upstream switched protocols; the proxy relays HTTP only"
                elif head.over:
                    reason = f"the upstream's response headers are larger than {MAX_HEAD} bytes"
                else:
                    reason = f"malformed upstream response: {exc}"
                self._fail(UpstreamProtocolError(reason))
                return
            self._reusable = False  # junk after a whole response: the response stands, the connection not
        if was_in_head and head.over_by_reads(was_in_head, heads, len(data)):
            self._fail(UpstreamProtocolError(
                f"the upstream's response headers are larger than {MAX_HEAD} bytes"))
            return
        pieces = self._pieces
        if pieces:
            self._pieces = []
            listener.on_data(pieces)
        if self._ended and self.listener is listener:
            self._complete(listener)

    def eof_received(self) -> bool | None:
        return False  # close; connection_lost tells the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        # The parser calls back into this protocol (a reference cycle): a closed connection lets go of
        # it, so it is freed at once instead of at the next full GC.
        self._parser = _NO_RESPONSE_PARSER
        self._pool.closed(self)
        self._cancel_timer()
        listener, self.listener = self.listener, None
        self.transport = None
        if listener is None:
            return
        if self._framing is Framing.CLOSE and not self._head_only and exc is None:
            if self._pieces:
                pieces, self._pieces = self._pieces, []
                listener.on_data(pieces)
            listener.on_end()  # a close-delimited body ends here
            return
        listener.on_lost(exc or ConnectionResetError("the upstream closed the connection"),
                         nothing_received=not self._received)

    def pause_writing(self) -> None:
        if self.listener is not None:
            self.listener.on_upstream_writable(False)

    def resume_writing(self) -> None:
        if self.listener is not None:
            self.listener.on_upstream_writable(True)

    # -- httptools callbacks -------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._ended:  # a second response to one request: ignored, and the connection is not reused
            self._surplus = True
            self._reusable = False
        self._headers = []
        self._reason = b""
        self._head.begin()

    def on_status(self, status: bytes) -> None:
        self._reason += status
        self._head.count(len(status))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._head.count(len(name) + len(value) + 4)

    def on_headers_complete(self) -> None:
        self._head.done()
        if self._surplus:
            return
        status = self._parser.get_status_code()
        # 103 Early Hints and the like: not relayed, the final response follows. After a 101, llhttp
        # raises HttpParserUpgrade and data_received fails the exchange: nothing goes to the caller.
        self._interim = 100 <= status < 200
        if self._interim:
            return
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self._headers]
        framing = Framing.CLOSE
        for name, value in headers:
            low = name.lower()
            if low == "transfer-encoding" and "chunked" in value.lower():
                framing = Framing.CHUNKED
                break
            if low == "content-length":
                framing = Framing.LENGTH
        if self._head_only or status in (204, 304):
            framing = Framing.NONE
        self._framing = framing
        if not self._parser.should_keep_alive() or framing is Framing.CLOSE:
            self._reusable = False
        listener = self.listener
        if listener is not None:
            listener.on_head(status, self._reason.decode("latin-1"), headers, framing)
        if self._head_only:
            # llhttp does not know the request was HEAD and would wait for a body: end here and do
            # not reuse the connection.
            self._reusable = False
            self._ended = True

    def on_body(self, body: bytes) -> None:
        if not self._head_only and not self._surplus:
            self._pieces.append(body)

    def on_message_complete(self) -> None:
        if self._surplus:
            return
        if self._interim:
            self._interim = False
            return
        self._ended = True

    # -- internals ------------------------------------------------------------------------------------
    def _complete(self, listener: Listener) -> None:
        self.listener = None
        self._cancel_timer()
        # Back in the pool before the exchange hears of the end: the caller's next (pipelined) request
        # starts inside on_end and should find this connection.
        if self._reusable and self.transport is not None and not self.transport.is_closing():
            self.pause(False)  # its last read may have filled a slow caller's buffer
            self._pool.release(self)
        elif self.transport is not None:
            self.transport.close()
        listener.on_end()

    def _fail(self, exc: BaseException) -> None:
        listener, self.listener = self.listener, None
        self._cancel_timer()
        if self.transport is not None:
            self.transport.abort()
        if listener is not None:
            listener.on_lost(exc, nothing_received=False)

    def _check_silence(self) -> None:
        self._timer = None
        if self.listener is None:
            return
        silent = self._pool.loop.time() - self._last_rx
        if silent >= self._pool.read_timeout:
            self._fail(TimeoutError(f"the upstream was silent for {silent:.0f} s"))
        else:
            self._timer = self._pool.loop.call_later(self._pool.read_timeout - silent, self._check_silence)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class UpstreamPool:
    """Keep-alive connections to one upstream base URL (``http`` or ``https``).

    ``take()`` returns an idle connection or ``None``; ``connect()`` opens a new one (within
    ``connect_timeout`` seconds); a connection whose response ended cleanly comes back by itself.
    No cookie jar, no redirects: the proxy relays, the caller decides.
    """

    def __init__(self, base_url: str, loop: asyncio.AbstractEventLoop, *, connect_timeout: float = 30.0,
                 read_timeout: float = 600.0, ssl_context: ssl.SSLContext | None = None) -> None:
        url = check_upstream(base_url)
        self.loop = loop
        self.host: str = url.host or ""
        self.port: int = url.port or (443 if url.scheme == "https" else 80)
        self.base_path = url.raw_path.rstrip("/")
        raw_host = url.raw_host or self.host
        shown = f"[{raw_host}]" if ":" in raw_host else raw_host
        self.host_header: str = shown if url.is_default_port() else f"{shown}:{self.port}"
        self.ssl: ssl.SSLContext | None = None
        if url.scheme == "https":
            self.ssl = ssl_context or ssl.create_default_context()
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle: list[UpstreamConnection] = []
        self._open: set[UpstreamConnection] = set()

    def take(self) -> UpstreamConnection | None:
        """A pooled connection that is still open and not idle too long, else ``None``."""
        idle = self._idle
        now = self.loop.time()
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if transport is not None and not transport.is_closing() and now - conn.idle_since < IDLE_TIMEOUT:
                conn.reused = True
                return conn
            if transport is not None:
                transport.close()
        return None

    async def connect(self) -> UpstreamConnection:
        """A new connection (raises ``OSError``/``TimeoutError``/``ssl.SSLError`` when it cannot)."""
        kwargs: dict[str, Any] = {}
        if self.ssl is not None:
            kwargs = {"ssl": self.ssl, "server_hostname": self.host}
        _, conn = await asyncio.wait_for(
            self.loop.create_connection(lambda: UpstreamConnection(self), self.host, self.port, **kwargs),
            self.connect_timeout)
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        """``conn`` finished an exchange cleanly: keep it for the next one."""
        conn.idle_since = self.loop.time()
        self._idle.append(conn)

    def opened(self, conn: UpstreamConnection) -> None:
        """Called by a connection once it is made."""
        self._open.add(conn)

    def closed(self, conn: UpstreamConnection) -> None:
        """Called by a connection once it is lost."""
        self._open.discard(conn)
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)

    def close(self) -> None:
        """Close every connection, idle or busy."""
        self._idle.clear()
        for conn in list(self._open):
            if conn.transport is not None:
                conn.transport.abort()
