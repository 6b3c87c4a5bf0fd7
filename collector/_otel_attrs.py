"""A run record as OpenTelemetry data: span names, attributes, times and metric points (pure).

:func:`describe` maps one (merged, final) :class:`~collector.record.RunRecord` onto the GenAI
semantic conventions pinned in :mod:`collector._otel_names`:

* the run span: ``{operation} {model}``, kind CLIENT; operation ``chat`` for Chat Completions and
  Responses (as the openai-v2 instrumentation names them), ``invoke_agent`` for an Assistants run
  (with ``gen_ai.agent.id`` = the assistant). Times are the record's own: ``started_at`` to
  ``completed_at`` (else ``started_at + duration_seconds``), so a tool-call run's span covers the
  app's tool time between its two streams while ``runmeter.duration`` (and the duration metric) is
  the recorded sum of the streams.
* a child span per file_search call, ``execute_tool file_search``, INTERNAL, with the call id, the
  number of results and a summary of their scores. The wire does not time a call, so the child spans
  the run's start to its first text (the retrieval happened before it), else to the run's end.
* a number the wire did not carry is left out, never sent as 0. No prompt, output or chunk text, no
  keys: only ids, counts, times and scores.
* ``error.type``: the API's error code for a ``failed`` run (else ``failed``), ``cancelled``,
  ``expired``, and ``interrupted`` for a run whose stream broke off and was never read back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from collector import _otel_names as n
from collector.record import INTERRUPTED, ChunkRecord, RunRecord
from collector.taps.base import calls_of

__all__ = ["RunTelemetry", "SpanData", "describe", "error_type"]

Attr = str | bool | int | float


@dataclass(frozen=True, slots=True)
class SpanData:
    """One span to start and end, all in one go."""

    name: str
    start_ns: int
    end_ns: int
    attributes: Mapping[str, Attr]


@dataclass(frozen=True, slots=True)
class RunTelemetry:
    """Everything one run emits: its span, its file_search children and its metric points."""

    span: SpanData
    children: tuple[SpanData, ...]
    error_type: str | None
    metric_attributes: Mapping[str, str]
    duration: float | None
    time_to_first_chunk: float | None
    time_to_first_token: float | None
    tokens: tuple[tuple[str, int], ...]
    """``(gen_ai.token.type, count)`` for each count the wire carried."""


_ERROR_STATUSES = frozenset({"failed", "cancelled", "expired", INTERRUPTED})


def error_type(rec: RunRecord) -> str | None:
    """The ``error.type`` of a run, ``None`` when it did not end in error."""
    if rec.status not in _ERROR_STATUSES:
        return None
    if rec.status == "failed":
        return rec.error_code or "failed"
    return rec.status


def describe(rec: RunRecord) -> RunTelemetry | None:
    """The telemetry of one run, or ``None`` when the record has no start time to place it."""
    if rec.started_at is None:
        return None
    start_ns = _ns(rec.started_at)
    end = rec.completed_at
    if end is None and rec.duration_seconds is not None:
        end = rec.started_at + rec.duration_seconds
    end_ns = max(start_ns, _ns(end) if end is not None else start_ns)
    operation = n.OPERATION_INVOKE_AGENT if rec.api == "assistants" else n.OPERATION_CHAT
    err = error_type(rec)

    common: dict[str, str] = {n.GEN_AI_OPERATION_NAME: operation, n.GEN_AI_PROVIDER_NAME: n.PROVIDER_OPENAI}
    if rec.model:
        common[n.GEN_AI_REQUEST_MODEL] = rec.model
        common[n.GEN_AI_RESPONSE_MODEL] = rec.model
    metric_attributes = dict(common)
    if err is not None:
        metric_attributes[n.ERROR_TYPE] = err

    attrs: dict[str, Attr] = dict(metric_attributes)
    attrs[n.GEN_AI_RESPONSE_ID] = rec.run_id
    attrs[n.RUNMETER_API] = rec.api
    attrs[n.RUNMETER_STREAMS] = rec.streams
    _put(attrs, {
        n.GEN_AI_CONVERSATION_ID: rec.thread_id,
        n.GEN_AI_AGENT_ID: rec.assistant_id,
        n.GEN_AI_USAGE_INPUT_TOKENS: rec.input_tokens,
        n.GEN_AI_USAGE_OUTPUT_TOKENS: rec.output_tokens,
        n.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: rec.cached_input_tokens,
        n.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: rec.cache_write_tokens,
        n.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: rec.reasoning_tokens,
        n.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK: rec.first_chunk_seconds,
        n.GEN_AI_OPENAI_RESPONSE_SERVICE_TIER: rec.service_tier,
        n.RUNMETER_STATUS: rec.status,
        n.RUNMETER_TOTAL_TOKENS: rec.total_tokens,
        n.RUNMETER_RETRIEVED_CHUNKS: rec.retrieved_chunks,
        n.RUNMETER_MAX_NUM_RESULTS: rec.max_num_results,
        n.RUNMETER_FILE_SEARCH_CALLS: rec.file_search_calls,
        n.RUNMETER_SCORE_THRESHOLD: rec.score_threshold,
        n.RUNMETER_TIME_TO_FIRST_TOKEN: rec.ttft_seconds,
        n.RUNMETER_DURATION: rec.duration_seconds,
        n.RUNMETER_MODEL_STEPS: rec.model_steps,
        n.RUNMETER_INCOMPLETE_REASON: rec.incomplete_reason,
        n.RUNMETER_ERROR_CODE: rec.error_code,
    })

    child_end = end_ns
    if rec.first_token_at is not None:
        child_end = min(end_ns, max(start_ns, _ns(rec.first_token_at)))
    children = tuple(
        _call_span(call_id, chunks, start_ns, child_end)
        for call_id, chunks in calls_of(rec).items()
    )
    tokens = tuple(
        (kind, count)
        for kind, count in ((n.TOKEN_TYPE_INPUT, rec.input_tokens), (n.TOKEN_TYPE_OUTPUT, rec.output_tokens))
        if count is not None
    )
    name = f"{operation} {rec.model}" if rec.model else operation
    return RunTelemetry(
        span=SpanData(name, start_ns, end_ns, attrs),
        children=children,
        error_type=err,
        metric_attributes=metric_attributes,
        duration=rec.duration_seconds,
        time_to_first_chunk=rec.first_chunk_seconds,
        time_to_first_token=rec.ttft_seconds,
        tokens=tokens,
    )


def _call_span(call_id: str, chunks: Sequence[ChunkRecord] | None, start_ns: int, end_ns: int) -> SpanData:
    attrs: dict[str, Attr] = {
        n.GEN_AI_OPERATION_NAME: n.OPERATION_EXECUTE_TOOL,
        n.GEN_AI_PROVIDER_NAME: n.PROVIDER_OPENAI,
        n.GEN_AI_TOOL_NAME: n.TOOL_FILE_SEARCH,
        n.GEN_AI_TOOL_TYPE: n.TOOL_TYPE_DATASTORE,
        n.GEN_AI_TOOL_CALL_ID: call_id,
    }
    if chunks is not None:  # None: the wire did not carry this call's results
        attrs[n.RUNMETER_FS_RESULTS] = len(chunks)
        scores = [c.score for c in chunks if c.score is not None]
        if scores:
            attrs[n.RUNMETER_FS_SCORE_MIN] = min(scores)
            attrs[n.RUNMETER_FS_SCORE_MAX] = max(scores)
            attrs[n.RUNMETER_FS_SCORE_MEAN] = sum(scores) / len(scores)
    return SpanData(f"{n.OPERATION_EXECUTE_TOOL} {n.TOOL_FILE_SEARCH}", start_ns, end_ns, attrs)


def _put(attrs: dict[str, Attr], values: Mapping[str, Attr | None]) -> None:
    for key, value in values.items():
        if value is not None and value != "":
            attrs[key] = value


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)
