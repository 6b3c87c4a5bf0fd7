"""The API's replies for faults that hit before or while answering: 429, 500, a cut connection.

Shared by the Responses and Chat routes (the Assistants routes may use them too).
"""

from __future__ import annotations

from aiohttp import web

from collector.simulator.core import api_error


def rate_limited(model: str) -> web.Response:
    """The API's 429 with ``retry-after``."""
    return api_error(
        429, f"Rate limit reached for {model} in organization org-runmeter on requests per min (RPM): "
             "Limit 500, Used 500, Requested 1. Please try again in 120ms. Visit "
             "https://platform.openai.com/account/rate-limits to learn more.",
        type_="requests", code="rate_limit_exceeded",
        headers={"retry-after": "1", "x-ratelimit-limit-requests": "500",
                 "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "120ms"})


def server_error() -> web.Response:
    """The API's 500."""
    return api_error(500, "The server had an error while processing your request. Sorry about that!",
                     type_="server_error")


def abort_connection(request: web.Request, sent: web.StreamResponse | None = None) -> web.StreamResponse:
    """Cut the TCP connection (the ``drop`` fault). The client sees the connection close mid-body,
    or before any reply when nothing was ``sent``; aiohttp then writes nothing more."""
    if request.transport is not None:
        request.transport.abort()
    return sent if sent is not None else web.Response()
