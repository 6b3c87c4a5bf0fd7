"""Append-only, named schema migrations of the DuckDB store.

Each migration is a function registered with ``@migration``; its ``__name__`` is recorded in
``_migrations`` once applied. Never edit or reorder a released migration: append a new one.
:func:`migrate` applies the missing ones, each in its own transaction, and is a no-op when none are
missing. A file with tables but no ``runmeter_meta`` table is someone else's DuckDB database and is
refused (:class:`ForeignStoreError`) rather than written into.
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb

from collector.store.schema import CHUNKS_COLUMNS, RUNS_COLUMNS, SNAPSHOTS_COLUMNS, TIMESTAMP

Migration = Callable[[duckdb.DuckDBPyConnection], None]

MIGRATIONS: list[Migration] = []

STORE_KIND = "runmeter"


class StoreError(Exception):
    """The store cannot be opened or used (message says why, for a person)."""


class ForeignStoreError(StoreError):
    """The file is a DuckDB database that runmeter did not create."""


class NewerStoreError(StoreError):
    """The store has migrations this version of runmeter does not know."""


def migration(fn: Migration) -> Migration:
    """Register ``fn`` as the next migration (decorator)."""
    MIGRATIONS.append(fn)
    return fn


def _columns_sql(columns: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"{name} {typ}" for name, typ in columns)


def _table_names(conn: duckdb.DuckDBPyConnection) -> set[str]:
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
    ).fetchall()
    return {r[0] for r in rows}


def check_store(conn: duckdb.DuckDBPyConnection, path: str = "") -> bool:
    """Whether the database is a runmeter store (``False``: empty, may be initialised).

    Raises ForeignStoreError when it holds tables but is not a runmeter store.
    """
    tables = _table_names(conn)
    if "runmeter_meta" in tables:
        kind = conn.execute("SELECT value FROM runmeter_meta WHERE key = 'kind'").fetchone()
        if kind is not None and kind[0] == STORE_KIND:
            return True
    if not tables - {"_migrations"}:  # a first migration that was rolled back leaves only this
        return False
    where = f" {path}" if path else ""
    raise ForeignStoreError(
        f"the DuckDB file{where} is not a runmeter store (it has tables {sorted(tables)[:5]} and no "
        "runmeter_meta); point RUNMETER_DB at a new or runmeter-created file"
    )


def applied_migrations(conn: duckdb.DuckDBPyConnection) -> list[str]:
    """Names of the migrations applied to the database, in order."""
    if "_migrations" not in _table_names(conn):
        return []
    return [r[0] for r in conn.execute("SELECT name FROM _migrations ORDER BY applied_at, name").fetchall()]


def migrate(conn: duckdb.DuckDBPyConnection, path: str = "") -> list[str]:
    """Apply every missing migration (one transaction each); returns the names applied now.

    Raises ForeignStoreError for a foreign DuckDB database and NewerStoreError when the store was
    migrated by a newer runmeter.
    """
    check_store(conn, path)
    conn.execute(f"CREATE TABLE IF NOT EXISTS _migrations (name VARCHAR PRIMARY KEY, applied_at {TIMESTAMP})")
    done = set(applied_migrations(conn))
    known = {fn.__name__ for fn in MIGRATIONS}
    unknown = done - known
    if unknown:
        raise NewerStoreError(
            f"the store{' ' + path if path else ''} was migrated by a newer runmeter "
            f"({', '.join(sorted(unknown))}); upgrade runmeter to use it"
        )
    applied: list[str] = []
    for fn in MIGRATIONS:
        name = fn.__name__
        if name in done:
            continue
        conn.execute("BEGIN TRANSACTION")
        try:
            fn(conn)
            conn.execute("INSERT INTO _migrations VALUES (?, now())", [name])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(name)
    return applied


@migration
def m001_initial(conn: duckdb.DuckDBPyConnection) -> None:
    """runs, retrieved_chunks, vector_store_snapshots, runmeter_meta, merge state, the spool ledger."""
    conn.execute("CREATE TABLE runmeter_meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    conn.execute("INSERT INTO runmeter_meta VALUES ('kind', ?), ('created_at', CAST(now() AS VARCHAR))",
                 [STORE_KIND])
    conn.execute(f"CREATE TABLE runs ({_columns_sql(RUNS_COLUMNS)}, PRIMARY KEY (run_id))")
    conn.execute(
        f"CREATE TABLE retrieved_chunks ({_columns_sql(CHUNKS_COLUMNS)}, PRIMARY KEY (run_id, call_id, rank))"
    )
    conn.execute(
        f"CREATE TABLE vector_store_snapshots ({_columns_sql(SNAPSHOTS_COLUMNS)}, "
        "PRIMARY KEY (vector_store_id, observed_at))"
    )
    # The tap-private facts merge() needs (record.extra: step usage, file_search call flags,
    # citation markers) as JSON, so a later observation merges with a stored run as well as with
    # one in the same batch. Not for queries.
    conn.execute("CREATE TABLE run_merge_state (run_id VARCHAR PRIMARY KEY, extra VARCHAR)")
    # Names of spool files already committed, so a crash between COMMIT and unlink never ingests
    # a file twice (merging an observation with itself is not guaranteed to be a no-op).
    conn.execute(f"CREATE TABLE spool_ingested (file VARCHAR PRIMARY KEY, ingested_at {TIMESTAMP})")


@migration
def m002_metric_aggregates(conn: duckdb.DuckDBPyConnection) -> None:
    """Prometheus counters and histograms counted at ingest (collector.metrics.ingest).

    ``labels`` is the JSON array of the label values in the family's label order; ``bucket_le`` is a
    bucket's upper bound (``inf`` for ``+Inf``) and ``count`` the observations in that bucket alone.
    """
    conn.execute("CREATE TABLE metric_counters (family VARCHAR, labels VARCHAR, value DOUBLE, "
                 "PRIMARY KEY (family, labels))")
    conn.execute("CREATE TABLE metric_histograms (family VARCHAR, labels VARCHAR, bucket_le DOUBLE, "
                 "count BIGINT, PRIMARY KEY (family, labels, bucket_le))")
    conn.execute("CREATE TABLE metric_histogram_sums (family VARCHAR, labels VARCHAR, sum DOUBLE, "
                 "PRIMARY KEY (family, labels))")


@migration
def m003_summary_tables(conn: duckdb.DuckDBPyConnection) -> None:
    """The analyses' summary tables (analysis.summary_tables), built from the rows already stored.

    The writer keeps them current at ingest from now on (collector.store.summary_hook), so a store that
    existed before this migration is backfilled here and its summaries are never stale.
    """
    from analysis.summary_tables import materialize_all  # polars, numpy: only when a store is migrated

    materialize_all(conn)


@migration
def m004_whatif_zero_results(conn: duckdb.DuckDBPyConnection) -> None:
    """The what-if's run histogram (summary_whatif_runs) rebuilt from runs and retrieved_chunks.

    Its SQL now counts a run whose file_search returned no results as known (neither recorded without
    results nor saturated). The writer subtracts a replaced run's old row under the keys the current SQL
    gives it, so rows kept under the old keys would never be subtracted: they are rebuilt here, in this
    migration's transaction. The other summaries' SQL did not change.
    """
    from analysis.whatif import materialize_runs  # polars, numpy: only when a store is migrated

    materialize_runs(conn)
