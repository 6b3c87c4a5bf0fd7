"""The proxy as a server: the aiohttp application, and a runner for tests, benchmarks and the CLI.

:func:`build_app` makes the application: every method under ``/v1/`` goes to the :class:`Relay`;
anything else is a 404 in the API's error shape. The upstream session (one pooled
``aiohttp.ClientSession`` with ``auto_decompress=False``) lives with the application.

The sidecar seam: ``extend`` is called with the application before it starts, so the ``runmeter
serve`` parts (``/metrics``, the storage poller) can add routes and ``on_startup``/``on_cleanup``
hooks without the proxy knowing them::

    def add_metrics(app: web.Application) -> None:
        app.router.add_get("/metrics", metrics_handler)
        app.cleanup_ctx.append(poller_ctx)

    Proxy(upstream=..., sink=writer.submit, extend=add_metrics)
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from collector._aioserver import BackgroundServer, base_url
from collector._aioserver import serve_forever as _serve_forever
from collector._instrument_stream import Sink
from collector.proxy.relay import Relay, RelayOptions, TapFactory

__all__ = ["DEFAULT_UPSTREAM", "Proxy", "ProxyConfig", "build_app", "loop_factory", "run", "serve_forever"]

log = logging.getLogger("runmeter.proxy")

DEFAULT_UPSTREAM = "https://api.openai.com/v1"

RELAY_KEY = web.AppKey("runmeter_relay", Relay)
"""The application's :class:`Relay` (tests read ``active``)."""

Extend = Callable[[web.Application], None]


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """How the proxy behaves.

    ``upstream``: the API base URL requests go to. ``include_results``: add runmeter's ``include``
    (off by default: the proxy then forwards requests byte for byte). ``fetch_steps``: list a finished
    non-streamed file_search run's steps from the upstream, off the request path (as the in-process
    recorder does). ``connect_timeout``: seconds to open an upstream connection; ``read_timeout``:
    the longest silence tolerated inside an upstream response (streams can pause for long).
    ``max_connections``: the upstream pool's size (0: unbounded).
    """

    upstream: str = DEFAULT_UPSTREAM
    include_results: bool = False
    fetch_steps: bool = True
    connect_timeout: float = 30.0
    read_timeout: float = 600.0
    max_connections: int = 0


def build_app(config: ProxyConfig, sink: Sink, *, tap_for: TapFactory | None = None,
              extend: Extend | None = None) -> web.Application:
    """The proxy's aiohttp application. ``sink`` gets every run record (on the event loop thread);
    ``tap_for`` defaults to :func:`collector.taps.tap_for`; ``extend`` is the sidecar seam."""
    if tap_for is None:
        from collector.taps import tap_for as default_tap_for

        tap_for = default_tap_for
    _check_upstream(config.upstream)
    app = web.Application(client_max_size=512 * 1024 * 1024)
    factory: TapFactory = tap_for

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=config.max_connections, limit_per_host=0,
                                         ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=config.connect_timeout,
                                        sock_read=config.read_timeout)
        # No cookie jar: one caller's upstream cookies must never reach another caller's requests.
        session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                        cookie_jar=aiohttp.DummyCookieJar(), raise_for_status=False)
        relays: list[Relay] = []
        fetcher = _steps_fetcher(lambda steps: relays[0].on_steps(steps)) if config.fetch_steps else None
        relay = Relay(RelayOptions(upstream=config.upstream, include_results=config.include_results),
                      session, sink, factory, fetcher=fetcher)
        relays.append(relay)
        app[RELAY_KEY] = relay
        try:
            yield
        finally:
            await session.close()
            if fetcher is not None:
                await asyncio.get_running_loop().run_in_executor(None, fetcher.close, 5.0)

    async def relay_handler(request: web.Request) -> web.StreamResponse:
        return await request.app[RELAY_KEY](request)

    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/v1/{tail:.*}", relay_handler)
    if extend is not None:
        extend(app)  # before the catch-all, so the sidecar's routes are found
    app.router.add_route("*", "/{tail:.*}", _not_found)
    return app


def _steps_fetcher(on_steps: Callable[[Any], None]) -> Any:
    from collector._instrument_steps import StepsFetcher
    from collector.instrument import _LazyHttpx2

    return StepsFetcher(_LazyHttpx2(), on_steps)


async def _not_found(request: web.Request) -> web.Response:
    body = {"error": {"message": f"runmeter proxy: no route for {request.method} {request.path}; "
                                 "API calls go under /v1/", "type": "invalid_request_error",
                      "param": None, "code": None}}
    return web.Response(status=404, body=json.dumps(body).encode(), content_type="application/json")


def _check_upstream(url: str) -> None:
    from yarl import URL

    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"upstream {url!r} is not an http(s) URL such as {DEFAULT_UPSTREAM}")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's event loop when it is installed (it roughly halves the relay's CPU per event), else
    asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` (e.g. :func:`serve_forever`) on the loop :func:`loop_factory` picks."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(main)


# handler_cancellation: a caller that hangs up while the upstream is silent cancels the relay at once,
# so the upstream stream closes too instead of waiting for its next byte.
_RUNNER_OPTIONS: dict[str, Any] = {"shutdown_timeout": 1.0, "handler_cancellation": True}


class Proxy:
    """The proxy running in a background thread of this process, on a real socket.

    >>> with Proxy(upstream=sim.base_url, sink=records.append) as proxy:
    ...     client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-test")
    """

    def __init__(self, *, sink: Sink, upstream: str = DEFAULT_UPSTREAM, host: str = "127.0.0.1",
                 port: int = 0, include_results: bool = False, fetch_steps: bool = True,
                 tap_for: TapFactory | None = None, extend: Extend | None = None,
                 read_timeout: float = 600.0) -> None:
        self.config = ProxyConfig(upstream=upstream, include_results=include_results,
                                  fetch_steps=fetch_steps, read_timeout=read_timeout)
        self._sink = sink
        self._tap_for = tap_for
        self._extend = extend
        self._server = BackgroundServer(self._build, host=host, port=port, name="runmeter-proxy",
                                        loop_factory=loop_factory(), **_RUNNER_OPTIONS)
        self.app: web.Application | None = None

    def _build(self) -> web.Application:
        return build_app(self.config, self._sink, tap_for=self._tap_for, extend=self._extend)

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        return self._server.port

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``, what the SDK takes as ``base_url``."""
        return base_url(self._server.host, self.port)

    @property
    def relay(self) -> Relay:
        """The running relay."""
        assert self.app is not None, "proxy not started"
        return self.app[RELAY_KEY]

    def start(self) -> Proxy:
        """Bind the socket and serve in a daemon thread; returns once requests are accepted."""
        self.app = self._server.start()
        return self

    def stop(self) -> None:
        """Close every connection, finish the records of open exchanges and stop serving."""
        self._server.stop()

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def serve_forever(app: web.Application, host: str, port: int,
                        announce: Callable[[str], None]) -> None:
    """Serve ``app`` until cancelled, announcing the base URL once the socket accepts connections."""
    await _serve_forever(app, host, port, announce, **_RUNNER_OPTIONS)
