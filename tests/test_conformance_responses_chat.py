"""Fresh simulator streams held against every streamed Responses and Chat recording in ../shared/captures.

For each event type: the simulator's payload carries every key the recordings of that type carry (at
every nesting level: response, item, part, usage, ...), and adds none that is in neither the
recordings nor the SDK's pydantic type. The event grammar (the set of (type, next type) pairs) is
the recordings' grammar.
"""

from __future__ import annotations

import io
import itertools
import json
import time
import types
import typing
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import openai
import pydantic
import pytest
import yaml
from conftest import capture_path
from openai.types.chat import ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent

from collector.simulator import Simulator

OPAQUE = frozenset({"metadata", "attributes", "parameters", "filters", "format", "schema"})
"""Keys whose values are user data (their inner keys are not the API's vocabulary)."""

KeyMap = dict[str, set[str]]


# --------------------------------------------------------------------------------------------------
# Reading the recordings


def parse_sse(text: str) -> list[tuple[str | None, str]]:
    """(event, data) frames of a raw SSE body."""
    frames: list[tuple[str | None, str]] = []
    event: str | None = None
    data: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line:
            if data:
                frames.append((event, "\n".join(data)))
            event, data = None, []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
    if data:
        frames.append((event, "\n".join(data)))
    return frames


def _dotnet_bodies(name: str) -> Iterator[tuple[str, Any]]:
    for entry in json.loads(capture_path(name).read_text())["Entries"]:
        body = entry["ResponseBody"]
        yield entry["RequestUri"], "".join(body) if isinstance(body, list) else body


def _vcr_bodies(name: str) -> Iterator[tuple[str, Any]]:
    for inter in yaml.safe_load(capture_path(name).read_text())["interactions"]:
        resp = inter["response"]
        body = resp.get("body", {}).get("string") if isinstance(resp.get("body"), dict) else None
        yield inter["request"]["uri"], body if body is not None else resp.get("parsed_body")


def recorded_responses_streams() -> list[list[dict[str, Any]]]:
    """Every streamed ``/v1/responses`` body in the captures, as parsed payloads."""
    streams = []
    sources = [*_dotnet_bodies("ResponsesToolTests_FileSearchCallStreaming.json"),
               *_vcr_bodies("test_openai_responses_model_file_search_tool_stream.yaml")]
    for uri, body in sources:
        if uri.endswith("/v1/responses") and isinstance(body, str) and "event:" in body:
            streams.append([json.loads(d) for _, d in parse_sse(body)])
    assert len(streams) == 2
    return streams


def recorded_response_bodies() -> list[dict[str, Any]]:
    """Every non-streamed ``/v1/responses`` body (their keys are allowed in ``response``)."""
    bodies = []
    for uri, body in [*_dotnet_bodies("ResponsesToolTests_FileSearch.json"),
                      *_vcr_bodies("test_openai_responses_model_file_search_tool_with_results.yaml")]:
        if uri.endswith("/v1/responses") and isinstance(body, dict):
            bodies.append(body)
    assert len(bodies) == 2
    return bodies


def recorded_chat_stream() -> list[str]:
    (body,) = [b for uri, b in _vcr_bodies("test_chat_completion_streaming.yaml")
               if uri.endswith("/chat/completions")]
    return [d for _, d in parse_sse(body)]


# --------------------------------------------------------------------------------------------------
# Key maps and SDK types


def key_paths(obj: Any, path: str = "", acc: KeyMap | None = None) -> KeyMap:
    """Path -> keys, for every object in ``obj``; list elements are told apart by their ``type``."""
    acc = {} if acc is None else acc
    if isinstance(obj, dict):
        acc.setdefault(path, set()).update(obj)
        for k, v in obj.items():
            if k in OPAQUE:
                continue
            sub = f"{path}.{k}" if path else k
            if isinstance(v, dict):
                key_paths(v, sub, acc)
            elif isinstance(v, list):
                for el in v:
                    if isinstance(el, dict):
                        key_paths(el, f"{sub}[{el.get('type', '')}]", acc)
    return acc


def _models_in(annotation: Any) -> list[type[pydantic.BaseModel]]:
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return [annotation]
    if origin is typing.Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list, typing.List):  # noqa: UP006
        return [m for a in typing.get_args(annotation) for m in _models_in(a)]
    return []


def _type_literal(model: type[pydantic.BaseModel]) -> set[str]:
    field = model.model_fields.get("type")
    return set(typing.get_args(field.annotation)) if field is not None else set()


def _field_names(model: type[pydantic.BaseModel]) -> set[str]:
    return {f.alias or name for name, f in model.model_fields.items()}


def sdk_keys(root: type[pydantic.BaseModel], path: str) -> set[str]:
    """The SDK's field names of the object at ``path`` under ``root`` (empty when unknown)."""
    models = [root]
    for seg in [s for s in path.split(".") if s] if path else []:
        name, _, disc = seg.partition("[")
        disc = disc.rstrip("]")
        nxt: list[type[pydantic.BaseModel]] = []
        for m in models:
            f = m.model_fields.get(name)
            if f is not None:
                nxt += _models_in(f.annotation)
        if disc:
            nxt = [m for m in nxt if disc in _type_literal(m)] or nxt
        models = nxt
    return set().union(*(_field_names(m) for m in models)) if models else set()


def _event_model(event_type: str) -> type[pydantic.BaseModel]:
    for m in _models_in(ResponseStreamEvent):
        if event_type in _type_literal(m):
            return m
    raise AssertionError(f"no SDK event type {event_type}")


def _merge(maps: list[KeyMap]) -> KeyMap:
    out: KeyMap = defaultdict(set)
    for m in maps:
        for k, v in m.items():
            out[k] |= v
    return out


def by_type(streams: list[list[dict[str, Any]]]) -> dict[str, KeyMap]:
    grouped: dict[str, list[KeyMap]] = defaultdict(list)
    for stream in streams:
        for payload in stream:
            grouped[payload["type"]].append(key_paths(payload))
    return {t: _merge(maps) for t, maps in grouped.items()}


def grammar(streams: list[list[str]]) -> set[tuple[str, str]]:
    return {(a, b) for s in streams for a, b in itertools.pairwise(s)}


# --------------------------------------------------------------------------------------------------
# Fresh simulator streams

DOC = "\n\n".join(f"Section {i}. Travis's favorite food is pizza; the capital of France is Paris. "
                  f"Refunds are possible within {i + 10} days." for i in range(40))


@pytest.fixture(scope="module")
def sim_streams() -> Iterator[dict[str, Any]]:
    with Simulator(seed=21, epoch=1_764_000_000, latency="none") as sim:
        c = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
        f = c.files.create(file=("foods.txt", io.BytesIO(DOC.encode())), purpose="assistants")
        vs = c.vector_stores.create(file_ids=[f.id])
        deadline = time.monotonic() + 10
        while vs.status != "completed":
            assert time.monotonic() < deadline
            time.sleep(0.01)
            vs = c.vector_stores.retrieve(vs.id)
        tools: Any = [{"type": "file_search", "vector_store_ids": [vs.id]}]

        def responses(**kw: Any) -> list[dict[str, Any]]:
            with c.responses.with_streaming_response.create(stream=True, tools=tools, **kw) as raw:
                return [json.loads(d) for _, d in parse_sse(raw.read().decode())]

        out = {
            "plain": [responses(model="gpt-4o-mini", input=q) for q in
                      ("Using the file search tool, what's Travis's favorite food?",
                       "What is the capital of France?")],
            "instructions": responses(model="gpt-4o",
                                      input=[{"role": "user", "content": "Capital of France?"}],
                                      instructions="You are a helpful assistant.", tool_choice="auto"),
            "include": responses(model="gpt-4o", input="What is the capital of France?",
                                 include=["file_search_call.results"]),
            "reasoning": responses(model="gpt-5-mini", input="What is the capital of France?"),
        }
        with c.chat.completions.with_streaming_response.create(
                model="gpt-4", messages=[{"role": "user", "content": "Say this is a test"}], stream=True,
                stream_options={"include_usage": True}) as raw:
            out["chat"] = [d for _, d in parse_sse(raw.read().decode())]
        c.close()
        yield out


# --------------------------------------------------------------------------------------------------
# Responses


def _check_keys(sim: dict[str, KeyMap], rec: dict[str, KeyMap], extra_allowed: dict[str, KeyMap]) -> None:
    for event_type, rec_paths in rec.items():
        assert event_type in sim, f"simulator never sent {event_type}"
        for path, keys in rec_paths.items():
            missing = keys - sim[event_type].get(path, set())
            assert not missing, f"{event_type} {path or '<top>'}: simulator lacks {sorted(missing)}"
    for event_type, sim_paths in sim.items():
        model = _event_model(event_type)
        for path, keys in sim_paths.items():
            allowed = (rec.get(event_type, {}).get(path, set()) | sdk_keys(model, path)
                       | extra_allowed.get(event_type, {}).get(path, set()))
            added = keys - allowed
            assert not added, f"{event_type} {path or '<top>'}: in neither recording nor SDK: {sorted(added)}"


def _non_stream_allowed() -> dict[str, KeyMap]:
    """Keys the non-streamed recordings show inside ``response`` (e.g. results' ``vector_store_id``)."""
    maps = [key_paths({"response": body}) for body in recorded_response_bodies()]
    merged = _merge(maps)
    items: KeyMap = defaultdict(set)
    for path, keys in merged.items():
        if path.startswith("response.output["):
            items["item" + path[path.index("]") + 1:]] |= keys
    return {"response.completed": merged, "response.output_item.done": items}


def test_responses_keys_cover_recordings_and_add_nothing_unknown(sim_streams: dict[str, Any]) -> None:
    rec = by_type(recorded_responses_streams())
    sim = by_type([*sim_streams["plain"], sim_streams["instructions"]])
    _check_keys(sim, rec, {})


def test_responses_with_include_and_reasoning_add_nothing_unknown(sim_streams: dict[str, Any]) -> None:
    rec = by_type(recorded_responses_streams())
    for stream in (sim_streams["include"], sim_streams["reasoning"]):
        sim = by_type([stream])
        for event_type, sim_paths in sim.items():
            model = _event_model(event_type)
            allowed_extra = _non_stream_allowed().get(event_type, {})
            for path, keys in sim_paths.items():
                allowed = (rec.get(event_type, {}).get(path, set()) | sdk_keys(model, path)
                           | allowed_extra.get(path, set()))
                assert keys <= allowed, f"{event_type} {path}: {sorted(keys - allowed)}"
    done = next(p for p in sim_streams["include"] if p["type"] == "response.output_item.done")
    assert set(done["item"]["results"][0]) == {"attributes", "file_id", "filename", "score", "text",
                                               "vector_store_id"}


def test_responses_grammar_matches_recordings(sim_streams: dict[str, Any]) -> None:
    recorded = grammar([[p["type"] for p in s] for s in recorded_responses_streams()])
    for stream in [*sim_streams["plain"], sim_streams["instructions"], sim_streams["include"]]:
        assert grammar([[p["type"] for p in stream]]) == recorded
    # reasoning models add only the reasoning item in front of the recorded grammar
    reasoning = grammar([[p["type"] for p in sim_streams["reasoning"]]])
    assert reasoning - recorded == {("response.output_item.added", "response.output_item.done")}
    assert recorded - reasoning == set()


def test_responses_sequence_numbers_and_no_done(sim_streams: dict[str, Any]) -> None:
    for stream in [*recorded_responses_streams(), *sim_streams["plain"]]:
        assert [p["sequence_number"] for p in stream] == list(range(len(stream)))
        assert stream[-1]["type"] == "response.completed"


def test_sdk_key_lookup_is_not_vacuous() -> None:
    assert "vector_store_ids" in sdk_keys(Response, "tools[file_search]")
    completed, item_done = _event_model("response.completed"), _event_model("response.output_item.done")
    assert "cached_tokens" in sdk_keys(completed, "response.usage.input_tokens_details")
    assert "annotations" in sdk_keys(item_done, "item[message].content[output_text]")
    assert "vector_store_id" not in sdk_keys(_event_model("response.output_item.done"),
                                             "item[file_search_call].results[]")
    with pytest.raises(AssertionError):
        _check_keys({"response.created": {"": {"type", "sequence_number", "response", "bogus"}}},
                    {"response.created": {"": {"type", "sequence_number", "response"}}}, {})


# --------------------------------------------------------------------------------------------------
# Chat


def _chat_kind(data: str) -> str:
    if data == "[DONE]":
        return "[DONE]"
    chunk = json.loads(data)
    if not chunk["choices"]:
        return "usage"
    choice = chunk["choices"][0]
    if choice["finish_reason"]:
        return "finish"
    return "role" if "role" in choice["delta"] else "content"


def test_chat_grammar_matches_recording(sim_streams: dict[str, Any]) -> None:
    recorded = [_chat_kind(d) for d in recorded_chat_stream()]
    simulated = [_chat_kind(d) for d in sim_streams["chat"]]
    assert grammar([simulated]) == grammar([recorded])
    assert simulated[-2:] == ["usage", "[DONE]"] and simulated[-3] == "finish"


def test_chat_keys_cover_recording_and_add_nothing_unknown(sim_streams: dict[str, Any]) -> None:
    def maps(frames: list[str]) -> dict[str, KeyMap]:
        grouped: dict[str, list[KeyMap]] = defaultdict(list)
        for d in frames:
            if d != "[DONE]":
                grouped[_chat_kind(d)].append(key_paths(json.loads(d)))
        return {k: _merge(v) for k, v in grouped.items()}

    rec = maps(recorded_chat_stream())
    sim = maps(sim_streams["chat"])
    assert set(rec) == set(sim)
    for kind, rec_paths in rec.items():
        for path, keys in rec_paths.items():
            lacking = keys - sim[kind].get(path, set())
            assert not lacking, f"{kind} {path}: lacks {sorted(lacking)}"
        for path, keys in sim[kind].items():
            allowed = rec_paths.get(path, set()) | sdk_keys(ChatCompletionChunk, path)
            assert keys <= allowed, f"{kind} {path}: {sorted(keys - allowed)}"
    usage = json.loads(sim_streams["chat"][-2])["usage"]
    recorded_usage = json.loads(recorded_chat_stream()[-2])["usage"]
    assert usage["prompt_tokens"] == recorded_usage["prompt_tokens"] == 12
    assert json.loads(sim_streams["chat"][0])["model"] == json.loads(recorded_chat_stream()[0])["model"]
