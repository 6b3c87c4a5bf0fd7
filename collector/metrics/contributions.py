"""What one run adds to the metric families, and what an upgraded run adds on top (pure).

A run's *contribution* is the counter values it stands for (1 run of its status, its tokens by type,
its cost by meter priced now, its file_search calls and chunks, ...). When a stored run is merged with a
new observation (an interrupted stream later completed, the second stream of a tool-call run), only
:func:`delta` of the two contributions is added: counters never go down, so a key that would shrink
adds nothing. A run that changed status therefore counts under both statuses (a ``requires_action`` run
completed in a later batch counts once as ``requires_action`` and once as ``completed``); observations
of one run that reach the same batch or process together are merged first and count once.

Histograms observe a value once per run: time to first token when it first becomes known; duration
and chunks per run when the run first settles (any status but ``requires_action``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from analysis.cost import price_record
from analysis.prices import PriceTable
from collector.metrics import families as fam
from collector.record import INTERRUPTED, TERMINAL_STATUSES, RunRecord

Key = tuple[str, tuple[str, ...]]
"""(family name, label values in the family's label order)."""

_STATUSES = TERMINAL_STATUSES | {INTERRUPTED}
_APIS = frozenset({"assistants", "responses", "chat"})


@dataclass(slots=True)
class Delta:
    """Counter increments and histogram observations to apply."""

    counters: dict[Key, float] = field(default_factory=dict)
    observations: list[tuple[Key, float]] = field(default_factory=list)

    def add(self, other: Delta) -> None:
        """Fold ``other`` into this delta."""
        for k, v in other.counters.items():
            self.counters[k] = self.counters.get(k, 0.0) + v
        self.observations.extend(other.observations)

    def __bool__(self) -> bool:
        return bool(self.counters or self.observations)


class Labeller:
    """Bounded label values and prices from one price table (the table at ingest)."""

    def __init__(self, prices: PriceTable) -> None:
        self.prices = prices
        self._models: dict[str | None, str] = {}

    def model(self, model: str | None) -> str:
        """The table entry ``model`` is priced as, else ``other`` (cached: a handful of distinct values)."""
        label = self._models.get(model)
        if label is None:
            name = self.prices.resolve_name(model) if model else None
            label = name or fam.OTHER_MODEL
            if len(self._models) < 10_000:
                self._models[model] = label
        return label

    def contribution(self, r: RunRecord) -> dict[Key, float]:
        """The counter values one run stands for."""
        api = r.api if r.api in _APIS else "other"
        model = self.model(r.model)
        am = (api, model)
        out: dict[Key, float] = {}
        if r.status in _STATUSES:
            out[(fam.RUNS.name, (*am, r.status))] = 1.0
        cached, written = r.cached_input_tokens or 0, r.cache_write_tokens or 0
        tokens = {
            "input": None if r.input_tokens is None else max(0, r.input_tokens - cached - written),
            "cached_input": r.cached_input_tokens,
            "cache_write": r.cache_write_tokens,
            "output": r.output_tokens,
            "reasoning": r.reasoning_tokens,
        }
        for token_type, n in tokens.items():
            if n:
                out[(fam.TOKENS.name, (*am, token_type))] = float(n)
        if model == fam.OTHER_MODEL:
            out[(fam.UNPRICED.name, am)] = 1.0
        else:
            cost = price_record(self.prices, r)
            for meter, usd in cost.meters.items():
                if usd > 0:
                    out[(fam.COST.name, (*am, meter))] = float(usd)
        if r.file_search_calls:
            out[(fam.FILE_SEARCH_CALLS.name, am)] = float(r.file_search_calls)
        if r.retrieved_chunks:
            out[(fam.RETRIEVED_CHUNKS.name, am)] = float(r.retrieved_chunks)
        if api == "chat" and r.extra.get("chat_stream_without_usage"):
            out[(fam.CHAT_NO_USAGE.name, (model,))] = 1.0
        return out

    def delta(self, before: RunRecord | None, after: RunRecord) -> Delta:
        """What ``after`` adds once ``before`` (the stored merged run, or none) was already counted."""
        new = self.contribution(after)
        old = self.contribution(before) if before is not None else {}
        counters = {k: v - old.get(k, 0.0) for k, v in new.items() if v - old.get(k, 0.0) > 0}
        am = (after.api if after.api in _APIS else "other", self.model(after.model))
        observations: list[tuple[Key, float]] = []
        if after.ttft_seconds is not None and (before is None or before.ttft_seconds is None):
            observations.append(((fam.TTFT.name, am), after.ttft_seconds))
        if _settled(after) and not (before is not None and _settled(before)):
            if after.duration_seconds is not None:
                observations.append(((fam.DURATION.name, am), after.duration_seconds))
            if after.retrieved_chunks is not None:
                observations.append(((fam.CHUNKS_PER_RUN.name, am), float(after.retrieved_chunks)))
        return Delta(counters, observations)


def _settled(r: RunRecord) -> bool:
    return r.status is not None and r.status != "requires_action"
