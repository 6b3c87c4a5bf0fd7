"""Summary tables kept at ingest: the writer's run hook applies each batch's contribution to them.

The writer calls :func:`maintain` inside the transaction that writes a batch of runs, before the runs are
written, with each run's stored merged record (before, or ``None``) and new merged record (after). A
summary's contribution of a set of runs is the summary's own SELECT (``analysis.cost_by.SUMMARIES``,
``analysis.whatif.SUMMARIES``) evaluated over just those runs, handed to DuckDB as Arrow frames built
with the writer's own conversions (:mod:`collector.store.schema`): so ingest cannot drift from what
:func:`analysis.summary_tables.materialize` builds. Per summary, the batch's delta (after minus before,
summed per key) is merged into the table in three statements; a key whose count falls to 0 is removed.

The billing fit's sample (``summary_fit_sample``) is one row per sampled run, and a run's row depends on
other runs (``later_turn``: an earlier run of its thread, or a run it continues): the rows of the batch's
runs and of the sampled runs sharing a thread with them are recomputed with the fit's own SQL over the
store as it will be after the batch; when the sample's modulus changes (the number of completed runs
crossed a multiple of the sample size) the sample is rebuilt.

All of that is computed first, on a cursor of its own (a failed statement aborts a DuckDB transaction:
an error there must not cost the writer its batch); only then are the rows written into the writer's
transaction, with ``summary_meta``'s counts. The hook does nothing when the summaries are not fresh before
the batch (rows written by anything but the writer, or a failed batch of the hook): analyses then read the
raw rows until the summaries are rebuilt (:func:`analysis.summary_tables.materialize_all`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from analysis import summary_tables as st
from collector.record import ChunkRecord, RunRecord
from collector.store.schema import chunk_rows_table, runs_table

Pairs = Sequence[tuple[RunRecord | None, RunRecord]]

_TABLE_REF = re.compile(r"\b(FROM|JOIN)\s+(runs|retrieved_chunks)\b")
_ADDITIVE = (st.USAGE, st.WHATIF_RANKS, st.WHATIF_BINS, st.WHATIF_RUNS)
_IDS = "(SELECT run_id FROM _sh_ids)"


def over(sql: str, runs: str, chunks: str) -> str:
    """``sql`` with its ``runs`` and ``retrieved_chunks`` tables read from other relations."""
    return _TABLE_REF.sub(lambda m: f"{m.group(1)} {runs if m.group(2) == 'runs' else chunks}", sql)


def effective_chunks(before: RunRecord | None, after: RunRecord) -> list[ChunkRecord]:
    """The chunk rows the store holds for ``after`` once written: its chunks deduplicated by (call, rank),
    the last one winning (as the writer does), or the stored ones when it carries none."""
    if after.chunks:
        seen: dict[tuple[str, int], ChunkRecord] = {}
        for c in after.chunks:
            seen[(c.call_id, c.rank)] = c
        return list(seen.values())
    return list(before.chunks) if before is not None else []


def _fit_member(r: RunRecord) -> int:
    return int(r.input_tokens is not None and r.status == "completed")


@dataclass(frozen=True, slots=True)
class BatchFrames:
    """A batch as the rows it removes (the stored versions of its runs) and the rows it writes (pure)."""

    ids: pa.Table
    before_runs: pa.Table
    before_chunks: pa.Table
    after_runs: pa.Table
    after_chunks: pa.Table
    threads: pa.Table
    """Every thread id of the batch's runs (before and after) and every run id (a run may continue one)."""
    new_runs: int
    chunk_delta: int
    fit_delta: int
    """Change in completed runs with usage (the fit's population)."""

    @staticmethod
    def of(pairs: Pairs) -> BatchFrames:
        """The frames of a batch of (stored or None, merged) runs."""
        befores = [b for b, _ in pairs if b is not None]
        afters = [a for _, a in pairs]
        after_chunks = [(a.run_id, effective_chunks(b, a)) for b, a in pairs]
        threads = {r.thread_id for r in (*befores, *afters) if r.thread_id is not None}
        threads.update(a.run_id for a in afters)
        return BatchFrames(
            ids=pa.table({"run_id": pa.array([a.run_id for a in afters], pa.string())}),
            before_runs=runs_table(befores, 0.0),
            before_chunks=chunk_rows_table([(b.run_id, b.chunks) for b in befores]),
            after_runs=runs_table(afters, 0.0),
            after_chunks=chunk_rows_table(after_chunks),
            threads=pa.table({"t": pa.array(sorted(threads), pa.string())}),
            new_runs=len(afters) - len(befores),
            chunk_delta=sum(len(c) for _, c in after_chunks) - sum(len(b.chunks) for b in befores),
            fit_delta=sum(map(_fit_member, afters)) - sum(map(_fit_member, befores)),
        )


def prepare() -> None:
    """Import the analyses' SQL (polars, numpy) before the writer holds the DuckDB file."""
    from analysis import cost_by, fit, whatif  # noqa: F401


@dataclass(slots=True)
class Plan:
    """What a batch changes, computed before anything is written: per additive summary the rows to add
    per key (its columns, in order), and the fit sample's new rows with the run ids they replace (None:
    the whole sample)."""

    deltas: dict[str, pa.Table]
    fit_rows: pa.Table
    fit_replaces: pa.Table | None


def maintain(conn: duckdb.DuckDBPyConnection, pairs: Pairs, *, sample: int | None = None) -> bool:
    """Apply a batch to the summary tables and ``summary_meta`` (inside the caller's transaction, before
    the runs are written); returns whether they were maintained (False: not fresh, left alone).

    Everything that evaluates the analyses' SQL over the data runs on a cursor of its own, so a failure
    there (raised to the caller) cannot abort the caller's transaction: the runs are still written and
    the summaries, their counts not moved, are stale. ``sample`` is the fit's sample size (default
    :data:`analysis.fit.FIT_SAMPLE_RUNS`).
    """
    from analysis.fit import FIT_SAMPLE_RUNS

    if not pairs or not st.fresh(conn, st.ALL):
        return False
    frames = BatchFrames.of(pairs)
    cur = conn.cursor()
    try:
        plan = _plan(cur, frames, FIT_SAMPLE_RUNS if sample is None else sample)
    finally:
        cur.close()
    shapes = {name: [c for c, _ in st.columns(conn, name)] for name in st.ALL}
    if any(plan.deltas[n].column_names != shapes[n] for n in _ADDITIVE) or \
            plan.fit_rows.column_names != shapes[st.FIT_SAMPLE]:
        return False  # a table rebuilt with other columns: leave them all stale
    _apply(conn, plan)
    conn.execute(f"UPDATE {st.META} SET runs = runs + ?, chunks = chunks + ? "
                 "WHERE name IN (SELECT unnest(?::VARCHAR[]))",
                 [frames.new_runs, frames.chunk_delta, list(st.ALL)])
    return True


def _plan(cur: duckdb.DuckDBPyConnection, frames: BatchFrames, sample: int) -> Plan:
    for name, table in (("_sh_ids", frames.ids), ("_sh_b_runs", frames.before_runs),
                        ("_sh_b_chunks", frames.before_chunks), ("_sh_a_runs", frames.after_runs),
                        ("_sh_a_chunks", frames.after_chunks), ("_sh_threads", frames.threads)):
        cur.register(name, table)
    sides = ["a"] + (["b"] if frames.before_runs.num_rows else [])
    for side in sides:
        _contributions(cur, f"_sh_{side}_runs", f"_sh_{side}_chunks", side)
    deltas = {name: _delta(cur, name, sides) for name in _ADDITIVE}
    fit_rows, fit_replaces = _fit_rows(cur, frames, sample)
    return Plan(deltas, fit_rows, fit_replaces)


def _contributions(cur: duckdb.DuckDBPyConnection, runs: str, chunks: str, side: str) -> None:
    """``_sh_{side}_{summary}``: each additive summary's rows over just ``runs`` and ``chunks``."""
    from analysis import cost_by, whatif
    from analysis.fit import DEFAULT_RESULTS_WHEN_UNKNOWN, repeat_weight_sql

    cur.execute(f"CREATE OR REPLACE TEMP TABLE _sh_{side}_{st.USAGE} AS "
                f"{over(cost_by.SUMMARIES[st.USAGE], runs, chunks)}")
    # the what-if's per-run inputs, as analysis.whatif._prepare makes them
    per_run = whatif._RUNS_SQL.format(w=repeat_weight_sql("r"), default_n=DEFAULT_RESULTS_WHEN_UNKNOWN)
    cur.execute(over(per_run, runs, chunks))
    cur.execute(over(whatif._PER_RUN_SQL.format(bins=whatif.SCORE_BINS), runs, chunks))
    for name, sql in whatif.SUMMARIES.items():
        cur.execute(f"CREATE OR REPLACE TEMP TABLE _sh_{side}_{name} AS {over(sql, runs, chunks)}")


def _delta(cur: duckdb.DuckDBPyConnection, name: str, sides: list[str]) -> pa.Table:
    """The batch's rows to add to summary ``name``: after minus before, per key, zero rows left out."""
    keys = st.KEYS[name]
    cols = st.columns(cur, name)
    all_cols = ", ".join(c for c, _ in cols)
    parts = [f"SELECT {all_cols} FROM _sh_a_{name}"]
    if "b" in sides:
        parts.append(f"SELECT {', '.join(c if c in keys else f'-{c} AS {c}' for c, _ in cols)} "
                     f"FROM _sh_b_{name}")
    changed = " OR ".join(f"coalesce({c}, 0) <> 0" for c, _ in cols if c not in keys)
    return cur.sql(f"SELECT * FROM (SELECT {_summed(cols, keys)} FROM ({' UNION ALL '.join(parts)}) "
                   f"GROUP BY ALL) WHERE {changed}").to_arrow_table()


def _summed(cols: list[tuple[str, str]], keys: tuple[str, ...]) -> str:
    return ", ".join(c if c in keys else f"sum({c})::{t} AS {c}" for c, t in cols)


def _apply(conn: duckdb.DuckDBPyConnection, plan: Plan) -> None:
    """Write the plan into the caller's transaction (plain inserts and deletes of rows already computed)."""
    try:
        for name, delta in plan.deltas.items():
            if not delta.num_rows:
                continue
            keys = st.KEYS[name]
            cols = st.columns(conn, name)
            conn.register("_sh_delta_rows", delta)
            conn.execute("CREATE OR REPLACE TEMP TABLE _sh_delta AS SELECT "
                         f"{', '.join(f'{c}::{t} AS {c}' for c, t in cols)} FROM _sh_delta_rows")
            on = " AND ".join(f"t.{k} IS NOT DISTINCT FROM d.{k}" for k in keys)
            conn.execute(f"CREATE OR REPLACE TEMP TABLE _sh_new AS SELECT {_summed(cols, keys)} FROM ("
                         f"SELECT t.* FROM {name} t SEMI JOIN _sh_delta d ON {on} "
                         f"UNION ALL SELECT * FROM _sh_delta) GROUP BY ALL")
            conn.execute(f"DELETE FROM {name} t USING _sh_delta d WHERE {on}")
            conn.execute(f"INSERT INTO {name} SELECT * FROM _sh_new WHERE {st.COUNT_COLUMN[name]} <> 0")
            conn.unregister("_sh_delta_rows")
        if plan.fit_replaces is None:
            conn.execute(f"DELETE FROM {st.FIT_SAMPLE}")
        else:
            conn.register("_sh_fit_replaces", plan.fit_replaces)
            conn.execute(f"DELETE FROM {st.FIT_SAMPLE} WHERE run_id IN (SELECT run_id FROM _sh_fit_replaces)")
            conn.unregister("_sh_fit_replaces")
        if plan.fit_rows.num_rows:
            conn.register("_sh_fit_rows", plan.fit_rows)
            conn.execute(f"INSERT INTO {st.FIT_SAMPLE} SELECT * FROM _sh_fit_rows")
            conn.unregister("_sh_fit_rows")
    finally:
        conn.execute("DROP TABLE IF EXISTS _sh_delta")
        conn.execute("DROP TABLE IF EXISTS _sh_new")


def sample_modulus(population: int, sample: int) -> int:
    """The fit's hash modulus for ``population`` completed runs (0: every run), as
    :func:`analysis.fit.summaries` chooses it."""
    return 0 if population <= sample else -(-population // sample)


def _sample_where(modulus: int) -> str:
    return f"AND hash(run_id) % {modulus} = 0" if modulus else ""


def _fit_rows(cur: duckdb.DuckDBPyConnection, frames: BatchFrames,
              sample: int) -> tuple[pa.Table, pa.Table | None]:
    """The fit sample's rows the batch (re)writes, and the run ids whose rows they replace (None: all)."""
    from analysis.fit import _FEATURES_SQL, DEFAULT_RESULTS_WHEN_UNKNOWN

    population = int(cur.execute(
        "SELECT count(*) FROM runs WHERE input_tokens IS NOT NULL AND status = 'completed'"
    ).fetchall()[0][0])
    modulus = sample_modulus(population + frames.fit_delta, sample)
    if modulus != sample_modulus(population, sample):  # another sample: rebuild it over the store as after
        runs = f"(SELECT * FROM runs WHERE run_id NOT IN {_IDS} UNION ALL SELECT * FROM _sh_a_runs)"
        chunks = (f"(SELECT * FROM retrieved_chunks WHERE run_id NOT IN {_IDS} "
                  "UNION ALL SELECT * FROM _sh_a_chunks)")
        sql = _FEATURES_SQL.format(default_n=DEFAULT_RESULTS_WHEN_UNKNOWN, where=_sample_where(modulus))
        return cur.sql(over(sql, runs, chunks)).to_arrow_table(), None
    # Only the batch's runs and the sampled runs sharing a thread with them (or continuing one of them)
    # can change: the fit's SQL runs over just those and the runs it compares them with (their thread
    # mates, and the runs their threads name). Lookups by run_id use the primary key; the thread_id one
    # is the single scan of ``runs``.
    threads = "(SELECT t FROM _sh_threads)"
    cur.execute(
        "CREATE OR REPLACE TEMP TABLE _sh_fit_runs AS "
        f"SELECT * FROM runs WHERE thread_id IN {threads} AND run_id NOT IN {_IDS} "
        "UNION ALL SELECT * FROM _sh_a_runs")
    cur.execute(
        "CREATE OR REPLACE TEMP TABLE _sh_fit_ids AS "
        f"SELECT run_id, true AS stored FROM _sh_fit_runs WHERE run_id NOT IN {_IDS} "
        f"AND run_id IN (SELECT run_id FROM {st.FIT_SAMPLE}) "
        "UNION ALL SELECT run_id, false FROM _sh_ids")
    sampled = f"input_tokens IS NOT NULL AND status = 'completed' {_sample_where(modulus)}"
    named = [r[0] for r in cur.execute(
        f"SELECT DISTINCT thread_id FROM _sh_fit_runs WHERE thread_id IS NOT NULL AND {sampled} "
        "AND run_id IN (SELECT run_id FROM _sh_fit_ids)").fetchall()]
    if named:  # runs the sampled runs' threads name (a response continuing another), not yet included
        cur.execute(
            "INSERT INTO _sh_fit_runs SELECT * FROM runs WHERE run_id IN (SELECT unnest(?::VARCHAR[])) "
            f"AND run_id NOT IN {_IDS} AND (thread_id IS NULL OR thread_id NOT IN {threads})", [named])
    chunks = ("(SELECT * FROM retrieved_chunks WHERE run_id IN (SELECT run_id FROM _sh_fit_ids WHERE stored) "
              "UNION ALL SELECT * FROM _sh_a_chunks)")
    where = f"{_sample_where(modulus)} AND run_id IN (SELECT run_id FROM _sh_fit_ids)"
    sql = _FEATURES_SQL.format(default_n=DEFAULT_RESULTS_WHEN_UNKNOWN, where=where)
    rows = cur.sql(over(sql, "_sh_fit_runs", chunks)).to_arrow_table()
    return rows, cur.sql("SELECT run_id FROM _sh_fit_ids").to_arrow_table()
