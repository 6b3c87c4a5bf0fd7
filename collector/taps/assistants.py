"""Assistants v2: run streams, run objects (create / retrieve / cancel) and run-step lists.

Per event the tap only looks at the ``event:`` name. Text deltas are parsed only until the first
non-empty one (TTFT), step deltas only when they mention ``file_search``; run, completed-step and
completed-message events are parsed whole. Usage comes from the run's terminal event; until then the
sum of the completed steps' usage stands in (``extra["run_usage"]`` tells which).
"""

from __future__ import annotations

import json
import operator
from dataclasses import dataclass, field
from typing import Any

from collector.record import RunRecord
from collector.taps.base import (
    FINAL_STATUSES,
    Calls,
    ExchangeTap,
    Request,
    Usage,
    as_float,
    as_str,
    citation_markers,
    completion_usage,
    error_code,
    file_search_tool,
    observed_status,
    resolve_citations,
    result_chunks,
    set_calls,
    tags_from,
)
from collector.taps.sse import join_data

_MESSAGE_DELTA = b"thread.message.delta"
_STEP_DELTA = b"thread.run.step.delta"
_STEP_DONE = frozenset(
    {
        b"thread.run.step.completed",
        b"thread.run.step.failed",
        b"thread.run.step.cancelled",
        b"thread.run.step.expired",
    }
)
_MESSAGE_DONE = frozenset({b"thread.message.completed", b"thread.message.incomplete"})
_STEP_PREFIX = b"thread.run.step."
_RUN_PREFIX = b"thread.run."


def default_max_num_results(model: str | None) -> int | None:
    """The documented file_search default: 20 for ``gpt-4*``, 5 for ``gpt-3.5-turbo``, else unknown."""
    if not model:
        return None
    if model.startswith("gpt-4"):
        return 20
    if model.startswith("gpt-3.5-turbo"):
        return 5
    return None


@dataclass
class _Run:
    run: dict[str, Any] | None = None
    error_code: str | None = None
    steps: dict[str, Usage] = field(default_factory=dict)
    calls: Calls = field(default_factory=dict)
    citations: list[tuple[int, int, str | None]] = field(default_factory=list)
    saw_steps: bool = False


class AssistantsTap(ExchangeTap):
    """Tap for one Assistants exchange; ``run_id``/``thread_id`` come from the path when it names them."""

    skip_after_first_token = operator.methodcaller("startswith", b"event: thread.message.delta\n")

    def __init__(self, request: Request, *, thread_id: str | None, run_id: str | None) -> None:
        super().__init__(request)
        self._thread_id = thread_id
        self._path_run = run_id
        self._runs: dict[str, _Run] = {}
        self._current = run_id
        self._ttft_run: str | None = None

    # -- streams --------------------------------------------------------------------------------
    def _on_event(self, event: bytes | None, data: list[bytes]) -> None:
        if event == _MESSAGE_DELTA:
            if self.first_token_ns is None and _delta_has_text(data):
                self._first_token()
                self._ttft_run = self._current
            return
        if event is None or event == b"error":
            obj = self._loads(data)
            if obj is not None and (event is not None or "error" in obj):
                self._on_error(obj)
            return
        if event.startswith(_STEP_PREFIX):
            if event in _STEP_DONE:
                obj = self._loads(data)
                if obj is not None:
                    self._on_step(obj)
            elif event == _STEP_DELTA and b'"file_search"' in join_data(data):
                obj = self._loads(data)
                if obj is not None:
                    self._on_step_delta(obj)
            return
        if event.startswith(_RUN_PREFIX):
            obj = self._loads(data)
            if obj is not None:
                self._on_run(obj)
        elif event in _MESSAGE_DONE:
            obj = self._loads(data)
            if obj is not None:
                self._on_message(obj)
        # thread.created, message created/in_progress, unknown events: nothing to record

    # -- plain bodies ---------------------------------------------------------------------------
    def _on_json(self, obj: dict[str, Any]) -> None:
        kind = obj.get("object")
        if kind == "thread.run":
            self._on_run(obj)
        elif kind == "thread.run.step":
            self._on_step(obj)
        elif kind == "list" and self._path_run:
            state = self._state(self._path_run)
            state.saw_steps = True
            items = obj.get("data")
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict) and item.get("object") == "thread.run.step":
                    self._on_step(item)
            if obj.get("has_more"):
                state.saw_steps = False  # a partial page cannot prove there were no more calls

    # -- folding --------------------------------------------------------------------------------
    def _state(self, run_id: str) -> _Run:
        state = self._runs.get(run_id)
        if state is None:
            state = self._runs[run_id] = _Run()
        return state

    def _on_run(self, obj: dict[str, Any]) -> None:
        run_id = as_str(obj.get("id"))
        if run_id is None:
            return
        self._current = run_id
        state = self._state(run_id)
        state.run = obj
        code = error_code(obj.get("last_error"))
        if code:
            state.error_code = code

    def _on_step(self, obj: dict[str, Any]) -> None:
        run_id = as_str(obj.get("run_id")) or self._current
        if run_id is None:
            return
        state = self._state(run_id)
        state.saw_steps = True
        step_id = as_str(obj.get("id"))
        usage = completion_usage(obj.get("usage"))
        if step_id and usage is not None and obj.get("status") == "completed":
            state.steps[step_id] = usage
        details = obj.get("step_details")
        tool_calls = details.get("tool_calls") if isinstance(details, dict) else None
        for call in tool_calls if isinstance(tool_calls, list) else []:
            if not isinstance(call, dict) or call.get("type") != "file_search":
                continue
            call_id = as_str(call.get("id")) or f"{step_id}#{len(state.calls)}"
            fs = call.get("file_search")
            results = fs.get("results") if isinstance(fs, dict) else None
            if isinstance(results, list) and (results or state.calls.get(call_id) is None):
                state.calls[call_id] = result_chunks(call_id, results)
            else:
                state.calls.setdefault(call_id, None)

    def _on_step_delta(self, obj: dict[str, Any]) -> None:
        # Deltas carry `results: []` even when results follow, so they only prove the call exists.
        if self._current is None:
            return
        delta = obj.get("delta")
        details = delta.get("step_details") if isinstance(delta, dict) else None
        tool_calls = details.get("tool_calls") if isinstance(details, dict) else None
        state = self._state(self._current)
        for call in tool_calls if isinstance(tool_calls, list) else []:
            if isinstance(call, dict) and call.get("type") == "file_search" and as_str(call.get("id")):
                state.calls.setdefault(call["id"], None)

    def _on_message(self, obj: dict[str, Any]) -> None:
        run_id = as_str(obj.get("run_id")) or self._current
        content = obj.get("content")
        if run_id is None or not isinstance(content, list):
            return
        state = self._state(run_id)
        for part in content:
            text = part.get("text") if isinstance(part, dict) else None
            annotations = text.get("annotations") if isinstance(text, dict) else None
            for ann in annotations if isinstance(annotations, list) else []:
                if isinstance(ann, dict) and ann.get("type") == "file_citation":
                    cite = ann.get("file_citation")
                    state.citations.extend(
                        citation_markers(
                            ann.get("text"), cite.get("file_id") if isinstance(cite, dict) else None
                        )
                    )

    def _on_error(self, obj: dict[str, Any]) -> None:
        run_id = self._current or self._path_run
        if run_id is None:
            return
        state = self._state(run_id)
        state.error_code = error_code(obj) or "error"
        if state.run is None:
            state.run = {}
        state.run = {**state.run, "status": "failed"}

    # -- records --------------------------------------------------------------------------------
    def _records(self, *, complete: bool, end_ns: int) -> list[RunRecord]:
        if not self._runs and self._path_run and self.streaming:
            self._state(self._path_run)  # a stream that broke before its first event
        if self._ttft_run is None and self.first_token_ns is not None:
            self._ttft_run = self._current or self._path_run
        body = self.request.json()
        return [
            self._record(run_id, state, body, complete=complete, end_ns=end_ns)
            for run_id, state in self._runs.items()
        ]

    def _record(
        self, run_id: str, state: _Run, body: dict[str, Any], *, complete: bool, end_ns: int
    ) -> RunRecord:
        run = state.run or {}
        status = observed_status(
            as_str(run.get("status")), streaming=self.streaming, complete=complete and self.whole
        )
        if state.run is None and not self.streaming:
            status = None if self.whole else status  # a steps list says nothing about the run's status
        final = status in FINAL_STATUSES or status in ("requires_action", "interrupted")
        rec = self._base_record(run_id, "assistants", final=final, end_ns=end_ns)
        if run_id != self._ttft_run:
            rec.ttft_seconds = rec.first_token_at = None
        rec.status = status
        rec.model = as_str(run.get("model")) or as_str(body.get("model"))
        rec.thread_id = as_str(run.get("thread_id")) or self._thread_id
        rec.assistant_id = as_str(run.get("assistant_id")) or as_str(body.get("assistant_id"))
        usage = completion_usage(run.get("usage"))
        rec.extra["run_usage"] = usage is not None
        if usage is None:
            usage = Usage.sum(list(state.steps.values()))
        if usage is not None:
            usage.apply(rec)
        rec.extra["steps"] = dict(state.steps)
        rec.model_steps = len(state.steps) or None
        count_known = state.saw_steps and (
            status in FINAL_STATUSES or status == "requires_action" or not self.streaming
        )
        set_calls(rec, state.calls, count_known=count_known)
        tools = body.get("tools") if isinstance(body.get("tools"), list) else run.get("tools")
        fs = file_search_tool(tools)
        if fs is not None:
            mnr = fs.get("max_num_results")
            rec.max_num_results = mnr if isinstance(mnr, int) else default_max_num_results(rec.model)
            ranking = fs.get("ranking_options")
            if isinstance(ranking, dict):
                rec.score_threshold = as_float(ranking.get("score_threshold"))
        rec.truncation = _truncation(run.get("truncation_strategy") or body.get("truncation_strategy"))
        rec.max_prompt_tokens = _opt_int(run, body, "max_prompt_tokens")
        rec.max_completion_tokens = _opt_int(run, body, "max_completion_tokens")
        details = run.get("incomplete_details")
        rec.incomplete_reason = as_str(details.get("reason")) if isinstance(details, dict) else None
        rec.error_code = state.error_code
        rec.tags = tags_from(run, body)
        rec.extra["citations"] = list(state.citations)
        resolve_citations(rec)
        return rec


def _delta_has_text(data: list[bytes]) -> bool:
    raw = join_data(data)
    if b'"value"' not in raw:
        return False
    try:
        obj = json.loads(raw)
        for part in obj["delta"]["content"]:
            if part.get("type") == "text" and part["text"].get("value"):
                return True
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    return False


def _truncation(ts: Any) -> str | None:
    if not isinstance(ts, dict):
        return None
    kind = as_str(ts.get("type"))
    n = ts.get("last_messages")
    return f"{kind}:{n}" if kind == "last_messages" and isinstance(n, int) else kind


def _opt_int(run: dict[str, Any], body: dict[str, Any], key: str) -> int | None:
    v = run.get(key) if key in run else body.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) else None
