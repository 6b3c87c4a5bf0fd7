"""Thread growth: input per turn and the share of it that is thread history, on a synthetic store with a
known history and against the simulator (a chained conversation compared with the same questions asked
fresh)."""

from __future__ import annotations

import warnings
from datetime import timedelta
from pathlib import Path

import duckdb
import openai
import pytest
from call_paths import THREAD_QUESTIONS, ThreadBench
from test_whatif import T0, SynthChunk, SynthRun, billed, make_store

from analysis import explorer
from analysis.fit import fit_store
from analysis.prices import load_price_table
from analysis.threads import thread_growth
from collector.cli import main
from collector.recorder import Recorder
from collector.simulator import Simulator

HISTORY_PER_TURN = 150
"""Tokens each earlier turn adds to every later prompt (per model step) in the synthetic store."""


def _chunks(n: int) -> list[SynthChunk]:
    return [SynthChunk(k, 300 + 37 * k % 400, 0.9 - k / 50, k == 1) for k in range(1, n + 1)]


def _synthetic_runs() -> list[SynthRun]:
    runs: list[SynthRun] = []
    t = T0
    for i in range(24):  # stand-alone runs: what the fit learns the retrieval costs from
        for api in ("assistants", "responses"):
            chunks = _chunks(1 + i % 8)
            runs.append(SynthRun(f"{api[:4]}_solo_{i}", api, billed(api, chunks), chunks=chunks,
                                 model="gpt-4o" if api == "assistants" else "gpt-4o-mini",
                                 steps=2 if api == "assistants" else None, started_at=t))
            t += timedelta(minutes=1)
    for th in range(3):
        previous: str | None = None
        for turn in range(1, 5):
            chunks = _chunks(2 + (turn + th) % 5)
            history = HISTORY_PER_TURN * (turn - 1)
            runs.append(SynthRun(f"asst_t{th}_{turn}", "assistants",
                                 billed("assistants", chunks) + 2 * history,
                                 steps=2, chunks=chunks, thread_id=f"thread_{th}", started_at=t))
            run_id = f"resp_t{th}_{turn}"
            runs.append(SynthRun(run_id, "responses", billed("responses", chunks) + 3 * history,
                                 model="gpt-4o-mini", chunks=chunks, thread_id=previous, started_at=t))
            previous = run_id
            t += timedelta(minutes=1)
    return runs


def test_history_per_turn_on_a_known_store(tmp_path: Path) -> None:
    path = make_store(tmp_path / "t.duckdb", _synthetic_runs())
    with duckdb.connect(str(path), read_only=True) as con:
        growth = thread_growth(con, load_price_table(), fit_store(con))
    assert growth.threads == 6  # three Assistants threads and three Responses chains (followed to their root)
    assert growth.runs_in_threads == 24
    by = {(t.api, t.turn): t for t in growth.by_turn}
    for turn in range(1, 5):
        expected = HISTORY_PER_TURN * (turn - 1)
        assert by[("assistants", turn)].history_tokens_mean == pytest.approx(2 * expected, abs=1e-3)
        assert by[("responses", turn)].history_tokens_mean == pytest.approx(3 * expected, abs=1e-3)
        assert by[("responses", turn)].runs == 3
    shares = [by[("responses", k)].history_share for k in range(1, 5)]
    assert shares == sorted(shares) and shares[0] == 0
    history = 3 * (2 + 3) * HISTORY_PER_TURN * (0 + 1 + 2 + 3)
    assert growth.history_tokens == pytest.approx(history, abs=1e-2)
    # the price of not truncating: history tokens at the models' input prices (no cached tokens here)
    assistants_usd = 3 * 2 * HISTORY_PER_TURN * 6 * 2.5e-6
    responses_usd = 3 * 3 * HISTORY_PER_TURN * 6 * 0.15e-6
    assert growth.history_usd == pytest.approx(assistants_usd + responses_usd)
    assert growth.top_threads[0].api == "responses" and growth.top_threads[0].turns == 4


def _steps_store(path: Path) -> Path:
    """50 Assistants threads of 4 turns on gpt-4o without file_search (input 1,000, 1,800, 2,600, 3,400);
    turn 4 ran two model steps, each re-reading its 1,000-token instructions and question and 700 tokens of
    thread history. Single-turn threads and a lone Response are not threads with history."""
    runs: list[SynthRun] = []
    t = T0
    for th in range(50):
        for turn in range(4):
            runs.append(SynthRun(f"run_{th:02d}_{turn}", "assistants", 1000 + 800 * turn, calls=0,
                                 setting=None, steps=2 if turn == 3 else 1, thread_id=f"thread_{th:02d}",
                                 started_at=t))
            t += timedelta(seconds=30)
    runs += [SynthRun(f"solo_{i}", "assistants", 1000, calls=0, setting=None, steps=1, thread_id=f"solo_{i}",
                      started_at=t) for i in range(3)]
    runs.append(SynthRun("resp_lone", "responses", 900, calls=0, setting=None, started_at=t))
    return make_store(path, runs)


def test_history_is_paid_once_per_model_step(tmp_path: Path) -> None:
    """History is what the earlier messages cost: turn 4's second step re-reads the instructions and the
    question too, which ``input_4 - input_1`` (= 2,400) would count as history."""
    with duckdb.connect(str(_steps_store(tmp_path / "s.duckdb")), read_only=True) as con:
        growth = thread_growth(con, load_price_table())
    assert (growth.threads, growth.all_threads, growth.runs_in_threads) == (50, 53, 200)
    by = {t.turn: t for t in growth.by_turn}
    # turn 4: 3,400 - 1,000 × 2 steps / 1 step = 1,400 = 2 steps × 700
    assert [by[k].history_tokens_mean for k in range(1, 5)] == pytest.approx([0, 800, 1600, 1400])
    # per thread 0 + 800 + 1,600 + 1,400 = 3,800; × 50 = 190,000 tokens at $2.50 / 1M = $0.475,
    # of 50 × 8,800 = 440,000 input tokens: 43.2%
    assert growth.history_tokens == pytest.approx(190_000)
    assert growth.history_usd == pytest.approx(0.475)
    assert growth.history_share == pytest.approx(190_000 / 440_000)
    assert [by[k].history_usd for k in range(1, 5)] == pytest.approx([0, 0.1, 0.2, 0.175])
    assert growth.top_threads[0].history_tokens == pytest.approx(3800)
    assert growth.top_threads[0].history_usd == pytest.approx(0.0095)
    assert [t.thread for t in growth.top_threads] == [f"thread_{k:02d}" for k in range(10)]
    # the threads page's per-turn table is the same figures, turns past max_turns merged into the last
    frame = explorer.thread_turns(growth, max_turns=3)
    assert frame["turn"].to_list() == [1, 2, 3] and frame["runs"].to_list() == [50, 50, 100]
    assert frame["input_tokens_mean"].to_list() == pytest.approx([1000, 1800, 3000])
    assert frame["history_tokens_mean"].to_list() == pytest.approx([0, 800, 1500])
    assert frame["history_usd"].to_list() == pytest.approx([0, 0.1, 0.375])
    top = explorer.thread_table(growth)
    assert top.height == 10 and top["history_usd"].to_list() == pytest.approx([0.0095] * 10)


def test_store_without_threads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_store(tmp_path / "n.duckdb", [SynthRun("r1", "responses", 1000, calls=0, setting=None)])
    with duckdb.connect(str(path), read_only=True) as con:
        growth = thread_growth(con, load_price_table(), fit_store(con))
    assert growth.threads == 0 and growth.all_threads == 0 and growth.history_share is None
    assert main(["whatif", "--db", str(path), "--threads"]) == 0
    assert "no thread has two or more recorded turns" in capsys.readouterr().out


QUESTIONS = THREAD_QUESTIONS


def test_history_against_the_simulator(tmp_path: Path) -> None:
    """An Assistants thread against the same questions asked on fresh threads: the extra input of the
    threaded turns is the history the service billed, and the estimate must find it."""
    path = tmp_path / "w.duckdb"
    with warnings.catch_warnings(), Simulator(seed=5, epoch=1_764_000_000, latency="fast") as sim:
        warnings.simplefilter("ignore", DeprecationWarning)
        client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
        bench = ThreadBench(client)
        ask = bench.ask
        rec = Recorder(path, flush_interval=0.2)
        rec.instrument(client)
        try:
            fresh = bench.fit_runs()
            thread = client.beta.threads.create().id
            threaded = [ask(thread, q, 4) for q in QUESTIONS]
        finally:
            rec.close()
            client.close()
    with duckdb.connect(str(path), read_only=True) as con:
        tokens = dict(con.execute("SELECT run_id, input_tokens FROM runs").fetchall())
        chunk_tokens = dict(con.execute(
            "SELECT run_id, sum(content_tokens) FROM retrieved_chunks GROUP BY run_id").fetchall())
        growth = thread_growth(con, load_price_table(), fit_store(con))
    # ground truth from the wire: a threaded turn minus the same question on a fresh thread (same results)
    truth = []
    for q, run_id in zip(QUESTIONS, threaded, strict=True):
        assert chunk_tokens[run_id] == chunk_tokens[fresh[q]]
        truth.append(tokens[run_id] - tokens[fresh[q]])
    assert truth[0] == 0 and truth == sorted(truth) and truth[-1] > 300
    by = {(t.api, t.turn): t for t in growth.by_turn}
    assert growth.threads == 1
    for turn in range(2, 5):
        estimate = by[("assistants", turn)].history_tokens_mean
        # the estimate cannot see that the questions differ in length by a few tokens (paid per step)
        assert estimate == pytest.approx(truth[turn - 1], abs=max(20, 0.05 * truth[turn - 1])), (turn, truth)
    assert growth.history_share is not None and growth.history_share > 0
