"""The console script: every command documented, and ``runmeter simulate`` as a real process."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

import httpx
import pytest

from collector.cli import build_parser, command_modules, main


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
