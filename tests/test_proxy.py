"""The proxy against the real simulator: byte parity with direct calls, row parity with in-process
capture, faults passed through unchanged, no buffering, disconnects both ways, headers, compression.

Parity tests run two simulators with the same seed and epoch: the SDK calls one directly through an
instrumented client, and the other through the proxy, with the same request sequence. The response
bytes the SDK read must be equal, and the rows (observations folded per run with
``collector.merge.merge``) equal field by field except timing.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from aiohttp import web
from call_paths import Kb, RecordingTransport, file_search, knowledge_base
from conftest import require_binary

from collector.instrument import instrument, uninstrument
from collector.merge import merge
from collector.proxy import DECODABLE, Proxy
from collector.proxy.headers import accept_encoding_for_tap, end_to_end
from collector.record import RunRecord
from collector.simulator import Simulator

pytestmark = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")

SEED, EPOCH = 7, 1_764_000_000
MSG: Any = [{"role": "user", "content": "What is the refund window for annual plans?"}]
THREAD: Any = {"messages": MSG}
TIMING = frozenset({"started_at", "first_token_at", "completed_at", "ttft_seconds", "duration_seconds",
                    "first_chunk_seconds"})
KEY = "sk-proxy-secret-0123456789"


# -- helpers ---------------------------------------------------------------------------------------
class Records:
    """A thread-safe sink."""

    def __init__(self) -> None:
        self.items: list[RunRecord] = []
        self._lock = threading.Lock()

    def __call__(self, record: RunRecord) -> None:
        with self._lock:
            self.items.append(record)

    def wait(self, n: int, timeout: float = 5.0) -> list[RunRecord]:
        deadline = time.monotonic() + timeout
        while len(self.items) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.items)


def rows(records: list[RunRecord]) -> dict[str, RunRecord]:
    """One row per run: the observations folded in arrival order."""
    out: dict[str, RunRecord] = {}
    for r in records:
        out[r.run_id] = merge(out[r.run_id], r) if r.run_id in out else r
    return out


def untimed(rec: RunRecord) -> dict[str, Any]:
    return {f.name: getattr(rec, f.name) for f in fields(rec) if f.name not in TIMING}


def assert_same_rows(direct: list[RunRecord], proxied: list[RunRecord]) -> None:
    a, b = rows(direct), rows(proxied)
    assert a and sorted(a) == sorted(b)
    for run_id in a:
        assert untimed(a[run_id]) == untimed(b[run_id]), run_id


class AsyncRecordingTransport(httpx2.AsyncHTTPTransport):
    """The async twin of :class:`RecordingTransport`."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[tuple[str, str, list[bytes]]] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await super().handle_async_request(request)
        chunks: list[bytes] = []
        self.bodies.append((request.method, request.url.path, chunks))
        inner: Any = response.stream

        class Recorded(httpx2.AsyncByteStream):
            async def __aiter__(self) -> AsyncIterator[bytes]:
                async for chunk in inner:
                    chunks.append(chunk)
                    yield chunk

            async def aclose(self) -> None:
                await inner.aclose()

        response.stream = Recorded()
        return response


def compared_bodies(transport: RecordingTransport | AsyncRecordingTransport) -> list[tuple[str, str, bytes]]:
    """Every body the SDK read, except run polls (their count follows the wall clock)."""
    return [(m, p, b"".join(c)) for m, p, c in transport.bodies
            if not (m == "GET" and "/runs/" in p and not p.endswith("/steps"))]


# -- sync call paths ---------------------------------------------------------------------------------
def _sync_paths() -> dict[str, Callable[[openai.OpenAI, Kb], Any]]:
    def thread(c: openai.OpenAI) -> str:
        return c.beta.threads.create(messages=MSG).id

    def chat_create(c: openai.OpenAI, kb: Kb) -> Any:
        return c.chat.completions.create(model="gpt-4o", messages=MSG).model_dump()

    def chat_create_stream(c: openai.OpenAI, kb: Kb) -> Any:
        return [e.model_dump() for e in c.chat.completions.create(model="gpt-4o", messages=MSG, stream=True,
                                                                  stream_options={"include_usage": True})]

    def chat_stream(c: openai.OpenAI, kb: Kb) -> Any:
        with c.chat.completions.stream(model="gpt-4o", messages=MSG) as s:
            return s.get_final_completion().model_dump()

    def responses_create(c: openai.OpenAI, kb: Kb) -> Any:
        return c.responses.create(model="gpt-4o", input="What is the refund window?",
                                  tools=[file_search(kb)]).model_dump()

    def responses_create_stream(c: openai.OpenAI, kb: Kb) -> Any:
        return [e.model_dump() for e in c.responses.create(
            model="gpt-4o", input="What is the refund window?", stream=True, tools=[file_search(kb)])]

    def responses_stream(c: openai.OpenAI, kb: Kb) -> Any:
        with c.responses.stream(model="gpt-4o", input="What is the refund window?",
                                tools=[file_search(kb)]) as s:
            return s.get_final_response().model_dump()

    def runs_stream(c: openai.OpenAI, kb: Kb) -> Any:
        with c.beta.threads.runs.stream(thread_id=thread(c), assistant_id=kb.assistant_id) as s:
            s.until_done()
            return s.get_final_run().model_dump()

    def runs_create_stream(c: openai.OpenAI, kb: Kb) -> Any:
        return [e.event for e in c.beta.threads.runs.create(thread_id=thread(c), assistant_id=kb.assistant_id,
                                                            stream=True)]

    def create_and_run_stream(c: openai.OpenAI, kb: Kb) -> Any:
        with c.beta.threads.create_and_run_stream(assistant_id=kb.assistant_id, thread=THREAD) as s:
            s.until_done()
            return s.get_final_run().model_dump()

    def submit_tool_outputs_stream(c: openai.OpenAI, kb: Kb) -> Any:
        t = thread(c)
        with c.beta.threads.runs.stream(thread_id=t, assistant_id=kb.function_assistant_id) as s:
            s.until_done()
            run = s.current_run
        assert run is not None and run.required_action is not None
        outputs: Any = [{"tool_call_id": tc.id, "output": "shipped"}
                        for tc in run.required_action.submit_tool_outputs.tool_calls]
        with c.beta.threads.runs.submit_tool_outputs_stream(thread_id=t, run_id=run.id,
                                                            tool_outputs=outputs) as s2:
            s2.until_done()
            return s2.get_final_run().model_dump()

    def create_and_poll(c: openai.OpenAI, kb: Kb) -> Any:
        run = c.beta.threads.runs.create_and_poll(thread_id=thread(c), assistant_id=kb.assistant_id,
                                                  poll_interval_ms=10)
        return run.status, run.usage and run.usage.model_dump()

    def with_raw_response(c: openai.OpenAI, kb: Kb) -> Any:
        raw = c.chat.completions.with_raw_response.create(model="gpt-4o", messages=MSG)
        return raw.status_code, raw.content

    def with_streaming_response(c: openai.OpenAI, kb: Kb) -> Any:
        with c.beta.threads.runs.with_streaming_response.create(
                thread_id=thread(c), assistant_id=kb.assistant_id, stream=True) as resp:
            return b"".join(resp.iter_bytes())

    return {f.__name__: f for f in (
        chat_create, chat_create_stream, chat_stream, responses_create, responses_create_stream,
        responses_stream, runs_stream, runs_create_stream, create_and_run_stream, submit_tool_outputs_stream,
        create_and_poll, with_raw_response, with_streaming_response)}


@dataclass
class Pair:
    direct: Simulator
    behind: Simulator
    proxy: Proxy
    proxied: Records


@pytest.fixture
def pair() -> Iterator[Pair]:
    """Twin simulators; the second behind a proxy that adds ``include`` like the in-process default."""
    proxied = Records()
    with Simulator(seed=SEED, epoch=EPOCH, latency="fast") as direct, \
            Simulator(seed=SEED, epoch=EPOCH, latency="fast") as behind, \
            Proxy(upstream=behind.base_url, sink=proxied, include_results=True) as proxy:
        yield Pair(direct, behind, proxy, proxied)


@pytest.mark.parametrize("path", list(_sync_paths()))
def test_sync_call_paths_same_bytes_and_rows(pair: Pair, path: str) -> None:
    call = _sync_paths()[path]
    direct_records = Records()
    t_direct, t_proxy = RecordingTransport(), RecordingTransport()
    direct = openai.OpenAI(base_url=pair.direct.base_url, api_key=KEY, max_retries=0,
                           http_client=httpx2.Client(transport=t_direct))
    instrument(direct, direct_records)
    proxied = openai.OpenAI(base_url=pair.proxy.base_url, api_key=KEY, max_retries=0,
                            http_client=httpx2.Client(transport=t_proxy))
    try:
        kb_direct, kb_proxied = knowledge_base(direct), knowledge_base(proxied)
        assert kb_direct == kb_proxied
        assert call(direct, kb_direct) == call(proxied, kb_proxied)
    finally:
        uninstrument(direct)
        direct.close()
        proxied.close()
        pair.proxy.stop()  # finishes open exchanges and pending steps listings
    mine, theirs = compared_bodies(t_proxy), compared_bodies(t_direct)
    assert [(m, p) for m, p, _ in mine] == [(m, p) for m, p, _ in theirs]
    for (m, p, got), (_, _, want) in zip(mine, theirs, strict=True):
        assert got == want, f"{m} {p}"
    assert_same_rows(direct_records.items, pair.proxied.items)
    assert KEY not in repr(pair.proxied.items)


# -- async call paths --------------------------------------------------------------------------------
def _async_paths() -> dict[str, Callable[[openai.AsyncOpenAI, Kb], Any]]:
    async def thread(c: openai.AsyncOpenAI) -> str:
        return (await c.beta.threads.create(messages=MSG)).id

    async def chat_create(c: openai.AsyncOpenAI, kb: Kb) -> Any:
        return (await c.chat.completions.create(model="gpt-4o", messages=MSG)).model_dump()

    async def chat_create_stream(c: openai.AsyncOpenAI, kb: Kb) -> Any:
        s = await c.chat.completions.create(model="gpt-4o", messages=MSG, stream=True)
        return [e.model_dump() async for e in s]

    async def chat_stream(c: openai.AsyncOpenAI, kb: Kb) -> Any:
        async with c.chat.completions.stream(model="gpt-4o", messages=MSG) as s:
            return (await s.get_final_completion()).model_dump()

    async def responses_create(c: openai.AsyncOpenAI, kb: Kb) -> Any:
        return (await c.responses.create(model="gpt-4o", input="What is the refund window?",
                                         tools=[file_search(kb)])).model_dump()

    async def responses_create_stream(c: openai.AsyncOpenAI, kb: Kb) -> Any:
        s = await c.responses.create(model="gpt-4o", input="What is the refund window?", stream=True,
                                     tools=[file_search(kb)])
        return [e.model_dump() async for e in s]

    async def responses_stream(c: openai.AsyncOpenAI, kb: Kb) -> Any:
        async with c.responses.stream(model="gpt-4o", input="What is the refund window?",
                                      tools=[file_search(kb)]) as s:
            return (await s.get_final_response()).model_dump()

    async def runs_stream(c: openai.AsyncOpenAI, kb: Kb) -> Any:
        async with c.beta.threads.runs.stream(thread_id=await thread(c), assistant_id=kb.assistant_id) as s:
            await s.until_done()
            return (await s.get_final_run()).model_dump()

    async def runs_create_stream(c: openai.AsyncOpenAI, kb: Kb) -> Any:
        s = await c.beta.threads.runs.create(thread_id=await thread(c), assistant_id=kb.assistant_id,
                                             stream=True)
        return [e.event async for e in s]

    async def create_and_run_stream(c: openai.AsyncOpenAI, kb: Kb) -> Any:
        async with c.beta.threads.create_and_run_stream(assistant_id=kb.assistant_id, thread=THREAD) as s:
            await s.until_done()
            return (await s.get_final_run()).model_dump()

    async def submit_tool_outputs_stream(c: openai.AsyncOpenAI, kb: Kb) -> Any:
        t = await thread(c)
        async with c.beta.threads.runs.stream(thread_id=t, assistant_id=kb.function_assistant_id) as s:
            await s.until_done()
            run = s.current_run
        assert run is not None and run.required_action is not None
        outputs: Any = [{"tool_call_id": tc.id, "output": "shipped"}
                        for tc in run.required_action.submit_tool_outputs.tool_calls]
        async with c.beta.threads.runs.submit_tool_outputs_stream(thread_id=t, run_id=run.id,
                                                                  tool_outputs=outputs) as s2:
            await s2.until_done()
            return (await s2.get_final_run()).model_dump()

    async def create_and_poll(c: openai.AsyncOpenAI, kb: Kb) -> Any:
        run = await c.beta.threads.runs.create_and_poll(thread_id=await thread(c),
                                                        assistant_id=kb.assistant_id, poll_interval_ms=10)
        return run.status, run.usage and run.usage.model_dump()

    async def with_raw_response(c: openai.AsyncOpenAI, kb: Kb) -> Any:
        raw = await c.responses.with_raw_response.create(model="gpt-4o", input="hi")
        return raw.status_code, raw.content

    async def with_streaming_response(c: openai.AsyncOpenAI, kb: Kb) -> Any:
        async with c.chat.completions.with_streaming_response.create(
                model="gpt-4o", messages=MSG, stream=True) as resp:
            return b"".join([chunk async for chunk in resp.iter_bytes()])

    return {f.__name__: f for f in (
        chat_create, chat_create_stream, chat_stream, responses_create, responses_create_stream,
        responses_stream, runs_stream, runs_create_stream, create_and_run_stream, submit_tool_outputs_stream,
        create_and_poll, with_raw_response, with_streaming_response)}


@pytest.mark.parametrize("path", list(_async_paths()))
async def test_async_call_paths_same_bytes_and_rows(pair: Pair, path: str) -> None:
    call = _async_paths()[path]
    setup_direct = openai.OpenAI(base_url=pair.direct.base_url, api_key=KEY, max_retries=0)
    setup_proxied = openai.OpenAI(base_url=pair.proxy.base_url, api_key=KEY, max_retries=0)
    kb_direct, kb_proxied = knowledge_base(setup_direct), knowledge_base(setup_proxied)
    setup_direct.close()
    setup_proxied.close()
    assert kb_direct == kb_proxied
    direct_records = Records()
    t_direct, t_proxy = AsyncRecordingTransport(), AsyncRecordingTransport()
    direct = openai.AsyncOpenAI(base_url=pair.direct.base_url, api_key=KEY, max_retries=0,
                                http_client=httpx2.AsyncClient(transport=t_direct))
    instrument(direct, direct_records)
    proxied = openai.AsyncOpenAI(base_url=pair.proxy.base_url, api_key=KEY, max_retries=0,
                                 http_client=httpx2.AsyncClient(transport=t_proxy))
    try:
        assert await call(direct, kb_direct) == await call(proxied, kb_proxied)
    finally:
        await direct.close()
        await proxied.close()
        await asyncio.to_thread(uninstrument, direct)
        await asyncio.to_thread(pair.proxy.stop)
    mine, theirs = compared_bodies(t_proxy), compared_bodies(t_direct)
    assert [(m, p) for m, p, _ in mine] == [(m, p) for m, p, _ in theirs]
    for (m, p, got), (_, _, want) in zip(mine, theirs, strict=True):
        assert got == want, f"{m} {p}"
    assert_same_rows(direct_records.items, pair.proxied.items)


# -- faults pass through unchanged and are recorded honestly ------------------------------------------
def _raw(client: httpx2.Client, base: str, path: str, body: Any, fault: str) -> httpx2.Response:
    return client.post(base + path, json=body, headers={"Authorization": f"Bearer {KEY}",
                                                        "X-Runmeter-Fault": fault})


@pytest.mark.parametrize("fault", ["rate_limit", "server_error"])
@pytest.mark.parametrize("path", ["/chat/completions", "/responses"])
def test_error_statuses_come_back_as_they_came(pair: Pair, fault: str, path: str) -> None:
    body: Any = {"model": "gpt-4o", "messages": MSG} if path == "/chat/completions" else {
        "model": "gpt-4o", "input": "hi", "stream": True}
    with httpx2.Client() as http:
        want = _raw(http, pair.direct.base_url, path, body, fault)
        got = _raw(http, pair.proxy.base_url, path, body, fault)
    assert got.status_code == want.status_code == (429 if fault == "rate_limit" else 500)
    assert got.content == want.content and b'"error"' in got.content
    drop = {"date"}  # each server stamps its own second
    assert [(k, v) for k, v in got.headers.multi_items() if k not in drop] == \
           [(k, v) for k, v in want.headers.multi_items() if k not in drop]
    pair.proxy.stop()
    assert pair.proxied.items == []  # no run happened; the in-process recorder records none either


def _streaming_call(c: openai.OpenAI, api: str, kb: Kb | None, fault: str) -> bytes:
    headers = {"X-Runmeter-Fault": fault}
    if api == "chat":
        ctx: Any = c.chat.completions.with_streaming_response.create(
            model="gpt-4o", messages=MSG, stream=True, extra_headers=headers)
    elif api == "responses":
        ctx = c.responses.with_streaming_response.create(model="gpt-4o", input="What is the refund window?",
                                                         stream=True, extra_headers=headers)
    else:
        assert kb is not None
        thread = c.beta.threads.create(messages=MSG).id
        ctx = c.beta.threads.runs.with_streaming_response.create(
            thread_id=thread, assistant_id=kb.assistant_id, stream=True, extra_headers=headers)
    got: list[bytes] = []
    with ctx as resp:
        try:
            for chunk in resp.iter_bytes():
                got.append(chunk)
        except httpx2.HTTPError:
            got.append(b"<broken>")
    return b"".join(got)


@pytest.mark.parametrize("fault", ["error_event", "drop"])
@pytest.mark.parametrize("api", ["chat", "responses", "assistants"])
def test_stream_faults_same_bytes_and_rows(pair: Pair, api: str, fault: str) -> None:
    direct_records = Records()
    direct = openai.OpenAI(base_url=pair.direct.base_url, api_key=KEY, max_retries=0)
    instrument(direct, direct_records, fetch_steps=False)
    proxied = openai.OpenAI(base_url=pair.proxy.base_url, api_key=KEY, max_retries=0)
    try:
        kbs = (knowledge_base(direct), knowledge_base(proxied)) if api == "assistants" else (None, None)
        want = _streaming_call(direct, api, kbs[0], fault)
        got = _streaming_call(proxied, api, kbs[1], fault)
    finally:
        uninstrument(direct)
        direct.close()
        proxied.close()
        pair.proxy.stop()
    assert got == want
    assert got.endswith(b"<broken>") == (fault == "drop")  # a dropped upstream drops the caller too
    a, b = rows(direct_records.items), rows(pair.proxied.items)
    assert_same_rows(direct_records.items, pair.proxied.items)
    (row,) = [r for r in b.values() if r.api == api]
    if fault == "drop":
        assert row.status == "interrupted"
    else:
        assert row.status == "failed" and row.error_code
    assert a.keys() == b.keys()


def test_cut_off_runs_are_read_back_until_billed(pair: Pair) -> None:
    """A dropped Assistants stream and a dropped Responses stream: the proxy reads both runs back from
    the upstream with the caller's key until they are final, so the rows carry the billed usage."""
    c = openai.OpenAI(base_url=pair.proxy.base_url, api_key=KEY, max_retries=0)
    direct = openai.OpenAI(base_url=pair.behind.base_url, api_key=KEY, max_retries=0)
    try:
        kb = knowledge_base(c)
        thread = c.beta.threads.create(messages=MSG).id
        with pytest.raises((openai.APIConnectionError, httpx2.HTTPError)):
            for _ in c.beta.threads.runs.create(thread_id=thread, assistant_id=kb.assistant_id, stream=True,
                                                extra_headers={"X-Runmeter-Fault": "drop"}):
                pass
        with pytest.raises((openai.APIConnectionError, httpx2.HTTPError)):
            for _ in c.responses.create(model="gpt-4o", input="What is the refund window?", stream=True,
                                        tools=[file_search(kb)], extra_headers={"X-Runmeter-Fault": "drop"}):
                pass
        deadline = time.monotonic() + 15
        got = rows(pair.proxied.items)
        while time.monotonic() < deadline:
            got = rows(pair.proxied.items)
            if sorted(str(r.status) for r in got.values()) == ["completed", "completed"]:
                break
            time.sleep(0.1)
        assert sorted((r.api, r.status) for r in got.values()) == [("assistants", "completed"),
                                                                   ("responses", "completed")]
        run_row = next(r for r in got.values() if r.api == "assistants")
        resp_row = next(r for r in got.values() if r.api == "responses")
        run = direct.beta.threads.runs.retrieve(run_row.run_id, thread_id=thread)
        resp = direct.responses.retrieve(resp_row.run_id)
    finally:
        c.close()
        direct.close()
    assert run.usage is not None and resp.usage is not None
    assert (run_row.input_tokens, run_row.output_tokens) == (run.usage.prompt_tokens,
                                                             run.usage.completion_tokens)
    assert (resp_row.input_tokens, resp_row.output_tokens) == (resp.usage.input_tokens,
                                                               resp.usage.output_tokens)
    assert run_row.streams == resp_row.streams == 1
    assert run_row.file_search_calls and run_row.retrieved_chunks, "the steps listing follows the final read"


def test_sdk_sees_the_same_errors(pair: Pair) -> None:
    c = openai.OpenAI(base_url=pair.proxy.base_url, api_key=KEY, max_retries=0)
    try:
        with pytest.raises(openai.RateLimitError) as rl:
            c.chat.completions.create(model="gpt-4o", messages=MSG,
                                      extra_headers={"X-Runmeter-Fault": "rate_limit"})
        assert rl.value.response.headers["retry-after"] == "1"
        with pytest.raises(openai.APIError):
            for _ in c.chat.completions.create(model="gpt-4o", messages=MSG, stream=True,
                                               extra_headers={"X-Runmeter-Fault": "error_event"}):
                pass
        events: list[Any] = []
        with pytest.raises(openai.APIConnectionError):
            for e in c.responses.create(model="gpt-4o", input="hi", stream=True,
                                        extra_headers={"X-Runmeter-Fault": "drop"}):
                events.append(e)
        assert events  # what came before the cut reached the caller
        no_key = httpx2.post(pair.proxy.base_url + "/chat/completions", json={"model": "gpt-4o"})
        assert no_key.status_code == 401 and "API key" in no_key.json()["error"]["message"]
    finally:
        c.close()


# -- timing: no buffering, disconnects -------------------------------------------------------------------
def _timed_chunks(base: str, body: Any, fault: str) -> list[tuple[float, bytes]]:
    out: list[tuple[float, bytes]] = []
    with httpx2.Client(timeout=10) as http, http.stream(
            "POST", base + "/chat/completions", json=body,
            headers={"Authorization": f"Bearer {KEY}", "X-Runmeter-Fault": fault}) as resp:
        for chunk in resp.iter_raw():
            out.append((time.monotonic(), chunk))
    return out


def _split_at_stall(chunks: list[tuple[float, bytes]]) -> tuple[float, bytes]:
    gaps = [(chunks[i + 1][0] - chunks[i][0], i) for i in range(len(chunks) - 1)]
    gap, i = max(gaps)
    return gap, b"".join(c for _, c in chunks[: i + 1])


def test_stall_mid_stream_reaches_the_caller_without_buffering(pair: Pair) -> None:
    body: Any = {"model": "gpt-4o", "messages": MSG, "stream": True}
    direct_gap, direct_before = _split_at_stall(_timed_chunks(pair.direct.base_url, body, "stall:1"))
    gap, before = _split_at_stall(_timed_chunks(pair.proxy.base_url, body, "stall:1"))
    # Every event sent before the stall was already with the caller: the same bytes, and the caller's
    # silence is the stall's full length (held bytes would have shortened it by their delay).
    assert before == direct_before and before.count(b"data: ") >= 2
    assert direct_gap >= 0.95
    assert gap >= direct_gap - 0.05, (gap, direct_gap)


def test_caller_that_hangs_up_closes_the_upstream_and_is_interrupted(pair: Pair) -> None:
    body: Any = {"model": "gpt-4o", "messages": MSG, "stream": True}
    with httpx2.Client(timeout=10) as http, http.stream(
            "POST", pair.proxy.base_url + "/chat/completions", json=body,
            headers={"Authorization": f"Bearer {KEY}", "X-Runmeter-Fault": "stall:3"}) as resp:
        first = next(resp.iter_raw())
        assert first.startswith(b"data: ")
        time.sleep(0.2)  # inside the stall: the upstream is silent
        hung_up = time.monotonic()
    deadline = hung_up + 2.0
    while (pair.proxy.relay.active or not pair.proxied.items) and time.monotonic() < deadline:
        time.sleep(0.01)
    # The relay ended during the stall, not when the upstream spoke again 3 s later.
    assert pair.proxy.relay.active == 0 and time.monotonic() - hung_up < 1.0
    (row,) = pair.proxied.items
    assert row.api == "chat" and row.status == "interrupted"


async def test_200_concurrent_streams_arrive_intact_and_are_recorded(pair: Pair) -> None:
    n = 200
    body: Any = {"model": "gpt-4o", "messages": MSG, "stream": True,
                 "stream_options": {"include_usage": True}}

    async def one(http: httpx2.AsyncClient) -> bytes:
        async with http.stream("POST", pair.proxy.base_url + "/chat/completions", json=body,
                               headers={"Authorization": f"Bearer {KEY}"}) as resp:
            assert resp.status_code == 200
            return b"".join([c async for c in resp.aiter_raw()])

    limits = httpx2.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    async with httpx2.AsyncClient(limits=limits, timeout=60) as http:
        bodies = await asyncio.gather(*(one(http) for _ in range(n)))
    usage: dict[str, Any] = {}
    for raw in bodies:
        events = [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]
        assert events[-1] == b"[DONE]" and raw.endswith(b"\n\n")
        chunks = [json.loads(e) for e in events[:-1]]  # every event intact JSON
        assert len({c["id"] for c in chunks}) == 1
        usage[chunks[0]["id"]] = chunks[-1]["usage"]
    assert len(usage) == n
    recs = await asyncio.to_thread(pair.proxied.wait, n)
    assert len(recs) == n and {r.run_id for r in recs} == set(usage)
    for r in recs:
        assert r.status == "completed" and r.streams == 1
        assert (r.input_tokens, r.output_tokens) == (usage[r.run_id]["prompt_tokens"],
                                                     usage[r.run_id]["completion_tokens"])


# -- headers, bodies, compression: against an upstream that shows what it received ----------------------
class Served:
    """Any aiohttp application on a free port in a background thread."""

    def __init__(self, app: web.Application, ssl_context: Any = None) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.2)
        ready = threading.Event()
        self.port = 0

        async def serve() -> None:
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ssl_context)
            await site.start()
            server: Any = site._server
            self.port = server.sockets[0].getsockname()[1]

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(serve())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(10)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _gzip_events(events: list[bytes]) -> list[bytes]:
    """Each SSE event gzip-compressed and flushed on its own, as a compressing server streams them."""
    z = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [z.compress(e) + z.flush(zlib.Z_SYNC_FLUSH) for e in events]
    parts.append(z.flush())
    return parts


@pytest.fixture
def echo() -> Iterator[Served]:
    """``/v1/echo`` answers with what it received; ``/v1/chat/completions`` streams a gzip'd chat
    stream stored in ``app['chat']``; ``/v1/cookie`` sets cookies and hop-by-hop headers."""
    seen: list[dict[str, Any]] = []

    async def echo_handler(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append({"method": request.method, "raw_path": request.raw_path,
                     "headers": list(request.headers.items()), "body": body})
        return web.json_response({"ok": True, "n": len(body)})

    async def cookie(request: web.Request) -> web.Response:
        seen.append({"headers": list(request.headers.items())})
        resp = web.Response(body=b'{"ok":true}', content_type="application/json")
        resp.headers.add("Set-Cookie", "__cf_bm=a; Path=/")
        resp.headers.add("Set-Cookie", "_cfuvid=b; Path=/")
        resp.headers["X-Hop"] = "1"
        resp.headers["Connection"] = "X-Hop"
        resp.headers["Keep-Alive"] = "timeout=5"
        resp.headers["openai-processing-ms"] = "42"
        return resp

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Content-Encoding": "gzip"})
        await resp.prepare(request)
        for part in _gzip_events(request.app[CHAT_KEY]):
            await resp.write(part)
        await resp.write_eof()
        return resp

    app = web.Application()
    app[SEEN_KEY] = seen
    app[CHAT_KEY] = []
    app.router.add_route("*", "/v1/echo", echo_handler)
    app.router.add_post("/v1/responses", echo_handler)
    app.router.add_post("/v1/threads/{thread_id}/runs", echo_handler)
    app.router.add_get("/v1/cookie", cookie)
    app.router.add_post("/v1/chat/completions", chat)
    served = Served(app)
    yield served
    served.close()


SEEN_KEY = web.AppKey("seen", list)
CHAT_KEY = web.AppKey("chat", list)


def test_request_reaches_the_upstream_as_sent(echo: Served) -> None:
    with Proxy(upstream=echo.base_url, sink=Records()) as proxy, httpx2.Client() as http:
        body = b'{"a": 1,  "b": "\\u00e9"}'  # odd spacing: forwarded byte for byte
        r = http.post(proxy.base_url + "/echo?include%5B%5D=x%5B%2A%5D&b=1", content=body, headers={
            "Authorization": f"Bearer {KEY}", "OpenAI-Beta": "assistants=v2", "X-Custom": "kept",
            "Connection": "keep-alive, X-Named", "X-Named": "dropped", "Keep-Alive": "timeout=5",
            "TE": "trailers", "Trailer": "X-T", "Proxy-Authorization": "Basic eA==",
            "Content-Type": "application/json", "Expect": "100-continue"})
        assert r.status_code == 200 and r.json() == {"ok": True, "n": len(body)}
        seen = echo.app[SEEN_KEY][-1]
    names = [k.lower() for k, _ in seen["headers"]]
    got = dict((k.lower(), v) for k, v in seen["headers"])
    assert seen["method"] == "POST" and seen["body"] == body
    assert seen["raw_path"] == "/v1/echo?include%5B%5D=x%5B%2A%5D&b=1"  # the caller's encoding kept
    assert got["authorization"] == f"Bearer {KEY}" and got["openai-beta"] == "assistants=v2"
    assert got["x-custom"] == "kept" and got["content-type"] == "application/json"
    for hop in ("x-named", "keep-alive", "te", "trailer", "proxy-authorization", "expect"):
        assert hop not in names
    assert got["user-agent"].startswith("python-httpx")  # the caller's, not aiohttp's


@pytest.mark.parametrize("include", [False, True])
def test_include_is_added_only_when_turned_on(echo: Served, include: bool) -> None:
    body = json.dumps({"model": "gpt-4o", "input": "hi", "tools": [{"type": "file_search",
                                                                   "vector_store_ids": ["vs_1"]}]}).encode()
    with Proxy(upstream=echo.base_url, sink=Records(), include_results=include) as proxy, \
            httpx2.Client() as http:
        http.post(proxy.base_url + "/responses", content=body, headers={"Content-Type": "application/json"})
        http.post(proxy.base_url + "/threads/thread_1/runs?limit=1", content=b'{"assistant_id":"asst_1"}',
                  headers={"Content-Type": "application/json"})
    responses, runs = echo.app[SEEN_KEY][-2:]
    if include:
        assert json.loads(responses["body"])["include"] == ["file_search_call.results"]
        assert runs["raw_path"] == ("/v1/threads/thread_1/runs?limit=1&include%5B%5D=step_details.tool_calls"
                                    "%5B%2A%5D.file_search.results%5B%2A%5D.content")
    else:
        assert responses["body"] == body and runs["raw_path"] == "/v1/threads/thread_1/runs?limit=1"


def test_upload_of_unknown_length_streams_through(echo: Served) -> None:
    payload = os.urandom(300_000)

    def gen() -> Iterator[bytes]:
        for i in range(0, len(payload), 65536):
            yield payload[i:i + 65536]

    with Proxy(upstream=echo.base_url, sink=Records()) as proxy, httpx2.Client() as http:
        r = http.put(proxy.base_url + "/echo", content=gen(),
                     headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 200
        seen = echo.app[SEEN_KEY][-1]
    assert seen["body"] == payload and seen["method"] == "PUT"


def test_response_headers_relayed_end_to_end_only_and_cookies_not_kept(echo: Served) -> None:
    with Proxy(upstream=echo.base_url, sink=Records()) as proxy, httpx2.Client() as http:
        r = http.get(proxy.base_url + "/cookie")
        r2 = httpx2.get(proxy.base_url + "/cookie")
    assert r.headers.get_list("set-cookie") == ["__cf_bm=a; Path=/", "_cfuvid=b; Path=/"]
    assert r.headers["openai-processing-ms"] == "42" and r.content == b'{"ok":true}'
    assert "x-hop" not in r.headers and "timeout" not in r.headers.get("keep-alive", "")
    assert r2.status_code == 200
    # The proxy's upstream session has no cookie jar: the second caller sends no cookie upstream.
    assert all(k.lower() != "cookie" for k, _ in echo.app[SEEN_KEY][-1]["headers"])


def test_gzip_stream_relayed_compressed_and_decoded_for_the_tap(sim: Simulator, echo: Served) -> None:
    body: Any = {"model": "gpt-4o", "messages": MSG, "stream": True,
                 "stream_options": {"include_usage": True}}
    plain = httpx2.post(sim.base_url + "/chat/completions", json=body, headers={"Authorization": "Bearer k"})
    events = [e + b"\n\n" for e in plain.content.split(b"\n\n") if e]
    echo.app[CHAT_KEY].extend(events)
    wire = b"".join(_gzip_events(events))
    records = Records()
    with Proxy(upstream=echo.base_url, sink=records) as proxy:
        c = openai.OpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0)
        with c.chat.completions.with_streaming_response.create(
                model="gpt-4o", messages=MSG, stream=True, stream_options={"include_usage": True}) as resp:
            assert resp.headers["content-encoding"] == "gzip"
            raw = b"".join(resp.http_response.iter_raw())
        # the SDK reads it decoded as usual
        chunks = list(c.chat.completions.create(model="gpt-4o", messages=MSG, stream=True,
                                                stream_options={"include_usage": True}))
        c.close()
    assert raw == wire and gzip.decompress(raw) == plain.content
    usage = json.loads(events[-2][6:])["usage"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == usage["completion_tokens"]
    assert len(records.items) == 2
    for r in records.items:
        assert r.status == "completed" and r.output_tokens == usage["completion_tokens"]
        assert r.input_tokens == usage["prompt_tokens"]


def test_accept_encoding_is_narrowed_only_to_what_the_tap_reads() -> None:
    assert accept_encoding_for_tap("gzip, deflate", DECODABLE) is None
    if "br" not in DECODABLE:
        assert accept_encoding_for_tap("gzip, deflate, br", DECODABLE) == "gzip, deflate"
        assert accept_encoding_for_tap("br", DECODABLE) == "identity"
    assert accept_encoding_for_tap("gzip;q=1.0, compress", DECODABLE) == "gzip;q=1.0"


def test_hop_by_hop_headers_are_dropped() -> None:
    pairs = [("Connection", "close, X-A"), ("X-A", "1"), ("Upgrade", "h2c"), ("TE", "trailers"),
             ("Trailer", "X"), ("Transfer-Encoding", "chunked"), ("Keep-Alive", "5"),
             ("Proxy-Authenticate", "Basic"), ("Proxy-Foo", "x"), ("Authorization", "Bearer k"),
             ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("OpenAI-Beta", "assistants=v2")]
    assert end_to_end(pairs) == [("Authorization", "Bearer k"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"),
                                 ("OpenAI-Beta", "assistants=v2")]


# -- the proxy's own answers ------------------------------------------------------------------------------
def test_unreachable_upstream_is_a_clear_502_and_no_key_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with Proxy(upstream=f"http://127.0.0.1:{closed_port()}/v1", sink=Records()) as proxy:
        c = openai.OpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0)
        with pytest.raises(openai.APIStatusError) as err:
            c.chat.completions.create(model="gpt-4o", messages=MSG)
        c.close()
    body: Any = err.value.body
    assert err.value.status_code == 502
    assert body == {"message": body["message"], "type": "upstream_error", "param": None,
                    "code": "upstream_unreachable"}
    assert "runmeter proxy" in caplog.text and KEY not in caplog.text


def closed_port() -> int:
    """A port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_outside_v1_is_404_and_the_sidecar_seam_adds_routes(sim: Simulator) -> None:
    routes = {"/metrics": lambda: ("text/plain; version=0.0.4", b"runmeter_up 1\n")}
    with Proxy(upstream=sim.base_url, sink=Records(), routes=routes) as proxy:
        root = proxy.base_url.removesuffix("/v1")
        got = httpx2.get(root + "/metrics")
        assert got.text == "runmeter_up 1\n" and got.headers["content-type"] == "text/plain; version=0.0.4"
        assert httpx2.post(root + "/metrics").status_code == 404
        nope = httpx2.get(root + "/nope")
        assert nope.status_code == 404 and "/v1/" in nope.json()["error"]["message"]
        ok = httpx2.get(proxy.base_url + "/models", headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code in (200, 404) and ok.headers["content-type"].startswith("application/json")


def test_https_upstream_verified_and_relayed(tmp_path: Path) -> None:
    """The upstream is https (as api.openai.com is): the proxy verifies its certificate and relays."""
    openssl = require_binary("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"auth": request.headers.get("Authorization"), "tls": request.secure,
                                  "body": (await request.read()).decode()})

    app = web.Application()
    app.router.add_post("/v1/echo", echo)
    served = Served(app, ssl_context=server_ctx)
    try:
        trusting = ssl.create_default_context(cafile=str(cert))
        upstream = f"https://127.0.0.1:{served.port}/v1"
        with Proxy(upstream=upstream, sink=Records(), ssl_context=trusting) as proxy:
            r = httpx2.post(proxy.base_url + "/echo", content=b'{"x":1}',
                            headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200
        assert r.json() == {"auth": f"Bearer {KEY}", "tls": True, "body": '{"x":1}'}
        # Without trust in that certificate the proxy refuses the upstream: a 502, nothing relayed.
        with Proxy(upstream=upstream, sink=Records()) as proxy:
            bad = httpx2.post(proxy.base_url + "/echo", content=b"{}")
        assert bad.status_code == 502 and bad.json()["error"]["code"] == "upstream_unreachable"
    finally:
        served.close()


def test_bad_upstream_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not an http"):
        Proxy(upstream="ftp://example", sink=Records()).start()


# -- the CLI, once as a real process ----------------------------------------------------------------------
def test_cli_proxy_records_into_the_store_and_never_stores_the_key(sim: Simulator, tmp_path: Path) -> None:
    db = tmp_path / "proxy.duckdb"
    env = {**os.environ, "RUNMETER_UPSTREAM": sim.base_url, "RUNMETER_DB": str(db)}
    proc = subprocess.Popen([sys.executable, "-m", "collector.cli", "proxy", "--port", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1"), url
        c = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0)
        chat = c.chat.completions.create(model="gpt-4o", messages=MSG)
        resp = c.responses.create(model="gpt-4o", input="hi", stream=True)
        response_id = [e for e in resp][-1].response.id  # type: ignore[union-attr]
        c.close()
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert KEY not in err
    from collector.store.reader import open_reader

    conn = open_reader(db)
    try:
        got = dict(conn.execute("SELECT run_id, status FROM runs").fetchall())
    finally:
        conn.close()
    assert got == {chat.id: "completed", response_id: "completed"}
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f


def test_cli_bad_flag_is_one_line() -> None:
    r = subprocess.run([sys.executable, "-m", "collector.cli", "proxy", "--upstream", "nope", "--port", "0"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == ["runmeter proxy: error: upstream 'nope' is not an http(s) URL "
                                             "such as https://api.openai.com/v1"]


def test_module_exports() -> None:
    import collector.proxy

    assert sorted(collector.proxy.__all__) == ["DECODABLE", "DEFAULT_UPSTREAM", "Proxy", "ProxyConfig",
                                               "ProxyServer", "Relay", "RelayOptions", "serve_forever"]
    assert {"gzip", "deflate"} <= DECODABLE


def test_cli_proxy_acts_as_the_serve_sidecar(sim: Simulator, tmp_path: Path) -> None:
    """With --serve-port the proxy process is also the store's writer, exporter and storage poller."""
    db = tmp_path / "side.duckdb"
    env = {**os.environ, "RUNMETER_UPSTREAM": sim.base_url, "RUNMETER_DB": str(db), "OPENAI_API_KEY": KEY,
           "RUNMETER_STORAGE_POLL_INTERVAL": "0.2"}
    raw = openai.OpenAI(base_url=sim.base_url, api_key=KEY)
    raw.vector_stores.create(name="kb")
    raw.close()
    cmd = [sys.executable, "-m", "collector.cli", "proxy", "--port", "0", "--serve-port", "0"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        url = proc.stdout.readline().strip()
        metrics_url = next(line.split(" at ", 1)[1].strip() for line in iter(proc.stderr.readline, "")
                           if "sidecar metrics at" in line)
        c = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0)
        c.chat.completions.create(model="gpt-4o", messages=MSG)
        c.close()
        deadline = time.monotonic() + 15
        text = ""
        while time.monotonic() < deadline:
            text = httpx2.get(metrics_url).text
            if 'runmeter_runs_total{api="chat"' in text and "runmeter_vector_stores{" in text:
                break
            time.sleep(0.2)
        assert 'runmeter_runs_total{api="chat",model="gpt-4o",status="completed"} 1.0' in text, text[:2000]
        assert 'runmeter_vector_stores{status="completed"} 1.0' in text
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert KEY not in err
