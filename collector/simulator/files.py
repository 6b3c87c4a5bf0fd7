"""Simulated files endpoints (placeholder: routes are being built)."""

from __future__ import annotations

from aiohttp import web

from collector.simulator.state import World


def register(router: web.UrlDispatcher, world: World) -> None:
    """Add this module's routes."""
