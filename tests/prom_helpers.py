"""Test helpers for Prometheus: a PromQL selector scanner, Grafana variable substitution, a real
``prometheus`` server on a free port, and a tiny ``/metrics`` server.

The scanner is not a full PromQL parser (syntax is checked by ``promtool``); it finds every series
selector with its matchers, range and the functions around it, which is what the dashboard lint rules
need.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DASHBOARDS",
    "GRAFANA",
    "GRAFANA_DEFAULTS",
    "METRICS_MD",
    "RULES",
    "PrometheusServer",
    "Selector",
    "exposition",
    "free_port",
    "panel_queries",
    "scan_selectors",
    "serve_metrics",
    "start_prometheus",
    "substitute_grafana_vars",
]

GRAFANA = Path(__file__).resolve().parents[1] / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
RULES = GRAFANA / "rules" / "runmeter-rules.yaml"
METRICS_MD = GRAFANA / "METRICS.md"

AGGREGATIONS = frozenset({
    "sum", "avg", "min", "max", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group",
})
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
                      "group_left", "group_right", "inf", "nan"})
LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})

_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_NUMBER = re.compile(
    r"(?:0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?:ms|[smhdwy])?(?:\d+(?:ms|[smhdwy]))*"
)
_MATCHER = re.compile(
    r"""\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"""
    r"""("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)\s*,?"""
)
_VAR = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)\]\]")


@dataclass(frozen=True)
class Selector:
    """One series selector in a PromQL expression.

    ``calls`` are the functions and aggregations around it, outermost first; ``range`` is the text
    inside ``[...]`` when the selector is a range vector.
    """

    metric: str
    matchers: tuple[tuple[str, str, str], ...]
    range: str | None
    calls: tuple[str, ...]

    def matcher(self, label: str) -> tuple[str, str] | None:
        """The (operator, value) matching ``label``, if any."""
        for name, op, value in self.matchers:
            if name == label:
                return op, value
        return None


def _skip_string(expr: str, i: int) -> int:
    quote = expr[i]
    i += 1
    while i < len(expr) and expr[i] != quote:
        i += 2 if expr[i] == "\\" and quote != "`" else 1
    if i >= len(expr):
        raise ValueError(f"unterminated string in {expr!r}")
    return i + 1


def _closing(expr: str, i: int, close: str) -> int:
    """Index just past the ``close`` that ends the bracket opened at ``i``, skipping strings."""
    j = i + 1
    while j < len(expr):
        c = expr[j]
        if c in "\"'`":
            j = _skip_string(expr, j)
            continue
        if c == close:
            return j + 1
        j += 1
    raise ValueError(f"unbalanced {expr[i]!r} in {expr!r}")


def _next_char(expr: str, i: int) -> tuple[str, int]:
    while i < len(expr) and expr[i].isspace():
        i += 1
    return (expr[i] if i < len(expr) else ""), i


def _parse_matchers(body: str, expr: str) -> tuple[tuple[str, str, str], ...]:
    out: list[tuple[str, str, str]] = []
    pos = 0
    while pos < len(body) and body[pos:].strip():
        m = _MATCHER.match(body, pos)
        if not m:
            raise ValueError(f"bad label matcher {body[pos:]!r} in {expr!r}")
        value = m.group(3)[1:-1]
        if m.group(3)[0] != "`":
            value = value.encode().decode("unicode_escape")
        out.append((m.group(1), m.group(2), value))
        pos = m.end()
    return tuple(out)


def scan_selectors(expr: str) -> list[Selector]:
    """Every series selector in ``expr`` (Grafana variables may stay in place)."""
    selectors: list[Selector] = []
    stack: list[str] = []
    pending = ""  # an aggregation whose parenthesis has not opened yet (`sum by (x) (...)`)
    i = 0
    while i < len(expr):
        c = expr[i]
        if c.isspace():
            i += 1
        elif c == "#":
            nl = expr.find("\n", i)
            i = len(expr) if nl < 0 else nl
        elif c in "\"'`":
            i = _skip_string(expr, i)
        elif c == "(":
            stack.append(pending)
            pending = ""
            i += 1
        elif c == ")":
            if not stack:
                raise ValueError(f"unbalanced ')' in {expr!r}")
            stack.pop()
            i += 1
        elif c == "[":  # a subquery or a range after a parenthesised expression
            i = _closing(expr, i, "]")
        elif c == "{":  # a selector without a metric name
            end = _closing(expr, i, "}")
            bare = _parse_matchers(expr[i + 1:end - 1], expr)
            name = {n: v for n, _, v in bare}.get("__name__", "")
            i = end
            rng, i = _range_after(expr, i)
            selectors.append(Selector(name, bare, rng, tuple(stack)))
        elif c.isdigit() or (c == "." and i + 1 < len(expr) and expr[i + 1].isdigit()):
            m = _NUMBER.match(expr, i)
            i = m.end() if m else i + 1
        elif _IDENT.match(expr, i):
            m = _IDENT.match(expr, i)
            assert m is not None
            word = m.group(0)
            i = m.end()
            nxt, j = _next_char(expr, i)
            low = word.lower()
            if low in LABEL_LIST_KEYWORDS:
                if nxt == "(":
                    i = _closing(expr, j, ")")
            elif low in AGGREGATIONS and nxt in ("(", "b", "w"):
                pending = low
            elif nxt == "(":
                pending = word
            elif low in KEYWORDS:
                pass
            else:
                matchers: tuple[tuple[str, str, str], ...] = ()
                if nxt == "{":
                    end = _closing(expr, j, "}")
                    matchers = _parse_matchers(expr[j + 1:end - 1], expr)
                    i = end
                rng, i = _range_after(expr, i)
                selectors.append(Selector(word, matchers, rng, tuple(stack)))
        else:
            i += 1
    if stack:
        raise ValueError(f"unbalanced '(' in {expr!r}")
    return selectors


def _range_after(expr: str, i: int) -> tuple[str | None, int]:
    nxt, j = _next_char(expr, i)
    if nxt != "[":
        return None, i
    end = _closing(expr, j, "]")
    return expr[j + 1:end - 1].strip(), end


GRAFANA_DEFAULTS: Mapping[str, str] = {
    "__rate_interval": "4s",
    "__interval": "1s",
    "__range": "1m",
    "datasource": "prometheus",
    "job": ".*",
    "instance": ".*",
    "api": ".*",
    "model": ".*",
}
"""Values for Grafana's variables when a panel query runs straight against Prometheus (1 s scrapes)."""


def substitute_grafana_vars(expr: str, values: Mapping[str, str] = GRAFANA_DEFAULTS) -> str:
    """``expr`` with ``$var``, ``${var}`` and ``[[var]]`` replaced from ``values``.

    Raises ``KeyError`` naming a variable that has no value, so a new dashboard variable cannot slip
    through untested.
    """

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in values:
            raise KeyError(f"no value for Grafana variable ${name} in {expr!r}")
        return values[name]

    return _VAR.sub(repl, expr)


def panel_queries(dashboard: Mapping[str, Any]) -> Iterator[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """(panel, target) for every target of every panel, rows included."""
    panels: list[Mapping[str, Any]] = list(dashboard.get("panels", []))
    while panels:
        panel = panels.pop(0)
        panels.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            yield panel, target


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PrometheusServer:
    """A real ``prometheus`` process: HTTP API access and shutdown."""

    def __init__(self, process: subprocess.Popen[bytes], base_url: str, log: Path) -> None:
        self.process = process
        self.base_url = base_url
        self.log = log

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>`` and return ``data``; raise with Prometheus's error otherwise."""
        url = f"{self.base_url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query result (a vector's samples; a scalar becomes one sample without labels)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def run_panel_queries(self, dashboard: Mapping[str, Any],
                          values: Mapping[str, str] = GRAFANA_DEFAULTS) -> dict[str, list[dict[str, Any]]]:
        """Each target's expression, with Grafana variables substituted, run through /api/v1/query.

        Keys are ``"<panel title> / <refId>"``.
        """
        out: dict[str, list[dict[str, Any]]] = {}
        for panel, target in panel_queries(dashboard):
            key = f"{panel['title']} / {target.get('refId', '?')}"
            out[key] = self.query(substitute_grafana_vars(target["expr"], values))
        return out

    def wait_until(self, check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
        """Poll ``check`` until true; fail with the server log's tail on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if check():
                return
            time.sleep(0.25)
        tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        raise TimeoutError(f"prometheus: {what} not reached in {timeout}s\n{tail}")

    def stop(self) -> None:
        """Terminate the process and wait for it (kill after 10 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


@contextmanager
def start_prometheus(binary: str, workdir: Path, scrape_targets: Sequence[str],
                     rule_files: Sequence[Path] = (), job: str = "runmeter") -> Iterator[PrometheusServer]:
    """Run ``prometheus`` on a free port scraping ``scrape_targets`` (``host:port``) every second.

    Rules are evaluated every second too; storage lives in ``workdir``. The server is ready (its
    ``/-/ready`` answers) when the context is entered and stopped when it exits.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(Path(p).resolve()) for p in rule_files],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(scrape_targets)}]}],
    }
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [binary, f"--config.file={config_path}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log_file, stderr=subprocess.STDOUT,
        )
    server = PrometheusServer(process, f"http://127.0.0.1:{port}", log)
    try:
        server.wait_until(lambda: _ready(server.base_url), what="/-/ready")
        yield server
    finally:
        server.stop()


def _ready(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/-/ready", timeout=1) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


@contextmanager
def serve_metrics(render: Callable[[int], str]) -> Iterator[str]:
    """Serve ``render(n)`` (text exposition, ``n`` counts scrapes from 1) at ``/metrics``.

    Yields the ``host:port`` to scrape; the server stops when the context exits.
    """
    lock = threading.Lock()
    scrapes = [0]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            with lock:
                scrapes[0] += 1
                n = scrapes[0]
            body = render(n).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, name="metrics-server", daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


LATENCY_BUCKETS = tuple(round(0.01 * 2**k, 2) for k in range(17))
"""0.01, 0.02, 0.04 ... 81.92, 163.84, 327.68, 655.36 seconds."""
CHUNK_BUCKETS = (0, 1, 2, 3, 5, 8, 10, 15, 20, 30, 50)


def _histogram(name: str, labels: str, buckets: Sequence[float], observations: Sequence[float]) -> list[str]:
    lines = [f"# TYPE {name} histogram"]
    for le in buckets:
        count = sum(1 for o in observations if o <= le)
        lines.append(f'{name}_bucket{{{labels},le="{le:g}"}} {count}')
    lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {len(observations)}')
    lines.append(f"{name}_sum{{{labels}}} {sum(observations):g}")
    lines.append(f"{name}_count{{{labels}}} {len(observations)}")
    return lines


def exposition(n: int, now: float | None = None) -> str:
    """A small runmeter ``/metrics`` text after ``n`` scrapes: every family, counters growing with ``n``.

    One responses/gpt-5 stream per scrape (TTFT 0.5 s, duration 3 s, 4 chunks) plus a failed one
    every other scrape; storage holds 3 GiB in two large stores.
    """
    rm = 'api="responses",model="gpt-5"'
    runs = n
    gib = 2**30
    lines = [
        "# TYPE runmeter_runs_total counter",
        f'runmeter_runs_total{{{rm},status="completed"}} {runs}',
        f'runmeter_runs_total{{{rm},status="failed"}} {n // 2}',
        "# TYPE runmeter_tokens_total counter",
        f'runmeter_tokens_total{{{rm},token_type="input"}} {1500 * runs}',
        f'runmeter_tokens_total{{{rm},token_type="cached_input"}} {500 * runs}',
        f'runmeter_tokens_total{{{rm},token_type="output"}} {300 * runs}',
        f'runmeter_tokens_total{{{rm},token_type="reasoning"}} {100 * runs}',
        "# TYPE runmeter_cost_usd_total counter",
        f'runmeter_cost_usd_total{{{rm},meter="input"}} {0.001875 * runs:g}',
        f'runmeter_cost_usd_total{{{rm},meter="output"}} {0.003 * runs:g}',
        f'runmeter_cost_usd_total{{{rm},meter="file_search_calls"}} {0.0025 * runs:g}',
        "# TYPE runmeter_file_search_calls_total counter",
        f"runmeter_file_search_calls_total{{{rm}}} {runs}",
        "# TYPE runmeter_retrieved_chunks_total counter",
        f"runmeter_retrieved_chunks_total{{{rm}}} {4 * runs}",
        "# TYPE runmeter_chat_streams_without_usage_total counter",
        f'runmeter_chat_streams_without_usage_total{{model="gpt-4o-mini"}} {n}',
        "# TYPE runmeter_writer_dropped_total counter",
        f"runmeter_writer_dropped_total {n // 3}",
        "# TYPE runmeter_writer_errors_total counter",
        f"runmeter_writer_errors_total {n // 3}",
        "# TYPE runmeter_unpriced_runs_total counter",
        f'runmeter_unpriced_runs_total{{api="chat",model="other"}} {n}',
        *_histogram("runmeter_time_to_first_token_seconds", rm, LATENCY_BUCKETS, [0.5] * runs),
        *_histogram("runmeter_run_duration_seconds", rm, LATENCY_BUCKETS, [3.0] * runs),
        *_histogram("runmeter_retrieved_chunks_per_run", rm, CHUNK_BUCKETS, [4] * runs),
        "# TYPE runmeter_vector_stores_usage_bytes gauge",
        f"runmeter_vector_stores_usage_bytes {3 * gib + 1024 * n}",
        "# TYPE runmeter_vector_store_usage_bytes gauge",
        f'runmeter_vector_store_usage_bytes{{vector_store_id="vs_big"}} {2 * gib + 1024 * n}',
        f'runmeter_vector_store_usage_bytes{{vector_store_id="vs_small"}} {gib}',
        "# TYPE runmeter_vector_stores gauge",
        'runmeter_vector_stores{status="completed"} 2',
        'runmeter_vector_stores{status="expired"} 1',
        "# TYPE runmeter_storage_billable_gigabytes gauge",
        "runmeter_storage_billable_gigabytes 2",
        "# TYPE runmeter_storage_cost_usd_per_day gauge",
        "runmeter_storage_cost_usd_per_day 0.2",
        "# TYPE runmeter_storage_forecast_usd_per_day gauge",
        "runmeter_storage_forecast_usd_per_day 0.35",
        "# TYPE runmeter_storage_last_poll_timestamp_seconds gauge",
        f"runmeter_storage_last_poll_timestamp_seconds {time.time() if now is None else now:.3f}",
        "# TYPE runmeter_writer_pending gauge",
        "runmeter_writer_pending 7",
        "# TYPE runmeter_writer_spooled gauge",
        "runmeter_writer_spooled 0",
        "# TYPE runmeter_store_up gauge",
        "runmeter_store_up 1",
        "# TYPE runmeter_build_info gauge",
        'runmeter_build_info{version="0.0.0-test"} 1',
    ]
    return "\n".join(lines) + "\n"
