"""Live metrics in a recording process (``Recorder(..., metrics_port=N)`` / ``registry=``)."""

from __future__ import annotations

import logging
import socket
import time
import urllib.request
from pathlib import Path

import duckdb
import openai
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from analysis.prices import builtin_price_table
from collector import workload
from collector.metrics.ingest import load_aggregates
from collector.metrics.live import LiveMetrics
from collector.record import RunRecord
from collector.recorder import Recorder


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_live_metrics_count_a_workload_as_the_store_does(client: openai.OpenAI, tmp_path: Path) -> None:
    db = tmp_path / "live.duckdb"
    rec = Recorder(db, metrics_port=0)
    try:
        assert rec.metrics is not None and rec.metrics.port
        port = rec.metrics.port
        fx = workload.setup(rec.instrument(client), seed=3, n_documents=3)
        counts = workload.run(client, fx, runs=16, seed=3)
        rec.flush()
        live = _scrape(port)
    finally:
        rec.close()
    with duckdb.connect(str(db), read_only=True) as conn:
        stored = load_aggregates(conn)
        n_runs = conn.execute("SELECT count(*) FROM runs WHERE api IN ('responses', 'chat')").fetchone()
    live_tokens = {k[1]: v for k, v in live.items() if k[0] == "runmeter_tokens_total"}
    store_tokens = {tuple(zip(("api", "model", "token_type"), key[1], strict=True)): v
                    for key, v in stored.counters.items() if key[0] == "runmeter_tokens_total"}
    assert live_tokens and live_tokens == {tuple(sorted(k)): v for k, v in store_tokens.items()}
    live_runs = sum(v for k, v in live.items() if k[0] == "runmeter_runs_total"
                    and dict(k[1])["api"] in ("responses", "chat"))
    assert n_runs is not None and live_runs == n_runs[0] == counts.get("responses", 0) + counts.get("chat", 0)
    assert live[("runmeter_build_info", (("version", live_version(live)),))] == 1
    assert live[("runmeter_writer_dropped_total", ())] == 0


def live_version(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> str:
    return next(dict(k[1])["version"] for k in samples if k[0] == "runmeter_build_info")


def test_an_apps_own_registry_gets_the_families(client: openai.OpenAI, tmp_path: Path) -> None:
    registry = CollectorRegistry()
    with Recorder(tmp_path / "r.duckdb", registry=registry) as rec:
        assert rec.metrics is not None and rec.metrics.port is None
        rec.instrument(client)
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        text = generate_latest(registry).decode()
    assert 'runmeter_runs_total{api="chat",model="gpt-4o-mini",status="completed"} 1.0' in text


def test_a_taken_port_never_breaks_recording(client: openai.OpenAI, tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with caplog.at_level(logging.WARNING, "runmeter.metrics"), \
                Recorder(tmp_path / "r.duckdb", metrics_port=port) as rec:
            rec.instrument(client)
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            rec.flush()
    assert f"cannot serve live metrics on 127.0.0.1:{port}" in caplog.text
    with duckdb.connect(str(tmp_path / "r.duckdb"), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (1,)


def test_a_later_observation_of_a_run_adds_only_the_difference() -> None:
    live = LiveMetrics(builtin_price_table(), drain_interval=0)
    live.observe(RunRecord("run_1", "assistants", "gpt-4o", "interrupted", ttft_seconds=0.2, streams=1,
                           duration_seconds=1.0, input_tokens=None))
    live.observe(RunRecord("run_1", "assistants", "gpt-4o", "completed", input_tokens=300, output_tokens=30,
                           started_at=time.time()))
    live.drain()
    c = live.aggregates.counters
    am = ("assistants", "gpt-4o")
    assert c[("runmeter_tokens_total", (*am, "input"))] == 300
    assert c[("runmeter_runs_total", (*am, "interrupted"))] == 1
    assert c[("runmeter_runs_total", (*am, "completed"))] == 1
    assert sum(live.aggregates.histograms[("runmeter_run_duration_seconds", am)].counts) == 1
    live.close()


def test_observe_costs_well_under_five_microseconds_on_the_request_thread() -> None:
    live = LiveMetrics(builtin_price_table(), drain_interval=0)
    record = RunRecord("r", "responses", "gpt-4o-mini", "completed", input_tokens=10, output_tokens=2)
    n = 20_000
    t0 = time.perf_counter()
    for _ in range(n):
        live.observe(record)
    per_run = (time.perf_counter() - t0) / n
    live.close()
    assert per_run < 5e-6, per_run
