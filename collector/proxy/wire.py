"""HTTP/1.1 message framing for the relay: pure functions from parsed parts to bytes.

The relay parses with ``httptools`` (llhttp) and writes with these. Bodies keep their bytes; only the
framing is per hop (RFC 9112): a chunked upstream body goes to the caller chunked again, one chunk per
read, a ``Content-Length`` body as it is, a body ended by the upstream closing its connection goes
chunked to an HTTP/1.1 caller and close-delimited to an HTTP/1.0 one.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable

__all__ = [
    "CONTINUE",
    "LAST_CHUNK",
    "MAX_HEAD",
    "MAX_HEAD_READ",
    "Framing",
    "HeadMeter",
    "chunk",
    "error_response",
    "request_head",
    "response_framing",
    "response_head",
]

MAX_HEAD = 64 * 1024
"""Bytes of start line and headers one message may carry, either way: a caller's request beyond it
gets a 431, an upstream's response beyond it a 502 (as nginx's "upstream sent too big header")."""

MAX_HEAD_READ = MAX_HEAD + 1024
"""Bytes of reads that began and ended inside one unfinished head before it is cut off: llhttp keeps an
unfinished header line in memory and reports it only at its end, so an endless line is caught by
counting reads. The slack covers what the per-header count leaves out (the start line, ``": "`` and
line ends), so a head within :data:`MAX_HEAD` passes however it is split."""

class HeadMeter:
    """How much of the HTTP head being parsed has arrived, against :data:`MAX_HEAD` (either direction).

    llhttp reports each header when its line ends, so the parser callbacks :meth:`count` complete lines
    (raising stops the parser), and :meth:`over_by_reads` counts the reads that began and ended inside
    one head: a line that never ends is cut off after :data:`MAX_HEAD_READ`.
    """

    __slots__ = ("heads", "in_head", "reads", "size")

    def __init__(self) -> None:
        self.size = 0
        self.reads = 0
        self.in_head = False
        self.heads = 0
        """Heads begun on the connection: a read counts toward a head only if no other began in it."""

    def begin(self) -> None:
        """A message begins (``on_message_begin``)."""
        self.size = self.reads = 0
        self.in_head = True
        self.heads += 1

    def count(self, size: int) -> None:
        """A complete part of the head (start line part, or a header: name, value and 4 for ``": "`` and
        the line end); raises ``ValueError`` beyond :data:`MAX_HEAD`, which httptools turns into an
        ``HttpParserError``."""
        self.size += size
        if self.size > MAX_HEAD:
            raise ValueError("head too large")

    def done(self) -> None:
        """The head is complete (``on_headers_complete``)."""
        self.in_head = False

    @property
    def over(self) -> bool:
        """Whether the head went past the limit (why the parser stopped)."""
        return self.size > MAX_HEAD or self.reads > MAX_HEAD_READ

    def over_by_reads(self, was_in_head: bool, heads: int, size: int) -> bool:
        """After feeding a read of ``size`` bytes: ``was_in_head`` and ``heads`` are what they were before
        it. True when reads inside one unfinished head passed :data:`MAX_HEAD_READ`."""
        if was_in_head and self.in_head and self.heads == heads:
            self.reads += size
            return self.reads > MAX_HEAD_READ
        return False


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"


class Framing(enum.Enum):
    """How a body is delimited on one hop."""

    NONE = "none"
    """No body (HEAD, 1xx, 204, 304)."""
    LENGTH = "length"
    """``Content-Length`` bytes."""
    CHUNKED = "chunked"
    """``Transfer-Encoding: chunked``."""
    CLOSE = "close"
    """Until the connection closes (HTTP/1.0 style)."""


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (``data`` must not be empty: an empty chunk ends the body)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def _lines(headers: Iterable[tuple[str, str]]) -> bytes:
    return b"".join(b"%b: %b\r\n" % (n.encode("latin-1"), v.encode("latin-1")) for n, v in headers)


def request_head(method: str, target: str, host: str, headers: Iterable[tuple[str, str]],
                 framing: Framing, length: int = 0) -> bytes:
    """The request line and headers for the upstream: ``Host`` first, then ``headers`` in the caller's
    order, then the framing header (``Content-Length: length`` or ``Transfer-Encoding: chunked``)."""
    tail = (b"Content-Length: %d\r\n" % length if framing is Framing.LENGTH
            else b"Transfer-Encoding: chunked\r\n" if framing is Framing.CHUNKED else b"")
    return (b"%b %b HTTP/1.1\r\nHost: %b\r\n" % (method.encode("ascii"), target.encode("latin-1"),
                                                  host.encode("latin-1"))
            + _lines(headers) + tail + b"\r\n")


def response_framing(method: str, status: int, upstream: Framing, client_http11: bool) -> Framing:
    """How the caller's copy of a response body is delimited, given the upstream's framing."""
    if method == "HEAD" or status < 200 or status in (204, 304):
        return Framing.NONE
    if upstream is Framing.CHUNKED or upstream is Framing.CLOSE:
        return Framing.CHUNKED if client_http11 else Framing.CLOSE
    return upstream


def response_head(status: int, reason: str, headers: Iterable[tuple[str, str]], framing: Framing,
                  *, close: bool) -> bytes:
    """The status line and headers for the caller. ``headers`` are end-to-end (a ``Content-Length``
    among them stays: the body is relayed unchanged); ``close`` adds ``Connection: close``."""
    tail = b"Transfer-Encoding: chunked\r\n" if framing is Framing.CHUNKED else b""
    if close:
        tail += b"Connection: close\r\n"
    return (b"HTTP/1.1 %d %b\r\n" % (status, reason.encode("latin-1"))) + _lines(headers) + tail + b"\r\n"


_REASONS = {400: "Bad Request", 404: "Not Found", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 502: "Bad Gateway", 504: "Gateway Timeout"}


def error_response(status: int, message: str, *, type_: str, code: str | None, close: bool = False) -> bytes:
    """A whole response in the API's error shape (``{"error": {message, type, param, code}}``)."""
    body = json.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}}).encode()
    reason = _REASONS.get(status, "Error")
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    return response_head(status, reason, headers, Framing.LENGTH, close=close) + body
