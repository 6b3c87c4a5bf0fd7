"""Responses API: ``POST /responses`` (streamed or not), ``GET /responses/{id}`` (incl. resumed streams) and
``POST /responses/{id}/cancel``.

Only lifecycle events, finished output items, file_search progress, annotations and errors are parsed;
the first non-empty ``response.output_text.delta`` is parsed for TTFT, later deltas not at all. The event name
comes from the ``event:`` line, or, if a server omits it, from the ``"type"`` the payload opens with.
"""

from __future__ import annotations

import json
import operator
from typing import Any

from collector.record import RunRecord
from collector.taps.base import (
    FINAL_STATUSES,
    Calls,
    ExchangeTap,
    Request,
    as_float,
    as_str,
    error_code,
    file_search_tool,
    observed_status,
    resolve_citations,
    responses_usage,
    result_chunks,
    set_calls,
    tags_from,
)
from collector.taps.sse import join_data

_TEXT_DELTA = b"response.output_text.delta"
_LIFECYCLE = frozenset({b"response.created", b"response.queued", b"response.in_progress"})
_TERMINAL = frozenset(
    {b"response.completed", b"response.incomplete", b"response.failed", b"response.cancelled"}
)
_ITEM_DONE = b"response.output_item.done"
_ANNOTATION = b"response.output_text.annotation.added"
_SEARCH_PROGRESS = frozenset(
    {
        b"response.file_search_call.in_progress",
        b"response.file_search_call.searching",
        b"response.file_search_call.completed",
    }
)
_TYPE_PREFIX = b'{"type":"'


class ResponsesTap(ExchangeTap):
    """Tap for one Responses exchange (``response_id`` from the path for a retrieve)."""

    skip_after_first_token = operator.methodcaller("startswith", b"event: response.output_text.delta\n")

    def __init__(self, request: Request, *, response_id: str | None) -> None:
        super().__init__(request)
        self._response_id = response_id
        self._response: dict[str, Any] | None = None
        self._terminal = False
        self._items: dict[str, dict[str, Any]] = {}
        self._searches: list[str] = []
        """file_search_call item ids from the progress events: a call seen before its item is done."""
        self._cited_files: set[str] = set()
        self._error_code: str | None = None

    def _on_event(self, event: bytes | None, data: list[bytes]) -> None:
        if event is None:
            event = _sniff_type(data)
        if event == _TEXT_DELTA:
            if self.first_token_ns is None and _delta_has_text(data):
                self._first_token()
        elif event in _TERMINAL or event in _LIFECYCLE:
            obj = self._loads(data)
            if obj is not None and isinstance(obj.get("response"), dict):
                self._on_response(obj["response"], terminal=event in _TERMINAL)
        elif event == _ITEM_DONE:
            obj = self._loads(data)
            item = obj.get("item") if obj is not None else None
            if isinstance(item, dict) and as_str(item.get("id")):
                self._items[item["id"]] = item
        elif event == _ANNOTATION:
            obj = self._loads(data)
            ann = obj.get("annotation") if obj is not None else None
            if isinstance(ann, dict):
                self._annotation(ann)
        elif event in _SEARCH_PROGRESS:
            obj = self._loads(data)
            item_id = as_str(obj.get("item_id")) if obj is not None else None
            if item_id is not None and item_id not in self._searches:
                self._searches.append(item_id)
        elif event == b"error":
            obj = self._loads(data)
            if obj is not None:
                self._error_code = error_code(obj) or "error"

    def _on_json(self, obj: dict[str, Any]) -> None:
        if obj.get("object") == "response":
            self._on_response(obj, terminal=True)

    def _on_response(self, response: dict[str, Any], *, terminal: bool) -> None:
        self._response = response
        self._terminal = self._terminal or terminal

    def _annotation(self, ann: dict[str, Any]) -> None:
        if ann.get("type") == "file_citation" and as_str(ann.get("file_id")):
            self._cited_files.add(ann["file_id"])

    def _records(self, *, complete: bool, end_ns: int) -> list[RunRecord]:
        resp = self._response or {}
        run_id = as_str(resp.get("id")) or self._response_id
        if run_id is None:
            return []
        api_status = as_str(resp.get("status")) if self._terminal or not self.streaming else None
        if self._error_code and api_status not in FINAL_STATUSES:
            api_status = "failed"
        status = observed_status(api_status, streaming=self.streaming, complete=complete and self.whole)
        rec = self._base_record(
            run_id, "responses", final=status in FINAL_STATUSES or status == "interrupted", end_ns=end_ns
        )
        rec.status = status
        body = self.request.json()
        rec.model = as_str(resp.get("model")) or as_str(body.get("model"))
        rec.thread_id = (
            _conversation(resp)
            or _conversation(body)
            or as_str(resp.get("previous_response_id"))
            or as_str(body.get("previous_response_id"))
        )
        usage = responses_usage(resp.get("usage"))
        if usage is not None:
            usage.apply(rec)
        output = resp.get("output")
        items = [i for i in output if isinstance(i, dict)] if isinstance(output, list) and output else []
        seen = {i.get("id") for i in items}
        items += [i for i in self._items.values() if i.get("id") not in seen]
        calls: Calls = {}
        for item in items:
            if item.get("type") == "file_search_call":
                call_id = as_str(item.get("id")) or f"fs#{len(calls)}"
                results = item.get("results")
                calls[call_id] = result_chunks(call_id, results) if isinstance(results, list) else None
            elif item.get("type") == "message":
                for part in item.get("content") or []:
                    for ann in part.get("annotations") or [] if isinstance(part, dict) else []:
                        if isinstance(ann, dict):
                            self._annotation(ann)
        for item_id in self._searches:
            calls.setdefault(item_id, None)
        # A background create answers `queued` with output []: no count is known until a final status.
        set_calls(rec, calls, count_known=self._terminal and api_status in FINAL_STATUSES)
        fs = file_search_tool(resp.get("tools") if isinstance(resp.get("tools"), list) else body.get("tools"))
        if fs is not None:
            mnr = fs.get("max_num_results")
            rec.max_num_results = mnr if isinstance(mnr, int) else None
            ranking = fs.get("ranking_options")
            if isinstance(ranking, dict):
                rec.score_threshold = as_float(ranking.get("score_threshold"))
        rec.truncation = as_str(resp.get("truncation")) or as_str(body.get("truncation"))
        mot = resp.get("max_output_tokens", body.get("max_output_tokens"))
        rec.max_completion_tokens = mot if isinstance(mot, int) and not isinstance(mot, bool) else None
        details = resp.get("incomplete_details")
        rec.incomplete_reason = as_str(details.get("reason")) if isinstance(details, dict) else None
        rec.error_code = self._error_code or error_code(resp.get("error"))
        rec.service_tier = as_str(resp.get("service_tier")) or as_str(body.get("service_tier"))
        rec.tags = tags_from(resp, body)
        rec.extra["cited_files"] = sorted(self._cited_files)
        resolve_citations(rec)
        return [rec]


def _sniff_type(data: list[bytes]) -> bytes | None:
    raw = data[0] if data else b""
    if raw.startswith(_TYPE_PREFIX):
        end = raw.find(b'"', len(_TYPE_PREFIX))
        if end > 0:
            return raw[len(_TYPE_PREFIX) : end]
    try:
        obj = json.loads(join_data(data))
    except ValueError:
        return None
    kind = obj.get("type") if isinstance(obj, dict) else None
    return kind.encode() if isinstance(kind, str) else None


def _delta_has_text(data: list[bytes]) -> bool:
    try:
        obj = json.loads(join_data(data))
    except ValueError:
        return False
    return isinstance(obj, dict) and isinstance(obj.get("delta"), str) and bool(obj["delta"])


def _conversation(obj: dict[str, Any]) -> str | None:
    conv = obj.get("conversation")
    if isinstance(conv, dict):
        return as_str(conv.get("id"))
    return as_str(conv)
