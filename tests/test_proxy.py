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
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from aiohttp import web

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
TIMING = frozenset({"started_at", "first_token_at", "completed_at", "ttft_seconds", "duration_seconds"})
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


class RecordingTransport(httpx2.HTTPTransport):
    """Records the body bytes the SDK reads, beneath any instrumentation."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[tuple[str, str, list[bytes]]] = []

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = super().handle_request(request)
        chunks: list[bytes] = []
        self.bodies.append((request.method, request.url.path, chunks))
        inner: Any = response.stream

        class Recorded(httpx2.SyncByteStream):
            def __iter__(self) -> Iterator[bytes]:
                for chunk in inner:
                    chunks.append(chunk)
                    yield chunk

            def close(self) -> None:
                inner.close()

        response.stream = Recorded()
        return response


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


@dataclass
class Kb:
    vector_store_id: str
    assistant_id: str
    function_assistant_id: str


def knowledge_base(client: openai.OpenAI) -> Kb:
    """A vector store with two documents (uploaded as multipart) and two assistants using it."""
    files = [client.files.create(file=(name, text.encode()), purpose="assistants")
             for name, text in [("refunds.txt", "Refunds for annual plans are accepted within 30 days. "
                                 "A restocking fee of 10 percent applies to damaged goods."),
                                ("shipping.txt", "Orders placed before 2 pm ship the same business day.")]]
    vs = client.vector_stores.create(name="kb")
    client.vector_stores.file_batches.create_and_poll(vs.id, file_ids=[f.id for f in files],
                                                      poll_interval_ms=10)
    fs: Any = {"type": "file_search"}
    res: Any = {"file_search": {"vector_store_ids": [vs.id]}}
    a = client.beta.assistants.create(model="gpt-4o", tools=[fs], tool_resources=res)
    fn: Any = {"type": "function", "function": {"name": "lookup_order", "parameters": {
        "type": "object", "properties": {"order_id": {"type": "string"}}}}}
    b = client.beta.assistants.create(model="gpt-4o", tools=[fs, fn], tool_resources=res)
    return Kb(vs.id, a.id, b.id)


def file_search(kb: Kb) -> Any:
    return {"type": "file_search", "vector_store_ids": [kb.vector_store_id]}


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
