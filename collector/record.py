"""The run record: what one run costs and did, in one vocabulary for every API.

A tap folds the events of one HTTP exchange into an :class:`Observation`; observations of the same
run (two streams of a tool-call run, a later ``runs.retrieve``) merge into one :class:`RunRecord`
(see :mod:`collector.merge`). A number the wire did not carry stays ``None``, never 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Api = Literal["assistants", "responses", "chat"]

TERMINAL_STATUSES = frozenset(
    {"completed", "incomplete", "failed", "cancelled", "expired", "requires_action"}
)
"""Statuses after which the wire says no more about the run's usage (``requires_action`` pauses)."""

INTERRUPTED = "interrupted"
"""Status of a run whose stream broke or was abandoned before a terminal event."""


@dataclass(slots=True)
class ChunkRecord:
    """One file_search result as retrieved (``rank`` is 1-based within its call)."""

    call_id: str
    rank: int
    file_id: str | None
    score: float | None
    content_tokens: int | None = None
    cited: bool = False
    cited_by: Literal["result", "file"] | None = None
    text: str | None = field(default=None, repr=False)
    """Chunk text, held only until its tokens are counted off the request path; never stored."""


@dataclass(slots=True)
class RunRecord:
    """One row of the ``runs`` table plus its retrieved chunks."""

    run_id: str
    api: Api
    model: str | None = None
    status: str | None = None
    thread_id: str | None = None
    assistant_id: str | None = None
    started_at: float | None = None
    """Unix seconds (UTC) the first request of the run was sent."""
    first_token_at: float | None = None
    completed_at: float | None = None
    ttft_seconds: float | None = None
    duration_seconds: float | None = None
    input_tokens: int | None = None
    cached_input_tokens: int | None = None
    cache_write_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    total_tokens: int | None = None
    file_search_calls: int | None = None
    retrieved_chunks: int | None = None
    max_num_results: int | None = None
    score_threshold: float | None = None
    truncation: str | None = None
    max_prompt_tokens: int | None = None
    max_completion_tokens: int | None = None
    incomplete_reason: str | None = None
    error_code: str | None = None
    service_tier: str | None = None
    streams: int = 0
    tags: dict[str, str] = field(default_factory=dict)
    chunks: list[ChunkRecord] = field(default_factory=list)
    model_steps: int | None = None
    """Model invocations that each paid for a whole prompt (Assistants steps; Responses/Chat: NULL)."""
    first_chunk_seconds: float | None = None
    """Seconds from the request to the stream's first body bytes (any chunk; TTFT waits for text).
    Not stored in the runs table; exported as the OpenTelemetry time to first chunk."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Tap-private facts needed for merging; not stored."""
