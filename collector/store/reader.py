"""Read-only access to the store that waits out the writer's short ingest batches.

The writer opens the DuckDB file read-write only for one ingest batch (tens of milliseconds) and
closes it, and DuckDB refuses every other process while it is open read-write. So a reader retries
the lock error with a short backoff until ``timeout``; any other failure is a :class:`StoreError`
with a message for a person.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import duckdb

from collector.store.migrations import StoreError, check_store


def is_lock_error(exc: BaseException) -> bool:
    """Whether a DuckDB error is "another process holds the file"."""
    return isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower()


def open_reader(
    path: str | os.PathLike[str],
    *,
    timeout: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> duckdb.DuckDBPyConnection:
    """Open the store read-only, retrying while another process holds it read-write.

    Raises StoreError when the file is missing, not a DuckDB file, not a runmeter store, or still
    locked after ``timeout`` seconds.
    """
    p = Path(path)
    if not p.exists():
        raise StoreError(f"no runmeter store at {p} (record some runs first, or set RUNMETER_DB)")
    deadline = monotonic() + timeout
    delay = 0.002
    while True:
        try:
            conn = duckdb.connect(str(p), read_only=True)
            break
        except duckdb.Error as exc:
            if not is_lock_error(exc):
                raise StoreError(f"cannot open {p}: {exc}") from None
            if monotonic() >= deadline:
                raise StoreError(
                    f"{p} stayed locked by another process for {timeout:g} s (a writer that keeps it "
                    "open read-write, not runmeter's batch writer?)"
                ) from None
            sleep(delay)
            # A failed attempt is cheap, and the writer leaves gaps of tens of ms: poll often.
            delay = min(delay * 2, 0.01)
    try:
        if not check_store(conn, str(p)):
            raise StoreError(f"{p} is an empty DuckDB file, not yet a runmeter store")
    except BaseException:
        conn.close()
        raise
    return conn
