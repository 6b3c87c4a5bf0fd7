"""The tree is linted (ruff) and typed (mypy) as pyproject.toml configures them, in CI as on a desk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(module: str, *args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    try:
        __import__(module)
    except ImportError:
        pytest.skip(f"{module} is not installed (pip install -e '.[dev]')")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)


def test_ruff_finds_nothing(tmp_path: Path) -> None:
    done = _run("ruff", "check", "--no-cache", ".", tmp_path=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_finds_nothing(tmp_path: Path) -> None:
    # Its own cache directory: a clean clone has none, and two runs must not share a half-written one.
    done = _run("mypy", "--cache-dir", str(tmp_path / "mypy"), tmp_path=tmp_path)
    assert done.returncode == 0 and "Success" in done.stdout, done.stdout + done.stderr
