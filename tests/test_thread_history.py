"""Thread history has one formula: ``runmeter whatif --threads --json`` and the dashboard's threads page show
the same per-thread and total history cost and share, on a real store, and that figure is the history the
service billed.

The store is recorded through the unmodified SDK against the simulator: stand-alone Assistants runs with
file_search at ``max_num_results`` 2 and 4 (the billing fit's data, and each question asked on a fresh
thread at N=4), an Assistants thread whose first turn searched at N=2 and whose later turns searched at
N=4, a second two-turn thread, and a three-turn Responses chain linked by ``previous_response_id``. Every
Assistants run here has two model steps (a search step and an answer step), each re-reading the thread.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import openai
import pytest
from call_paths import THREAD_QUESTIONS, ThreadBench
from streamlit.testing.v1 import AppTest
from test_dashboard_apptest import _open, metrics

from analysis.prices import load_price_table
from analysis.threads import thread_growth
from collector.cli import main
from collector.commands import dashboard as command
from collector.recorder import Recorder
from collector.simulator import Simulator
from dashboards import data

pytestmark = pytest.mark.filterwarnings("ignore:deprecated$:DeprecationWarning")

QUESTIONS = THREAD_QUESTIONS


@dataclass(frozen=True)
class Recorded:
    path: Path
    fresh: dict[str, str]
    """Question -> the run that asked it on a fresh thread at N=4."""
    long_thread: list[str]
    """The runs of the four-turn thread (turn 1 at N=2, then N=4), in order."""


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    path = tmp_path_factory.mktemp("threads") / "t.duckdb"
    with warnings.catch_warnings(), Simulator(seed=7, epoch=1_764_000_000, latency="fast") as sim:
        warnings.simplefilter("ignore", DeprecationWarning)
        client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
        bench = ThreadBench(client)
        ask = bench.ask
        rec = Recorder(path, flush_interval=0.2)
        rec.instrument(client)
        try:
            fresh = bench.fit_runs()
            thread = client.beta.threads.create().id
            long_thread = [ask(thread, q, 2 if k == 0 else 4) for k, q in enumerate(QUESTIONS)]
            short = client.beta.threads.create().id
            for q in QUESTIONS[:2]:
                ask(short, q, 4)
            previous: str | None = None
            for q in QUESTIONS[:3]:
                resp: Any = client.responses.create(model="gpt-4o-mini", input=q,
                                                    previous_response_id=previous)
                previous = resp.id
        finally:
            rec.close()
            client.close()
    return Recorded(path, fresh, long_thread)


@pytest.fixture(scope="module")
def cli(recorded: Recorded) -> dict[str, Any]:
    """``runmeter whatif --threads --json``'s ``threads`` object."""
    from contextlib import redirect_stdout
    from io import StringIO

    out = StringIO()
    with redirect_stdout(out):
        assert main(["whatif", "--db", str(recorded.path), "--threads", "--json"]) == 0
    threads: dict[str, Any] = json.loads(out.getvalue())["threads"]
    return threads


@pytest.fixture(scope="module")
def page(recorded: Recorded) -> Iterator[AppTest]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RUNMETER_DB", str(recorded.path))
        yield _open(AppTest.from_file(str(command.app_path()), default_timeout=60), "threads")


def test_cli_and_page_show_the_same_totals(cli: dict[str, Any], page: AppTest) -> None:
    m = metrics(page)
    # two Assistants threads and one Responses chain have 2+ turns; the 24 fresh threads have one each
    assert (cli["threads"], cli["all_threads"]) == (3, 27)
    assert m["Threads with 2+ turns"] == "3" and m["Threads"] == "27"
    assert cli["history_usd"] > 0 and 0 < cli["history_share"] < 1
    assert m["Thread history cost"] == data.usd(cli["history_usd"], 4)
    assert m["History share"] == f"{cli['history_share']:.1%}"
    assert m["History tokens"] == f"{cli['history_tokens']:,.0f}"


def test_cli_and_page_show_the_same_threads(cli: dict[str, Any], page: AppTest) -> None:
    top = page.dataframe[1].value
    assert top["thread"].tolist() == [t["thread"] for t in cli["top_threads"]]
    assert top["turns"].tolist() == [t["turns"] for t in cli["top_threads"]]
    assert sorted(zip(top["api"], top["turns"], strict=True)) == [
        ("assistants", 2), ("assistants", 4), ("responses", 3)]
    assert top["history_tokens"].tolist() == [t["history_tokens"] for t in cli["top_threads"]]
    assert top["history_usd"].tolist() == [t["history_usd"] for t in cli["top_threads"]]
    assert sum(top["history_usd"]) == pytest.approx(cli["history_usd"])
    per_turn = page.dataframe[0].value
    for turn, usd in zip(per_turn["turn"], per_turn["history_usd"], strict=True):
        assert usd == pytest.approx(sum(t["history_usd"] for t in cli["by_turn"] if t["turn"] == turn))


def test_history_is_what_the_service_billed(recorded: Recorded, cli: dict[str, Any]) -> None:
    """A threaded turn minus the same question on a fresh thread (same results, same two steps) is the
    history the service billed; input minus the first turn's input is not (turn 1 searched fewer
    results)."""
    with duckdb.connect(str(recorded.path), read_only=True) as con:
        tokens = dict(con.execute("SELECT run_id, input_tokens FROM runs").fetchall())
        chunks = dict(con.execute(
            "SELECT run_id, sum(content_tokens) FROM retrieved_chunks GROUP BY run_id").fetchall())
        steps = dict(con.execute("SELECT run_id, model_steps FROM runs").fetchall())
        assert cli == json.loads(json.dumps(thread_growth(con, load_price_table()).to_json(), default=str))
    turns = recorded.long_thread
    assert {steps[r] for r in turns} == {2}
    truth = 0
    for q, run_id in zip(QUESTIONS[1:], turns[1:], strict=True):
        assert chunks[run_id] == chunks[recorded.fresh[q]]
        truth += tokens[run_id] - tokens[recorded.fresh[q]]
    naive = sum(tokens[r] - tokens[turns[0]] for r in turns[1:])
    shown = cli["top_threads"][0]
    assert shown["turns"] == 4
    # the estimate cannot see that the questions differ in length by a few tokens (paid per step)
    assert shown["history_tokens"] == pytest.approx(truth, abs=max(60, 0.05 * truth))
    assert naive - truth > 500  # turns 2-4 retrieved four results, turn 1 two
