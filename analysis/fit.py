"""The billing-overhead fit: how many input tokens one retrieved chunk costs a run, learnt from the runs.

A model step pays for its whole prompt, so a file_search result is paid once per model step after the
search, with some formatting around it. The service does not publish those overheads, so they are fitted
per API by least squares over the recorded runs::

    input_tokens ≈ a + b·steps + w·(ρ·T + ρ·o·n + u·m + ρ·c·calls)

- ``T``: sum of the chunks' ``content_tokens`` (chunks whose text was captured); ``n``: how many of them.
- ``m``: results whose tokens are unknown (text not captured: ``Recorder(include_results=False)``); on the
  Responses API without results on the wire, ``m`` is assumed to be ``calls × max_num_results`` (a search
  returns at most that many). ``u = ρ·(tokens per chunk + o)`` is then fitted as one coefficient.
- ``w``: the repeat weight. Assistants runs report ``model_steps``; every step after the first (the one
  that searched) pays for the results again, so ``w = model_steps - 1`` and ρ is the repeat per later step
  (≈ 1 when the billing is as described). Responses hide their steps: ``w = 1`` and ρ is the whole repeat.
- ``steps`` only on APIs that report it (Assistants): each step also pays the base prompt.

A coefficient is fitted only when the data can tell it apart from the others (columns are admitted in a
fixed order and one that does not raise the design's rank is left out: its effect stays in the columns
before it). A left-out payload coefficient is reported as ``None``: the saving it would price is unknown,
so a what-if built on the fit is then a lower bound. Runs without file_search, and the same prompts at a
different ``max_num_results``, are what separate the base prompt from the retrieval costs.

The held-out error is a k-fold cross-validation (folds by a hash of ``run_id``, fixed for a version):
the mean absolute % error of each run's predicted input tokens from a fit that did not see it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import duckdb
import numpy as np
import polars as pl

from analysis import summary_tables

DEFAULT_RESULTS_WHEN_UNKNOWN = 20
"""max_num_results assumed when a run did not record its setting (the API's documented default)."""

FIT_SAMPLE_RUNS = 50_000
"""At most this many runs per fit (a uniform sample beyond it; the coefficients need no more)."""

PAYLOAD = ("per_token", "per_known_result", "per_unknown_result")
"""The coefficients a what-if prices dropped chunks with."""

_FEATURES_SQL = """
WITH r AS (
    SELECT * FROM runs
    WHERE input_tokens IS NOT NULL AND status = 'completed' {where}
),
later AS (
    SELECT r.run_id FROM r
    WHERE (r.thread_id IS NOT NULL AND EXISTS (
               SELECT 1 FROM runs p WHERE p.thread_id = r.thread_id
               AND (p.started_at < r.started_at OR (p.started_at = r.started_at AND p.run_id < r.run_id))))
       OR r.thread_id IN (SELECT run_id FROM runs)
),
c AS (
    SELECT run_id, count(*) AS n_rows, count(content_tokens) AS n_known,
           coalesce(sum(content_tokens), 0) AS t_known
    FROM retrieved_chunks WHERE run_id IN (SELECT run_id FROM r) GROUP BY run_id
)
SELECT r.run_id, r.api, r.model, r.input_tokens::DOUBLE AS input_tokens, r.model_steps,
       coalesce(r.file_search_calls, 0) AS calls,
       coalesce(c.t_known, 0)::DOUBLE AS t_known,
       coalesce(c.n_known, 0)::DOUBLE AS n_known,
       CASE
           WHEN c.run_id IS NOT NULL THEN c.n_rows - c.n_known
           WHEN coalesce(r.file_search_calls, 0) = 0 THEN 0
           WHEN r.retrieved_chunks IS NOT NULL THEN r.retrieved_chunks
           ELSE r.file_search_calls * coalesce(r.max_num_results, {default_n})
       END::DOUBLE AS n_unknown,
       r.run_id IN (SELECT run_id FROM later) AS later_turn
FROM r LEFT JOIN c USING (run_id)
"""

FIT_SUMMARY = "summary_fit_sample"


def _sample_where(con: duckdb.DuckDBPyConnection, sample: int) -> str:
    total = int(con.execute(
        "SELECT count(*) FROM runs WHERE input_tokens IS NOT NULL AND status = 'completed'"
    ).fetchall()[0][0])
    if total <= sample:
        return ""
    # a fixed hash of run_id: deterministic, and a writer can keep the same sample at ingest
    return f"AND hash(run_id) % {-(-total // sample)} = 0"


def summaries(con: duckdb.DuckDBPyConnection, sample: int = FIT_SAMPLE_RUNS) -> dict[str, str]:
    """The fit's summary table: the features of a fixed hash sample of runs (see
    :mod:`analysis.summary_tables`)."""
    return {FIT_SUMMARY: _FEATURES_SQL.format(default_n=DEFAULT_RESULTS_WHEN_UNKNOWN,
                                              where=_sample_where(con, sample))}


def repeat_weight_sql(alias: str = "r") -> str:
    """SQL for a run's repeat weight ``w`` (see the module docstring)."""
    return f"CASE WHEN {alias}.model_steps IS NOT NULL THEN greatest({alias}.model_steps - 1, 0) ELSE 1 END"


def run_features(con: duckdb.DuckDBPyConnection, *, sample: int = FIT_SAMPLE_RUNS) -> pl.DataFrame:
    """One row per completed run with usage: the fit's inputs (aggregated in SQL; a fixed hash sample of
    about ``sample`` runs when there are more; read from :data:`FIT_SUMMARY` when it is current).

    Columns: ``run_id, api, model, input_tokens, model_steps, calls, t_known, n_known, n_unknown,
    later_turn`` (a run that continues a thread, so its prompt carries history).
    """
    if sample == FIT_SAMPLE_RUNS and summary_tables.fresh(con, (FIT_SUMMARY,)):
        sql = f"SELECT * FROM {FIT_SUMMARY}"
    else:
        sql = _FEATURES_SQL.format(default_n=DEFAULT_RESULTS_WHEN_UNKNOWN, where=_sample_where(con, sample))
    frame = pl.from_arrow(con.sql(sql).to_arrow_table())
    assert isinstance(frame, pl.DataFrame)
    return frame.sort("run_id")  # the least squares' float sums must not depend on the rows' storage order


@dataclass(frozen=True, slots=True)
class BillingFit:
    """The fitted billing of one API. Token coefficients are per unit of the repeat weight ``w``."""

    api: str
    runs: int
    search_runs: int
    repeat_source: str
    """``model_steps`` (w = steps after the first, from the wire) or ``hidden`` (w = 1)."""
    per_token: float | None
    """ρ: input tokens billed per chunk token per unit of w (the repeat count)."""
    per_known_result: float | None
    """ρ·o: tokens billed per result whose text was captured, beyond its own text."""
    per_unknown_result: float | None
    """u = ρ·(tokens per chunk + o): tokens billed per result whose text was not captured."""
    per_call: float | None
    """ρ·c: tokens billed per file_search call (not changed by dropping results)."""
    intercept: float | None
    per_step: float | None
    mape_holdout: float | None
    """Mean absolute % error (0.01 = 1%) of held-out runs' predicted input tokens."""
    folds: int
    mean_repeat_weight: float | None = None
    coefficients: Mapping[str, float] = field(default_factory=dict)

    @property
    def overhead_per_result(self) -> float | None:
        """o: formatting tokens around each result (``per_known_result / per_token``)."""
        if self.per_token is None or self.per_known_result is None or self.per_token == 0:
            return None
        return self.per_known_result / self.per_token

    @property
    def tokens_per_unknown_chunk(self) -> float | None:
        """Fitted tokens of a chunk whose text was not captured (``u/ρ - o``); needs ρ and o."""
        o = self.overhead_per_result
        if self.per_unknown_result is None or o is None or not self.per_token:
            return None
        return self.per_unknown_result / self.per_token - o

    @property
    def repeat(self) -> float | None:
        """Times a run pays for a result: ρ × the mean repeat weight of its search runs."""
        if self.per_token is None or self.mean_repeat_weight is None:
            return None
        return self.per_token * self.mean_repeat_weight

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with the derived figures."""
        out = asdict(self)
        out["coefficients"] = dict(self.coefficients)
        out["overhead_per_result"] = self.overhead_per_result
        out["tokens_per_unknown_chunk"] = self.tokens_per_unknown_chunk
        out["repeat"] = self.repeat
        return out


_COLUMN_ORDER = ("intercept", "per_step", "per_call", "per_token", "per_known_result", "per_unknown_result")


def _design(frame: pl.DataFrame, uses_steps: bool) -> tuple[dict[str, np.ndarray], np.ndarray]:
    steps = frame["model_steps"].fill_null(1).to_numpy().astype(float) if uses_steps else None
    w = np.maximum(steps - 1, 0) if steps is not None else np.ones(frame.height)
    cols: dict[str, np.ndarray] = {"intercept": np.ones(frame.height)}
    if steps is not None:
        cols["per_step"] = steps
    cols["per_call"] = w * frame["calls"].to_numpy().astype(float)
    cols["per_token"] = w * frame["t_known"].to_numpy()
    cols["per_known_result"] = w * frame["n_known"].to_numpy()
    cols["per_unknown_result"] = w * frame["n_unknown"].to_numpy()
    return cols, w


def _identifiable(cols: Mapping[str, np.ndarray]) -> list[str]:
    """Columns admitted in ``_COLUMN_ORDER`` when each raises the (column-normalised) rank."""
    unit: dict[str, np.ndarray] = {}
    for name in _COLUMN_ORDER:
        if name in cols:
            norm = float(np.sqrt(np.einsum("i,i->", cols[name], cols[name])))
            if norm > 0:
                unit[name] = cols[name] / norm
    kept: list[str] = []
    for name, col in unit.items():
        trial = np.column_stack([unit[k] for k in kept] + [col])
        if np.linalg.matrix_rank(trial, tol=1e-7) == len(kept) + 1:
            kept.append(name)
    return kept


def _solve(cols: Mapping[str, np.ndarray], names: Sequence[str], y: np.ndarray) -> np.ndarray:
    x = np.column_stack([cols[k] for k in names])
    scale = np.linalg.norm(x, axis=0)
    beta, *_ = np.linalg.lstsq(x / scale, y, rcond=None)
    return np.asarray(beta / scale)


def fit_api(frame: pl.DataFrame, api: str, *, folds: int = 5) -> BillingFit:
    """Fit one API's billing from its rows of :func:`run_features` (pure)."""
    uses_steps = frame.height > 0 and frame["model_steps"].null_count() < frame.height
    cols, w = _design(frame, uses_steps)
    y = frame["input_tokens"].to_numpy().astype(float)
    names = _identifiable(cols) if frame.height else []
    coef: dict[str, float] = {}
    if names and frame.height >= len(names):
        coef = dict(zip(names, (float(b) for b in _solve(cols, names, y)), strict=True))
    search = (frame["calls"].to_numpy() > 0) if frame.height else np.zeros(0, bool)
    mape = _cross_validated_mape(frame, cols, names, y, folds)
    return BillingFit(
        api=api,
        runs=frame.height,
        search_runs=int(search.sum()),
        repeat_source="model_steps" if uses_steps else "hidden",
        per_token=coef.get("per_token"),
        per_known_result=coef.get("per_known_result"),
        per_unknown_result=coef.get("per_unknown_result"),
        per_call=coef.get("per_call"),
        intercept=coef.get("intercept"),
        per_step=coef.get("per_step"),
        mape_holdout=mape,
        folds=folds,
        mean_repeat_weight=float(w[search].mean()) if search.any() else None,
        coefficients=coef,
    )


def _cross_validated_mape(frame: pl.DataFrame, cols: Mapping[str, np.ndarray], names: Sequence[str],
                          y: np.ndarray, folds: int) -> float | None:
    if not names or frame.height < 2 * len(names) or folds < 2:
        return None
    fold = (frame["run_id"].hash(seed=7) % folds).to_numpy()
    errors: list[np.ndarray] = []
    for k in range(folds):
        test = fold == k
        train = ~test
        if not test.any() or train.sum() < len(names):
            continue
        sub = {n: cols[n][train] for n in names}
        if _identifiable(sub) != list(names):
            continue  # this training split cannot separate the columns: skip rather than mislead
        beta = _solve(sub, names, y[train])
        pred = np.column_stack([cols[n][test] for n in names]) @ beta
        ok = y[test] > 0
        if ok.any():  # a run billed 0 input tokens has no relative error
            errors.append(np.abs(pred[ok] - y[test][ok]) / y[test][ok])
    if not errors:
        return None
    return float(np.concatenate(errors).mean())


MIN_FIRST_TURNS = 20
"""Fit on first turns only when an API has at least this many (history would blur the base prompt)."""


def fit_billing(frame: pl.DataFrame, *, folds: int = 5) -> dict[str, BillingFit]:
    """One :class:`BillingFit` per API present in ``frame`` (rows of :func:`run_features`).

    Runs that continue a thread carry a history the design cannot see, so an API's fit uses only the
    runs that start a thread (or stand alone) when it has at least :data:`MIN_FIRST_TURNS` of them.
    """
    out: dict[str, BillingFit] = {}
    for api in sorted(frame["api"].unique().to_list()):
        rows = frame.filter(pl.col("api") == api)
        if "later_turn" in rows.columns:
            first = rows.filter(~pl.col("later_turn"))
            if first.height >= MIN_FIRST_TURNS:
                rows = first
        out[api] = fit_api(rows, api, folds=folds)
    return out


def fit_store(con: duckdb.DuckDBPyConnection, *, folds: int = 5) -> dict[str, BillingFit]:
    """Fit every API's billing from an open store."""
    return fit_billing(run_features(con), folds=folds)
