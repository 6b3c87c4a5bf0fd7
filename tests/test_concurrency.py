"""Scale of the capture: 200 concurrent streams give 200 exact rows; the report answers while 8
processes write."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import openai
from test_store_multiprocess import _spawn

from collector.cli import main
from collector.recorder import Recorder
from collector.simulator import Simulator

N = 200


def _expected(sim: Simulator, run_id: str) -> tuple[int, int]:
    billed = sim.ledger.usage_for(run_id)
    return billed["input_tokens"], billed["output_tokens"]


def _rows(db: Path) -> list[tuple[str, str, int, int, int]]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(
            "SELECT run_id, status, input_tokens, output_tokens, streams FROM runs ORDER BY run_id"
        ).fetchall()


def test_200_concurrent_thread_streams_give_200_exact_rows(sim: Simulator, tmp_path: Path) -> None:
    db = tmp_path / "t.duckdb"
    with Recorder(db, flush_interval=0.1) as rec:
        client = rec.instrument(openai.OpenAI(base_url=sim.base_url, api_key="sk-c", max_retries=0))

        def one(i: int) -> str:
            kind = i % 2
            if kind == 0:
                stream = client.chat.completions.create(
                    model="gpt-4o-mini",
                    stream=True,
                    stream_options={"include_usage": True},
                    messages=[{"role": "user", "content": f"question {i}"}],
                )
                ids = {chunk.id for chunk in stream}
                (cid,) = ids
                return cid
            with client.responses.stream(model="gpt-4o-mini", input=f"question {i}") as s:
                return s.get_final_response().id

        with ThreadPoolExecutor(max_workers=N) as pool:
            ids = list(pool.map(one, range(N)))
        client.close()
    rows = _rows(db)
    assert len(rows) == N and sorted(ids) == [r[0] for r in rows]
    for run_id, status, inp, out, streams in rows:
        assert status == "completed" and streams == 1
        assert (inp, out) == _expected(sim, run_id)


async def test_200_concurrent_asyncio_streams_give_200_exact_rows(sim: Simulator, tmp_path: Path) -> None:
    db = tmp_path / "a.duckdb"
    rec = Recorder(db, flush_interval=0.1)
    client = rec.instrument(
        openai.AsyncOpenAI(
            base_url=sim.base_url, api_key="sk-c", max_retries=0, http_client=openai.DefaultAioHttpClient()
        )
    )

    async def one(i: int) -> str:
        stream = await client.chat.completions.create(
            model="gpt-4o",
            stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": f"async question {i}"}],
        )
        ids = {chunk.id async for chunk in stream}
        (cid,) = ids
        return cid

    ids = await asyncio.gather(*(one(i) for i in range(N)))
    await client.close()
    await asyncio.to_thread(rec.close)
    rows = _rows(db)
    assert sorted(ids) == [r[0] for r in rows] and len(rows) == N
    for run_id, status, inp, out, streams in rows:
        assert status == "completed" and streams == 1
        assert (inp, out) == _expected(sim, run_id)


def test_report_answers_within_a_second_while_eight_processes_write(tmp_path: Path) -> None:
    db = tmp_path / "runmeter.duckdb"
    children = [_spawn(db, p, 3000, seconds=6.0, flush=0.2) for p in range(8)]
    try:
        deadline = time.monotonic() + 15
        while not db.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        with contextlib.redirect_stdout(io.StringIO()):  # imports and first connection: not the answer
            assert main(["report", "--db", str(db), "--json"]) == 0
        timings, runs = [], []
        for _ in range(5):
            out = io.StringIO()
            t0 = time.monotonic()
            with contextlib.redirect_stdout(out):
                assert main(["report", "--db", str(db), "--json"]) == 0
            timings.append(time.monotonic() - t0)
            runs.append(int(out.getvalue().split('"runs": ', 1)[1].split(",", 1)[0]))
            time.sleep(0.3)
        assert max(timings) < 1.0, timings
        assert runs == sorted(runs) and runs[-1] > runs[0], "the writers kept writing meanwhile"
    finally:
        for c in children:
            c.communicate(timeout=90)
    assert all(c.returncode == 0 for c in children)
