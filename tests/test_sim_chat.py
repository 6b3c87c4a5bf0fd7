"""The simulator's Chat Completions, driven by the unmodified SDK over real sockets (sync and async)."""

from __future__ import annotations

import json
import time
from typing import Any

import openai
import pytest

from collector.simulator import Simulator, economics, prompts
from collector.simulator.core import count_tokens

MESSAGES: list[Any] = [{"role": "user", "content": "Say this is a test"}]


def assert_usage_matches_ledger(sim: Simulator, completion_id: str, usage: Any) -> None:
    led = sim.ledger.usage_for(completion_id)
    assert (usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens, usage.completion_tokens,
            usage.completion_tokens_details.reasoning_tokens) == (
        led["input_tokens"], led["cached_input_tokens"], led["output_tokens"], led["reasoning_tokens"])
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    entries = [e for e in sim.ledger.usage if e.object_id == completion_id]
    assert len(entries) == 1 and entries[0].api == "chat"


def test_non_streamed_completion(sim: Simulator, client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="gpt-4", messages=MESSAGES)
    assert resp.id.startswith("chatcmpl-") and resp.object == "chat.completion"
    assert resp.model == "gpt-4-0613"
    # the recording (test_chat_completion_streaming.yaml) bills this exact prompt 12 tokens
    assert resp.usage is not None and resp.usage.prompt_tokens == 12
    choice = resp.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert resp.usage.completion_tokens == count_tokens(choice.message.content or "")
    assert_usage_matches_ledger(sim, resp.id, resp.usage)


def _raw_lines(client: openai.OpenAI, **kwargs: Any) -> list[str]:
    with client.chat.completions.with_streaming_response.create(stream=True, **kwargs) as raw:
        assert raw.headers["content-type"] == "text/event-stream; charset=utf-8"
        return [line for line in raw.iter_lines() if line]


def test_stream_with_include_usage_wire_shape(sim: Simulator, client: openai.OpenAI) -> None:
    lines = _raw_lines(client, model="gpt-4o-mini", messages=MESSAGES, stream_options={"include_usage": True})
    assert all(line.startswith("data: ") for line in lines)  # no event: lines
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert {c["model"] for c in chunks} == {"gpt-4o-mini-2024-07-18"}
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and chunks[-2]["choices"][0]["delta"] == {}
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1])
    u = usage_chunk["usage"]
    assert u["completion_tokens"] == count_tokens(text)
    assert set(u["prompt_tokens_details"]) >= {"cached_tokens"}
    assert set(u["completion_tokens_details"]) >= {"reasoning_tokens"}
    led = sim.ledger.usage_for(usage_chunk["id"])
    assert (u["prompt_tokens"], u["completion_tokens"]) == (led["input_tokens"], led["output_tokens"])
    assert [f.object_id for f in sim.ledger.first_deltas] == [usage_chunk["id"]]


def test_stream_without_include_usage_has_no_usage_chunk(sim: Simulator, client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    assert all(c.usage is None and c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert sim.ledger.usage_for(chunks[0].id)["input_tokens"] == 12  # billed even when not shown


def test_sdk_stream_include_usage(sim: Simulator, client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert_usage_matches_ledger(sim, chunks[-1].id, chunks[-1].usage)


def test_stream_helper(sim: Simulator, client: openai.OpenAI) -> None:
    with client.chat.completions.stream(model="gpt-4o", messages=MESSAGES,
                                        stream_options={"include_usage": True}) as stream:
        pieces = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "".join(pieces)
    assert final.usage is not None
    assert_usage_matches_ledger(sim, final.id, final.usage)


async def test_async_create_and_stream_helper(sim: Simulator, aclient: openai.AsyncOpenAI) -> None:
    resp = await aclient.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert resp.usage is not None
    assert_usage_matches_ledger(sim, resp.id, resp.usage)
    stream = await aclient.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True,
                                                   stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert chunks[-1].usage is not None
    async with aclient.chat.completions.stream(model="gpt-4o", messages=MESSAGES,
                                               stream_options={"include_usage": True}) as s:
        final = await s.get_final_completion()
    assert final.usage is not None
    assert_usage_matches_ledger(sim, final.id, final.usage)


def test_reasoning_model_tokens_and_max_tokens_refusal(sim: Simulator, client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="o3", messages=MESSAGES)
    assert resp.model == "o3-2025-04-16" and resp.usage is not None
    visible = count_tokens(resp.choices[0].message.content or "")
    details = resp.usage.completion_tokens_details
    assert details is not None and details.reasoning_tokens == economics.reasoning_tokens("o3", visible)
    assert resp.usage.completion_tokens == visible + details.reasoning_tokens
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="o3", messages=MESSAGES, max_tokens=50)
    assert exc.value.code == "unsupported_parameter"


def test_length_limit(sim: Simulator, client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_completion_tokens=3)
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens <= 3
    assert_usage_matches_ledger(sim, resp.id, resp.usage)


def test_repeated_long_prefix_is_cached(client: openai.OpenAI) -> None:
    system: Any = {"role": "system", "content": "Follow the refund policy exactly. " * 250}
    first = client.chat.completions.create(model="gpt-4o", messages=[system, *MESSAGES])
    second = client.chat.completions.create(model="gpt-4o",
                                            messages=[system, {"role": "user", "content": "Next"}])
    assert first.usage is not None and second.usage is not None
    assert first.usage.prompt_tokens_details is not None and second.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = second.usage.prompt_tokens_details.cached_tokens or 0
    system_tokens = prompts.TOKENS_PER_MESSAGE + count_tokens("system") + count_tokens(system["content"])
    assert cached == system_tokens - system_tokens % economics.CACHE_INCREMENT


def test_tool_calls_stream_and_helper(client: openai.OpenAI) -> None:
    tools: list[Any] = [{"type": "function", "function": {
        "name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}},
                                         "required": ["q"], "additionalProperties": False}, "strict": True}}]
    resp = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, tools=tools)
    call = resp.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert resp.choices[0].finish_reason == "tool_calls" and call.function.name == "lookup"  # type: ignore[union-attr]
    assert set(json.loads(call.function.arguments)) == {"q"}  # type: ignore[union-attr]
    with client.chat.completions.stream(model="gpt-4o", messages=MESSAGES, tools=tools) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.choices[0].message.tool_calls[0].function.parsed_arguments  # type: ignore[index]


def test_invalid_requests(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="gpt-4o", messages=[])
    assert exc.value.code == "empty_array" and exc.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "robot", "content": "x"}])  # type: ignore[list-item,misc]
    assert exc.value.param == "messages[0].role"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES,
                                       stream_options={"include_usage": True})


def _fault(mode: str) -> dict[str, str]:
    return {"X-Runmeter-Fault": mode}


def test_faults(sim: Simulator, client: openai.OpenAI) -> None:
    kw: dict[str, Any] = {"model": "gpt-4o", "messages": MESSAGES, "stream": True,
                          "stream_options": {"include_usage": True}}
    with pytest.raises(openai.RateLimitError) as rl:
        client.chat.completions.create(**kw, extra_headers=_fault("rate_limit"))
    assert rl.value.response.headers["retry-after"] == "1"
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(**kw, extra_headers=_fault("server_error"))
    seen: list[Any] = []
    with pytest.raises(openai.APIError) as err:
        seen.extend(client.chat.completions.create(**kw, extra_headers=_fault("error_event")))
    assert "server had an error" in err.value.message
    got: list[Any] = []
    with pytest.raises(openai.APIConnectionError):
        got.extend(client.chat.completions.create(**kw, extra_headers=_fault("drop")))
    assert got and all(c.usage is None for c in got)
    dropped_id = got[0].id
    assert sim.ledger.usage_for(dropped_id)["input_tokens"] == 12  # billed though the client never saw it
    started = time.monotonic()
    stalled = list(client.chat.completions.create(**kw, extra_headers=_fault("stall:0.2")))
    assert time.monotonic() - started >= 0.2 and stalled[-1].usage is not None
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, extra_headers=_fault("drop"))


def test_same_seed_same_bytes() -> None:
    bodies = []
    for _ in range(2):
        with Simulator(seed=5, epoch=1_764_000_000, latency="fast") as s:
            c = openai.OpenAI(base_url=s.base_url, api_key="sk-test", max_retries=0)
            with c.chat.completions.with_streaming_response.create(
                    model="gpt-4o", messages=MESSAGES, stream=True,
                    stream_options={"include_usage": True}) as raw:
                bodies.append(raw.read())
            c.close()
    assert bodies[0] == bodies[1] and b'"obfuscation"' in bodies[0]
