"""The simulator's Responses API, driven by the unmodified SDK over real sockets (sync and async)."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import openai
import pytest

from collector.simulator import Simulator, economics, prompts
from collector.simulator.core import count_tokens
from collector.simulator.search import index_of

DOC = "\n\n".join(
    f"Section {i}. Travis's favorite food is pizza, and the refund policy covers standard cases within "
    f"{i + 10} days of purchase. Customers may ask for a review when records are incomplete; support "
    f"confirms the details after checking the relevant sections of contract {i}." for i in range(60))
QUESTION = "What is Travis's favorite food according to the refund policy?"


def make_store(client: openai.OpenAI, text: str = DOC, name: str = "policy.txt") -> str:
    """Upload a file into a new vector store and wait until it is searchable."""
    f = client.files.create(file=(name, io.BytesIO(text.encode())), purpose="assistants")
    vs = client.vector_stores.create(file_ids=[f.id])
    deadline = time.monotonic() + 10
    while vs.status != "completed":
        assert time.monotonic() < deadline, "vector store never completed"
        time.sleep(0.01)
        vs = client.vector_stores.retrieve(vs.id)
    return vs.id


def fs_tool(vs_id: str, **extra: Any) -> list[Any]:
    return [{"type": "file_search", "vector_store_ids": [vs_id], **extra}]


def payload_tokens(sim: Simulator, results: list[Any]) -> int:
    """search_payload_tokens of the chunks behind ``results``, looked up in the simulator's index."""
    index = index_of(sim.world)
    tokens = []
    for r in results:
        chunks = {c.text: c.tokens for c in index.get(r.vector_store_id or "", r.file_id or "")}
        tokens.append(chunks[r.text])
    return economics.search_payload_tokens(tokens)


def ledger_usage(sim: Simulator, object_id: str) -> dict[str, int]:
    return sim.ledger.usage_for(object_id)


def assert_usage_matches_ledger(sim: Simulator, resp: Any) -> None:
    u = resp.usage
    led = ledger_usage(sim, resp.id)
    assert (u.input_tokens, u.input_tokens_details.cached_tokens, u.output_tokens,
            u.output_tokens_details.reasoning_tokens) == (
        led["input_tokens"], led["cached_input_tokens"], led["output_tokens"], led["reasoning_tokens"])
    assert u.total_tokens == u.input_tokens + u.output_tokens


# --------------------------------------------------------------------------------------------------
# Non-streamed


def test_non_streamed_file_search_with_include(sim: Simulator, client: openai.OpenAI) -> None:
    vs_id = make_store(client)
    resp: Any = client.responses.create(model="gpt-4o-mini", input=QUESTION, tools=fs_tool(vs_id),
                                   include=["file_search_call.results"])
    assert resp.status == "completed"
    assert resp.model == "gpt-4o-mini-2024-07-18"
    assert resp.tools[0].to_dict() == {"type": "file_search", "filters": None, "max_num_results": 20,
                                       "ranking_options": {"ranker": "auto", "score_threshold": 0.0},
                                       "vector_store_ids": [vs_id]}
    fs, msg = resp.output
    assert fs.type == "file_search_call" and fs.status == "completed" and 1 <= len(fs.queries) <= 3
    assert fs.results and len(fs.results) <= 20
    assert set(fs.results[0].to_dict()) == {"attributes", "file_id", "filename", "score", "text",
                                            "vector_store_id"}
    assert [r.score for r in fs.results] == sorted((r.score for r in fs.results), reverse=True)
    assert msg.type == "message" and msg.content[0].type == "output_text"
    text = msg.content[0].text
    for ann in msg.content[0].annotations:
        assert ann.type == "file_citation" and ann.filename == "policy.txt"
        assert text[ann.index] == "."
    assert resp.output_text == text
    assert_usage_matches_ledger(sim, resp)
    entry = [e for e in sim.ledger.usage if e.object_id == resp.id]
    assert len(entry) == 1 and entry[0].api == "responses" and entry[0].file_search_calls == 1
    assert resp.usage.output_tokens == count_tokens(text)


def test_search_billing_is_steps_after_search_times_payload(sim: Simulator, client: openai.OpenAI) -> None:
    vs_id = make_store(client)
    plain: Any = client.responses.create(model="gpt-4o", input=QUESTION, instructions="Be brief.")
    with_fs: Any = client.responses.create(model="gpt-4o", input=QUESTION, instructions="Be brief.",
                                      tools=fs_tool(vs_id, max_num_results=5))
    assert with_fs.output[0].results is None  # not asked for, yet paid for
    stored: Any = client.responses.retrieve(with_fs.id, include=["file_search_call.results"])
    results = stored.output[0].results
    assert results and len(results) <= 5
    base = plain.usage.input_tokens + economics.TOOL_STEP_OVERHEAD_TOKENS
    steps = 1 + economics.RESPONSES_STEPS_AFTER_SEARCH
    assert with_fs.usage.input_tokens - steps * base == \
        economics.RESPONSES_STEPS_AFTER_SEARCH * payload_tokens(sim, results)
    # the plain prompt: developer + user message framing and the reply priming
    assert plain.usage.input_tokens == (
        2 * prompts.TOKENS_PER_MESSAGE + count_tokens("developer") + count_tokens("Be brief.")
        + count_tokens("user") + count_tokens(QUESTION) + prompts.REPLY_PRIMING_TOKENS)
    assert_usage_matches_ledger(sim, with_fs)
    assert_usage_matches_ledger(sim, plain)


def test_reasoning_model_emits_reasoning_item_and_tokens(sim: Simulator, client: openai.OpenAI) -> None:
    vs_id = make_store(client)
    resp: Any = client.responses.create(model="gpt-5-mini", input=QUESTION, tools=fs_tool(vs_id))
    assert resp.model == "gpt-5-mini-2025-08-07"
    assert [o.type for o in resp.output] == ["reasoning", "file_search_call", "message"]
    visible = count_tokens(resp.output_text)
    reasoning = resp.usage.output_tokens_details.reasoning_tokens
    assert reasoning == economics.reasoning_tokens("gpt-5-mini", visible)
    assert resp.usage.output_tokens == visible + resp.usage.output_tokens_details.reasoning_tokens
    assert resp.reasoning is not None and resp.reasoning.effort == "medium"
    assert_usage_matches_ledger(sim, resp)


def test_unknown_model_is_echoed_as_given(client: openai.OpenAI) -> None:
    assert client.responses.create(model="my-finetune", input="hi").model == "my-finetune"


def test_function_tool_then_output_then_answer(sim: Simulator, client: openai.OpenAI) -> None:
    tool: Any = {"type": "function", "name": "get_weather", "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"], "additionalProperties": False}, "strict": True}
    first: Any = client.responses.create(model="gpt-4.1", input="Weather in Paris?", tools=[tool])
    assert first.model == "gpt-4.1-2025-04-14"
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert set(json.loads(call.arguments)) == {"city"}
    assert first.usage is not None and first.usage.output_tokens == count_tokens(call.arguments)
    second: Any = client.responses.create(model="gpt-4.1", previous_response_id=first.id, tools=[tool],
                                     input=[{"type": "function_call_output", "call_id": call.call_id,
                                             "output": '{"temp_c": 18}'}])
    assert [o.type for o in second.output] == ["message"]
    assert second.previous_response_id == first.id
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens  # pays for the earlier turn
    assert_usage_matches_ledger(sim, second)


def test_previous_response_chain_caches_repeated_prefix(client: openai.OpenAI) -> None:
    instructions = "Answer from the policy. " * 300  # well past the 1024-token cache minimum
    first: Any = client.responses.create(model="gpt-4o", input="First question?", instructions=instructions)
    second: Any = client.responses.create(model="gpt-4o", input="Second question?", instructions=instructions,
                                     previous_response_id=first.id)
    assert first.usage is not None and second.usage is not None
    assert first.usage.input_tokens_details.cached_tokens == 0
    cached = second.usage.input_tokens_details.cached_tokens
    assert cached >= economics.CACHE_MIN_TOKENS and cached % economics.CACHE_INCREMENT == 0
    assert cached <= first.usage.input_tokens + first.usage.output_tokens
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens


def test_conversation_history_is_paid_for(sim: Simulator, client: openai.OpenAI) -> None:
    conv = client.conversations.create()
    question = "Hello there, who are you?"
    a: Any = client.responses.create(model="gpt-4o-mini", input=question, conversation=conv.id)
    b: Any = client.responses.create(model="gpt-4o-mini", input=question, conversation=conv.id)
    assert a.usage is not None and b.usage is not None
    earlier_answer = prompts.TOKENS_PER_MESSAGE + count_tokens("assistant") + count_tokens(a.output_text)
    new_question = prompts.TOKENS_PER_MESSAGE + count_tokens("user") + count_tokens(question)
    assert b.usage.input_tokens == a.usage.input_tokens + earlier_answer + new_question
    assert b.conversation is not None and b.conversation.id == conv.id
    assert_usage_matches_ledger(sim, b)


def test_echoes_request_fields(client: openai.OpenAI) -> None:
    resp: Any = client.responses.create(model="gpt-4o", input="hi", metadata={"team": "search"}, user="u-1",
                                   safety_identifier="sid-1", service_tier="flex", truncation="auto",
                                   max_output_tokens=500, temperature=0.2, store=False)
    assert (resp.metadata, resp.user, resp.safety_identifier, resp.service_tier, resp.truncation,
            resp.max_output_tokens, resp.temperature, resp.store) == (
        {"team": "search"}, "u-1", "sid-1", "flex", "auto", 500, 0.2, False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(resp.id)


def test_max_output_tokens_makes_response_incomplete(sim: Simulator, client: openai.OpenAI) -> None:
    resp: Any = client.responses.create(model="gpt-4o", input="Tell me everything.", max_output_tokens=16)
    assert resp.status == "incomplete"
    assert resp.incomplete_details is not None and resp.incomplete_details.reason == "max_output_tokens"
    assert resp.usage is not None and resp.usage.output_tokens <= 16
    assert resp.usage.output_tokens == count_tokens(resp.output_text)
    assert resp.output[0].status == "incomplete"
    assert_usage_matches_ledger(sim, resp)


# --------------------------------------------------------------------------------------------------
# Streamed


def _raw_sse(client: openai.OpenAI, **kwargs: Any) -> list[tuple[str | None, dict[str, Any]]]:
    """(event line, data) pairs of a raw streamed create, read through the SDK's raw response."""
    frames: list[tuple[str | None, dict[str, Any]]] = []
    with client.responses.with_streaming_response.create(stream=True, **kwargs) as raw:
        assert raw.headers["content-type"] == "text/event-stream; charset=utf-8"
        event: str | None = None
        for line in raw.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                assert line[6:] != "[DONE]"
                frames.append((event, json.loads(line[6:])))
                event = None
    return frames


def test_stream_frames_order_and_sequence(sim: Simulator, client: openai.OpenAI) -> None:
    vs_id = make_store(client)
    frames = _raw_sse(client, model="gpt-4o-mini", input=QUESTION, tools=fs_tool(vs_id))
    assert all(event == data["type"] for event, data in frames)
    assert [d["sequence_number"] for _, d in frames] == list(range(len(frames)))
    types = [d["type"] for _, d in frames]
    assert types[:9] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.file_search_call.in_progress", "response.file_search_call.searching",
                         "response.file_search_call.completed", "response.output_item.done",
                         "response.output_item.added", "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    middle = set(types[9:-4])
    assert middle <= {"response.output_text.delta", "response.output_text.annotation.added"}
    deltas = [d for _, d in frames if d["type"] == "response.output_text.delta"]
    assert all(d["logprobs"] == [] and d["obfuscation"] for d in deltas)
    assert all(len(d["delta"]) + len(d["obfuscation"]) == 16 for d in deltas if len(d["delta"]) < 16)
    done_fs = frames[6][1]["item"]
    assert done_fs["results"] is None and done_fs["queries"]
    completed = frames[-1][1]["response"]
    assert completed["status"] == "completed"
    assert [o["id"] for o in completed["output"]] == [frames[6][1]["item"]["id"], frames[-2][1]["item"]["id"]]
    text = "".join(d["delta"] for d in deltas)
    assert frames[-4][1]["text"] == text
    assert completed["usage"]["output_tokens"] == count_tokens(text)
    assert completed["usage"] == {
        "input_tokens": ledger_usage(sim, completed["id"])["input_tokens"],
        "input_tokens_details": {"cached_tokens": ledger_usage(sim, completed["id"])["cached_input_tokens"]},
        "output_tokens": count_tokens(text), "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": completed["usage"]["input_tokens"] + count_tokens(text)}
    assert frames[0][1]["response"]["usage"] is None and frames[0][1]["response"]["service_tier"] == "auto"
    assert completed["service_tier"] == "default"
    first = [f for f in sim.ledger.first_deltas if f.object_id == completed["id"]]
    assert len(first) == 1


def test_stream_include_results_and_no_obfuscation(client: openai.OpenAI) -> None:
    vs_id = make_store(client)
    frames = _raw_sse(client, model="gpt-4o", input=QUESTION, tools=fs_tool(vs_id),
                      include=["file_search_call.results"], stream_options={"include_obfuscation": False})
    done = next(d for _, d in frames if d["type"] == "response.output_item.done")
    assert done["item"]["results"] and done["item"]["results"][0]["vector_store_id"] == vs_id
    assert all("obfuscation" not in d for _, d in frames if d["type"] == "response.output_text.delta")


def test_sdk_stream_and_helper(sim: Simulator, client: openai.OpenAI) -> None:
    vs_id = make_store(client)
    events: list[Any] = list(client.responses.create(model="gpt-4o-mini", input=QUESTION,
                                                     tools=fs_tool(vs_id),
                                          stream=True))
    assert events[-1].type == "response.completed"
    assert_usage_matches_ledger(sim, events[-1].response)
    with client.responses.stream(model="gpt-4o-mini", input=QUESTION, tools=fs_tool(vs_id)) as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.output_text == "".join(texts)
    assert_usage_matches_ledger(sim, final)


async def test_async_stream_helper_and_create(sim: Simulator, aclient: openai.AsyncOpenAI) -> None:
    async with aclient.responses.stream(model="gpt-4o", input="Summarise the policy.") as stream:
        final = await stream.get_final_response()
    assert final.status == "completed"
    assert_usage_matches_ledger(sim, final)
    events: Any = [e async for e in await aclient.responses.create(model="gpt-4o", input="Hi", stream=True)]
    assert events[-1].type == "response.completed"
    resp: Any = await aclient.responses.create(model="gpt-4o", input="Hi")
    assert_usage_matches_ledger(sim, resp)


# --------------------------------------------------------------------------------------------------
# Background, retrieve, cancel


def _poll(client: openai.OpenAI, resp_id: str) -> Any:
    deadline = time.monotonic() + 10
    resp: Any = client.responses.retrieve(resp_id)
    while resp.status in ("queued", "in_progress"):
        assert time.monotonic() < deadline
        time.sleep(0.005)
        resp = client.responses.retrieve(resp_id)
    return resp


def test_background_poll_and_resumed_stream(sim: Simulator, client: openai.OpenAI) -> None:
    vs_id = make_store(client)
    queued: Any = client.responses.create(model="gpt-4o", input=QUESTION, tools=fs_tool(vs_id),
                                          background=True)
    assert queued.status == "queued" and queued.background is True and queued.usage is None
    done: Any = _poll(client, queued.id)
    assert done.status == "completed"
    assert_usage_matches_ledger(sim, done)
    assert done.output[0].results is None
    with_results: Any = client.responses.retrieve(queued.id, include=["file_search_call.results"])
    assert with_results.output[0].results
    resumed: Any = list(client.responses.retrieve(queued.id, stream=True, starting_after=4))
    assert resumed[0].sequence_number == 5
    assert [e.sequence_number for e in resumed] == list(range(5, 5 + len(resumed)))
    assert resumed[-1].type == "response.completed"
    with client.responses.stream(response_id=queued.id, starting_after=3) as stream:
        seen = [e.sequence_number for e in stream]
        final = stream.get_final_response()
    assert seen[0] == 4 and final.id == queued.id


def test_background_stream_starts_queued(client: openai.OpenAI) -> None:
    events: list[Any] = list(client.responses.create(model="gpt-4o", input="Hi", background=True,
                                                     stream=True))
    assert [e.type for e in events[:3]] == ["response.created", "response.queued", "response.in_progress"]
    assert events[0].response.status == "queued" and events[-1].type == "response.completed"


async def test_async_background_retrieve(sim: Simulator, aclient: openai.AsyncOpenAI) -> None:
    resp: Any = await aclient.responses.create(model="gpt-4o-mini", input="Hi", background=True)
    stream: Any = await aclient.responses.retrieve(resp.id, stream=True)
    events = [e async for e in stream]
    assert events[0].sequence_number == 0 and events[-1].type == "response.completed"
    final: Any = await aclient.responses.retrieve(resp.id)
    assert_usage_matches_ledger(sim, final)


def test_cancel_background(sim: Simulator, client: openai.OpenAI) -> None:
    resp: Any = client.responses.create(model="gpt-4o", input="Hi", background=True,
                                   extra_headers={"X-Runmeter-Fault": "stall:0.3"})
    cancelled: Any = client.responses.cancel(resp.id)
    assert cancelled.status == "cancelled"
    assert _poll(client, resp.id).status == "cancelled"
    assert sim.ledger.usage_for(resp.id)["input_tokens"] == 0
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(client.responses.create(model="gpt-4o", input="Hi").id)


def test_cancelled_fault_on_background(client: openai.OpenAI) -> None:
    resp: Any = client.responses.create(model="gpt-4o", input="Hi", background=True,
                                   extra_headers={"X-Runmeter-Fault": "cancelled"})
    assert _poll(client, resp.id).status == "cancelled"


def test_streaming_a_foreground_response_is_refused(client: openai.OpenAI) -> None:
    resp: Any = client.responses.create(model="gpt-4o", input="Hi")
    with pytest.raises(openai.BadRequestError):
        list(client.responses.retrieve(resp.id, stream=True))


# --------------------------------------------------------------------------------------------------
# Invalid requests


@pytest.mark.parametrize(("tool_extra", "param", "code"), [
    ({"max_num_results": 0}, "tools[0].max_num_results", "integer_below_min_value"),
    ({"max_num_results": 51}, "tools[0].max_num_results", "integer_above_max_value"),
    ({"ranking_options": {"score_threshold": 1.5}}, "tools[0].ranking_options.score_threshold",
     "decimal_above_max_value"),
])
def test_bad_file_search_tool_is_400(client: openai.OpenAI, tool_extra: dict[str, Any], param: str,
                                     code: str) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model="gpt-4o", input="Hi", tools=fs_tool("vs_x", **tool_extra))
    assert exc.value.param == param and exc.value.code == code
    assert exc.value.body["type"] == "invalid_request_error"  # type: ignore[index]


def test_unknown_ids(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="gpt-4o", input="Hi", tools=fs_tool("vs_missing"))
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_missing")
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model="gpt-4o", input="Hi", previous_response_id="resp_missing")
    assert exc.value.code == "previous_response_not_found"
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model="gpt-4o", input="Hi", include=["nope"])  # type: ignore[list-item]
    assert exc.value.param == "include[0]"
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model="gpt-4o", input="Hi", extra_body={"bogus": 1})
    assert exc.value.code == "unknown_parameter"


# --------------------------------------------------------------------------------------------------
# Faults


def _fault(mode: str) -> dict[str, str]:
    return {"X-Runmeter-Fault": mode}


def test_fault_rate_limit_and_server_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as rl:
        client.responses.create(model="gpt-4o", input="Hi", stream=True, extra_headers=_fault("rate_limit"))
    assert rl.value.response.headers["retry-after"] == "1" and rl.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.InternalServerError):
        client.responses.create(model="gpt-4o", input="Hi", extra_headers=_fault("server_error"))


def test_fault_error_event_raises_api_error(sim: Simulator, client: openai.OpenAI) -> None:
    stream: Any = client.responses.create(model="gpt-4o", input="Hi", stream=True,
                                          extra_headers=_fault("error_event"))
    seen: list[str] = []
    with pytest.raises(openai.APIError) as exc:
        seen.extend(e.type for e in stream)
    assert "error occurred" in exc.value.message and "response.output_text.delta" in seen
    assert not isinstance(exc.value, openai.APIStatusError)


def test_fault_error_event_flat_is_yielded(client: openai.OpenAI) -> None:
    events: list[Any] = list(client.responses.create(model="gpt-4o", input="Hi", stream=True,
                                          extra_headers=_fault("error_event_flat")))
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2].code == "server_error"
    assert events[-1].response.status == "failed" and events[-1].response.usage is None


def test_fault_drop_cuts_connection_but_service_finishes(sim: Simulator, client: openai.OpenAI) -> None:
    stream: Any = client.responses.create(model="gpt-4o", input="Hi", stream=True,
                                          extra_headers=_fault("drop"))
    ids: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        for e in stream:
            if e.type == "response.created":
                ids.append(e.response.id)
    final: Any = _poll(client, ids[0])
    assert final.status == "completed"
    assert_usage_matches_ledger(sim, final)
    with pytest.raises(openai.APIConnectionError):
        client.responses.create(model="gpt-4o", input="Hi", extra_headers=_fault("drop"))


def test_fault_stall_pauses_then_completes(sim: Simulator, client: openai.OpenAI) -> None:
    before = sim.world.clock.now()
    started = time.monotonic()
    events: list[Any] = list(client.responses.create(model="gpt-4o", input="Hi", stream=True,
                                          extra_headers=_fault("stall:0.2")))
    assert time.monotonic() - started >= 0.2
    assert sim.world.clock.now() - before >= 0.2
    assert events[-1].type == "response.completed"


def test_fault_failed_and_incomplete(sim: Simulator, client: openai.OpenAI) -> None:
    failed: Any = list(client.responses.create(model="gpt-4o", input="Hi", stream=True,
                                          extra_headers=_fault("failed")))
    last = failed[-1]
    assert last.type == "response.failed" and last.response.error is not None
    assert last.response.error.code == "server_error"
    assert sim.ledger.usage_for(last.response.id)["input_tokens"] == 0
    with client.responses.stream(model="gpt-4o", input="Hi", extra_headers=_fault("incomplete")) as s:
        events = list(s)
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"  # type: ignore[union-attr]
    assert_usage_matches_ledger(sim, events[-1].response)
    nonstream: Any = client.responses.create(model="gpt-4o", input="Hi", extra_headers=_fault("failed"))
    assert nonstream.status == "failed"


def test_server_wide_fault_with_probability_is_seeded() -> None:
    outcomes = []
    for _ in range(2):
        with Simulator(seed=3, epoch=1_764_000_000, latency="none", fault="rate_limit@0.5") as s:
            c = openai.OpenAI(base_url=s.base_url, api_key="sk-test", max_retries=0)
            row = []
            for _ in range(8):
                try:
                    c.responses.create(model="gpt-4o", input="Hi")
                    row.append("ok")
                except openai.RateLimitError:
                    row.append("429")
            c.close()
        outcomes.append(row)
    assert outcomes[0] == outcomes[1] and {"ok", "429"} <= set(outcomes[0])


# --------------------------------------------------------------------------------------------------
# Determinism


def _session(seed: int) -> list[bytes]:
    bodies = []
    with Simulator(seed=seed, epoch=1_764_000_000, latency="fast") as s:
        c = openai.OpenAI(base_url=s.base_url, api_key="sk-test", max_retries=0)
        vs_id = make_store(c)
        for stream in (True, False):
            with c.responses.with_streaming_response.create(
                    model="gpt-4o", input=QUESTION, tools=fs_tool(vs_id), stream=stream,
                    include=["file_search_call.results"]) as raw:
                bodies.append(raw.read())
        c.close()
    return bodies


def test_same_seed_and_epoch_give_identical_bodies() -> None:
    first, second = _session(11), _session(11)
    assert first == second
    assert b'"obfuscation"' in first[0]
    assert _session(12)[0] != first[0]


def test_background_stream_dropped_then_resumed(sim: Simulator, client: openai.OpenAI) -> None:
    stream: Any = client.responses.create(model="gpt-4o", input="Hi", background=True, stream=True,
                                          extra_headers=_fault("drop"))
    seen: list[Any] = []
    with pytest.raises(openai.APIConnectionError):
        seen.extend(stream)
    last = seen[-1].sequence_number
    resumed = list(client.responses.retrieve(seen[0].response.id, stream=True, starting_after=last))
    assert resumed[0].sequence_number == last + 1 and resumed[-1].type == "response.completed"
    text = "".join(e.delta for e in [*seen, *resumed] if e.type == "response.output_text.delta")
    assert text == resumed[-1].response.output_text
    assert_usage_matches_ledger(sim, resumed[-1].response)


def test_structured_output_parses(client: openai.OpenAI) -> None:
    import pydantic

    class Answer(pydantic.BaseModel):
        food: str
        confidence: float
        sources: list[str]

    parsed = client.responses.parse(model="gpt-4o", input="Travis's favorite food?", text_format=Answer)
    assert isinstance(parsed.output_parsed, Answer)
    chat = client.chat.completions.parse(model="gpt-4o", messages=[{"role": "user", "content": "Food?"}],
                                         response_format=Answer)
    assert isinstance(chat.choices[0].message.parsed, Answer)
