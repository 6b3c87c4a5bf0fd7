"""The max_num_results what-if against the world: predict N=5 from a store recorded at N=20, then run
the same workload at N=5 and compare input tokens per run.

The workload is deterministic: a Simulator with a fixed seed and epoch, one vector store over a corpus
from ``collector.simulator.corpus``, and the same 30 questions in the same order. Each store holds, for
both APIs, every question at the setting under test and once more at N=10 (as a team tuning
``max_num_results`` would record): different result counts for the same prompts are what let the fit
tell the per-result overhead from the base prompt. The "same workload at N=5" runs every file_search
at N=5. The analysis never reads the simulator's parameters (only this test does, to check the fit).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import openai
import pytest

from analysis.fit import fit_store
from analysis.prices import load_price_table
from analysis.whatif import whatif
from collector.recorder import Recorder
from collector.simulator import Simulator, economics
from collector.simulator.corpus import TOPICS, documents

SEED = 11
EPOCH = 1_764_000_000
CALIBRATION_N = 10


def _questions() -> list[str]:
    """Thirty distinct questions over the corpus's topics (varied wording, so varied results)."""
    out = []
    for topic in sorted(TOPICS):
        vocab = TOPICS[topic]
        for i, thing in enumerate(vocab["thing"][:6]):
            actor = vocab["actor"][i % len(vocab["actor"])]
            out.append(f"What does {actor} need to know about {thing}?" if i % 2 else
                       f"How are {thing} handled under the {topic.replace('_', ' ')}?")
    return out


QUESTIONS = _questions()


def _drive(client: openai.OpenAI, n_main: int, n_calibration: int) -> None:
    file_ids = []
    for name, text in documents(SEED, 9):
        file_ids.append(client.files.create(file=(name, text.encode()), purpose="assistants").id)
    vs = client.vector_stores.create(name="world", file_ids=file_ids)
    for fid in file_ids:
        client.vector_stores.files.poll(fid, vector_store_id=vs.id, poll_interval_ms=10)
    assistants = {}
    for n in sorted({n_main, n_calibration}):
        assistants[n] = client.beta.assistants.create(
            model="gpt-4o", instructions="Answer from the knowledge base and cite your sources.",
            tools=[{"type": "file_search", "file_search": {"max_num_results": n}}],
            tool_resources={"file_search": {"vector_store_ids": [vs.id]}},
        ).id
    plan = [(q, n_main) for q in QUESTIONS] + [(q, n_calibration) for q in QUESTIONS]
    for question, n in plan:
        thread = client.beta.threads.create(messages=[{"role": "user", "content": question}])
        with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistants[n]) as stream:
            stream.until_done()
        client.responses.create(
            model="gpt-4o-mini", input=question,
            tools=[{"type": "file_search", "vector_store_ids": [vs.id], "max_num_results": n}],
        )


def _record(path: Path, n_main: int, n_calibration: int, include: bool) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the Assistants API's own warnings
        with Simulator(seed=SEED, epoch=EPOCH, latency="fast") as sim:
            client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
            rec = Recorder(path, include_results=include, flush_interval=0.2)
            rec.instrument(client)
            try:
                _drive(client, n_main, n_calibration)
            finally:
                rec.close()
                client.close()
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Store recorded at N=20 with and without chunk text, and the same workload run at N=5."""
    d = tmp_path_factory.mktemp("world")
    yield {
        "n20": _record(d / "n20.duckdb", 20, CALIBRATION_N, True),
        "n20_no_text": _record(d / "n20_no_text.duckdb", 20, CALIBRATION_N, False),
        "n5": _record(d / "n5.duckdb", 5, 5, True),
    }


def _actual_per_run(path: Path) -> tuple[float, int]:
    with duckdb.connect(str(path), read_only=True) as con:
        mean, runs = con.execute("SELECT avg(input_tokens), count(*) FROM runs").fetchall()[0]
    return float(mean), int(runs)


def _predicted(path: Path) -> tuple[float, str, dict[str, dict[str, Any]]]:
    with duckdb.connect(str(path), read_only=True) as con:
        report = whatif(con, load_price_table(), max_num_results=[5, 25])
        fits = {k: v.to_json() for k, v in fit_store(con).items()}
    n5, n25 = report.rows
    assert n5.max_num_results == 5
    assert n25.bound in ("lower", "unknown") and n25.runs_unknown > 0  # never "no change"
    assert n5.input_tokens_per_run is not None
    return n5.input_tokens_per_run, n5.bound, fits


def test_prediction_matches_the_world_with_chunk_text(stores: dict[str, Path]) -> None:
    actual, runs = _actual_per_run(stores["n5"])
    assert runs == 2 * 2 * len(QUESTIONS)
    predicted, bound, fits = _predicted(stores["n20"])
    recorded, _ = _actual_per_run(stores["n20"])
    assert recorded > actual * 1.5  # the what-if has something real to predict
    assert bound == "exact"
    assert abs(predicted - actual) / actual < 0.02, (predicted, actual, fits)
    # the held-out error of the fit is measured and small, and the fit found the hidden billing
    for fit in fits.values():
        mape = fit["mape_holdout"]
        assert isinstance(mape, float) and mape < 0.02
        overhead = fit["overhead_per_result"]
        assert isinstance(overhead, float) and abs(overhead - economics.RESULT_OVERHEAD_TOKENS) < 4
    assert fits["assistants"]["repeat"] == pytest.approx(1.0, abs=0.02)  # one message step after the search
    assert fits["responses"]["repeat"] == pytest.approx(economics.RESPONSES_STEPS_AFTER_SEARCH, abs=0.04)


def test_prediction_matches_the_world_without_chunk_text(stores: dict[str, Path]) -> None:
    with duckdb.connect(str(stores["n20_no_text"]), read_only=True) as con:
        known = con.execute("SELECT count(content_tokens) FROM retrieved_chunks").fetchall()[0][0]
    assert known == 0  # no chunk text was captured: tokens per chunk had to be fitted
    actual, _ = _actual_per_run(stores["n5"])
    predicted, bound, fits = _predicted(stores["n20_no_text"])
    assert bound == "exact"
    assert abs(predicted - actual) / actual < 0.05, (predicted, actual, fits)
    for fit in fits.values():
        assert fit["per_unknown_result"] is not None
