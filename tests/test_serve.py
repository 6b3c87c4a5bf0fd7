"""``runmeter serve``: the sidecar's /metrics from a real store, over real HTTP."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import duckdb
import pytest
from prometheus_client.parser import text_string_to_metric_families

from collector.metrics import families as fam
from collector.metrics.exporter import StoreCollector
from collector.metrics.sidecar import Sidecar
from collector.record import RunRecord
from collector.storage_poller import SnapshotRow, StoreSink
from collector.store.writer import Writer

METRICS_MD = Path(__file__).resolve().parents[1] / "grafana" / "METRICS.md"
GIB = 2**30
NOW = time.time()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _k(name: str, *labels: tuple[str, str]) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels))


def _types(text: str) -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def _store(db: Path) -> None:
    with Writer(db, flush_interval=60, install_signal_handlers=False) as w:
        for i in range(3):
            w.submit(RunRecord(run_id=f"resp_{i}", api="responses", model="gpt-5", status="completed",
                               started_at=NOW, input_tokens=100, output_tokens=10, ttft_seconds=0.5,
                               duration_seconds=2.0, file_search_calls=1, retrieved_chunks=4, streams=1))
        w.submit(RunRecord(run_id="resp_x", api="responses", model="gpt-5", status="failed", started_at=NOW))
        assert w.flush()
    sink = StoreSink(db)
    rows = [SnapshotRow(f"vs_{i}", NOW - 60, GIB // 2 * (i + 1), "completed", f"s{i}") for i in range(3)]
    rows.append(SnapshotRow("vs_old", NOW - 60, 5 * GIB, "expired", "old"))
    assert sink.write(rows) == "stored"
    assert sink.write([SnapshotRow("vs_0", NOW, GIB // 4, "completed", "s0")]) == "stored"
    # two days back: one complete UTC day of snapshots, so the storage forecast exists
    assert sink.write([SnapshotRow("vs_0", NOW - 2 * 86_400, GIB // 2, "completed", "s0")]) == "stored"


def test_metrics_md_documents_exactly_the_exported_families() -> None:
    documented = {}
    for line in METRICS_MD.read_text().splitlines():
        m = re.match(r"^\| `(runmeter_[a-z0-9_]+)` \| (counter|gauge|histogram) \|([a-z_, ]*)\|", line)
        if m:
            labels = tuple(x.strip() for x in m.group(3).split(",") if x.strip())
            documented[m.group(1)] = (m.group(2), labels)
    assert documented == {f.name: (f.kind, f.labels) for f in fam.FAMILIES}
    assert not any(f.kind == "gauge" and f.name.endswith("_total") for f in fam.FAMILIES)


def test_sidecar_exports_the_store(tmp_path: Path) -> None:
    db = tmp_path / "runmeter.duckdb"
    _store(db)
    sidecar = Sidecar(db, port=0, flush_interval=0.2)
    try:
        status, text = _get(sidecar.url + "metrics")
        assert status == 200
        s = _samples(text)
        rm = (("api", "responses"), ("model", "gpt-5"))
        assert s[_k("runmeter_runs_total", *rm, ("status", "completed"))] == 3
        assert s[_k("runmeter_runs_total", *rm, ("status", "failed"))] == 1
        assert s[_k("runmeter_tokens_total", *rm, ("token_type", "input"))] == 300
        assert s[_k("runmeter_cost_usd_total", *rm, ("meter", "file_search_calls"))] == pytest.approx(0.0075)
        assert s[_k("runmeter_time_to_first_token_seconds_bucket", *rm, ("le", "0.64"))] == 3
        assert s[_k("runmeter_time_to_first_token_seconds_bucket", *rm, ("le", "0.32"))] == 0
        assert s[_k("runmeter_time_to_first_token_seconds_bucket", *rm, ("le", "655.36"))] == 3
        assert s[("runmeter_time_to_first_token_seconds_count", rm)] == 3
        assert s[("runmeter_retrieved_chunks_per_run_sum", rm)] == 12
        # Latest snapshot per store; the expired store bills nothing: 0.25 + 1 + 1.5 GiB.
        assert s[_k("runmeter_vector_stores_usage_bytes")] == 2.75 * GIB
        assert s[_k("runmeter_vector_store_usage_bytes", ("vector_store_id", "vs_2"),)] == 1.5 * GIB
        assert s[_k("runmeter_vector_stores", ("status", "completed"),)] == 3
        assert s[_k("runmeter_vector_stores", ("status", "expired"))] == 1
        assert s[_k("runmeter_storage_billable_gigabytes")] == pytest.approx(1.75)
        assert s[_k("runmeter_storage_cost_usd_per_day")] == pytest.approx(0.175)
        # The forecast integrates 14 days of snapshots on a thread of its own: not in the first scrape.
        assert _k("runmeter_storage_forecast_usd_per_day") not in s
        sidecar.collector.wait_forecast()
        text = _get(sidecar.url + "metrics")[1]
        assert _samples(text)[_k("runmeter_storage_forecast_usd_per_day")] >= 0
        assert s[_k("runmeter_storage_last_poll_timestamp_seconds")] == pytest.approx(NOW, abs=1e-3)
        assert s[_k("runmeter_store_up")] == 1
        assert s[_k("runmeter_writer_dropped_total")] == 0
        assert s[_k("runmeter_build_info", ("version", fam.version()),)] == 1
        types = _types(text)
        assert types == {f.name: f.kind for f in fam.FAMILIES}
        status, page = _get(sidecar.url)
        assert status == 200 and '<a href="/metrics">' in page and str(db) in page
        assert _get(sidecar.url + "nope")[0] == 404
    finally:
        sidecar.close()


def test_sidecar_ingests_other_processes_spool_and_reports_the_backlog(tmp_path: Path) -> None:
    db = tmp_path / "runmeter.duckdb"
    sidecar = Sidecar(db, port=0, flush_interval=0.2)
    try:
        deadline = time.monotonic() + 10
        while not db.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        app = Writer(db, flush_interval=60, install_signal_handlers=False)  # the role is taken: spools
        for i in range(20):
            app.submit(RunRecord(run_id=f"c{i}", api="chat", model="gpt-4o-mini", status="completed",
                                 input_tokens=5, output_tokens=5))
        assert app.flush() and app.spooled == 20
        app.close()
        url = sidecar.url + "metrics"
        key = ("runmeter_runs_total", (("api", "chat"), ("model", "gpt-4o-mini"), ("status", "completed")))
        while _samples(_get(url)[1]).get(key) != 20:
            assert time.monotonic() < deadline, "the sidecar never ingested the spool"
            time.sleep(0.1)
        assert _samples(_get(url)[1])[("runmeter_writer_spooled", ())] == 0
    finally:
        sidecar.close()


def test_a_busy_store_serves_the_last_values_and_says_store_down(tmp_path: Path) -> None:
    db = tmp_path / "runmeter.duckdb"
    _store(db)
    collector = StoreCollector(db, read_timeout=0.2)
    first = {m.name: m for m in collector.collect()}
    assert first["runmeter_store_up"].samples[0].value == 1
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time\n"
                               f"c = duckdb.connect({str(db)!r}); print('held', flush=True); time.sleep(30)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        second = {m.name: m for m in collector.collect()}
        assert time.monotonic() - t0 < 1.0
    finally:
        holder.kill()
        holder.communicate(timeout=10)
    assert second["runmeter_store_up"].samples[0].value == 0
    assert collector.problem is not None and "busy" in collector.problem
    assert second["runmeter_runs"].samples == first["runmeter_runs"].samples  # the cache, not nothing
    assert second["runmeter_vector_stores_usage_bytes"].samples[0].value == 2.75 * GIB


def test_a_missing_store_still_serves_health(tmp_path: Path) -> None:
    collector = StoreCollector(tmp_path / "nothing.duckdb")
    got = {m.name: m for m in collector.collect()}
    assert got["runmeter_store_up"].samples[0].value == 0
    assert "no runmeter store" in (collector.problem or "")
    assert got["runmeter_writer_pending"].samples[0].value == 0
    assert got["runmeter_runs"].samples == []


def _serve(db: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "collector.cli", "serve", "--db", str(db), "--port", "0",
                             "--no-poll", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_cli_on_a_foreign_store_says_so_and_serves_health(tmp_path: Path) -> None:
    db = tmp_path / "other.duckdb"
    with duckdb.connect(str(db)) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    proc = _serve(db)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        s = _samples(_get(url + "metrics")[1])
        assert s[_k("runmeter_store_up")] == 0
        assert s[_k("runmeter_writer_errors_total")] == 0
        assert "not a runmeter store" in _get(url)[1]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "is not a runmeter store" in err and "serving health metrics only" in err
    assert "Traceback" not in err
    with duckdb.connect(str(db), read_only=True) as conn:  # untouched
        assert conn.execute("SELECT table_name FROM information_schema.tables").fetchall() == [("invoices",)]


def test_cli_creates_a_missing_store_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    db = tmp_path / "new.duckdb"
    proc = _serve(db)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        deadline = time.monotonic() + 10
        while _samples(_get(url + "metrics")[1])[("runmeter_store_up", ())] != 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert f"no store at {db} yet; its writer creates it now" in err
    assert db.exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--port", "70000"], "--port 70000 is not a port number"),
    (["--poll-interval", "0"], "--poll-interval must be"),
    (["--free-gb", "-1"], "--free-gb '-1' is not a non-negative number"),
])
def test_cli_bad_input_is_one_clear_line(tmp_path: Path, args: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "collector.cli", "serve", "--db", str(tmp_path / "x.duckdb"),
                           "--no-poll", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_cli_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "collector.cli", "serve", "--db",
                               str(tmp_path / "x.duckdb"), "--no-poll", "--port", str(port)],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"cannot serve on 127.0.0.1:{port}" in proc.stderr and "Traceback" not in proc.stderr


def test_render_text_matches_prometheus_client(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

    from collector.metrics.server import render_text

    db = tmp_path / "runmeter.duckdb"
    _store(db)
    collector = StoreCollector(db)
    list(collector.collect())
    collector.wait_forecast()  # so both renderings see the same families
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    Gauge("odd_labels", "Odd.", ["v"], registry=registry).labels('a"b\\c\nd').set(float("inf"))
    Counter("plain", "Plain.", registry=registry).inc(2)
    ours = render_text(registry).decode()
    theirs = generate_latest(registry).decode()
    assert _samples(ours) == {k: v for k, v in _samples(theirs).items() if not k[0].endswith("_created")}
    assert _types(ours) == {k: v for k, v in _types(theirs).items() if not k.endswith("_created")}
    assert 'odd_labels{v="a\\"b\\\\c\\nd"} +Inf' in ours
