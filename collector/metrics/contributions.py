"""What one run adds to the metric families, and what an upgraded run adds on top (pure).

A run's *contribution* is the counter values it stands for (1 run of its status, its tokens by type,
its cost by meter priced now, its file_search calls and chunks, ...). When a stored run is merged with a
new observation (an interrupted stream later completed, the second stream of a tool-call run), only
:func:`delta` of the two contributions is added: counters never go down, so a key that would shrink
adds nothing. A run counts in ``runmeter_runs_total`` once it settles (any status but ``requires_action``,
which is a pause for tool outputs, not an outcome: a tool-call run counts once, when it ends). A run that
settles twice (an ``interrupted`` stream whose final state was read back in a later batch) counts under
both statuses; observations of one run that reach the same batch or process together are merged first
and count once. A run is *unpriced* when the price table cannot price it (a model it does not know, or a
known model under a service tier it has no price for).

Histograms observe a value once per run: time to first token when it first becomes known; duration
and chunks per run when the run first settles (any status but ``requires_action``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

from analysis.cost import METERS, MeterRates, meter_rates, normal_tier, price_counts, price_record, utc_day
from analysis.prices import PriceTable
from collector.metrics import families as fam
from collector.record import INTERRUPTED, TERMINAL_STATUSES, RunRecord

Key = tuple[str, tuple[str, ...]]
"""(family name, label values in the family's label order)."""

_COUNTED_STATUSES = (TERMINAL_STATUSES | {INTERRUPTED}) - {"requires_action"}
_APIS = frozenset({"assistants", "responses", "chat"})
_RUNS, _TOKENS, _COST, _UNPRICED = fam.RUNS.name, fam.TOKENS.name, fam.COST.name, fam.UNPRICED.name
_CALLS, _CHUNKS, _NO_USAGE = fam.FILE_SEARCH_CALLS.name, fam.RETRIEVED_CHUNKS.name, fam.CHAT_NO_USAGE.name
_TTFT, _DURATION, _PER_RUN = fam.TTFT.name, fam.DURATION.name, fam.CHUNKS_PER_RUN.name
_CACHE_MAX = 10_000

_TOKEN_TYPES = ("input", "cached_input", "cache_write", "output", "reasoning")


@dataclass(frozen=True, slots=True)
class _Keys:
    """The counter and histogram keys of one (api, model label), built once: a batch counts thousands of
    runs under a handful of them."""

    api: str
    model: str
    runs: dict[str, Key]
    tokens: tuple[Key, ...]
    """In :data:`_TOKEN_TYPES` order."""
    cost: dict[str, Key]
    unpriced: Key
    calls: Key
    chunks: Key
    no_usage: Key
    ttft: Key
    duration: Key
    per_run: Key

    @staticmethod
    def of(api: str, model: str) -> _Keys:
        """The keys of ``api`` and ``model`` (a label: see :meth:`Labeller.model`)."""
        am = (api, model)
        return _Keys(api=api, model=model, runs={s: (_RUNS, (api, model, s)) for s in _COUNTED_STATUSES},
                     tokens=tuple((_TOKENS, (api, model, t)) for t in _TOKEN_TYPES),
                     cost={m: (_COST, (api, model, m)) for m in METERS},
                     unpriced=(_UNPRICED, am), calls=(_CALLS, am), chunks=(_CHUNKS, am),
                     no_usage=(_NO_USAGE, (model,)), ttft=(_TTFT, am), duration=(_DURATION, am),
                     per_run=(_PER_RUN, am))


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
        self._rates: dict[tuple[str | None, date | None, str | None, str | None], MeterRates] = {}
        self._keys: dict[tuple[str | None, str | None], _Keys] = {}

    def _keys_of(self, r: RunRecord) -> _Keys:
        keys = self._keys.get((r.api, r.model))
        if keys is None:
            keys = _Keys.of(r.api if r.api in _APIS else "other", self.model(r.model))
            if len(self._keys) < _CACHE_MAX:
                self._keys[(r.api, r.model)] = keys
        return keys

    def model(self, model: str | None) -> str:
        """The table entry ``model`` is priced as, else ``other`` (cached: a handful of distinct values)."""
        label = self._models.get(model)
        if label is None:
            name = self.prices.resolve_name(model) if model else None
            label = name or fam.OTHER_MODEL
            if len(self._models) < _CACHE_MAX:
                self._models[model] = label
        return label

    def meters(self, r: RunRecord) -> dict[str, Decimal] | None:
        """The run's cost per meter: exactly ``price_record(prices, r).meters`` (empty when its usage is
        missing); ``None`` when the price table has no price for a run with usage.

        A run with sound usage is priced by :func:`analysis.cost.price_counts` (what price_run itself
        computes its meters with) on the :func:`analysis.cost.meter_rates` of its (model, UTC day, tier,
        api), looked up once per combination; any other run goes through
        :func:`analysis.cost.price_record` (which names its problem).
        """
        inp, out = r.input_tokens, r.output_tokens
        cached, written = r.cached_input_tokens or 0, r.cache_write_tokens or 0
        calls = r.file_search_calls or 0
        if (inp is None or out is None or inp < 0 or out < 0 or cached < 0 or written < 0 or calls < 0
                or cached + written > inp):
            return dict(price_record(self.prices, r).meters)
        key = (r.model, utc_day(r.started_at), r.service_tier, r.api)
        rates = self._rates.get(key)
        if rates is None:
            rates = meter_rates(self.prices, key[0], key[1], normal_tier(key[2]), key[3])
            if len(self._rates) < _CACHE_MAX:
                self._rates[key] = rates
        return price_counts(rates, inp, cached, written, out, calls)

    def contribution(self, r: RunRecord) -> dict[Key, float]:
        """The counter values one run stands for."""
        k = self._keys_of(r)
        out: dict[Key, float] = {}
        runs = k.runs.get(r.status) if r.status is not None else None
        if runs is not None:
            out[runs] = 1.0
        cached, written, inp = r.cached_input_tokens, r.cache_write_tokens, r.input_tokens
        t_input, t_cached, t_written, t_output, t_reasoning = k.tokens
        if inp is not None:
            n = inp - (cached or 0) - (written or 0)
            if n > 0:
                out[t_input] = float(n)
        if cached:
            out[t_cached] = float(cached)
        if written:
            out[t_written] = float(written)
        if r.output_tokens:
            out[t_output] = float(r.output_tokens)
        if r.reasoning_tokens:
            out[t_reasoning] = float(r.reasoning_tokens)
        meters = None if k.model == fam.OTHER_MODEL else self.meters(r)
        if meters is None:
            out[k.unpriced] = 1.0
        else:
            for meter, usd in meters.items():
                if usd > 0:
                    out[k.cost.get(meter) or (_COST, (k.api, k.model, meter))] = float(usd)
        if r.file_search_calls:
            out[k.calls] = float(r.file_search_calls)
        if r.retrieved_chunks:
            out[k.chunks] = float(r.retrieved_chunks)
        if k.api == "chat" and r.extra.get("chat_stream_without_usage"):
            out[k.no_usage] = 1.0
        return out

    def delta(self, before: RunRecord | None, after: RunRecord) -> Delta:
        """What ``after`` adds once ``before`` (the stored merged run, or none) was already counted."""
        d = Delta()
        self.add_delta(d, before, after)
        return d

    def add_delta(self, total: Delta, before: RunRecord | None, after: RunRecord) -> None:
        """Add :meth:`delta` of (``before``, ``after``) to ``total`` in place (a batch sums thousands)."""
        new = self.contribution(after)
        counters = total.counters
        if before is None:
            for key, v in new.items():
                if v > 0:
                    counters[key] = counters.get(key, 0.0) + v
        else:
            old = self.contribution(before)
            for key, v in new.items():
                v -= old.get(key, 0.0)
                if v > 0:
                    counters[key] = counters.get(key, 0.0) + v
        k = self._keys_of(after)
        observations = total.observations
        if after.ttft_seconds is not None and (before is None or before.ttft_seconds is None):
            observations.append((k.ttft, after.ttft_seconds))
        if _settled(after) and not (before is not None and _settled(before)):
            if after.duration_seconds is not None:
                observations.append((k.duration, after.duration_seconds))
            # runs that searched, as `runmeter report`'s "chunks per run" (a run without file_search is no 0)
            if after.retrieved_chunks is not None and after.file_search_calls:
                observations.append((k.per_run, float(after.retrieved_chunks)))


def _settled(r: RunRecord) -> bool:
    return r.status is not None and r.status != "requires_action"
