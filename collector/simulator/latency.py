"""Latency profiles: queue delay, time to first token and gaps between tokens, seeded per request."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

from collector.simulator.core import Clock


@dataclass(frozen=True, slots=True)
class Profile:
    """Mean delays in seconds; each request draws its own around them from a seeded generator."""

    queue_delay: float
    ttft: float
    inter_token: float
    jitter: float = 0.3
    """Relative spread of each draw (uniform in ±jitter)."""


PROFILES: dict[str, Profile] = {
    "realistic": Profile(queue_delay=0.25, ttft=0.9, inter_token=0.025),
    "fast": Profile(queue_delay=0.002, ttft=0.008, inter_token=0.0005),
    "none": Profile(queue_delay=0.0, ttft=0.0, inter_token=0.0, jitter=0.0),
}


class Pacer:
    """Sleeps one stream's delays and moves the simulated clock by the same amount."""

    def __init__(self, profile: Profile, clock: Clock, seed: int, key: str) -> None:
        self._p = profile
        self._clock = clock
        self._rng = random.Random(f"latency:{seed}:{key}")

    def _draw(self, mean: float) -> float:
        if mean <= 0:
            return 0.0
        j = self._p.jitter
        return mean * (1 + self._rng.uniform(-j, j))

    async def _sleep(self, seconds: float) -> None:
        if self._clock.logical:  # on real time the sleep itself moves the clock
            self._clock.advance(seconds)
        if seconds > 0:
            await asyncio.sleep(seconds)

    async def queue(self) -> None:
        """The wait before a run starts (between ``queued`` and ``in_progress``)."""
        await self._sleep(self._draw(self._p.queue_delay))

    async def first_token(self) -> None:
        """The model's time to its first token."""
        await self._sleep(self._draw(self._p.ttft))

    async def token(self) -> None:
        """The gap before each later text delta."""
        await self._sleep(self._draw(self._p.inter_token))


def profile(name: str) -> Profile:
    """The named profile; an unknown name is an error listing the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown latency profile {name!r}; choose one of {sorted(PROFILES)}") from None
