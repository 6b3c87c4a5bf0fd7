"""Summary tables kept at ingest: the writer's run hook applies each batch's contribution to them.

The writer calls :func:`maintain` inside the transaction that writes a batch of runs, before the runs are
written, with each run's stored merged record (before, or ``None``) and new merged record (after). A
summary's contribution of a set of runs is the summary's own SELECT (``analysis.cost_by.SUMMARIES``,
``analysis.whatif.SUMMARIES``) evaluated over just those runs: the rows the batch writes (the writer's own
Arrow rows, :class:`collector.store.writer.RunBatch`, and its chunks built with the writer's conversions
of :mod:`collector.store.schema`) and the stored rows it replaces (read from the store by run id); so
ingest cannot drift from what :func:`analysis.summary_tables.materialize` builds. Per summary, one
statement sums the batch's delta (after minus before, per key) with the table's rows of the keys it
touches; the writer's transaction then deletes those keys' rows and inserts the sums (a key whose count
falls to 0 is removed).

Cost: a batch costs a few dozen statements whatever its size (DuckDB plans each one in 1-5 ms, which is
most of their time at 5,000 runs), plus two scans of ``runs`` by id/thread and one of
``retrieved_chunks`` when the batch replaces stored runs; nothing else reads whole tables.

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
    """A batch as the rows it writes and the stored runs it replaces (pure)."""

    ids: pa.Table
    befores: tuple[RunRecord, ...]
    """The stored versions of the batch's runs (:meth:`maintain` reads their rows from the store)."""
    after_runs: pa.Table
    after_chunks: pa.Table
    threads: pa.Table
    """Every thread id of the batch's runs (before and after) and every run id (a run may continue one)."""
    new_runs: int
    chunk_delta: int
    fit_delta: int
    """Change in completed runs with usage (the fit's population)."""

    @property
    def before_runs(self) -> pa.Table:
        """The ``runs`` rows the batch replaces, built from the records."""
        return runs_table(self.befores, 0.0)

    @property
    def before_chunks(self) -> pa.Table:
        """The ``retrieved_chunks`` rows the batch replaces, built from the records."""
        return chunk_rows_table([(b.run_id, b.chunks) for b in self.befores])

    @staticmethod
    def of(pairs: Pairs, after_runs: pa.Table | None = None) -> BatchFrames:
        """The frames of a batch of (stored or None, merged) runs; ``after_runs``: the merged runs' rows
        already built by the writer (in pair order), else they are built here."""
        befores = tuple(b for b, _ in pairs if b is not None)
        afters = [a for _, a in pairs]
        after_chunks = [(a.run_id, effective_chunks(b, a)) for b, a in pairs]
        threads = {r.thread_id for r in (*befores, *afters) if r.thread_id is not None}
        threads.update(a.run_id for a in afters)
        if after_runs is None or after_runs.num_rows != len(afters):
            after_runs = runs_table(afters, 0.0)
        return BatchFrames(
            ids=pa.table({"run_id": pa.array([a.run_id for a in afters], pa.string())}),
            befores=befores,
            after_runs=after_runs,
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
    """What a batch changes, computed before anything is written: per additive summary the rows that
    replace the table's rows of the keys the batch changes (its columns, in order; a row whose count is 0
    only removes its key), and the fit sample's new rows with the run ids they replace (None: the whole
    sample)."""

    rows: dict[str, pa.Table]
    fit_rows: pa.Table
    fit_replaces: pa.Table | None


Shapes = dict[str, list[tuple[str, str]]]


def maintain(conn: duckdb.DuckDBPyConnection, pairs: Pairs, *, sample: int | None = None) -> bool:
    """Apply a batch to the summary tables and ``summary_meta`` (inside the caller's transaction, before
    the runs are written); returns whether they were maintained (False: not fresh, left alone).

    Everything that evaluates the analyses' SQL over the data runs on a cursor of its own, so a failure
    there (raised to the caller) cannot abort the caller's transaction: the runs are still written and
    the summaries, their counts not moved, are stale. ``sample`` is the fit's sample size (default
    :data:`analysis.fit.FIT_SAMPLE_RUNS`). ``pairs`` may carry the writer's Arrow rows of the merged runs
    (``runs_frame``, see :class:`collector.store.writer.RunBatch`); they are built here otherwise.
    """
    from analysis.fit import FIT_SAMPLE_RUNS

    if not pairs or not st.fresh(conn, st.ALL):
        return False
    shapes: Shapes = {name: st.columns(conn, name) for name in st.ALL}
    frames = BatchFrames.of(pairs, getattr(pairs, "runs_frame", None))
    cur = conn.cursor()
    try:
        plan = _plan(cur, frames, shapes, FIT_SAMPLE_RUNS if sample is None else sample)
    finally:
        cur.close()
    if any(plan.rows[n].column_names != [c for c, _ in shapes[n]] for n in _ADDITIVE) or \
            plan.fit_rows.column_names != [c for c, _ in shapes[st.FIT_SAMPLE]]:
        return False  # a table rebuilt with other columns: leave them all stale
    _apply(conn, plan)
    conn.execute(f"UPDATE {st.META} SET runs = runs + ?, chunks = chunks + ? "
                 "WHERE name IN (SELECT unnest(?::VARCHAR[]))",
                 [frames.new_runs, frames.chunk_delta, list(st.ALL)])
    return True


_WI_TABLES = re.compile(r"\b_wi_(runs|per_run)\b")


def side_sql(sql: str, side: str) -> str:
    """``sql`` over one side of the batch (``a``: the rows it writes, ``b``: the stored rows it replaces):
    its runs and chunks, and the what-if's per-run tables built over them (``_sh_{side}_wi_*``)."""
    return _WI_TABLES.sub(lambda m: f"_sh_{side}_wi_{m.group(1)}",
                          over(sql, f"_sh_{side}_runs", f"_sh_{side}_chunks"))


def _plan(cur: duckdb.DuckDBPyConnection, frames: BatchFrames, shapes: Shapes, sample: int) -> Plan:
    from analysis import cost_by, whatif
    from analysis.fit import DEFAULT_RESULTS_WHEN_UNKNOWN, repeat_weight_sql

    sides = ["a"] + (["b"] if frames.befores else [])
    for name, table in (("_sh_ids", frames.ids), ("_sh_a_runs", frames.after_runs),
                        ("_sh_a_chunks", frames.after_chunks), ("_sh_threads", frames.threads)):
        # copied into DuckDB once: the statements below read them several times, and an Arrow scan converts
        cur.register(f"{name}_arrow", table)
        cur.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM {name}_arrow")
        cur.unregister(f"{name}_arrow")
    if "b" in sides:
        # The rows the batch replaces are the store's rows of its run ids (this cursor's transaction does not
        # see the caller's writes): read where they are rather than rebuilt from the records.
        cur.execute(f"CREATE OR REPLACE TEMP TABLE _sh_b_runs AS SELECT * FROM runs WHERE run_id IN {_IDS}")
        cur.execute("CREATE OR REPLACE TEMP TABLE _sh_b_chunks AS "
                    f"SELECT * FROM retrieved_chunks WHERE run_id IN {_IDS}")
    # the what-if's per-run inputs of each side, as analysis.whatif._prepare makes them
    per_run = whatif._RUNS_SQL.format(w=repeat_weight_sql("r"), default_n=DEFAULT_RESULTS_WHEN_UNKNOWN)
    per_chunk = whatif._PER_RUN_SQL.format(bins=whatif.SCORE_BINS)
    for side in sides:
        cur.execute(side_sql(per_run, side))
        cur.execute(side_sql(per_chunk, side))
    sqls = {st.USAGE: cost_by.SUMMARIES[st.USAGE], **whatif.SUMMARIES}
    rows = {name: _new_rows(cur, name, sqls[name], shapes[name], sides) for name in _ADDITIVE}
    fit_rows, fit_replaces = _fit_rows(cur, frames, sample)
    return Plan(rows, fit_rows, fit_replaces)


def _new_rows(cur: duckdb.DuckDBPyConnection, name: str, sql: str, cols: list[tuple[str, str]],
              sides: list[str]) -> pa.Table:
    """Summary ``name``'s rows for every key the batch changes: the stored row plus the batch's delta
    (the summary's SELECT over the rows written minus over the rows replaced), in one statement."""
    keys = st.KEYS[name]
    parts = [f"SELECT {', '.join(c for c, _ in cols)} FROM ({side_sql(sql, 'a')})"]
    if "b" in sides:
        parts.append(f"SELECT {', '.join(c if c in keys else f'-{c} AS {c}' for c, _ in cols)} "
                     f"FROM ({side_sql(sql, 'b')})")
    changed = " OR ".join(f"coalesce({c}, 0) <> 0" for c, _ in cols if c not in keys)
    on = " AND ".join(f"t.{k} IS NOT DISTINCT FROM d.{k}" for k in keys)
    typed = ", ".join(f"{c}::{t} AS {c}" if c in keys else f"sum({c})::{t} AS {c}" for c, t in cols)
    delta = f"SELECT {_summed(cols, keys)} FROM ({' UNION ALL '.join(parts)}) GROUP BY ALL"
    return cur.sql(
        f"WITH d AS MATERIALIZED (SELECT * FROM ({delta}) WHERE {changed}) "
        f"SELECT {typed} FROM (SELECT t.* FROM {name} t SEMI JOIN d ON {on} UNION ALL SELECT * FROM d) "
        "GROUP BY ALL"
    ).to_arrow_table()


def _summed(cols: list[tuple[str, str]], keys: tuple[str, ...]) -> str:
    return ", ".join(c if c in keys else f"sum({c})::{t} AS {c}" for c, t in cols)


def _apply(conn: duckdb.DuckDBPyConnection, plan: Plan) -> None:
    """Write the plan into the caller's transaction (plain deletes and inserts of rows already computed)."""
    for name, rows in plan.rows.items():
        if not rows.num_rows:
            continue
        on = " AND ".join(f"t.{k} IS NOT DISTINCT FROM d.{k}" for k in st.KEYS[name])
        conn.register("_sh_rows", rows)
        try:
            conn.execute(f"DELETE FROM {name} t USING _sh_rows d WHERE {on}")
            conn.execute(f"INSERT INTO {name} SELECT * FROM _sh_rows WHERE {st.COUNT_COLUMN[name]} <> 0")
        finally:
            conn.unregister("_sh_rows")
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
