"""End to end: a real Prometheus scrapes ``runmeter serve`` while the simulator runs a workload.

Every dashboard panel's query and every rule's expression returns data through Prometheus's HTTP
API, every rule evaluates without error, and faults driven through the simulator make the matching
alerts pending (their production ``for:`` clauses are minutes long; the thresholds are unchanged).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from conftest import require_binary
from prom_helpers import (
    DASHBOARDS,
    RULES,
    PrometheusServer,
    panel_queries,
    start_prometheus,
    substitute_grafana_vars,
)

from collector import workload
from collector.record import RunRecord
from collector.recorder import Recorder
from collector.simulator import Simulator
from collector.storage_poller import SnapshotRow, StoreSink

FAULT = {"X-Runmeter-Fault": "failed"}
UNPRICED_MODEL = "ft:gpt-4o-mini:acme::e2e"


def _rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def comparison_lhs(expr: str) -> str:
    """The left side of an alert's top-level threshold comparison (the whole expression if none)."""
    depth, i, quote = 0, 0, ""
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and c in "<>!=" and expr[i:i + 2] != "=~" and expr[i:i + 2] != "!~":
            return expr[:i].strip()
        i += 1
    return expr.strip()


def test_comparison_lhs() -> None:
    assert comparison_lhs('x{a=~"b|c"} * 86400 > 100') == 'x{a=~"b|c"} * 86400'
    assert comparison_lhs("a\n  > 1.5 * (a offset 1d)") == "a"
    assert comparison_lhs("sum by (job) (rate(x[5m]))") == "sum by (job) (rate(x[5m]))"


def _has_data(prom: PrometheusServer, expr: str) -> bool:
    return any(not math.isnan(float(s["value"][1])) for s in prom.query(expr))


def _wait_for_data(prom: PrometheusServer, exprs: dict[str, str], timeout: float) -> None:
    missing = dict(exprs)
    deadline = time.monotonic() + timeout
    while missing and time.monotonic() < deadline:
        missing = {k: e for k, e in missing.items() if not _has_data(prom, e)}
        if missing:
            time.sleep(0.5)
    assert not missing, f"no data for: {json.dumps(missing, indent=1)}"


def _alert_states(prom: PrometheusServer) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for a in prom.api("alerts")["alerts"]:
        out.setdefault(a["labels"]["alertname"], set()).add(a["state"])
    return out


def _wait_for_alerts(prom: PrometheusServer, names: set[str], timeout: float) -> dict[str, set[str]]:
    deadline = time.monotonic() + timeout
    states = _alert_states(prom)
    while not names <= set(states) and time.monotonic() < deadline:
        time.sleep(0.5)
        states = _alert_states(prom)
    assert names <= set(states), f"not pending or firing: {sorted(names - set(states))}; active: {states}"
    return states


def _drive(client: openai.OpenAI, fx: workload.Fixture, stop: threading.Event) -> None:
    """The workload, plus a failing model, an unpriced model and a chat stream without usage."""
    i = 0
    while not stop.is_set():
        i += 1
        workload.run(client, fx, runs=3, seed=i)
        try:
            with client.responses.stream(model="gpt-4.1-nano", input="Where is my order?",
                                         extra_headers=FAULT) as stream:
                stream.get_final_response()
        except (openai.APIError, RuntimeError):
            pass  # the run failed, as asked
        chat = client.chat.completions.create(model=UNPRICED_MODEL, stream=True,
                                              messages=[{"role": "user", "content": "hi"}])
        for _ in chat:
            pass


@pytest.fixture
def serve(sim: Simulator, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``runmeter serve`` polling the simulator's vector stores every second: (host:port, db)."""
    db = tmp_path / "e2e.duckdb"
    # A store polled since two days ago (one complete UTC day): the storage forecast exists, as in a
    # deployment that has run a while; the simulator's stores are polled from now on.
    two_days_ago = time.time() - 2 * 86_400
    assert StoreSink(db).write([SnapshotRow("vs_history", two_days_ago, 2**30, "completed", "history")]) \
        == "stored"
    env = {**os.environ, "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": sim.base_url}
    proc = subprocess.Popen([sys.executable, "-m", "collector.cli", "serve", "--db", str(db), "--port", "0",
                             "--poll-interval", "1"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read() if proc.stderr else ""
        deadline = time.monotonic() + 20
        while not db.exists():  # the sidecar's writer creates the store
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield url.removeprefix("http://").rstrip("/"), db
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err


def _hold_store(db: Path) -> subprocess.Popen[str]:
    """A process holding the DuckDB file read-write (a foreign writer) until its stdin closes."""
    code = (
        "import duckdb, sys, time\n"
        "while True:\n"
        "    try:\n"
        f"        c = duckdb.connect({str(db)!r}); break\n"
        "    except duckdb.IOException:\n"
        "        time.sleep(0.01)\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_prometheus_scrapes_serve_dashboards_rules_and_alerts(
    sim: Simulator, serve: tuple[str, Path], tmp_path: Path
) -> None:
    binary = require_binary("prometheus")
    target, db = serve
    client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
    rec = Recorder(db)  # the sidecar holds the writer role: this process spools, the sidecar ingests
    stop = threading.Event()
    worker: threading.Thread | None = None
    try:
        rec.instrument(client)
        fx = workload.setup(client, seed=11, n_documents=3)
        worker = threading.Thread(target=_drive, args=(client, fx, stop), name="workload", daemon=True)
        worker.start()
        with start_prometheus(binary, tmp_path / "prom", [target], [RULES]) as prom:
            panels = {f"{d.stem} / {p['title']} / {t.get('refId')}": substitute_grafana_vars(t["expr"])
                      for d in DASHBOARDS for p, t in panel_queries(json.loads(d.read_text()))}
            _wait_for_data(prom, panels, timeout=40)

            rules = _rules()
            exprs = {r["record"] + json.dumps(r.get("labels", {})): r["record"]
                     for r in rules if "record" in r}
            exprs.update({r["alert"]: comparison_lhs(r["expr"]) for r in rules if "alert" in r})
            _wait_for_data(prom, exprs, timeout=15)
            evaluated = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
            assert len(evaluated) == len(rules)
            assert [(r["name"], r.get("lastError")) for r in evaluated if r["health"] != "ok"] == []

            states = _wait_for_alerts(prom, {"RunmeterFailedRunsRising", "RunmeterUnpricedRuns",
                                             "RunmeterChatStreamsWithoutUsage"}, timeout=15)
            assert states["RunmeterFailedRunsRising"] == {"pending"}  # for: 15m
            failing = prom.query("api_model:runmeter_runs_failed_per_runs:ratio_rate15m > 0.1")
            assert ("responses", "gpt-4.1-nano") in {(s["metric"]["api"], s["metric"]["model"])
                                                     for s in failing}
            unpriced = prom.query("runmeter_unpriced_runs_total")
            assert {s["metric"]["model"] for s in unpriced} == {"other"}  # no unbounded model label

            # A foreign writer holds the store: scrapes keep working, the store reads as down, and the
            # records other processes spool meanwhile pile up as the sidecar's backlog.
            holder = _hold_store(db)
            try:
                for i in range(1200):
                    rec.writer.submit(RunRecord(f"backlog_{i}", "chat", "gpt-4o-mini", "completed",
                                                input_tokens=1, output_tokens=1))
                rec.flush()
                states = _wait_for_alerts(prom, {"RunmeterWriterBacklog", "RunmeterStoreDown"}, timeout=15)
                assert states["RunmeterStoreDown"] == {"pending"}  # for: 5m
                assert states["RunmeterWriterBacklog"] == {"pending"}  # for: 10m
                assert prom.query('up{job="runmeter"}')[0]["value"][1] == "1"  # the scrape never failed
            finally:
                assert holder.stdin is not None
                holder.communicate(timeout=10)
            # Released: the sidecar ingests the backlog and counts it.
            drained = "runmeter_writer_pending < 1000 and runmeter_store_up == 1"
            prom.wait_until(lambda: _has_data(prom, drained), timeout=20, what="backlog ingested")
    finally:
        stop.set()
        if worker is not None:
            worker.join(timeout=30)
        rec.close()
        client.close()
