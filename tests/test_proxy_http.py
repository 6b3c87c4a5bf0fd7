"""HTTP/1.1 at the proxy's edges, over raw sockets: pipelining, keep-alive on both sides, ``Expect``,
bodiless responses, every framing both ways, streamed uploads, malformed and misbehaving peers,
stale pooled connections, backpressure and callers that hang up early.

The caller is a plain socket (an HTTP client library would hide the framing); upstreams are small
threaded TCP servers (:class:`RawUpstream`) whose handlers write exact bytes, misbehaving on purpose.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

import collector.proxy.relay as relay_module
from collector.proxy import Proxy
from collector.record import RunRecord

TIMEOUT = 5.0


# -- a byte reader over a blocking socket --------------------------------------------------------------
class Incomplete(Exception):
    """The peer ended the connection in the middle of a message."""


class Reader:
    """Buffered reads from a blocking socket; ``b""`` from the socket means the peer closed."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def fill(self) -> bool:
        """One more read; False at EOF or reset."""
        try:
            data = self.sock.recv(262144)
        except (ConnectionResetError, ConnectionAbortedError):
            return False
        self.buf += data
        return bool(data)

    def until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            if not self.fill():
                raise Incomplete(f"closed before {marker!r}; have {self.buf[:200]!r}")
        end = self.buf.index(marker) + len(marker)
        out = bytes(self.buf[:end])
        del self.buf[:end]
        return out

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self.fill():
                raise Incomplete(f"closed after {len(self.buf)} of {n} bytes")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def rest(self) -> bytes:
        while self.fill():
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def chunked(self) -> bytes:
        body = b""
        while True:
            size = int(self.until(b"\r\n")[:-2].split(b";")[0], 16)
            if size == 0:
                self.until(b"\r\n")  # no trailers are sent by anyone here
                return body
            body += self.exact(size)
            if self.exact(2) != b"\r\n":
                raise AssertionError("bad chunk end")

    def at_eof(self, timeout: float = TIMEOUT) -> bool:
        """Whether the peer closes (or resets) the connection within ``timeout`` with nothing more sent."""
        self.sock.settimeout(timeout)
        try:
            return not self.fill() and not self.buf
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(TIMEOUT)


def parse_head(head: bytes) -> tuple[bytes, list[tuple[str, str]]]:
    lines = head[:-4].split(b"\r\n")
    headers = [(n.decode().strip(), v.decode().strip())
               for n, _, v in (line.partition(b":") for line in lines[1:])]
    return lines[0], headers


def get(headers: list[tuple[str, str]], name: str) -> str | None:
    return next((v for n, v in headers if n.lower() == name), None)


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    framing: str  # "length", "chunked", "close" or "none"

    def header(self, name: str) -> str | None:
        return get(self.headers, name)

    def json(self) -> dict[str, object]:
        out: dict[str, object] = json.loads(self.body)
        return out


def read_response(reader: Reader, *, head_request: bool = False) -> Response:
    """One response as an HTTP/1.1 client reads it (RFC 9112 §6.3)."""
    line, headers = parse_head(reader.until(b"\r\n\r\n"))
    version, status, reason = line.decode().split(" ", 2)
    assert version in ("HTTP/1.1", "HTTP/1.0")
    code = int(status)
    te, length = get(headers, "transfer-encoding"), get(headers, "content-length")
    if head_request or code in (204, 304) or 100 <= code < 200:
        return Response(code, reason, headers, b"", "none")
    if te is not None:
        assert te.lower() == "chunked" and length is None
        return Response(code, reason, headers, reader.chunked(), "chunked")
    if length is not None:
        return Response(code, reason, headers, reader.exact(int(length)), "length")
    return Response(code, reason, headers, reader.rest(), "close")


OPEN: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_callers() -> Iterator[None]:
    """A failed test leaves no socket open (a ResourceWarning is an error here)."""
    yield
    while OPEN:
        OPEN.pop().close()


class Caller:
    """A raw client connection to the proxy."""

    def __init__(self, port: int, *, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        OPEN.append(self.sock)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(("127.0.0.1", port))
        self.reader = Reader(self.sock)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, *, head_request: bool = False) -> Response:
        return read_response(self.reader, head_request=head_request)

    def close(self) -> None:
        self.sock.close()


# -- upstreams -----------------------------------------------------------------------------------------
@dataclass
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    conn: int

    def header(self, name: str) -> str | None:
        return get(self.headers, name)


@dataclass
class Conn:
    """One accepted upstream connection, as its handler sees it."""

    sock: socket.socket
    reader: Reader
    number: int
    upstream: RawUpstream
    served: int = 0

    def request(self) -> Request | None:
        """The next request (body read per its framing), or None when the proxy closed the connection."""
        try:
            head = self.reader.until(b"\r\n\r\n")
        except Incomplete:
            return None
        line, headers = parse_head(head)
        method, target, _ = line.decode().split(" ")
        te, length = get(headers, "transfer-encoding"), get(headers, "content-length")
        body = self.reader.chunked() if te == "chunked" else self.reader.exact(int(length or 0))
        req = Request(method, target, headers, body, self.number)
        self.upstream.requests.append(req)
        self.served += 1
        return req

    def head(self) -> Request:
        """Only the next request's head (its body stays unread)."""
        line, headers = parse_head(self.reader.until(b"\r\n\r\n"))
        method, target, _ = line.decode().split(" ")
        req = Request(method, target, headers, b"", self.number)
        self.upstream.requests.append(req)
        return req

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)


Handler = Callable[[Conn], None]


@dataclass
class RawUpstream:
    """A threaded TCP server: ``handler`` runs for each accepted connection in its own thread."""

    handler: Handler
    backlog: int = 64
    requests: list[Request] = field(default_factory=list)
    accepted: int = 0
    errors: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(self.backlog)
        self.port = self.listener.getsockname()[1]
        self.socks: list[socket.socket] = []
        self._stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _accept(self) -> None:
        while not self._stop:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            sock.settimeout(TIMEOUT)
            self.socks.append(sock)
            conn = Conn(sock, Reader(sock), self.accepted, self)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: Conn) -> None:
        try:
            self.handler(conn)
        except (OSError, Incomplete):
            pass  # the proxy hung up: what several tests do on purpose
        except BaseException as exc:  # an assertion in a handler fails the test in close()
            self.errors.append(exc)
        finally:
            with contextlib.suppress(OSError):
                conn.sock.close()

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for sock in self.socks:
            with contextlib.suppress(OSError):
                sock.close()
        self.thread.join(5)
        assert not self.errors, self.errors


def keep_alive(respond: Callable[[Request], bytes]) -> Handler:
    """Answer every request on the connection with ``respond(request)``'s bytes."""

    def handler(conn: Conn) -> None:
        while (req := conn.request()) is not None:
            conn.send(respond(req))

    return handler


def ok(body: bytes, *extra: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in extra)
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n%bContent-Length: %d\r\n\r\n%b" % (
        head.encode(), len(body), body)


def echo_target(req: Request) -> bytes:
    return ok(f"{req.method} {req.target} {len(req.body)}".encode())


class Records:
    def __init__(self) -> None:
        self.items: list[RunRecord] = []

    def __call__(self, record: RunRecord) -> None:
        self.items.append(record)


@contextlib.contextmanager
def proxy_for(upstream: RawUpstream, **kwargs: float) -> Iterator[Proxy]:
    with Proxy(upstream=upstream.url, sink=Records(), fetch_steps=False, fetch_final=False,
               **kwargs) as proxy:  # type: ignore[arg-type]
        yield proxy
    upstream.close()


def wait_for(cond: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@pytest.fixture
def quiet(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Fails the test if anything logged a warning or worse with a traceback (an unexpected exception)."""
    caplog.set_level(logging.DEBUG)
    yield caplog
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


# -- pipelining and keep-alive -------------------------------------------------------------------------
def test_pipelined_requests_in_one_send_get_their_responses_in_order(quiet: pytest.LogCaptureFixture) -> None:
    up = RawUpstream(keep_alive(echo_target))
    with proxy_for(up) as proxy:
        c = Caller(proxy.port)
        c.send(b"GET /v1/a?x=1 HTTP/1.1\r\nHost: p\r\n\r\n"
               b"POST /v1/b HTTP/1.1\r\nHost: p\r\nContent-Length: 5\r\n\r\nhello"
               b"PUT /v1/c HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        got = [c.response() for _ in range(3)]
        assert [r.body for r in got] == [b"GET /v1/a?x=1 0", b"POST /v1/b 5", b"PUT /v1/c 3"]
        assert all(r.status == 200 and r.framing == "length" for r in got)
        assert not c.reader.buf  # nothing extra after the third
        c.close()
    assert [r.body for r in up.requests] == [b"", b"hello", b"abc"] and up.accepted == 1
    assert wait_for(lambda: proxy.relay.active == 0)


def test_keep_alive_reuses_connections_on_both_sides(quiet: pytest.LogCaptureFixture) -> None:
    up = RawUpstream(keep_alive(echo_target))
    with proxy_for(up) as proxy:
        c = Caller(proxy.port)
        for i in range(5):
            c.send(b"POST /v1/n/%d HTTP/1.1\r\nHost: p\r\nContent-Length: %d\r\n\r\n%b"
                   % (i, i, b"x" * i))
            r = c.response()
            assert r.status == 200 and r.body == b"POST /v1/n/%d %d" % (i, i)
            assert r.header("connection") is None  # kept open
        c.close()
        c2 = Caller(proxy.port)  # another caller takes the same pooled upstream connection
        c2.send(b"GET /v1/again HTTP/1.1\r\nHost: p\r\n\r\n")
        assert c2.response().body == b"GET /v1/again 0"
        c2.close()
    assert up.accepted == 1
    assert [r.conn for r in up.requests] == [1] * 6


def test_expect_100_continue_is_answered_before_the_body_is_sent(quiet: pytest.LogCaptureFixture) -> None:
    up = RawUpstream(keep_alive(echo_target))
    with proxy_for(up) as proxy:
        c = Caller(proxy.port)
        c.send(b"POST /v1/upload HTTP/1.1\r\nHost: p\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n")
        assert c.reader.until(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        c.send(b"hello world")
        r = c.response()
        assert r.status == 200 and r.body == b"POST /v1/upload 11"
        c.close()
    assert up.requests[0].body == b"hello world" and up.requests[0].header("expect") is None


# -- bodiless and interim responses --------------------------------------------------------------------
def test_head_keeps_the_length_header_and_sends_no_body(quiet: pytest.LogCaptureFixture) -> None:
    def respond(req: Request) -> bytes:
        if req.method == "HEAD":
            return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1234\r\n\r\n"
        return echo_target(req)

    up = RawUpstream(keep_alive(respond))
    with proxy_for(up) as proxy:
        c = Caller(proxy.port)
        c.send(b"HEAD /v1/files/f1 HTTP/1.1\r\nHost: p\r\n\r\n")
        r = c.response(head_request=True)
        assert r.status == 200 and r.header("content-length") == "1234" and r.header("connection") is None
        c.send(b"GET /v1/next HTTP/1.1\r\nHost: p\r\n\r\n")  # the same caller connection goes on
        assert c.response().body == b"GET /v1/next 0"
        c.close()
    assert [r.method for r in up.requests] == ["HEAD", "GET"]


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_have_no_body_and_keep_the_connection(status: int,
                                                           quiet: pytest.LogCaptureFixture) -> None:
    def respond(req: Request) -> bytes:
        if req.target.endswith("/empty"):
            reason = b"No Content" if status == 204 else b"Not Modified"
            return b"HTTP/1.1 %d %b\r\nETag: \"v1\"\r\n\r\n" % (status, reason)
        return echo_target(req)

    up = RawUpstream(keep_alive(respond))
    with proxy_for(up) as proxy:
        c = Caller(proxy.port)
        c.send(b"DELETE /v1/empty HTTP/1.1\r\nHost: p\r\n\r\nGET /v1/after HTTP/1.1\r\nHost: p\r\n\r\n")
        head = c.reader.until(b"\r\n\r\n")
        line, headers = parse_head(head)
        assert line == b"HTTP/1.1 %d %b" % (status, b"No Content" if status == 204 else b"Not Modified")
        assert get(headers, "etag") == '"v1"'
        assert get(headers, "transfer-encoding") is None and get(headers, "content-length") is None
        r = c.response()  # the next bytes are the next response, not a body
        assert r.body == b"GET /v1/after 0"
        c.close()
    assert up.accepted == 1


def test_interim_103_is_not_relayed_and_the_final_response_is(quiet: pytest.LogCaptureFixture) -> None:
    def respond(req: Request) -> bytes:
        return (b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
                + ok(b"final", "X-Final: 1"))

    up = RawUpstream(keep_alive(respond))
    with proxy_for(up) as proxy:
        c = Caller(proxy.port)
        c.send(b"GET /v1/hints HTTP/1.1\r\nHost: p\r\n\r\nGET /v1/hints HTTP/1.1\r\nHost: p\r\n\r\n")
        for _ in range(2):
            r = c.response()
            assert (r.status, r.body, r.header("x-final"), r.header("link")) == (200, b"final", "1", None)
        c.close()
    assert up.accepted == 1


# -- response framing ----------------------------------------------------------------------------------
BODY = bytes(range(256)) * 40  # 10 KB, every byte value


def chunked_response(req: Request) -> bytes:
    parts = [BODY[:1], BODY[1:5000], BODY[5000:]]
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"%x;ext=1\r\n%b\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n")


def close_delimited(conn: Conn) -> None:
    conn.request()
    conn.send(b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
    for i in range(0, len(BODY), 3000):
        conn.send(BODY[i:i + 3000])
        time.sleep(0.01)


@pytest.mark.parametrize("kind", ["length", "chunked", "close"])
def test_every_upstream_framing_reaches_the_caller_whole(kind: str, quiet: pytest.LogCaptureFixture) -> None:
    handler = {"length": keep_alive(lambda req: ok(BODY)), "chunked": keep_alive(chunked_response),
               "close": close_delimited}[kind]
    up = RawUpstream(handler)
    with proxy_for(up) as proxy:
        c = Caller(proxy.port)
        c.send(b"GET /v1/blob HTTP/1.1\r\nHost: p\r\n\r\n")
        r = c.response()
        assert r.status == 200 and r.body == BODY
        # HTTP/1.1 caller: a close-delimited body is re-framed as chunked and the connection stays
        assert r.framing == {"length": "length", "chunked": "chunked", "close": "chunked"}[kind]
        assert r.header("content-length") == (str(len(BODY)) if kind == "length" else None)
        c.send(b"GET /v1/blob HTTP/1.1\r\nHost: p\r\n\r\n")
        assert c.response().body == BODY
        c.close()
        h10 = Caller(proxy.port)  # an HTTP/1.0 caller gets a close-delimited body instead of chunks
        h10.send(b"GET /v1/blob HTTP/1.0\r\nHost: p\r\n\r\n")
        r10 = h10.response()
        assert r10.body == BODY and r10.framing == ("length" if kind == "length" else "close")
        assert r10.header("connection") == "close" and h10.reader.at_eof()
        h10.close()
    assert up.accepted == (1 if kind != "close" else 3)


# -- request bodies that stream ------------------------------------------------------------------------
def test_chunked_upload_streams_through_byte_for_byte(quiet: pytest.LogCaptureFixture) -> None:
    payload = os.urandom(200_000)
    seen_first = threading.Event()

    def handler(conn: Conn) -> None:
        req = conn.head()
        assert req.header("transfer-encoding") == "chunked" and req.header("content-length") is None
        first = conn.reader.until(b"\r\n")
        seen_first.set()  # before the caller has sent the rest
        size = int(first[:-2], 16)
        body = conn.reader.exact(size)
        assert conn.reader.exact(2) == b"\r\n"
        body += conn.reader.chunked()
        req.body = body
        conn.send(ok(hashlib.sha256(body).hexdigest().encode()))

    up = RawUpstream(handler)
    with proxy_for(up) as proxy:
        c = Caller(proxy.port)
        c.send(b"POST /v1/files HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n"
               b"Content-Type: multipart/form-data; boundary=x\r\n\r\n")
        c.send(b"%x\r\n%b\r\n" % (1000, payload[:1000]))
        assert seen_first.wait(TIMEOUT), "the first chunk did not go on before the upload ended"
        for i in range(1000, len(payload), 49_999):
            piece = payload[i:i + 49_999]
            c.send(b"%x\r\n%b\r\n" % (len(piece), piece))
        c.send(b"0\r\n\r\n")
        r = c.response()
        assert r.status == 200 and r.body == hashlib.sha256(payload).hexdigest().encode()
        c.close()
    assert up.requests[0].body == payload
    assert up.requests[0].header("content-type") == "multipart/form-data; boundary=x"


def test_upload_above_the_buffer_limit_streams_with_its_length(monkeypatch: pytest.MonkeyPatch,
                                                              quiet: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(relay_module, "MAX_BUFFERED_BODY", 1000)
    payload = os.urandom(300_000)
    head_seen = threading.Event()

    def handler(conn: Conn) -> None:
        while True:
            try:
                req = conn.head()
            except Incomplete:
                return
            head_seen.set()
            req.body = conn.reader.exact(int(req.header("content-length") or 0))
            conn.send(ok(hashlib.sha256(req.body).hexdigest().encode()))

    up = RawUpstream(handler)
    with proxy_for(up) as proxy:
        c = Caller(proxy.port)
        c.send(b"POST /v1/uploads/u1/parts HTTP/1.1\r\nHost: p\r\nContent-Length: %d\r\n\r\n%b"
               % (len(payload), payload[:5000]))
        assert head_seen.wait(TIMEOUT), "the upload waited for its whole body"
        c.send(payload[5000:])
        assert c.response().body == hashlib.sha256(payload).hexdigest().encode()
        c.send(b"POST /v1/small HTTP/1.1\r\nHost: p\r\nContent-Length: 3\r\n\r\nabc")  # and goes on
        assert c.response().body == hashlib.sha256(b"abc").hexdigest().encode()
        c.close()
    assert up.requests[0].body == payload and up.requests[0].header("content-length") == str(len(payload))
    assert up.accepted == 1


# -- bad peers -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [b"GET /v1/x HTTP/1.1\r\nHost: p\r\nContent-Length: abc\r\n\r\n",
                                 b"GARBAGE\r\n\r\n",
                                 b"POST /v1/x HTTP/1.1\r\nContent-Length: 1\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n"])
def test_malformed_request_is_a_400_in_the_api_shape_and_closes(bad: bytes,
                                                               quiet: pytest.LogCaptureFixture) -> None:
    up = RawUpstream(keep_alive(echo_target))
    with proxy_for(up) as proxy:
        c = Caller(proxy.port)
        c.send(bad)
        r = c.response()
        assert r.status == 400 and r.header("connection") == "close"
        error = r.json()["error"]
        assert isinstance(error, dict) and error["type"] == "invalid_request_error"
        assert str(error["message"]).startswith("runmeter proxy: malformed request")
        assert c.reader.at_eof()
        c.close()
    assert up.requests == []


@pytest.mark.parametrize("answer", [b"NOT HTTP AT ALL\r\n\r\n",
                                    b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                    b"Connection: Upgrade\r\n\r\n"])
def test_malformed_upstream_response_is_a_502(answer: bytes, quiet: pytest.LogCaptureFixture) -> None:
    def handler(conn: Conn) -> None:
        conn.request()
        conn.send(answer)
        time.sleep(1)

    up = RawUpstream(handler)
    with proxy_for(up) as proxy:
        c = Caller(proxy.port)
        c.send(b"GET /v1/x HTTP/1.1\r\nHost: p\r\n\r\n")
        r = c.response()
        error = r.json()["error"]
        assert r.status == 502 and error == {
            "message": error["message"], "type": "upstream_error", "param": None,  # type: ignore[index]
            "code": "upstream_invalid_response"}
        assert str(error["message"]).startswith(
            "runmeter proxy: the upstream switched protocols" if b" 101 " in answer
            else "runmeter proxy: malformed upstream response: ")
        c.close()
        assert wait_for(lambda: proxy.relay.active == 0)


def test_silent_upstream_is_a_504_after_the_read_timeout(quiet: pytest.LogCaptureFixture) -> None:
    def handler(conn: Conn) -> None:
        conn.request()
        conn.reader.at_eof(3)

    up = RawUpstream(handler)
    with proxy_for(up, read_timeout=0.5) as proxy:
        c = Caller(proxy.port)
        t0 = time.monotonic()
        c.send(b"GET /v1/slow HTTP/1.1\r\nHost: p\r\n\r\n")
        r = c.response()
        waited = time.monotonic() - t0
        assert r.status == 504 and r.json()["error"]["code"] == "upstream_timeout"  # type: ignore[index]
        assert 0.45 < waited < 2.5
        c.send(b"GET /v1/slow HTTP/1.1\r\nHost: p\r\n\r\n")  # the caller's connection is still good
        assert c.response().status == 504
        c.close()


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_upstream_breaking_mid_body_cuts_the_caller(framing: str, quiet: pytest.LogCaptureFixture) -> None:
    def handler(conn: Conn) -> None:
        conn.request()
        if framing == "length":
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"a" * 3000)
        else:
            conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk_of(b"a" * 3000))
        time.sleep(0.2)
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    up = RawUpstream(handler)
    with proxy_for(up) as proxy:
        c = Caller(proxy.port)
        c.send(b"GET /v1/stream HTTP/1.1\r\nHost: p\r\n\r\n")
        line, headers = parse_head(c.reader.until(b"\r\n\r\n"))
        assert line == b"HTTP/1.1 200 OK"
        if framing == "length":
            assert get(headers, "content-length") == "100000"
        else:
            assert get(headers, "transfer-encoding") == "chunked" and c.reader.until(b"\r\n") == b"bb8\r\n"
        assert c.reader.exact(3000) == b"a" * 3000  # what came went on at once
        if framing == "chunked":
            assert c.reader.exact(2) == b"\r\n"
        assert c.reader.at_eof()  # then the cut: no more bytes, no last chunk
        c.close()
        assert wait_for(lambda: proxy.relay.active == 0)


def chunk_of(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


# -- stale pooled connections ----------------------------------------------------------------------------
def test_pooled_connection_closed_while_idle_is_not_used(quiet: pytest.LogCaptureFixture) -> None:
    def handler(conn: Conn) -> None:
        req = conn.request()
        assert req is not None
        conn.send(echo_target(req))  # says nothing about closing, then closes once idle

    up = RawUpstream(handler)
    with proxy_for(up) as proxy:
        c = Caller(proxy.port)
        for i in range(3):
            c.send(b"GET /v1/r%d HTTP/1.1\r\nHost: p\r\n\r\n" % i)
            assert c.response().body == b"GET /v1/r%d 0" % i
            time.sleep(0.1)
        c.close()
    assert up.accepted == 3 and len(up.requests) == 3


def closes_on_second_request(conn: Conn) -> None:
    """Answers the first request on a connection; at the second, hangs up without a byte: the race of
    a server dropping an idle connection just as the proxy reuses it."""
    req = conn.request()
    assert req is not None
    conn.send(echo_target(req))
    conn.head()
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def test_request_on_a_connection_that_died_in_the_pool_is_sent_again(quiet: pytest.LogCaptureFixture) -> None:
    up = RawUpstream(closes_on_second_request)
    with proxy_for(up) as proxy:
        c = Caller(proxy.port)
        c.send(b"GET /v1/first HTTP/1.1\r\nHost: p\r\n\r\n")
        assert c.response().body == b"GET /v1/first 0"
        c.send(b"GET /v1/second HTTP/1.1\r\nHost: p\r\n\r\n")
        r = c.response()
        assert r.status == 200 and r.body == b"GET /v1/second 0"
        c.close()
    assert [(r.target, r.conn) for r in up.requests] == [("/v1/first", 1), ("/v1/second", 1),
                                                         ("/v1/second", 2)]


def test_post_on_a_dead_pooled_connection_is_not_sent_twice(caplog: pytest.LogCaptureFixture) -> None:
    """A POST may have started a billed run before the connection died: the caller gets a 502 and its
    SDK decides whether to retry; the proxy never sends it twice."""
    up = RawUpstream(closes_on_second_request)
    with proxy_for(up) as proxy:
        c = Caller(proxy.port)
        c.send(b"GET /v1/first HTTP/1.1\r\nHost: p\r\n\r\n")
        assert c.response().body == b"GET /v1/first 0"
        c.send(b"POST /v1/second HTTP/1.1\r\nHost: p\r\nContent-Length: 4\r\n\r\nbody")
        r = c.response()
        assert r.status == 502 and json.loads(r.body)["error"]["code"] == "upstream_unreachable"
        c.close()
        time.sleep(0.2)
    assert [(r.target, r.conn) for r in up.requests] == [("/v1/first", 1), ("/v1/second", 1)]
    assert up.accepted == 1


def test_streamed_upload_is_never_sent_twice(quiet: pytest.LogCaptureFixture) -> None:
    up = RawUpstream(closes_on_second_request)
    with proxy_for(up) as proxy:
        c = Caller(proxy.port)
        c.send(b"GET /v1/first HTTP/1.1\r\nHost: p\r\n\r\n")
        assert c.response().body == b"GET /v1/first 0"
        c.send(b"POST /v1/second HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"4\r\nbody\r\n0\r\n\r\n")
        r = c.response()
        assert r.status == 502
        c.close()
        time.sleep(0.2)
    assert [(r.target, r.conn) for r in up.requests] == [("/v1/first", 1), ("/v1/second", 1)]
    assert up.accepted == 1


# -- backpressure ----------------------------------------------------------------------------------------
BIG = 50 * 1024 * 1024


@dataclass
class Firehose:
    """Writes ``BIG`` bytes as one response as fast as the proxy takes them, counting what left."""

    data: bytes
    sent: int = 0

    def __call__(self, conn: Conn) -> None:
        conn.request()
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n"
                  % len(self.data))
        view = memoryview(self.data)
        while self.sent < len(self.data):
            self.sent += conn.sock.send(view[self.sent:self.sent + (1 << 20)])


def test_a_caller_that_does_not_read_stalls_the_upstream_then_gets_every_byte(
        quiet: pytest.LogCaptureFixture) -> None:
    hose = Firehose(os.urandom(BIG))
    up = RawUpstream(hose)
    with proxy_for(up) as proxy:
        c = Caller(proxy.port, rcvbuf=65536)
        c.send(b"GET /v1/files/big/content HTTP/1.1\r\nHost: p\r\n\r\n")
        time.sleep(1.0)
        at_1s = hose.sent
        time.sleep(0.5)
        stalled = hose.sent - at_1s
        buffered = max((conn.transport.get_write_buffer_size() for conn in list(proxy.relay.callers)
                        if conn.transport is not None), default=0)
        assert at_1s < BIG // 4, at_1s  # what the kernel's socket buffers hold, not the whole body
        assert stalled < 1 << 20, stalled
        assert buffered < 1 << 20, buffered  # the proxy itself holds at most about one read
        r = c.response()
        assert len(r.body) == BIG and hashlib.sha256(r.body).digest() == hashlib.sha256(hose.data).digest()
        c.close()


def slow_caller(proxy: Proxy) -> Caller:
    """A caller whose path from the proxy holds only a few KB in the kernel: the proxy's socket to it
    gets a small send buffer too, so one upstream read of 40 KB fills it and the proxy holds the rest."""
    before = set(proxy.relay.callers)
    caller = Caller(proxy.port, rcvbuf=4096)
    assert wait_for(lambda: len(proxy.relay.callers - before) == 1)
    (conn,) = proxy.relay.callers - before
    assert conn.transport is not None
    conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return caller


def test_a_pooled_connection_is_not_left_paused_by_a_slow_caller(quiet: pytest.LogCaptureFixture) -> None:
    body = os.urandom(40_000)  # one upstream read, whose end comes with the write that fills the caller
    up = RawUpstream(keep_alive(lambda req: ok(body) if req.target.endswith("big") else echo_target(req)))
    with proxy_for(up, read_timeout=2.0) as proxy:
        slow = slow_caller(proxy)
        slow.send(b"GET /v1/big HTTP/1.1\r\nHost: p\r\n\r\n")
        assert wait_for(lambda: len(up.requests) == 1 and proxy.relay.active == 0)  # relayed, not yet read
        for i in range(3):
            c = Caller(proxy.port)
            t0 = time.monotonic()
            c.send(b"GET /v1/after%d HTTP/1.1\r\nHost: p\r\n\r\n" % i)
            r = c.response()
            assert r.status == 200 and r.body == b"GET /v1/after%d 0" % i and time.monotonic() - t0 < 1
            c.close()
        assert slow.response().body == body
        slow.close()
    assert up.accepted == 1


def test_a_pipelined_response_after_a_stalled_one_is_held_too(quiet: pytest.LogCaptureFixture) -> None:
    small, hose = os.urandom(40_000), Firehose(os.urandom(20 << 20))

    def handler(conn: Conn) -> None:
        req = conn.request()
        assert req is not None and req.target == "/v1/small"
        conn.send(ok(small))
        hose(conn)

    up = RawUpstream(handler)
    with proxy_for(up) as proxy:
        c = slow_caller(proxy)
        c.send(b"GET /v1/small HTTP/1.1\r\nHost: p\r\n\r\nGET /v1/hose HTTP/1.1\r\nHost: p\r\n\r\n")
        time.sleep(1.0)
        buffered = max((conn.transport.get_write_buffer_size() for conn in list(proxy.relay.callers)
                        if conn.transport is not None), default=0)
        assert buffered < 1 << 20, buffered
        assert c.response().body == small
        r = c.response()
        assert hashlib.sha256(r.body).digest() == hashlib.sha256(hose.data).digest()
        c.close()
    assert up.accepted == 1


# -- callers that leave early ----------------------------------------------------------------------------
def test_caller_leaving_before_the_upstream_connection_is_open(quiet: pytest.LogCaptureFixture) -> None:
    # A listener whose accept queue is full: connecting to it hangs (SYNs are dropped).
    blocked = socket.socket()
    blocked.bind(("127.0.0.1", 0))
    blocked.listen(0)
    port = blocked.getsockname()[1]
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        fillers.append(s)
    probe = socket.socket()
    probe.settimeout(0.3)
    with pytest.raises(TimeoutError):  # the premise: a connection to it does not open
        probe.connect(("127.0.0.1", port))
    probe.close()
    try:
        with Proxy(upstream=f"http://127.0.0.1:{port}/v1", sink=Records(), fetch_steps=False,
                   fetch_final=False) as proxy:
            for request in (b"POST /v1/chat/completions HTTP/1.1\r\nHost: p\r\nContent-Length: 2\r\n\r\n{}",
                            b"POST /v1/files HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"1\r\nx\r\n"):
                c = Caller(proxy.port)
                c.send(request)
                assert wait_for(lambda: proxy.relay.active == 1)
                time.sleep(0.1)
                c.close()
                assert wait_for(lambda: proxy.relay.active == 0)
    finally:
        for s in fillers:
            s.close()
        blocked.close()


def test_caller_leaving_before_the_response_head_closes_the_upstream(quiet: pytest.LogCaptureFixture) -> None:
    upstream_saw_close = threading.Event()

    def handler(conn: Conn) -> None:
        conn.request()
        if conn.reader.at_eof(3):
            upstream_saw_close.set()

    up = RawUpstream(handler)
    records = Records()
    with Proxy(upstream=up.url, sink=records, fetch_steps=False, fetch_final=False) as proxy:
        c = Caller(proxy.port)
        body = b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":true}'
        c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n%b" % (len(body), body))
        assert wait_for(lambda: len(up.requests) == 1)
        c.close()
        assert upstream_saw_close.wait(TIMEOUT)
        assert wait_for(lambda: proxy.relay.active == 0)
    up.close()


def test_unreachable_upstream_for_a_streamed_upload_leaves_the_connection_usable(
        quiet: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Proxy(upstream=f"http://127.0.0.1:{port}/v1", sink=Records(), fetch_steps=False,
               fetch_final=False) as proxy:
        c = Caller(proxy.port)
        c.send(b"POST /v1/files HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n")
        assert c.response().status == 502
        c.send(b"GET /v1/models HTTP/1.1\r\nHost: p\r\n\r\n")
        assert c.response().status == 502
        c.close()


@pytest.mark.parametrize("extra", [b"junk", b"HTTP/1.1 200 OK\r\nContent-Le", ok(b"smuggled")])
def test_bytes_after_a_complete_response_do_not_spoil_it_or_the_next_one(
        extra: bytes, quiet: pytest.LogCaptureFixture) -> None:
    def handler(conn: Conn) -> None:
        while (req := conn.request()) is not None:
            conn.send(echo_target(req) + extra)  # more than the response: the connection is not reusable

    up = RawUpstream(handler)
    with proxy_for(up) as proxy:
        c = Caller(proxy.port)
        for i in range(3):
            c.send(b"GET /v1/r%d HTTP/1.1\r\nHost: p\r\n\r\n" % i)
            r = c.response()
            assert r.status == 200 and r.body == b"GET /v1/r%d 0" % i
        c.close()
    assert up.accepted == 3


def test_upstream_answering_before_the_upload_ends_closes_the_caller_after_the_answer(
        monkeypatch: pytest.MonkeyPatch, quiet: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(relay_module, "MAX_BUFFERED_BODY", 1000)
    refusal = b'{"error":{"message":"too large","type":"invalid_request_error","param":null,"code":null}}'

    def handler(conn: Conn) -> None:
        conn.head()
        conn.send(b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\nConnection: close\r\n\r\n%b" % (len(refusal), refusal))

    up = RawUpstream(handler)
    with proxy_for(up) as proxy:
        c = Caller(proxy.port)
        c.send(b"POST /v1/files HTTP/1.1\r\nHost: p\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 5000)
        r = c.response()
        assert (r.status, r.body, r.header("connection")) == (413, refusal, "close")
        with contextlib.suppress(OSError):
            c.send(b"x" * 100_000)  # the rest of the upload goes nowhere
        assert c.reader.at_eof()
        c.close()
        assert wait_for(lambda: proxy.relay.active == 0)


@pytest.mark.parametrize("shape", ["many lines", "one endless line"])
def test_endless_request_headers_are_a_431_not_memory(shape: str, quiet: pytest.LogCaptureFixture) -> None:
    up = RawUpstream(keep_alive(echo_target))
    with proxy_for(up) as proxy:
        c = Caller(proxy.port)
        endless = b"X-Endless: " if shape == "one endless line" else b""
        c.send(b"GET /v1/x HTTP/1.1\r\nHost: p\r\n" + endless)
        with contextlib.suppress(OSError):  # the proxy may hang up while this is still being sent
            for i in range(200):
                c.send(b"X-Filler-%d: %b\r\n" % (i, b"y" * 1000) if shape == "many lines" else b"y" * 1000)
                time.sleep(0.001)  # separate reads: one line spread over many
        r = c.response()
        assert r.status == 431 and r.header("connection") == "close"
        assert r.json()["error"]["type"] == "invalid_request_error"  # type: ignore[index]
        assert c.reader.at_eof()
        c.close()
        c2 = Caller(proxy.port)  # a head just under the limit is fine
        c2.send(b"GET /v1/x HTTP/1.1\r\nHost: p\r\nX-Big: %b\r\n\r\n" % (b"y" * 60_000))
        assert c2.response().body == b"GET /v1/x 0"
        c2.close()
    assert len(up.requests) == 1


def test_a_head_within_the_limit_passes_however_it_is_split(quiet: pytest.LogCaptureFixture) -> None:
    # counted size (url + name, value and 4 per header) exactly MAX_HEAD; the raw bytes are a little more
    raw = b"GET /v1/x HTTP/1.1\r\nHost: p\r\nX-Big: " + b"y" * (65536 - 23) + b"\r\n\r\n"
    up = RawUpstream(keep_alive(echo_target))
    with proxy_for(up) as proxy:
        for pieces in ([raw], [raw[:1], raw[1:-1], raw[-1:]]):
            c = Caller(proxy.port)
            for piece in pieces:
                c.send(piece)
                time.sleep(0.05)  # separate reads
            assert c.response().body == b"GET /v1/x 0", len(pieces)
            c.close()


def test_a_pipelined_body_never_counts_toward_the_next_head(quiet: pytest.LogCaptureFixture) -> None:
    up = RawUpstream(keep_alive(echo_target))
    with proxy_for(up) as proxy:
        c = Caller(proxy.port)
        c.send(b"POST /v1/a HTTP/1.1\r\nHo")  # a read that ends inside A's head
        time.sleep(0.05)
        # one read: the rest of A's head, its 70 kB body and the start of B's head
        c.send(b"st: p\r\nContent-Length: 70000\r\n\r\n" + b"x" * 70_000
               + b"GET /v1/b HTTP/1.1\r\nHost: p\r\n")
        time.sleep(0.05)
        c.send(b"\r\n")
        assert (c.response().body, c.response().body) == (b"POST /v1/a 70000", b"GET /v1/b 0")
        c.close()
    assert [(r.method, r.target, len(r.body)) for r in up.requests] == [("POST", "/v1/a", 70_000),
                                                                        ("GET", "/v1/b", 0)]


@pytest.mark.parametrize("shape", ["many lines", "one endless line"])
def test_endless_upstream_headers_are_a_502_not_memory(shape: str, quiet: pytest.LogCaptureFixture) -> None:
    stopped = threading.Event()

    def endless(conn: Conn) -> None:
        conn.request()
        with contextlib.suppress(OSError):  # the proxy hangs up once the head is too large
            conn.send(b"HTTP/1.1 200 OK\r\n" + (b"X-Endless: " if shape == "one endless line" else b""))
            for i in range(1_000):  # 1 MB of head that never ends
                conn.send(b"X-Filler-%d: %b\r\n" % (i, b"y" * 1000) if shape == "many lines" else b"y" * 1000)
                time.sleep(0.001)  # separate reads: one line spread over many
        stopped.set()

    def big_but_whole(conn: Conn) -> None:
        conn.request()
        conn.send(b"HTTP/1.1 200 OK\r\nX-Big: %b\r\nContent-Length: 2\r\n\r\nok" % (b"y" * 60_000))

    up = RawUpstream(endless)
    with proxy_for(up) as proxy:
        c = Caller(proxy.port)
        c.send(b"GET /v1/x HTTP/1.1\r\nHost: p\r\n\r\n")
        r = c.response()
        assert r.status == 502 and r.header("x-filler-0") is None
        assert "larger than 65536 bytes" in str(r.json()["error"]["message"])  # type: ignore[index]
        assert stopped.wait(TIMEOUT), "the proxy kept reading the endless head"
        c.close()
        assert wait_for(lambda: proxy.relay.active == 0)
    up2 = RawUpstream(big_but_whole)
    with proxy_for(up2) as proxy:  # a head just under the limit is relayed
        c = Caller(proxy.port)
        c.send(b"GET /v1/x HTTP/1.1\r\nHost: p\r\n\r\n")
        r = c.response()
        assert r.status == 200 and r.header("x-big") == "y" * 60_000 and r.body == b"ok"
        c.close()


@pytest.mark.parametrize("request_", [
    b"GET /v1/realtime HTTP/1.1\r\nHost: p\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n"])
def test_upgrade_and_connect_are_refused_and_never_forwarded(request_: bytes,
                                                            quiet: pytest.LogCaptureFixture) -> None:
    up = RawUpstream(keep_alive(echo_target))
    with proxy_for(up) as proxy:
        c = Caller(proxy.port)
        c.send(request_)
        r = c.response()
        assert r.status == 400 and r.header("connection") == "close"
        assert "not relayed" in str(r.json()["error"]["message"])  # type: ignore[index]
        assert c.reader.at_eof()
        c.close()
        time.sleep(0.1)
    assert up.requests == [] and up.accepted == 0
