"""The HTTP side: ``/`` is a landing page linking ``/metrics``; ``/metrics`` is the exposition.

A WSGI app on prometheus_client's threading WSGI server, in a daemon thread, so the sidecar and a
recording process serve it the same way. ``/metrics`` is the text format 0.0.4 written by
:func:`render_text`: the same lines as prometheus_client's ``generate_latest`` at a fraction of its cost
(a sidecar exposes a few thousand histogram series, and ``generate_latest`` validates and escapes every
label of every sample).
"""

from __future__ import annotations

import html
import math
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import ThreadingWSGIServer

StartResponse = Callable[..., Any]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would flood stderr."""


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_TYPES = {"counter": "counter", "gauge": "gauge", "histogram": "histogram", "summary": "summary",
          "info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram", "unknown": "untyped"}


def _escape(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')
    return value


def _number(v: float) -> str:
    if v == math.inf:
        return "+Inf"
    if v == -math.inf:
        return "-Inf"
    if v != v:
        return "NaN"
    return repr(float(v))


def render_text(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition (format 0.0.4) of every family ``registry`` collects."""
    out: list[str] = []
    for metric in registry.collect():
        suffix = {"counter": "_total", "info": "_info"}.get(metric.type, "")
        name = metric.name + suffix
        doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {_TYPES.get(metric.type, 'untyped')}\n")
        for sample in metric.samples:
            if sample.name.endswith("_created"):
                continue
            if sample.labels:
                labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sample.labels.items())
                out.append(f"{sample.name}{{{labels}}} {_number(sample.value)}\n")
            else:
                out.append(f"{sample.name} {_number(sample.value)}\n")
    return "".join(out).encode()


def landing_page(title: str, lines: Iterable[str]) -> bytes:
    """A small HTML page linking /metrics, with ``lines`` as status paragraphs (escaped)."""
    body = "".join(f"<p>{html.escape(line)}</p>" for line in lines)
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title></head>"
            f"<body><h1>{html.escape(title)}</h1><p><a href=\"/metrics\">Metrics</a></p>{body}"
            "</body></html>").encode()


def metrics_app(registry: CollectorRegistry, status: Callable[[], list[str]] = list,
                title: str = "runmeter") -> Callable[[dict[str, Any], StartResponse], list[bytes]]:
    """The WSGI app: ``/metrics`` from ``registry``, ``/`` the landing page, anything else 404."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path == "/metrics":
            body = render_text(registry)
            start_response("200 OK", [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(body)))])
            return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]
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
