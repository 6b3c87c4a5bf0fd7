"""Which run observations are ready to become a span: one span per run, emitted once (pure; no IO).

A run may arrive as several observations (:mod:`collector.merge`): a tool-call run's
``requires_action`` stream then its ``submit_tool_outputs`` stream, ``create_and_poll``'s polls, an
interrupted stream later read back by a retrieve, a non-streamed run followed by runmeter's own
listing of its steps. :class:`RunHold` keeps the observations of a run that is not final yet, merged
with :func:`collector.merge.merge` in arrival order (the writer folds them the same way, so the span
carries the stored row's numbers), and releases the run once:

* when it reaches a final API status (completed, incomplete, failed, cancelled, expired); except an
  Assistants run seen final in a non-streamed body whose file_search calls are still unknown, which
  waits up to ``steps_grace`` seconds for runmeter's steps listing;
* when a held run got no new observation for ``hold_seconds`` (an ``interrupted`` run nobody read
  back, a ``requires_action`` run the app abandoned): it is released as it stands, status and all;
* when more than ``max_held`` runs are held (the oldest goes first), or on :meth:`drain` (close).

Observations of a run already released are dropped and counted in ``late``: a span is immutable once
exported. The records passed in are never modified (the writer holds them too).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass

from collector.merge import merge
from collector.record import RunRecord
from collector.taps.base import FINAL_STATUSES

__all__ = ["RunHold"]


@dataclass(slots=True)
class _Held:
    record: RunRecord
    deadline: float
    first_chunk: tuple[float, float] | None
    """(started_at, seconds) of the earliest observation that measured its first chunk."""


class RunHold:
    """See the module docstring. ``now`` is any monotonic clock, in seconds."""

    def __init__(self, *, hold_seconds: float = 300.0, steps_grace: float = 5.0, max_held: int = 10_000,
                 remember: int = 50_000) -> None:
        self.hold_seconds = hold_seconds
        self.steps_grace = steps_grace
        self.max_held = max(1, max_held)
        self.remember = max(1, remember)
        self.late = 0
        """Observations dropped because their run's span was already emitted."""
        self._held: dict[str, _Held] = {}
        self._deadlines: list[tuple[float, str]] = []
        self._released: OrderedDict[str, None] = OrderedDict()

    @property
    def held(self) -> int:
        """Runs waiting for more observations."""
        return len(self._held)

    def offer(self, record: RunRecord, now: float) -> list[RunRecord]:
        """Take one observation; returns the runs now ready (this one, or an evicted old one)."""
        run_id = record.run_id
        if run_id in self._released:
            self.late += 1
            return []
        held = self._held.pop(run_id, None)
        first = _first_chunk(record)
        if held is None:
            merged = record
        else:
            merged = merge(held.record, record)
            if held.first_chunk is not None and (first is None or held.first_chunk[0] <= first[0]):
                first = held.first_chunk
            # The earliest stream's first chunk: merge keeps the prevailing (latest) side's value.
            merged.first_chunk_seconds = first[1] if first is not None else None
        if merged.status in FINAL_STATUSES and not self._wants_steps(merged, record):
            return [self._release(merged)]
        wait = self.steps_grace if merged.status in FINAL_STATUSES else self.hold_seconds
        self._held[run_id] = _Held(merged, now + wait, first)
        heapq.heappush(self._deadlines, (now + wait, run_id))
        if len(self._held) > self.max_held:
            oldest = next(iter(self._held))
            return [self._release(self._held.pop(oldest).record)]
        return []

    def due(self, now: float) -> list[RunRecord]:
        """The held runs whose wait is over."""
        out: list[RunRecord] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, run_id = heapq.heappop(self._deadlines)
            held = self._held.get(run_id)
            if held is not None and held.deadline == deadline:
                del self._held[run_id]
                out.append(self._release(held.record))
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`due` may next return something (``None``: nothing held)."""
        while self._deadlines:
            deadline, run_id = self._deadlines[0]
            held = self._held.get(run_id)
            if held is not None and held.deadline == deadline:
                return deadline
            heapq.heappop(self._deadlines)  # superseded by a later observation
        return None

    def drain(self) -> list[RunRecord]:
        """Release every held run as it stands."""
        out = [self._release(h.record) for h in self._held.values()]
        self._held.clear()
        self._deadlines.clear()
        return out

    def _wants_steps(self, merged: RunRecord, latest: RunRecord) -> bool:
        # A non-streamed run body (a poll, a retrieve, the read-back of an interrupted stream) is what
        # makes the Recorder list the run's steps; a stream carries its calls itself.
        return (self.steps_grace > 0 and merged.api == "assistants" and latest.streams == 0
                and merged.file_search_calls is None)

    def _release(self, rec: RunRecord) -> RunRecord:
        self._released[rec.run_id] = None
        if len(self._released) > self.remember:
            self._released.popitem(last=False)
        return rec


def _first_chunk(rec: RunRecord) -> tuple[float, float] | None:
    if rec.first_chunk_seconds is None:
        return None
    return (rec.started_at if rec.started_at is not None else float("inf"), rec.first_chunk_seconds)
