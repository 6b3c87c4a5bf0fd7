"""Shared fixtures: a real simulator on a free port, SDK clients pointed at it, per-test data dirs."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import openai
import pytest

from collector.simulator import Simulator

CAPTURES = Path(__file__).resolve().parents[2] / "shared" / "captures"
"""The real recordings: ``shared/`` sits beside the clone (as in /work and in CI)."""


@pytest.fixture(autouse=True)
def _data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test works in its own directory with no inherited runmeter or OpenAI settings."""
    for name in list(os.environ):
        if name.startswith(("RUNMETER_", "OPENAI_", "OTEL_")) and name != "RUNMETER_REQUIRE_BINARIES":
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def sim() -> Iterator[Simulator]:
    """A simulator on a free port with the fast latency profile and a fixed epoch."""
    with Simulator(seed=7, epoch=1_764_000_000, latency="fast") as s:
        yield s


@pytest.fixture
def client(sim: Simulator) -> Iterator[openai.OpenAI]:
    """The unmodified SDK (default httpx2 transport) pointed at the simulator."""
    c = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
    yield c
    c.close()


@pytest.fixture
async def aclient(sim: Simulator) -> AsyncIterator[openai.AsyncOpenAI]:
    """The unmodified async SDK pointed at the simulator."""
    c = openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
    yield c
    await c.close()


def require_binary(name: str) -> str:
    """Path of a system binary; skip with the reason when missing, fail instead under ``.ci/run``."""
    path = shutil.which(name)
    if path:
        return path
    reason = f"{name} is not installed (apt-get install {'prometheus' if name.startswith('prom') else name})"
    if os.environ.get("RUNMETER_REQUIRE_BINARIES"):
        pytest.fail(f"{reason}; .ci/run requires it")
    pytest.skip(reason)


def capture_path(name: str) -> Path:
    """Path of a recording in ../shared/captures (read-only ground truth)."""
    path = CAPTURES / name
    if not path.exists():
        pytest.fail(f"capture {name} not found under {CAPTURES}")
    return path


@pytest.fixture(autouse=True)
def _no_background_threads_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that leaves one of runmeter's background threads running fails: the thread would go on
    working (and logging) inside the tests that come after it."""
    before = {t.ident for t in threading.enumerate()}
    yield
    left = sorted(t.name for t in threading.enumerate()
                  if t.ident not in before and t.name.startswith("runmeter") and t.is_alive())
    assert not left, f"{request.node.nodeid} left runmeter threads running: {left}"
