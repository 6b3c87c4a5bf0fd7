"""The proxy as a server: :class:`ProxyServer` on a running event loop, :class:`Proxy` in a background
thread (tests, in-process use), :func:`serve_forever` for the CLI.

Everything under the prefix (``/v1/``) is relayed (:mod:`collector.proxy.relay`); ``GET`` routes given
in ``routes`` are answered by the proxy itself (the sidecar seam: ``/metrics``, a benchmark's
``/stats``); anything else is a 404 in the API's error shape::

    Proxy(upstream=..., sink=writer.submit, routes={"/healthz": lambda: ("text/plain", b"ok")})
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from collector._aioserver import base_url, listen, start_in_thread, stop_in_thread
from collector._instrument_final import FinalFetcher
from collector._instrument_steps import StepsFetcher
from collector._instrument_stream import Sink
from collector.proxy.relay import LocalRoute, Relay, RelayOptions, TapFactory
from collector.proxy.upstream import UpstreamPool, check_upstream

__all__ = ["DEFAULT_UPSTREAM", "Proxy", "ProxyConfig", "ProxyServer", "loop_factory", "run", "serve_forever"]

log = logging.getLogger("runmeter.proxy")

DEFAULT_UPSTREAM = "https://api.openai.com/v1"


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """How the proxy behaves.

    ``upstream``: the API base URL requests go to. ``include_results``: add runmeter's ``include``
    (off by default: the proxy then forwards requests byte for byte). ``fetch_steps``: list a finished
    non-streamed file_search run's steps from the upstream, off the request path; ``fetch_final``:
    read a run whose exchange was cut off back from the upstream until it is terminal, so the row gets
    its billed usage (both as the in-process recorder does, with the caller's own auth headers, held
    only while the job is pending). ``connect_timeout``: seconds to open an upstream connection;
    ``read_timeout``: the longest silence tolerated inside an upstream response (streams can pause for
    long). ``ssl_context``: for an ``https`` upstream (default: the system's trust store).
    """

    upstream: str = DEFAULT_UPSTREAM
    include_results: bool = False
    fetch_steps: bool = True
    fetch_final: bool = True
    connect_timeout: float = 30.0
    read_timeout: float = 600.0
    ssl_context: ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        check_upstream(self.upstream)


class ProxyServer:
    """The proxy on the running event loop: listening socket, relay, upstream pool, fetchers.

    ``sink`` gets every run record (on the event loop thread; it must be cheap, e.g.
    ``Writer.submit``); ``tap_for`` defaults to :func:`collector.taps.tap_for`.
    """

    def __init__(self, config: ProxyConfig, sink: Sink, *, tap_for: TapFactory | None = None,
                 routes: Mapping[str, LocalRoute] | None = None) -> None:
        if tap_for is None:
            from collector.taps import tap_for as default_tap_for

            tap_for = default_tap_for
        self.config = config
        self._sink = sink
        self._tap_for: TapFactory = tap_for
        self._routes = routes
        self._server: asyncio.Server | None = None
        self._http: Any = None
        self.relay: Relay | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> str:
        """Listen on ``host:port`` (0: a free port); returns the base URL (``http://HOST:PORT/v1``)."""
        loop = asyncio.get_running_loop()
        config = self.config
        pool = UpstreamPool(config.upstream, loop, connect_timeout=config.connect_timeout,
                            read_timeout=config.read_timeout, ssl_context=config.ssl_context)
        relay = Relay(RelayOptions(upstream=config.upstream, include_results=config.include_results,
                                   routes=self._routes), pool, self._sink, self._tap_for)
        if config.fetch_steps or config.fetch_final:
            from collector.instrument import _LazyHttpx2

            self._http = _LazyHttpx2()
            relay.steps = StepsFetcher(self._http, relay.on_steps) if config.fetch_steps else None
            relay.final = FinalFetcher(self._http, relay.on_final) if config.fetch_final else None
        self.relay = relay
        sock = listen(host, port)
        self.port = sock.getsockname()[1]
        self._server = await loop.create_server(relay.caller, sock=sock)
        return base_url(host, self.port)

    async def close(self) -> None:
        """Stop listening, cut every connection (open exchanges are recorded) and stop the fetchers."""
        if self._server is not None:
            self._server.close()
        relay = self.relay
        if relay is not None:
            relay.close()
            await asyncio.sleep(0)  # let the aborted transports report connection_lost
            steps, final, http = relay.steps, relay.final, self._http
            relay.steps = relay.final = None

            def stop_fetchers() -> None:
                if final is not None:
                    final.close(5.0)
                if steps is not None:
                    steps.close(5.0)  # also closes the shared HTTP client
                elif http is not None:
                    http.close()

            await asyncio.get_running_loop().run_in_executor(None, stop_fetchers)
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:  # connections still opening
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)


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


async def serve_forever(config: ProxyConfig, sink: Sink, host: str, port: int,
                        announce: Callable[[str], None], *, tap_for: TapFactory | None = None,
                        routes: Mapping[str, LocalRoute] | None = None) -> None:
    """Serve until cancelled, announcing the base URL once the socket accepts connections."""
    server = ProxyServer(config, sink, tap_for=tap_for, routes=routes)
    url = await server.start(host, port)
    announce(url)
    try:
        await asyncio.Event().wait()
    finally:
        await server.close()


class Proxy:
    """The proxy running in a background thread of this process, on a real socket.

    >>> with Proxy(upstream=sim.base_url, sink=records.append) as proxy:
    ...     client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-test")
    """

    def __init__(self, *, sink: Sink, upstream: str = DEFAULT_UPSTREAM, host: str = "127.0.0.1",
                 port: int = 0, include_results: bool = False, fetch_steps: bool = True,
                 fetch_final: bool = True, tap_for: TapFactory | None = None,
                 routes: Mapping[str, LocalRoute] | None = None, read_timeout: float = 600.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.config = ProxyConfig(upstream=upstream, include_results=include_results, fetch_steps=fetch_steps,
                                  fetch_final=fetch_final, read_timeout=read_timeout, ssl_context=ssl_context)
        self._server = ProxyServer(self.config, sink, tap_for=tap_for, routes=routes)
        self._host = host
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""
        """``http://HOST:PORT/v1``, what the SDK takes as ``base_url`` (after :meth:`start`)."""

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        return self._server.port

    @property
    def relay(self) -> Relay:
        """The running relay."""
        assert self._server.relay is not None, "proxy not started"
        return self._server.relay

    def start(self) -> Proxy:
        """Bind the socket and serve in a daemon thread; returns once requests are accepted."""
        loop = self._loop = loop_factory()()
        try:
            self._thread, self.base_url = start_in_thread(
                loop, lambda: self._server.start(self._host, self._port), "runmeter-proxy")
        except BaseException:
            self._loop = None
            raise
        return self

    def stop(self) -> None:
        """Close every connection, finish the records of open exchanges and stop serving (idempotent)."""
        loop = self._loop
        if loop is None:
            return
        try:
            stop_in_thread(loop, self._thread, self._server.close)
        finally:
            self._loop = None

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
