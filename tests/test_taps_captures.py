"""Every real recording in ../shared/captures replayed byte for byte through the taps.

The numbers asserted here were read off the recordings (see each test's comment for where).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from conftest import CAPTURES, capture_path

from collector.merge import merge
from collector.record import RunRecord
from collector.taps import tap_for

SENT_WALL = 1_700_000_000.0
SENT_NS = 5_000_000_000
HEAD_NS = 100_000_000  # response head 100 ms after send
STEP_NS = 10_000_000  # each recorded piece 10 ms after the previous one
TIMING = ("started_at", "first_token_at", "completed_at", "ttft_seconds", "duration_seconds")


@dataclass
class Exchange:
    """One recorded request and its response body as the pieces that came off the wire."""

    method: str
    path: str
    query: str
    request_body: bytes | None
    status: int
    content_type: str
    pieces: list[bytes]

    @property
    def body(self) -> bytes:
        return b"".join(self.pieces)


def _request_bytes(body: Any) -> bytes | None:
    if body is None or body == "":
        return None
    if isinstance(body, str):
        return body.encode()
    if isinstance(body, dict):
        return json.dumps(body).encode()
    return None  # multipart uploads, recorded as a list of parts


def dotnet(name: str) -> list[Exchange]:
    """The exchanges of an openai-dotnet session record."""
    out = []
    for e in json.loads(capture_path(name).read_text())["Entries"]:
        url = urlsplit(e["RequestUri"])
        body = e["ResponseBody"]
        pieces = [p.encode() for p in body] if isinstance(body, list) else [json.dumps(body).encode()]
        out.append(
            Exchange(
                e["RequestMethod"],
                url.path,
                url.query,
                _request_bytes(e.get("RequestBody")),
                e["StatusCode"],
                e["ResponseHeaders"].get("Content-Type", ""),
                pieces,
            )
        )
    return out


def cassette(name: str) -> list[Exchange]:
    """The exchanges of a VCR cassette (a streamed body is its raw SSE text)."""
    out = []
    for it in yaml.safe_load(capture_path(name).read_text())["interactions"]:
        rq, rs = it["request"], it["response"]
        url = urlsplit(rq["uri"])
        req = rq.get("parsed_body", rq.get("body"))
        headers = {k.lower(): v for k, v in rs["headers"].items()}
        ctype = headers.get("content-type", [""])
        ctype = ctype[0] if isinstance(ctype, list) else ctype
        if "body" in rs:
            raw = rs["body"]["string"].encode()
            pieces = [p + b"\n\n" for p in raw.split(b"\n\n") if p.strip()]
        else:
            pieces = [json.dumps(rs["parsed_body"]).encode()]
        out.append(
            Exchange(
                rq["method"], url.path, url.query, _request_bytes(req), rs["status"]["code"], ctype, pieces
            )
        )
    return out


def replay(
    ex: Exchange, chunks: list[bytes] | None = None, *, complete: bool = True
) -> list[RunRecord] | None:
    """Feed the exchange through its tap: recorded pieces 10 ms apart, or ``chunks`` all at once."""
    tap = tap_for(ex.method, ex.path, ex.query, ex.request_body, sent_wall=SENT_WALL, sent_ns=SENT_NS)
    if tap is None:
        return None
    now = SENT_NS + HEAD_NS
    tap.response_started(ex.status, ex.content_type, now)
    if chunks is None:
        for piece in ex.pieces:
            now += STEP_NS
            tap.feed(piece, now)
    else:
        for chunk in chunks:
            tap.feed(chunk, now)
    return tap.close(complete=complete, now_wall=SENT_WALL + 60, now_ns=now + 7_000_000_000)


def splits(body: bytes) -> dict[str, list[bytes]]:
    """The same bytes cut several ways."""
    return {
        "whole": [body],
        "bytes": [body[i : i + 1] for i in range(len(body))],
        "7": [body[i : i + 7] for i in range(0, len(body), 7)],
        "lines": body.splitlines(keepends=True),
        "crlf-split": _crlf_split(body),
    }


def _crlf_split(body: bytes) -> list[bytes]:
    """The body with CRLF line ends, each cut between its CR and LF."""
    crlf = body.replace(b"\n", b"\r\n")
    return [p for part in crlf.split(b"\r\n") for p in (part + b"\r", b"\n")][:-1]


def without_timing(rec: RunRecord) -> dict[str, Any]:
    out = {f.name: getattr(rec, f.name) for f in fields(rec) if f.name not in TIMING}
    out["chunks"] = [(c.call_id, c.rank, c.file_id, c.score, c.cited, c.cited_by, c.text) for c in rec.chunks]
    return out


def only(records: list[RunRecord] | None) -> RunRecord:
    assert records is not None and len(records) == 1, records
    return records[0]


def identity(rec: RunRecord) -> tuple[Any, ...]:
    """What a record says it is: run id, API, status, stream count, model."""
    return rec.run_id, rec.api, rec.status, rec.streams, rec.model


def usage(rec: RunRecord) -> tuple[int | None, ...]:
    """The five token counts: input, cached input, output, reasoning, total."""
    return (rec.input_tokens, rec.cached_input_tokens, rec.output_tokens, rec.reasoning_tokens,
            rec.total_tokens)


def recorded(exchanges: list[Exchange]) -> list[tuple[Exchange, list[RunRecord]]]:
    return [(ex, recs) for ex in exchanges if (recs := replay(ex)) is not None]


def at(i: int) -> float:
    """Seconds from send to the i-th recorded piece (0-based)."""
    return (HEAD_NS + (i + 1) * STEP_NS) / 1e9


def piece_index(ex: Exchange, needle: bytes) -> int:
    return next(i for i, p in enumerate(ex.pieces) if needle in p)


ALL = sorted(p.name for p in CAPTURES.iterdir() if p.suffix in (".json", ".yaml"))


def load(name: str) -> list[Exchange]:
    return dotnet(name) if name.endswith(".json") else cassette(name)


# -- every recording, every split ----------------------------------------------------------------
def test_every_capture_is_covered() -> None:
    assert ALL == [
        "AssistantsTests_FileSearchStreamingWorks.json",
        "AssistantsTests_FileSearchWorks.json",
        "AssistantsTests_StreamingRunWorks.json",
        "AssistantsTests_StreamingToolCall.json",
        "ResponsesToolTests_FileSearch.json",
        "ResponsesToolTests_FileSearchCallStreaming.json",
        "VectorStoresTests_CanEnumerateVectorStores.json",
        "test_chat_completion_streaming.yaml",
        "test_openai_responses_model_file_search_tool_stream.yaml",
        "test_openai_responses_model_file_search_tool_with_results.yaml",
    ]


@pytest.mark.parametrize("name", ALL)
def test_any_split_gives_the_same_records(name: str) -> None:
    for ex in load(name):
        base = replay(ex, [ex.body])
        if base is None:
            continue
        for how, chunks in splits(ex.body).items():
            if how == "crlf-split" and "event-stream" not in ex.content_type:
                continue  # CR/LF variants are an SSE matter; a JSON body is not re-lined
            got = replay(ex, chunks)
            assert got is not None
            assert [without_timing(r) for r in got] == [without_timing(r) for r in base], (name, how)


def test_unrecorded_endpoints_get_no_tap() -> None:
    untapped = {
        (ex.method, ex.path)
        for name in ALL
        for ex in load(name)
        if tap_for(ex.method, ex.path, ex.query, ex.request_body, sent_wall=0.0, sent_ns=0) is None
    }
    assert {p for _, p in untapped if "vector_stores" in p or p.endswith("/files")} >= {
        "/v1/vector_stores",
        "/v1/files",
    }
    assert ("GET", "/v1/threads/thread_Q1yKHOMIqQaRApLIyDkJgISP/messages") in untapped
    assert (
        "GET",
        "/v1/responses/resp_07295d436a819e7400690d217fc590819382926370a588d98c/input_items",
    ) in untapped
    assert all(
        not p.endswith(("/runs", "/responses", "/chat/completions", "/submit_tool_outputs"))
        for _, p in untapped
    )


# -- Assistants ------------------------------------------------------------------------------------
def test_file_search_streaming_works() -> None:
    exchanges = dotnet("AssistantsTests_FileSearchStreamingWorks.json")
    ((ex, recs),) = recorded(exchanges)
    rec = only(recs)
    assert (rec.run_id, rec.api, rec.status, rec.streams) == (
        "run_gMAiOdxbrcV3JXHDasJZwr3g",
        "assistants",
        "completed",
        1,
    )
    assert (rec.thread_id, rec.assistant_id, rec.model) == (
        "thread_JBW8iwCBHFQ5uPCfxzR9TlUf",
        "asst_wsbI8mQzYyBDEhJH7F4Eg3tx",
        "gpt-4o",
    )
    # run.completed usage: 2028 = 830 + 1198 over the two steps; 40 = 20 + 20
    assert (*usage(rec), rec.cache_write_tokens) == (2028, 0, 40, 0, 2068, None)
    assert rec.extra["run_usage"] is True
    assert rec.model_steps == 2
    assert (rec.file_search_calls, rec.retrieved_chunks) == (1, 1)
    # run tools echo: no max_num_results → documented default for gpt-4*; score_threshold 0.0
    assert (rec.max_num_results, rec.score_threshold, rec.truncation) == (20, 0.0, "auto")
    assert (rec.max_prompt_tokens, rec.max_completion_tokens, rec.incomplete_reason, rec.error_code) == (
        None,
        None,
        None,
        None,
    )
    (chunk,) = rec.chunks
    assert (chunk.call_id, chunk.rank, chunk.file_id, chunk.score) == (
        "call_Ijw9WuTSpuhrnIInrcUzLRsL",
        1,
        "file-CyHtsk7XAWdRabQUBYRjCu",
        0.6800102176172463,
    )
    assert chunk.text is not None and chunk.text.endswith("- Filip Carola: cake")
    # message.completed: "【4:0†favorite_foods.txt】" → results[0] of the one call
    assert (chunk.cited, chunk.cited_by) == (True, "result")
    assert rec.tags == {}
    # TTFT: the first thread.message.delta ("Fil") is the piece the clock stands at
    first = piece_index(ex, b'"value":"Fil"')
    assert rec.ttft_seconds == pytest.approx(at(first))
    assert rec.first_token_at == pytest.approx(SENT_WALL + at(first))
    assert rec.duration_seconds == pytest.approx(at(len(ex.pieces) - 1))
    assert rec.started_at == SENT_WALL
    assert rec.completed_at == pytest.approx(SENT_WALL + at(len(ex.pieces) - 1))


def test_file_search_works_non_streamed_run_then_steps() -> None:
    exchanges = dotnet("AssistantsTests_FileSearchWorks.json")
    seen = recorded(exchanges)
    assert [(ex.method, ex.path.rsplit("/", 1)[-1]) for ex, _ in seen] == [
        ("POST", "runs"),
        ("GET", "run_6QwP49pI2IbnMIXITa0gjzw7"),
        ("GET", "steps"),
    ]
    create, poll, steps = (only(recs) for _, recs in seen)
    assert (create.status, create.streams, create.input_tokens, create.completed_at) == (
        "queued",
        0,
        None,
        None,
    )
    assert (create.max_num_results, create.score_threshold) == (2, 0.5)
    assert (poll.status, poll.input_tokens, poll.output_tokens, poll.total_tokens) == (
        "completed",
        2100,
        39,
        2139,
    )
    assert poll.file_search_calls is None and poll.chunks == [] and poll.model_steps is None
    # steps list: message step 1270/20 + tool step 830/19, two results of the same file, same score
    assert steps.status is None
    assert (steps.input_tokens, steps.output_tokens, steps.model_steps) == (2100, 39, 2)
    assert steps.extra["run_usage"] is False
    assert (steps.file_search_calls, steps.retrieved_chunks) == (1, 2)
    assert [(c.call_id, c.rank, c.file_id, c.score) for c in steps.chunks] == [
        ("call_pClJkG2IKRb0oPoa0AKoUI5f", 1, "file-DLCAr5NoVMw44WT3FrWWva", 0.7506859036913381),
        ("call_pClJkG2IKRb0oPoa0AKoUI5f", 2, "file-DLCAr5NoVMw44WT3FrWWva", 0.7506859036913381),
    ]
    assert all(c.text and c.text.startswith("This file describes") for c in steps.chunks)
    # the citation lives only in GET /messages, which runmeter does not tap
    assert not any(c.cited for c in steps.chunks)

    for order in ([create, poll, steps], [steps, poll, create], [poll, steps, create]):
        run = order[0]
        for obs in order[1:]:
            run = merge(run, obs)
        assert (run.status, run.input_tokens, run.output_tokens, run.model_steps) == (
            "completed",
            2100,
            39,
            2,
        )
        assert (run.file_search_calls, run.retrieved_chunks, len(run.chunks)) == (1, 2, 2)
        assert (run.max_num_results, run.score_threshold, run.streams) == (2, 0.5, 0)
        assert run.started_at == SENT_WALL


def test_streaming_run_works() -> None:
    ((ex, recs),) = recorded(dotnet("AssistantsTests_StreamingRunWorks.json"))
    rec = only(recs)
    assert (rec.run_id, rec.status, rec.streams, rec.model) == (
        "run_Uy45lNz2P7BpJcqWzQkXl1Bu",
        "completed",
        1,
        "gpt-4o",
    )
    assert (rec.input_tokens, rec.output_tokens, rec.total_tokens, rec.cached_input_tokens) == (38, 35, 73, 0)
    assert rec.model_steps == 1
    # no tools: no file_search call happened, and nothing configures one
    assert (rec.file_search_calls, rec.retrieved_chunks, rec.chunks) == (0, 0, [])
    assert (rec.max_num_results, rec.score_threshold) == (None, None)
    assert rec.ttft_seconds == pytest.approx(at(piece_index(ex, b'"value":"Hello"')))


def test_streaming_tool_call_is_one_run_over_two_streams() -> None:
    seen = recorded(dotnet("AssistantsTests_StreamingToolCall.json"))
    assert [ex.path.rsplit("/", 1)[-1] for ex, _ in seen] == ["runs", "submit_tool_outputs"]
    (_, recs1), (ex2, recs2) = seen
    first, second = only(recs1), only(recs2)
    assert first.run_id == second.run_id == "run_oyfV44CrJXYJkvb2qsd80LvJ"
    assert (first.status, first.input_tokens, first.ttft_seconds, first.model_steps) == (
        "requires_action",
        None,
        None,
        None,
    )
    assert first.thread_id == "thread_6oUGUBxLwhyApwhYBhWjHI5f"
    # the second stream opens with the first stream's step completing (260/12), then 284/42
    assert (second.status, second.input_tokens, second.output_tokens, second.model_steps) == (
        "completed",
        544,
        54,
        2,
    )
    assert second.ttft_seconds == pytest.approx(at(piece_index(ex2, b'"value":"Since"')))

    for a, b in ((first, second), (second, first)):
        run = merge(a, b)
        assert (run.status, run.streams, run.input_tokens, run.output_tokens, run.total_tokens) == (
            "completed",
            2,
            544,
            54,
            598,
        )
        assert run.model_steps == 2
        assert first.duration_seconds is not None and second.duration_seconds is not None
        assert run.duration_seconds == pytest.approx(first.duration_seconds + second.duration_seconds)
        assert run.ttft_seconds == second.ttft_seconds
        assert (run.file_search_calls, run.retrieved_chunks) == (0, 0)


# -- Responses -------------------------------------------------------------------------------------
def test_responses_streamed_without_include() -> None:
    ((ex, recs),) = recorded(dotnet("ResponsesToolTests_FileSearchCallStreaming.json"))
    rec = only(recs)
    assert identity(rec) == ("resp_083ce8e7bd81902a0069bb31247f348190904098cb370d5aae", "responses",
                             "completed", 1, "gpt-4o-mini-2024-07-18")
    assert usage(rec) == (1169, 0, 52, 0, 1221)
    assert (rec.file_search_calls, rec.retrieved_chunks, rec.chunks) == (1, None, [])
    assert (rec.max_num_results, rec.score_threshold, rec.truncation, rec.service_tier) == (
        20,
        0.0,
        "disabled",
        "default",
    )
    assert rec.model_steps is None and rec.thread_id is None
    assert rec.extra["cited_files"] == ["file-NCKrwcbrD1Z2ucn4Mhe1yX"]
    assert rec.ttft_seconds == pytest.approx(at(piece_index(ex, b'"delta":"Tr"')))
    assert rec.duration_seconds == pytest.approx(at(len(ex.pieces) - 1))


def test_responses_non_streamed_without_include() -> None:
    ((_, recs),) = recorded(dotnet("ResponsesToolTests_FileSearch.json"))
    rec = only(recs)
    assert (rec.run_id, rec.status, rec.streams, rec.ttft_seconds) == (
        "resp_07295d436a819e7400690d217fc590819382926370a588d98c",
        "completed",
        0,
        None,
    )
    assert (rec.input_tokens, rec.output_tokens, rec.total_tokens) == (1160, 42, 1202)
    assert (rec.file_search_calls, rec.retrieved_chunks, rec.chunks) == (1, None, [])
    assert rec.model == "gpt-4o-mini-2024-07-18"


def test_pydantic_responses_stream_without_include() -> None:
    ((ex, recs),) = recorded(cassette("test_openai_responses_model_file_search_tool_stream.yaml"))
    rec = only(recs)
    assert (rec.run_id, rec.status, rec.streams, rec.model) == (
        "resp_006dcb10dc68b990006931d756c6fc819ba28a90e19a504ee0",
        "completed",
        1,
        "gpt-4o-2024-08-06",
    )
    assert (rec.input_tokens, rec.output_tokens, rec.total_tokens, rec.cached_input_tokens) == (
        1177,
        37,
        1214,
        0,
    )
    assert (rec.file_search_calls, rec.retrieved_chunks, rec.chunks) == (1, None, [])
    assert rec.ttft_seconds == pytest.approx(at(piece_index(ex, b'"delta":"The"')))


def test_pydantic_responses_with_results() -> None:
    ((_, recs),) = recorded(cassette("test_openai_responses_model_file_search_tool_with_results.yaml"))
    rec = only(recs)
    assert (rec.run_id, rec.status, rec.streams) == (
        "resp_08aa886305ae5628006939ad6b52b4819a9854a8383e4ef8f7",
        "completed",
        0,
    )
    assert (rec.input_tokens, rec.output_tokens, rec.total_tokens) == (1178, 45, 1223)
    assert (rec.file_search_calls, rec.retrieved_chunks) == (1, 1)
    (chunk,) = rec.chunks
    assert (chunk.call_id, chunk.rank, chunk.file_id, chunk.score) == (
        "fs_08aa886305ae5628006939ad6cfa30819a85b07d52d61eb121",
        1,
        "file-2b6dRdmXnzSrqiEbhVJZRU",
        0.9716,
    )
    assert chunk.text == "Paris is the capital of France. It is known for the Eiffel Tower."
    # the message's file_citation names the file → its chunk is cited by file
    assert (chunk.cited, chunk.cited_by) == (True, "file")
    assert (rec.max_num_results, rec.score_threshold) == (20, 0.0)


# -- Chat ------------------------------------------------------------------------------------------
def test_chat_stream_usage_from_final_chunk() -> None:
    ((ex, recs),) = recorded(cassette("test_chat_completion_streaming.yaml"))
    rec = only(recs)
    assert identity(rec) == ("chatcmpl-ASYMZ4oSykiIFK4lXLReDiKyAjsQl", "chat", "completed", 1, "gpt-4-0613")
    assert usage(rec) == (12, 0, 5, 0, 17)
    assert "chat_stream_without_usage" not in rec.extra
    assert (rec.file_search_calls, rec.retrieved_chunks, rec.model_steps) == (None, None, None)
    # the first chunk's content is "" (role only); TTFT is the second chunk
    assert rec.ttft_seconds == pytest.approx(at(1))
    assert piece_index(ex, b'"content":"\\"This"') == 1


def test_chat_stream_cut_before_usage_chunk_is_interrupted() -> None:
    ((ex, _),) = recorded(cassette("test_chat_completion_streaming.yaml"))
    cut = Exchange(ex.method, ex.path, ex.query, ex.request_body, ex.status, ex.content_type, ex.pieces[:7])
    rec = only(replay(cut))
    assert (rec.status, rec.input_tokens, rec.output_tokens) == ("interrupted", None, None)
    assert rec.ttft_seconds == pytest.approx(at(1))


def test_truncated_capture_streams_are_interrupted() -> None:
    for name in ALL:
        for ex in load(name):
            if "event-stream" not in ex.content_type:
                continue
            half = ex.pieces[: len(ex.pieces) // 2]
            cut = Exchange(ex.method, ex.path, ex.query, ex.request_body, ex.status, ex.content_type, half)
            for complete in (True, False):
                recs = replay(cut, complete=complete)
                assert recs is not None
                assert [r.status for r in recs] == ["interrupted"] * len(recs), (name, complete)
                assert all(r.input_tokens is None or not r.extra.get("run_usage") for r in recs)


def test_capture_dir_is_the_shared_one() -> None:
    assert Path(CAPTURES).is_dir()


# -- variants of the recordings (derived in code; each names its change) ----------------------------
def variant(
    ex: Exchange,
    body: bytes,
    *,
    path: str | None = None,
    query: str | None = None,
    request: dict[str, Any] | None = None,
) -> Exchange:
    req = json.dumps(request).encode() if request is not None else ex.request_body
    return Exchange(
        ex.method if path is None else "GET",
        path or ex.path,
        ex.query if query is None else query,
        req,
        ex.status,
        ex.content_type,
        [body],
    )


def stream_of(name: str, path_end: str) -> Exchange:
    return next(ex for ex in load(name) if ex.path.endswith(path_end) and "event-stream" in ex.content_type)


def _cut_after(body: bytes, marker: bytes) -> bytes:
    pos = body.index(marker)
    return body[: body.index(b"\n\n", pos) + 2]


@pytest.mark.parametrize(
    "error",
    [
        b'{"code":"server_error","message":"boom","param":null,"type":"server_error"}',
        b'{"error":{"code":"rate_limit_exceeded","message":"slow down"}}',
    ],
)
def test_assistants_error_event_fails_the_run(error: bytes) -> None:
    ex = stream_of("AssistantsTests_FileSearchStreamingWorks.json", "/runs")
    body = _cut_after(ex.body, b"event: thread.run.in_progress") + b"event: error\ndata: " + error + b"\n\n"
    rec = only(replay(variant(ex, body)))
    assert rec.status == "failed"
    assert rec.error_code == json.loads(error).get("code", json.loads(error).get("error", {}).get("code"))
    assert rec.input_tokens is None


def test_assistants_incomplete_run_and_request_settings() -> None:
    ex = stream_of("AssistantsTests_FileSearchStreamingWorks.json", "/runs")
    run_done = (
        b'"status":"completed","started_at":1761861634,"expires_at":null,"cancelled_at":null,"failed_at":null,'
        b'"completed_at":1761861642'
    )
    body = ex.body.replace(b"event: thread.run.completed", b"event: thread.run.incomplete")
    body = body.replace(run_done, run_done.replace(b'"completed"', b'"incomplete"', 1))
    body = body.replace(
        b'"truncation_strategy":{"type":"auto","last_messages":null},"incomplete_details":null,"usage":{',
        b'"truncation_strategy":{"type":"last_messages","last_messages":6},'
        b'"incomplete_details":{"reason":"max_completion_tokens"},"usage":{',
    )
    request = {
        "assistant_id": "asst_wsbI8mQzYyBDEhJH7F4Eg3tx",
        "stream": True,
        "metadata": {"team": "search"},
        "tools": [{"type": "file_search", "file_search": {"max_num_results": 7}}],
    }
    rec = only(replay(variant(ex, body, request=request)))
    assert (rec.status, rec.incomplete_reason, rec.truncation) == (
        "incomplete",
        "max_completion_tokens",
        "last_messages:6",
    )
    assert rec.max_num_results == 7  # the request's tools override the assistant's
    assert rec.tags == {"team": "search"}
    assert (rec.input_tokens, rec.output_tokens) == (2028, 40)


def test_assistants_default_max_num_results_follows_the_model() -> None:
    ex = stream_of("AssistantsTests_FileSearchStreamingWorks.json", "/runs")
    body = ex.body.replace(b'"model":"gpt-4o"', b'"model":"gpt-3.5-turbo"')
    assert only(replay(variant(ex, body))).max_num_results == 5
    body = ex.body.replace(b'"model":"gpt-4o"', b'"model":"o3"')
    assert only(replay(variant(ex, body))).max_num_results is None


def test_assistants_stream_cut_mid_run_keeps_completed_step_usage() -> None:
    ex = stream_of("AssistantsTests_FileSearchStreamingWorks.json", "/runs")
    body = _cut_after(ex.body, b'"value":"Fil"')
    rec = only(replay(variant(ex, body), complete=False))
    # the tool step (830/20) completed before the cut; the run's own usage never came
    assert (rec.status, rec.input_tokens, rec.output_tokens, rec.extra["run_usage"]) == (
        "interrupted",
        830,
        20,
        False,
    )
    assert (rec.model_steps, rec.file_search_calls, rec.retrieved_chunks) == (1, 1, 1)
    assert rec.ttft_seconds is not None
    assert rec.chunks[0].cited is False  # the citation was in the message that never completed


def test_responses_error_then_failed() -> None:
    ex = stream_of("ResponsesToolTests_FileSearchCallStreaming.json", "/responses")
    head = _cut_after(ex.body, b"event: response.in_progress")
    created = head.split(b"data: ", 1)[1].split(b"\n", 1)[0]
    failed = json.loads(created)
    failed["type"], failed["sequence_number"] = "response.failed", 3
    failed["response"]["status"] = "failed"
    failed["response"]["error"] = {"code": "server_error", "message": "boom"}
    body = (
        head + b'event: error\ndata: {"type":"error","sequence_number":2,"error":{"type":"server_error",'
        b'"code":"server_error","message":"boom","param":null}}\n\n'
        b"event: response.failed\ndata: " + json.dumps(failed).encode() + b"\n\n"
    )
    rec = only(replay(variant(ex, body)))
    assert (rec.status, rec.error_code, rec.input_tokens) == ("failed", "server_error", None)
    assert rec.file_search_calls == 0  # the final output lists no calls


def test_responses_resumed_stream_and_conversation() -> None:
    ex = stream_of("ResponsesToolTests_FileSearchCallStreaming.json", "/responses")
    rid = "resp_083ce8e7bd81902a0069bb31247f348190904098cb370d5aae"
    tail = ex.body[ex.body.index(b"event: response.output_text.delta") :]
    resumed = variant(ex, tail, path=f"/v1/responses/{rid}", query="stream=true&starting_after=8", request={})
    rec = only(replay(resumed))
    assert (rec.run_id, rec.status, rec.input_tokens, rec.output_tokens, rec.ttft_seconds) == (
        rid,
        "completed",
        1169,
        52,
        pytest.approx(at(0)),
    )
    cut = variant(ex, tail[: tail.index(b"event: response.completed")], path=f"/v1/responses/{rid}")
    assert [(r.run_id, r.status) for r in replay(cut) or []] == [(rid, "interrupted")]
    request = {
        "model": "gpt-4o-mini",
        "conversation": "conv_9",
        "user": "u-1",
        "safety_identifier": "s-1",
        "metadata": {"feature": "faq"},
        "stream": True,
    }
    rec = only(replay(variant(ex, ex.body, request=request)))
    assert (rec.thread_id, rec.tags) == (
        "conv_9",
        {"feature": "faq", "user": "u-1", "safety_identifier": "s-1"},
    )
    prev = only(
        replay(
            variant(ex, ex.body.replace(b'"previous_response_id":null', b'"previous_response_id":"resp_0"'))
        )
    )
    assert prev.thread_id == "resp_0"


def test_chat_variants() -> None:
    ex = stream_of("test_chat_completion_streaming.yaml", "/chat/completions")
    no_usage_req = {"model": "gpt-4", "stream": True, "messages": [], "user": "u-2"}
    body = b"".join(p for p in ex.pieces if b'"usage":{' not in p)
    rec = only(replay(variant(ex, body, request=no_usage_req)))
    assert (rec.status, rec.input_tokens, rec.extra) == (
        "completed",
        None,
        {"chat_stream_without_usage": True},
    )
    assert rec.tags == {"user": "u-2"}
    length = ex.body.replace(b'"finish_reason":"stop"', b'"finish_reason":"length"')
    rec = only(replay(variant(ex, length)))
    assert (rec.status, rec.incomplete_reason, rec.output_tokens) == ("incomplete", "length", 5)
    plain = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-2024-08-06",
        "service_tier": "default",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}],
        "usage": {
            "prompt_tokens": 9,
            "completion_tokens": 1,
            "total_tokens": 10,
            "prompt_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 3},
        },
    }
    json_ex = Exchange(
        "POST",
        "/v1/chat/completions",
        "",
        b'{"model":"gpt-4o","max_completion_tokens":50}',
        200,
        "application/json",
        [json.dumps(plain).encode()],
    )
    rec = only(replay(json_ex))
    assert (rec.run_id, rec.status, rec.streams, rec.ttft_seconds) == ("chatcmpl-1", "completed", 0, None)
    assert (rec.input_tokens, rec.cached_input_tokens, rec.cache_write_tokens, rec.output_tokens) == (
        9,
        4,
        3,
        1,
    )
    assert (rec.service_tier, rec.max_completion_tokens) == ("default", 50)


def test_taps_never_raise_and_log_their_own_errors(caplog: pytest.LogCaptureFixture) -> None:
    ex = stream_of("AssistantsTests_StreamingRunWorks.json", "/runs")
    tap = tap_for(ex.method, ex.path, ex.query, ex.request_body, sent_wall=SENT_WALL, sent_ns=SENT_NS)
    assert tap is not None
    tap.response_started(200, ex.content_type, SENT_NS + 1)
    tap.feed(b"".join(ex.pieces[:2]), SENT_NS + 2)
    with caplog.at_level("WARNING", logger="runmeter.taps"):
        tap.feed("not bytes", SENT_NS + 3)  # type: ignore[arg-type]
    assert "failed in feed" in caplog.text
    recs = tap.close(complete=True, now_wall=SENT_WALL + 1, now_ns=SENT_NS + 4)
    assert [(r.run_id, r.status) for r in recs] == [("run_Uy45lNz2P7BpJcqWzQkXl1Bu", "interrupted")]
    assert tap.close(complete=True, now_wall=SENT_WALL + 1, now_ns=SENT_NS + 4) == []  # once only
    never = tap_for("POST", "/v1/responses", "", None, sent_wall=SENT_WALL, sent_ns=SENT_NS)
    assert never is not None and never.close(complete=False, now_wall=SENT_WALL, now_ns=SENT_NS) == []
    err = tap_for("GET", ex.path + "/run_x", "", None, sent_wall=SENT_WALL, sent_ns=SENT_NS)
    assert err is not None
    err.response_started(404, "application/json", SENT_NS)
    err.feed(b'{"error":{"code":"not_found"}}', SENT_NS)
    assert err.close(complete=True, now_wall=SENT_WALL, now_ns=SENT_NS) == []
