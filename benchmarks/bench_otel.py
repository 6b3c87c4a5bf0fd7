"""Per-run cost of the OpenTelemetry export: once per run, never per event.

Measures, for a finished Assistants file_search run (1 call, ``--chunks`` results):

* the request path: ``OtelExporter.__call__`` (a queue put), which is all the app's thread pays;
* the exporter's thread: hold + ``describe`` + run span + child spans + 4 histogram records, with
  the SDK (BatchSpanProcessor over a discarding exporter, an InMemoryMetricReader) and with the API's
  no-op providers;
* for scale, the SDK's ~46 µs per streamed event (performance-baselines.md): a 200-event run costs
  the app ~10 ms of SDK parsing.

    .venv/bin/python benchmarks/bench_otel.py [--runs 5000] [--chunks 10]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import NoOpTracerProvider

from collector.otel import OtelExporter
from collector.record import ChunkRecord, RunRecord


class _Discard(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _record(i: int, chunks: int) -> RunRecord:
    rec = RunRecord(
        run_id=f"run_{i}",
        api="assistants",
        model="gpt-4o",
        status="completed",
        thread_id=f"thread_{i}",
        assistant_id="asst_1",
        started_at=1.764e9 + i,
        first_token_at=1.764e9 + i + 0.4,
        completed_at=1.764e9 + i + 2.0,
        ttft_seconds=0.4,
        duration_seconds=2.0,
        input_tokens=9000,
        cached_input_tokens=0,
        output_tokens=80,
        reasoning_tokens=0,
        total_tokens=9080,
        file_search_calls=1,
        retrieved_chunks=chunks,
        max_num_results=chunks,
        streams=1,
        model_steps=2,
        first_chunk_seconds=0.05,
    )
    rec.chunks = [ChunkRecord("call_1", r, "file-1", 0.5 - r / 100) for r in range(1, chunks + 1)]
    rec.extra["fs_calls"] = {"call_1": True}
    return rec


def _per_run(exporter: OtelExporter, records: list[RunRecord]) -> float:
    """Seconds per run spent by the exporter's thread (measured inline, on this thread)."""
    hold = exporter._hold
    t0 = time.perf_counter()
    for rec in records:
        for ready in hold.offer(rec, 0.0):
            exporter._emit(ready)
    return (time.perf_counter() - t0) / len(records)


def _enqueue(exporter: OtelExporter, records: list[RunRecord]) -> float:
    t0 = time.perf_counter()
    for rec in records:
        exporter(rec)
    elapsed = (time.perf_counter() - t0) / len(records)
    exporter.flush(60)
    return elapsed


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5000)
    p.add_argument("--chunks", type=int, default=10)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)

    tp = TracerProvider()
    tp.add_span_processor(BatchSpanProcessor(_Discard(), max_queue_size=100_000))
    mp = MeterProvider(metric_readers=[InMemoryMetricReader()])
    setups: list[tuple[str, Any, Any]] = [
        ("sdk", tp, mp),
        ("no-op", NoOpTracerProvider(), NoOpMeterProvider()),
    ]
    print(f"{args.runs} runs x {args.repeat}, 1 file_search call with {args.chunks} results")
    for name, tracer_provider, meter_provider in setups:
        thread_cost, call_cost = [], []
        for rep in range(args.repeat):
            exporter = OtelExporter(tracer_provider, meter_provider, max_queue=10 * args.runs)
            records = [_record(rep * args.runs + i, args.chunks) for i in range(args.runs)]
            thread_cost.append(_per_run(exporter, records))
            more = [_record((args.repeat + rep) * args.runs + i, args.chunks) for i in range(args.runs)]
            call_cost.append(_enqueue(exporter, more))
            exporter.close()
        print(
            f"  {name:6s} request path (queue put): {statistics.median(call_cost) * 1e6:7.2f} µs/run   "
            f"exporter thread (spans + metrics): {statistics.median(thread_cost) * 1e6:7.1f} µs/run"
        )
    tp.shutdown()
    mp.shutdown()


if __name__ == "__main__":
    main()
