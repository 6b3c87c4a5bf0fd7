"""OpenTelemetry export: one span per run, a child span per file_search call, the GenAI client metrics.

>>> rec = Recorder("runmeter.duckdb", tracer_provider=tp, meter_provider=mp)   # explicit providers
>>> rec = Recorder("runmeter.duckdb")          # or from the standard OTEL_* environment (see below)

:class:`OtelExporter` is one of the Recorder's observers. On the request path it only puts the
observation in a queue (no lock, no allocation beyond the queue's); a daemon thread merges a run's
observations, waits for the run to end (:mod:`collector._otel_hold`), then starts and ends its spans
with the record's real start and end times and records each metric once per run, never per event.
Names follow the GenAI semantic conventions pinned in :mod:`collector._otel_names` (1.40.0); see
:mod:`collector._otel_attrs` for what each attribute means.

Metrics (histograms; attributes ``gen_ai.operation.name``, ``gen_ai.provider.name``,
``gen_ai.request.model``, ``gen_ai.response.model``, ``error.type`` when the run failed):

* ``gen_ai.client.operation.duration`` (s): the recorded ``duration_seconds``;
* ``gen_ai.client.token.usage`` ({token}), ``gen_ai.token.type`` = input | output, only for the
  counts the wire carried (a chat stream without usage records none, not zeros);
* ``gen_ai.client.operation.time_to_first_chunk`` (s): first body bytes of the stream, any chunk;
* ``runmeter.client.operation.time_to_first_token`` (s): runmeter's TTFT, the first *text*.

Interrupted runs: an ``interrupted`` observation is held (up to ``hold_seconds``, default 300 s,
longer than the Recorder's read-back of an interrupted run) for the observation that reads the run
back in its final state; the span then carries the billed usage. A run never read back, or a
``requires_action`` run the app abandoned, is emitted as it stands when its hold runs out or on
``close()``: status ``interrupted`` gives span status ERROR with ``error.type = interrupted``.

Configuration (:func:`exporter_for`, called by the Recorder): explicit ``tracer_provider`` /
``meter_provider`` arguments win. Otherwise, with ``otel=None``: ``OTEL_SDK_DISABLED=true`` turns
export off; providers the application installed globally (an SDK ``TracerProvider``) are used; else
when ``OTEL_TRACES_EXPORTER``, ``OTEL_METRICS_EXPORTER`` or an ``OTEL_EXPORTER_OTLP_*ENDPOINT`` is set
runmeter builds SDK providers from the environment (exporters ``otlp`` — the optional extra
``runmeter[otlp]`` — ``console`` and ``none``; resource from ``OTEL_SERVICE_NAME`` /
``OTEL_RESOURCE_ATTRIBUTES``) and shuts them down on close; else export is off and costs nothing:
no observer is installed. ``otel=False`` always turns it off; ``otel=True`` uses the global providers
even when they are the API's no-op ones.

Telemetry never breaks the host program: every error in the thread (including an exporter's) is
caught and logged (at most once a minute per kind); a full queue drops the observation and counts it.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from collector import _otel_names as names
from collector._otel_attrs import RunTelemetry, describe
from collector._otel_hold import RunHold
from collector.record import RunRecord

__all__ = ["OtelExporter", "exporter_for", "providers_from_environment"]

log = logging.getLogger("runmeter.otel")

_VERSION = "0.1.0"
_FLUSH = object()


class OtelExporter:
    """Turns run observations into spans and metrics on its own thread (see the module docstring).

    Args:
        tracer_provider: an ``opentelemetry.trace.TracerProvider``.
        meter_provider: an ``opentelemetry.metrics.MeterProvider``.
        hold_seconds: how long a run that is not final waits for its next observation.
        steps_grace: how long a finished non-streamed Assistants run waits for its steps listing
            (0 when the Recorder does not fetch steps).
        max_queue: observations waiting for the thread before new ones are dropped.
        max_held: runs held at once before the oldest is emitted as it stands.
        clock: monotonic seconds (the holds' deadlines).
        owns_providers: shut the providers down on :meth:`close` (runmeter built them).
    """

    def __init__(self, tracer_provider: Any, meter_provider: Any, *, hold_seconds: float = 300.0,
                 steps_grace: float = 5.0, max_queue: int = 10_000, max_held: int = 10_000,
                 clock: Callable[[], float] = time.monotonic, owns_providers: bool = False) -> None:
        from opentelemetry import trace

        self._trace = trace
        self._tracer = tracer_provider.get_tracer("runmeter", _VERSION, schema_url=names.SCHEMA_URL)
        meter = meter_provider.get_meter("runmeter", _VERSION, schema_url=names.SCHEMA_URL)
        self._duration = meter.create_histogram(
            names.GEN_AI_CLIENT_OPERATION_DURATION, unit="s", description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=list(names.DURATION_BUCKETS))
        self._tokens = meter.create_histogram(
            names.GEN_AI_CLIENT_TOKEN_USAGE, unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=list(names.TOKEN_BUCKETS))
        self._ttfc = meter.create_histogram(
            names.GEN_AI_CLIENT_OPERATION_TIME_TO_FIRST_CHUNK, unit="s",
            description="Time from the request to the first chunk of the response stream (any chunk).",
            explicit_bucket_boundaries_advisory=list(names.DURATION_BUCKETS))
        self._ttft = meter.create_histogram(
            names.RUNMETER_CLIENT_TIME_TO_FIRST_TOKEN, unit="s",
            description="Time from the request to the first output text (runmeter's TTFT).",
            explicit_bucket_boundaries_advisory=list(names.DURATION_BUCKETS))
        self._providers = (tracer_provider, meter_provider) if owns_providers else None
        self._hold = RunHold(hold_seconds=hold_seconds, steps_grace=steps_grace, max_held=max_held)
        self._clock = clock
        self._max_queue = max(1, max_queue)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._warned_at: dict[str, float] = {}
        self.dropped = 0
        """Observations dropped because the queue was full."""
        self.errors = 0
        """Errors caught while emitting (the exporter's included when it raises through the SDK)."""
        self.emitted = 0
        """Runs emitted (one span each)."""
        self._thread = threading.Thread(target=self._run, name="runmeter-otel", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # held runs still become spans when the app never closes the Recorder

    # -- the request path ------------------------------------------------------------------------
    def __call__(self, record: RunRecord) -> None:
        """Queue one run observation (cheap; never raises)."""
        if self._closed:
            return
        if self._queue.qsize() >= self._max_queue:
            self.dropped += 1
            return
        self._queue.put(record)

    # -- lifecycle --------------------------------------------------------------------------------
    @property
    def late(self) -> int:
        """Observations that arrived after their run's span was emitted (dropped)."""
        return self._hold.late

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued observation is processed (held runs stay held)."""
        if self._closed or not self._thread.is_alive():
            return False
        done = threading.Event()
        self._queue.put((_FLUSH, done))
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Process the queue, emit every held run as it stands, stop the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        self._queue.put(None)
        self._thread.join(timeout)
        if self._providers is not None:
            for provider in self._providers:
                try:
                    provider.shutdown()
                except Exception:
                    log.warning("runmeter: OpenTelemetry provider shutdown failed", exc_info=True)

    # -- the thread --------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            deadline = self._hold.next_deadline()
            try:
                item = self._queue.get(timeout=None if deadline is None
                                       else max(0.0, deadline - self._clock()))
            except queue.Empty:
                item = _FLUSH
            try:
                if item is None:
                    for rec in self._hold.drain():
                        self._emit(rec)
                    return
                if isinstance(item, tuple):
                    item[1].set()
                    continue
                ready = self._hold.offer(item, self._clock()) if isinstance(item, RunRecord) else []
                for rec in ready + self._hold.due(self._clock()):
                    self._emit(rec)
            except Exception:
                self._warn("hold", "runmeter: OpenTelemetry export failed")

    def _emit(self, rec: RunRecord) -> None:
        try:
            data = describe(rec)
        except Exception:
            self._warn("describe", f"runmeter: could not describe run {rec.run_id} for OpenTelemetry")
            return
        if data is None:
            return
        self.emitted += 1
        try:
            self._span(data)
        except Exception:  # a span processor or exporter that raises through the SDK
            self._warn("span", f"runmeter: could not export the span of run {rec.run_id}")
        try:
            self._metrics(data)
        except Exception:
            self._warn("metrics", f"runmeter: could not record the metrics of run {rec.run_id}")

    def _span(self, data: RunTelemetry) -> None:
        trace = self._trace
        s = data.span
        span = self._tracer.start_span(s.name, kind=trace.SpanKind.CLIENT, attributes=s.attributes,
                                       start_time=s.start_ns)
        try:
            if data.error_type is not None:
                span.set_status(trace.Status(trace.StatusCode.ERROR, data.error_type))
            parent = trace.set_span_in_context(span)
            for c in data.children:
                child = self._tracer.start_span(c.name, context=parent, kind=trace.SpanKind.INTERNAL,
                                                attributes=c.attributes, start_time=c.start_ns)
                child.end(end_time=c.end_ns)
        finally:
            span.end(end_time=s.end_ns)

    def _metrics(self, data: RunTelemetry) -> None:
        attrs = data.metric_attributes
        if data.duration is not None:
            self._duration.record(data.duration, attrs)
        for kind, count in data.tokens:
            self._tokens.record(count, {**attrs, names.GEN_AI_TOKEN_TYPE: kind})
        if data.time_to_first_chunk is not None:
            self._ttfc.record(data.time_to_first_chunk, attrs)
        if data.time_to_first_token is not None:
            self._ttft.record(data.time_to_first_token, attrs)

    def _warn(self, key: str, message: str) -> None:
        self.errors += 1
        now = time.monotonic()
        last = self._warned_at.get(key)
        if last is None or now - last >= 60.0:
            self._warned_at[key] = now
            log.warning(message, exc_info=True)


# -- configuration ---------------------------------------------------------------------------------
_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                  "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def providers_from_environment(env: Mapping[str, str] | None = None) -> tuple[Any, Any] | None:
    """SDK tracer and meter providers built from the standard ``OTEL_*`` variables, or ``None``
    when the environment configures no exporter (or ``OTEL_SDK_DISABLED=true``)."""
    env = os.environ if env is None else env
    if _truthy(env.get("OTEL_SDK_DISABLED")):
        return None
    endpoint = any(env.get(v) for v in _ENDPOINT_VARS)
    traces = _exporter_names(env.get("OTEL_TRACES_EXPORTER"), endpoint)
    metrics = _exporter_names(env.get("OTEL_METRICS_EXPORTER"), endpoint)
    if not traces and not metrics:
        return None
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create(_resource_attributes(env))
    tracer_provider = TracerProvider(resource=resource)
    for name in traces:
        span_exporter = _span_exporter(name)
        if span_exporter is not None:
            tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    readers = []
    for name in metrics:
        metric_exporter = _metric_exporter(name)
        if metric_exporter is not None:
            readers.append(PeriodicExportingMetricReader(metric_exporter))
    return tracer_provider, MeterProvider(resource=resource, metric_readers=readers)


def _resource_attributes(env: Mapping[str, str]) -> dict[str, str]:
    """``OTEL_RESOURCE_ATTRIBUTES`` then ``OTEL_SERVICE_NAME`` from ``env`` (the SDK reads only
    ``os.environ``; this lets a caller pass its own mapping)."""
    from urllib.parse import unquote

    attrs: dict[str, str] = {}
    for pair in (env.get("OTEL_RESOURCE_ATTRIBUTES") or "").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            attrs[key.strip()] = unquote(value.strip())
    if env.get("OTEL_SERVICE_NAME"):
        attrs["service.name"] = env["OTEL_SERVICE_NAME"]
    return attrs


def _exporter_names(value: str | None, endpoint: bool) -> list[str]:
    if value is None:
        return ["otlp"] if endpoint else []
    return [v.strip().lower() for v in value.split(",") if v.strip() and v.strip().lower() != "none"]


def _span_exporter(name: str) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning("runmeter: OTLP span export needs the optional extra: pip install 'runmeter[otlp]'")
            return None
        return OTLPSpanExporter()
    log.warning("runmeter: unsupported OTEL_TRACES_EXPORTER %r (use otlp, console or none)", name)
    return None


def _metric_exporter(name: str) -> Any:
    if name == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        return ConsoleMetricExporter()
    if name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        except ImportError:
            log.warning("runmeter: OTLP metric export needs the optional extra: pip install 'runmeter[otlp]'")
            return None
        return OTLPMetricExporter()
    log.warning("runmeter: unsupported OTEL_METRICS_EXPORTER %r (use otlp, console or none)", name)
    return None


def exporter_for(*, otel: bool | None = None, tracer_provider: Any = None, meter_provider: Any = None,
                 steps_grace: float = 5.0, env: Mapping[str, str] | None = None) -> OtelExporter | None:
    """The exporter the Recorder installs, or ``None`` when OpenTelemetry export is off (see the
    module docstring for the rules). Never raises: a configuration error is logged and turns export off."""
    if otel is False:
        return None
    env = os.environ if env is None else env
    try:
        from opentelemetry import metrics, trace

        owns = False
        if tracer_provider is None and meter_provider is None and otel is None:
            if _truthy(env.get("OTEL_SDK_DISABLED")):
                return None
            if _is_sdk(trace.get_tracer_provider()) or _is_sdk(metrics.get_meter_provider()):
                tracer_provider, meter_provider = trace.get_tracer_provider(), metrics.get_meter_provider()
            else:
                built = providers_from_environment(env)
                if built is None:
                    return None
                tracer_provider, meter_provider = built
                owns = True
        return OtelExporter(
            tracer_provider if tracer_provider is not None else trace.get_tracer_provider(),
            meter_provider if meter_provider is not None else metrics.get_meter_provider(),
            steps_grace=steps_grace, owns_providers=owns,
        )
    except Exception:
        log.warning("runmeter: OpenTelemetry export is off: configuration failed", exc_info=True)
        return None


def _is_sdk(provider: Any) -> bool:
    return type(provider).__module__.startswith("opentelemetry.sdk.")
