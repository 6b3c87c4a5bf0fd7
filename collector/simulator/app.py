"""The simulator as a server: build the aiohttp application and run it in-process or from the CLI."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from collector._aioserver import BackgroundServer, base_url, serve_forever
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
        self._server = BackgroundServer(lambda: build_app(self.config), host=host, port=port,
                                        name="runmeter-simulator", shutdown_timeout=0.5)
        self._app: web.Application | None = None

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        return self._server.port

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
        return base_url(self._server.host, self.port)

    def start(self) -> Simulator:
        """Bind the socket and serve in a daemon thread; returns once requests are accepted."""
        self._app = self._server.start()
        return self

    def stop(self) -> None:
        """Close every connection and stop serving."""
        self._server.stop()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def serve(config: SimulatorConfig, host: str, port: int, announce: Callable[[str], None]) -> None:
    """Serve until cancelled, announcing the base URL once the socket accepts connections."""
    await serve_forever(build_app(config), host, port, announce, shutdown_timeout=0.5)
