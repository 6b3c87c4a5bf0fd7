"""The real recordings replayed over HTTP to the instrumented, unmodified SDK: the rows carry exactly
the numbers the recordings do. (The taps alone are checked against the same bytes in
test_taps_captures.py; this is the whole path: SDK → runmeter's hook → tap → writer → DuckDB.)"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import openai
import pytest
from aiohttp import web
from test_taps_captures import Exchange, load

from collector import Recorder

pytestmark = pytest.mark.filterwarnings("ignore:deprecated$:DeprecationWarning")


class Replay:
    """Serves the recorded streamed responses of some captures on 127.0.0.1, piece by piece."""

    def __init__(self, *names: str) -> None:
        self.routes: dict[tuple[str, str], Exchange] = {}
        for name in names:
            for ex in load(name):
                if "event-stream" in ex.content_type:
                    self.routes[(ex.method, ex.path)] = ex
        self.seen: list[tuple[str, str]] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.seen.append((request.method, request.path))
        ex = self.routes.get((request.method, request.path))
        if ex is None:
            return web.json_response({"error": {"message": f"not recorded: {request.path}"}}, status=404)
        resp = web.StreamResponse(status=ex.status, headers={"Content-Type": ex.content_type})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for piece in ex.pieces:
            await resp.write(piece)
        await resp.write_eof()
        return resp

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()

    def __enter__(self) -> Replay:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


class Store:
    """An instrumented client on a replay server, and what its recorder stored."""

    def __init__(self, replay: Replay, db: Path) -> None:
        self.rec = Recorder(db, fetch_final=False)
        self.client = self.rec.instrument(
            openai.OpenAI(base_url=replay.base_url, api_key="sk-replay", max_retries=0)
        )

    def query(self, sql: str) -> list[dict[str, Any]]:
        self.rec.close()
        with duckdb.connect(str(self.rec.path), read_only=True) as con:
            cur = con.execute(sql)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def rows(self) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM runs ORDER BY run_id")


@pytest.fixture
def recorded(tmp_path: Path) -> Iterator[Any]:
    """``recorded(replay) -> (client, rows)``: an instrumented client on the replay server."""
    stores: list[Store] = []

    def make(replay: Replay) -> tuple[openai.OpenAI, Store]:
        stores.append(Store(replay, tmp_path / f"r{len(stores)}.duckdb"))
        return stores[-1].client, stores[-1]

    yield make
    for s in stores:
        s.rec.close()


def test_file_search_streaming_works(recorded: Any) -> None:
    with Replay("AssistantsTests_FileSearchStreamingWorks.json") as replay:
        client, store = recorded(replay)
        with client.beta.threads.runs.stream(
            thread_id="thread_JBW8iwCBHFQ5uPCfxzR9TlUf", assistant_id="asst_wsbI8mQzYyBDEhJH7F4Eg3tx"
        ) as stream:
            stream.until_done()
            assert stream.get_final_run().usage.prompt_tokens == 2028
        (row,) = store.rows()
    assert (row["run_id"], row["api"], row["status"], row["model"]) == (
        "run_gMAiOdxbrcV3JXHDasJZwr3g",
        "assistants",
        "completed",
        "gpt-4o",
    )
    assert (row["input_tokens"], row["cached_input_tokens"], row["output_tokens"], row["total_tokens"]) == (
        2028,
        0,
        40,
        2068,
    )
    assert (row["file_search_calls"], row["retrieved_chunks"], row["streams"], row["model_steps"]) == (
        1,
        1,
        1,
        2,
    )
    chunks = store.query("SELECT rank, score, cited, cited_by FROM retrieved_chunks")
    assert chunks == [
        {"rank": 1, "score": pytest.approx(0.6800102176172463), "cited": True, "cited_by": "result"}
    ]
    assert row["ttft_seconds"] is not None and row["ttft_seconds"] > 0


def test_streaming_tool_call_is_one_run_over_two_streams(recorded: Any) -> None:
    with Replay("AssistantsTests_StreamingToolCall.json") as replay:
        client, store = recorded(replay)
        with client.beta.threads.create_and_run_stream(assistant_id="asst_x", thread={}) as first:
            first.until_done()
            run = first.get_final_run()
        assert run.status == "requires_action"
        with client.beta.threads.runs.submit_tool_outputs_stream(
            thread_id=run.thread_id, run_id=run.id, tool_outputs=[{"tool_call_id": "call_x", "output": "ok"}]
        ) as second:
            second.until_done()
        (row,) = store.rows()
    assert (row["status"], row["streams"], row["input_tokens"], row["output_tokens"]) == (
        "completed",
        2,
        544,
        54,
    )
    # runmeter sent nothing of its own: only the application's two streamed requests reached the server
    assert [m for m, _ in replay.seen] == ["POST", "POST"]


def test_streaming_run_works(recorded: Any) -> None:
    with Replay("AssistantsTests_StreamingRunWorks.json") as replay:
        client, store = recorded(replay)
        (thread_path,) = [p for m, p in replay.routes]
        thread_id = thread_path.split("/")[3]
        for _ in client.beta.threads.runs.create(thread_id=thread_id, assistant_id="asst_x", stream=True):
            pass
        (row,) = store.rows()
    assert (row["status"], row["input_tokens"], row["output_tokens"], row["file_search_calls"]) == (
        "completed",
        38,
        35,
        0,
    )


def test_responses_file_search_streamed_without_include(recorded: Any) -> None:
    with Replay("ResponsesToolTests_FileSearchCallStreaming.json") as replay:
        client, store = recorded(replay)
        for _ in client.responses.create(model="gpt-4o", input="q", stream=True):
            pass
        (row,) = store.rows()
    assert (row["api"], row["status"], row["input_tokens"], row["output_tokens"]) == (
        "responses",
        "completed",
        1169,
        52,
    )
    assert (row["file_search_calls"], row["retrieved_chunks"]) == (1, None)


def test_pydantic_ai_responses_stream(recorded: Any) -> None:
    with Replay("test_openai_responses_model_file_search_tool_stream.yaml") as replay:
        client, store = recorded(replay)
        with client.responses.stream(model="gpt-5", input="q") as stream:
            stream.get_final_response()
        (row,) = store.rows()
    assert (row["status"], row["input_tokens"], row["output_tokens"], row["file_search_calls"]) == (
        "completed",
        1177,
        37,
        1,
    )


def test_chat_stream_with_usage(recorded: Any) -> None:
    with Replay("test_chat_completion_streaming.yaml") as replay:
        client, store = recorded(replay)
        for _ in client.chat.completions.create(
            model="gpt-4",
            stream=True,
            messages=[{"role": "user", "content": "Say this is a test"}],
            stream_options={"include_usage": True},
        ):
            pass
        (row,) = store.rows()
    assert (row["api"], row["status"], row["input_tokens"], row["output_tokens"], row["total_tokens"]) == (
        "chat",
        "completed",
        12,
        5,
        17,
    )
