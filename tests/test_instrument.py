"""The in-process hook against the real simulator: every client kind, every call path, every exit.

A recording tap wraps the real :func:`collector.taps.tap_for` so each test sees exactly which bytes
the tap was fed and how often it was closed. Byte equality is checked against what the SDK itself
returned (``with_raw_response`` / ``with_streaming_response``) or, for the stream helpers, against an
uninstrumented client making the same call on a second simulator with the same seed.
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import httpx2
import openai
import pytest
from aiohttp import web
from call_paths import Kb, RecordingTransport, file_search, knowledge_base

from collector import instrument as instrument_module
from collector._instrument_stream import Capture, wrap_stream
from collector.include import RUN_STEP_INCLUDE
from collector.instrument import instrument as _instrument
from collector.instrument import is_instrumented, uninstrument
from collector.record import RunRecord
from collector.simulator import Simulator
from collector.taps import tap_for

# The SDK marks assistants.create with a bare "deprecated" (runs carry the message pyproject filters).
pytestmark = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")

SEED, EPOCH = 7, 1_764_000_000
MSG: Any = [{"role": "user", "content": "What is the refund window for annual plans?"}]
THREAD: Any = {"messages": MSG}
SYNC_KINDS = ["httpx2", "httpx"]
ASYNC_KINDS = ["httpx2", "aiohttp", "httpx"]


# -- recording tap ---------------------------------------------------------------------------------
@dataclass
class Exchange:
    """What one tap saw."""

    method: str
    path: str
    query: str
    request_body: bytes | None
    status: int | None = None
    data: list[bytes] = field(default_factory=list)
    closes: list[bool] = field(default_factory=list)
    records: list[RunRecord] = field(default_factory=list)

    @property
    def body(self) -> bytes:
        return b"".join(self.data)


class RecordingTap:
    def __init__(self, real: Any, ex: Exchange, fail_on: str | None) -> None:
        self.real, self.ex, self.fail_on = real, ex, fail_on

    def response_started(self, status: int, content_type: str, recv_ns: int) -> None:
        self.ex.status = status
        self.real.response_started(status, content_type, recv_ns)

    def feed(self, data: bytes, recv_ns: int) -> None:
        self.ex.data.append(data)
        if self.fail_on == "feed":
            raise RuntimeError("tap exploded")
        self.real.feed(data, recv_ns)

    def close(self, *, complete: bool, now_wall: float, now_ns: int) -> list[RunRecord]:
        self.ex.closes.append(complete)
        if self.fail_on == "close":
            raise RuntimeError("tap exploded on close")
        records: list[RunRecord] = self.real.close(complete=complete, now_wall=now_wall, now_ns=now_ns)
        self.ex.records.extend(records)
        return records


class Taps:
    """A ``tap_for`` that records every exchange the real taps accept."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.exchanges: list[Exchange] = []
        self.fail_on = fail_on
        self._lock = threading.Lock()

    def __call__(self, method: str, path: str, query: str, request_body: bytes | None, *,
                 sent_wall: float, sent_ns: int) -> RecordingTap | None:
        real = tap_for(method, path, query, request_body, sent_wall=sent_wall, sent_ns=sent_ns)
        if real is None:
            return None
        ex = Exchange(method, path, query, request_body)
        with self._lock:
            self.exchanges.append(ex)
        return RecordingTap(real, ex, self.fail_on)

    def only(self, suffix: str, method: str = "POST") -> Exchange:
        found = [e for e in self.exchanges if e.method == method and e.path.endswith(suffix)]
        assert len(found) == 1, [(e.method, e.path) for e in self.exchanges]
        return found[0]


# -- clients and simulators ------------------------------------------------------------------------
_OPEN: list[openai.OpenAI] = []
_INSTRUMENTED: list[Any] = []


def instrument(client: Any, *args: Any, **kwargs: Any) -> Any:
    """:func:`collector.instrument.instrument`, undone when the test ends (its fetcher threads stop)."""
    _INSTRUMENTED.append(client)
    return _instrument(client, *args, **kwargs)


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """A failing test must not leak sockets into the next one's warnings, nor threads into its logs."""
    yield
    while _INSTRUMENTED:
        uninstrument(_INSTRUMENTED.pop())
    while _OPEN:
        _OPEN.pop().close()


def sync_client(sim: Simulator, kind: str) -> openai.OpenAI:
    http: Any = httpx.Client() if kind == "httpx" else None
    client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0, http_client=http)
    _OPEN.append(client)
    return client


def async_client(sim: Simulator, kind: str) -> openai.AsyncOpenAI:
    http: Any = {"httpx": httpx.AsyncClient, "aiohttp": openai.DefaultAioHttpClient}.get(kind)
    return openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0,
                              http_client=http() if http else None)


def require_route(sim: Simulator, path: str) -> None:
    """Skip while the simulator does not serve ``POST path`` yet (its routes are landing)."""
    r = httpx2.post(sim.base_url + path, headers={"Authorization": "Bearer sk-test"}, json={})
    if r.status_code in (404, 405) and "Invalid" in r.text:
        pytest.skip(f"simulator has no POST {path} yet")


@pytest.fixture
def twin() -> Iterator[Simulator]:
    """A second simulator with the fixture's seed and epoch: same requests, same bytes."""
    with Simulator(seed=SEED, epoch=EPOCH, latency="fast") as s:
        yield s


def new_thread(client: openai.OpenAI) -> str:
    return client.beta.threads.create(messages=MSG).id


# -- the hook itself -------------------------------------------------------------------------------
def test_instrument_returns_same_client_is_idempotent_and_uninstrument_restores(sim: Simulator) -> None:
    client = sync_client(sim, "httpx2")
    taps, seen = Taps(), list[RunRecord]()
    assert instrument(client, seen.append, tap_for=taps) is client
    assert instrument(client, seen.append, tap_for=taps) is client  # no second hook
    assert is_instrumented(client)
    assert "send" in vars(client._client)
    kb = knowledge_base(client)
    thread = new_thread(client)
    client.beta.threads.runs.create_and_poll(thread_id=thread, assistant_id=kb.assistant_id,
                                             poll_interval_ms=10)
    posts = [e for e in taps.exchanges if e.method == "POST"]
    assert len(posts) == 1 and posts[0].closes == [True]
    assert all(e.closes == [True] for e in taps.exchanges)
    uninstrument(client)
    assert not is_instrumented(client)
    assert "send" not in vars(client._client)  # the class's own send again
    before = len(taps.exchanges)
    client.beta.threads.runs.create_and_poll(thread_id=new_thread(client), assistant_id=kb.assistant_id,
                                             poll_interval_ms=10)
    assert len(taps.exchanges) == before
    client.close()


def test_with_options_copies_are_recorded(sim: Simulator) -> None:
    client = sync_client(sim, "httpx2")
    taps = Taps()
    instrument(client, lambda r: None, tap_for=taps, fetch_steps=False)
    kb = knowledge_base(client)
    client.with_options(timeout=30).beta.threads.runs.create(
        thread_id=new_thread(client), assistant_id=kb.assistant_id)
    assert taps.only("/runs").closes == [True]
    client.close()


def test_not_an_openai_client_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"openai\.OpenAI"):
        instrument(object(), lambda r: None)
    uninstrument(object())  # a no-op, not an error


# -- byte equality with what the SDK received --------------------------------------------------------
@pytest.mark.parametrize("kind", SYNC_KINDS)
def test_sync_raw_bytes_match_what_the_sdk_got(sim: Simulator, kind: str) -> None:
    client = sync_client(sim, kind)
    taps, seen = Taps(), list[RunRecord]()
    instrument(client, seen.append, tap_for=taps, fetch_steps=False)
    kb = knowledge_base(client)
    thread = new_thread(client)

    raw = client.beta.threads.runs.with_raw_response.create(thread_id=thread, assistant_id=kb.assistant_id)
    run = raw.parse()
    ex = taps.exchanges[-1]
    assert ex.body == raw.content and ex.closes == [True] and ex.status == 200
    assert json.loads(ex.body)["id"] == run.id

    with client.beta.threads.runs.with_streaming_response.create(
            thread_id=new_thread(client), assistant_id=kb.assistant_id, stream=True) as resp:
        got = b"".join(resp.iter_bytes())
    ex = taps.exchanges[-1]
    assert got.endswith(b"data: [DONE]\n\n")
    assert ex.body == got and ex.closes == [True]
    assert any(r.status == "completed" for r in ex.records)
    assert [r for r in seen if r.run_id == ex.records[0].run_id]
    client.close()


@pytest.mark.parametrize("kind", ASYNC_KINDS)
async def test_async_raw_bytes_match_what_the_sdk_got(sim: Simulator, kind: str) -> None:
    kb = knowledge_base(setup := sync_client(sim, "httpx2"))
    threads = [new_thread(setup) for _ in range(2)]
    setup.close()
    client = async_client(sim, kind)
    taps = Taps()
    instrument(client, lambda r: None, tap_for=taps, fetch_steps=False)

    raw = await client.beta.threads.runs.with_raw_response.create(thread_id=threads[0],
                                                                  assistant_id=kb.assistant_id)
    ex = taps.exchanges[-1]
    assert ex.body == raw.content and ex.closes == [True]

    async with client.beta.threads.runs.with_streaming_response.create(
            thread_id=threads[1], assistant_id=kb.assistant_id, stream=True) as resp:
        got = b"".join([chunk async for chunk in resp.iter_bytes()])
    ex = taps.exchanges[-1]
    assert got.endswith(b"data: [DONE]\n\n") and ex.body == got and ex.closes == [True]
    await client.close()


# -- every call path: bytes equal an uninstrumented twin's, one complete close ---------------------------
def _call_paths() -> dict[str, Callable[[openai.OpenAI, Kb], None]]:
    def runs_stream(c: openai.OpenAI, kb: Kb) -> None:
        with c.beta.threads.runs.stream(thread_id=new_thread(c), assistant_id=kb.assistant_id) as s:
            s.until_done()

    def runs_create_stream(c: openai.OpenAI, kb: Kb) -> None:
        for _ in c.beta.threads.runs.create(thread_id=new_thread(c), assistant_id=kb.assistant_id,
                                            stream=True):
            pass

    def create_and_run_stream(c: openai.OpenAI, kb: Kb) -> None:
        with c.beta.threads.create_and_run_stream(assistant_id=kb.assistant_id,
                                                  thread=THREAD) as s:
            s.until_done()

    def create_and_poll(c: openai.OpenAI, kb: Kb) -> None:
        c.beta.threads.runs.create_and_poll(thread_id=new_thread(c), assistant_id=kb.assistant_id,
                                            poll_interval_ms=10)

    def create_and_run(c: openai.OpenAI, kb: Kb) -> None:
        c.beta.threads.create_and_run(assistant_id=kb.assistant_id, thread=THREAD)

    def chat_create_stream(c: openai.OpenAI, kb: Kb) -> None:
        for _ in c.chat.completions.create(model="gpt-4o", messages=MSG, stream=True):
            pass

    def chat_stream(c: openai.OpenAI, kb: Kb) -> None:
        with c.chat.completions.stream(model="gpt-4o", messages=MSG) as s:
            s.get_final_completion()

    def responses_create_stream(c: openai.OpenAI, kb: Kb) -> None:
        for _ in c.responses.create(model="gpt-4o", input="What is the refund window?", stream=True,
                                    tools=[file_search(kb)]):
            pass

    def responses_stream(c: openai.OpenAI, kb: Kb) -> None:
        with c.responses.stream(model="gpt-4o", input="What is the refund window?",
                                tools=[file_search(kb)]) as s:
            s.get_final_response()

    def responses_create(c: openai.OpenAI, kb: Kb) -> None:
        c.responses.create(model="gpt-4o", input="What is the refund window?")

    return {"runs.stream": runs_stream, "runs.create(stream)": runs_create_stream,
            "create_and_run_stream": create_and_run_stream, "create_and_poll": create_and_poll,
            "create_and_run": create_and_run, "chat.create(stream)": chat_create_stream,
            "chat.stream": chat_stream, "responses.create(stream)": responses_create_stream,
            "responses.stream": responses_stream, "responses.create": responses_create}


@pytest.mark.parametrize("path", list(_call_paths()))
def test_call_paths_feed_the_exact_bytes(sim: Simulator, twin: Simulator, path: str) -> None:
    call = _call_paths()[path]
    transport = RecordingTransport()
    plain = openai.OpenAI(base_url=twin.base_url, api_key="sk-test", max_retries=0,
                          http_client=httpx2.Client(transport=transport))
    _OPEN.append(plain)
    client = sync_client(sim, "httpx2")
    taps = Taps()
    instrument(client, lambda r: None, tap_for=taps, include_results=False, fetch_steps=False)
    kb_a, kb_b = knowledge_base(client), knowledge_base(plain)
    assert kb_a == kb_b  # same seed, same requests: the same ids
    del transport.bodies[:]
    del taps.exchanges[:]
    call(client, kb_a)
    call(plain, kb_b)
    tapped = [(m, p, b"".join(c)) for m, p, c in transport.bodies
              if tap_for(m, p, "", None, sent_wall=0.0, sent_ns=0) is not None]
    assert [(e.method, e.path) for e in taps.exchanges] == [(m, p) for m, p, _ in tapped]
    runs = taps.exchanges
    for mine, (_, _, theirs) in zip(runs, tapped, strict=True):
        assert mine.body == theirs and mine.closes == [True]
    assert all(e.records for e in runs if e.method == "POST")
    client.close()
    plain.close()


def test_submit_tool_outputs_stream(sim: Simulator) -> None:
    client = sync_client(sim, "httpx2")
    taps = Taps()
    instrument(client, lambda r: None, tap_for=taps, fetch_steps=False)
    kb = knowledge_base(client)
    thread = new_thread(client)
    with client.beta.threads.runs.stream(thread_id=thread, assistant_id=kb.function_assistant_id) as s:
        s.until_done()
        run = s.current_run
    assert run is not None and run.status == "requires_action" and run.required_action is not None
    outputs: Any = [{"tool_call_id": c.id, "output": "shipped"}
               for c in run.required_action.submit_tool_outputs.tool_calls]
    with client.beta.threads.runs.submit_tool_outputs_stream(
            thread_id=thread, run_id=run.id, tool_outputs=outputs) as s2:
        s2.until_done()
        final = s2.get_final_run()
    ex = taps.only("/submit_tool_outputs")
    assert ex.closes == [True] and final.status == "completed"
    assert b"thread.run.completed" in ex.body
    assert any(r.run_id == run.id and r.status == "completed" for r in ex.records)
    client.close()


@pytest.mark.parametrize("kind", ASYNC_KINDS)
async def test_async_assistants_helpers(sim: Simulator, kind: str) -> None:
    setup = sync_client(sim, "httpx2")
    kb = knowledge_base(setup)
    threads = [new_thread(setup) for _ in range(2)]
    setup.close()
    client = async_client(sim, kind)
    taps = Taps()
    instrument(client, lambda r: None, tap_for=taps, fetch_steps=False)
    async with client.beta.threads.runs.stream(thread_id=threads[0], assistant_id=kb.assistant_id) as s:
        await s.until_done()
    stream = await client.beta.threads.runs.create(thread_id=threads[1], assistant_id=kb.assistant_id,
                                                   stream=True)
    events = [e.event async for e in stream]
    third = (await client.beta.threads.create(messages=MSG)).id
    await client.beta.threads.runs.create_and_poll(thread_id=third, assistant_id=kb.assistant_id,
                                                   poll_interval_ms=10)
    posts = [e for e in taps.exchanges if e.method == "POST" and e.path.endswith("/runs")]
    assert len(posts) == 3 and all(e.closes == [True] for e in posts)
    assert events[-1] == "thread.run.completed"
    assert all(e.closes == [True] for e in taps.exchanges)
    await client.close()


# -- chat and responses --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", SYNC_KINDS)
def test_chat_paths(sim: Simulator, kind: str) -> None:
    require_route(sim, "/chat/completions")
    client = sync_client(sim, kind)
    taps = Taps()
    instrument(client, lambda r: None, tap_for=taps)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MSG)
    assert taps.exchanges[-1].body == raw.content and taps.exchanges[-1].closes == [True]
    with client.chat.completions.with_streaming_response.create(
            model="gpt-4o", messages=MSG, stream=True) as resp:
        got = b"".join(resp.iter_bytes())
    assert taps.exchanges[-1].body == got and taps.exchanges[-1].closes == [True]
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=MSG, stream=True))
    assert chunks and taps.exchanges[-1].closes == [True]
    with client.chat.completions.stream(model="gpt-4o", messages=MSG) as s:
        s.until_done()
    assert taps.exchanges[-1].closes == [True]
    assert b'"stream_options"' not in (taps.exchanges[-1].request_body or b"")  # never touched
    assert all(len(e.records) == 1 for e in taps.exchanges)
    client.close()


@pytest.mark.parametrize("kind", ASYNC_KINDS)
async def test_async_chat_and_responses_paths(sim: Simulator, kind: str) -> None:
    require_route(sim, "/chat/completions")
    require_route(sim, "/responses")
    client = async_client(sim, kind)
    taps = Taps()
    instrument(client, lambda r: None, tap_for=taps)
    raw = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MSG)
    assert taps.exchanges[-1].body == raw.content
    stream = await client.chat.completions.create(model="gpt-4o", messages=MSG, stream=True)
    _ = [c async for c in stream]
    async with client.chat.completions.stream(model="gpt-4o", messages=MSG) as s:
        await s.until_done()
    r = await client.responses.create(model="gpt-4o", input="What is the refund window?")
    rs = await client.responses.create(model="gpt-4o", input="What is the refund window?", stream=True)
    _ = [e async for e in rs]
    async with client.responses.stream(model="gpt-4o", input="What is the refund window?") as s2:
        final = await s2.get_final_response()
    assert r.status == "completed" and final.status == "completed"
    assert len(taps.exchanges) == 6 and all(e.closes == [True] for e in taps.exchanges)
    assert all(len(e.records) == 1 for e in taps.exchanges)
    await client.close()


@pytest.mark.parametrize("kind", SYNC_KINDS)
def test_responses_paths(sim: Simulator, kind: str) -> None:
    require_route(sim, "/responses")
    client = sync_client(sim, kind)
    taps = Taps()
    instrument(client, lambda r: None, tap_for=taps)
    raw = client.responses.with_raw_response.create(model="gpt-4o", input="What is the refund window?")
    assert taps.exchanges[-1].body == raw.content and taps.exchanges[-1].closes == [True]
    with client.responses.with_streaming_response.create(model="gpt-4o", input="hi", stream=True) as resp:
        got = b"".join(resp.iter_bytes())
    assert taps.exchanges[-1].body == got and taps.exchanges[-1].closes == [True]
    events = list(client.responses.create(model="gpt-4o", input="hi", stream=True))
    assert events[-1].type == "response.completed" and taps.exchanges[-1].closes == [True]
    with client.responses.stream(model="gpt-4o", input="hi") as s:
        s.get_final_response()
    assert taps.exchanges[-1].closes == [True]
    assert all(len(e.records) == 1 and e.records[0].status == "completed" for e in taps.exchanges)
    client.close()


# -- abandoned, broken, failing -----------------------------------------------------------------------
def _slow_sim() -> Simulator:
    return Simulator(seed=SEED, epoch=None, latency="realistic")


@pytest.mark.parametrize("kind", SYNC_KINDS)
def test_abandoned_stream_closes_incomplete_once(kind: str) -> None:
    with _slow_sim() as sim:
        client = sync_client(sim, kind)
        taps = Taps()
        instrument(client, lambda r: None, tap_for=taps, fetch_steps=False)
        kb = knowledge_base(client)
        stream = client.beta.threads.runs.create(thread_id=new_thread(client), assistant_id=kb.assistant_id,
                                                 stream=True)
        for i, _ in enumerate(stream):
            if i == 1:
                break
        stream.close()
        ex = taps.only("/runs")
        assert ex.closes == [False]
        assert ex.records and all(r.status == "interrupted" for r in ex.records)
        gc.collect()
        assert ex.closes == [False]  # still exactly once
        client.close()


@pytest.mark.parametrize("kind", ASYNC_KINDS)
async def test_async_abandoned_stream_closes_incomplete_once(kind: str) -> None:
    with _slow_sim() as sim:
        setup = sync_client(sim, "httpx2")
        kb = knowledge_base(setup)
        thread = new_thread(setup)
        setup.close()
        client = async_client(sim, kind)
        taps = Taps()
        instrument(client, lambda r: None, tap_for=taps, fetch_steps=False)
        stream = await client.beta.threads.runs.create(thread_id=thread, assistant_id=kb.assistant_id,
                                                       stream=True)
        n = 0
        async for _ in stream:
            n += 1
            if n == 2:
                break
        await stream.close()
        ex = taps.only("/runs")
        assert ex.closes == [False]
        await client.close()


def test_garbage_collected_stream_closes_incomplete_once() -> None:
    with _slow_sim() as sim:
        client = sync_client(sim, "httpx2")
        taps = Taps()
        instrument(client, lambda r: None, tap_for=taps, fetch_steps=False)
        kb = knowledge_base(client)
        stream = client.beta.threads.runs.create(thread_id=new_thread(client), assistant_id=kb.assistant_id,
                                                 stream=True)
        next(iter(stream))
        ex = taps.only("/runs")
        assert ex.closes == []
        del stream
        gc.collect()
        assert ex.closes == [False]
        client.close()


@pytest.mark.parametrize("fail_on", ["feed", "close", "sink"])
def test_failing_tap_or_sink_never_reaches_the_caller(sim: Simulator, twin: Simulator, fail_on: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    def sink(record: RunRecord) -> None:
        raise RuntimeError("sink exploded")

    client, plain = sync_client(sim, "httpx2"), sync_client(twin, "httpx2")
    taps = Taps(fail_on=None if fail_on == "sink" else fail_on)
    instrument(client, sink if fail_on == "sink" else (lambda r: None), tap_for=taps, include_results=False,
               fetch_steps=False)
    kb, _ = knowledge_base(client), knowledge_base(plain)
    mine = [e.model_dump() for e in client.beta.threads.runs.create(
        thread_id=new_thread(client), assistant_id=kb.assistant_id, stream=True)]
    theirs = [e.model_dump() for e in plain.beta.threads.runs.create(
        thread_id=new_thread(plain), assistant_id=kb.assistant_id, stream=True)]
    assert mine == theirs and len(mine) > 5
    run = client.beta.threads.runs.create_and_poll(thread_id=new_thread(client), assistant_id=kb.assistant_id,
                                                   poll_interval_ms=10)
    assert run.status == "completed"
    first = next(e for e in taps.exchanges if e.path.endswith("/runs"))
    assert first.closes == [fail_on != "feed"]
    assert "exploded" in caplog.text
    client.close()
    plain.close()


@pytest.mark.parametrize("kind", SYNC_KINDS)
def test_connection_cut_mid_stream_closes_incomplete_once(sim: Simulator, kind: str) -> None:
    client = sync_client(sim, kind)
    taps = Taps()
    instrument(client, lambda r: None, tap_for=taps, fetch_steps=False)
    kb = knowledge_base(client)
    events: list[Any] = []
    with pytest.raises(openai.APIConnectionError):
        for e in client.beta.threads.runs.create(thread_id=new_thread(client), assistant_id=kb.assistant_id,
                                                 stream=True, extra_headers={"X-Runmeter-Fault": "drop"}):
            events.append(e)
    ex = taps.only("/runs")
    assert events and ex.closes == [False]
    assert ex.records and ex.records[0].status == "interrupted"


@pytest.mark.parametrize("kind", ASYNC_KINDS)
async def test_async_connection_cut_mid_stream_closes_incomplete_once(sim: Simulator, kind: str) -> None:
    setup = sync_client(sim, "httpx2")
    kb = knowledge_base(setup)
    thread = new_thread(setup)
    client = async_client(sim, kind)
    taps = Taps()
    instrument(client, lambda r: None, tap_for=taps, fetch_steps=False)
    n = 0
    try:
        with pytest.raises(openai.APIConnectionError):
            stream = await client.beta.threads.runs.create(
                thread_id=thread, assistant_id=kb.assistant_id, stream=True,
                extra_headers={"X-Runmeter-Fault": "drop"})
            async for _ in stream:
                n += 1
        assert n > 0 and taps.only("/runs").closes == [False]
    finally:
        await client.close()


async def test_async_finished_run_gets_its_steps_listed(sim: Simulator) -> None:
    kb = knowledge_base(sync_client(sim, "httpx2"))
    client = async_client(sim, "aiohttp")
    taps = Taps()
    instrument(client, lambda r: None, tap_for=taps)
    try:
        thread = await client.beta.threads.create(messages=MSG)
        run = await client.beta.threads.runs.create_and_poll(
            thread_id=thread.id, assistant_id=kb.assistant_id, poll_interval_ms=10)
    finally:
        await client.close()
    uninstrument(client)
    steps = [e for e in taps.exchanges if e.path.endswith(f"/runs/{run.id}/steps")]
    assert len(steps) == 1 and steps[0].status == 200 and steps[0].closes == [True]
    assert b'"content"' in steps[0].body


def test_http_error_and_connection_error_are_the_sdks_own(sim: Simulator) -> None:
    client = sync_client(sim, "httpx2")
    taps = Taps()
    instrument(client, lambda r: None, tap_for=taps, fetch_steps=False)
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.runs.create(thread_id="thread_missing", assistant_id="asst_missing")
    ex = taps.only("/runs")
    assert ex.status == 404 and ex.closes == [True] and ex.records == []
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    down = openai.OpenAI(base_url=dead, api_key="sk-test", max_retries=0)
    _OPEN.append(down)
    taps_down = Taps()
    instrument(down, lambda r: None, tap_for=taps_down, fetch_steps=False)
    with pytest.raises(openai.APIConnectionError):
        down.beta.threads.runs.create(thread_id="thread_x", assistant_id="asst_x")
    assert taps_down.only("/runs").closes == [False]
    down.close()
    client.close()


# -- steps fetched off the request path -------------------------------------------------------------------
def test_finished_non_streamed_run_gets_its_steps_listed_with_include(sim: Simulator) -> None:
    client = sync_client(sim, "httpx2")
    taps, seen = Taps(), list[RunRecord]()
    instrument(client, seen.append, tap_for=taps)
    kb = knowledge_base(client)
    run = client.beta.threads.runs.create_and_poll(thread_id=new_thread(client), assistant_id=kb.assistant_id,
                                                   poll_interval_ms=10)
    client.beta.threads.runs.retrieve(thread_id=run.thread_id, run_id=run.id)  # already fetched: no second
    uninstrument(client)  # waits for the background fetch
    steps = [e for e in taps.exchanges if e.path.endswith("/steps")]
    assert len(steps) == 1
    ex = steps[0]
    assert ex.path.endswith(f"/threads/{run.thread_id}/runs/{run.id}/steps") and ex.status == 200
    assert "include%5B%5D=" in ex.query and "limit=100" in ex.query
    listed = json.loads(ex.body)["data"]
    results = [r for s in listed if s["type"] == "tool_calls" for c in s["step_details"]["tool_calls"]
               for r in c["file_search"]["results"]]
    assert results and all(r["content"][0]["text"] for r in results)
    assert ex.closes == [True]
    assert any(c.text for r in ex.records for c in r.chunks) or any(r.retrieved_chunks for r in ex.records)
    client.close()


def test_steps_fetch_forwards_auth_but_never_logs_it(sim: Simulator,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    client = openai.OpenAI(base_url=sim.base_url, api_key="sk-secret-value", max_retries=0)
    taps = Taps()
    instrument(client, lambda r: None, tap_for=taps)
    kb = knowledge_base(client)
    client.beta.threads.create_and_run_poll(assistant_id=kb.assistant_id, thread=THREAD,
                                            poll_interval_ms=10)
    uninstrument(client)
    steps = [e for e in taps.exchanges if e.path.endswith("/steps")]
    assert len(steps) == 1 and steps[0].status == 200  # the simulator accepted the forwarded key
    assert "sk-secret-value" not in caplog.text
    client.close()


def test_fetch_steps_off(sim: Simulator) -> None:
    client = sync_client(sim, "httpx2")
    taps = Taps()
    instrument(client, lambda r: None, tap_for=taps, fetch_steps=False)
    kb = knowledge_base(client)
    client.beta.threads.runs.create_and_poll(thread_id=new_thread(client), assistant_id=kb.assistant_id,
                                             poll_interval_ms=10)
    uninstrument(client)
    assert not [e for e in taps.exchanges if e.path.endswith("/steps")]
    client.close()


# -- compressed bodies (a real local server that gzips) and pre-read bodies ----------------------
@pytest.fixture
def gzip_server() -> Iterator[str]:
    body = json.dumps({"id": "chatcmpl-gz", "object": "chat.completion", "created": 1, "model": "gpt-4o",
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": "x " * 400}}],
                       "usage": {"prompt_tokens": 9, "completion_tokens": 400, "total_tokens": 409}})

    async def chat(request: web.Request) -> web.StreamResponse:
        resp = web.Response(text=body, content_type="application/json")
        resp.enable_compression(web.ContentCoding.gzip)
        return resp

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.setblocking(False)
    loop.run_until_complete(web.SockSite(runner, sock).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_gzip_body_reaches_the_tap_decoded(gzip_server: str) -> None:
    client = openai.OpenAI(base_url=gzip_server, api_key="sk-test", max_retries=0)
    taps = Taps()
    instrument(client, lambda r: None, tap_for=taps)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MSG)
    assert raw.headers["content-encoding"] == "gzip"
    ex = taps.only("/chat/completions")
    assert ex.body == raw.content and ex.records[0].output_tokens == 400
    client.close()


def test_pre_read_body_from_a_transport_is_fed_once() -> None:
    body = b'{"id":"chatcmpl-m","object":"chat.completion","created":1,"model":"gpt-4o","choices":[],' \
           b'"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}'
    headers = {"content-type": "application/json"}
    transport = httpx2.MockTransport(lambda request: httpx2.Response(200, content=body, headers=headers))
    client = openai.OpenAI(base_url="http://unused.invalid/v1", api_key="sk-test", max_retries=0,
                           http_client=httpx2.Client(transport=transport))
    taps = Taps()
    instrument(client, lambda r: None, tap_for=taps)
    completion = client.chat.completions.create(model="gpt-4o", messages=MSG)
    ex = taps.only("/chat/completions")
    assert completion.usage is not None and completion.usage.total_tokens == 5
    assert ex.data == [body] and ex.closes == [True] and ex.records[0].total_tokens == 5
    client.close()


# -- cost per chunk ----------------------------------------------------------------------------------------
class _NoTap:
    def response_started(self, status: int, content_type: str, recv_ns: int) -> None:
        pass

    def feed(self, data: bytes, recv_ns: int) -> None:
        pass

    def close(self, *, complete: bool, now_wall: float, now_ns: int) -> list[RunRecord]:
        return []


def _per_chunk_seconds(chunks: list[bytes], tapped: bool) -> float:
    class Body(httpx2.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield from chunks

    response = httpx2.Response(200, stream=Body())
    if tapped:
        capture = Capture(_NoTap(), lambda r: None)
        capture.started(200, "text/event-stream", "")
        wrap_stream(response, capture, is_async=False)
    t0 = time.perf_counter()
    for _ in response.iter_raw():
        pass
    return (time.perf_counter() - t0) / len(chunks)


def test_wrapper_overhead_per_chunk_is_well_under_the_budget() -> None:
    chunks = [b'event: thread.message.delta\ndata: {"id":"msg_1","delta":{}}\n\n'] * 50_000
    overhead = min(_per_chunk_seconds(chunks, True) - _per_chunk_seconds(chunks, False) for _ in range(5))
    assert overhead < 1e-6, f"{overhead * 1e6:.2f} µs per chunk"  # budget: 2 µs per event, tap included


def test_module_exports() -> None:
    assert instrument_module.__all__ == ["TapFactory", "instrument", "is_instrumented", "uninstrument"]
    assert RUN_STEP_INCLUDE.endswith("results[*].content")
