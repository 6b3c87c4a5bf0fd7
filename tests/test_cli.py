"""The console script: every command documented, and ``runmeter simulate`` as a real process."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from collector.cli import build_parser, command_modules, main
from collector.record import RunRecord
from collector.store.writer import Writer


def test_every_command_has_help_text() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    names = sorted(sub.choices)
    assert "simulate" in names
    assert names == sorted(m.NAME for m in command_modules())
    for name, p in sub.choices.items():
        assert p.description and len(p.description) > 20, name
        for action in p._actions:
            if action.dest != "help":
                assert action.help, f"{name} {action.option_strings} has no help"


def test_bad_fault_spec_is_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--fault", "explode"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "unknown fault 'explode'" in err


def test_simulate_prints_base_url_first_and_serves_until_stopped() -> None:
    env = {**os.environ, "RUNMETER_LATENCY": "none"}
    with subprocess.Popen([sys.executable, "-m", "collector.cli", "simulate", "--port", "0"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env) as proc:
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline().strip()
            assert first.startswith("http://127.0.0.1:") and first.endswith("/v1"), first
            unknown = httpx.get(first + "/no-such-thing", headers={"Authorization": "Bearer sk-test"})
            assert unknown.status_code == 404
            assert unknown.json()["error"]["message"].startswith("Invalid URL (GET /v1/no-such-thing)")
            no_key = httpx.get(first + "/assistants")
            assert no_key.status_code == 401
            assert no_key.json()["error"]["type"] == "invalid_request_error"
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=10)
    assert proc.returncode in (0, -signal.SIGINT)


def test_a_reader_that_leaves_early_ends_the_command_quietly(tmp_path: Path) -> None:
    """`runmeter report | head -1`: the pipe's reader is gone before the report is written."""
    db = tmp_path / "runmeter.duckdb"
    with Writer(db, flush_interval=60, install_signal_handlers=False) as w:
        w.submit(RunRecord(run_id="resp_1", api="responses", model="gpt-4o", status="completed",
                           started_at=1_764_000_000, input_tokens=10, output_tokens=2))
    read_end, write_end = os.pipe()
    os.close(read_end)  # no reader at all: the first write to stdout fails with EPIPE
    try:
        done = subprocess.run([sys.executable, "-m", "collector.cli", "report", "--db", str(db)],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    finally:
        os.close(write_end)
    assert done.returncode == 1 and done.stderr == ""


def test_dashboard_on_a_taken_port_says_so_before_printing_a_url(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["dashboard", "--port", str(port)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and f"cannot serve on 127.0.0.1:{port}: Address already in use" in err


def test_each_server_reads_its_own_port_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    own = {"serve": ("RUNMETER_SERVE_PORT", 9464), "proxy": ("RUNMETER_PROXY_PORT", 8787),
           "dashboard": ("RUNMETER_DASHBOARD_PORT", 8501), "simulate": ("RUNMETER_SIMULATOR_PORT", 0)}
    for command, (variable, _) in own.items():
        monkeypatch.setenv(variable, "4242")
        ports = {c: build_parser().parse_args([c]).port for c in own}
        assert ports == {c: 4242 if c == command else default for c, (_, default) in own.items()}, variable
        monkeypatch.delenv(variable)
    monkeypatch.setenv("RUNMETER_PROXY_SERVE_PORT", "4343")
    assert build_parser().parse_args(["proxy"]).serve_port == 4343
    assert build_parser().parse_args(["serve"]).port == 9464


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib import metadata

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"runmeter {metadata.version('runmeter')}\n"


def test_a_port_variable_that_is_no_longer_read_is_named(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RUNMETER_PORT", "7000")
    monkeypatch.setenv("RUNMETER_SERVE_PORT", "9100")
    assert main(["proxy", "--port", "70000"]) == 2  # a bad port: stops before serving
    err = capsys.readouterr().err.splitlines()
    assert err[:2] == [
        "runmeter proxy: note: RUNMETER_PORT is no longer read: each server has its own port variable "
        "(RUNMETER_SERVE_PORT, RUNMETER_PROXY_PORT, RUNMETER_DASHBOARD_PORT, RUNMETER_SIMULATOR_PORT)",
        "runmeter proxy: note: RUNMETER_SERVE_PORT is runmeter serve's port; the proxy's own sidecar port is "
        "RUNMETER_PROXY_SERVE_PORT"]
    monkeypatch.delenv("RUNMETER_PORT")
    assert main(["serve", "--port", "70000"]) == 2
    assert "note:" not in capsys.readouterr().err  # serve reads RUNMETER_SERVE_PORT itself
