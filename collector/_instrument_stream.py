"""One captured HTTP exchange: the tap it feeds, and the thin wrappers over the response byte stream.

A :class:`Capture` owns one tap and finalises it exactly once, on whichever exit comes first: the
body read to its end (complete), an error while reading, the response closed before its end, the
reading generator closed (abandoned), or the capture garbage collected. The stream wrappers forward
every chunk unchanged; per chunk they add one ``tap.feed`` call and a clock read.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import sys
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Protocol

from collector.record import RunRecord

log = logging.getLogger("runmeter.instrument")

Sink = Callable[[RunRecord], None]

_DONE_SENTINEL = b"data: [DONE]"
"""Chat and Assistants streams end with it; the SDK stops reading there, before the body's end."""


class TapLike(Protocol):
    """The part of ``collector.taps.Tap`` a capture drives."""

    def response_started(self, status: int, content_type: str, recv_ns: int) -> None: ...

    def feed(self, data: bytes, recv_ns: int) -> None: ...

    def close(self, *, complete: bool, now_wall: float, now_ns: int) -> list[RunRecord]: ...


class Capture:
    """Drives one tap through one exchange; every tap or sink error is logged and swallowed."""

    __slots__ = ("_buf", "_decode", "_last", "_prev", "_sink", "_tap", "_wall", "done", "on_finish", "push")

    def __init__(self, tap: TapLike, sink: Sink, wall: Callable[[], float] = time.time) -> None:
        self._tap: TapLike | None = tap
        self._sink = sink
        self._wall = wall
        self._decode: Callable[[bytes], bytes] | None = None
        self._last = b""
        self._prev = b""
        self._buf: list[bytes] | None = None
        self.push: Callable[[bytes], None] = self.feed
        """What the stream wrappers call per chunk: :meth:`feed`, then, once the tap keeps the rest of
        the stream undecoded (after the first token), the tap buffer's own ``append``."""
        self.done = False
        self.on_finish: Callable[[bool], None] | None = None
        """Called once after the tap closed, with ``complete`` (used to hand a body on)."""

    def started(self, status: int, content_type: str, content_encoding: str) -> None:
        """The response head arrived; pick a decoder for a compressed body."""
        tap = self._tap
        if tap is None:
            return
        try:
            if content_encoding and content_encoding.lower() != "identity":
                self._decode = content_decoder(content_encoding)
                if self._decode is None:
                    log.debug("runmeter: unsupported content-encoding %r; exchange not captured",
                              content_encoding)
                    self._drop()
                    return
            tap.response_started(status, content_type, time.monotonic_ns())
        except Exception:
            log.exception("runmeter: tap failed on the response head")
            self._drop()

    def feed(self, chunk: bytes) -> None:
        """One raw body chunk as the transport delivered it."""
        self._prev = self._last
        self._last = chunk
        tap = self._tap
        if tap is None:
            return
        try:
            decode = self._decode
            tap.feed(chunk if decode is None else decode(chunk), time.monotonic_ns())
            if decode is None:
                buf = getattr(tap, "buffer", None)
                if buf is not None:
                    self._buf = buf
                    self.push = buf.append
        except Exception:
            log.exception("runmeter: tap failed on a body chunk; exchange no longer captured")
            self._drop()

    def closed_early(self) -> None:
        """The response was closed before its end: complete only if the end-of-stream marker came."""
        if not self.done:
            buf = self._buf
            tail = (b"".join(buf[-2:]) if buf else self._prev + self._last).rstrip()
            self.finish(tail.endswith(_DONE_SENTINEL))

    def finish(self, complete: bool) -> None:
        """Close the tap (once) and hand its records to the sink."""
        if self.done:
            return
        self.done = True
        tap, self._tap = self._tap, None
        self._last = self._prev = b""
        self._buf = None
        self.push = _ignore
        records: list[RunRecord] = []
        if tap is not None:
            try:
                records = tap.close(complete=complete, now_wall=self._wall(), now_ns=time.monotonic_ns())
            except Exception:
                log.exception("runmeter: tap failed to close")
        for record in records or ():
            try:
                self._sink(record)
            except Exception:
                log.exception("runmeter: sink failed; record dropped")
        hook, self.on_finish = self.on_finish, None
        if hook is not None:
            try:
                hook(complete)
            except Exception:
                log.exception("runmeter: post-capture hook failed")

    def _drop(self) -> None:
        # A failing tap is closed as incomplete (whatever it folded so far may still be useful).
        self.finish(False)

    def __del__(self) -> None:
        # A finaliser runs wherever the garbage collector happens to run: only park the capture (a deque
        # append is atomic and takes no lock); finish_abandoned() closes it at the next request.
        if not self.done:
            _ABANDONED.append(self)


_ABANDONED: collections.deque[Capture] = collections.deque()


def finish_abandoned() -> None:
    """Close captures whose response was dropped unread (called at the next request and at close)."""
    while _ABANDONED:
        try:
            capture = _ABANDONED.popleft()
        except IndexError:  # another thread took the last one
            return
        with contextlib.suppress(Exception):
            capture.finish(False)


def _ignore(chunk: bytes) -> None:
    """``push`` of a finished capture: bytes the SDK still reads (after ``[DONE]``) are not needed."""


class CollectingCapture(Capture):
    """A capture that also keeps the (small, non-streamed) body for a post-capture hook."""

    __slots__ = ("body",)

    def __init__(self, tap: TapLike, sink: Sink, wall: Callable[[], float] = time.time) -> None:
        super().__init__(tap, sink, wall)
        self.body: list[bytes] | None = []

    def feed(self, chunk: bytes) -> None:
        """Keep the chunk, then feed it to the tap."""
        if self.body is not None:
            self.body.append(chunk)
        super().feed(chunk)


def content_decoder(content_encoding: str) -> Callable[[bytes], bytes] | None:
    """A chunk decoder for a ``Content-Encoding`` value, or ``None`` for one not supported here."""
    steps: list[Callable[[bytes], bytes]] = []
    for coding in reversed([c.strip().lower() for c in content_encoding.split(",")]):
        if coding in ("", "identity"):
            continue
        if coding in ("gzip", "x-gzip", "deflate"):
            steps.append(zlib.decompressobj(zlib.MAX_WBITS | 32).decompress)  # auto-detects gzip/zlib
        elif coding == "br" and "brotli" in sys.modules:
            steps.append(sys.modules["brotli"].Decompressor().process)
        elif coding == "zstd" and "zstandard" in sys.modules:
            steps.append(sys.modules["zstandard"].ZstdDecompressor().decompressobj().decompress)
        else:
            return None
    if len(steps) == 1:
        return steps[0]

    def chain(data: bytes) -> bytes:
        for step in steps:
            data = step(data)
        return data

    return chain


class _SyncTapped:
    """Body of the sync stream wrapper; mixed into the response module's ``SyncByteStream``."""

    def __init__(self, inner: Any, capture: Capture) -> None:
        self._runmeter_inner = inner
        self._runmeter_capture = capture

    def __iter__(self) -> Iterator[bytes]:
        capture = self._runmeter_capture
        try:
            for chunk in self._runmeter_inner:
                capture.push(chunk)  # looked up per chunk: it becomes a plain list append
                yield chunk
        except BaseException:
            # An error, or GeneratorExit: the reader walked away before the end.
            capture.closed_early()
            raise
        capture.finish(True)

    def close(self) -> None:
        try:
            self._runmeter_inner.close()
        finally:
            self._runmeter_capture.closed_early()

    def __getattr__(self, name: str) -> Any:
        # `elapsed` and anything else the client reads off its own stream.
        return getattr(self._runmeter_inner, name)


class _AsyncTapped:
    """Body of the async stream wrapper; mixed into the response module's ``AsyncByteStream``."""

    def __init__(self, inner: Any, capture: Capture) -> None:
        self._runmeter_inner = inner
        self._runmeter_capture = capture

    async def __aiter__(self) -> AsyncIterator[bytes]:
        capture = self._runmeter_capture
        # Iterated more than once by the SDK's drain after [DONE]: each pass continues the body.
        inner = self._runmeter_inner.__aiter__()
        try:
            async for chunk in inner:
                capture.push(chunk)
                yield chunk
        except BaseException:
            capture.closed_early()
            raise
        finally:
            aclose = getattr(inner, "aclose", None)
            if aclose is not None:
                await aclose()
        capture.finish(True)

    async def aclose(self) -> None:
        try:
            await self._runmeter_inner.aclose()
        finally:
            self._runmeter_capture.closed_early()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runmeter_inner, name)


_WRAPPER_TYPES: dict[tuple[type, bool], type] = {}


def wrap_stream(response: Any, capture: Capture, *, is_async: bool) -> None:
    """Replace ``response.stream`` by a tapped wrapper of the same byte-stream base class."""
    module = sys.modules[type(response).__module__.split(".")[0]]
    base: type = module.AsyncByteStream if is_async else module.SyncByteStream
    key = (base, is_async)
    cls = _WRAPPER_TYPES.get(key)
    if cls is None:
        mixin = _AsyncTapped if is_async else _SyncTapped
        cls = type(f"Runmeter{base.__name__}", (mixin, base), {})
        _WRAPPER_TYPES[key] = cls
    response.stream = cls(response.stream, capture)
