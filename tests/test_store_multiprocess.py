"""Several real processes recording into one store at once; readers meanwhile; SIGKILL and SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collector.simulator import Simulator
from collector.store import open_reader
from collector.store.writer import spool_dir

# A Recorder process: submits `n` records (run ids "p<proc>_<i>") over about `seconds`, printing
# "<submitted> <persisted>" every 20 records, then closes the writer (or waits, with --wait).
CHILD = r"""
import json, sys, time
from collector.record import ChunkRecord, RunRecord
from collector.store import Writer

db, proc, n, seconds, flush, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), \
    float(sys.argv[5]), sys.argv[6]
if mode == "app-handler":
    import signal
    signal.signal(signal.SIGTERM, lambda *a: (print("app handler", flush=True), sys.exit(0)))
w = Writer(db, flush_interval=flush)
pause = seconds / max(n, 1)
start = time.monotonic()
for i in range(n):
    w.submit(RunRecord(run_id=f"p{proc}_{i:06d}", api="responses", model="gpt-4o", status="completed",
                       started_at=1_764_000_000 + i, input_tokens=i, output_tokens=proc, streams=1,
                       tags={"proc": str(proc)},
                       chunks=[ChunkRecord("fs_1", 1, "file_1", 0.5, text="some retrieved text")]))
    if i % 20 == 19:
        print(i + 1, w.persisted, flush=True)
    if pause:
        delay = start + (i + 1) * pause - time.monotonic()
        if delay > 0:
            time.sleep(delay)
if mode != "close":
    print("ready", flush=True)
    time.sleep(60)
w.close()
print(json.dumps({"written": w.written, "spooled": w.spooled, "dropped": w.dropped, "errors": w.errors,
                  "persisted": w.persisted}), flush=True)
"""


def _spawn(
    db: Path, proc: int, n: int, seconds: float, flush: float, mode: str = "close"
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db), str(proc), str(n), str(seconds), str(flush), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _rows(db: Path) -> list[tuple[str, int, int]]:
    with open_reader(db, timeout=5) as conn:
        return conn.execute("SELECT run_id, streams, input_tokens FROM runs ORDER BY run_id").fetchall()


def test_eight_processes_record_into_one_store(tmp_path: Path) -> None:
    db, n, procs = tmp_path / "runmeter.duckdb", 400, 8
    children = [_spawn(db, p, n, seconds=2.0, flush=0.2) for p in range(procs)]
    stats = []
    for c in children:
        out, err = c.communicate(timeout=60)
        assert c.returncode == 0, err
        stats.append(json.loads(out.strip().splitlines()[-1]))
    assert sum(s["dropped"] + s["errors"] for s in stats) == 0
    assert sum(s["persisted"] for s in stats) == n * procs
    rows = _rows(db)
    expected = sorted(f"p{p}_{i:06d}" for p in range(procs) for i in range(n))
    assert [r[0] for r in rows] == expected  # every row present, none duplicated
    assert {r[1] for r in rows} == {1}  # streams adds up on merge: 1 means no record was applied twice
    assert sum(r[2] for r in rows) == procs * sum(range(n))
    assert sum(s["written"] for s in stats) == n * procs  # every record committed exactly once
    assert list(spool_dir(db).iterdir()) == []
    with open_reader(db) as conn:
        assert conn.execute("SELECT count(*), sum(content_tokens) FROM retrieved_chunks").fetchone() == (
            n * procs,
            3 * n * procs,
        )  # "some retrieved text" is 3 o200k tokens


def test_a_reader_gets_in_within_one_second_while_a_writer_runs(tmp_path: Path) -> None:
    db = tmp_path / "runmeter.duckdb"
    child = _spawn(db, 0, 4000, seconds=4.0, flush=0.1)
    try:
        assert child.stdout is not None
        child.stdout.readline()
        deadline = time.monotonic() + 10
        while not db.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        waits, counts = [], []
        for _ in range(15):
            t0 = time.monotonic()
            with open_reader(db, timeout=1.0) as conn:
                waits.append(time.monotonic() - t0)
                counts.append(conn.execute("SELECT count(*) FROM runs").fetchone()[0])  # type: ignore[index]
            time.sleep(0.1)
        assert max(waits) < 1.0
        assert counts == sorted(counts) and counts[-1] > counts[0]  # the writer kept writing meanwhile
    finally:
        _, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert len(_rows(db)) == 4000


def test_sigkill_loses_at_most_the_records_since_the_last_flush(tmp_path: Path) -> None:
    db = tmp_path / "runmeter.duckdb"
    flush = 0.2
    child = _spawn(db, 0, 20_000, seconds=20.0, flush=flush)  # 1,000 records/s
    assert child.stdout is not None
    last = (0, 0)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.0 or last[1] < 300:
        line = child.stdout.readline()
        assert line, child.stderr.read() if child.stderr else ""
        submitted, persisted = map(int, line.split())
        last = (submitted, persisted)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    present = [int(r[0].split("_")[1]) for r in _rows(db)]
    # The bound: everything reported persisted survives, and only a tail of the newest records (the
    # ones submitted since the last flush) is missing: no holes.
    assert present == list(range(len(present)))
    assert len(present) >= last[1]
    lost_since_report = last[0] - len(present)
    # About flush + one batch write (~0.3 s here, ~300 records); 1 s of records leaves room for a
    # loaded machine.
    assert lost_since_report <= 1_000, (last, len(present))


@pytest.mark.parametrize("mode", ["wait", "app-handler"])
def test_sigterm_loses_nothing_and_chains_to_the_previous_handler(tmp_path: Path, mode: str) -> None:
    db = tmp_path / "runmeter.duckdb"
    n = 2_000
    child = _spawn(db, 0, n, seconds=0.0, flush=60.0, mode=mode)  # nothing flushed before SIGTERM
    assert child.stdout is not None
    while child.stdout.readline().strip() != "ready":
        pass
    assert not db.exists()
    child.send_signal(signal.SIGTERM)
    out, _ = child.communicate(timeout=30)
    if mode == "app-handler":
        assert child.returncode == 0 and "app handler" in out
    else:
        assert child.returncode == -signal.SIGTERM  # still "killed by SIGTERM" after the flush
    assert [int(r[0].split("_")[1]) for r in _rows(db)] == list(range(n))


# The README's first snippet, as a newcomer writes it: no close(), the process ends at once (well inside
# the first flush interval), so the only write is the one atexit makes while the interpreter shuts down.
SHORT_SCRIPT = r"""
import sys
import openai
from collector import Recorder

rec = Recorder(sys.argv[1])
client = rec.instrument(openai.OpenAI(base_url=sys.argv[2], api_key="sk-test", max_retries=0))
for i in range(3):
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"q{i}"}])
"""


def test_a_short_script_that_never_closes_the_recorder_is_recorded_at_exit(tmp_path: Path,
                                                                          sim: Simulator) -> None:
    db = tmp_path / "runmeter.duckdb"
    for attempt in ("new store", "migrated store"):
        done = subprocess.run([sys.executable, "-c", SHORT_SCRIPT, str(db), sim.base_url],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0 and done.stderr == "", (attempt, done.stderr)
        assert not list(spool_dir(db).glob("*.jsonl")), attempt  # written to the store, not left spooled
    with open_reader(db, timeout=5) as conn:
        rows = conn.execute("SELECT api, status, input_tokens > 0 FROM runs").fetchall()
    assert rows == [("chat", "completed", True)] * 6
