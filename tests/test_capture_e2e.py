"""Capture end to end: the instrumented SDK against the simulator, through the writer, into DuckDB.

Every number recorded must equal what the simulator's ledger billed; statuses follow the faults.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx2
import openai
import pytest
from openai.types.beta.threads.run_submit_tool_outputs_params import ToolOutput

from collector.recorder import Recorder
from collector.simulator import Simulator

pytestmark = pytest.mark.filterwarnings("ignore:deprecated$:DeprecationWarning")

FAULT = "X-Runmeter-Fault"
QUESTION = "What is the refund window for damaged goods?"


class World:
    """A simulator with a knowledge base and a recorder writing to a temp store."""

    def __init__(self, sim: Simulator, db: Path, **recorder: Any) -> None:
        self.sim = sim
        self.db = db
        self.rec = Recorder(db, flush_interval=0.05, **recorder)
        self.client = self.rec.instrument(
            openai.OpenAI(base_url=sim.base_url, api_key="sk-e2e", max_retries=0)
        )
        raw = openai.OpenAI(base_url=sim.base_url, api_key="sk-e2e")
        f = raw.files.create(
            file=(
                "refunds.txt",
                ("Refunds for damaged goods are accepted within thirty days of delivery. " * 400).encode(),
            ),
            purpose="assistants",
        )
        vs = raw.vector_stores.create(name="kb", file_ids=[f.id])
        raw.vector_stores.files.poll(f.id, vector_store_id=vs.id, poll_interval_ms=5)
        self.vs = vs.id
        self.assistant = raw.beta.assistants.create(
            model="gpt-4o",
            tools=[{"type": "file_search", "file_search": {"max_num_results": 5}}],
            tool_resources={"file_search": {"vector_store_ids": [vs.id]}},
        ).id
        self.tool_assistant = raw.beta.assistants.create(
            model="gpt-4o-mini",
            tools=[
                {
                    "type": "function",
                    "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
                }
            ],
        ).id
        raw.close()

    def thread(self) -> str:
        return self.client.beta.threads.create(messages=[{"role": "user", "content": QUESTION}]).id

    def rows(self) -> dict[str, dict[str, Any]]:
        self.rec.close()
        with duckdb.connect(str(self.db), read_only=True) as con:
            cur = con.execute("SELECT * FROM runs")
            names = [d[0] for d in cur.description]
            return {r[0]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}


@pytest.fixture
def world(sim: Simulator, tmp_path: Path) -> Iterator[World]:
    w = World(sim, tmp_path / "e2e.duckdb")
    yield w
    w.rec.close()


def assert_matches_ledger(sim: Simulator, row: dict[str, Any]) -> None:
    billed = sim.ledger.usage_for(row["run_id"])
    assert billed["input_tokens"] > 0, row["run_id"]
    assert row["input_tokens"] == billed["input_tokens"]
    assert row["cached_input_tokens"] == billed["cached_input_tokens"]
    assert row["output_tokens"] == billed["output_tokens"]
    assert row["reasoning_tokens"] == billed["reasoning_tokens"]
    assert row["total_tokens"] == billed["input_tokens"] + billed["output_tokens"]


def _paths(w: World) -> dict[str, Callable[[], None]]:
    c = w.client
    fs = [{"type": "file_search", "vector_store_ids": [w.vs]}]

    def runs_stream() -> None:
        with c.beta.threads.runs.stream(thread_id=w.thread(), assistant_id=w.assistant) as s:
            s.until_done()

    def runs_create_stream() -> None:
        for _ in c.beta.threads.runs.create(thread_id=w.thread(), assistant_id=w.assistant, stream=True):
            pass

    def create_and_run_stream() -> None:
        with c.beta.threads.create_and_run_stream(
            assistant_id=w.assistant, thread={"messages": [{"role": "user", "content": QUESTION}]}
        ) as s:
            s.until_done()

    def create_and_poll() -> None:
        c.beta.threads.runs.create_and_poll(
            thread_id=w.thread(), assistant_id=w.assistant, poll_interval_ms=5
        )

    def tool_run_two_streams() -> None:
        thread = w.thread()
        with c.beta.threads.runs.stream(thread_id=thread, assistant_id=w.tool_assistant) as s:
            s.until_done()
            run = s.get_final_run()
        assert run.status == "requires_action" and run.required_action is not None
        outs: list[ToolOutput] = [
            {"tool_call_id": t.id, "output": "ok"} for t in run.required_action.submit_tool_outputs.tool_calls
        ]
        with c.beta.threads.runs.submit_tool_outputs_stream(
            thread_id=thread, run_id=run.id, tool_outputs=outs
        ) as s2:
            s2.until_done()

    def responses_stream() -> None:
        with c.responses.stream(model="gpt-4o-mini", input=QUESTION, tools=fs) as s:  # type: ignore[arg-type]
            s.get_final_response()

    def responses_create() -> None:
        c.responses.create(model="gpt-4.1-mini", input=QUESTION, tools=fs)  # type: ignore[arg-type]

    def responses_create_stream() -> None:
        for _ in c.responses.create(
            model="gpt-5-mini",
            input=QUESTION,
            tools=fs,  # type: ignore[arg-type]
            stream=True,
        ):
            pass

    def chat_stream_usage() -> None:
        for _ in c.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": QUESTION}],
            stream=True,
            stream_options={"include_usage": True},
        ):
            pass

    def chat_plain() -> None:
        c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": QUESTION}])

    def chat_helper() -> None:
        with c.chat.completions.stream(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": QUESTION}],
            stream_options={"include_usage": True},
        ) as s:
            s.get_final_completion()

    return {k: v for k, v in locals().items() if callable(v) and not k.startswith("_")}


def test_every_sync_call_path_records_the_ledger_numbers(world: World) -> None:
    paths = _paths(world)
    for fn in paths.values():
        fn()
    rows = world.rows()
    assert len(rows) == len(paths)
    for row in rows.values():
        assert row["status"] == "completed", row
        assert_matches_ledger(world.sim, row)
    by_api = {
        api: [r for r in rows.values() if r["api"] == api] for api in ("assistants", "responses", "chat")
    }
    assert len(by_api["assistants"]) == 5 and len(by_api["responses"]) == 3 and len(by_api["chat"]) == 3
    two = [r for r in by_api["assistants"] if r["streams"] == 2]
    assert len(two) == 1, "the tool run's two streams merge into one row"
    searched = [r for r in by_api["assistants"] if r["file_search_calls"]]
    # create_and_run and create_and_poll take no include: chunks come from the steps fetch
    assert [(r["retrieved_chunks"], r["max_num_results"]) for r in searched] == [(5, 5)] * 4, searched
    assert all(r["retrieved_chunks"] is not None and r["retrieved_chunks"] > 0 for r in by_api["responses"])
    assert {r["ttft_seconds"] is not None for r in rows.values() if r["streams"]} == {True}


async def test_async_call_paths_record_the_ledger_numbers(sim: Simulator, tmp_path: Path) -> None:
    w = await asyncio.to_thread(World, sim, tmp_path / "a.duckdb")
    c = w.rec.instrument(
        openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-e2e", http_client=openai.DefaultAioHttpClient())
    )
    thread = (await c.beta.threads.create(messages=[{"role": "user", "content": QUESTION}])).id
    async with c.beta.threads.runs.stream(thread_id=thread, assistant_id=w.assistant) as s:
        await s.until_done()
    async for _ in await c.responses.create(
        model="gpt-4o",
        input=QUESTION,
        stream=True,
        tools=[{"type": "file_search", "vector_store_ids": [w.vs]}],
    ):
        pass
    async for _ in await c.chat.completions.create(
        model="gpt-4o-mini",
        stream=True,
        messages=[{"role": "user", "content": QUESTION}],
        stream_options={"include_usage": True},
    ):
        pass
    await c.close()
    rows = await asyncio.to_thread(w.rows)
    assert sorted(r["api"] for r in rows.values()) == ["assistants", "chat", "responses"]
    for row in rows.values():
        assert_matches_ledger(sim, row)


def test_ttft_matches_the_simulators_first_delta_send_time(tmp_path: Path) -> None:
    with Simulator(seed=11, latency="fast") as sim:  # real clock: ledger times are wall times
        rec = Recorder(tmp_path / "t.duckdb", flush_interval=0.05)
        c = rec.instrument(openai.OpenAI(base_url=sim.base_url, api_key="sk-e2e"))
        for i in range(50):
            for _ in c.chat.completions.create(
                model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": f"{QUESTION} {i}"}]
            ):
                pass
        rec.close()
        sent = {d.object_id: d.sim_time for d in sim.ledger.first_deltas}
    with duckdb.connect(str(tmp_path / "t.duckdb"), read_only=True) as con:
        got = con.execute("SELECT run_id, epoch(first_token_at), ttft_seconds FROM runs").fetchall()
    assert len(got) == 50
    errors = sorted(abs(first - sent[run_id]) for run_id, first, _ in got)
    p90 = errors[int(0.9 * len(errors)) - 1]
    assert p90 < 0.005, f"p90 |recorded first token - simulator send| = {p90 * 1000:.2f} ms"
    assert all(ttft > 0 for _, _, ttft in got)


@pytest.mark.parametrize(
    ("mode", "status", "error_code"),
    [
        ("error_event", "failed", "server_error"),
        ("failed", "failed", "server_error"),
        ("incomplete", "incomplete", None),
        ("cancelled", "cancelled", None),
        ("expired", "expired", None),
        ("requires_action", "requires_action", None),
    ],
)
def test_assistants_fault_modes_give_their_status(
    world: World, mode: str, status: str, error_code: str | None
) -> None:
    def consume() -> None:
        for _ in world.client.beta.threads.runs.create(
            thread_id=world.thread(), assistant_id=world.assistant, stream=True, extra_headers={FAULT: mode}
        ):
            pass

    if mode == "error_event":  # the wrapped error event makes the SDK raise, as the real API's does
        with pytest.raises(openai.APIError):
            consume()
    else:
        consume()
    (row,) = world.rows().values()
    assert row["status"] == status
    assert row["error_code"] == error_code


def test_responses_error_event_is_failed_with_its_code(world: World) -> None:
    with pytest.raises(openai.APIError):
        for _ in world.client.responses.create(
            model="gpt-4o", input=QUESTION, stream=True, extra_headers={FAULT: "error_event"}
        ):
            pass
    (row,) = world.rows().values()
    assert row["status"] == "failed" and row["error_code"]


def test_rate_limited_request_records_no_run_and_does_not_break(world: World) -> None:
    with pytest.raises(openai.RateLimitError):
        world.client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}], extra_headers={FAULT: "rate_limit"}
        )
    ok = world.client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert list(world.rows()) == [ok.id], "only the call that got an answer is a run"


def test_broken_stream_then_retrieve_ends_as_one_completed_row(sim: Simulator, tmp_path: Path) -> None:
    w = World(sim, tmp_path / "b.duckdb", fetch_final=False)
    thread = w.thread()
    run_id = None
    with pytest.raises((openai.APIConnectionError, httpx2.RemoteProtocolError)):
        for event in w.client.beta.threads.runs.create(
            thread_id=thread, assistant_id=w.assistant, stream=True, extra_headers={FAULT: "drop"}
        ):
            if event.event == "thread.run.created":
                run_id = event.data.id
    assert run_id is not None
    w.rec.flush()
    with duckdb.connect(str(w.db), read_only=True) as con:
        assert con.execute("SELECT status FROM runs").fetchall() == [("interrupted",)]
    run = w.client.beta.threads.runs.retrieve(run_id, thread_id=thread)
    assert run.status == "completed"
    rows = w.rows()
    assert list(rows) == [run_id]
    assert rows[run_id]["status"] == "completed"
    assert rows[run_id]["streams"] == 1
    assert_matches_ledger(sim, rows[run_id])


def test_chat_stream_without_usage_is_null_not_zero(world: World) -> None:
    for _ in world.client.chat.completions.create(
        model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": QUESTION}]
    ):
        pass
    (row,) = world.rows().values()
    assert row["input_tokens"] is None and row["output_tokens"] is None
    assert row["status"] == "completed"


def test_interrupted_runs_are_fetched_until_billed(sim: Simulator, tmp_path: Path) -> None:
    """Without the application doing anything, a dropped Assistants stream and a dropped Responses
    stream end as completed rows with the billed usage (the service finished them)."""
    w = World(sim, tmp_path / "f.duckdb")  # fetch_final on by default
    with pytest.raises((openai.APIConnectionError, httpx2.RemoteProtocolError)):
        for _ in w.client.beta.threads.runs.create(
            thread_id=w.thread(), assistant_id=w.assistant, stream=True, extra_headers={FAULT: "drop"}
        ):
            pass
    with pytest.raises((openai.APIConnectionError, httpx2.RemoteProtocolError)):
        for _ in w.client.responses.create(
            model="gpt-4o",
            input=QUESTION,
            stream=True,
            extra_headers={FAULT: "drop"},
            tools=[{"type": "file_search", "vector_store_ids": [w.vs]}],
        ):
            pass
    deadline = time.monotonic() + 10
    while True:
        w.rec.flush()
        with duckdb.connect(str(w.db), read_only=True) as con:
            statuses = con.execute("SELECT api, status FROM runs ORDER BY api").fetchall()
        if (
            statuses == [("assistants", "completed"), ("responses", "completed")]
            or time.monotonic() > deadline
        ):
            break
        time.sleep(0.2)
    assert statuses == [("assistants", "completed"), ("responses", "completed")]
    rows = w.rows()
    for row in rows.values():
        assert_matches_ledger(sim, row)
        assert row["streams"] == 1
    (assistants,) = [r for r in rows.values() if r["api"] == "assistants"]
    assert assistants["retrieved_chunks"] == 5, "the steps fetch follows the final fetch"
