"""The DuckDB store: schema migrations, the non-blocking multi-process writer, read-only access.

>>> w = Writer("runmeter.duckdb")      # background thread; spool beside the file
>>> w.submit(record)                   # never blocks, never raises
>>> w.close()                          # flushes; also runs at exit and on SIGTERM
>>> conn = open_reader("runmeter.duckdb", timeout=5)   # read-only, waits out ingest batches
"""

from collector.store.migrations import (
    MIGRATIONS,
    ForeignStoreError,
    NewerStoreError,
    StoreError,
    migrate,
)
from collector.store.reader import open_reader
from collector.store.writer import IngestHook, Writer

__all__ = [
    "MIGRATIONS",
    "ForeignStoreError",
    "IngestHook",
    "NewerStoreError",
    "StoreError",
    "Writer",
    "migrate",
    "open_reader",
]
