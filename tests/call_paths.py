"""Shared fixtures-in-code for the call-path tests (in-process hook and proxy): the knowledge base the
SDK calls run against, the ``file_search`` tool that points at it, and a transport that records the
body bytes the SDK reads beneath any instrumentation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import openai


@dataclass
class Kb:
    """The ids :func:`knowledge_base` created."""

    vector_store_id: str
    assistant_id: str
    function_assistant_id: str


def knowledge_base(client: openai.OpenAI) -> Kb:
    """A vector store with two documents (uploaded as multipart) and two assistants using it (one also
    has a function)."""
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
    """The Responses ``file_search`` tool over the knowledge base's vector store."""
    return {"type": "file_search", "vector_store_ids": [kb.vector_store_id]}


class RecordingTransport(httpx2.HTTPTransport):
    """Records the body bytes the SDK reads, beneath any instrumentation, independently of runmeter."""

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


THREAD_QUESTIONS = ("What is the refund window for damaged goods?", "How long does standard shipping take?",
                    "What does the warranty cover?", "How are security incidents reported?")
"""The turns of the thread-history tests, one question each."""


class ThreadBench:
    """Assistants over a five-document vector store, one per ``max_num_results`` in ``ns``, for the
    thread-history tests: :meth:`ask` runs a streamed turn; :meth:`fit_runs` the stand-alone runs the
    billing fit needs."""

    def __init__(self, client: openai.OpenAI, ns: tuple[int, ...] = (2, 4)) -> None:
        from collector.simulator.corpus import documents

        self.client = client
        ids = [client.files.create(file=(n, t.encode()), purpose="assistants").id for n, t in documents(5, 6)]
        vs = client.vector_stores.create(name="t", file_ids=ids)
        for fid in ids:
            client.vector_stores.files.poll(fid, vector_store_id=vs.id, poll_interval_ms=10)
        self.assistants = {n: client.beta.assistants.create(
            model="gpt-4o", instructions="Answer from the knowledge base.",
            tools=[{"type": "file_search", "file_search": {"max_num_results": n}}],
            tool_resources={"file_search": {"vector_store_ids": [vs.id]}}).id for n in ns}

    def ask(self, thread_id: str, question: str, n: int) -> str:
        """One streamed turn of ``thread_id`` with the assistant at ``max_num_results=n``; its run id."""
        self.client.beta.threads.messages.create(thread_id, role="user", content=question)
        with self.client.beta.threads.runs.stream(thread_id=thread_id,
                                                  assistant_id=self.assistants[n]) as stream:
            stream.until_done()
            return stream.get_final_run().id

    def fit_runs(self) -> dict[str, str]:
        """24 stand-alone runs (each on a fresh thread) at the two settings, for the billing fit; returns
        the run id of each question's first, unshortened, ``max_num_results=4`` run."""
        fresh: dict[str, str] = {}
        for i in range(24):
            q = THREAD_QUESTIONS[i % 4] + ("" if i < 12 else " Please be brief.")
            run_id = self.ask(self.client.beta.threads.create().id, q, 4 if i < 4 or i % 2 else 2)
            if i < 4:
                fresh[q] = run_id
        return fresh
