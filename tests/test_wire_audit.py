"""Wire facts of /work/shared/reference/openai-wire.md, one test each, fed as bytes straight to the taps.

Each test names the section of openai-wire.md it checks. The recordings cover the happy paths (see
test_taps_captures.py); these cover the statuses, error shapes, token-detail locations and
file_search shapes the recordings do not contain, with exact numbers.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from collector.merge import merge
from collector.record import RunRecord
from collector.taps import tap_for

SENT_WALL = 1_700_000_000.0
SENT_NS = 1_000_000_000
MS = 1_000_000


# -- plumbing --------------------------------------------------------------------------------------
def exchange(
    method: str,
    path: str,
    chunks: list[bytes],
    *,
    request: dict[str, Any] | None = None,
    ctype: str = "text/event-stream; charset=utf-8",
    complete: bool = True,
    query: str = "",
    later: float = 0.0,
) -> list[RunRecord]:
    """Feed ``chunks`` (one every 10 ms, the head at 100 ms) through the tap for a request sent
    ``later`` seconds after ``SENT_WALL``."""
    body = json.dumps(request).encode() if request is not None else None
    tap = tap_for(method, path, query, body, sent_wall=SENT_WALL + later, sent_ns=SENT_NS)
    assert tap is not None
    now = SENT_NS + 100 * MS
    tap.response_started(200, ctype, now)
    for c in chunks:
        now += 10 * MS
        tap.feed(c, now)
    return tap.close(complete=complete, now_wall=SENT_WALL + 60, now_ns=now + 5_000 * MS)


def one(records: list[RunRecord]) -> RunRecord:
    assert len(records) == 1, records
    return records[0]


def ev(name: str, obj: Any) -> bytes:
    """An event as the Assistants and Responses APIs send it."""
    return (
        b"event: " + name.encode() + b"\ndata: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
    )


def chunk(obj: Any) -> bytes:
    """A Chat Completions chunk (no ``event:`` line)."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def tokens(rec: RunRecord) -> tuple[int | None, ...]:
    return (
        rec.input_tokens,
        rec.cached_input_tokens,
        rec.cache_write_tokens,
        rec.output_tokens,
        rec.reasoning_tokens,
        rec.total_tokens,
    )


NO_TOKENS = (None,) * 6

# -- Assistants (§2) ---------------------------------------------------------------------------------
THREAD, RUN_ID = "thread_1", "run_1"
RUNS = f"/v1/threads/{THREAD}/runs"
DONE = b"event: done\ndata: [DONE]\n\n"


def a_usage(p: int, c: int, cached: int, reasoning: int, *, spelling: str = "prompt_token_details") -> dict:
    return {
        "prompt_tokens": p,
        "completion_tokens": c,
        "total_tokens": p + c,
        spelling: {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


def a_run(status: str, usage: dict | None = None, **kw: Any) -> dict[str, Any]:
    return {
        "id": RUN_ID,
        "object": "thread.run",
        "thread_id": THREAD,
        "assistant_id": "asst_1",
        "model": "gpt-4o",
        "status": status,
        "usage": usage,
        "last_error": None,
        "incomplete_details": None,
        "tools": [{"type": "file_search", "file_search": {"ranking_options": {"score_threshold": 0.0}}}],
        **kw,
    }


def a_step(
    step_id: str, usage: dict | None, calls: list[dict] | None = None, *, status: str = "completed"
) -> dict:
    details: dict[str, Any] = (
        {"type": "tool_calls", "tool_calls": calls}
        if calls is not None
        else {"type": "message_creation", "message_creation": {"message_id": "msg_1"}}
    )
    return {
        "id": step_id,
        "object": "thread.run.step",
        "run_id": RUN_ID,
        "thread_id": THREAD,
        "type": details["type"],
        "status": status,
        "step_details": details,
        "usage": usage,
    }


def fs_call(call_id: str, results: list[dict] | None) -> dict[str, Any]:
    fs: dict[str, Any] = {"ranking_options": {"ranker": "default_2024_08_21", "score_threshold": 0.0}}
    if results is not None:
        fs["results"] = results
    return {"id": call_id, "type": "file_search", "file_search": fs}


def a_result(file_id: str, score: float, text: str | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {"file_id": file_id, "file_name": f"{file_id}.txt", "score": score, "attributes": {}}
    if text is not None:
        r["content"] = [{"type": "text", "text": text}]
    return r


def message_delta(value: str, annotations: list | None = None) -> bytes:
    text: dict[str, Any] = {"value": value}
    if annotations is not None:
        text["annotations"] = annotations
    return ev(
        "thread.message.delta",
        {
            "id": "msg_1",
            "object": "thread.message.delta",
            "delta": {"content": [{"index": 0, "type": "text", "text": text}]},
        },
    )


def opening() -> list[bytes]:
    return [
        ev("thread.run.created", a_run("queued")),
        ev("thread.run.queued", a_run("queued")),
        ev("thread.run.in_progress", a_run("in_progress")),
    ]


@pytest.mark.parametrize("spelling", ["prompt_token_details", "prompt_tokens_details"])
def test_assistants_usage_details_in_either_spelling(spelling: str) -> None:
    # §2.4: the wire spells it prompt_token_details; Chat's plural spelling must also be read.
    usage = a_usage(3000, 500, 1024, 384, spelling=spelling)
    rec = one(
        exchange("POST", RUNS, [*opening(), ev("thread.run.completed", a_run("completed", usage)), DONE])
    )
    assert rec.status == "completed"
    assert tokens(rec) == (3000, 1024, None, 500, 384, 3500)


def test_assistants_failed_run_with_last_error_and_no_usage() -> None:
    # §2.4: last_error {code, message}; usage stays null when nothing ran.
    failed = a_run("failed", None, last_error={"code": "rate_limit_exceeded", "message": "slow"})
    rec = one(exchange("POST", RUNS, [*opening(), ev("thread.run.failed", failed), DONE]))
    assert (rec.status, rec.error_code, rec.extra["run_usage"]) == ("failed", "rate_limit_exceeded", False)
    assert tokens(rec) == NO_TOKENS


def test_assistants_failed_run_keeps_its_usage() -> None:
    failed = a_run("failed", a_usage(700, 3, 0, 0), last_error={"code": "server_error", "message": "x"})
    rec = one(exchange("POST", RUNS, [*opening(), ev("thread.run.failed", failed), DONE]))
    assert (rec.status, rec.error_code) == ("failed", "server_error")
    assert tokens(rec) == (700, 0, None, 3, 0, 703)


@pytest.mark.parametrize("status", ["cancelled", "expired"])
def test_assistants_cancelled_and_expired_runs(status: str) -> None:
    # §2.2: thread.run.cancelling then .cancelled; .expired. Both are final; usage is the run's.
    events = [*opening()]
    if status == "cancelled":
        events.append(ev("thread.run.cancelling", a_run("cancelling")))
    events += [ev(f"thread.run.{status}", a_run(status, a_usage(120, 0, 0, 0))), DONE]
    rec = one(exchange("POST", RUNS, events))
    assert rec.status == status
    assert tokens(rec) == (120, 0, None, 0, 0, 120)
    assert rec.completed_at is not None


def test_assistants_stream_that_ends_at_cancelling_is_interrupted() -> None:
    events = [*opening(), ev("thread.run.cancelling", a_run("cancelling"))]
    rec = one(exchange("POST", RUNS, events))
    assert (rec.status, *tokens(rec)) == ("interrupted", *NO_TOKENS)


def test_assistants_requires_action_has_null_usage() -> None:
    # §2.3: a function-tool stream ends at requires_action (usage null), then done.
    paused = a_run("requires_action", None, required_action={"type": "submit_tool_outputs"})
    rec = one(exchange("POST", RUNS, [*opening(), ev("thread.run.requires_action", paused), DONE]))
    assert (rec.status, rec.model_steps, rec.extra["run_usage"]) == ("requires_action", None, False)
    assert tokens(rec) == NO_TOKENS


def test_assistants_results_without_include_count_but_carry_no_text() -> None:
    # §2.4: without include, results list file_id/file_name/score but no content.
    results = [a_result("file-a", 0.91), a_result("file-b", 0.55), a_result("file-a", 0.42)]
    step = a_step("step_1", a_usage(800, 20, 0, 0), [fs_call("call_1", results)])
    events = [
        *opening(),
        ev(
            "thread.run.step.delta",
            {
                "id": "step_1",
                "object": "thread.run.step.delta",
                "delta": {
                    "step_details": {
                        "type": "tool_calls",
                        "tool_calls": [{"index": 0, **fs_call("call_1", [])}],
                    }
                },
            },
        ),
        ev("thread.run.step.completed", step),
        ev("thread.run.completed", a_run("completed", a_usage(800, 20, 0, 0))),
        DONE,
    ]
    rec = one(exchange("POST", RUNS, events))
    assert (rec.file_search_calls, rec.retrieved_chunks) == (1, 3)
    assert [(c.call_id, c.rank, c.file_id, c.score, c.text) for c in rec.chunks] == [
        ("call_1", 1, "file-a", 0.91, None),
        ("call_1", 2, "file-b", 0.55, None),
        ("call_1", 3, "file-a", 0.42, None),
    ]


def test_assistants_step_delta_alone_proves_a_call_not_its_results() -> None:
    # §2.4: the delta has results: [] even when results follow; cut before step.completed.
    delta = {
        "id": "step_1",
        "object": "thread.run.step.delta",
        "delta": {
            "step_details": {"type": "tool_calls", "tool_calls": [{"index": 0, **fs_call("call_1", [])}]}
        },
    }
    rec = one(exchange("POST", RUNS, [*opening(), ev("thread.run.step.delta", delta)], complete=False))
    assert (rec.status, rec.file_search_calls, rec.retrieved_chunks) == ("interrupted", 1, None)


def test_assistants_step_usage_only_from_completed_steps() -> None:
    # §2.4 / §8: step usage is null until .completed; a failed step adds nothing to the stand-in sum.
    events = [
        *opening(),
        ev("thread.run.step.completed", a_step("step_1", a_usage(830, 20, 128, 0))),
        ev("thread.run.step.failed", a_step("step_2", a_usage(999, 9, 0, 0), status="failed")),
    ]
    rec = one(exchange("POST", RUNS, events, complete=False))
    assert (rec.status, rec.extra["run_usage"], rec.model_steps) == ("interrupted", False, 1)
    assert tokens(rec) == (830, 128, None, 20, 0, 850)


def test_assistants_run_usage_beats_the_step_sum() -> None:
    # §2.4: the run's own usage is authoritative; the step sum only stands in until it arrives.
    events = [
        *opening(),
        ev("thread.run.step.completed", a_step("step_1", a_usage(830, 20, 0, 0))),
        ev("thread.run.step.completed", a_step("step_2", a_usage(1198, 20, 0, 0))),
        ev("thread.run.completed", a_run("completed", a_usage(2028, 40, 0, 0))),
        DONE,
    ]
    rec = one(exchange("POST", RUNS, events))
    assert (tokens(rec), rec.model_steps, rec.extra["run_usage"]) == ((2028, 0, None, 40, 0, 2068), 2, True)


def test_assistants_ttft_skips_empty_and_annotation_only_deltas() -> None:
    # §2.4: TTFT is the first thread.message.delta whose text.value is non-empty.
    events = [
        *opening(),
        ev(
            "thread.message.created",
            {
                "id": "msg_1",
                "object": "thread.message",
                "run_id": RUN_ID,
                "status": "in_progress",
                "content": [],
            },
        ),
        message_delta("", annotations=[]),
        message_delta("Hi"),
        message_delta(" there"),
        ev("thread.run.completed", a_run("completed", a_usage(10, 2, 0, 0))),
        DONE,
    ]
    rec = one(exchange("POST", RUNS, events))
    # head at 100 ms, pieces every 10 ms: "Hi" is the 6th piece
    assert rec.ttft_seconds == pytest.approx(0.160)
    assert rec.first_token_at == pytest.approx(SENT_WALL + 0.160)


def test_assistants_anything_after_done_is_ignored() -> None:
    # §1: after data: [DONE] the SDK stops reading.
    late = ev("thread.run.failed", a_run("failed", None, last_error={"code": "server_error", "message": ""}))
    events = [*opening(), ev("thread.run.completed", a_run("completed", a_usage(5, 1, 0, 0))), DONE, late]
    rec = one(exchange("POST", RUNS, events))
    assert (rec.status, rec.error_code, rec.input_tokens) == ("completed", None, 5)


def test_assistants_incomplete_by_max_prompt_tokens() -> None:
    # §2.4: incomplete_details.reason is max_completion_tokens | max_prompt_tokens.
    run = a_run(
        "incomplete",
        a_usage(4000, 0, 0, 0),
        incomplete_details={"reason": "max_prompt_tokens"},
        max_prompt_tokens=4000,
    )
    rec = one(exchange("POST", RUNS, [*opening(), ev("thread.run.incomplete", run), DONE]))
    assert (rec.status, rec.incomplete_reason, rec.max_prompt_tokens) == (
        "incomplete",
        "max_prompt_tokens",
        4000,
    )
    assert tokens(rec) == (4000, 0, None, 0, 0, 4000)


def test_assistants_steps_list_page_with_has_more() -> None:
    # §2.1: GET .../steps (with include[]): a partial page proves neither the call count nor all usage.
    step = a_step("step_1", a_usage(830, 19, 0, 0), [fs_call("call_1", [a_result("file-a", 0.75, "x")])])
    page = {"object": "list", "data": [step], "first_id": "step_1", "last_id": "step_1", "has_more": True}
    rec = one(
        exchange("GET", f"{RUNS}/{RUN_ID}/steps", [json.dumps(page).encode()], ctype="application/json")
    )
    assert rec.status is None
    assert (rec.input_tokens, rec.output_tokens, rec.extra["run_usage"]) == (830, 19, False)
    assert (rec.file_search_calls, rec.retrieved_chunks) == (1, 1)
    empty: dict[str, Any] = {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": True,
    }
    rec = one(
        exchange("GET", f"{RUNS}/{RUN_ID}/steps", [json.dumps(empty).encode()], ctype="application/json")
    )
    assert (rec.file_search_calls, rec.retrieved_chunks) == (None, None)
    done = {**empty, "has_more": False}
    rec = one(
        exchange("GET", f"{RUNS}/{RUN_ID}/steps", [json.dumps(done).encode()], ctype="application/json")
    )
    assert (rec.file_search_calls, rec.retrieved_chunks) == (0, 0)


def test_assistants_tool_run_over_two_streams_counts_each_step_once() -> None:
    # §2.3: a file_search step completes in stream 1, the function step pauses the run; stream 2 opens
    # with the function step completing and ends with the run usage (= the sum of all steps).
    fs_step = a_step("step_fs", a_usage(830, 20, 0, 0), [fs_call("call_fs", [a_result("file-a", 0.7, "t")])])
    fn_step = a_step(
        "step_fn",
        a_usage(900, 12, 0, 0),
        [{"id": "call_fn", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
    )
    msg_step = a_step("step_msg", a_usage(1000, 30, 0, 0))
    first = one(
        exchange(
            "POST",
            RUNS,
            [
                *opening(),
                ev("thread.run.step.completed", fs_step),
                ev("thread.run.requires_action", a_run("requires_action", None)),
                DONE,
            ],
        )
    )
    assert (first.status, first.input_tokens, first.extra["run_usage"]) == ("requires_action", 830, False)
    submit = f"{RUNS}/{RUN_ID}/submit_tool_outputs"
    tail = [
        ev("thread.run.step.completed", fn_step),
        ev("thread.run.queued", a_run("queued")),
        ev("thread.run.in_progress", a_run("in_progress")),
        ev("thread.run.step.completed", msg_step),
    ]
    second = one(
        exchange(
            "POST",
            submit,
            [*tail, ev("thread.run.completed", a_run("completed", a_usage(2730, 62, 0, 0))), DONE],
            later=30.0,
        )
    )
    cut = one(exchange("POST", submit, tail, complete=False, later=30.0))
    for a, b in ((first, second), (second, first)):
        run = merge(a, b)
        assert (run.status, run.streams, run.model_steps) == ("completed", 2, 3)
        assert tokens(run) == (2730, 0, None, 62, 0, 2792)
        assert (run.file_search_calls, run.retrieved_chunks) == (1, 1)
    for a, b in ((first, cut), (cut, first)):
        run = merge(a, b)
        assert (run.status, run.model_steps) == ("interrupted", 3)
        assert tokens(run) == (2730, 0, None, 62, 0, 2792)  # 830 + 900 + 1000, each step once


# -- Responses (§3) ----------------------------------------------------------------------------------
RESP = "resp_1"


def r_response(status: str, usage: dict | None = None, output: list | None = None, **kw: Any) -> dict:
    return {
        "id": RESP,
        "object": "response",
        "status": status,
        "model": "gpt-5-mini-2025-08-07",
        "output": output or [],
        "usage": usage,
        "error": None,
        "incomplete_details": None,
        "tools": [
            {
                "type": "file_search",
                "vector_store_ids": ["vs_1"],
                "filters": None,
                "max_num_results": 20,
                "ranking_options": {"ranker": "auto", "score_threshold": 0.0},
            }
        ],
        **kw,
    }


CAP4_USAGE = {
    "input_tokens": 3748,
    "input_tokens_details": {"cached_tokens": 2304},
    "output_tokens": 543,
    "output_tokens_details": {"reasoning_tokens": 448},
    "total_tokens": 4291,
}


class Seq:
    """Responses events with a strictly increasing sequence_number."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, kind: str, **payload: Any) -> bytes:
        obj = {"type": kind, "sequence_number": self.n, **payload}
        self.n += 1
        return ev(kind, obj)


def fs_item(item_id: str, status: str, results: list | None, queries: list[str] | None = None) -> dict:
    return {
        "id": item_id,
        "type": "file_search_call",
        "status": status,
        "queries": queries or [],
        "results": results,
    }


def r_result(file_id: str, score: float, text: str) -> dict:
    return {
        "attributes": {},
        "file_id": file_id,
        "filename": f"{file_id}.txt",
        "score": score,
        "text": text,
        "vector_store_id": "vs_1",
    }


def r_head(s: Seq) -> list[bytes]:
    return [
        s("response.created", response=r_response("in_progress")),
        s("response.in_progress", response=r_response("in_progress")),
    ]


def test_responses_cached_and_reasoning_tokens() -> None:
    # §3.5 (CAP-4 numbers): cached ⊂ input, reasoning ⊂ output, total = input + output.
    s = Seq()
    rec = one(
        exchange(
            "POST",
            "/v1/responses",
            [*r_head(s), s("response.completed", response=r_response("completed", CAP4_USAGE))],
        )
    )
    assert rec.status == "completed"
    assert tokens(rec) == (3748, 2304, None, 543, 448, 4291)


def test_responses_cache_write_tokens_when_present() -> None:
    # §11: input_tokens_details.cache_write_tokens exists in SDK 3.57.
    usage = {**CAP4_USAGE, "input_tokens_details": {"cached_tokens": 2304, "cache_write_tokens": 1000}}
    s = Seq()
    rec = one(
        exchange(
            "POST",
            "/v1/responses",
            [*r_head(s), s("response.completed", response=r_response("completed", usage))],
        )
    )
    assert tokens(rec) == (3748, 2304, 1000, 543, 448, 4291)


def test_responses_usage_is_null_until_the_terminal_event() -> None:
    # §3.5: usage is null in created / in_progress; a stream cut there carries no tokens.
    s = Seq()
    rec = one(exchange("POST", "/v1/responses", r_head(s)))
    assert (rec.status, *tokens(rec)) == ("interrupted", *NO_TOKENS)
    assert rec.completed_at is not None


def test_responses_incomplete_with_reason_and_usage() -> None:
    # §3.6: response.incomplete, incomplete_details.reason.
    resp = r_response(
        "incomplete", CAP4_USAGE, incomplete_details={"reason": "max_output_tokens"}, max_output_tokens=543
    )
    s = Seq()
    rec = one(exchange("POST", "/v1/responses", [*r_head(s), s("response.incomplete", response=resp)]))
    assert (rec.status, rec.incomplete_reason, rec.max_completion_tokens) == (
        "incomplete",
        "max_output_tokens",
        543,
    )
    assert tokens(rec) == (3748, 2304, None, 543, 448, 4291)


def test_responses_failed_with_null_usage_and_error_code() -> None:
    # §3.5/§3.6: response.failed when nothing ran: usage null, response.error {code, message}.
    resp = r_response("failed", None, error={"code": "rate_limit_exceeded", "message": "slow"})
    s = Seq()
    rec = one(exchange("POST", "/v1/responses", [*r_head(s), s("response.failed", response=resp)]))
    assert (rec.status, rec.error_code, *tokens(rec)) == ("failed", "rate_limit_exceeded", *NO_TOKENS)


@pytest.mark.parametrize(
    "error",
    [
        {"error": {"type": "server_error", "code": "server_error", "message": "boom", "param": None}},
        {"code": "server_error", "message": "boom", "param": None},
    ],
    ids=["nested", "flat"],
)
def test_responses_error_event_alone_fails_the_run(error: dict) -> None:
    # §3.6: the nested shape makes the SDK raise before response.failed arrives, so the stream ends
    # right after the error event; the flat shape is yielded. Either way the run failed.
    s = Seq()
    rec = one(exchange("POST", "/v1/responses", [*r_head(s), s("error", **error)], complete=False))
    assert (rec.status, rec.error_code, *tokens(rec)) == ("failed", "server_error", *NO_TOKENS)


def test_responses_streamed_with_include_counts_results() -> None:
    # §3.4: with include, results are in output_item.done and again in response.completed.
    results = [r_result("file-a", 0.97, "alpha"), r_result("file-b", 0.61, "beta")]
    done_item = fs_item("fs_1", "completed", results, ["q1", "q2", "q3"])
    msg = {
        "id": "msg_1",
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [
            {
                "type": "output_text",
                "text": "x",
                "annotations": [{"type": "file_citation", "file_id": "file-b", "filename": "b", "index": 1}],
            }
        ],
    }
    s = Seq()
    events = [
        *r_head(s),
        s("response.output_item.added", output_index=0, item=fs_item("fs_1", "in_progress", None)),
        s("response.file_search_call.in_progress", output_index=0, item_id="fs_1"),
        s("response.file_search_call.searching", output_index=0, item_id="fs_1"),
        s("response.file_search_call.completed", output_index=0, item_id="fs_1"),
        s("response.output_item.done", output_index=0, item=done_item),
        s("response.output_text.delta", item_id="msg_1", output_index=1, content_index=0, delta="x"),
        s("response.completed", response=r_response("completed", CAP4_USAGE, [done_item, msg])),
    ]
    rec = one(exchange("POST", "/v1/responses", events, request={"include": ["file_search_call.results"]}))
    # one item with three queries is one call
    assert (rec.file_search_calls, rec.retrieved_chunks) == (1, 2)
    assert [(c.call_id, c.rank, c.file_id, c.score, c.text, c.cited) for c in rec.chunks] == [
        ("fs_1", 1, "file-a", 0.97, "alpha", False),
        ("fs_1", 2, "file-b", 0.61, "beta", True),
    ]
    assert rec.ttft_seconds == pytest.approx(0.100 + 0.010 * 8)


def test_responses_two_calls_one_without_results() -> None:
    # §3.4: calls = file_search_call items; chunks are only known when every call carried results.
    a = fs_item("fs_a", "completed", [r_result("file-a", 0.9, "t")])
    b = fs_item("fs_b", "completed", None)
    s = Seq()
    rec = one(
        exchange(
            "POST",
            "/v1/responses",
            [*r_head(s), s("response.completed", response=r_response("completed", CAP4_USAGE, [a, b]))],
        )
    )
    assert (rec.file_search_calls, rec.retrieved_chunks, len(rec.chunks)) == (2, None, 1)


def test_responses_stream_cut_after_the_search_still_counts_the_call() -> None:
    # §3.3/§3.4: the file_search_call.* progress events carry the item_id; a stream that breaks after
    # the search completed (before output_item.done) still saw one call, results unknown.
    s = Seq()
    events = [
        *r_head(s),
        s("response.output_item.added", output_index=0, item=fs_item("fs_1", "in_progress", None)),
        s("response.file_search_call.in_progress", output_index=0, item_id="fs_1"),
        s("response.file_search_call.searching", output_index=0, item_id="fs_1"),
        s("response.file_search_call.completed", output_index=0, item_id="fs_1"),
    ]
    rec = one(exchange("POST", "/v1/responses", events, complete=False))
    assert (rec.status, rec.file_search_calls, rec.retrieved_chunks) == ("interrupted", 1, None)
    # and the completed stream still counts it once
    done_item = fs_item("fs_1", "completed", None, ["q"])
    events += [
        s("response.output_item.done", output_index=0, item=done_item),
        s("response.completed", response=r_response("completed", CAP4_USAGE, [done_item])),
    ]
    rec = one(exchange("POST", "/v1/responses", events))
    assert (rec.status, rec.file_search_calls, rec.retrieved_chunks) == ("completed", 1, None)


def test_responses_background_create_does_not_claim_zero_calls() -> None:
    # §3.1: a background create answers queued with output []: nothing is known yet about the calls.
    queued = r_response("queued", None, background=True)
    rec = one(
        exchange(
            "POST",
            "/v1/responses",
            [json.dumps(queued).encode()],
            ctype="application/json",
            request={"model": "gpt-5-mini", "background": True},
        )
    )
    assert (rec.status, rec.file_search_calls, rec.retrieved_chunks, *tokens(rec)) == (
        "queued",
        None,
        None,
        *NO_TOKENS,
    )
    done_item = fs_item("fs_1", "completed", [r_result("file-a", 0.5, "t")])
    final = r_response("completed", CAP4_USAGE, [done_item])
    later = one(
        exchange(
            "GET", f"/v1/responses/{RESP}", [json.dumps(final).encode()], ctype="application/json", later=20.0
        )
    )
    for a, b in ((rec, later), (later, rec)):
        run = merge(a, b)
        assert (run.status, run.file_search_calls, run.retrieved_chunks) == ("completed", 1, 1)
        assert tokens(run) == (3748, 2304, None, 543, 448, 4291)


def test_responses_cancel_records_the_cancelled_status() -> None:
    # §3.1: POST /v1/responses/{id}/cancel answers with the Response, status cancelled, usage so far.
    cancelled = r_response("cancelled", CAP4_USAGE, background=True)
    rec = one(
        exchange(
            "POST",
            f"/v1/responses/{RESP}/cancel",
            [json.dumps(cancelled).encode()],
            ctype="application/json",
            later=5.0,
        )
    )
    assert (rec.run_id, rec.status, rec.streams) == (RESP, "cancelled", 0)
    assert tokens(rec) == (3748, 2304, None, 543, 448, 4291)
    queued = one(
        exchange(
            "POST",
            "/v1/responses",
            [json.dumps(r_response("queued", None)).encode()],
            ctype="application/json",
        )
    )
    for a, b in ((queued, rec), (rec, queued)):
        assert (merge(a, b).status, merge(a, b).input_tokens) == ("cancelled", 3748)


def test_responses_without_event_lines_reads_the_type() -> None:
    # §3.1: the SDK dispatches on "type"; a server that omits event: lines is read the same.
    s = Seq()
    events = [
        *r_head(s),
        s("response.output_text.delta", item_id="m", output_index=0, content_index=0, delta="Hi"),
        s("response.completed", response=r_response("completed", CAP4_USAGE)),
    ]
    stripped = [b"\n".join(line for line in e.split(b"\n") if not line.startswith(b"event:")) for e in events]
    rec = one(exchange("POST", "/v1/responses", stripped))
    assert (rec.status, *tokens(rec)) == ("completed", 3748, 2304, None, 543, 448, 4291)
    assert rec.ttft_seconds == pytest.approx(0.130)


# -- Chat Completions (§4) ---------------------------------------------------------------------------
CHAT = "/v1/chat/completions"
WANTS_USAGE = {"model": "o3", "stream": True, "stream_options": {"include_usage": True}, "messages": []}


def c_chunk(
    content: str | None = None, finish: str | None = None, *, usage: Any = None, choices: bool = True
) -> bytes:
    obj: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "o3-2025-04-16",
        "choices": [],
        "usage": usage,
    }
    if choices:
        delta = {} if content is None else {"content": content}
        obj["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
    return chunk(obj)


C_USAGE = {
    "prompt_tokens": 2000,
    "completion_tokens": 700,
    "total_tokens": 2700,
    "prompt_tokens_details": {"cached_tokens": 1536, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 640,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}
C_DONE = b"data: [DONE]\n\n"


def chat_stream(finish: str = "stop") -> list[bytes]:
    return [
        c_chunk(""),
        c_chunk("Hi"),
        c_chunk(" there"),
        c_chunk(finish=finish),
        c_chunk(usage=C_USAGE, choices=False),
        C_DONE,
    ]


def test_chat_usage_chunk_details() -> None:
    # §4: the usage chunk (choices []) after finish_reason; prompt_tokens_details / completion_tokens_details.
    rec = one(exchange("POST", CHAT, chat_stream(), request=WANTS_USAGE))
    assert (rec.status, rec.model) == ("completed", "o3-2025-04-16")
    assert tokens(rec) == (2000, 1536, None, 700, 640, 2700)
    assert rec.ttft_seconds == pytest.approx(0.120)  # the "" chunk is not a token


def test_chat_without_include_usage_has_no_tokens() -> None:
    # §4: usage only with stream_options.include_usage; every normal chunk has usage null.
    body = [c for c in chat_stream() if b'"usage":{' not in c]
    rec = one(exchange("POST", CHAT, body, request={**WANTS_USAGE, "stream_options": None}))
    assert (rec.status, *tokens(rec)) == ("completed", *NO_TOKENS)
    assert rec.extra == {"chat_stream_without_usage": True}


@pytest.mark.parametrize("finish", ["stop", "length", "content_filter"])
def test_chat_cut_between_finish_and_usage_is_interrupted(finish: str) -> None:
    # §4: "if the stream is cut off, the usage chunk may never arrive" — whatever the finish reason,
    # a stream that asked for usage and lost it did not reach its end.
    body = chat_stream(finish)[:4]
    rec = one(exchange("POST", CHAT, body, request=WANTS_USAGE, complete=False))
    assert (rec.status, *tokens(rec)) == ("interrupted", *NO_TOKENS)


@pytest.mark.parametrize("finish", ["length", "content_filter"])
def test_chat_length_and_content_filter_are_incomplete(finish: str) -> None:
    rec = one(exchange("POST", CHAT, chat_stream(finish), request=WANTS_USAGE))
    assert (rec.status, rec.incomplete_reason) == ("incomplete", finish)
    assert tokens(rec) == (2000, 1536, None, 700, 640, 2700)


def test_chat_error_chunk_mid_stream_fails_the_run() -> None:
    # §1: a data payload with a truthy top-level "error" makes the SDK raise APIError.
    err = chunk({"error": {"message": "overloaded", "type": "server_error", "code": "server_error"}})
    rec = one(
        exchange(
            "POST",
            CHAT,
            [c_chunk(""), c_chunk("Hi"), c_chunk(" a"), err],
            request=WANTS_USAGE,
            complete=False,
        )
    )
    assert (rec.status, rec.error_code, *tokens(rec)) == ("failed", "server_error", *NO_TOKENS)


def test_chat_data_after_done_is_ignored() -> None:
    extra = c_chunk(usage={**C_USAGE, "prompt_tokens": 1}, choices=False)
    rec = one(exchange("POST", CHAT, [*chat_stream(), extra], request=WANTS_USAGE))
    assert tokens(rec) == (2000, 1536, None, 700, 640, 2700)


# -- SSE framing (§1) --------------------------------------------------------------------------------
def test_sse_framing_variants_give_the_same_numbers() -> None:
    # §1: CR / LF / CRLF, ":" comments, multi-line data joined with "\n", "data:" without a space.
    base = chat_stream()
    expected = one(exchange("POST", CHAT, base, request=WANTS_USAGE))
    body = b"".join(base)
    usage_line = c_chunk(usage=C_USAGE, choices=False)[len(b"data: ") : -2]
    cut = usage_line.index(b',"object"') + 1  # between two members: valid JSON once re-joined
    split = b"data:" + usage_line[:cut] + b"\ndata:" + usage_line[cut:] + b"\n\n"
    variants = {
        "crlf": body.replace(b"\n", b"\r\n"),
        "cr": body.replace(b"\n", b"\r"),
        "comments": b": keep-alive\n\n" + body.replace(b"\n\n", b"\n: ping\n\n"),
        "multi-line": body.replace(c_chunk(usage=C_USAGE, choices=False), split),
    }
    for name, raw in variants.items():
        got = one(
            exchange("POST", CHAT, [raw[i : i + 13] for i in range(0, len(raw), 13)], request=WANTS_USAGE)
        )
        assert (got.status, tokens(got)) == (expected.status, tokens(expected)), name


def test_sse_trailing_event_without_blank_line_is_not_dispatched() -> None:
    # §1: an event is dispatched at a blank line; the SDK drops a last event that has none.
    s = Seq()
    final = s("response.completed", response=r_response("completed", CAP4_USAGE))[:-1]  # one \n only
    rec = one(exchange("POST", "/v1/responses", [*r_head(s), final]))
    assert (rec.status, rec.input_tokens) == ("interrupted", None)
