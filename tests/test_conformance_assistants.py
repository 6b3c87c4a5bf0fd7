"""Simulator Assistants streams held against the real recordings in ../shared/captures.

Per event type, the simulator's payload keys (recursively: run, usage, step_details, tool calls,
results, message content, annotations) must include every key the recordings carry, and may add
only keys the SDK's pydantic type for that payload declares. The event grammar (which event may
follow which) must stay within the pairs the recordings show plus §2.3's documented order.
"""

from __future__ import annotations

import io
import itertools
import json
import types
import typing
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import openai
import pydantic
import pytest
from conftest import capture_path
from openai.types.beta import assistant_stream_event as ase
from openai.types.beta.threads import Message, Run
from openai.types.beta.threads.runs import RunStep, RunStepInclude

from collector.simulator import Simulator

pytestmark = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")

INCLUDE: RunStepInclude = "step_details.tool_calls[*].file_search.results[*].content"
STREAM_CAPTURES = {
    "file_search": ("AssistantsTests_FileSearchStreamingWorks.json", 0),
    "plain": ("AssistantsTests_StreamingRunWorks.json", 0),
    "tool_call_first": ("AssistantsTests_StreamingToolCall.json", 0),
    "tool_call_second": ("AssistantsTests_StreamingToolCall.json", 1),
}
"""Kind of run -> (recording, index among its streamed bodies)."""

DOCUMENTED_ORDER = [
    "thread.run.created", "thread.run.queued", "thread.run.in_progress", "thread.run.step.created",
    "thread.run.step.in_progress", "thread.run.step.delta", "thread.run.step.completed",
    "thread.run.step.created", "thread.run.step.in_progress", "thread.message.created",
    "thread.message.in_progress", "thread.message.delta", "thread.message.delta", "thread.message.completed",
    "thread.run.step.completed", "thread.run.completed", "done",
]  # fmt: skip
"""§2.3 of the wire reference: the observed order of a file_search run."""
DOCUMENTED_PAIRS = {
    *itertools.pairwise(DOCUMENTED_ORDER),
    ("thread.created", "thread.run.created"),
    ("thread.run.requires_action", "done"),
    ("thread.run.step.completed", "thread.run.queued"),
    ("thread.run.queued", "thread.run.in_progress"),
}

Event = tuple[str, Any]


def parse_sse(raw: str) -> list[Event]:
    """(event, data) pairs of an Assistants stream; ``done`` keeps its literal data."""
    out: list[Event] = []
    for block in raw.replace("\r\n", "\n").strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
        data = fields.get("data", "")
        out.append((fields.get("event", ""), data if data == "[DONE]" else json.loads(data)))
    return out


def recorded_streams(name: str) -> list[list[Event]]:
    doc = json.loads(Path(capture_path(name)).read_text())
    return [
        parse_sse("".join(e["ResponseBody"])) for e in doc["Entries"] if isinstance(e["ResponseBody"], list)
    ]


def recorded(kind: str) -> list[Event]:
    name, idx = STREAM_CAPTURES[kind]
    return recorded_streams(name)[idx]


# ---- the SDK's types ----------------------------------------------------------------------------


def models_in(annotation: Any) -> list[type[pydantic.BaseModel]]:
    """Every pydantic model an annotation may hold (through Optional, List, Union, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return [annotation]
    out: list[type[pydantic.BaseModel]] = []
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return models_in(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list, typing.List, dict):  # noqa: UP006
        for arg in typing.get_args(annotation):
            out.extend(models_in(arg))
    return out


def data_models() -> dict[str, list[type[pydantic.BaseModel]]]:
    """Event name -> the SDK models its ``data`` may be."""
    union = typing.get_args(typing.get_args(ase.AssistantStreamEvent)[0])
    out: dict[str, list[type[pydantic.BaseModel]]] = {}
    for cls in union:
        (name,) = typing.get_args(cls.model_fields["event"].annotation)
        out[name] = models_in(cls.model_fields["data"].annotation)
    return out


def _fields(models: Iterable[type[pydantic.BaseModel]]) -> set[str]:
    names: set[str] = set()
    for m in models:
        names.update(m.model_fields)
        names.update(f.alias for f in m.model_fields.values() if f.alias)
    return names


def _sub_models(models: Iterable[type[pydantic.BaseModel]], key: str) -> list[type[pydantic.BaseModel]]:
    out: list[type[pydantic.BaseModel]] = []
    for m in models:
        field = m.model_fields.get(key)
        if field is not None:
            out.extend(models_in(field.annotation))
    return out


def _dicts(values: Iterable[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for v in values:
        if isinstance(v, dict):
            out.append(v)
        elif isinstance(v, list):
            out.extend(x for x in v if isinstance(x, dict))
    return out


def key_problems(
    rec: list[dict[str, Any]], sim: list[dict[str, Any]], models: list[type[pydantic.BaseModel]], path: str
) -> list[str]:
    """Keys the recordings carry that the simulator lacks, and keys it adds that neither the
    recordings nor the SDK type know, recursively through nested objects and lists of objects."""
    if not rec or not sim:
        return []
    rec_keys = set().union(*(d.keys() for d in rec))
    sim_keys = set().union(*(d.keys() for d in sim))
    problems = [f"{path}.{k}: recorded, not simulated" for k in sorted(rec_keys - sim_keys)]
    problems += [f"{path}.{k}: simulated, unknown" for k in sorted(sim_keys - rec_keys - _fields(models))]
    for key in sorted(rec_keys & sim_keys):
        sub_rec = _dicts(d.get(key) for d in rec)
        sub_sim = _dicts(d.get(key) for d in sim)
        problems += key_problems(sub_rec, sub_sim, _sub_models(models, key), f"{path}.{key}")
    return problems


def by_event(streams: Iterable[list[Event]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for stream in streams:
        for name, data in stream:
            if isinstance(data, dict):
                out[name].append(data)
    return out


def pairs(stream: list[Event]) -> set[tuple[str, str]]:
    names = [n for n, _ in stream]
    return set(itertools.pairwise(names))


# ---- simulator streams of the same kinds --------------------------------------------------------

FOODS = (
    "The favorite food of several people:\n- Summanus Ferdinand: tacos\n- Tekakwitha Effie: pizza\n"
    "- Filip Carola: cake\n"
)


def _raw(resp: Any) -> list[Event]:
    return parse_sse(resp.http_response.read().decode())


@pytest.fixture(scope="module")
def simulated() -> dict[str, Any]:
    """Fresh simulator output for every kind of recorded run (and the polled objects)."""
    with Simulator(seed=3, epoch=1_761_861_600, latency="fast") as sim:
        c = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
        try:
            f = c.files.create(file=("favorite_foods.txt", io.BytesIO(FOODS.encode())), purpose="assistants")
            vs = c.vector_stores.create(name="foods")
            c.vector_stores.file_batches.create_and_poll(vector_store_id=vs.id, file_ids=[f.id])
            fs = c.beta.assistants.create(
                model="gpt-4o",
                tools=[{"type": "file_search"}],
                tool_resources={"file_search": {"vector_store_ids": [vs.id]}},
            )
            out: dict[str, Any] = {
                "file_search": [],
                "plain": [],
                "tool_call_first": [],
                "tool_call_second": [],
            }
            for question in (
                "Using the files you have available, what's Filip's favorite food?",
                "What does Effie like to eat?",
            ):
                t = c.beta.threads.create(messages=[{"role": "user", "content": question}])
                out["file_search"].append(
                    _raw(
                        c.beta.threads.runs.with_raw_response.create(
                            thread_id=t.id, assistant_id=fs.id, stream=True, include=[INCLUDE]
                        )
                    )
                )
            plain = c.beta.assistants.create(model="gpt-4o")
            t = c.beta.threads.create(messages=[{"role": "user", "content": "Hello there, assistant!"}])
            out["plain"].append(
                _raw(
                    c.beta.threads.runs.with_raw_response.create(
                        thread_id=t.id, assistant_id=plain.id, stream=True, include=[INCLUDE]
                    )
                )
            )
            fn = c.beta.assistants.create(
                model="gpt-4o",
                tools=[
                    {
                        "type": "function",
                        "function": {
                            "name": "get_current_weather",
                            "description": "Gets the user's current weather",
                        },
                    }
                ],
            )
            first = _raw(
                c.beta.threads.with_raw_response.create_and_run(
                    assistant_id=fn.id,
                    stream=True,
                    thread={
                        "messages": [{"role": "user", "content": "What should I wear outside right now?"}]
                    },
                )
            )
            out["tool_call_first"].append(first)
            run = first[-2][1]
            call = run["required_action"]["submit_tool_outputs"]["tool_calls"][0]
            out["tool_call_second"].append(
                _raw(
                    c.beta.threads.runs.with_raw_response.submit_tool_outputs(
                        thread_id=run["thread_id"],
                        run_id=run["id"],
                        stream=True,
                        tool_outputs=[{"tool_call_id": call["id"], "output": "warm and sunny"}],
                    )
                )
            )
            # the polled shapes of FileSearchWorks, with its assistant's file_search settings
            fs2 = c.beta.assistants.create(
                model="gpt-4o",
                tool_resources={"file_search": {"vector_store_ids": [vs.id]}},
                tools=[
                    {
                        "type": "file_search",
                        "file_search": {
                            "max_num_results": 2,
                            "ranking_options": {"ranker": "default_2024_08_21", "score_threshold": 0.5},
                        },
                    }
                ],
            )
            t = c.beta.threads.create(messages=[{"role": "user", "content": "What's Filip's favorite food?"}])
            created = c.beta.threads.runs.with_raw_response.create(
                thread_id=t.id, assistant_id=fs2.id, include=[INCLUDE]
            )
            out["run_created"] = json.loads(created.http_response.read())
            final = c.beta.threads.runs.poll(
                run_id=out["run_created"]["id"], thread_id=t.id, poll_interval_ms=1
            )
            out["run_polled"] = final.to_dict()
            out["messages"] = json.loads(
                c.beta.threads.messages.with_raw_response.list(
                    thread_id=t.id, order="desc"
                ).http_response.read()
            )
            out["steps"] = json.loads(
                c.beta.threads.runs.steps.with_raw_response.list(
                    thread_id=t.id, run_id=final.id, include=[INCLUDE]
                ).http_response.read()
            )
            return out
        finally:
            c.close()


def test_recordings_parse_as_expected() -> None:
    fs = recorded("file_search")
    assert fs[0][0] == "thread.run.created" and fs[-1] == ("done", "[DONE]")
    assert fs[-2][1]["usage"]["prompt_tokens"] == 2028
    second = recorded("tool_call_second")
    assert second[0][0] == "thread.run.step.completed" and second[-2][1]["usage"]["prompt_tokens"] == 544


@pytest.mark.parametrize("kind", sorted(STREAM_CAPTURES))
def test_payload_keys_per_event_type(simulated: dict[str, Any], kind: str) -> None:
    models = data_models()
    rec = by_event([recorded(kind)])
    sim = by_event(simulated[kind])
    assert set(rec) <= set(sim), f"event types recorded but never simulated: {set(rec) - set(sim)}"
    problems: list[str] = []
    for event, payloads in rec.items():
        problems += key_problems(payloads, sim[event], models[event], event)
    assert problems == []


def test_payload_keys_across_all_recordings(simulated: dict[str, Any]) -> None:
    """One union over every streamed recording against one union over every simulated stream."""
    models = data_models()
    rec = by_event(s for name in {n for n, _ in STREAM_CAPTURES.values()} for s in recorded_streams(name))
    sim = by_event(s for kind in STREAM_CAPTURES for s in simulated[kind])
    problems: list[str] = []
    for event, payloads in rec.items():
        problems += key_problems(payloads, sim.get(event, []), models[event], event)
    assert problems == []


def test_nested_comparison_catches_a_missing_key() -> None:
    """The checker itself: a key dropped deep inside a tool call is reported with its path."""
    fs = [d for n, d in recorded("file_search") if n == "thread.run.step.completed"]
    broken = json.loads(json.dumps(fs))
    del broken[0]["step_details"]["tool_calls"][0]["file_search"]["results"][0]["score"]
    broken[0]["usage"]["bogus"] = 1
    problems = key_problems(fs, broken, data_models()["thread.run.step.completed"], "x")
    assert "x.step_details.tool_calls.file_search.results.score: recorded, not simulated" in problems
    assert "x.usage.bogus: simulated, unknown" in problems


@pytest.mark.parametrize("kind", sorted(STREAM_CAPTURES))
def test_event_grammar(simulated: dict[str, Any], kind: str) -> None:
    allowed = DOCUMENTED_PAIRS | {
        p
        for name in {n for n, _ in STREAM_CAPTURES.values()}
        for s in recorded_streams(name)
        for p in pairs(s)
    }
    rec = recorded(kind)
    for stream in simulated[kind]:
        assert stream[0][0] == rec[0][0] and stream[-1] == ("done", "[DONE]")
        assert pairs(stream) - allowed == set()
        # same skeleton as the recording once the repeated deltas are folded
        fold = [n for i, (n, _) in enumerate(stream) if i == 0 or n != stream[i - 1][0]]
        rec_fold = [n for i, (n, _) in enumerate(rec) if i == 0 or n != rec[i - 1][0]]
        assert fold == rec_fold


def test_usage_spelling_and_sums(simulated: dict[str, Any]) -> None:
    for stream in simulated["file_search"]:
        steps = [d["usage"] for n, d in stream if n == "thread.run.step.completed"]
        run = stream[-2][1]["usage"]
        assert set(run) == {
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "prompt_token_details",
            "completion_tokens_details",
        }
        assert run["prompt_tokens"] == sum(s["prompt_tokens"] for s in steps)
        assert all(
            d["usage"] is None for n, d in stream if n in ("thread.run.step.created", "thread.run.created")
        )
    first = simulated["tool_call_first"][0]
    assert first[-2][0] == "thread.run.requires_action" and first[-2][1]["usage"] is None


def test_polled_objects_match_file_search_works(simulated: dict[str, Any]) -> None:
    doc = json.loads(Path(capture_path("AssistantsTests_FileSearchWorks.json")).read_text())
    bodies = {
        (e["RequestMethod"], e["RequestUri"].split("?")[0].rsplit("/", 1)[-1]): e["ResponseBody"]
        for e in doc["Entries"]
    }
    rec_run_created = next(b for (m, p), b in bodies.items() if m == "POST" and p == "runs")
    rec_steps = bodies[("GET", "steps")]
    rec_msgs = bodies[("GET", "messages")]
    rec_polled = next(b for (m, _), b in bodies.items() if m == "GET" and b.get("object") == "thread.run")
    problems = key_problems([rec_run_created], [simulated["run_created"]], [Run], "run")
    problems += key_problems([rec_polled], [simulated["run_polled"]], [Run], "polled")
    problems += key_problems(rec_steps["data"], simulated["steps"]["data"], [RunStep], "steps")
    problems += key_problems(rec_msgs["data"], simulated["messages"]["data"], [Message], "messages")
    assert problems == []
    results = simulated["steps"]["data"][1]["step_details"]["tool_calls"][0]["file_search"]["results"]
    assert 1 <= len(results) <= 2 and all(r["score"] > 0.5 and r["content"] for r in results)
    assert set(simulated["steps"]) == set(rec_steps) and set(simulated["messages"]) == set(rec_msgs)
    assert simulated["run_created"]["status"] == "queued" and simulated["run_polled"]["status"] == "completed"
