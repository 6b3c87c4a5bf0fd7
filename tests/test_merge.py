"""Merge rules for two observations of one run."""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import fields
from typing import Any

import pytest
from test_taps_captures import SENT_WALL, dotnet, only, recorded

from collector.merge import merge
from collector.record import ChunkRecord, RunRecord
from collector.taps.base import Usage, set_calls

RUN = "run_1"


def obs(
    status: str | None,
    *,
    start: float,
    duration: float,
    streams: int = 1,
    ttft: float | None = None,
    usage: Usage | None = None,
    run_usage: bool = False,
    steps: dict[str, Usage] | None = None,
    **kw: Any,
) -> RunRecord:
    rec = RunRecord(
        run_id=RUN,
        api="assistants",
        status=status,
        streams=streams,
        started_at=start,
        duration_seconds=duration,
        completed_at=start + duration if status else None,
        **kw,
    )
    if ttft is not None:
        rec.ttft_seconds, rec.first_token_at = ttft, start + ttft
    if usage is not None:
        usage.apply(rec)
    rec.extra["run_usage"] = run_usage
    rec.extra["steps"] = dict(steps or {})
    rec.model_steps = len(rec.extra["steps"]) or None
    return rec


def norm(rec: RunRecord) -> dict[str, Any]:
    out = {f.name: getattr(rec, f.name) for f in fields(rec)}
    out["chunks"] = sorted((c.call_id, c.rank, c.file_id, c.score, c.cited, c.cited_by) for c in rec.chunks)
    out["extra"] = {k: sorted(v) if isinstance(v, list) else v for k, v in rec.extra.items()}
    for k in ("duration_seconds", "ttft_seconds"):
        out[k] = None if out[k] is None else round(out[k], 9)
    return out


STEP_A = Usage(260, 0, None, 12, 0, 272)
STEP_B = Usage(284, 0, None, 42, 0, 326)
TOTAL = Usage(544, 0, None, 54, 0, 598)


def tool_call_streams() -> tuple[RunRecord, RunRecord]:
    first = obs("requires_action", start=100.0, duration=2.0, model="gpt-4o", thread_id="thread_1")
    second = obs(
        "completed",
        start=130.0,
        duration=3.0,
        ttft=1.5,
        usage=TOTAL,
        run_usage=True,
        steps={"step_a": STEP_A, "step_b": STEP_B},
        tags={"team": "x"},
    )
    return first, second


def test_submit_tool_outputs_stream_continues_its_run() -> None:
    first, second = tool_call_streams()
    for a, b in ((first, second), (second, first)):
        run = merge(a, b)
        assert (run.status, run.streams) == ("completed", 2)
        assert run.duration_seconds == pytest.approx(5.0)  # 2 + 3: the 28 s of tool time are not the run's
        assert (run.ttft_seconds, run.first_token_at) == (1.5, 131.5)
        assert run.started_at == 100.0
        assert run.completed_at == 133.0
        assert Usage.of(run) == TOTAL
        assert run.model_steps == 2
        assert (run.model, run.thread_id, run.tags) == ("gpt-4o", "thread_1", {"team": "x"})


def test_ttft_comes_from_the_stream_that_carried_the_first_text() -> None:
    first = obs("requires_action", start=100.0, duration=2.0, ttft=0.7)
    second = obs("completed", start=130.0, duration=3.0, ttft=1.5, usage=TOTAL, run_usage=True)
    for a, b in ((first, second), (second, first)):
        assert (merge(a, b).ttft_seconds, merge(a, b).first_token_at) == (0.7, 100.7)


@pytest.mark.parametrize("late", ["interrupted", "in_progress", "queued", None])
def test_a_final_observation_is_never_downgraded(late: str | None) -> None:
    final = obs("completed", start=100.0, duration=3.0, usage=TOTAL, run_usage=True)
    other = obs(
        late,
        start=200.0,
        duration=1.0,
        usage=Usage(260, 0, None, 12, 0, 272) if late else None,
        steps={"step_a": STEP_A},
    )
    for a, b in ((final, other), (other, final)):
        run = merge(a, b)
        assert run.status == "completed"
        assert Usage.of(run) == TOTAL
        assert run.completed_at == 103.0


def test_a_later_final_observation_replaces_an_interrupted_one() -> None:
    broken = obs("interrupted", start=100.0, duration=1.0, steps={"step_a": STEP_A}, usage=STEP_A)
    polled = obs(
        "completed",
        start=140.0,
        duration=0.1,
        streams=0,
        usage=TOTAL,
        run_usage=True,
        incomplete_reason=None,
        error_code=None,
    )
    for a, b in ((broken, polled), (polled, broken)):
        run = merge(a, b)
        assert (run.status, run.streams) == ("completed", 1)
        assert Usage.of(run) == TOTAL
        assert run.duration_seconds == 1.0  # only the streamed exchange counts


def test_requires_action_gives_way_to_what_happened_after_it() -> None:
    paused = obs("requires_action", start=100.0, duration=2.0, steps={"step_a": STEP_A}, usage=STEP_A)
    broken = obs(
        "interrupted",
        start=130.0,
        duration=1.0,
        steps={"step_a": STEP_A, "step_b": STEP_B},
        usage=Usage.sum([STEP_A, STEP_B]),
    )
    for a, b in ((paused, broken), (broken, paused)):
        run = merge(a, b)
        assert run.status == "interrupted"
        # no run-level usage anywhere: the union of completed steps, each counted once
        assert Usage.of(run) == TOTAL
        assert run.model_steps == 2


def test_failed_keeps_its_error_and_the_interrupted_one_does_not_overwrite() -> None:
    failed = obs("failed", start=100.0, duration=1.0, error_code="server_error")
    broken = obs("interrupted", start=90.0, duration=5.0)
    for a, b in ((failed, broken), (broken, failed)):
        run = merge(a, b)
        assert (run.status, run.error_code, run.started_at) == ("failed", "server_error", 90.0)


def test_plain_polls_span_from_first_send_to_last_answer() -> None:
    create = obs("queued", start=100.0, duration=0.2, streams=0)
    poll = obs("completed", start=104.0, duration=0.3, streams=0, usage=TOTAL, run_usage=True)
    for a, b in ((create, poll), (poll, create)):
        run = merge(a, b)
        assert run.duration_seconds == pytest.approx(4.3)
        assert (run.streams, run.status, run.ttft_seconds) == (0, "completed", None)


def chunk(call: str, rank: int, file_id: str, score: float, text: str | None = "t") -> ChunkRecord:
    return ChunkRecord(call_id=call, rank=rank, file_id=file_id, score=score, text=text)


def test_chunks_come_from_whichever_observation_has_results() -> None:
    # A stream that saw the call and the citation but no results, then GET steps with the results.
    stream = obs("completed", start=100.0, duration=3.0, usage=TOTAL, run_usage=True)
    set_calls(stream, {"call_1": None}, count_known=True)
    stream.extra["citations"] = [(4, 1, "file-b")]
    steps = obs(
        None, start=110.0, duration=0.1, streams=0, steps={"step_a": STEP_A, "step_b": STEP_B}, usage=TOTAL
    )
    set_calls(
        steps,
        {"call_1": [chunk("call_1", 1, "file-a", 0.9), chunk("call_1", 2, "file-b", 0.8)]},
        count_known=True,
    )
    assert (stream.retrieved_chunks, steps.retrieved_chunks) == (None, 2)
    for a, b in ((stream, steps), (steps, stream)):
        before = copy.deepcopy((a, b))
        run = merge(a, b)
        assert (a, b) == before  # merge is pure
        assert (run.status, run.file_search_calls, run.retrieved_chunks, run.model_steps) == (
            "completed",
            1,
            2,
            2,
        )
        assert [(c.rank, c.cited, c.cited_by) for c in run.chunks] == [(1, False, None), (2, True, "result")]


def test_responses_file_citations_mark_every_chunk_of_the_file() -> None:
    stream = RunRecord(
        run_id="resp_1",
        api="responses",
        status="completed",
        streams=1,
        started_at=1.0,
        duration_seconds=1.0,
        input_tokens=10,
        output_tokens=2,
    )
    set_calls(stream, {"fs_1": None}, count_known=True)
    stream.extra["cited_files"] = ["file-a"]
    retrieved = RunRecord(
        run_id="resp_1",
        api="responses",
        status="completed",
        streams=0,
        started_at=5.0,
        duration_seconds=0.1,
        input_tokens=10,
        output_tokens=2,
    )
    set_calls(
        retrieved,
        {
            "fs_1": [
                chunk("fs_1", 1, "file-a", 0.9),
                chunk("fs_1", 2, "file-b", 0.5),
                chunk("fs_1", 3, "file-a", 0.4),
            ]
        },
        count_known=True,
    )
    run = merge(stream, retrieved)
    assert [(c.rank, c.cited_by) for c in run.chunks] == [(1, "file"), (2, None), (3, "file")]
    assert norm(run) == norm(merge(retrieved, stream))


def test_two_calls_with_two_marker_sources_cite_the_right_call() -> None:
    rec = obs("completed", start=1.0, duration=1.0)
    set_calls(
        rec,
        {"call_1": [chunk("call_1", 1, "file-a", 0.9)], "call_2": [chunk("call_2", 1, "file-a", 0.7)]},
        count_known=True,
    )
    other = obs(None, start=2.0, duration=1.0, streams=0)
    other.extra["citations"] = [(6, 0, "file-a")]
    other.extra["fs_calls"] = {}
    rec.extra["citations"] = [(4, 0, "file-a")]
    run = merge(rec, other)
    # both markers cite result 0 of the same file; the first number tells the calls apart
    assert [(c.call_id, c.cited) for c in run.chunks] == [("call_1", True), ("call_2", True)]
    only_first = merge(rec, obs(None, start=2.0, duration=1.0, streams=0))
    # one source number, two candidate calls: ambiguous, so nothing is claimed
    assert [c.cited for c in only_first.chunks] == [False, False]


def test_capture_observations_merge_the_same_in_any_order() -> None:
    seen = recorded(dotnet("AssistantsTests_FileSearchWorks.json"))
    records = [only(recs) for _, recs in seen]
    broken = copy.deepcopy(records[1])
    broken.status, broken.extra["run_usage"] = "interrupted", False
    broken.input_tokens = broken.output_tokens = broken.total_tokens = None
    broken.streams, broken.started_at = 1, SENT_WALL + 1
    results = set()
    for order in itertools.permutations([*records, broken]):
        run = order[0]
        for rec in order[1:]:
            run = merge(run, rec)
        assert (run.status, run.input_tokens, run.output_tokens, run.retrieved_chunks) == (
            "completed",
            2100,
            39,
            2,
        )
        assert run.streams == 1
        results.add(repr(norm(run)))
    assert len(results) == 1


def test_merge_accepts_extra_that_went_through_json() -> None:
    # The store keeps ``extra`` as JSON between batches: tuples come back as lists.
    first, second = tool_call_streams()
    second.extra["citations"] = [(4, 0, "file-a")]
    stored = copy.deepcopy(second)
    stored.extra = json.loads(json.dumps(stored.extra))
    assert norm(merge(first, stored)) == norm(merge(first, second))
    twice = merge(merge(first, stored), second)
    assert twice.extra["citations"] == [(4, 0, "file-a")]
    assert Usage.of(twice) == TOTAL and twice.model_steps == 2
