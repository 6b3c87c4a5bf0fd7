"""The public entry point: ``Recorder`` records every run an instrumented client makes.

>>> rec = Recorder("runmeter.duckdb")
>>> client = rec.instrument(openai.OpenAI())   # the same client object, now recorded
>>> ...                                        # use the client exactly as before
>>> rec.close()                                # writes every pending record, closes the store

The request path only hands each finished run record to the writer's in-memory queue; everything
else (token counting of chunk text, DuckDB, fetching an interrupted run's final state) happens off
the request path.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from collector import settings
from collector.record import RunRecord

log = logging.getLogger("runmeter")

C = TypeVar("C")


class Recorder:
    """Records runs of instrumented OpenAI clients into a DuckDB store.

    Args:
        path: the store (created with its schema if missing).
        include_results: add the ``include`` value that returns file_search results and chunk text
            (changes no billing; default on, env ``RUNMETER_INCLUDE_RESULTS``).
        fetch_final: fetch an interrupted run's final state off the request path (default on, env
            ``RUNMETER_FETCH_FINAL``).
        flush_interval: seconds between writes to disk; bounds the loss on SIGKILL.
        wall_clock: stamps the runs' UTC times (tests pass a simulator's logical clock).
        metrics_port, registry: live Prometheus metrics of this process's runs, served on 127.0.0.1:PORT
            or registered in the app's own registry (scrape them or ``runmeter serve``, never both).
        otel, tracer_provider, meter_provider: OpenTelemetry export of one span per run and the GenAI
            client metrics; default from the standard ``OTEL_*`` environment (see :mod:`collector.otel`).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, include_results: bool | None = None,
                 fetch_final: bool | None = None, flush_interval: float = 1.0,
                 wall_clock: Callable[[], float] = time.time,
                 otel: bool | None = None, tracer_provider: Any = None, meter_provider: Any = None,
                 metrics_port: int | None = None, registry: Any = None) -> None:
        from collector.store.writer import Writer

        self.path = Path(path if path is not None else settings.env_str(settings.RUNMETER_DB,
                                                                           "runmeter.duckdb"))
        self.include_results = (settings.env_flag(settings.RUNMETER_INCLUDE_RESULTS, True)
                                if include_results is None else include_results)
        self.fetch_final = (settings.env_flag(settings.RUNMETER_FETCH_FINAL, True)
                            if fetch_final is None else fetch_final)
        self.writer = Writer(self.path, flush_interval=flush_interval)
        self._wall = wall_clock
        self.observers: list[Callable[[RunRecord], None]] = []
        """Called with every run observation on the request path, after the writer's queue put: each
        must be cheap (live metrics) or hand off to its own thread (spans). Errors are logged."""
        self._clients: list[Any] = []
        self._closed = False
        self.metrics: Any = None
        self.otel: Any = None
        try:
            if metrics_port is not None or registry is not None:
                from collector.metrics.live import attach_live  # live Prometheus metrics (collector.metrics)

                self.metrics = attach_live(self, metrics_port, registry)
            from collector.otel import exporter_for  # OpenTelemetry: off unless configured (collector.otel)

            self.otel = exporter_for(otel=otel, tracer_provider=tracer_provider,
                                     meter_provider=meter_provider,
                                     steps_grace=5.0 if self.include_results else 0.0)
        except BaseException:
            self.writer.close()  # a half-built Recorder leaves no writer thread or signal handler behind
            raise
        if self.otel is not None:
            self.observers.append(self.otel)

    def _sink(self, record: RunRecord) -> None:
        self.writer.submit(record)
        for observe in self.observers:
            try:
                observe(record)
            except Exception:  # telemetry never breaks the host program
                log.exception("runmeter: observer %r failed", observe)

    def instrument(self, client: C) -> C:
        """Record every run ``client`` makes (``openai.OpenAI`` or ``AsyncOpenAI``); returns it."""
        from collector.instrument import instrument

        instrument(client, self._sink, include_results=self.include_results,
                   fetch_steps=self.include_results, fetch_final=self.fetch_final, wall_clock=self._wall)
        self._clients.append(client)
        return client

    def flush(self, timeout: float = 10.0) -> None:
        """Write every pending record now."""
        self.writer.flush(timeout=timeout)

    def close(self) -> None:
        """Stop recording, write every pending record and close the store. Idempotent."""
        if self._closed:
            return
        self._closed = True
        from collector.instrument import uninstrument

        for c in self._clients:
            try:
                uninstrument(c)
            except Exception:  # telemetry never breaks the host program
                log.exception("runmeter: could not uninstrument %r", c)
        try:
            for part in (self.otel, self.metrics):
                if part is not None:
                    try:
                        part.close()
                    except Exception:  # the records must still be written
                        log.exception("runmeter: closing %r failed", part)
        finally:
            self.writer.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
