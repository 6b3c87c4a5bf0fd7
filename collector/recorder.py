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
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, include_results: bool | None = None,
                 fetch_final: bool | None = None, flush_interval: float = 1.0,
                 wall_clock: Callable[[], float] = time.time) -> None:
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
        self.writer.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
