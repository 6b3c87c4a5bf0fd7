"""In-process capture: one hook on the SDK client's HTTP ``send`` sees every request and its bytes.

The ``openai`` SDK sends every call, streamed or not, helper or raw, through ``self._client.send``
on its HTTP client: an ``httpx2.Client``/``AsyncClient`` by default, the plain ``httpx`` ones when
passed as ``http_client``, and ``DefaultAioHttpClient`` (an ``httpx2.AsyncClient`` over aiohttp).
:func:`instrument` replaces ``send`` on that HTTP client *instance*; copies made by
``client.with_options(...)`` share it, so they are recorded too. The hook

1. adds runmeter's ``include`` to the request (:mod:`collector.include`), unless turned off;
2. asks :func:`collector.taps.tap_for` for a tap;
3. sends with ``stream=True`` and replaces ``response.stream`` by a thin wrapper that feeds each
   raw chunk to the tap as the SDK reads it (a non-streamed call is then read here, exactly as
   ``httpx`` itself does for ``stream=False``, so the body is read once);
4. closes the tap exactly once: at the body's end, on error, when the response is closed early
   (an abandoned stream), or when it is garbage collected, and puts its records in ``sink``.

Nothing here raises into the application or changes what it sees, except the added include fields.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from collector._instrument_final import DEFAULT_DELAYS, FinalFetcher, final_sink
from collector._instrument_steps import HttpGet, StepsBody, StepsFetcher, fold_fetched, offer_when_finished
from collector._instrument_stream import (
    Capture,
    CollectingCapture,
    Sink,
    TapLike,
    finish_abandoned,
    wrap_stream,
)
from collector.include import Injected, inject_include

__all__ = ["TapFactory", "instrument", "is_instrumented", "uninstrument"]

log = logging.getLogger("runmeter.instrument")

_STATE_ATTR = "_runmeter_instrumentation"

_RUN_PATH = re.compile(r"/threads/(?:[^/]+/)?runs(?:/[^/]+(?:/submit_tool_outputs|/cancel)?)?/?$")
"""Endpoints whose non-streamed body is a Run (the steps fetcher looks at those)."""

ClientT = TypeVar("ClientT")


class TapFactory(Protocol):
    """The signature of ``collector.taps.tap_for``."""

    def __call__(self, method: str, path: str, query: str, request_body: bytes | None, *,
                 sent_wall: float, sent_ns: int) -> TapLike | None: ...


def instrument(client: ClientT, sink: Sink, *, include_results: bool = True, fetch_steps: bool = True,
               fetch_final: bool = True, tap_for: TapFactory | None = None, steps_http: HttpGet | None = None,
               wall_clock: Callable[[], float] = time.time,
               final_delays: Sequence[float] = DEFAULT_DELAYS) -> ClientT:
    """Record every API call ``client`` makes; returns the same client object.

    ``client`` is an ``openai.OpenAI`` or ``openai.AsyncOpenAI`` (any HTTP client kind). ``sink``
    receives each :class:`~collector.record.RunRecord` observation and must be cheap (a queue put).
    ``include_results=False`` leaves every request as the application built it. ``fetch_steps``
    lets runmeter list a finished non-streamed file_search run's steps in a background thread
    (through ``steps_http``, by default a plain ``httpx2.Client`` made on first use).
    ``fetch_final`` polls an interrupted Assistants run or stored response in a background thread
    (``final_delays`` apart) until it is terminal, so its row ends with the billed usage.
    ``tap_for`` defaults to :func:`collector.taps.tap_for`. ``wall_clock`` stamps the records'
    UTC times (``started_at`` ...); durations always come from the monotonic clock.

    Idempotent: instrumenting an already instrumented client does nothing. A client that is not
    an ``openai`` client is a ``TypeError``; after that, nothing here raises into the caller.
    """
    http = getattr(client, "_client", None)
    send = getattr(http, "send", None)
    if http is None or not callable(send) or not hasattr(client, "base_url"):
        raise TypeError(f"runmeter can instrument an openai.OpenAI or openai.AsyncOpenAI client, "
                        f"not {type(client).__name__}")
    existing: _Instrumentation | None = getattr(http, _STATE_ATTR, None)
    if existing is not None and existing.active:
        return client
    is_async = inspect.iscoroutinefunction(send)
    state = _Instrumentation(
        sink=sink,
        tap_for=tap_for if tap_for is not None else _default_tap_for(),
        include_results=include_results,
        http=(steps_http if steps_http is not None else _LazyHttpx2())
        if fetch_steps or fetch_final else None,
        fetch_steps=fetch_steps,
        fetch_final=fetch_final,
        final_delays=final_delays,
        original=send,
        had_instance_send="send" in vars(http),
        wall=wall_clock,
    )
    http.send = _async_send(state) if is_async else _sync_send(state)
    setattr(http, _STATE_ATTR, state)
    return client


def uninstrument(client: Any, timeout: float = 5.0) -> None:
    """Stop recording ``client``: restore its HTTP client's ``send`` and finish pending steps fetches.

    Responses already being read keep feeding their taps until they end. A no-op on a client that
    is not instrumented.
    """
    http = getattr(client, "_client", None)
    state: _Instrumentation | None = getattr(http, _STATE_ATTR, None)
    if http is None or state is None:
        return
    state.active = False
    ours = getattr(http.send, "_runmeter_state", None) is state
    if ours:
        if state.had_instance_send:
            http.send = state.original
        else:
            del http.send
    # else someone wrapped over our send: it stays, inactive, as a pass-through.
    with contextlib.suppress(AttributeError):
        delattr(http, _STATE_ATTR)
    state.close(timeout)


def is_instrumented(client: Any) -> bool:
    """Whether ``client`` is currently recorded."""
    state = getattr(getattr(client, "_client", None), _STATE_ATTR, None)
    return state is not None and bool(state.active)


class _Instrumentation:
    """What one instrumented HTTP client needs per request: tap factory, sink, include, fetcher."""

    def __init__(self, *, sink: Sink, tap_for: TapFactory, include_results: bool, http: HttpGet | None,
                 fetch_steps: bool, fetch_final: bool, final_delays: Sequence[float],
                 original: Callable[..., Any], had_instance_send: bool,
                 wall: Callable[[], float] = time.time) -> None:
        self.sink = sink
        self.wall = wall
        self.tap_for = tap_for
        self.include_results = include_results
        self.original = original
        self.had_instance_send = had_instance_send
        self.active = True
        self.is_async = inspect.iscoroutinefunction(original)
        self.http = http
        self.fetcher = (StepsFetcher(http, self.on_steps, wall=wall)
                        if http is not None and fetch_steps else None)
        self.final = (FinalFetcher(http, self.on_final, delays=final_delays, wall=wall)
                      if http is not None and fetch_final else None)

    def begin(self, request: Any) -> tuple[Any, Capture | None]:
        """The request to send (include added) and its capture, or ``None`` when not captured."""
        finish_abandoned()
        try:
            method: str = request.method
            path: str = request.url.path
            query: str = request.url.query.decode("ascii", "replace")
            body = _body_of(request)
        except Exception:
            log.exception("runmeter: could not read the request; not captured")
            return request, None
        if self.include_results:
            try:
                injected = inject_include(method, path, query, body)
                if injected is not None:
                    request = _rebuild(request, injected, query_changed=injected.query != query)
                    query, body = injected.query, injected.body
            except Exception:
                log.exception("runmeter: include injection failed; request sent as built")
        try:
            tap = self.tap_for(method, path, query, body, sent_wall=self.wall(),
                               sent_ns=time.monotonic_ns())
            if tap is None:
                return request, None
            sink = self.sink if self.final is None else final_sink(self.sink, self.final, str(request.url),
                                                                     request.headers)
            if self.fetcher is not None and _RUN_PATH.search(path):
                collecting = CollectingCapture(tap, sink, self.wall)
                collecting.on_finish = offer_when_finished(self.fetcher, collecting, str(request.url),
                                                   request.headers)
                return request, collecting
            return request, Capture(tap, sink, self.wall)
        except Exception:
            log.exception("runmeter: tap_for failed; not captured")
            return request, None

    def attach(self, response: Any, capture: Capture) -> None:
        """Start feeding ``capture`` from ``response``'s body as it is read."""
        try:
            headers = response.headers
            pre_read = hasattr(response, "_content")  # a transport that handed over a read body
            capture.started(response.status_code, headers.get("content-type", ""),
                            "" if pre_read else headers.get("content-encoding", ""))
            if capture.done:
                return
            if isinstance(capture, CollectingCapture) and not (
                    response.status_code == 200 and "json" in headers.get("content-type", "")):
                capture.body = None
                capture.on_finish = None
            if pre_read:
                capture.feed(response.content)
                capture.finish(True)
            else:
                wrap_stream(response, capture, is_async=self.is_async)
        except Exception:
            log.exception("runmeter: could not attach to the response; not captured")
            capture.finish(False)

    def on_steps(self, steps: StepsBody) -> None:
        """A steps listing fetched in the background: fold it like any other exchange."""
        fold_fetched(self.tap_for, self.sink, steps, self.wall)

    def on_final(self, fetched: StepsBody, url: str, headers: Mapping[str, str]) -> None:
        """An interrupted run read back in its final state: fold it, then fetch its steps."""
        self.on_steps(fetched)
        if self.fetcher is not None:
            self.fetcher.offer(url, headers, fetched.body)

    def close(self, timeout: float) -> None:
        finish_abandoned()
        if self.final is not None:
            self.final.close(timeout)
        if self.fetcher is not None:
            self.fetcher.close(timeout)  # also closes the shared HTTP client
        elif self.http is not None:
            try:
                self.http.close()
            except Exception:
                log.debug("runmeter: HTTP client failed to close", exc_info=True)


def _sync_send(state: _Instrumentation) -> Callable[..., Any]:
    original = state.original

    def send(request: Any, *args: Any, stream: bool = False, **kwargs: Any) -> Any:
        if not state.active:
            return original(request, *args, stream=stream, **kwargs)
        request, capture = state.begin(request)
        if capture is None:
            return original(request, *args, stream=stream, **kwargs)
        try:
            response = original(request, *args, stream=True, **kwargs)
        except BaseException:
            capture.finish(False)
            raise
        state.attach(response, capture)
        if not stream:
            # What httpx's own send does for stream=False, now through the tapped stream.
            try:
                response.read()
            except BaseException:
                response.close()
                raise
        return response

    send._runmeter_state = state  # type: ignore[attr-defined]
    return send


def _async_send(state: _Instrumentation) -> Callable[..., Any]:
    original = state.original

    async def send(request: Any, *args: Any, stream: bool = False, **kwargs: Any) -> Any:
        if not state.active:
            return await original(request, *args, stream=stream, **kwargs)
        request, capture = state.begin(request)
        if capture is None:
            return await original(request, *args, stream=stream, **kwargs)
        try:
            response = await original(request, *args, stream=True, **kwargs)
        except BaseException:
            capture.finish(False)
            raise
        state.attach(response, capture)
        if not stream:
            try:
                await response.aread()
            except BaseException:
                await response.aclose()
                raise
        return response

    send._runmeter_state = state  # type: ignore[attr-defined]
    return send


def _body_of(request: Any) -> bytes | None:
    try:
        content = request.content
    except Exception:  # a streaming (e.g. multipart upload) body that is not read in memory
        return None
    return bytes(content) if content else None


def _rebuild(request: Any, injected: Injected, *, query_changed: bool) -> Any:
    url = request.url.copy_with(query=injected.query.encode("ascii")) if query_changed else request.url
    headers = request.headers.copy()
    if injected.body is not None:
        headers["Content-Length"] = str(len(injected.body))
    return type(request)(request.method, url, headers=headers, content=injected.body,
                         extensions=request.extensions)


def _default_tap_for() -> TapFactory:
    try:
        from collector.taps import tap_for
    except ImportError:
        log.warning("runmeter: collector.taps.tap_for is not available; nothing will be recorded")
        return _no_tap
    factory: TapFactory = tap_for
    return factory


def _no_tap(method: str, path: str, query: str, request_body: bytes | None, *,
            sent_wall: float, sent_ns: int) -> TapLike | None:
    return None


class _LazyHttpx2:
    """A plain ``httpx2.Client`` made on the first steps fetch (most clients never need one)."""

    def __init__(self) -> None:
        self._client: Any = None

    def get(self, url: str, *, headers: Mapping[str, str]) -> Any:
        if self._client is None:
            import httpx2

            self._client = httpx2.Client(timeout=30.0)
        return self._client.get(url, headers=headers)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
