"""Summary tables: small aggregates of ``runs`` and ``retrieved_chunks`` that analyses read instead of the
raw rows when they are current.

Each analysis module declares its summaries as ``name -> SELECT`` over the raw tables (see
``analysis.cost_by.SUMMARIES``, ``analysis.whatif.SUMMARIES``, ``analysis.fit.summaries``). Every summary
but the fit sample is additive per run, so the writer keeps them current at ingest
(:mod:`collector.store.summary_hook`): it adds a batch's contribution and subtracts the stored contribution
of the runs the batch replaces, in the transaction that writes the runs. :func:`materialize` builds them
from scratch (the store's migration does, so every store has them), and ``summary_meta`` records the row
counts they reflect: an analysis uses a summary only while those counts still match the raw tables, and
falls back to the raw rows otherwise (rows written by anything but the writer make them stale).

A summary is stored in its *canonical* form: one row per :data:`KEYS` value, its measures summed (a
SELECT may yield a key twice, e.g. the what-if's rank profile from chunks UNION ALL runs recorded without
results). Sums are the same, so answers are too; the canonical form is what ingest maintains.
"""

from __future__ import annotations

from collections.abc import Mapping

import duckdb

META = "summary_meta"

USAGE = "summary_usage"
FIT_SAMPLE = "summary_fit_sample"
WHATIF_RANKS = "summary_whatif_ranks"
WHATIF_BINS = "summary_whatif_bins"
WHATIF_RUNS = "summary_whatif_runs"

_GROUP = ("api", "model", "day", "tier")

KEYS: dict[str, tuple[str, ...]] = {
    USAGE: (*_GROUP, "tags", "problem", "has_calls"),
    FIT_SAMPLE: ("run_id",),
    WHATIF_RANKS: (*_GROUP, "key"),
    WHATIF_BINS: (*_GROUP, "key"),
    WHATIF_RUNS: ("api", "setting", "thr", "calls", "unobserved", "saturated", "max_rank", "min_cited_rank",
                  "min_bin", "max_cited_bin"),
}
"""The key columns of each summary kept at ingest; every other column is a measure summed per key (the
fit sample has one row per run: nothing to sum)."""

COUNT_COLUMN: dict[str, str] = {USAGE: "runs", WHATIF_RANKS: "chunks", WHATIF_BINS: "chunks",
                                WHATIF_RUNS: "runs"}
"""The measure that says a key still has rows behind it (a key whose count falls to 0 is removed)."""

ALL = tuple(KEYS)
"""Every summary the writer maintains (they are fresh together or not at all)."""


def _counts(con: duckdb.DuckDBPyConnection) -> tuple[int, int]:
    runs, chunks = con.execute(
        "SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM retrieved_chunks)").fetchall()[0]
    return int(runs), int(chunks)


def _tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()}


def fresh(con: duckdb.DuckDBPyConnection, names: tuple[str, ...]) -> bool:
    """Whether every summary in ``names`` exists and was built from the current row counts."""
    tables = _tables(con)
    if META not in tables or not set(names) <= tables:
        return False
    runs, chunks = _counts(con)
    built = dict(((n, (r, c)) for n, r, c in con.execute(
        f"SELECT name, runs, chunks FROM {META}").fetchall()))
    return all(built.get(n) == (runs, chunks) for n in names)


def migrated(con: duckdb.DuckDBPyConnection, migration: str) -> bool:
    """Whether the store migration named ``migration`` was applied (a summary whose SQL changed with it is
    kept under other keys before)."""
    if "_migrations" not in _tables(con):
        return False
    return bool(con.execute("SELECT count(*) FROM _migrations WHERE name = ?", [migration]).fetchall()[0][0])


def columns(con: duckdb.DuckDBPyConnection, relation: str) -> list[tuple[str, str]]:
    """(name, SQL type) of each column of a table or ``(SELECT ...)``, in order."""
    return [(r[0], str(r[1])) for r in con.execute(f"DESCRIBE {relation}").fetchall()]


def canonical_sql(con: duckdb.DuckDBPyConnection, name: str, sql: str) -> str:
    """``sql`` grouped to one row per key of ``name`` (measures summed, types kept); as is for a summary
    without summed measures or not kept at ingest."""
    keys = KEYS.get(name)
    if keys is None or name not in COUNT_COLUMN:
        return sql
    cols = columns(con, f"({sql})")
    select = ", ".join(c if c in keys else f"sum({c})::{t} AS {c}" for c, t in cols)
    return f"SELECT {select} FROM ({sql}) GROUP BY ALL"


def materialize(con: duckdb.DuckDBPyConnection, summaries: Mapping[str, str]) -> None:
    """(Re)build ``summaries`` (name -> SELECT) from the raw tables and record the counts they reflect."""
    con.execute(f"CREATE TABLE IF NOT EXISTS {META} (name VARCHAR PRIMARY KEY, runs BIGINT, chunks BIGINT)")
    runs, chunks = _counts(con)
    for name, sql in summaries.items():
        con.execute(f"CREATE OR REPLACE TABLE {name} AS {canonical_sql(con, name, sql)}")
        con.execute(f"INSERT OR REPLACE INTO {META} VALUES (?, ?, ?)", [name, runs, chunks])


def materialize_all(con: duckdb.DuckDBPyConnection) -> None:
    """Build every summary kept at ingest (:data:`ALL`) from the raw tables. Needs a read-write
    connection; the store's migration runs it so that a store never lacks them."""
    from analysis.whatif import materialize as materialize_whatif  # it builds the cost and fit ones too

    materialize_whatif(con)
