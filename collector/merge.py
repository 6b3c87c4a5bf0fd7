"""Merge two observations of the same run into one record (pure; neither input is changed).

Rules:
- The observation that prevails for status, usage, ``completed_at``, ``incomplete_reason`` and
  ``error_code`` is the one with the more final status: a final API status (completed, incomplete,
  failed, cancelled, expired) beats any other status, which beats none (a step list). Between equals,
  the one carrying run-level usage wins, then the one sent later. So an ``interrupted`` observation
  never overwrites a final one, and a ``requires_action`` gives way to what happened after it.
- Usage comes from a run-level usage when either side has one, else from the union of the completed
  steps both sides saw (Assistants), else from whichever side has it.
- ``streams`` add up; ``duration_seconds`` adds up over streamed observations only (the app's tool
  time between a run's streams is not the run's), and is the overall span when neither side streamed;
  TTFT comes from the observation that carried the earliest first token; ``started_at`` is the earliest.
- file_search calls and their chunks are the union by call id, results taken from whichever side
  carried them; citations are re-resolved over the merged chunks.
- Other fields: the prevailing side's value, else the other's; tags are combined.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from collector.record import ChunkRecord, RunRecord
from collector.taps.base import FINAL_STATUSES, Calls, Usage, calls_of, resolve_citations, set_calls

__all__ = ["merge"]

_CONFIG = (
    "model",
    "thread_id",
    "assistant_id",
    "max_num_results",
    "score_threshold",
    "truncation",
    "max_prompt_tokens",
    "max_completion_tokens",
    "service_tier",
)


def merge(old: RunRecord, new: RunRecord) -> RunRecord:
    """One record for two observations of ``old.run_id`` (see the module docstring for the rules)."""
    win, lose = (new, old) if _weight(new) >= _weight(old) else (old, new)
    out = replace(win, tags={**lose.tags, **win.tags}, extra={**lose.extra, **win.extra})
    for name in _CONFIG:
        if getattr(out, name) is None:
            setattr(out, name, getattr(lose, name))
    out.streams = old.streams + new.streams
    starts = [t for t in (old.started_at, new.started_at) if t is not None]
    out.started_at = min(starts) if starts else None
    out.duration_seconds = _duration(old, new)
    timed = [r for r in (old, new) if r.first_token_at is not None]
    if timed:
        first = min(timed, key=lambda r: r.first_token_at or 0.0)
        out.first_token_at, out.ttft_seconds = first.first_token_at, first.ttft_seconds
    _merge_usage(out, win, lose)
    _merge_calls(out, win, lose)
    return out


def _weight(rec: RunRecord) -> tuple[int, bool, float]:
    rank = 2 if rec.status in FINAL_STATUSES else 0 if rec.status is None else 1
    return rank, bool(rec.extra.get("run_usage")), rec.started_at or 0.0


def _duration(a: RunRecord, b: RunRecord) -> float | None:
    streamed = [r.duration_seconds for r in (a, b) if r.streams and r.duration_seconds is not None]
    if streamed:
        return sum(streamed)
    spans = [
        (r.started_at, r.started_at + r.duration_seconds)
        for r in (a, b)
        if r.started_at is not None and r.duration_seconds is not None
    ]
    if not spans:
        return None
    return max(end for _, end in spans) - min(start for start, _ in spans)


def _merge_usage(out: RunRecord, win: RunRecord, lose: RunRecord) -> None:
    # extra may have come back from the store as JSON, so tuples arrive as lists
    steps = {k: Usage(*v) for side in (lose, win) for k, v in side.extra.get("steps", {}).items()}
    if steps or "steps" in out.extra:
        out.extra["steps"] = steps
        out.model_steps = len(steps) or None
    elif out.model_steps is None:
        out.model_steps = lose.model_steps
    if win.extra.get("run_usage"):
        usage: Usage | None = Usage.of(win)
    elif lose.extra.get("run_usage"):
        usage = Usage.of(lose)
        out.extra["run_usage"] = True
    elif steps:
        usage = Usage.sum(list(steps.values()))
    else:
        usage = Usage.of(win) if any(v is not None for v in Usage.of(win)) else Usage.of(lose)
    if usage is not None:
        usage.apply(out)
    if out.input_tokens is not None or out.output_tokens is not None:
        out.extra.pop("chat_stream_without_usage", None)


def _merge_calls(out: RunRecord, win: RunRecord, lose: RunRecord) -> None:
    calls: Calls = {}
    for side in (calls_of(lose), calls_of(win)):
        for call_id, chunks in side.items():
            have = calls.get(call_id)
            if chunks is not None and (have is None or _richness(chunks) >= _richness(have)):
                calls[call_id] = [replace(c) for c in chunks]
            elif call_id not in calls:
                calls[call_id] = None
    count_known = win.file_search_calls is not None or lose.file_search_calls is not None
    set_calls(out, calls, count_known=count_known)
    citations: list[tuple[Any, ...]] = []
    for raw in [*lose.extra.get("citations", []), *win.extra.get("citations", [])]:
        marker = tuple(raw)
        if marker not in citations:
            citations.append(marker)
    out.extra["citations"] = citations
    out.extra["cited_files"] = sorted({*lose.extra.get("cited_files", []), *win.extra.get("cited_files", [])})
    resolve_citations(out)


def _richness(chunks: list[ChunkRecord]) -> tuple[int, int, int]:
    return (len(chunks), sum(c.text is not None for c in chunks), sum(c.score is not None for c in chunks))
