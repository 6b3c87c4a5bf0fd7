"""Serving an aiohttp application on a real socket: from a daemon thread (tests, in-process use) or
until cancelled (the CLI). Shared by the simulator and the proxy."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from aiohttp import web


def listen(host: str, port: int) -> socket.socket:
    """A non-blocking listening socket on ``host:port`` (``port=0``: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def base_url(host: str, port: int) -> str:
    """``http://HOST:PORT/v1`` (IPv6 hosts in brackets)."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


def _runner(app: web.Application, runner_options: dict[str, Any]) -> web.AppRunner:
    return web.AppRunner(app, access_log=None, handle_signals=False, **runner_options)


T = TypeVar("T")


def start_in_thread(loop: asyncio.AbstractEventLoop, start: Callable[[], Coroutine[Any, Any, T]],
                    name: str) -> tuple[threading.Thread, T]:
    """Run ``start()`` on ``loop`` in a new daemon thread that then keeps the loop running; returns the
    thread and what ``start()`` returned once it has, or raises what it raised (the loop is closed)."""
    ready = threading.Event()
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            result.append(loop.run_until_complete(start()))
        except BaseException as exc:
            failure.append(exc)
            ready.set()
            return
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError(f"{name} did not start within 10 s")
    if failure:
        thread.join(5)
        loop.close()
        raise failure[0]
    return thread, result[0]


def stop_in_thread(loop: asyncio.AbstractEventLoop, thread: threading.Thread | None,
                   shutdown: Callable[[], Coroutine[Any, Any, Any]]) -> None:
    """The other half of :func:`start_in_thread`: run ``shutdown()`` on the loop (15 s at most), then
    stop the loop, join its thread and close the loop."""
    try:
        if not loop.is_closed() and thread is not None and thread.is_alive():
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=15)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=10)
        loop.close()


class BackgroundServer:
    """``make_app()``'s application served from a daemon thread's own event loop.

    ``start()`` returns once the socket accepts connections; ``stop()`` closes every connection and
    ends streams still being written (a stalled or abandoned one) before the loop closes.
    """

    def __init__(self, make_app: Callable[[], web.Application], *, host: str = "127.0.0.1", port: int = 0,
                 name: str = "runmeter-server",
                 loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
                 **runner_options: Any) -> None:
        self._make_app = make_app
        self.host = host
        self._port = port
        self._name = name
        self._loop_factory = loop_factory
        self._runner_options = runner_options
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.app: web.Application | None = None
        self.port = 0

    def start(self) -> web.Application:
        """Bind, build the app in the server's loop and serve; returns the app."""
        sock = listen(self.host, self._port)
        self.port = sock.getsockname()[1]
        loop = self._loop = self._loop_factory()

        async def serve() -> None:
            self.app = self._make_app()
            self._runner = _runner(self.app, self._runner_options)
            await self._runner.setup()
            await web.SockSite(self._runner, sock).start()

        try:
            self._thread, _ = start_in_thread(loop, serve, self._name)
        except BaseException:
            sock.close()
            raise
        assert self.app is not None
        return self.app

    def stop(self) -> None:
        """Stop serving (idempotent)."""
        loop, runner = self._loop, self._runner
        if loop is None:
            return

        async def shutdown() -> None:
            if runner is not None:
                await runner.cleanup()
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        try:
            stop_in_thread(loop, self._thread, shutdown)
        finally:
            self._loop = None
            self._runner = None


async def serve_forever(app: web.Application, host: str, port: int, announce: Callable[[str], None],
                        **runner_options: Any) -> None:
    """Serve ``app`` until cancelled, announcing ``http://HOST:PORT/v1`` once it accepts connections."""
    runner = _runner(app, runner_options)
    await runner.setup()
    sock = listen(host, port)
    await web.SockSite(runner, sock).start()
    announce(base_url(host, sock.getsockname()[1]))
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
