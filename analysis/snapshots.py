"""What the vector-store snapshots say now: each store's latest snapshot, the bytes held, the span polled.

One query picks a store's latest snapshot (:data:`LATEST_SQL`); ``runmeter storage report`` lists it and
the dashboard's "stored now" sums it, so both read the same row. Times come back naive UTC.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import duckdb

from analysis.storage import STOPPED_STATUSES, StorageAssumptions

LATEST_SQL = """
SELECT * EXCLUDE (rn) FROM (
    SELECT *, row_number() OVER (PARTITION BY vector_store_id ORDER BY observed_at DESC) AS rn
    FROM vector_store_snapshots
    WHERE $as_of IS NULL OR observed_at AT TIME ZONE 'UTC' <= $as_of
) WHERE rn = 1
"""
"""Each store's latest snapshot up to ``$as_of`` (naive UTC; NULL: no limit), every column."""

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


def held_bytes(con: duckdb.DuckDBPyConnection, as_of: datetime) -> int:
    """Bytes held at ``as_of``: each store's latest snapshot up to then, unless expired, deleted or past
    its ``expires_at``."""
    at = _naive_utc(as_of)
    stopped = ", ".join(f"'{s}'" for s in sorted(STOPPED_STATUSES))
    row = con.execute(
        f"""
        SELECT coalesce(sum(usage_bytes), 0) FROM ({LATEST_SQL})
        WHERE coalesce(status, '') NOT IN ({stopped})
          AND (expires_at IS NULL OR expires_at AT TIME ZONE 'UTC' > $as_of)
        """,
        {"as_of": at},
    ).fetchone()
    return int(row[0]) if row else 0


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


def complete_days(first: datetime, today: date, window: int) -> int:
    """How many of the ``window`` UTC days before ``today`` the snapshots cover whole: a day counts from
    its midnight, so the first snapshot's day counts only if it began at midnight (a forecast fits these)."""
    first_full = first.date() if first.time() == datetime.min.time() else first.date() + timedelta(days=1)
    return min(window, (today - first_full).days)


__all__ = [
    "LATEST_COLUMNS",
    "LATEST_SQL",
    "complete_days",
    "held_bytes",
    "held_gb",
    "latest_snapshots",
    "snapshot_span",
]
