"""Chat Completions: ``POST /chat/completions``, streamed (``data:`` lines only) or not.

Chunks are parsed until the first non-empty ``choices[0].delta.content``; after that a chunk is only
parsed when it is not plainly a content chunk (``"usage":null`` and ``"finish_reason":null``), which
leaves the ``finish_reason`` chunk and the final usage chunk.
"""

from __future__ import annotations

from typing import Any

from collector.record import RunRecord
from collector.taps.base import (
    FINAL_STATUSES,
    ExchangeTap,
    Request,
    as_str,
    completion_usage,
    error_code,
    observed_status,
    tags_from,
)
from collector.taps.sse import join_data

_PLAIN = ((b'"usage":null', b'"usage": null'), (b'"finish_reason":null', b'"finish_reason": null'))
_INCOMPLETE = frozenset({"length", "content_filter"})


class ChatTap(ExchangeTap):
    """Tap for one Chat Completions exchange."""

    @staticmethod
    def skip_after_first_token(block: bytes) -> bool:
        """A plain content chunk: no finish reason, no usage object, no error (compact JSON, as the
        service sends it; anything else is parsed)."""
        return b'"finish_reason":null' in block and b'"usage":{' not in block and b'"error"' not in block

    def __init__(self, request: Request) -> None:
        super().__init__(request)
        self._id: str | None = None
        self._model: str | None = None
        self._finish: str | None = None
        self._usage: Any = None
        self._service_tier: str | None = None
        self._error_code: str | None = None

    def _on_event(self, event: bytes | None, data: list[bytes]) -> None:
        if self.first_token_ns is not None:
            raw = join_data(data)
            if (_PLAIN[0][0] in raw or _PLAIN[0][1] in raw) and (_PLAIN[1][0] in raw or _PLAIN[1][1] in raw):
                return
        obj = self._loads(data)
        if obj is not None:
            self._on_chunk(obj, streamed=True)

    def _on_json(self, obj: dict[str, Any]) -> None:
        self._on_chunk(obj, streamed=False)

    def _on_chunk(self, obj: dict[str, Any], *, streamed: bool) -> None:
        if obj.get("error"):
            self._error_code = error_code(obj) or "error"
            return
        if "choices" not in obj:
            return  # not a completion (chunk): nothing runmeter knows how to read
        self._id = self._id or as_str(obj.get("id"))
        self._model = as_str(obj.get("model")) or self._model
        self._service_tier = as_str(obj.get("service_tier")) or self._service_tier
        if obj.get("usage") is not None:
            self._usage = obj["usage"]
        choices = obj.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return
        first = choices[0]
        finish = as_str(first.get("finish_reason"))
        if finish:
            self._finish = finish
        if streamed and self.first_token_ns is None:
            delta = first.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("content"), str) and delta["content"]:
                self._first_token()

    def _records(self, *, complete: bool, end_ns: int) -> list[RunRecord]:
        if self._id is None:
            return []
        if self._error_code:
            api_status: str | None = "failed"
        elif self._finish in _INCOMPLETE:
            api_status = "incomplete"
        elif self._finish:
            api_status = "completed"
        else:
            api_status = None
        body = self.request.json()
        if (
            self.streaming
            and api_status in ("completed", "incomplete")
            and not self.done
            and _wants_usage(body)
            and self._usage is None
        ):
            api_status = None  # the usage chunk (after any finish_reason) had not come when the bytes stopped
        status = observed_status(api_status, streaming=self.streaming, complete=complete and self.whole)
        rec = self._base_record(
            self._id, "chat", final=status in FINAL_STATUSES or status == "interrupted", end_ns=end_ns
        )
        rec.status = status
        rec.model = self._model or as_str(body.get("model"))
        usage = completion_usage(self._usage)
        if usage is not None:
            usage.apply(rec)
        elif self.streaming and not _wants_usage(body):
            rec.extra["chat_stream_without_usage"] = True
        if self._finish in _INCOMPLETE:
            rec.incomplete_reason = self._finish
        rec.error_code = self._error_code
        rec.service_tier = self._service_tier
        mct = body.get("max_completion_tokens", body.get("max_tokens"))
        rec.max_completion_tokens = mct if isinstance(mct, int) and not isinstance(mct, bool) else None
        rec.tags = tags_from({}, body)
        return [rec]


def _wants_usage(body: dict[str, Any]) -> bool:
    opts = body.get("stream_options")
    return isinstance(opts, dict) and opts.get("include_usage") is True
