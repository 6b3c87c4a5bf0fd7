"""Thread growth: input tokens per turn along each thread, how much of a run's input is history, and what
that history costs. The one source of thread-history numbers: ``runmeter whatif --threads`` prints it and
the dashboard's threads page reshapes it (:func:`analysis.explorer.thread_turns`).

A thread is an Assistants ``thread_id``, a Responses ``conversation``, or a chain of Responses linked by
``previous_response_id`` (the store keeps that id in ``thread_id``; chains are followed to their first
response in SQL). Turns are numbered by ``started_at``.

History estimate: a run's reported input is the sum of its model steps' prompts (run usage is the sum of
the step usages), and every model step re-reads the whole thread, so a later turn pays its history once
per step. The retrieved chunks are input too, but they are what that run searched for, not history: with
the retrieval part of each run taken out (the fitted payload of :mod:`analysis.fit`), a turn's *own* input
is ``steps × (instructions + question + history)``, and its history tokens are::

    history_k = (input_k - payload_k) - (input_1 - payload_1) × steps_k / steps_1

(``steps`` = ``model_steps`` when the API reports it, else 1), never below 0. The first turn carries no
history. Plain ``input_k - input_1`` would count a second step's re-read of the instructions and the
question, and this turn's retrieved chunks, as history.

The cost of not truncating is those tokens at the mean input price per token of the run's (api, model,
UTC day, tier) group (:func:`analysis.cost_by.group_rates`: input, cached-input and cache-write meters over
input tokens, so prompt-caching discounts apply in proportion). Shares are of input tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import duckdb
import numpy as np
import polars as pl

from analysis.cost_by import group_rates
from analysis.fit import BillingFit, fit_store, run_features
from analysis.prices import PriceTable

_TURNS_CTE = """
WITH RECURSIVE chain(run_id, root) AS (
    SELECT run_id, coalesce(thread_id, run_id) FROM runs
    WHERE api = 'responses' AND (thread_id IS NULL OR thread_id NOT IN (SELECT run_id FROM runs))
    UNION ALL
    SELECT r.run_id, c.root FROM runs r JOIN chain c ON r.thread_id = c.run_id WHERE r.api = 'responses'
),
keyed AS (
    SELECT run_id, root AS thread FROM chain
    UNION ALL
    SELECT run_id, thread_id FROM runs WHERE api <> 'responses' AND thread_id IS NOT NULL
),
sized AS (
    SELECT k.thread, count(*) OVER (PARTITION BY k.thread) AS turns,
           row_number() OVER (PARTITION BY k.thread ORDER BY r.started_at, r.run_id) AS turn,
           r.run_id, r.api, r.model, CAST(r.started_at AT TIME ZONE 'UTC' AS DATE) AS day,
           nullif(nullif(r.service_tier, ''), 'default') AS tier, r.truncation,
           r.input_tokens::DOUBLE AS input_tokens, coalesce(r.model_steps, 1)::DOUBLE AS steps
    FROM keyed k JOIN runs r USING (run_id)
    WHERE r.input_tokens IS NOT NULL
)
"""
_THREAD_SQL = _TURNS_CTE + "SELECT * FROM sized WHERE turns >= 2"
# a Response with no conversation, no previous and no next response is its own chain root, not a thread
_COUNT_SQL = _TURNS_CTE + """
SELECT count(DISTINCT thread) FROM sized s
WHERE s.turns >= 2 OR s.api <> 'responses' OR s.thread <> s.run_id
"""


@dataclass(frozen=True, slots=True)
class TurnStats:
    """Runs of one API at one turn index across threads."""

    api: str
    turn: int
    runs: int
    input_tokens_mean: float
    history_tokens_mean: float
    history_share: float
    """History tokens over input tokens at this turn."""
    history_usd: float | None
    """What the history tokens of these runs cost (``None`` when none of them could be priced)."""


@dataclass(frozen=True, slots=True)
class ThreadStats:
    """One thread's totals."""

    thread: str
    api: str
    turns: int
    input_tokens: float
    history_tokens: float
    history_usd: float | None
    truncation: str | None


@dataclass(frozen=True, slots=True)
class ThreadGrowth:
    """Thread growth over a store: per turn, the top threads, and what history costs.

    Totals, shares and costs are over the threads with two or more recorded turns (:attr:`threads`); a
    one-turn thread has no history.
    """

    threads: int
    """Threads with two or more recorded turns."""
    all_threads: int
    """Threads with at least one recorded turn (the one-turn threads included)."""
    runs_in_threads: int
    input_tokens: float
    history_tokens: float
    history_share: float | None
    """History tokens over input tokens (``None`` without input)."""
    history_usd: float | None
    """What the history tokens cost: the price of not truncating (``None`` when nothing could be priced)."""
    by_turn: list[TurnStats] = field(default_factory=list)
    top_threads: list[ThreadStats] = field(default_factory=list)
    """The threads with the most history tokens, most first (ties by thread id)."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def _payload(frame: pl.DataFrame, fits: Mapping[str, BillingFit]) -> np.ndarray:
    """Fitted retrieval tokens of each run (0 where the fit has no coefficient)."""
    out = np.zeros(frame.height)
    for api, fit in fits.items():
        mask = (frame["api"] == api).to_numpy()
        if not mask.any():
            continue
        sub = frame.filter(pl.col("api") == api)
        steps = sub["model_steps"].fill_null(1).to_numpy().astype(float)
        w = np.maximum(steps - 1, 0) if fit.repeat_source == "model_steps" else np.ones(sub.height)
        tokens = np.zeros(sub.height)
        for col, coef in (("t_known", fit.per_token), ("n_known", fit.per_known_result),
                          ("n_unknown", fit.per_unknown_result), ("calls", fit.per_call)):
            if coef is not None:
                tokens += coef * w * sub[col].to_numpy().astype(float)
        out[mask] = tokens
    return out


def _usd_sum(column: str) -> pl.Expr:
    """The sum of ``column``, null when every value is null (nothing priced)."""
    return pl.when(pl.col(column).is_not_null().any()).then(pl.col(column).sum())


def thread_growth(
    con: duckdb.DuckDBPyConnection, prices: PriceTable, fits: Mapping[str, BillingFit] | None = None, *,
    top: int = 10,
) -> ThreadGrowth:
    """Per-turn input and history of every thread with two or more recorded turns, the ``top`` threads
    with the most history, and the store's totals. ``fits`` default to :func:`analysis.fit.fit_store`."""
    all_threads = int(con.execute(_COUNT_SQL).fetchall()[0][0])
    runs = pl.from_arrow(con.sql(_THREAD_SQL).to_arrow_table())
    assert isinstance(runs, pl.DataFrame)
    if runs.height == 0:
        return ThreadGrowth(threads=0, all_threads=all_threads, runs_in_threads=0, input_tokens=0.0,
                            history_tokens=0.0, history_share=None, history_usd=None)
    if fits is None:
        fits = fit_store(con)
    features = run_features(con, sample=1 << 62).select(
        "run_id", "model_steps", "calls", "t_known", "n_known", "n_unknown")
    runs = runs.join(features, on="run_id", how="left").with_columns(
        pl.col("calls", "t_known", "n_known", "n_unknown").fill_null(0))
    runs = runs.with_columns(pl.Series("payload", _payload(runs, fits)))
    runs = runs.with_columns((pl.col("input_tokens") - pl.col("payload")).alias("own"))
    first = runs.filter(pl.col("turn") == 1).select(
        "thread", pl.col("own").alias("own_1"), pl.col("steps").alias("steps_1"))
    runs = runs.join(first, on="thread", how="left").with_columns(
        pl.when(pl.col("turn") == 1).then(0.0)
        .otherwise((pl.col("own") - pl.col("own_1") * pl.col("steps") / pl.col("steps_1"))
                   .clip(lower_bound=0))
        .alias("history"))
    rates, _ = group_rates(con, prices)
    runs = runs.join(rates.select("api", "model", "day", "tier", "input_rate"),
                     on=["api", "model", "day", "tier"], how="left", nulls_equal=True)
    runs = runs.with_columns((pl.col("history") * pl.col("input_rate")).alias("history_usd"))
    per_turn = runs.group_by("api", "turn").agg(
        pl.len().alias("runs"), pl.col("input_tokens").mean().alias("inp"),
        pl.col("history").mean().alias("hist"), _usd_sum("history_usd")).sort("api", "turn")
    by_turn = [
        TurnStats(r["api"], int(r["turn"]), int(r["runs"]), float(r["inp"]), float(r["hist"]),
                  float(r["hist"] / r["inp"]) if r["inp"] else 0.0, r["history_usd"])
        for r in per_turn.to_dicts()
    ]
    per_thread = runs.group_by("thread").agg(
        pl.col("api").first(), pl.len().alias("turns"), pl.col("input_tokens").sum(),
        pl.col("history").sum(), _usd_sum("history_usd"),
        pl.col("truncation").drop_nulls().first(),
    ).sort(["history", "thread"], descending=[True, False])
    tops = [ThreadStats(r["thread"], r["api"], int(r["turns"]), float(r["input_tokens"]),
                        float(r["history"]), r["history_usd"], r["truncation"])
            for r in per_thread.head(top).to_dicts()]
    total_in = float(runs["input_tokens"].sum())
    total_hist = float(runs["history"].sum())
    usd = runs["history_usd"].drop_nulls()
    return ThreadGrowth(
        threads=per_thread.height, all_threads=all_threads, runs_in_threads=runs.height,
        input_tokens=total_in, history_tokens=total_hist,
        history_share=total_hist / total_in if total_in else None,
        history_usd=float(usd.sum()) if usd.len() else None, by_turn=by_turn, top_threads=tops,
    )
