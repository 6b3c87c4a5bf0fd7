"""Totals and per-run figures folded from other analyses' results: the one place a face gets them.

Faces (the CLI, the dashboard) show a total line under a cost table, the storage spend over a window, a
baseline's cost per 1,000 runs. Each is a fold of numbers :mod:`analysis` already computed, and each is
computed here, once, so every face that shows it shows the same value (pure functions, no IO).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import polars as pl

from analysis.cost_by import CostGroup
from analysis.storage import DailyStorageCost
from analysis.whatif import Baseline

# ------------------------------------------------------------------------------------------- run cost


def unpriced_runs(group: CostGroup) -> int:
    """Runs of ``group`` left unpriced (its runs less its priced runs)."""
    return group.runs - group.priced_runs


@dataclass(frozen=True, slots=True)
class CostTotal:
    """The sums of a list of :class:`~analysis.cost_by.CostGroup` (``runmeter cost``'s total line)."""

    runs: int
    unpriced_runs: int
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    file_search_calls: int
    total_usd: float
    unpriced: Mapping[str, int] = field(default_factory=dict)
    """Reason -> runs left unpriced for it, most runs first (then by reason)."""


def cost_total(groups: Sequence[CostGroup]) -> CostTotal:
    """What ``groups`` add up to: runs, unpriced runs, tokens, calls, USD and the unpriced runs per reason."""
    reasons: dict[str, int] = {}
    for g in groups:
        for reason, n in g.unpriced.items():
            reasons[reason] = reasons.get(reason, 0) + n
    ordered = dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
    return CostTotal(
        runs=sum(g.runs for g in groups),
        unpriced_runs=sum(unpriced_runs(g) for g in groups),
        input_tokens=sum(g.input_tokens for g in groups),
        cached_input_tokens=sum(g.cached_input_tokens for g in groups),
        output_tokens=sum(g.output_tokens for g in groups),
        file_search_calls=sum(g.file_search_calls for g in groups),
        total_usd=sum(g.total_usd for g in groups),
        unpriced=ordered,
    )


# ------------------------------------------------------------------------------------ what-if baseline


def baseline_input_tokens_per_run(b: Baseline) -> float | None:
    """Mean input tokens per run of the store as recorded (``None`` without runs)."""
    return b.input_tokens / b.runs if b.runs else None


def baseline_cost_per_1k_runs(b: Baseline) -> float | None:
    """USD per 1,000 priced runs as recorded: the what-if rows' ``cost_per_1k_runs_usd`` with nothing
    saved (``None`` without priced runs): :meth:`analysis.whatif.Baseline.cost_per_1k_runs`, the formula
    the rows use."""
    return b.cost_per_1k_runs()


# --------------------------------------------------------------------------------------------- storage


@dataclass(frozen=True, slots=True)
class StorageTotal:
    """GB-days, billable GB-days and USD summed over days (exact decimals)."""

    gb_days: Decimal
    billable_gb_days: Decimal
    cost_usd: Decimal


def storage_total(costs: Sequence[DailyStorageCost]) -> StorageTotal:
    """The sum of daily storage costs (:func:`analysis.storage.daily_storage_costs`, a what-if's days)."""
    return StorageTotal(
        gb_days=sum((c.gb_days for c in costs), Decimal(0)),
        billable_gb_days=sum((c.billable_gb_days for c in costs), Decimal(0)),
        cost_usd=sum((c.cost_usd for c in costs), Decimal(0)),
    )


def gb_days_by_store(per_store_day: pl.DataFrame) -> dict[str, float]:
    """GB-days per vector store over the days of :func:`analysis.storage.daily_gb_days`' frame
    (``day, vector_store_id, gb_days``)."""
    out: dict[str, float] = {}
    for r in per_store_day.iter_rows(named=True):
        out[r["vector_store_id"]] = out.get(r["vector_store_id"], 0.0) + r["gb_days"]
    return out


__all__ = [
    "CostTotal",
    "StorageTotal",
    "baseline_cost_per_1k_runs",
    "baseline_input_tokens_per_run",
    "cost_total",
    "gb_days_by_store",
    "storage_total",
    "unpriced_runs",
]
