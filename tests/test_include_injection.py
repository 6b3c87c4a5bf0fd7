"""runmeter's ``include``: the pure rewrite, what reaches the simulator, and what the caller then sees."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from collector.include import (
    RESPONSES_INCLUDE,
    RUN_STEP_INCLUDE,
    RUN_STEP_INCLUDE_QUERY,
    Injected,
    inject_include,
)
from collector.instrument import instrument, uninstrument
from collector.simulator import Simulator

pytestmark = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")

SEED, EPOCH = 7, 1_764_000_000
MSG: Any = [{"role": "user", "content": "What is the refund window for annual plans?"}]
THREAD: Any = {"messages": MSG}
INCLUDE_RUN: Any = [RUN_STEP_INCLUDE]
INCLUDE_RESP: Any = [RESPONSES_INCLUDE]
FS_BODY = {"model": "gpt-4o", "input": "hi", "tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}


# -- the pure rewrite -------------------------------------------------------------------------------
def test_runs_create_gets_the_sdk_encoded_include() -> None:
    assert RUN_STEP_INCLUDE_QUERY == (
        "include%5B%5D=step_details.tool_calls%5B%2A%5D.file_search.results%5B%2A%5D.content")
    assert inject_include("POST", "/v1/threads/thread_1/runs", "", b"{}") == Injected(
        RUN_STEP_INCLUDE_QUERY, b"{}")
    assert inject_include("post", "/v1/threads/thread_1/runs", "a=1", None) == Injected(
        "a=1&" + RUN_STEP_INCLUDE_QUERY, None)


@pytest.mark.parametrize("query", [
    RUN_STEP_INCLUDE_QUERY,
    "include[]=step_details.tool_calls[*].file_search.results[*].content",
    "include=step_details.tool_calls%5B%2A%5D.file_search.results%5B%2A%5D.content",
    "x=1&" + RUN_STEP_INCLUDE_QUERY,
])
def test_runs_create_include_already_present_is_left_alone(query: str) -> None:
    assert inject_include("POST", "/v1/threads/thread_1/runs", query, b"{}") is None


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/threads/thread_1/runs"),
    ("POST", "/v1/threads/runs"),  # create_and_run takes no include
    ("POST", "/v1/threads/thread_1/runs/run_1"),
    ("POST", "/v1/threads/thread_1/runs/run_1/submit_tool_outputs"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/vector_stores/vs_1/search"),
])
def test_other_requests_are_untouched(method: str, path: str) -> None:
    body = json.dumps({**FS_BODY, "stream": True}).encode()
    assert inject_include(method, path, "", body) is None


def test_responses_body_gains_the_include() -> None:
    out = inject_include("POST", "/v1/responses", "", json.dumps(FS_BODY).encode())
    assert out is not None and out.query == ""
    assert json.loads(out.body or b"") == {**FS_BODY, "include": [RESPONSES_INCLUDE]}
    assert b", " not in (out.body or b"")  # the SDK's compact encoding


def test_responses_include_keeps_the_callers_values_and_text() -> None:
    body = json.dumps({**FS_BODY, "input": "café ☕", "include": ["message.output_text.logprobs"]},
                      ensure_ascii=False, separators=(",", ":")).encode()
    out = inject_include("POST", "/v1/responses", "", body)
    assert out is not None and out.body is not None
    assert json.loads(out.body)["include"] == ["message.output_text.logprobs", RESPONSES_INCLUDE]
    assert "café ☕".encode() in out.body
    assert out.body == body.replace(b'logprobs"]', b'logprobs","file_search_call.results"]')


@pytest.mark.parametrize("body", [
    {**FS_BODY, "include": [RESPONSES_INCLUDE]},  # already there
    {"model": "gpt-4o", "input": "hi"},  # no tools
    {"model": "gpt-4o", "input": "hi", "tools": [{"type": "web_search"}]},  # no file_search
    {**FS_BODY, "include": "file_search_call.results"},  # not a list: the API's error, not ours
])
def test_responses_left_alone(body: dict[str, Any]) -> None:
    assert inject_include("POST", "/v1/responses", "", json.dumps(body).encode()) is None


def test_responses_null_include_becomes_a_list() -> None:
    out = inject_include("POST", "/v1/responses", "", json.dumps({**FS_BODY, "include": None}).encode())
    assert out is not None and json.loads(out.body or b"")["include"] == [RESPONSES_INCLUDE]


@pytest.mark.parametrize("body", [None, b"", b"not json", b"[1,2]", b"{broken"])
def test_malformed_bodies_are_left_alone(body: bytes | None) -> None:
    assert inject_include("POST", "/v1/responses", "", body) is None


# -- on the wire --------------------------------------------------------------------------------------
@pytest.fixture
def twin() -> Iterator[Simulator]:
    with Simulator(seed=SEED, epoch=EPOCH, latency="fast") as s:
        yield s


Clients = tuple[openai.OpenAI, openai.OpenAI]


@pytest.fixture
def clients(sim: Simulator, twin: Simulator) -> Iterator[Clients]:
    """Same-seed simulators: one client for runmeter to instrument, one left bare."""
    a = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
    b = openai.OpenAI(base_url=twin.base_url, api_key="sk-test", max_retries=0)
    yield a, b
    uninstrument(a)  # finishes runmeter's background steps fetches
    a.close()
    b.close()


def knowledge_base(client: openai.OpenAI) -> tuple[str, str]:
    """(vector store id, assistant id) over two small documents."""
    files = [client.files.create(file=(name, text.encode()), purpose="assistants")
             for name, text in [("refunds.txt", "Refunds for annual plans are accepted within 30 days."),
                                ("shipping.txt", "Orders placed before 2 pm ship the same business day.")]]
    vs = client.vector_stores.create(name="kb")
    client.vector_stores.file_batches.create_and_poll(vs.id, file_ids=[f.id for f in files],
                                                      poll_interval_ms=10)
    a = client.beta.assistants.create(model="gpt-4o", tools=[{"type": "file_search"}],
                                      tool_resources={"file_search": {"vector_store_ids": [vs.id]}})
    return vs.id, a.id


def _file_search_results(events: list[Any]) -> list[Any]:
    return [r for e in events if e.event == "thread.run.step.completed"
            and e.data.step_details.type == "tool_calls"
            for c in e.data.step_details.tool_calls for r in c.file_search.results or []]


def _run_events(client: openai.OpenAI, assistant_id: str, **kw: Any) -> list[Any]:
    thread = client.beta.threads.create(messages=MSG)
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant_id, **kw) as s:
        return list(s)


@pytest.mark.parametrize("include_results", [True, False])
def test_run_steps_carry_content_only_with_the_include(clients: Clients,
                                                       include_results: bool) -> None:
    client, _ = clients
    instrument(client, lambda r: None, include_results=include_results, fetch_steps=False)
    _, assistant = knowledge_base(client)
    results = _file_search_results(_run_events(client, assistant))
    assert results and all(r.file_id for r in results)
    if include_results:
        assert all(r.content and r.content[0].text for r in results)
    else:
        assert all(r.content is None for r in results)


def test_callers_own_include_is_not_duplicated(clients: Clients) -> None:
    client, _ = clients
    instrument(client, lambda r: None, fetch_steps=False)
    _, assistant = knowledge_base(client)
    thread = client.beta.threads.create(messages=MSG)
    raw = client.beta.threads.runs.with_raw_response.create(thread_id=thread.id, assistant_id=assistant,
                                                            include=INCLUDE_RUN)
    assert raw.http_request.url.query.decode() == RUN_STEP_INCLUDE_QUERY  # the SDK's own, once
    raw = client.beta.threads.runs.with_raw_response.create(
        thread_id=client.beta.threads.create(messages=MSG).id, assistant_id=assistant)
    assert raw.http_request.url.query.decode() == RUN_STEP_INCLUDE_QUERY  # runmeter's, identical


def test_responses_results_filled_and_content_length_right(clients: Clients) -> None:
    client, _ = clients
    instrument(client, lambda r: None)
    vs, _ = knowledge_base(client)
    tools: Any = [{"type": "file_search", "vector_store_ids": [vs]}]
    raw = client.responses.with_raw_response.create(model="gpt-4o", input="What is the refund window?",
                                                    tools=tools)
    sent = raw.http_request
    assert json.loads(sent.content)["include"] == [RESPONSES_INCLUDE]
    assert int(sent.headers["content-length"]) == len(sent.content)
    calls = [o for o in raw.parse().output if o.type == "file_search_call"]
    assert calls and all(c.results for c in calls)
    raw = client.responses.with_raw_response.create(model="gpt-4o", input="What is the refund window?",
                                                    tools=tools, include=INCLUDE_RESP)
    assert json.loads(raw.http_request.content)["include"] == [RESPONSES_INCLUDE]  # not twice
    streamed = list(client.responses.create(model="gpt-4o", input="What is the refund window?", tools=tools,
                                            stream=True))
    done = [e.item for e in streamed if e.type == "response.output_item.done"
            and e.item.type == "file_search_call"]
    assert done and all(i.results for i in done)


def test_responses_results_null_with_include_off(clients: Clients) -> None:
    client, _ = clients
    instrument(client, lambda r: None, include_results=False)
    vs, _ = knowledge_base(client)
    r = client.responses.create(model="gpt-4o", input="What is the refund window?",
                                tools=[{"type": "file_search", "vector_store_ids": [vs]}])
    calls = [o for o in r.output if o.type == "file_search_call"]
    assert calls and all(c.results is None for c in calls)


# -- what the caller sees --------------------------------------------------------------------------------
def _everything(client: openai.OpenAI, *, explicit_include: bool) -> list[Any]:
    """Every event and object of a workload over all three APIs, as plain data."""
    vs, assistant = knowledge_base(client)
    tools: Any = [{"type": "file_search", "vector_store_ids": [vs]}]
    run_kw: Any = {"include": [RUN_STEP_INCLUDE]} if explicit_include else {}
    resp_kw: Any = {"include": [RESPONSES_INCLUDE]} if explicit_include else {}
    out: list[Any] = [e.model_dump(warnings=False) for e in _run_events(client, assistant, **run_kw)]
    thread = client.beta.threads.create(messages=MSG)
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant,
                                                   poll_interval_ms=10, **run_kw)
    out.append(run.model_dump(warnings=False))
    out += [s.model_dump(warnings=False) for s in client.beta.threads.runs.steps.list(
        run_id=run.id, thread_id=thread.id)]  # runmeter leaves the caller's steps listing as it is
    with client.responses.stream(model="gpt-4o", input="What is the refund window?", tools=tools,
                                 **resp_kw) as s:
        out += [e.model_dump(warnings=False) for e in s]
    out.append(client.responses.create(model="gpt-4o", input="Shipping cutoff?", tools=tools,
                                       **resp_kw).model_dump(warnings=False))
    out += [c.model_dump(warnings=False) for c in client.chat.completions.create(
        model="gpt-4o", messages=MSG, stream=True)]
    out.append(client.chat.completions.create(model="gpt-4o", messages=MSG).model_dump(warnings=False))
    return out


def test_include_off_changes_nothing_the_caller_sees(clients: Clients) -> None:
    client, bare = clients
    instrument(client, lambda r: None, include_results=False)
    mine, theirs = _everything(client, explicit_include=False), _everything(bare, explicit_include=False)
    assert len(mine) == len(theirs) > 40
    for a, b in zip(mine, theirs, strict=True):
        assert a == b


def test_include_on_adds_only_what_the_include_itself_adds(clients: Clients) -> None:
    """Instrumented with include on == bare with the caller passing the same include, field by field."""
    client, bare = clients
    instrument(client, lambda r: None)
    mine, theirs = _everything(client, explicit_include=False), _everything(bare, explicit_include=True)
    assert len(mine) == len(theirs) > 40
    for a, b in zip(mine, theirs, strict=True):
        assert a == b
