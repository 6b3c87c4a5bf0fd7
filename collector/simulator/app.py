"""The simulator as a server: build the aiohttp application and run it in-process or from the CLI."""

from __future__ import annotations

import asyncio
import socket
import threading
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from collector.simulator.core import Clock, Ids, api_error
from collector.simulator.generate import ANSWER_SENTENCES, ANSWER_SENTENCES_HEADER
from collector.simulator.state import World

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """How a simulator behaves. ``epoch=None`` runs on real time."""

    seed: int = 0
    epoch: float | None = None
    latency: str = "fast"
    fault: str | None = None


@web.middleware
async def _auth_and_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A missing bearer key gets the API's 401; an unexpected error its 500, never a traceback."""
    if request.path.startswith("/v1/"):
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return api_error(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization "
                "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                type_="invalid_request_error",
            )
    hint = request.headers.get(ANSWER_SENTENCES_HEADER, "")
    if hint:
        if not hint.isdigit() or not 1 <= int(hint) <= 10_000:
            return api_error(400, f"{ANSWER_SENTENCES_HEADER} must be an integer in 1..10000, got {hint!r}")
        ANSWER_SENTENCES.set(int(hint))
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status == 404:
            return api_error(404, f"Invalid URL ({request.method} {request.path})")
        if exc.status == 405:
            return api_error(405, f"Invalid method for URL ({request.method} {request.path})")
        raise
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception:  # the API answers with a 500 body; the simulator never leaks a stack trace
        request.app["world"].log.exception("simulator handler failed: %s %s", request.method, request.path)
        return api_error(500, "The server had an error while processing your request.", type_="server_error")


def build_app(config: SimulatorConfig) -> web.Application:
    """The aiohttp application serving every simulated endpoint under ``/v1``."""
    from collector.simulator import assistants, chat, files, organization, responses, vector_stores

    world = World(config=config, clock=Clock(config.epoch), ids=Ids(config.seed))
    app = web.Application(middlewares=[_auth_and_errors], client_max_size=512 * 1024 * 1024)
    with warnings.catch_warnings():  # route modules read app["world"]; aiohttp 3.14 prefers AppKey
        warnings.simplefilter("ignore", web.NotAppKeyWarning)
        app["world"] = world
    for module in (files, vector_stores, assistants, responses, chat, organization):
        module.register(app.router, world)
    return app


class Simulator:
    """A simulator running in a background thread of this process, on a real socket.

    >>> with Simulator(seed=1) as sim:
    ...     client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test")
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, seed: int = 0,
                 epoch: float | None = None, latency: str = "fast", fault: str | None = None) -> None:
        self.config = SimulatorConfig(seed=seed, epoch=epoch, latency=latency, fault=fault)
        self._host = host
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._app: web.Application | None = None
        self.port: int = 0

    @property
    def world(self) -> World:
        """The simulator's state and ledger (tests may read it; ``analysis/`` never does)."""
        assert self._app is not None, "simulator not started"
        world: World = self._app["world"]
        return world

    @property
    def ledger(self) -> Any:
        """What the simulator served and would have billed."""
        return self.world.ledger

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``, what the SDK takes as ``base_url``."""
        return f"http://{self._host}:{self.port}/v1"

    def start(self) -> Simulator:
        """Bind the socket and serve in a daemon thread; returns once requests are accepted."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._port))
        sock.listen(1024)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def serve() -> None:
            self._app = build_app(self.config)
            self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False,
                                         shutdown_timeout=0.5)
            await self._runner.setup()
            site = web.SockSite(self._runner, sock)
            await site.start()
            ready.set()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="runmeter-simulator", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("simulator did not start within 10 s")
        return self

    def stop(self) -> None:
        """Close every connection and stop serving."""
        if self._loop is None or self._runner is None:
            return
        runner = self._runner

        async def shutdown() -> None:
            await runner.cleanup()
            # streams still being written (a stalled or abandoned one) end here, not at interpreter exit
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        fut = asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
        try:
            fut.result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=10)
            self._loop.close()
            self._loop = None
            self._runner = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def serve_forever(config: SimulatorConfig, host: str, port: int,
                        announce: Callable[[str], None]) -> None:
    """Serve until cancelled, announcing the base URL once the socket accepts connections."""
    app = build_app(config)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    site = web.SockSite(runner, sock)
    await site.start()
    announce(f"http://{host}:{sock.getsockname()[1]}/v1")
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
