"""OpenTelemetry export against the real simulator: spans and metrics equal the stored rows.

The SDK's own ``InMemorySpanExporter`` (through a ``SimpleSpanProcessor``) and ``InMemoryMetricReader``
read what the Recorder exported; the expected values come from the DuckDB store, opened read-only
after ``rec.close()``, never from runmeter's own mapping code.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import openai
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from collector import _otel_names as names
from collector import workload
from collector._otel_hold import RunHold
from collector.otel import OtelExporter, exporter_for, providers_from_environment
from collector.record import RunRecord
from collector.recorder import Recorder
from collector.simulator import Simulator

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class Otel:
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def run_spans(self) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.kind is SpanKind.CLIENT]

    def children(self, parent: ReadableSpan) -> list[ReadableSpan]:
        ctx = parent.get_span_context()
        assert ctx is not None
        return [
            s
            for s in self.spans.get_finished_spans()
            if s.parent is not None and s.parent.span_id == ctx.span_id
        ]

    def points(self, metric: str) -> list[HistogramDataPoint]:
        data = self.reader.get_metrics_data()
        out: list[HistogramDataPoint] = []
        for rm in data.resource_metrics if data is not None else []:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == metric:
                        out.extend(p for p in m.data.data_points if isinstance(p, HistogramDataPoint))
        return out


@pytest.fixture
def otel() -> Iterator[Otel]:
    spans = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader])
    yield Otel(spans, reader, tp, mp)
    tp.shutdown()
    mp.shutdown()


@pytest.fixture
def fx(sim: Simulator) -> workload.Fixture:
    with openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0) as setup_client:
        return workload.setup(setup_client, seed=7, n_documents=3)


def _recorder(path: Path, otel: Otel, **kw: Any) -> Recorder:
    return Recorder(path, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider, **kw)


def _rows(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    with duckdb.connect(str(path), read_only=True) as db:
        cur = db.execute("SELECT * FROM runs")
        cols = [d[0] for d in cur.description]
        runs = {r[0]: dict(zip(cols, r, strict=True)) for r in cur.fetchall()}
        cur = db.execute("SELECT * FROM retrieved_chunks ORDER BY run_id, call_id, rank")
        cols = [d[0] for d in cur.description]
        chunks: dict[str, list[dict[str, Any]]] = {}
        for r in cur.fetchall():
            row = dict(zip(cols, r, strict=True))
            chunks.setdefault(row["run_id"], []).append(row)
    return runs, chunks


def _micros(ts: datetime) -> int:
    return (ts - _EPOCH) // timedelta(microseconds=1)


def _expected_attributes(row: dict[str, Any]) -> dict[str, Any]:
    """The run span's attributes, derived from the stored row alone (None = must be absent)."""
    return {
        "gen_ai.operation.name": "invoke_agent" if row["api"] == "assistants" else "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": row["model"],
        "gen_ai.response.model": row["model"],
        "gen_ai.response.id": row["run_id"],
        "gen_ai.conversation.id": row["thread_id"],
        "gen_ai.agent.id": row["assistant_id"],
        "gen_ai.usage.input_tokens": row["input_tokens"],
        "gen_ai.usage.output_tokens": row["output_tokens"],
        "gen_ai.usage.cache_read.input_tokens": row["cached_input_tokens"],
        "gen_ai.usage.cache_creation.input_tokens": row["cache_write_tokens"],
        "gen_ai.usage.reasoning.output_tokens": row["reasoning_tokens"],
        "gen_ai.openai.response.service_tier": row["service_tier"],
        "runmeter.api": row["api"],
        "runmeter.status": row["status"],
        "runmeter.streams": row["streams"],
        "runmeter.total_tokens": row["total_tokens"],
        "runmeter.retrieved_chunks": row["retrieved_chunks"],
        "runmeter.max_num_results": row["max_num_results"],
        "runmeter.file_search_calls": row["file_search_calls"],
        "runmeter.score_threshold": row["score_threshold"],
        "runmeter.time_to_first_token": row["ttft_seconds"],
        "runmeter.duration": row["duration_seconds"],
        "runmeter.model_steps": row["model_steps"],
        "runmeter.incomplete_reason": row["incomplete_reason"],
        "runmeter.error_code": row["error_code"],
    }


def _check_span(
    otel: Otel, span: ReadableSpan, row: dict[str, Any], chunks: Sequence[dict[str, Any]]
) -> None:
    attrs = dict(span.attributes or {})
    for key, value in _expected_attributes(row).items():
        assert attrs.get(key) == value, key
    assert span.name == f"{attrs['gen_ai.operation.name']} {row['model']}"
    assert span.kind is SpanKind.CLIENT
    assert span.start_time is not None and span.end_time is not None
    assert abs(span.start_time // 1000 - _micros(row["started_at"])) <= 1
    assert abs(span.end_time // 1000 - _micros(row["completed_at"])) <= 1
    if row["streams"]:
        ttfc = attrs["gen_ai.response.time_to_first_chunk"]
        assert isinstance(ttfc, float) and 0 < ttfc <= row["duration_seconds"]
    else:
        assert "gen_ai.response.time_to_first_chunk" not in attrs
    for text_key in ("gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.prompt", "gen_ai.completion"):
        assert text_key not in attrs
    by_call: dict[str, list[dict[str, Any]]] = {}
    for c in chunks:
        by_call.setdefault(c["call_id"], []).append(c)
    kids = otel.children(span)
    assert len(kids) == (row["file_search_calls"] or 0)
    for kid in kids:
        k = dict(kid.attributes or {})
        assert kid.name == "execute_tool file_search" and kid.kind is SpanKind.INTERNAL
        assert (k["gen_ai.operation.name"], k["gen_ai.tool.name"], k["gen_ai.tool.type"]) == (
            "execute_tool",
            "file_search",
            "datastore",
        )
        results = by_call.get(str(k["gen_ai.tool.call.id"]), [])
        assert k["runmeter.file_search.results"] == len(results)
        scores = [c["score"] for c in results]
        assert (k["runmeter.file_search.score.min"], k["runmeter.file_search.score.max"]) == (
            min(scores),
            max(scores),
        )
        assert k["runmeter.file_search.score.mean"] == pytest.approx(sum(scores) / len(scores))
        assert span.start_time <= kid.start_time <= kid.end_time <= span.end_time  # type: ignore[operator]


def _check_metrics(otel: Otel, rows: Sequence[dict[str, Any]]) -> None:
    """Each histogram's count and sum per attribute set equal the rows' values."""

    def key(row: dict[str, Any]) -> tuple[str, str]:
        return ("invoke_agent" if row["api"] == "assistants" else "chat", row["model"])

    def got(metric: str, extra: dict[str, str] | None = None) -> dict[tuple[str, str], tuple[int, float]]:
        out = {}
        for p in otel.points(metric):
            a = dict(p.attributes or {})
            if extra and any(a.get(k) != v for k, v in extra.items()):
                continue
            assert (
                a["gen_ai.provider.name"] == "openai"
                and a["gen_ai.response.model"] == a["gen_ai.request.model"]
            )
            out[(str(a["gen_ai.operation.name"]), str(a["gen_ai.request.model"]))] = (p.count, p.sum)
        return out

    def want(column: str) -> dict[tuple[str, str], tuple[int, float]]:
        out: dict[tuple[str, str], tuple[int, float]] = {}
        for row in rows:
            if row[column] is not None:
                n, s = out.get(key(row), (0, 0))
                out[key(row)] = (n + 1, s + row[column])
        return out

    def approx(d: dict[tuple[str, str], tuple[int, float]]) -> dict[tuple[str, str], Any]:
        return {k: (n, pytest.approx(s)) for k, (n, s) in d.items()}

    assert got(names.GEN_AI_CLIENT_OPERATION_DURATION) == approx(want("duration_seconds"))
    assert got(names.RUNMETER_CLIENT_TIME_TO_FIRST_TOKEN) == approx(want("ttft_seconds"))
    assert got(names.GEN_AI_CLIENT_TOKEN_USAGE, {"gen_ai.token.type": "input"}) == want("input_tokens")
    assert got(names.GEN_AI_CLIENT_TOKEN_USAGE, {"gen_ai.token.type": "output"}) == want("output_tokens")
    streamed = {
        k: n
        for k, (n, _) in want("duration_seconds").items()
        if any(key(r) == k and r["streams"] for r in rows)
    }
    assert {k: n for k, (n, _) in got(names.GEN_AI_CLIENT_OPERATION_TIME_TO_FIRST_CHUNK).items()} == streamed
    (point,) = otel.points(names.GEN_AI_CLIENT_OPERATION_DURATION)[:1]
    assert list(point.explicit_bounds) == list(names.DURATION_BUCKETS)


def _one_run(otel: Otel, path: Path) -> tuple[ReadableSpan, dict[str, Any], list[dict[str, Any]]]:
    runs, chunks = _rows(path)
    spans = otel.run_spans()
    assert len(runs) == 1 and len(spans) == 1, (list(runs), [s.name for s in spans])
    (row,) = runs.values()
    assert spans[0].attributes is not None and spans[0].attributes["gen_ai.response.id"] == row["run_id"]
    return spans[0], row, chunks.get(row["run_id"], [])


# -- against the simulator ------------------------------------------------------------------------------
def test_assistants_file_search_stream(
    sim: Simulator, fx: workload.Fixture, otel: Otel, tmp_path: Path
) -> None:
    db = tmp_path / "rm.duckdb"
    rec = _recorder(db, otel)
    client = rec.instrument(openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0))
    thread = client.beta.threads.create(messages=[{"role": "user", "content": workload.QUESTIONS[0]}])
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=fx.assistants[10]) as stream:
        stream.until_done()
    rec.close()
    client.close()
    span, row, chunks = _one_run(otel, db)
    assert row["status"] == "completed" and row["file_search_calls"] == 1 and row["retrieved_chunks"] == 10
    _check_span(otel, span, row, chunks)
    assert span.attributes is not None
    ttfc = span.attributes["gen_ai.response.time_to_first_chunk"]
    assert isinstance(ttfc, float) and ttfc < row["ttft_seconds"]  # the first chunk comes before any text
    assert span.status.status_code is StatusCode.UNSET
    _check_metrics(otel, [row])


def test_tool_call_run_over_two_streams_is_one_span(
    sim: Simulator, fx: workload.Fixture, otel: Otel, tmp_path: Path
) -> None:
    db = tmp_path / "rm.duckdb"
    rec = _recorder(db, otel)
    client = rec.instrument(openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0))
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Where is order 1234?"}])
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=fx.tool_assistant_id) as stream:
        stream.until_done()
        run = stream.get_final_run()
    assert run.status == "requires_action" and run.required_action is not None
    calls = run.required_action.submit_tool_outputs.tool_calls
    rec.otel.flush()
    assert otel.run_spans() == []  # requires_action is a pause, not the end
    with client.beta.threads.runs.submit_tool_outputs_stream(
        thread_id=thread.id,
        run_id=run.id,
        tool_outputs=[{"tool_call_id": c.id, "output": "shipped"} for c in calls],
    ) as stream:
        stream.until_done()
    rec.close()
    client.close()
    span, row, chunks = _one_run(otel, db)
    assert (row["run_id"], row["streams"], row["status"]) == (run.id, 2, "completed")
    _check_span(otel, span, row, chunks)
    assert span.attributes is not None and span.attributes["runmeter.streams"] == 2
    _check_metrics(otel, [row])


def test_tool_call_run_polled_then_streamed_is_one_span(
    sim: Simulator, fx: workload.Fixture, otel: Otel, tmp_path: Path
) -> None:
    import random

    db = tmp_path / "rm.duckdb"
    rec = _recorder(db, otel)
    client = rec.instrument(openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0))
    workload._tool_run(client, fx, random.Random(1), {"tenant": "acme"})
    rec.close()
    client.close()
    span, row, chunks = _one_run(otel, db)
    assert row["status"] == "completed"
    _check_span(otel, span, row, chunks)
    _check_metrics(otel, [row])


def test_responses_stream(sim: Simulator, fx: workload.Fixture, otel: Otel, tmp_path: Path) -> None:
    db = tmp_path / "rm.duckdb"
    rec = _recorder(db, otel)
    client = rec.instrument(openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0))
    with client.responses.stream(
        model="gpt-5-mini",
        input=workload.QUESTIONS[1],
        tools=[{"type": "file_search", "vector_store_ids": [fx.vector_store_id], "max_num_results": 8}],
    ) as stream:
        stream.get_final_response()
    rec.close()
    client.close()
    span, row, chunks = _one_run(otel, db)
    assert row["api"] == "responses" and row["cached_input_tokens"] and row["reasoning_tokens"]
    _check_span(otel, span, row, chunks)
    _check_metrics(otel, [row])


def test_chat_stream_without_usage_has_no_token_numbers(sim: Simulator, otel: Otel, tmp_path: Path) -> None:
    db = tmp_path / "rm.duckdb"
    rec = _recorder(db, otel)
    client = rec.instrument(openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0))
    for _ in client.chat.completions.create(
        model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "hi"}]
    ):
        pass
    rec.close()
    client.close()
    span, row, chunks = _one_run(otel, db)
    assert row["input_tokens"] is None and row["output_tokens"] is None
    _check_span(otel, span, row, chunks)
    assert span.attributes is not None
    assert not [k for k in span.attributes if k.startswith("gen_ai.usage.")]
    assert otel.points(names.GEN_AI_CLIENT_TOKEN_USAGE) == []
    _check_metrics(otel, [row])


def test_mixed_workload_metrics_equal_rows(
    sim: Simulator, fx: workload.Fixture, otel: Otel, tmp_path: Path
) -> None:
    db = tmp_path / "rm.duckdb"
    rec = _recorder(db, otel)
    client = rec.instrument(openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0))
    counts = workload.run(client, fx, runs=10, seed=3)
    rec.close()
    client.close()
    runs, chunks = _rows(db)
    spans = {str((s.attributes or {})["gen_ai.response.id"]): s for s in otel.run_spans()}
    assert len(otel.run_spans()) == len(runs) == sum(counts.values()) and set(spans) == set(runs)
    for run_id, row in runs.items():
        _check_span(otel, spans[run_id], row, chunks.get(run_id, []))
    _check_metrics(otel, list(runs.values()))


def test_interrupted_stream_never_read_back(
    sim: Simulator, fx: workload.Fixture, otel: Otel, tmp_path: Path
) -> None:
    db = tmp_path / "rm.duckdb"
    rec = _recorder(db, otel, fetch_final=False)
    client = rec.instrument(openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0))
    thread = client.beta.threads.create(messages=[{"role": "user", "content": workload.QUESTIONS[2]}])
    with client.beta.threads.runs.create(
        thread_id=thread.id, assistant_id=fx.assistants[5], stream=True
    ) as s:
        for event in s:
            if event.event == "thread.run.in_progress":
                break  # the app walks away mid-stream
    rec.otel.flush()
    assert otel.run_spans() == []  # held: a read-back may still come
    rec.close()
    client.close()
    span, row, chunks = _one_run(otel, db)
    assert row["status"] == "interrupted"
    _check_span(otel, span, row, chunks)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None and span.attributes["error.type"] == "interrupted"
    (point,) = otel.points(names.GEN_AI_CLIENT_OPERATION_DURATION)
    assert point.attributes is not None and point.attributes["error.type"] == "interrupted"


def test_interrupted_stream_read_back_is_one_span_with_the_final_numbers(
    sim: Simulator, fx: workload.Fixture, otel: Otel, tmp_path: Path
) -> None:
    import time

    db = tmp_path / "rm.duckdb"
    rec = _recorder(db, otel)  # fetch_final on: the Recorder reads the run back off the request path
    client = rec.instrument(openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0))
    thread = client.beta.threads.create(messages=[{"role": "user", "content": workload.QUESTIONS[3]}])
    with client.beta.threads.runs.create(
        thread_id=thread.id, assistant_id=fx.assistants[5], stream=True
    ) as s:
        for event in s:
            if event.event == "thread.run.in_progress":
                break
    deadline = time.monotonic() + 15
    while not otel.run_spans() and time.monotonic() < deadline:
        rec.otel.flush()
        time.sleep(0.05)
    rec.close()
    client.close()
    span, row, chunks = _one_run(otel, db)
    assert row["status"] == "completed" and row["output_tokens"]  # the billed run, not the broken stream
    _check_span(otel, span, row, chunks)
    assert span.status.status_code is StatusCode.UNSET and rec.otel is not None and rec.otel.late == 0
    _check_metrics(otel, [row])


def test_exporter_errors_never_reach_the_application(
    sim: Simulator, otel: Otel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Boom(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            raise RuntimeError("collector down")

    class BoomProcessor(SpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            raise RuntimeError("processor bug")

    otel.tracer_provider.add_span_processor(SimpleSpanProcessor(Boom()))
    otel.tracer_provider.add_span_processor(BoomProcessor())
    db = tmp_path / "rm.duckdb"
    rec = _recorder(db, otel)
    client = rec.instrument(openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0))
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            out = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
            assert out.choices[0].message.content
        rec.close()
    client.close()
    runs, _ = _rows(db)
    assert len(runs) == 2
    assert rec.otel is not None and rec.otel.errors == 2  # the processor's, once per run, caught
    # the metrics still went out, once per run
    assert sum(p.count for p in otel.points(names.GEN_AI_CLIENT_OPERATION_DURATION)) == 2
    assert "could not export the span" in caplog.text


# -- configuration ------------------------------------------------------------------------------------
def test_off_without_configuration_or_when_disabled(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, otel: Otel
) -> None:
    rec = Recorder(tmp_path / "a.duckdb")
    assert rec.otel is None and not any(isinstance(o, OtelExporter) for o in rec.observers)
    rec.close()
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    rec = Recorder(tmp_path / "b.duckdb")
    assert rec.otel is None and not any(isinstance(o, OtelExporter) for o in rec.observers)
    rec.close()
    rec = Recorder(tmp_path / "c.duckdb", otel=False, tracer_provider=otel.tracer_provider)
    assert rec.otel is None
    rec.close()


def test_providers_from_environment() -> None:
    assert providers_from_environment({}) is None
    assert (
        providers_from_environment({"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}) is None
    )
    assert (
        providers_from_environment({"OTEL_SDK_DISABLED": "TRUE", "OTEL_TRACES_EXPORTER": "console"}) is None
    )
    built = providers_from_environment(
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "none", "OTEL_SERVICE_NAME": "shop"}
    )
    assert built is not None
    tp, mp = built
    assert isinstance(tp, TracerProvider) and isinstance(mp, MeterProvider)
    assert tp.resource.attributes["service.name"] == "shop"
    tp.shutdown()
    mp.shutdown()
    exp = exporter_for(env={"OTEL_TRACES_EXPORTER": "console"})
    assert isinstance(exp, OtelExporter)
    exp.close()


# -- the pure parts -----------------------------------------------------------------------------------
def test_pinned_names_match_the_installed_conventions() -> None:
    from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as ga
    from opentelemetry.semconv._incubating.metrics import gen_ai_metrics as gm
    from opentelemetry.semconv.attributes import error_attributes

    for const in (
        "GEN_AI_OPERATION_NAME",
        "GEN_AI_PROVIDER_NAME",
        "GEN_AI_REQUEST_MODEL",
        "GEN_AI_RESPONSE_MODEL",
        "GEN_AI_RESPONSE_ID",
        "GEN_AI_CONVERSATION_ID",
        "GEN_AI_AGENT_ID",
        "GEN_AI_USAGE_INPUT_TOKENS",
        "GEN_AI_USAGE_OUTPUT_TOKENS",
        "GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS",
        "GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS",
        "GEN_AI_USAGE_REASONING_OUTPUT_TOKENS",
        "GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK",
        "GEN_AI_OPENAI_RESPONSE_SERVICE_TIER",
        "GEN_AI_TOKEN_TYPE",
        "GEN_AI_TOOL_NAME",
        "GEN_AI_TOOL_TYPE",
        "GEN_AI_TOOL_CALL_ID",
    ):
        assert getattr(names, const) == getattr(ga, const), const
    for const in (
        "GEN_AI_CLIENT_OPERATION_DURATION",
        "GEN_AI_CLIENT_TOKEN_USAGE",
        "GEN_AI_CLIENT_OPERATION_TIME_TO_FIRST_CHUNK",
    ):
        assert getattr(names, const) == getattr(gm, const), const
    assert names.ERROR_TYPE == error_attributes.ERROR_TYPE
    assert ga.GenAiOperationNameValues.INVOKE_AGENT.value == names.OPERATION_INVOKE_AGENT
    assert ga.GenAiOperationNameValues.EXECUTE_TOOL.value == names.OPERATION_EXECUTE_TOOL
    assert ga.GenAiProviderNameValues.OPENAI.value == names.PROVIDER_OPENAI
    assert ga.GenAiTokenTypeValues.INPUT.value == names.TOKEN_TYPE_INPUT
    assert names.DURATION_BUCKETS[:14] == (
        0.01,
        0.02,
        0.04,
        0.08,
        0.16,
        0.32,
        0.64,
        1.28,
        2.56,
        5.12,
        10.24,
        20.48,
        40.96,
        81.92,
    )


def _obs(
    status: str | None,
    *,
    started: float,
    streams: int = 1,
    out: int | None = None,
    first_chunk: float | None = None,
) -> RunRecord:
    rec = RunRecord(
        run_id="run_1",
        api="assistants",
        status=status,
        started_at=started,
        streams=streams,
        duration_seconds=1.0,
        output_tokens=out,
        first_chunk_seconds=first_chunk,
    )
    if status == "completed":
        rec.completed_at = started + 1.0
        rec.extra["run_usage"] = out is not None
    return rec


def test_hold_merges_a_run_into_one_release() -> None:
    hold = RunHold(hold_seconds=10, steps_grace=0)
    first = _obs("requires_action", started=100.0, first_chunk=0.2)
    second = _obs("completed", started=105.0, out=7, first_chunk=0.3)
    before = replace(second)
    assert hold.offer(first, now=0.0) == [] and hold.held == 1
    (done,) = hold.offer(second, now=1.0)
    assert (done.status, done.streams, done.output_tokens, done.started_at) == ("completed", 2, 7, 100.0)
    assert done.first_chunk_seconds == 0.2  # the first stream's first chunk, not the prevailing side's
    assert second == before  # the observations themselves are untouched (the writer holds them too)
    assert hold.offer(_obs(None, started=106.0, streams=0), now=2.0) == [] and hold.late == 1
    assert hold.held == 0 and hold.next_deadline() is None


def test_hold_releases_interrupted_runs_after_the_hold_or_on_drain() -> None:
    hold = RunHold(hold_seconds=10, steps_grace=0)
    assert hold.offer(_obs("interrupted", started=1.0), now=0.0) == []
    assert hold.offer(replace(_obs("interrupted", started=2.0), run_id="run_2"), now=5.0) == []
    assert hold.next_deadline() == 10.0 and hold.due(9.9) == []
    assert [r.run_id for r in hold.due(10.0)] == ["run_1"]
    assert [r.run_id for r in hold.drain()] == ["run_2"]


def test_hold_waits_for_the_steps_of_a_non_streamed_run_and_bounds_what_it_holds() -> None:
    hold = RunHold(hold_seconds=10, steps_grace=2, max_held=1)
    polled = _obs("completed", started=1.0, streams=0, out=3)
    assert hold.offer(polled, now=0.0) == [] and hold.next_deadline() == 2.0
    steps = _obs(None, started=1.5, streams=0)
    steps.file_search_calls, steps.retrieved_chunks = 0, 0
    (done,) = hold.offer(steps, now=0.5)
    assert (done.status, done.file_search_calls) == ("completed", 0)
    assert hold.offer(replace(_obs("interrupted", started=1.0), run_id="a"), now=0.0) == []
    (evicted,) = hold.offer(replace(_obs("interrupted", started=1.0), run_id="b"), now=0.0)
    assert evicted.run_id == "a" and hold.held == 1
