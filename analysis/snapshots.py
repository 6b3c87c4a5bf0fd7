"""What the vector-store snapshots say now: each store's latest snapshot, the bytes held, the span polled.

One query picks a store's latest snapshot (:data:`LATEST_SQL`); ``runmeter storage report`` lists it, the
dashboard's "stored now" and the exporter sum it. The CLI reads the store plus snapshots still spooled by
a poll that found the store busy (until the writer takes them in); the dashboard and the exporter read the
store. ``$as_of`` is a naive UTC timestamp (an aware one would be read in the session's time zone). Times
come back naive UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import duckdb

from analysis.storage import STOPPED_STATUSES, StorageAssumptions, complete_days

# complete_days lives in analysis.storage (its forecast uses it; this module imports that one) and is
# re-exported here under the same name.

LATEST_SQL = """
SELECT * FROM vector_store_snapshots s
SEMI JOIN (
    SELECT vector_store_id, max(observed_at) AS latest FROM vector_store_snapshots
    WHERE $as_of IS NULL OR observed_at <= timezone('UTC', $as_of::TIMESTAMP)
    GROUP BY vector_store_id
) l ON s.vector_store_id = l.vector_store_id AND s.observed_at = l.latest
"""
"""Each store's latest snapshot up to ``$as_of`` (naive UTC; NULL: no limit), every column.

One row per store because ``(vector_store_id, observed_at)`` is the table's key. The exporter runs this on
every scrape, so it is shaped for speed with the same result as a ``row_number()`` window: a hash
aggregate and a semi-join instead of sorting every snapshot, and ``$as_of`` turned into an instant once
instead of each ``observed_at`` into UTC (100,000 snapshots: ~2 ms instead of ~16)."""

LATEST_COLUMNS = ("vector_store_id", "name", "status", "usage_bytes", "files", "observed_at",
                  "last_active_at", "expires_at", "expires_after_days")
"""The keys of :func:`latest_snapshots`' rows."""


def _naive_utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def latest_snapshots(con: duckdb.DuckDBPyConnection, as_of: datetime | None = None) -> list[dict[str, Any]]:
    """Each vector store's latest snapshot (up to ``as_of``), by store id: :data:`LATEST_COLUMNS`."""
    rows = con.execute(
        f"""
        SELECT vector_store_id, name, status, usage_bytes, file_counts_total,
               observed_at AT TIME ZONE 'UTC', last_active_at AT TIME ZONE 'UTC',
               expires_at AT TIME ZONE 'UTC', expires_after_days
        FROM ({LATEST_SQL}) ORDER BY vector_store_id
        """,
        {"as_of": _naive_utc(as_of)},
    ).fetchall()
    return [dict(zip(LATEST_COLUMNS, r, strict=True)) for r in rows]


_STOPPED_SQL = ", ".join(f"'{s}'" for s in sorted(STOPPED_STATUSES))

HELD_SQL = f"""
SELECT * FROM ({LATEST_SQL})
WHERE coalesce(status, '') NOT IN ({_STOPPED_SQL})
  AND (expires_at IS NULL OR expires_at > timezone('UTC', $as_of::TIMESTAMP))
"""
"""The latest snapshot (:data:`LATEST_SQL`) of each store that holds bytes at ``$as_of`` (naive UTC): not
expired, deleted or past its ``expires_at``."""


def held_bytes(con: duckdb.DuckDBPyConnection, as_of: datetime) -> int:
    """Bytes held at ``as_of``: each store's latest snapshot up to then, unless expired, deleted or past
    its ``expires_at`` (:data:`HELD_SQL`)."""
    row = con.execute(f"SELECT coalesce(sum(usage_bytes), 0) FROM ({HELD_SQL})",
                      {"as_of": _naive_utc(as_of)}).fetchone()
    return int(row[0]) if row else 0


def held_by_store(con: duckdb.DuckDBPyConnection, as_of: datetime) -> dict[str, int]:
    """:func:`held_bytes` per store: the stores that hold bytes at ``as_of`` and their latest ``usage_bytes``
    (a store holding 0 bytes is listed with 0)."""
    rows = con.execute(f"SELECT vector_store_id, coalesce(usage_bytes, 0) FROM ({HELD_SQL})",
                       {"as_of": _naive_utc(as_of)}).fetchall()
    return {vs: int(b) for vs, b in rows}


def held_gb(con: duckdb.DuckDBPyConnection, as_of: datetime, assumptions: StorageAssumptions) -> float:
    """:func:`held_bytes` in the GB of ``assumptions`` (GiB or GB)."""
    return held_bytes(con, as_of) / assumptions.bytes_per_gb


def snapshot_span(con: duckdb.DuckDBPyConnection) -> tuple[datetime, datetime] | None:
    """The first and the last snapshot time (naive UTC), or ``None`` when there is no snapshot."""
    row = con.execute(
        "SELECT min(observed_at) AT TIME ZONE 'UTC', max(observed_at) AT TIME ZONE 'UTC' "
        "FROM vector_store_snapshots"
    ).fetchone()
    if row is None or row[0] is None:
        return None
    return row[0], row[1]


__all__ = [
    "HELD_SQL",
    "LATEST_COLUMNS",
    "LATEST_SQL",
    "complete_days",
    "held_by_store",
    "held_bytes",
    "held_gb",
    "latest_snapshots",
    "snapshot_span",
]
