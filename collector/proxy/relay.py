"""The relay: one request in, the same request upstream, the upstream's bytes back as they arrive.

:class:`Relay` is the aiohttp handler for everything under ``/v1/``. Per exchange it

1. reads the request body when a tap may need it (a JSON call; big uploads stream through unread),
   optionally adds runmeter's ``include`` (:mod:`collector.include`), and asks ``tap_for`` for a tap;
2. forwards method, raw path and query, end-to-end headers and body to the upstream;
3. sends the upstream's status and end-to-end headers, then writes each body chunk to the caller the
   moment it arrives (never buffered), and only then feeds the tap a decoded copy;
4. closes the tap exactly once and hands its records to ``sink``: complete at the body's end,
   interrupted when the caller walked away (the upstream stream is closed too) or the upstream broke
   off (the caller's connection is cut as well: nothing is invented).

Compressed bodies are relayed compressed; only the tap's copy is decoded. Request headers are never
logged or stored; the steps fetcher holds the auth headers only while its job is pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from collector._instrument_steps import StepsBody, StepsFetcher, offer_when_finished
from collector._instrument_stream import Capture, CollectingCapture, Sink, TapLike
from collector.include import inject_include
from collector.proxy.headers import accept_encoding_for_tap, request_headers, response_headers

__all__ = ["DECODABLE", "MAX_BUFFERED_BODY", "Relay", "RelayOptions", "TapFactory"]

log = logging.getLogger("runmeter.proxy")


def _decodable() -> frozenset[str]:
    codings = {"gzip", "x-gzip", "deflate"}
    # content_decoder() finds these through sys.modules, so importing them here is what enables them.
    for module, coding in (("brotli", "br"), ("brotlicffi", "br"), ("zstandard", "zstd")):
        with contextlib.suppress(ImportError):
            mod = importlib.import_module(module)
            if module == "brotlicffi":
                import sys

                sys.modules.setdefault("brotli", mod)
            codings.add(coding)
    return frozenset(codings)


DECODABLE = _decodable()
"""Content codings the tap's copy can be decoded from (gzip/deflate always; br, zstd if installed)."""

MAX_BUFFERED_BODY = 32 * 1024 * 1024
"""Request bodies up to this size are read before forwarding (taps and ``include`` need them);
bigger ones, and bodies of unknown length, stream through to the upstream unread."""

_RUN_PATH = re.compile(r"/threads/(?:[^/]+/)?runs(?:/[^/]+(?:/submit_tool_outputs|/cancel)?)?/?$")
"""Endpoints whose non-streamed body is a Run (the steps fetcher looks at those)."""

TapFactory = Callable[..., TapLike | None]
"""The signature of :func:`collector.taps.tap_for`."""


@dataclass(frozen=True, slots=True)
class RelayOptions:
    """How the relay behaves.

    ``upstream``: base URL the ``/v1`` prefix maps to (``https://api.openai.com/v1``).
    ``include_results``: add runmeter's ``include`` to runs and file_search responses (off: the
    proxy then forwards every request byte for byte). ``prefix``: the local path prefix.
    """

    upstream: str
    include_results: bool = False
    prefix: str = "/v1"


class Relay:
    """Forwards one exchange and records it (see the module docstring).

    ``session`` is the pooled upstream client (``auto_decompress=False``); ``sink`` receives each
    finished run record on the event loop thread and must be cheap (``Writer.submit``).
    ``fetcher``: lists a finished non-streamed file_search run's steps off the request path.
    """

    def __init__(self, options: RelayOptions, session: aiohttp.ClientSession, sink: Sink,
                 tap_for: TapFactory, *, fetcher: StepsFetcher | None = None) -> None:
        self.options = options
        self._session = session
        self._sink = sink
        self._tap_for = tap_for
        self._fetcher = fetcher
        self._upstream = options.upstream.rstrip("/")
        self.active = 0
        """Exchanges in flight (the tests and a graceful shutdown read it)."""

    # -- the handler ------------------------------------------------------------------------------
    async def __call__(self, request: web.Request) -> web.StreamResponse:
        """Relay ``request`` upstream and its response back."""
        self.active += 1
        try:
            return await self._relay(request)
        finally:
            self.active -= 1

    async def _relay(self, request: web.Request) -> web.StreamResponse:
        raw_path, _, query = request.raw_path.partition("?")
        body = await self._read_body(request)
        path = request.path
        capture: Capture | None = None
        if body is not None or not request.body_exists:
            body_bytes = body if body else None
            if self.options.include_results:
                injected = _inject(request.method, path, query, body_bytes)
                if injected is not None:
                    query, body_bytes = injected
                    body = body_bytes if body_bytes is not None else body
            capture = self._begin(request, path, query, body_bytes)
        accept = request.headers.get("Accept-Encoding")
        accept_override = accept_encoding_for_tap(accept, DECODABLE) if capture and accept else None
        headers, skip = request_headers(request.headers.items(), body_replaced=body is not None,
                                        accept_encoding=accept_override)
        url = URL(self._upstream + raw_path[len(self.options.prefix):] + (f"?{query}" if query else ""),
                  encoded=True)
        data: Any = body if body is not None else (request.content if request.body_exists else None)
        try:
            upstream = await self._session.request(
                request.method, url, headers=headers, data=data, skip_auto_headers=skip,
                allow_redirects=False, auto_decompress=False)
        except asyncio.CancelledError:
            if capture is not None:
                capture.finish(False)
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            if capture is not None:
                capture.finish(False)
            log.warning("runmeter proxy: upstream %s unreachable for %s %s: %s", self._upstream,
                        request.method, path, type(exc).__name__)
            return _gateway_error(exc)
        try:
            return await self._respond(request, upstream, capture)
        finally:
            upstream.release()

    async def _respond(self, request: web.Request, upstream: aiohttp.ClientResponse,
                       capture: Capture | None) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                      headers=response_headers(upstream.headers.items()))
        if capture is not None:
            capture.started(upstream.status, upstream.headers.get("Content-Type", ""),
                            upstream.headers.get("Content-Encoding", ""))
            if isinstance(capture, CollectingCapture) and not (
                    upstream.status == 200 and "json" in upstream.headers.get("Content-Type", "")):
                capture.body = None
                capture.on_finish = None
        try:
            await response.prepare(request)
        except (ConnectionResetError, asyncio.CancelledError):
            if capture is not None:
                capture.finish(False)
            upstream.close()
            raise
        tapped = capture if capture is not None and not capture.done else None
        chunks = upstream.content.iter_any().__aiter__()
        while True:
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                break
            except asyncio.CancelledError:
                # aiohttp cancels the handler when the caller hangs up while the upstream is quiet.
                self._caller_gone(capture, upstream)
                raise
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                # The upstream broke off: the caller must see a broken body too, not a clean end.
                log.info("runmeter proxy: upstream broke off %s %s: %s", request.method, request.path,
                         type(exc).__name__)
                if capture is not None:
                    capture.finish(False)
                upstream.close()
                _abort(request)
                return response
            try:
                await response.write(chunk)
            except (ConnectionResetError, asyncio.CancelledError):
                self._caller_gone(capture, upstream)
                raise
            if tapped is not None:
                tapped.push(chunk)  # after the first token, a plain list append
        try:
            await response.write_eof()  # the caller sees the end before the tap's closing work
        finally:
            if capture is not None:
                capture.finish(True)
        return response

    @staticmethod
    def _caller_gone(capture: Capture | None, upstream: aiohttp.ClientResponse) -> None:
        """The caller walked away: close the upstream stream too. The exchange is complete only if
        the end-of-stream marker was already relayed."""
        if capture is not None:
            capture.closed_early()
        upstream.close()

    # -- helpers ----------------------------------------------------------------------------------
    async def _read_body(self, request: web.Request) -> bytes | None:
        """The whole request body when it is small enough to hold, else ``None`` (streamed)."""
        if not request.body_exists:
            return None
        length = request.content_length
        if length is None or length > MAX_BUFFERED_BODY:
            return None
        return await request.read()

    def _begin(self, request: web.Request, path: str, query: str, body: bytes | None) -> Capture | None:
        try:
            tap = self._tap_for(request.method, path, query, body, sent_wall=time.time(),
                                sent_ns=time.monotonic_ns())
            if tap is None:
                return None
            if self._fetcher is not None and _RUN_PATH.search(path):
                collecting = CollectingCapture(tap, self._sink)
                collecting.on_finish = offer_when_finished(self._fetcher, collecting,
                                                   self._upstream + path[len(self.options.prefix):],
                                                   request.headers)
                return collecting
            return Capture(tap, self._sink)
        except Exception:
            log.exception("runmeter proxy: tap_for failed; exchange not recorded")
            return None

    def on_steps(self, steps: StepsBody) -> None:
        """A steps listing fetched in the background: fold it like any other exchange."""
        tap = self._tap_for("GET", steps.path, steps.query, None, sent_wall=steps.sent_wall,
                            sent_ns=steps.sent_ns)
        if tap is None:
            return
        capture = Capture(tap, self._sink)
        capture.started(steps.status, steps.content_type, "")
        capture.feed(steps.body)
        capture.finish(200 <= steps.status < 300)


def _inject(method: str, path: str, query: str, body: bytes | None) -> tuple[str, bytes | None] | None:
    try:
        injected = inject_include(method, path, query, body)
    except Exception:
        log.exception("runmeter proxy: include injection failed; request forwarded as sent")
        return None
    return None if injected is None else (injected.query, injected.body)


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


def _gateway_error(exc: BaseException) -> web.Response:
    """The upstream could not be reached: a 502 (504 on a timeout) in the API's error shape."""
    timeout = isinstance(exc, TimeoutError)
    message = ("runmeter proxy: the upstream did not answer in time" if timeout
               else f"runmeter proxy: could not reach the upstream ({type(exc).__name__})")
    body = {"error": {"message": message, "type": "upstream_error", "param": None,
                      "code": "upstream_timeout" if timeout else "upstream_unreachable"}}
    return web.Response(status=504 if timeout else 502, body=json.dumps(body).encode(),
                        content_type="application/json")
