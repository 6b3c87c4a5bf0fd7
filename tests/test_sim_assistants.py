"""The simulator's Assistants v2 endpoints driven by the unmodified SDK over real sockets."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import httpx2
import openai
import pytest
from openai import AssistantEventHandler, AsyncAssistantEventHandler
from openai.types.beta.threads import Run
from openai.types.beta.threads.runs import RunStep, RunStepInclude

from collector.simulator import Simulator, economics
from collector.simulator.core import count_tokens

INCLUDE: RunStepInclude = "step_details.tool_calls[*].file_search.results[*].content"
FOODS = (
    "The favorite food of several people:\n- Summanus Ferdinand: tacos\n- Tekakwitha Effie: pizza\n"
    "- Filip Carola: cake\n"
)
QUESTION = "Using the files you have available, what's Filip's favorite food?"
WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_current_weather", "description": "Gets the user's current weather"},
}
FAULT = "X-Runmeter-Fault"

# beta.assistants.* warn with the bare message "deprecated" (pyproject filters only the runs' wording)
pytestmark = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")

FILE_SEARCH_ORDER = [
    "thread.run.created", "thread.run.queued", "thread.run.in_progress",
    "thread.run.step.created", "thread.run.step.in_progress", "thread.run.step.delta",
    "thread.run.step.completed", "thread.run.step.created", "thread.run.step.in_progress",
    "thread.message.created", "thread.message.in_progress",
]  # fmt: skip


def _store(client: openai.OpenAI, files: int = 1) -> str:
    vs = client.vector_stores.create(name="foods")
    ids = []
    for i in range(files):
        f = client.files.create(
            file=(f"favorite_foods_{i}.txt", io.BytesIO((FOODS * 4).encode())), purpose="assistants"
        )
        ids.append(f.id)
    batch = client.vector_stores.file_batches.create_and_poll(vector_store_id=vs.id, file_ids=ids)
    assert batch.file_counts.completed == files
    return vs.id


def _search_assistant(client: openai.OpenAI, vs_id: str, **file_search: Any) -> str:
    tool: Any = {"type": "file_search", "file_search": file_search}
    a = client.beta.assistants.create(
        model="gpt-4o",
        tools=[tool],
        tool_resources={"file_search": {"vector_store_ids": [vs_id]}},
    )
    return a.id


def _thread(client: openai.OpenAI, text: str = QUESTION) -> str:
    return client.beta.threads.create(messages=[{"role": "user", "content": text}]).id


def _usage_dict(u: Any) -> dict[str, Any]:
    return u.to_dict() if hasattr(u, "to_dict") else dict(u)


def _sum(usages: list[dict[str, Any]]) -> dict[str, int]:
    return {
        "prompt_tokens": sum(u["prompt_tokens"] for u in usages),
        "completion_tokens": sum(u["completion_tokens"] for u in usages),
        "total_tokens": sum(u["total_tokens"] for u in usages),
        "cached": sum(u["prompt_token_details"]["cached_tokens"] for u in usages),
    }


def _assert_ledger(sim: Simulator, run: Run, step_usages: list[dict[str, Any]]) -> None:
    """run usage == sum of the steps == what the simulator billed for the run."""
    run_u = _usage_dict(run.usage)
    total = _sum(step_usages)
    assert {k: run_u[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")} == {
        k: total[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")
    }
    assert run_u["prompt_token_details"]["cached_tokens"] == total["cached"]
    billed = sim.ledger.usage_for(run.id)
    assert billed["input_tokens"] == run_u["prompt_tokens"]
    assert billed["output_tokens"] == run_u["completion_tokens"]
    assert billed["cached_input_tokens"] == run_u["prompt_token_details"]["cached_tokens"]
    assert len([e for e in sim.ledger.usage if e.object_id == run.id]) == len(step_usages)


class Recorder(AssistantEventHandler):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        self.done_steps: list[RunStep] = []
        self.text = ""

    def on_event(self, event: Any) -> None:
        self.events.append(event.event)

    def on_run_step_done(self, run_step: RunStep) -> None:
        self.done_steps.append(run_step)

    def on_text_delta(self, delta: Any, snapshot: Any) -> None:
        self.text += delta.value or ""


def test_stream_helper_file_search_with_include(sim: Simulator, client: openai.OpenAI) -> None:
    vs_id = _store(client)
    asst = _search_assistant(client, vs_id)
    thread = _thread(client)
    handler = Recorder()
    with client.beta.threads.runs.stream(
        thread_id=thread, assistant_id=asst, include=[INCLUDE], event_handler=handler
    ) as stream:
        stream.until_done()
        run = stream.get_final_run()
        messages = stream.get_final_messages()
    assert handler.events[: len(FILE_SEARCH_ORDER)] == FILE_SEARCH_ORDER
    assert handler.events[-3:] == [
        "thread.message.completed",
        "thread.run.step.completed",
        "thread.run.completed",
    ]
    assert run.status == "completed" and run.model == "gpt-4o" and run.expires_at is None
    tool_step, msg_step = handler.done_steps
    assert tool_step.type == "tool_calls" and msg_step.type == "message_creation"
    results = tool_step.step_details.tool_calls[0].file_search.results  # type: ignore[union-attr]
    assert results and all(r.content and r.content[0].text for r in results)
    assert all(r.file_name.startswith("favorite_foods") and 0 < r.score < 1 for r in results)
    # the message step pays the tool step's prompt plus exactly the search payload
    payload = economics.search_payload_tokens([count_tokens(r.content[0].text) for r in results])  # type: ignore
    assert msg_step.usage.prompt_tokens - tool_step.usage.prompt_tokens == payload  # type: ignore[union-attr]
    _assert_ledger(sim, run, [_usage_dict(tool_step.usage), _usage_dict(msg_step.usage)])
    assert run.usage.to_dict()["completion_tokens_details"] == {"reasoning_tokens": 0}  # type: ignore[union-attr]
    # the answer streamed is the message completed; its citation marker points into the text
    assert messages[0].content[0].text.value == handler.text  # type: ignore[union-attr]
    assert msg_step.usage.completion_tokens == count_tokens(handler.text)  # type: ignore[union-attr]
    for ann in messages[0].content[0].text.annotations:  # type: ignore[union-attr]
        assert handler.text[ann.start_index : ann.end_index] == ann.text
        assert ann.file_citation.file_id in {r.file_id for r in results}  # type: ignore[union-attr]
    first = [d for d in sim.ledger.first_deltas if d.object_id == run.id]
    assert len(first) == 1


def test_runs_create_stream_without_include_has_no_content(client: openai.OpenAI) -> None:
    vs_id = _store(client)
    asst = _search_assistant(client, vs_id, max_num_results=2, ranking_options={"score_threshold": 0.1})
    thread = _thread(client)
    raw = client.beta.threads.runs.with_raw_response.create(thread_id=thread, assistant_id=asst, stream=True)
    assert raw.headers["content-type"] == "text/event-stream; charset=utf-8"
    body = raw.http_response.read().decode()
    assert body.endswith("event: done\ndata: [DONE]\n\n")
    frames = [f.split("\n", 1) for f in body.strip().split("\n\n")]
    events = [(e[len("event: ") :], d[len("data: ") :]) for e, d in frames]
    completed = [json.loads(d) for e, d in events if e == "thread.run.step.completed"]
    call = completed[0]["step_details"]["tool_calls"][0]
    assert call["file_search"]["ranking_options"] == {"ranker": "default_2024_08_21", "score_threshold": 0.1}
    assert 1 <= len(call["file_search"]["results"]) <= 2
    assert all(
        set(r) == {"file_id", "file_name", "score", "attributes"} for r in call["file_search"]["results"]
    )
    delta = next(json.loads(d) for e, d in events if e == "thread.run.step.delta")
    assert delta["delta"]["step_details"]["tool_calls"][0]["file_search"]["results"] == []
    run_echo = json.loads(events[0][1])["tools"][0]
    assert run_echo == {
        "type": "file_search",
        "file_search": {
            "max_num_results": 2,
            "ranking_options": {
                "ranker": "default_2024_08_21",
                "score_threshold": 0.1,
                "hybrid_search": None,
            },
        },
    }
    msg_deltas = [
        json.loads(d)["delta"]["content"][0]["text"] for e, d in events if e == "thread.message.delta"
    ]
    assert msg_deltas[0]["annotations"] == []
    cited = [t for t in msg_deltas[1:] if "annotations" in t]
    assert cited and all(
        a["file_citation"]["quote"] == "" and "index" in a for t in cited for a in t["annotations"]
    )
    # with the stream consumed the run is stored as it ended
    runs = client.beta.threads.runs.list(thread_id=thread)
    assert [r.status for r in runs.data] == ["completed"]


def test_create_and_run_stream_tool_call_over_two_streams(sim: Simulator, client: openai.OpenAI) -> None:
    asst = client.beta.assistants.create(model="gpt-4o", tools=[WEATHER_TOOL])  # type: ignore[list-item]
    first = Recorder()
    with client.beta.threads.create_and_run_stream(
        assistant_id=asst.id,
        thread={"messages": [{"role": "user", "content": "What should I wear?"}]},
        event_handler=first,
    ) as stream:
        stream.until_done()
        run = stream.get_final_run()
    assert first.events[0] == "thread.created"
    assert first.events[-3:] == [
        "thread.run.step.delta",
        "thread.run.step.delta",
        "thread.run.requires_action",
    ]
    assert run.status == "requires_action" and run.usage is None
    calls = run.required_action.submit_tool_outputs.tool_calls  # type: ignore[union-attr]
    assert [(c.function.name, c.function.arguments) for c in calls] == [("get_current_weather", "{}")]
    second = Recorder()
    with client.beta.threads.runs.submit_tool_outputs_stream(
        thread_id=run.thread_id,
        run_id=run.id,
        event_handler=second,
        tool_outputs=[{"tool_call_id": calls[0].id, "output": "warm and sunny"}],
    ) as stream:
        stream.until_done()
        final = stream.get_final_run()
    assert second.events[:3] == ["thread.run.step.completed", "thread.run.queued", "thread.run.in_progress"]
    assert final.status == "completed" and final.id == run.id
    fn_step, msg_step = second.done_steps
    assert fn_step.step_details.tool_calls[0].function.output == "warm and sunny"  # type: ignore[union-attr]
    _assert_ledger(sim, final, [_usage_dict(fn_step.usage), _usage_dict(msg_step.usage)])
    # the answer step's prompt carries the call and its output on top of the first prompt
    assert msg_step.usage.prompt_tokens > fn_step.usage.prompt_tokens  # type: ignore[union-attr]


def test_runs_create_stream_true_event_objects(sim: Simulator, client: openai.OpenAI) -> None:
    asst = client.beta.assistants.create(model="o3", instructions="Be brief.")
    thread = _thread(client, "Hello there, assistant! How are you today?")
    stream = client.beta.threads.runs.create(thread_id=thread, assistant_id=asst.id, stream=True)
    events = list(stream)
    assert [e.event for e in events[:3]] == [
        "thread.run.created",
        "thread.run.queued",
        "thread.run.in_progress",
    ]
    final = events[-1].data
    assert isinstance(final, Run) and final.status == "completed" and final.model == "o3"
    assert final.usage is not None
    usage: dict[str, Any] = final.usage.to_dict()
    reasoning = usage["completion_tokens_details"]["reasoning_tokens"]
    deltas: list[Any] = [e.data for e in events if e.event == "thread.message.delta"]
    visible = count_tokens("".join(d.delta.content[0].text.value for d in deltas))
    assert reasoning == economics.reasoning_tokens("o3", visible) > 0
    assert usage["completion_tokens"] == visible + reasoning
    assert sim.ledger.usage_for(final.id)["reasoning_tokens"] == reasoning


def test_create_and_poll_then_steps_with_include(sim: Simulator, client: openai.OpenAI) -> None:
    vs_id = _store(client)
    asst = _search_assistant(client, vs_id)
    thread = _thread(client)
    raw = client.beta.threads.runs.with_raw_response.create(thread_id=thread, assistant_id=asst)
    queued = raw.parse()
    assert queued.status == "queued" and queued.to_dict()["tool_resources"] == {}
    polled = client.beta.threads.runs.with_raw_response.retrieve(run_id=queued.id, thread_id=thread)
    assert int(polled.headers["openai-poll-after-ms"]) >= 1
    assert polled.parse().status == "in_progress"
    run = client.beta.threads.runs.poll(run_id=queued.id, thread_id=thread)
    assert run.status == "completed" and run.started_at is not None and run.completed_at is not None
    with_content = client.beta.threads.runs.steps.list(thread_id=thread, run_id=run.id, include=[INCLUDE])
    assert [s.type for s in with_content.data] == ["message_creation", "tool_calls"]
    results = with_content.data[1].step_details.tool_calls[0].file_search.results  # type: ignore[union-attr]
    assert results and all(r.content for r in results)
    bare = client.beta.threads.runs.steps.retrieve(
        thread_id=thread, run_id=run.id, step_id=with_content.data[1].id
    )
    assert all(r.content is None for r in bare.step_details.tool_calls[0].file_search.results)  # type: ignore
    _assert_ledger(sim, run, [_usage_dict(s.usage) for s in with_content.data])
    assert all(s.to_dict()["expires_at"] is None for s in with_content.data)
    # create_and_poll over a second question in the same thread
    client.beta.threads.messages.create(thread_id=thread, role="user", content="And Effie's?")
    again = client.beta.threads.runs.create_and_poll(thread_id=thread, assistant_id=asst, poll_interval_ms=1)
    assert again.status == "completed"
    msgs = client.beta.threads.messages.list(thread_id=thread, order="asc")
    assert [m.role for m in msgs.data] == ["user", "assistant", "user", "assistant"]
    page = client.beta.threads.messages.list(thread_id=thread, limit=1, order="asc", after=msgs.data[0].id)
    assert [m.id for m in page.data] == [msgs.data[1].id] and page.has_more


def test_submit_tool_outputs_and_poll(client: openai.OpenAI) -> None:
    asst = client.beta.assistants.create(model="gpt-4o-mini", tools=[WEATHER_TOOL])  # type: ignore[list-item]
    run = client.beta.threads.create_and_run_poll(
        assistant_id=asst.id,
        thread={"messages": [{"role": "user", "content": "Weather?"}]},
        poll_interval_ms=1,
    )
    assert run.status == "requires_action" and run.usage is None
    call = run.required_action.submit_tool_outputs.tool_calls[0]  # type: ignore[union-attr]
    done = client.beta.threads.runs.submit_tool_outputs_and_poll(
        thread_id=run.thread_id,
        run_id=run.id,
        tool_outputs=[{"tool_call_id": call.id, "output": "rain"}],
        poll_interval_ms=1,
    )
    assert done.status == "completed" and done.usage is not None
    steps = client.beta.threads.runs.steps.list(thread_id=run.thread_id, run_id=run.id)
    assert sum(s.usage.total_tokens for s in steps.data if s.usage) == done.usage.total_tokens


def test_cancel_polled_run(client: openai.OpenAI) -> None:
    asst = client.beta.assistants.create(model="gpt-4o")
    thread = _thread(client)
    run = client.beta.threads.runs.create(thread_id=thread, assistant_id=asst.id)
    assert client.beta.threads.runs.cancel(run_id=run.id, thread_id=thread).status == "cancelling"
    final = client.beta.threads.runs.poll(run_id=run.id, thread_id=thread, poll_interval_ms=1)
    assert final.status == "cancelled" and final.cancelled_at is not None
    with pytest.raises(openai.BadRequestError):
        client.beta.threads.runs.cancel(run_id=run.id, thread_id=thread)


class AsyncRecorder(AsyncAssistantEventHandler):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        self.done_steps: list[RunStep] = []

    async def on_event(self, event: Any) -> None:
        self.events.append(event.event)

    async def on_run_step_done(self, run_step: RunStep) -> None:
        self.done_steps.append(run_step)


async def test_async_stream_and_tool_outputs(sim: Simulator, aclient: openai.AsyncOpenAI) -> None:
    asst = await aclient.beta.assistants.create(model="gpt-4o", tools=[WEATHER_TOOL])  # type: ignore[list-item]
    thread = await aclient.beta.threads.create(messages=[{"role": "user", "content": "Wear?"}])
    h1 = AsyncRecorder()
    async with aclient.beta.threads.runs.stream(
        thread_id=thread.id, assistant_id=asst.id, event_handler=h1
    ) as s:
        await s.until_done()
        run = await s.get_final_run()
    assert run.status == "requires_action"
    call = run.required_action.submit_tool_outputs.tool_calls[0]  # type: ignore[union-attr]
    h2 = AsyncRecorder()
    async with aclient.beta.threads.runs.submit_tool_outputs_stream(
        thread_id=thread.id,
        run_id=run.id,
        event_handler=h2,
        tool_outputs=[{"tool_call_id": call.id, "output": "cold"}],
    ) as s:
        await s.until_done()
        final = await s.get_final_run()
    assert h2.events[0] == "thread.run.step.completed" and final.status == "completed"
    _assert_ledger(sim, final, [_usage_dict(s.usage) for s in h2.done_steps])
    polled = await aclient.beta.threads.create_and_run_poll(
        assistant_id=(await aclient.beta.assistants.create(model="gpt-4o")).id,
        thread={"messages": [{"role": "user", "content": "hi"}]},
        poll_interval_ms=1,
    )
    assert polled.status == "completed"


# ---- faults -------------------------------------------------------------------------------------


def _fault_run(client: openai.OpenAI, mode: str) -> tuple[list[str], Run | None, str]:
    asst = client.beta.assistants.create(model="gpt-4o")
    thread = _thread(client, "Tell me about the policy.")
    events: list[str] = []
    with client.beta.threads.runs.stream(
        thread_id=thread, assistant_id=asst.id, extra_headers={FAULT: mode}
    ) as stream:
        for ev in stream:
            events.append(ev.event)
        run = stream.current_run
    return events, run, thread


@pytest.mark.parametrize(
    "mode,status",
    [("failed", "failed"), ("incomplete", "incomplete"), ("cancelled", "cancelled"), ("expired", "expired")],
)
def test_terminal_fault_statuses(sim: Simulator, client: openai.OpenAI, mode: str, status: str) -> None:
    events, run, _ = _fault_run(client, mode)
    assert run is not None and run.status == status and events[-1] == f"thread.run.{status}"
    assert "thread.message.incomplete" in events
    if mode == "failed":
        assert run.last_error is not None and run.last_error.code == "server_error"
    if mode == "incomplete":
        assert run.incomplete_details is not None and run.incomplete_details.reason == "max_completion_tokens"
    if mode == "cancelled":
        assert "thread.run.cancelling" in events and run.cancelled_at is not None
    billed = sim.ledger.usage_for(run.id)
    assert run.usage is not None and billed["input_tokens"] == run.usage.prompt_tokens
    assert billed["output_tokens"] == run.usage.completion_tokens > 0


def test_rate_limit_and_server_error_before_stream(sim: Simulator, client: openai.OpenAI) -> None:
    asst = client.beta.assistants.create(model="gpt-4o")
    thread = _thread(client)
    with (
        pytest.raises(openai.RateLimitError) as rl,
        client.beta.threads.runs.stream(
            thread_id=thread, assistant_id=asst.id, extra_headers={FAULT: "rate_limit"}
        ) as s,
    ):
        s.until_done()
    assert rl.value.status_code == 429 and rl.value.response.headers["retry-after"] == "1"
    assert rl.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.InternalServerError):
        client.beta.threads.runs.create(
            thread_id=thread, assistant_id=asst.id, stream=True, extra_headers={FAULT: "server_error"}
        )
    assert client.beta.threads.runs.list(thread_id=thread).data == []
    assert sim.ledger.usage == []


def test_error_event_wrapped_raises_and_flat_is_yielded(sim: Simulator, client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIError) as err:
        _fault_run(client, "error_event")
    assert "server had an error" in err.value.message
    asst = client.beta.assistants.create(model="gpt-4o")
    thread = _thread(client)
    events = list(
        client.beta.threads.runs.create(
            thread_id=thread, assistant_id=asst.id, stream=True, extra_headers={FAULT: "error_event_flat"}
        )
    )
    last: Any = events[-1]
    assert last.event == "error" and last.data.code == "server_error"
    run = client.beta.threads.runs.list(thread_id=thread).data[0]
    assert run.status == "failed" and run.usage is not None
    assert sim.ledger.usage_for(run.id)["output_tokens"] == run.usage.completion_tokens


def test_drop_cuts_connection_and_run_completes_on_server(sim: Simulator, client: openai.OpenAI) -> None:
    with pytest.raises(httpx2.RemoteProtocolError):
        _fault_run(client, "drop")
    run = next(r for t in list(sim.world.threads) for r in client.beta.threads.runs.list(thread_id=t).data)
    assert run.status == "completed" and run.usage is not None
    assert sim.ledger.usage_for(run.id)["input_tokens"] == run.usage.prompt_tokens


def test_stall_pauses_then_completes(client: openai.OpenAI) -> None:
    start = time.monotonic()
    events, run, _ = _fault_run(client, "stall:0.3")
    assert time.monotonic() - start >= 0.3
    assert run is not None and run.status == "completed" and events[-1] == "thread.run.completed"


def test_requires_action_fault_on_search_assistant(client: openai.OpenAI) -> None:
    events, run, _ = _fault_run(client, "requires_action")
    assert run is not None and run.status == "requires_action" and run.usage is None
    assert events[-1] == "thread.run.requires_action"


# ---- invalid requests ---------------------------------------------------------------------------


def test_invalid_requests(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.beta.assistants.create(
            model="gpt-4o", tools=[{"type": "file_search", "file_search": {"max_num_results": 51}}]
        )
    assert e.value.body["param"] == "tools[0].file_search.max_num_results"  # type: ignore[index]
    asst = client.beta.assistants.create(model="gpt-4o")
    thread = _thread(client)
    with pytest.raises(openai.BadRequestError) as e:
        client.beta.threads.runs.create(thread_id=thread, assistant_id=asst.id, include=["step_details.nope"])  # type: ignore[list-item]
    assert e.value.body["param"] == "include[0]"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.runs.create(thread_id=thread, assistant_id="asst_missing")
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.runs.create(thread_id="thread_missing", assistant_id=asst.id)
    with pytest.raises(openai.NotFoundError):
        client.beta.assistants.create(
            model="gpt-4o", tool_resources={"file_search": {"vector_store_ids": ["vs_x"]}}
        )
    with pytest.raises(openai.BadRequestError):
        client.beta.threads.runs.create(
            thread_id=thread, assistant_id=asst.id, extra_headers={FAULT: "not_a_fault"}
        )
    run = client.beta.threads.runs.create(thread_id=thread, assistant_id=asst.id)
    with pytest.raises(openai.BadRequestError, match="already has an active run"):
        client.beta.threads.runs.create(thread_id=thread, assistant_id=asst.id)
    with pytest.raises(openai.BadRequestError, match="do not accept tool outputs"):
        client.beta.threads.runs.submit_tool_outputs(
            thread_id=thread, run_id=run.id, tool_outputs=[{"tool_call_id": "x", "output": "y"}]
        )


def test_crud_round_trip(client: openai.OpenAI) -> None:
    asst = client.beta.assistants.create(model="gpt-4o", name="a")
    assert client.beta.assistants.update(asst.id, name="b").name == "b"
    assert client.beta.assistants.retrieve(asst.id).name == "b"
    assert [a.id for a in client.beta.assistants.list()] == [asst.id]
    assert client.beta.assistants.delete(asst.id).deleted
    thread = client.beta.threads.create(metadata={"k": "v"})
    assert client.beta.threads.update(thread.id, metadata={"k": "w"}).metadata == {"k": "w"}
    msg = client.beta.threads.messages.create(thread_id=thread.id, role="user", content="hi")
    got: Any = client.beta.threads.messages.retrieve(message_id=msg.id, thread_id=thread.id)
    assert got.content[0].text.value == "hi"
    assert client.beta.threads.delete(thread.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.retrieve(thread.id)


# ---- determinism --------------------------------------------------------------------------------


def _script(base_url: str) -> list[bytes]:
    c = openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0)
    try:
        out: list[bytes] = []
        vs_id = _store(c)
        asst = _search_assistant(c, vs_id)
        thread = _thread(c)
        out.append(
            c.beta.threads.runs.with_raw_response.create(
                thread_id=thread, assistant_id=asst, stream=True, include=[INCLUDE]
            ).http_response.read()
        )
        fn = c.beta.assistants.create(model="gpt-4o", tools=[WEATHER_TOOL])  # type: ignore[list-item]
        raw = c.beta.threads.with_raw_response.create_and_run(
            assistant_id=fn.id, stream=True, thread={"messages": [{"role": "user", "content": "Wear?"}]}
        )
        out.append(raw.http_response.read())
        return out
    finally:
        c.close()


def test_same_seed_same_bytes() -> None:
    bodies = []
    for _ in range(2):
        with Simulator(seed=11, epoch=1_700_000_000, latency="fast") as s:
            bodies.append(_script(s.base_url))
    assert bodies[0] == bodies[1]
    assert b"thread.run.completed" in bodies[0][0] and b"thread.run.requires_action" in bodies[0][1]
    with Simulator(seed=12, epoch=1_700_000_000, latency="fast") as s:
        assert _script(s.base_url) != bodies[0]


def test_cached_tokens_follow_the_previous_prompt_of_the_thread(
    sim: Simulator, client: openai.OpenAI
) -> None:
    vs_id = _store(client)
    long_instructions = "Answer from the files and cite them carefully. " * 150
    asst = client.beta.assistants.create(
        model="gpt-4.1",
        instructions=long_instructions,
        tools=[{"type": "file_search"}],
        tool_resources={"file_search": {"vector_store_ids": [vs_id]}},
    )
    thread = _thread(client)
    handler = Recorder()
    with client.beta.threads.runs.stream(thread_id=thread, assistant_id=asst.id, event_handler=handler) as s:
        s.until_done()
        run = s.get_final_run()
    tool_u, msg_u = (_usage_dict(st.usage) for st in handler.done_steps)
    assert tool_u["prompt_tokens"] >= economics.CACHE_MIN_TOKENS
    assert tool_u["prompt_token_details"]["cached_tokens"] == 0
    assert (
        msg_u["prompt_token_details"]["cached_tokens"]
        == economics.cached_prefix(msg_u["prompt_tokens"], tool_u["prompt_tokens"])
        > 0
    )
    _assert_ledger(sim, run, [tool_u, msg_u])
    # a brand-new thread starts cold again
    other = Recorder()
    with client.beta.threads.runs.stream(
        thread_id=_thread(client), assistant_id=asst.id, event_handler=other
    ) as s:
        s.until_done()
    assert _usage_dict(other.done_steps[0].usage)["prompt_token_details"]["cached_tokens"] == 0


def test_cancel_during_a_live_stream(client: openai.OpenAI) -> None:
    asst = client.beta.assistants.create(model="gpt-4o")
    thread = _thread(client)
    events: list[str] = []
    with client.beta.threads.runs.stream(
        thread_id=thread, assistant_id=asst.id, extra_headers={FAULT: "stall:0.5"}
    ) as stream:
        for ev in stream:
            events.append(ev.event)
            if ev.event == "thread.message.delta" and events.count("thread.message.delta") == 3:
                run_id = stream.current_run.id  # type: ignore[union-attr]
                assert client.beta.threads.runs.cancel(run_id=run_id, thread_id=thread).status == "cancelling"
    assert events[-1] == "thread.run.cancelled"
    assert client.beta.threads.runs.retrieve(run_id=run_id, thread_id=thread).status == "cancelled"
