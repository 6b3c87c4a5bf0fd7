"""The state an Assistants run keeps between requests, and what the engine yields.

:class:`Frame` is one SSE event serialized at the moment it happened; :class:`Drop` asks the stream
writer to cut the connection. The pacing classes decide whether a run's delays are slept (a stream)
or only moved on the simulated clock (a polled run, or a stream whose client has gone).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from collector.simulator import prompts
from collector.simulator.latency import Pacer
from collector.simulator.search import Hit
from collector.simulator.state import World


@dataclass(frozen=True, slots=True)
class Frame:
    """One SSE event, its payload already serialized (a snapshot of the object at that moment)."""

    event: str
    data: str
    first_text: bool = False
    """This is the run's first non-empty text delta (the TTFT marker)."""
    final: bool = True
    """``False`` for an ``error`` event, after which the stream ends without ``done``."""


@dataclass(frozen=True, slots=True)
class Drop:
    """Cut the client's connection here; the run goes on on the server."""


Item = Frame | Drop


class Pacing(Protocol):
    """The delays a run takes (queue, time to first token, gaps, stalls)."""

    async def queue(self) -> None: ...
    async def first_token(self) -> None: ...
    async def token(self) -> None: ...
    async def pause(self, seconds: float) -> None: ...


class StreamPacing(Pacer):
    """Real sleeps for a streamed run (the clock moves by the same amounts)."""

    async def pause(self, seconds: float) -> None:
        """A stall: sleep ``seconds``."""
        await self._sleep(seconds)


class ClockPacing(StreamPacing):
    """Moves only the simulated clock: a non-streamed run, or one whose client has gone.

    On real time nothing moves: the run simply happened at the time of the request that drove it.
    """

    async def _sleep(self, seconds: float) -> None:
        if self._clock.logical:
            self._clock.advance(seconds)


@dataclass
class RunState:
    """What the engine keeps per run between requests."""

    run_id: str
    include_content: bool
    pending: AsyncIterator[Item] | None = None
    """A non-streamed run's generator, advanced by polls."""
    cancel_requested: bool = False
    first_text_sent: bool = False
    function_called: bool = False
    function_step_id: str | None = None
    function_usage: dict[str, Any] | None = None
    """The function step's usage, billed when it ran, shown once its outputs close it."""
    context: list[prompts.Segment] = field(default_factory=list)
    """Prompt segments earlier steps of this run added (tool calls and their results)."""
    hits: list[Hit] = field(default_factory=list)


def dump(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def module_state(world: World) -> dict[str, Any]:
    """This module's private tables in ``world.extra``."""
    with world.lock:
        st = world.extra.get("assistants")
        if st is None:
            st = world.extra["assistants"] = {"runs": {}, "last_prompt": {}}
    assert isinstance(st, dict)
    return st
