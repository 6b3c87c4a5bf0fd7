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
