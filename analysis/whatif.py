"""What if file_search returned fewer results: the ``max_num_results`` and ``score_threshold`` what-ifs.

For a lower ``max_num_results`` N, every recorded file_search call loses its results at rank N+1 and
below; for a higher ``score_threshold`` t, every result scoring ≤ t (the service keeps scores above the
threshold). A dropped result saves what the service billed for it, priced with the fitted billing of
its API (:mod:`analysis.fit`): ``w × (ρ × its tokens + ρ·o)``, or ``w × u`` when its text was not
captured, where ``w`` is the run's repeat weight (a coefficient fitted below 0 counts as 0, so dropping
results never adds tokens). Each scenario reports:

- ``runs_affected``: runs that lose at least one result;
- ``input_tokens_per_run`` over every run with usage, and the cost per 1,000 runs and per month at the
  observed volume (runs per day over the recorded window, at least one day, × 30);
- what it would lose: ``citation_recall`` (share of cited results kept), ``score_mass_kept`` (share of
  the results' summed score kept) and ``lose_all_cited_share`` (of the runs that cited a result, the share
  that would keep none of the results they cited).

Cost: the saved tokens of a (model, UTC day, service tier, API) group are priced at that group's mean
input price per token (its input, cached-input and cache-write meters over its input tokens:
:func:`analysis.cost_by.group_rates`), so cached discounts apply in proportion.
Output tokens and file_search call fees are taken as unchanged.

``bound`` says how far a figure can be trusted: ``exact`` (within the fit); ``lower`` (a higher N or a
lower threshold asks for results that were never retrieved: tokens and cost can only be higher);
``upper`` (the fit could not price every dropped result, so the saving shown is a part of the real one);
``unknown`` (both). Never "no change" for results nobody saw.

Assumptions, stated: a run that did not record its ``max_num_results`` used the default of 20; a call
that returned as many results as its setting allowed is *saturated* (more would have passed a lower
threshold or a higher N); Responses runs recorded without results are taken to have returned
``max_num_results`` results per call, their tokens and citations unknown. A run whose calls' results were
recorded and held none (``retrieved_chunks`` 0) is known, not unrecorded: it has nothing to lose at a lower
N and nothing capped at a higher one (it is neither affected nor saturated), though a lower threshold than
it used could have found results (``unknown`` there).

Heavy aggregation is SQL over ``runs`` and ``retrieved_chunks``; the per-scenario sweep runs over the
small per-(group, rank) and per-(group, score bin) profiles.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import duckdb
import numpy as np
import polars as pl

from analysis import summary_tables
from analysis.cost_by import group_rates
from analysis.fit import DEFAULT_RESULTS_WHEN_UNKNOWN, BillingFit, fit_store, repeat_weight_sql
from analysis.prices import PriceTable

Bound = Literal["exact", "lower", "upper", "unknown"]

MAX_N = 50
"""The API's upper limit for ``max_num_results`` (the lower is 1)."""

SCORE_BINS = 100
"""Scores are binned to 0.01: a threshold on that grid is exact."""

_GROUP = ("api", "model", "day", "tier")


class WhatIfError(ValueError):
    """A what-if asked for something outside what the API accepts (the message names the value)."""


def check_n(values: Iterable[int]) -> list[int]:
    """Validate ``max_num_results`` values (1–50); returns them sorted, unique."""
    out = set()
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_N:
            raise WhatIfError(f"max_num_results {v!r} is outside 1–{MAX_N}")
        out.add(v)
    return sorted(out)


def check_thresholds(values: Iterable[float]) -> list[float]:
    """Validate ``score_threshold`` values (0–1); returns them sorted, unique."""
    out = set()
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= float(v) <= 1.0:
            raise WhatIfError(f"score_threshold {v!r} is outside 0–1")
        out.add(round(float(v), 2))
    return sorted(out)


_RUNS_SQL = """
CREATE OR REPLACE TEMP TABLE _wi_runs AS
SELECT r.run_id, r.api, r.model, CAST(r.started_at AT TIME ZONE 'UTC' AS DATE) AS day,
       nullif(nullif(r.service_tier, ''), 'default') AS tier,
       ({w})::DOUBLE AS w,
       coalesce(r.max_num_results, {default_n}) AS setting,
       coalesce(r.score_threshold, 0) AS thr,
       coalesce(r.file_search_calls, 0) AS calls,
       r.retrieved_chunks
FROM runs r
WHERE r.input_tokens IS NOT NULL AND (coalesce(r.file_search_calls, 0) > 0 OR r.retrieved_chunks > 0)
"""

_PER_RUN_SQL = """
CREATE OR REPLACE TEMP TABLE _wi_per_run AS
SELECT c.run_id, max(c.rank) AS max_rank,
       min(c.rank) FILTER (WHERE c.cited) AS min_cited_rank,
       min(ceil(c.score * {bins})) AS min_bin,
       max(ceil(c.score * {bins})) FILTER (WHERE c.cited) AS max_cited_bin,
       count(*) FILTER (WHERE c.score IS NULL) AS unscored
FROM retrieved_chunks c GROUP BY c.run_id
"""

_PROFILE_SQL = """
SELECT r.api, r.model, r.day, r.tier, {key} AS key,
       count(*)::DOUBLE AS chunks,
       coalesce(sum(r.w * c.content_tokens), 0)::DOUBLE AS w_tokens,
       coalesce(sum(r.w) FILTER (WHERE c.content_tokens IS NOT NULL), 0)::DOUBLE AS w_known,
       coalesce(sum(r.w) FILTER (WHERE c.content_tokens IS NULL), 0)::DOUBLE AS w_unknown,
       (count(*) FILTER (WHERE c.cited))::DOUBLE AS cited,
       coalesce(sum(TRY_CAST(c.score AS DECIMAL(38, 18))), 0)::DECIMAL(38, 18) AS score_sum
FROM retrieved_chunks c JOIN _wi_runs r USING (run_id)
WHERE {key} IS NOT NULL
GROUP BY ALL
"""

# Responses runs recorded without results: ``setting`` results per call at ranks 1..setting, unknown text.
_VIRTUAL_SQL = """
SELECT r.api, r.model, r.day, r.tier, k.key::INTEGER AS key,
       sum(r.calls)::DOUBLE AS chunks, 0::DOUBLE AS w_tokens, 0::DOUBLE AS w_known,
       sum(r.w * r.calls)::DOUBLE AS w_unknown, 0::DOUBLE AS cited, 0::DECIMAL(38, 18) AS score_sum
FROM _wi_runs r
CROSS JOIN LATERAL (SELECT unnest(range(1, coalesce(r.retrieved_chunks, r.setting) + 1)) AS key) k
WHERE r.calls > 0 AND r.run_id NOT IN (SELECT run_id FROM _wi_per_run)
GROUP BY ALL
"""


@dataclass(frozen=True, slots=True)
class WhatIfRow:
    """One scenario's outcome (a ``max_num_results`` N or a ``score_threshold``)."""

    max_num_results: int | None
    score_threshold: float | None
    runs: int
    runs_affected: int
    runs_unknown: int
    """Runs whose outcome needs results never retrieved (saturated calls asked for more)."""
    input_tokens_per_run: float | None
    input_tokens_saved_per_run: float | None
    cost_per_1k_runs_usd: float | None
    cost_per_month_usd: float | None
    citation_recall: float | None
    score_mass_kept: float | None
    lose_all_cited_share: float | None
    bound: Bound
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        out = asdict(self)
        out["notes"] = list(self.notes)
        return out


@dataclass(frozen=True, slots=True)
class Baseline:
    """The store as recorded: the figures every scenario is compared with."""

    runs: int
    priced_runs: int
    input_tokens: float
    cost_usd: float
    runs_per_day: float
    window_days: float
    current_max_num_results: int | None
    """The highest ``max_num_results`` a recorded file_search run used."""
    file_search_runs: int
    runs_with_citations: int
    unpriced_reasons: Mapping[str, int] = field(default_factory=dict)

    def cost_per_1k_runs(self, saved_usd: float = 0.0) -> float | None:
        """USD per 1,000 priced runs with ``saved_usd`` less spent (0: as recorded); ``None`` without priced
        runs. The one formula of the baseline's figure and every what-if row's ``cost_per_1k_runs_usd``."""
        return (self.cost_usd - saved_usd) / self.priced_runs * 1000 if self.priced_runs else None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        out = asdict(self)
        out["unpriced_reasons"] = dict(self.unpriced_reasons)
        return out


@dataclass(slots=True)
class _Profiles:
    """Everything the sweeps need, small enough for memory."""

    groups: pl.DataFrame
    """Per (api, model, day, tier): see :func:`analysis.cost_by.group_rates`."""
    ranks: pl.DataFrame
    bins: pl.DataFrame
    per_run: pl.DataFrame
    """Histograms over runs: setting, saturated, max_rank, min_cited_rank, min_bin, max_cited_bin, thr."""
    baseline: Baseline


def _frame(con: duckdb.DuckDBPyConnection, sql: str) -> pl.DataFrame:
    frame = pl.from_arrow(con.sql(sql).to_arrow_table())
    assert isinstance(frame, pl.DataFrame)
    return frame


# A run without chunk rows is unobserved (and taken as saturated) only when its results were not recorded:
# ``retrieved_chunks`` NULL. 0 is a recorded fact (every call carried its results, none came back).
_PER_RUN_HISTOGRAM_SQL = """
SELECT r.api, r.setting, r.thr, r.calls,
       (r.calls > 0 AND p.run_id IS NULL AND coalesce(r.retrieved_chunks, 1) > 0) AS unobserved,
       coalesce(p.max_rank >= r.setting, r.calls > 0 AND coalesce(r.retrieved_chunks, 1) > 0) AS saturated,
       p.max_rank, p.min_cited_rank, p.min_bin, p.max_cited_bin,
       count(*)::BIGINT AS runs
FROM _wi_runs r LEFT JOIN _wi_per_run p USING (run_id)
GROUP BY ALL
"""

RANKS_SUMMARY = "summary_whatif_ranks"
BINS_SUMMARY = "summary_whatif_bins"
RUNS_SUMMARY = "summary_whatif_runs"

SUMMARIES = {
    RANKS_SUMMARY: _PROFILE_SQL.format(key="c.rank") + " UNION ALL " + _VIRTUAL_SQL,
    BINS_SUMMARY: _PROFILE_SQL.format(key=f"ceil(c.score * {SCORE_BINS})::INTEGER"),
    RUNS_SUMMARY: _PER_RUN_HISTOGRAM_SQL,
}
"""The what-if's summaries, all additive per run (score sums are exact DECIMALs, so adding and subtracting
runs at ingest gives the very sums a rebuild would): per (api, model, day, tier, rank) and per (..., score
bin) the chunk counts, repeat-weighted tokens, citations and score sums; and the run histogram over
(api, setting, threshold, calls, unobserved, saturated, max rank, first cited rank, lowest score bin,
highest cited score bin). A writer keeps them by adding each ingested run's rows (and subtracting the
rows of a run it replaces), under the keys this SQL gives them: a change to the SQL that moves a run to
other keys ships with a store migration that rebuilds the summary (see :data:`RUNS_SUMMARY_MIGRATION`)."""

RUNS_SUMMARY_MIGRATION = "m004_whatif_zero_results"
"""The store migration that rebuilt :data:`RUNS_SUMMARY` with the current SQL (zero-result runs counted as
known). A store without it keeps runs under older keys: the raw rows answer there until a writer migrates
it."""


def _prepare(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(_RUNS_SQL.format(w=repeat_weight_sql("r"), default_n=DEFAULT_RESULTS_WHEN_UNKNOWN))
    con.execute(_PER_RUN_SQL.format(bins=SCORE_BINS))


def _drop(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("DROP TABLE IF EXISTS _wi_runs")
    con.execute("DROP TABLE IF EXISTS _wi_per_run")


def materialize(con: duckdb.DuckDBPyConnection) -> None:
    """Build the what-if's summary tables (and the cost and fit summaries it reads) from the raw tables:
    what a writer would maintain at ingest. Needs a read-write connection."""
    from analysis import cost_by, fit

    summary_tables.materialize(con, cost_by.SUMMARIES)
    summary_tables.materialize(con, fit.summaries(con))
    _materialize(con, tuple(SUMMARIES))


def materialize_runs(con: duckdb.DuckDBPyConnection) -> None:
    """Rebuild the run histogram (:data:`RUNS_SUMMARY`) alone from the raw tables, as
    :func:`materialize` would (the store migration that changed its SQL). Needs a read-write connection."""
    _materialize(con, (RUNS_SUMMARY,))


def _materialize(con: duckdb.DuckDBPyConnection, names: tuple[str, ...]) -> None:
    _prepare(con)
    try:
        summary_tables.materialize(con, {name: f"SELECT * FROM ({SUMMARIES[name]})" for name in names})
    finally:
        _drop(con)


def _load(con: duckdb.DuckDBPyConnection, prices: PriceTable) -> _Profiles:
    names = tuple(SUMMARIES)
    if summary_tables.fresh(con, names) and summary_tables.migrated(con, RUNS_SUMMARY_MIGRATION):
        ranks, bins, per_run = (_frame(con, f"SELECT * FROM {n}") for n in names)
    else:
        _prepare(con)
        try:
            ranks, bins, per_run = (_frame(con, sql) for sql in SUMMARIES.values())
        finally:
            _drop(con)
    span = con.execute(
        "SELECT epoch(max(started_at)) - epoch(min(started_at)) FROM runs WHERE input_tokens IS NOT NULL"
    ).fetchall()[0]
    groups, unpriced = group_rates(con, prices)
    runs = int(groups["runs"].sum()) if groups.height else 0
    priced = groups.filter(pl.col("cost_usd").is_not_null())
    window_days = max(float(span[0] or 0.0) / 86_400, 1.0)
    fs = per_run.filter(pl.col("calls") > 0)
    baseline = Baseline(
        runs=runs,
        priced_runs=int(priced["priced_runs"].sum()) if priced.height else 0,
        input_tokens=float(groups["input_tokens"].sum()) if groups.height else 0.0,
        cost_usd=float(priced["cost_usd"].sum()) if priced.height else 0.0,
        runs_per_day=runs / window_days,
        window_days=window_days,
        current_max_num_results=int(fs["setting"].max()) if fs.height else None,  # type: ignore[arg-type]
        file_search_runs=int(fs["runs"].sum()) if fs.height else 0,
        runs_with_citations=int(per_run.filter(pl.col("min_cited_rank").is_not_null())["runs"].sum()),
        unpriced_reasons=unpriced,
    )
    return _Profiles(groups, ranks, bins, per_run, baseline)


def _coef(fits: Mapping[str, BillingFit], api: str, name: str) -> float | None:
    fit = fits.get(api)
    return None if fit is None else getattr(fit, name)


def _savings(profile: pl.DataFrame, dropped: pl.Expr, groups: pl.DataFrame,
             fits: Mapping[str, BillingFit]) -> tuple[float, float, bool]:
    """Tokens saved, USD saved, and whether every dropped result could be priced."""
    part = profile.filter(dropped)
    if part.height == 0:
        return 0.0, 0.0, True
    # a fixed order: float sums below must not depend on hash order (same answer on every run)
    agg = part.group_by(list(_GROUP)).agg(pl.col("w_tokens").sum(), pl.col("w_known").sum(),
                                          pl.col("w_unknown").sum()).sort(list(_GROUP), nulls_last=True)
    complete = True
    tokens = np.zeros(agg.height)
    apis = agg["api"].to_list()
    for col, coef_name in (("w_tokens", "per_token"), ("w_known", "per_known_result"),
                           ("w_unknown", "per_unknown_result")):
        values = agg[col].to_numpy()
        coefs = np.array([_coef(fits, a, coef_name) if _coef(fits, a, coef_name) is not None else np.nan
                          for a in apis], dtype=float)
        # billing cannot be negative: a coefficient that came out below 0 (noise) saves nothing
        coefs = np.where(np.isnan(coefs), np.nan, np.maximum(coefs, 0.0))
        missing = np.isnan(coefs) & (values > 0)
        complete = complete and not bool(missing.any())
        tokens += np.where(np.isnan(coefs), 0.0, coefs * values)
    priced = agg.with_columns(pl.Series("saved", tokens)).join(
        groups, on=list(_GROUP), how="left", nulls_equal=True, maintain_order="left")
    usd = priced.select((pl.col("saved") * pl.col("input_rate")).sum()).item()
    return float(tokens.sum()), float(usd or 0.0), complete


def _bound(lower: bool, upper: bool) -> Bound:
    if lower and upper:
        return "unknown"
    return "lower" if lower else "upper" if upper else "exact"


def _row(p: _Profiles, *, n: int | None, t: float | None, saved_tokens: float, saved_usd: float,
         complete: bool, affected: int, unknown: int, kept_cited: float | None, kept_score: float | None,
         lose_all: int | None, notes: list[str]) -> WhatIfRow:
    b = p.baseline
    per_run = (b.input_tokens - saved_tokens) / b.runs if b.runs else None
    cost_1k = b.cost_per_1k_runs(saved_usd)
    month = cost_1k / 1000 * b.runs_per_day * 30 if cost_1k is not None else None
    if not complete:
        notes.append("the fit could not price every dropped result: the saving shown is part of the real one")
    if unknown:
        notes.append(f"{unknown} run(s) would need results never retrieved: tokens and cost are lower bounds")
    return WhatIfRow(
        max_num_results=n, score_threshold=t, runs=b.runs, runs_affected=affected, runs_unknown=unknown,
        input_tokens_per_run=per_run, input_tokens_saved_per_run=saved_tokens / b.runs if b.runs else None,
        cost_per_1k_runs_usd=cost_1k, cost_per_month_usd=month,
        citation_recall=kept_cited, score_mass_kept=kept_score,
        lose_all_cited_share=(lose_all / b.runs_with_citations
                              if lose_all is not None and b.runs_with_citations else None),
        bound=_bound(unknown > 0, not complete), notes=tuple(notes),
    )


def _share_kept(profile: pl.DataFrame, dropped: pl.Expr, column: str) -> float | None:
    total = float(profile[column].sum()) if profile.height else 0.0
    if total == 0:
        return None
    lost = float(profile.filter(dropped)[column].sum())
    return (total - lost) / total


def _sum_runs(frame: pl.DataFrame, cond: pl.Expr) -> int:
    return int(frame.filter(cond)["runs"].sum())


def _n_row(p: _Profiles, fits: Mapping[str, BillingFit], n: int) -> WhatIfRow:
    dropped = pl.col("key") > n
    saved, usd, complete = _savings(p.ranks, dropped, p.groups, fits)
    runs = p.per_run
    affected = _sum_runs(runs, (pl.col("max_rank") > n) | (pl.col("unobserved") & (pl.col("setting") > n)))
    unknown = _sum_runs(runs, pl.col("saturated") & (pl.col("setting") < n))
    notes: list[str] = []
    unobserved = _sum_runs(runs, pl.col("unobserved") & (pl.col("setting") > n))
    if unobserved:
        notes.append(f"{unobserved} affected run(s) were recorded without results: citations unknown")
    lose_all = _sum_runs(runs, pl.col("min_cited_rank") > n)
    return _row(p, n=n, t=None, saved_tokens=saved, saved_usd=usd, complete=complete, affected=affected,
                unknown=unknown, kept_cited=_share_kept(p.ranks, dropped, "cited"),
                kept_score=_share_kept(p.ranks, dropped, "score_sum"), lose_all=lose_all, notes=notes)


def _t_row(p: _Profiles, fits: Mapping[str, BillingFit], t: float) -> WhatIfRow:
    cut = round(t * SCORE_BINS)
    dropped = pl.col("key") <= cut
    saved, usd, complete = _savings(p.bins, dropped, p.groups, fits)
    runs = p.per_run
    affected = _sum_runs(runs, pl.col("min_bin") <= cut)
    # a lower threshold than a run used could add results, unless its calls were already capped by N
    unknown = _sum_runs(runs, (pl.col("calls") > 0) & ~pl.col("saturated") & (pl.col("thr") > t))
    notes: list[str] = []
    unscored = _sum_runs(runs, pl.col("unobserved"))
    if unscored:
        notes.append(f"{unscored} run(s) were recorded without results: their scores are unknown, "
                     "counted as unchanged")
        complete = False
    lose_all = _sum_runs(runs, pl.col("max_cited_bin") <= cut)
    return _row(p, n=None, t=t, saved_tokens=saved, saved_usd=usd, complete=complete, affected=affected,
                unknown=unknown, kept_cited=_share_kept(p.bins, dropped, "cited"),
                kept_score=_share_kept(p.bins, dropped, "score_sum"), lose_all=lose_all, notes=notes)


@dataclass(frozen=True, slots=True)
class WhatIfReport:
    """A sweep's rows with the baseline and the fits they were computed with."""

    baseline: Baseline
    fits: Mapping[str, BillingFit]
    rows: Sequence[WhatIfRow]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"baseline": self.baseline.to_json(), "fits": {k: v.to_json() for k, v in self.fits.items()},
                "rows": [r.to_json() for r in self.rows]}


def whatif(
    con: duckdb.DuckDBPyConnection,
    prices: PriceTable,
    *,
    max_num_results: Sequence[int] | None = None,
    score_thresholds: Sequence[float] = (),
    fits: Mapping[str, BillingFit] | None = None,
) -> WhatIfReport:
    """Sweep ``max_num_results`` (default: every N from 1 to the highest recorded setting) and any
    ``score_thresholds`` over an open store. ``fits`` default to :func:`analysis.fit.fit_store`."""
    ns = check_n(max_num_results) if max_num_results is not None else None
    ts = check_thresholds(score_thresholds)
    if fits is None:
        fits = fit_store(con)
    profiles = _load(con, prices)
    if ns is None:
        top = profiles.baseline.current_max_num_results
        ns = list(range(1, top + 1)) if top else []
    rows = [_n_row(profiles, fits, n) for n in ns] + [_t_row(profiles, fits, t) for t in ts]
    return WhatIfReport(profiles.baseline, fits, rows)
