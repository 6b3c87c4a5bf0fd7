"""Property tests: the taps give the same record however the bytes are cut, re-lined or padded,
ignore events they do not know, and never raise on truncated or garbage input."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_taps_captures import ALL, Exchange, load, replay, without_timing

from collector.record import INTERRUPTED, RunRecord
from collector.taps import tap_for
from collector.taps.sse import SSEDecoder

STREAMS: list[Exchange] = [ex for name in ALL for ex in load(name) if "event-stream" in ex.content_type]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TERMINAL_MARKS = (
    b"event: thread.run.completed",
    b"event: thread.run.requires_action",
    b"event: response.completed",
    b'"usage":{',
)


def records(ex: Exchange, chunks: list[bytes], *, complete: bool = True) -> list[RunRecord]:
    got = replay(ex, chunks, complete=complete)
    assert got is not None
    return got


def baseline(ex: Exchange) -> list[dict[str, object]]:
    return [without_timing(r) for r in records(ex, [ex.body])]


def cut(body: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({0, len(body), *(p % (len(body) + 1) for p in points)})
    return [body[a:b] for a, b in itertools.pairwise(edges)]


def reline(body: bytes, eol: bytes, comments: set[int], split_data: set[int], unknown: set[int]) -> bytes:
    """The stream with other line ends, ``:`` comments before some lines, some ``data:`` JSON split over
    two ``data:`` lines, and unknown events inserted before some events."""
    out: list[bytes] = []
    lines = body.split(b"\n")[:-1]
    for i, line in enumerate(lines):
        if i in comments:
            out.append(b": keep-alive")
        if i in unknown and (i == 0 or lines[i - 1] == b""):
            out += [
                b"event: thread.future.event",
                b'data: {"type":"response.future","id":"x"}',
                b"",
                b'data: {"object":"future.chunk"}',
                b"",
            ]
        if i in split_data and line.startswith(b"data: {"):
            out += [b"data: {", b"data:" + line[len(b"data: {") :]]
        else:
            out.append(line)
    return eol.join(out) + eol


@pytest.mark.parametrize("ex", STREAMS, ids=lambda ex: ex.path.rsplit("/", 1)[-1])
@SETTINGS
@given(
    points=st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=40),
    eol=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    comments=st.sets(st.integers(min_value=0, max_value=400), max_size=30),
    split_data=st.sets(st.integers(min_value=0, max_value=400), max_size=30),
    unknown=st.sets(st.integers(min_value=0, max_value=400), max_size=10),
    inside_eol=st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=40),
)
def test_same_record_however_the_stream_is_cut_and_lined(
    ex: Exchange,
    points: list[int],
    eol: bytes,
    comments: set[int],
    split_data: set[int],
    unknown: set[int],
    inside_eol: list[int],
) -> None:
    body = reline(ex.body, eol, comments, split_data, unknown)
    # Also cut right after line ends: for CRLF that is between the CR and the LF.
    ends = [i + 1 for i, b in enumerate(body) if b == eol[0]]
    points = points + [ends[k % len(ends)] for k in inside_eol]
    assert [without_timing(r) for r in records(ex, cut(body, points))] == baseline(ex)


@pytest.mark.parametrize("ex", STREAMS, ids=lambda ex: ex.path.rsplit("/", 1)[-1])
@SETTINGS
@given(at=st.integers(min_value=0), complete=st.booleans(), tail=st.binary(max_size=40))
def test_truncated_stream_is_interrupted_until_its_terminal_event(
    ex: Exchange, at: int, complete: bool, tail: bytes
) -> None:
    body = ex.body
    mark = max(body.rfind(m) for m in TERMINAL_MARKS)
    terminal_end = body.index(b"\n\n", mark) + 2
    at %= terminal_end  # strictly before the terminal event is complete
    got = records(ex, [body[:at], tail.replace(b"\n", b"").replace(b"\r", b"")], complete=complete)
    assert all(r.status == INTERRUPTED for r in got)
    if ex.path.endswith("submit_tool_outputs"):
        assert [r.run_id for r in got] == ["run_oyfV44CrJXYJkvb2qsd80LvJ"]  # known from the path
    whole = records(ex, [body], complete=complete)
    assert [r.status for r in whole] != [INTERRUPTED]


PATHS = [
    ("POST", "/v1/threads/thread_a/runs"),
    ("POST", "/v1/threads/runs"),
    ("POST", "/v1/threads/thread_a/runs/run_a/submit_tool_outputs"),
    ("GET", "/v1/threads/thread_a/runs/run_a"),
    ("GET", "/v1/threads/thread_a/runs/run_a/steps"),
    ("POST", "/v1/responses"),
    ("GET", "/v1/responses/resp_a"),
    ("POST", "/v1/chat/completions"),
]


@SETTINGS
@given(
    route=st.sampled_from(PATHS),
    ctype=st.sampled_from(["text/event-stream", "application/json", ""]),
    body=st.one_of(
        st.binary(max_size=300),
        st.lists(
            st.sampled_from(
                [
                    b"event: thread.run.completed\n",
                    b"data: {\n",
                    b"data: [1,2]\n",
                    b"data: null\n",
                    b"\n",
                    b"\r",
                    b"event: error\n",
                    b": x\n",
                    b'data: {"id":5,"usage":"x","choices":[1]}\n',
                    b'data: {"response":[],"error":7}\n',
                    b'data: {"id":"run_x","object":"thread.run","usage":[]}\n',
                    b'data: {"delta":{"content":[null]}}\n',
                    b"event: thread.message.delta\n",
                    b"event: response.completed\n",
                ]
            ),
            max_size=30,
        ).map(b"".join),
    ),
    request_body=st.one_of(st.none(), st.binary(max_size=50), st.just(b'{"tools": 5, "metadata": [1]}')),
    complete=st.booleans(),
    status=st.sampled_from([200, 200, 500]),
)
def test_garbage_never_raises(
    route: tuple[str, str], ctype: str, body: bytes, request_body: bytes | None, complete: bool, status: int
) -> None:
    method, path = route
    tap = tap_for(method, path, "", request_body, sent_wall=1.0, sent_ns=10)
    assert tap is not None
    tap.response_started(status, ctype, 20)
    for i in range(0, len(body), 5):
        tap.feed(body[i : i + 5], 30 + i)
    got = tap.close(complete=complete, now_wall=2.0, now_ns=1_000)
    assert isinstance(got, list)
    for rec in got:
        assert isinstance(rec, RunRecord)
        assert rec.duration_seconds is not None and rec.duration_seconds >= 0
        if "event-stream" in ctype:
            assert rec.status in (
                INTERRUPTED,
                "failed",
                "completed",
                "requires_action",
                "incomplete",
                "cancelled",
                "expired",
            )
    if status == 500:
        assert got == []


@SETTINGS
@given(
    pieces=st.lists(
        st.sampled_from(
            [
                b"\r",
                b"\n",
                b"\r\n",
                b"data: a",
                b"data:b",
                b"event: e",
                b": c",
                b"data",
                b"event",
                b"id: 1",
                b"retry: x",
                b"data:  two",
            ]
        ),
        max_size=40,
    ),
    points=st.lists(st.integers(min_value=0, max_value=500), max_size=20),
)
def test_decoder_matches_the_sdk_decoder(pieces: list[bytes], points: list[int]) -> None:
    from openai._streaming import SSEDecoder as SDKDecoder

    body = b"".join(pieces)
    ours: list[tuple[str | None, str]] = []
    decoder = SSEDecoder(
        lambda ev, data: ours.append((ev.decode() if ev is not None else None, b"\n".join(data).decode()))
    )
    for chunk in cut(body, points):
        decoder.feed(chunk)
    theirs = [(sse.event, sse.data) for sse in SDKDecoder().iter_bytes(iter(cut(body, points)))]
    # The SDK also dispatches an event that has only an ``id``; runmeter has no use for those.
    assert [e for e in ours if e[0] or e[1]] == [(e[0] or None, e[1]) for e in theirs if e[0] or e[1]]


def test_unknown_event_types_are_ignored() -> None:
    ex = next(e for e in STREAMS if e.path.endswith("/responses"))
    extra = b'event: response.brand_new\ndata: {"type":"response.brand_new","response":{"id":"zzz"}}\n\n'
    body = ex.body.replace(b"event: response.in_progress", extra + b"event: response.in_progress", 1)
    assert [without_timing(r) for r in records(ex, [body])] == baseline(ex)
    json.loads(extra.split(b"data: ")[1])  # the inserted event itself is well-formed
