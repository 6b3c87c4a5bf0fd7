"""Column lists of the store's tables and the pure conversions between records and Arrow tables.

``RUNS_COLUMNS`` etc. are the single source of the column order used by the writer's Arrow frames;
migrations create the tables with exactly these names and types (tests/test_migrations.py asserts it).

``tags`` is a ``MAP(VARCHAR, VARCHAR)``: ``tags['customer']`` is a plain ``VARCHAR`` (NULL when the
key is missing), so ``--by tag:customer`` is ``GROUP BY tags['customer']`` with no JSON parsing per
row, and the map round-trips to a Python ``dict`` unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa

from collector.record import ChunkRecord, RunRecord

TIMESTAMP = "TIMESTAMP WITH TIME ZONE"

RUNS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("run_id", "VARCHAR"),
    ("api", "VARCHAR"),
    ("model", "VARCHAR"),
    ("status", "VARCHAR"),
    ("thread_id", "VARCHAR"),
    ("assistant_id", "VARCHAR"),
    ("started_at", TIMESTAMP),
    ("first_token_at", TIMESTAMP),
    ("completed_at", TIMESTAMP),
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
    ("recorded_at", TIMESTAMP),
)

CHUNKS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("run_id", "VARCHAR"),
    ("call_id", "VARCHAR"),
    ("rank", "INTEGER"),
    ("file_id", "VARCHAR"),
    ("score", "DOUBLE"),
    ("content_tokens", "INTEGER"),
    ("cited", "BOOLEAN"),
    ("cited_by", "VARCHAR"),
)

SNAPSHOTS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("vector_store_id", "VARCHAR"),
    ("observed_at", TIMESTAMP),
    ("usage_bytes", "BIGINT"),
    ("status", "VARCHAR"),
    ("name", "VARCHAR"),
    ("file_counts_in_progress", "INTEGER"),
    ("file_counts_completed", "INTEGER"),
    ("file_counts_failed", "INTEGER"),
    ("file_counts_cancelled", "INTEGER"),
    ("file_counts_total", "INTEGER"),
    ("expires_at", TIMESTAMP),
    ("expires_after_days", "INTEGER"),
    ("last_active_at", TIMESTAMP),
)

_ARROW_TYPES: dict[str, pa.DataType] = {
    "VARCHAR": pa.string(),
    TIMESTAMP: pa.timestamp("us", tz="UTC"),
    "DOUBLE": pa.float64(),
    "BIGINT": pa.int64(),
    "INTEGER": pa.int32(),
    "BOOLEAN": pa.bool_(),
    "MAP(VARCHAR, VARCHAR)": pa.map_(pa.string(), pa.string()),
}

_RUN_FIELDS = tuple(name for name, _ in RUNS_COLUMNS if name != "recorded_at")
_TIME_FIELDS = frozenset(name for name, typ in RUNS_COLUMNS if typ == TIMESTAMP)


def arrow_schema(columns: Sequence[tuple[str, str]]) -> pa.Schema:
    """The Arrow schema matching a table's column list."""
    return pa.schema([(name, _ARROW_TYPES[typ]) for name, typ in columns])


def _micros(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1_000_000)


def runs_table(records: Sequence[RunRecord], recorded_at: float) -> pa.Table:
    """One Arrow row per record, in ``RUNS_COLUMNS`` order (timestamps: unix seconds → UTC)."""
    data: dict[str, list[Any]] = {name: [] for name, _ in RUNS_COLUMNS}
    stamp = _micros(recorded_at)
    for r in records:
        for name in _RUN_FIELDS:
            value = getattr(r, name)
            if name in _TIME_FIELDS:
                value = _micros(value)
            elif name == "tags":
                value = [(str(k), None if v is None else str(v)) for k, v in value.items()]
            data[name].append(value)
        data["recorded_at"].append(stamp)
    return pa.table(data, schema=arrow_schema(RUNS_COLUMNS))


def chunks_table(records: Iterable[RunRecord]) -> pa.Table:
    """One Arrow row per retrieved chunk of the records (chunk text is never included)."""
    return chunk_rows_table((r.run_id, r.chunks) for r in records)


def chunk_rows_table(runs: Iterable[tuple[str, Iterable[ChunkRecord]]]) -> pa.Table:
    """``retrieved_chunks`` rows of (run_id, chunks) pairs, as the writer stores them."""
    data: dict[str, list[Any]] = {name: [] for name, _ in CHUNKS_COLUMNS}
    for run_id, chunks in runs:
        for c in chunks:
            data["run_id"].append(run_id)
            data["call_id"].append(c.call_id)
            data["rank"].append(c.rank)
            data["file_id"].append(c.file_id)
            data["score"].append(c.score)
            data["content_tokens"].append(c.content_tokens)
            data["cited"].append(c.cited)
            data["cited_by"].append(c.cited_by)
    return pa.table(data, schema=arrow_schema(CHUNKS_COLUMNS))


def select_runs_sql(where: str) -> str:
    """A SELECT of every runs column with timestamps as unix microseconds (for ``record_from_row``)."""
    exprs = [f"epoch_us({name})" if typ == TIMESTAMP else name for name, typ in RUNS_COLUMNS]
    return f"SELECT {', '.join(exprs)} FROM runs WHERE {where}"


def record_from_row(row: Sequence[Any], chunks: list[ChunkRecord]) -> RunRecord:
    """Rebuild a stored run (a row of ``select_runs_sql``) as a RunRecord for merging."""
    values: dict[str, Any] = {}
    for (name, typ), value in zip(RUNS_COLUMNS, row, strict=True):
        if name == "recorded_at":
            continue
        if typ == TIMESTAMP and value is not None:
            value = value / 1_000_000
        elif name == "tags":
            value = dict(value) if value else {}
        elif name == "streams" and value is None:
            value = 0
        values[name] = value
    return RunRecord(**values, chunks=chunks)


SELECT_CHUNKS_SQL = (
    "SELECT run_id, call_id, rank, file_id, score, content_tokens, cited, cited_by FROM retrieved_chunks"
)


def chunk_from_row(row: Sequence[Any]) -> tuple[str, ChunkRecord]:
    """A row of ``SELECT_CHUNKS_SQL`` as (run_id, ChunkRecord)."""
    run_id, call_id, rank, file_id, score, content_tokens, cited, cited_by = row
    return run_id, ChunkRecord(call_id=call_id, rank=rank, file_id=file_id, score=score,
                               content_tokens=content_tokens, cited=bool(cited), cited_by=cited_by)
