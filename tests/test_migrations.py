"""The store's schema: migrating an empty database gives exactly these tables, columns and keys."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from collector.store import migrations
from collector.store.migrations import ForeignStoreError, NewerStoreError, StoreError, migrate
from collector.store.reader import open_reader

TSTZ = "TIMESTAMP WITH TIME ZONE"

EXPECTED: dict[str, list[tuple[str, str]]] = {
    "_migrations": [("name", "VARCHAR"), ("applied_at", TSTZ)],
    "runmeter_meta": [("key", "VARCHAR"), ("value", "VARCHAR")],
    "runs": [
        ("run_id", "VARCHAR"),
        ("api", "VARCHAR"),
        ("model", "VARCHAR"),
        ("status", "VARCHAR"),
        ("thread_id", "VARCHAR"),
        ("assistant_id", "VARCHAR"),
        ("started_at", TSTZ),
        ("first_token_at", TSTZ),
        ("completed_at", TSTZ),
        ("ttft_seconds", "DOUBLE"),
        ("duration_seconds", "DOUBLE"),
        ("input_tokens", "BIGINT"),
        ("cached_input_tokens", "BIGINT"),
        ("cache_write_tokens", "BIGINT"),
        ("output_tokens", "BIGINT"),
        ("reasoning_tokens", "BIGINT"),
        ("total_tokens", "BIGINT"),
        ("file_search_calls", "INTEGER"),
        ("retrieved_chunks", "INTEGER"),
        ("max_num_results", "INTEGER"),
        ("score_threshold", "DOUBLE"),
        ("truncation", "VARCHAR"),
        ("max_prompt_tokens", "INTEGER"),
        ("max_completion_tokens", "INTEGER"),
        ("incomplete_reason", "VARCHAR"),
        ("error_code", "VARCHAR"),
        ("service_tier", "VARCHAR"),
        ("streams", "INTEGER"),
        ("tags", "MAP(VARCHAR, VARCHAR)"),
        ("model_steps", "INTEGER"),
        ("recorded_at", TSTZ),
    ],
    "retrieved_chunks": [
        ("run_id", "VARCHAR"),
        ("call_id", "VARCHAR"),
        ("rank", "INTEGER"),
        ("file_id", "VARCHAR"),
        ("score", "DOUBLE"),
        ("content_tokens", "INTEGER"),
        ("cited", "BOOLEAN"),
        ("cited_by", "VARCHAR"),
    ],
    "vector_store_snapshots": [
        ("vector_store_id", "VARCHAR"),
        ("observed_at", TSTZ),
        ("usage_bytes", "BIGINT"),
        ("status", "VARCHAR"),
        ("name", "VARCHAR"),
        ("file_counts_in_progress", "INTEGER"),
        ("file_counts_completed", "INTEGER"),
        ("file_counts_failed", "INTEGER"),
        ("file_counts_cancelled", "INTEGER"),
        ("file_counts_total", "INTEGER"),
        ("expires_at", TSTZ),
        ("expires_after_days", "INTEGER"),
        ("last_active_at", TSTZ),
    ],
    "run_merge_state": [("run_id", "VARCHAR"), ("extra", "VARCHAR")],
    "spool_ingested": [("file", "VARCHAR"), ("ingested_at", TSTZ)],
    # m002_metric_aggregates: Prometheus counters counted at ingest
    "metric_counters": [("family", "VARCHAR"), ("labels", "VARCHAR"), ("value", "DOUBLE")],
    "metric_histograms": [("family", "VARCHAR"), ("labels", "VARCHAR"), ("bucket_le", "DOUBLE"),
                          ("count", "BIGINT")],
    "metric_histogram_sums": [("family", "VARCHAR"), ("labels", "VARCHAR"), ("sum", "DOUBLE")],
    # m003_summary_tables: the analyses' summaries, kept at ingest (collector.store.summary_hook)
    "summary_meta": [("name", "VARCHAR"), ("runs", "BIGINT"), ("chunks", "BIGINT")],
    "summary_usage": [("api", "VARCHAR"), ("model", "VARCHAR"), ("day", "DATE"), ("tier", "VARCHAR"),
                      ("tags", "MAP(VARCHAR, VARCHAR)"), ("problem", "VARCHAR"), ("has_calls", "BOOLEAN"),
                      ("runs", "BIGINT"), ("inp", "HUGEINT"), ("outp", "HUGEINT"), ("cached", "HUGEINT"),
                      ("written", "HUGEINT"), ("calls", "HUGEINT")],
    "summary_fit_sample": [("run_id", "VARCHAR"), ("api", "VARCHAR"), ("model", "VARCHAR"),
                           ("input_tokens", "DOUBLE"), ("model_steps", "INTEGER"), ("calls", "INTEGER"),
                           ("t_known", "DOUBLE"), ("n_known", "DOUBLE"), ("n_unknown", "DOUBLE"),
                           ("later_turn", "BOOLEAN")],
    **{name: [("api", "VARCHAR"), ("model", "VARCHAR"), ("day", "DATE"), ("tier", "VARCHAR"),
              ("key", "INTEGER"), ("chunks", "DOUBLE"), ("w_tokens", "DOUBLE"), ("w_known", "DOUBLE"),
              ("w_unknown", "DOUBLE"), ("cited", "DOUBLE"), ("score_sum", "DECIMAL(38,18)")]
       for name in ("summary_whatif_ranks", "summary_whatif_bins")},
    "summary_whatif_runs": [("api", "VARCHAR"), ("setting", "INTEGER"), ("thr", "DOUBLE"),
                            ("calls", "INTEGER"), ("unobserved", "BOOLEAN"), ("saturated", "BOOLEAN"),
                            ("max_rank", "INTEGER"), ("min_cited_rank", "INTEGER"), ("min_bin", "DOUBLE"),
                            ("max_cited_bin", "DOUBLE"), ("runs", "BIGINT")],
}
# m004_whatif_zero_results adds no table: it rebuilds summary_whatif_runs with the what-if's current SQL
ALL_MIGRATIONS = [("m001_initial",), ("m002_metric_aggregates",), ("m003_summary_tables",),
                  ("m004_whatif_zero_results",)]

EXPECTED_KEYS = {
    "_migrations": ["name"],
    "runmeter_meta": ["key"],
    "runs": ["run_id"],
    "retrieved_chunks": ["run_id", "call_id", "rank"],
    "vector_store_snapshots": ["vector_store_id", "observed_at"],
    "run_merge_state": ["run_id"],
    "spool_ingested": ["file"],
    "metric_counters": ["family", "labels"],
    "metric_histograms": ["family", "labels", "bucket_le"],
    "metric_histogram_sums": ["family", "labels"],
    "summary_meta": ["name"],
}


def _columns(conn: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[str, str]]]:
    rows = conn.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position"
    ).fetchall()
    out: dict[str, list[tuple[str, str]]] = {}
    for table, column, typ in rows:
        out.setdefault(table, []).append((column, typ))
    return out


def _primary_keys(conn: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
    rows = conn.execute(
        "SELECT table_name, constraint_column_names FROM duckdb_constraints() "
        "WHERE constraint_type = 'PRIMARY KEY' AND schema_name = 'main'"
    ).fetchall()
    return {table: list(cols) for table, cols in rows}


def test_migrate_empty_database_gives_exact_schema(tmp_path: Path) -> None:
    conn = duckdb.connect(str(tmp_path / "s.duckdb"))
    assert migrate(conn) == [name for (name,) in ALL_MIGRATIONS]
    assert _columns(conn) == EXPECTED
    assert _primary_keys(conn) == EXPECTED_KEYS
    assert conn.execute("SELECT value FROM runmeter_meta WHERE key = 'kind'").fetchone() == ("runmeter",)


def test_migrate_twice_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    with duckdb.connect(str(path)) as conn:
        migrate(conn)
        conn.execute("INSERT INTO runs (run_id, api) VALUES ('run_1', 'assistants')")
    with duckdb.connect(str(path)) as conn:
        assert migrate(conn) == []
        assert conn.execute("SELECT name FROM _migrations ORDER BY name").fetchall() == ALL_MIGRATIONS
        assert conn.execute("SELECT run_id FROM runs").fetchall() == [("run_1",)]
        assert _columns(conn) == EXPECTED


def test_migration_names_are_unique_and_append_only() -> None:
    names = [fn.__name__ for fn in migrations.MIGRATIONS]
    assert names[0] == "m001_initial"
    assert len(names) == len(set(names))
    assert names == sorted(names)


def test_tag_map_groups_by_key(tmp_path: Path) -> None:
    conn = duckdb.connect(str(tmp_path / "s.duckdb"))
    migrate(conn)
    conn.execute(
        "INSERT INTO runs (run_id, api, tags, total_tokens) VALUES "
        "('a', 'chat', MAP {'customer': 'acme'}, 10), ('b', 'chat', MAP {'customer': 'acme'}, 5), "
        "('c', 'chat', MAP {}, 1)"
    )
    rows = conn.execute(
        "SELECT tags['customer'] AS c, sum(total_tokens) FROM runs GROUP BY c ORDER BY c"
    ).fetchall()
    assert rows == [("acme", 15), (None, 1)]


def test_failed_migration_rolls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def m999_broken(conn: duckdb.DuckDBPyConnection) -> None:
        conn.execute("CREATE TABLE half_done (x INTEGER)")
        raise RuntimeError("boom")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, m999_broken])
    conn = duckdb.connect(str(tmp_path / "s.duckdb"))
    with pytest.raises(RuntimeError, match="boom"):
        migrate(conn)
    assert "half_done" not in _columns(conn)
    assert conn.execute("SELECT name FROM _migrations ORDER BY name").fetchall() == ALL_MIGRATIONS


def test_foreign_duckdb_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.duckdb"
    with duckdb.connect(str(path)) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    with duckdb.connect(str(path)) as conn, pytest.raises(ForeignStoreError, match="not a runmeter store"):
        migrate(conn)
    with pytest.raises(ForeignStoreError, match="not a runmeter store"):
        open_reader(path, timeout=0.5)


def test_newer_store_is_refused(tmp_path: Path) -> None:
    conn = duckdb.connect(str(tmp_path / "s.duckdb"))
    migrate(conn)
    conn.execute("INSERT INTO _migrations VALUES ('m999_future', now())")
    with pytest.raises(NewerStoreError, match="m999_future"):
        migrate(conn)


def test_reader_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no runmeter store at"):
        open_reader(tmp_path / "missing.duckdb", timeout=0.1)
    text = tmp_path / "notes.duckdb"
    text.write_text("not a database\n" * 200)
    with pytest.raises(StoreError, match="cannot open"):
        open_reader(text, timeout=0.1)
