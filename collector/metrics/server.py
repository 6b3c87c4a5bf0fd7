"""The HTTP side: ``/`` is a landing page linking ``/metrics``; ``/metrics`` is the exposition.

A WSGI app on prometheus_client's threading WSGI server (content negotiation, gzip and HEAD come from
``make_wsgi_app``), in a daemon thread, so the sidecar and a recording process serve it the same way.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

StartResponse = Callable[..., Any]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would flood stderr."""


def landing_page(title: str, lines: Iterable[str]) -> bytes:
    """A small HTML page linking /metrics, with ``lines`` as status paragraphs (escaped)."""
    body = "".join(f"<p>{html.escape(line)}</p>" for line in lines)
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title></head>"
            f"<body><h1>{html.escape(title)}</h1><p><a href=\"/metrics\">Metrics</a></p>{body}"
            "</body></html>").encode()


def metrics_app(registry: CollectorRegistry, status: Callable[[], list[str]] = list,
                title: str = "runmeter") -> Callable[[dict[str, Any], StartResponse], list[bytes]]:
    """The WSGI app: ``/metrics`` from ``registry``, ``/`` the landing page, anything else 404."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path == "/metrics":
            result: list[bytes] = metrics(environ, start_response)
            return result
        if path == "/":
            page = landing_page(title, status())
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                      ("Content-Length", str(len(page)))])
            return [page]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: try /metrics\n"]

    return app


class MetricsServer:
    """Serves :func:`metrics_app` on ``host:port`` (``0``: a free port) from a daemon thread."""

    def __init__(self, registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0,
                 status: Callable[[], list[str]] = list, title: str = "runmeter") -> None:
        self._httpd = make_server(host, port, metrics_app(registry, status, title), ThreadingWSGIServer,
                                  handler_class=_QuietHandler)
        self.host = host
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="runmeter-metrics",
                                        daemon=True)

    def start(self) -> MetricsServer:
        """Start serving; returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
