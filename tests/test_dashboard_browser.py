"""A real ``runmeter dashboard`` in headless Debian Chromium: every page renders, with charts, without errors.

Chromium is driven over the DevTools protocol (aiohttp websocket): navigate, wait until Streamlit reports
the script finished (``stApp`` ``data-test-script-state="notRunning"``, connected, no spinner) and the
Vega charts have drawn, read the DOM for error elements, then capture a full-page screenshot.

Also a script for the README's screenshots::

    python tests/test_dashboard_browser.py http://127.0.0.1:8501/ docs/screenshots
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import require_binary

PAGES = ("overview", "storage", "whatif", "threads", "runs", "reconciliation")
CHARTS = {"overview": 4, "storage": 3, "whatif": 2, "threads": 2, "runs": 0, "reconciliation": 1}
"""Vega-Lite charts each page draws from the fixture store."""

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--remote-debugging-port=0", "--remote-allow-origins=*")

STATE_JS = """(() => {
  const app = document.querySelector('[data-testid="stApp"]');
  const charts = [...document.querySelectorAll('[data-testid="stVegaLiteChart"]')];
  return JSON.stringify({
    script: app ? app.getAttribute('data-test-script-state') : null,
    connection: app ? app.getAttribute('data-test-connection-state') : null,
    spinners: document.querySelectorAll('[data-testid="stSpinner"]').length,
    titles: [...document.querySelectorAll('h1')].map(e => e.innerText.trim()),
    charts: charts.length,
    drawn: charts.filter(c => c.querySelector('canvas, svg.marks')).length,
    exceptions: [...document.querySelectorAll('[data-testid="stException"]')].map(e => e.innerText),
    errors: [...document.querySelectorAll('[data-testid="stAlertContentError"], .stAlert [kind="error"]')]
              .map(e => e.innerText),
    text: document.body ? document.body.innerText : '',
    height: Math.max(document.documentElement.scrollHeight,
                     ...[...document.querySelectorAll('[data-testid="stMain"], section')]
                         .map(e => e.scrollHeight)),
  });
})()"""


@dataclass
class PageState:
    """What a page showed once it finished rendering."""

    page: str
    titles: list[str]
    charts: int
    drawn: int
    exceptions: list[str]
    errors: list[str]
    text: str
    screenshot: Path


class DevTools:
    """A minimal DevTools-protocol client over one page target's websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send a command and return its result (events in between are skipped)."""
        msg_id = next(self._ids)
        await self._ws.send_json({"id": msg_id, "method": method, "params": params})
        while True:
            reply = await self._ws.receive_json(timeout=60)
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result

    async def evaluate(self, expression: str) -> Any:
        """The value of a JS expression in the page."""
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")


async def _settled(dt: DevTools, page: str, *, want_charts: int, timeout: float = 60.0) -> dict[str, Any]:
    """Poll until the script has finished, nothing spins, and every chart has drawn (stable twice)."""
    deadline = time.monotonic() + timeout
    previous: dict[str, Any] | None = None
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        raw = await dt.evaluate(STATE_JS)
        if raw is None:  # the document is being replaced by the navigation
            await asyncio.sleep(0.25)
            continue
        state = json.loads(raw)
        done = (state["script"] == "notRunning" and state["connection"] == "CONNECTED"
                and state["spinners"] == 0 and state["titles"]
                and (state["exceptions"] or state["drawn"] >= min(want_charts, state["charts"]))
                and state["charts"] >= want_charts)
        if done and previous is not None and previous == state:
            return state
        previous = state if done else None
        await asyncio.sleep(0.25)
    raise AssertionError(f"page {page} did not finish rendering in {timeout:g} s: {state}")


async def capture_pages(base_url: str, out_dir: Path, *, charts: dict[str, int] | None = None,
                        width: int = 1400, pages: tuple[str, ...] = PAGES) -> list[PageState]:
    """Open each page in headless Chromium, wait for it to render, and screenshot it to ``out_dir``."""
    want = charts if charts is not None else dict.fromkeys(PAGES, 0)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="runmeter-chromium-") as profile, _chromium(profile) as endpoint:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{endpoint}/json/list") as resp:
                targets = await resp.json()
            page_ws = next(t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page")
            async with http.ws_connect(page_ws, max_msg_size=0) as ws:
                dt = DevTools(ws)
                await dt.call("Page.enable")
                await dt.call("Runtime.enable")
                await dt.call("Emulation.setDeviceMetricsOverride", width=width, height=1000,
                              deviceScaleFactor=1, mobile=False)
                states = []
                for page in pages:
                    # the default page lives at the root: its url_path is not a URL of its own
                    path = "" if page == PAGES[0] else page
                    await dt.call("Page.navigate", url=f"{base_url.rstrip('/')}/{path}")
                    state = await _settled(dt, page, want_charts=want.get(page, 0))
                    height = min(int(state["height"]) + 40, 6000)
                    await dt.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                                  deviceScaleFactor=1, mobile=False)
                    await asyncio.sleep(0.5)  # charts re-layout to the taller viewport
                    shot = await dt.call("Page.captureScreenshot", format="png")
                    await dt.call("Emulation.setDeviceMetricsOverride", width=width, height=1000,
                                  deviceScaleFactor=1, mobile=False)
                    target = out_dir / f"{page}.png"
                    target.write_bytes(base64.b64decode(shot["data"]))
                    states.append(PageState(page, state["titles"], state["charts"], state["drawn"],
                                            state["exceptions"], state["errors"], state["text"], target))
                return states


class _chromium:
    """Headless Chromium with a fresh profile and a DevTools port; yields the HTTP endpoint."""

    def __init__(self, profile: str) -> None:
        self._profile = profile
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> str:
        binary = _which_chromium()
        self._proc = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        assert self._proc.stderr is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self._proc.stderr.readline()
            if not line and self._proc.poll() is not None:
                break
            found = re.search(r"DevTools listening on ws://([^/]+)/", line)
            if found:
                return f"http://{found.group(1)}"
        self.__exit__()
        raise RuntimeError("chromium did not report its DevTools endpoint")

    def __exit__(self, *exc: object) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        # Its helpers (renderer, crashpad) can outlive it and still write into the profile being removed.
        deadline = time.monotonic() + 5
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)
            while time.monotonic() < deadline:
                os.killpg(self._proc.pid, 0)  # raises once the whole group is gone
                time.sleep(0.05)
        if self._proc.stderr is not None:
            self._proc.stderr.close()


def _which_chromium() -> str:
    import shutil

    path = shutil.which("chromium")
    if path is None:
        raise RuntimeError("chromium is not installed (apt-get install chromium)")
    return path


def start_dashboard(db: Path) -> tuple[subprocess.Popen[str], str]:
    """``runmeter dashboard --db DB --port 0`` as a child; returns it and its URL once it answers."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "collector.cli", "dashboard", "--db", str(db), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        proc.kill()
        raise RuntimeError(f"runmeter dashboard printed {url!r}; stderr: {proc.communicate()[1][-2000:]}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}_stcore/health", timeout=2) as resp:
                if resp.read().strip() == b"ok":
                    return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"runmeter dashboard at {url} never became healthy")


def stop(proc: subprocess.Popen[str]) -> str:
    """Stop the dashboard the way a service manager would (SIGTERM), reap it; returns its stderr."""
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[str]:
    from test_dashboard_apptest import build_store

    require_binary("chromium")
    db = tmp_path / "fixture.duckdb"
    build_store(db)
    proc, url = start_dashboard(db)
    try:
        yield url
    finally:
        err = stop(proc)
    assert proc.returncode == 0, err


def test_every_page_renders_in_chromium_with_charts_and_no_errors(dashboard: str, tmp_path: Path) -> None:
    assert dashboard.startswith("http://127.0.0.1:")
    states = asyncio.run(capture_pages(dashboard, tmp_path / "shots", charts=CHARTS))
    titles = {"overview": "Overview", "storage": "Vector-store storage", "whatif": "Retrieval what-if",
              "threads": "Threads", "runs": "Runs", "reconciliation": "Reconciliation"}
    for s in states:
        assert s.titles[:1] == [titles[s.page]], s
        assert s.exceptions == [], f"{s.page}: {s.exceptions}"
        assert s.errors == [], f"{s.page}: {s.errors}"
        assert s.charts == CHARTS[s.page] and s.drawn == s.charts, s
        assert s.screenshot.stat().st_size > 20_000
        assert "Traceback" not in s.text and "Page not found" not in s.text
    text = {s.page: s.text for s in states}
    # the same figures AppTest checks, as a person reads them in the browser
    assert "$0.45" in text["storage"]
    assert "Thread history cost" in text["threads"] and "$0.6000" in text["threads"]
    assert "OPENAI_ADMIN_KEY is not set" in text["reconciliation"]
    assert "Matching runs" in text["runs"] and "340" in text["runs"]


def test_missing_store_page_says_how_to_make_data_in_chromium(tmp_path: Path) -> None:
    require_binary("chromium")
    proc, url = start_dashboard(tmp_path / "missing.duckdb")
    try:
        states = asyncio.run(capture_pages(url, tmp_path / "shots", pages=("overview", "whatif", "runs")))
    finally:
        stop(proc)
    assert len(states) == 3
    for s in states:
        assert s.exceptions == [] and s.errors == [] and "Page not found" not in s.text
        assert "runmeter demo" in s.text, s.page


if __name__ == "__main__":
    for shot in asyncio.run(capture_pages(sys.argv[1], Path(sys.argv[2]))):
        print(shot.screenshot, shot.charts, "charts", shot.exceptions or "", shot.errors or "")
