"""Summary tables: small aggregates of ``runs`` and ``retrieved_chunks`` that analyses read instead of the
raw rows when they are current.

Each analysis module declares its summaries as ``name -> SELECT`` over the raw tables (see
``analysis.cost_by.SUMMARIES``, ``analysis.whatif.SUMMARIES``, ``analysis.fit.SUMMARIES``). Every summary
is additive per run, so a writer can keep it current at ingest: add a batch's contribution, subtract the
stored contribution of the runs a batch replaces. Until the writer does, :func:`materialize` builds them
in one go (the benchmark uses it), and ``summary_meta`` records the row counts they were built from: an
analysis uses a summary only while those counts still match, and falls back to the raw rows otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping

import duckdb

META = "summary_meta"


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


def materialize(con: duckdb.DuckDBPyConnection, summaries: Mapping[str, str]) -> None:
    """(Re)build ``summaries`` (name -> SELECT) from the raw tables and record the counts they reflect."""
    con.execute(f"CREATE TABLE IF NOT EXISTS {META} (name VARCHAR PRIMARY KEY, runs BIGINT, chunks BIGINT)")
    runs, chunks = _counts(con)
    for name, sql in summaries.items():
        con.execute(f"CREATE OR REPLACE TABLE {name} AS {sql}")
        con.execute(f"INSERT OR REPLACE INTO {META} VALUES (?, ?, ?)", [name, runs, chunks])
