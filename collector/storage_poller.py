"""The vector-store storage poller: one snapshot per store per poll into ``vector_store_snapshots``.

``StoragePoller(client, sink, clock).poll_once()`` lists every vector store through the SDK (all pages)
and hands one :class:`SnapshotRow` per store to the sink. A store it saw before (or that the store still
holds as live) and that has left the listing is confirmed with a GET: a 404 records a final ``deleted``
snapshot with 0 bytes, so it stops counting from that poll on.

Idempotence: a snapshot's key is ``(vector_store_id, observed_at)`` and every write is an upsert, so two
pollers at the same instant leave one row. Pollers at different instants add rows, but the storage
integration (:mod:`analysis.storage`) holds each snapshot's bytes only until the next snapshot of the store,
so repeated observations of one state add no byte-time: nothing is ever counted twice.

Writing without fighting the run writer for the DuckDB lock (:class:`StoreSink`): the sink takes the
writer role (the ``<db>.writer.lock`` flock of :mod:`collector.store.writer`) for the moment of one
write. Holding it, it opens the file read-write, ingests the snapshot spool and its own rows, commits and
lets go. When another process (or a :class:`~collector.store.writer.Writer` in this one) holds the role,
or the file stays locked, the rows go to a spool file ``<db>.snapshots/<time>-<pid>-<rand>.jsonl``
(fsync'd) instead. Whoever next holds the role ingests it: this sink on its next write, or the run
writer through :func:`ingest_snapshot_spool`. Readers see spooled rows at once through
:func:`open_snapshots`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import duckdb
import openai
import pyarrow as pa

from collector.store.migrations import StoreError, migrate
from collector.store.reader import is_lock_error, open_reader
from collector.store.schema import SNAPSHOTS_COLUMNS, arrow_schema
from collector.store.writer import take_role

__all__ = [
    "BackgroundPoller",
    "PollResult",
    "SnapshotRow",
    "SnapshotSink",
    "StoragePoller",
    "StoreSink",
    "deleted_row",
    "ingest_snapshot_spool",
    "open_snapshots",
    "snapshot_row",
    "snapshot_spool_dir",
    "snapshots_pending",
    "snapshots_table",
    "spooled_rows",
    "start_background",
]

_LOG = logging.getLogger("runmeter.storage")
_TIME_FIELDS = frozenset(name for name, typ in SNAPSHOTS_COLUMNS if typ.startswith("TIMESTAMP"))
_SEALED = ".jsonl"
_OPEN = ".tmp"
_STALE_TMP_SECONDS = 3600.0


# --- rows (pure) -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    """One row of ``vector_store_snapshots``; times are unix seconds (UTC), ``None`` when unknown."""

    vector_store_id: str
    observed_at: float
    usage_bytes: int
    status: str | None = None
    name: str | None = None
    file_counts_in_progress: int | None = None
    file_counts_completed: int | None = None
    file_counts_failed: int | None = None
    file_counts_cancelled: int | None = None
    file_counts_total: int | None = None
    expires_at: float | None = None
    expires_after_days: int | None = None
    last_active_at: float | None = None


_ROW_FIELDS = tuple(f.name for f in dataclasses.fields(SnapshotRow))


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def snapshot_row(store: Any, observed_at: float) -> SnapshotRow:
    """The snapshot of an SDK ``VectorStore`` (or any object with its attributes) at ``observed_at``."""
    counts = getattr(store, "file_counts", None)
    expires_after = getattr(store, "expires_after", None)
    return SnapshotRow(
        vector_store_id=str(store.id),
        observed_at=float(observed_at),
        usage_bytes=int(getattr(store, "usage_bytes", 0) or 0),
        status=getattr(store, "status", None),
        name=getattr(store, "name", None),
        file_counts_in_progress=_int(getattr(counts, "in_progress", None)),
        file_counts_completed=_int(getattr(counts, "completed", None)),
        file_counts_failed=_int(getattr(counts, "failed", None)),
        file_counts_cancelled=_int(getattr(counts, "cancelled", None)),
        file_counts_total=_int(getattr(counts, "total", None)),
        expires_at=_float(getattr(store, "expires_at", None)),
        expires_after_days=_int(getattr(expires_after, "days", None)),
        last_active_at=_float(getattr(store, "last_active_at", None)),
    )


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def deleted_row(vector_store_id: str, observed_at: float, name: str | None = None) -> SnapshotRow:
    """The final snapshot of a store found deleted: status ``deleted``, 0 bytes."""
    return SnapshotRow(vector_store_id=vector_store_id, observed_at=float(observed_at), usage_bytes=0,
                       status="deleted", name=name)


def _micros(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1_000_000)


def _dedupe(rows: Iterable[SnapshotRow]) -> list[SnapshotRow]:
    """One row per key (the store's precision is a microsecond); the last one given wins."""
    out: dict[tuple[str, int | None], SnapshotRow] = {}
    for r in rows:
        out[(r.vector_store_id, _micros(r.observed_at))] = r
    return list(out.values())


def snapshots_table(rows: Iterable[SnapshotRow]) -> pa.Table:
    """The rows as an Arrow table in ``SNAPSHOTS_COLUMNS`` order, one row per key."""
    data: dict[str, list[Any]] = {name: [] for name in _ROW_FIELDS}
    for r in _dedupe(rows):
        for name in _ROW_FIELDS:
            value = getattr(r, name)
            data[name].append(_micros(value) if name in _TIME_FIELDS else value)
    return pa.table(data, schema=arrow_schema(SNAPSHOTS_COLUMNS))


def _encode(row: SnapshotRow) -> bytes:
    return json.dumps(dataclasses.asdict(row), separators=(",", ":")).encode() + b"\n"


def _decode(line: bytes) -> SnapshotRow:
    d = json.loads(line)
    if not isinstance(d, dict) or not isinstance(d.get("vector_store_id"), str):
        raise ValueError("not a snapshot row")
    return SnapshotRow(**{k: v for k, v in d.items() if k in _ROW_FIELDS})


# --- the snapshot spool ----------------------------------------------------------------------------------


def snapshot_spool_dir(path: str | os.PathLike[str]) -> Path:
    """The snapshot spool directory of a store (``<db>.snapshots``)."""
    return Path(f"{os.fspath(path)}.snapshots")


def _spool_files(path: str | os.PathLike[str]) -> list[Path]:
    directory = snapshot_spool_dir(path)
    try:
        with os.scandir(directory) as entries:
            names = sorted(e.name for e in entries if e.name.endswith(_SEALED))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [directory / n for n in names]


def _read_spool_file(file: Path) -> list[SnapshotRow]:
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        return []
    rows = []
    for line in data.splitlines():
        try:
            rows.append(_decode(line))
        except (ValueError, TypeError):
            _LOG.warning("runmeter: skipped a corrupt line in %s", file)
    return rows


def snapshots_pending(path: str | os.PathLike[str]) -> bool:
    """Whether sealed snapshot spool files wait for ingestion (a directory scan, no DuckDB)."""
    try:
        with os.scandir(snapshot_spool_dir(path)) as entries:
            return any(e.name.endswith(_SEALED) for e in entries)
    except OSError:
        return False


def spooled_rows(path: str | os.PathLike[str]) -> list[SnapshotRow]:
    """Snapshots waiting in the spool of the store at ``path``, oldest file first."""
    return [r for f in _spool_files(path) for r in _read_spool_file(f)]


def _write_spool(path: str | os.PathLike[str], rows: Sequence[SnapshotRow], now: float) -> Path:
    """One sealed spool file with ``rows`` (written, fsync'd, renamed); raises OSError."""
    directory = snapshot_spool_dir(path)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f"{int(now * 1e9):020d}-{os.getpid()}-{secrets.token_hex(4)}{_OPEN}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"".join(_encode(r) for r in rows))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    sealed = tmp.with_suffix(_SEALED)
    os.replace(tmp, sealed)
    return sealed


def _upsert(conn: duckdb.DuckDBPyConnection, rows: Iterable[SnapshotRow]) -> int:
    table = snapshots_table(rows)
    if table.num_rows == 0:
        return 0
    conn.register("_rm_snaps", table)
    try:
        conn.execute("INSERT OR REPLACE INTO vector_store_snapshots SELECT * FROM _rm_snaps")
    finally:
        conn.unregister("_rm_snaps")
    return table.num_rows


def ingest_snapshot_spool(conn: duckdb.DuckDBPyConnection, path: str | os.PathLike[str],
                          rows: Sequence[SnapshotRow] = ()) -> int:
    """Upsert every spooled snapshot of the store at ``path`` (plus ``rows``) in one transaction.

    The hook for the run writer: call it with the read-write connection, while holding the writer role
    and outside any open transaction. The spool files are deleted after the commit; a crash in between
    only upserts the same rows again. Returns how many rows were written.
    """
    files = _spool_files(path)
    spooled = [r for f in files for r in _read_spool_file(f)]
    if not spooled and not rows:
        return 0
    conn.execute("BEGIN TRANSACTION")
    try:
        count = _upsert(conn, [*spooled, *rows])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    for f in files:
        f.unlink(missing_ok=True)
    return count


def _remove_stale_tmp(path: str | os.PathLike[str], now: float) -> None:
    """Drop ``.tmp`` files left by a process killed mid-write (their poll is simply lost)."""
    with contextlib.suppress(OSError), os.scandir(snapshot_spool_dir(path)) as entries:
        for e in entries:
            if e.name.endswith(_OPEN) and now - e.stat().st_mtime > _STALE_TMP_SECONDS:
                Path(e.path).unlink(missing_ok=True)


# --- sinks -----------------------------------------------------------------------------------------------


class SnapshotSink(Protocol):
    """Where a poller's snapshots go."""

    def write(self, rows: Sequence[SnapshotRow]) -> str:
        """Persist ``rows``; returns ``"stored"`` or ``"spooled"``. Raises OSError when neither works."""
        ...

    def live_store_ids(self) -> set[str]:
        """Stores whose latest recorded snapshot is not ``deleted`` (empty when unknown)."""
        ...


class StoreSink:
    """Writes snapshots to the DuckDB store at ``path``, or to its snapshot spool when the store is busy.

    Args:
        path: the DuckDB file (created and migrated on the first write that gets the writer role).
        lock_timeout: seconds to retry a DuckDB lock error (a reader in another process) before spooling.
        clock: wall clock for spool file names.
    """

    def __init__(self, path: str | os.PathLike[str], *, lock_timeout: float = 2.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.lock_timeout = lock_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._migrated = False

    def write(self, rows: Sequence[SnapshotRow]) -> str:
        """Upsert ``rows`` (and the spool) into the store when this process may; else spool them."""
        with self._lock:
            _remove_stale_tmp(self.path, time.time())
            if self._try_store(rows):
                return "stored"
            if rows:
                _write_spool(self.path, rows, self._clock())
            return "spooled"

    def _try_store(self, rows: Sequence[SnapshotRow]) -> bool:
        fd = take_role(self.path)
        if fd is None:
            return False
        try:
            conn = self._connect()
            if conn is None:
                return False
            try:
                if not self._migrated:
                    migrate(conn, str(self.path))
                    self._migrated = True
                ingest_snapshot_spool(conn, self.path, rows)
            finally:
                conn.close()
            return True
        finally:
            os.close(fd)  # releases the role

    def _connect(self) -> duckdb.DuckDBPyConnection | None:
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.005
        while True:
            try:
                return duckdb.connect(str(self.path))
            except duckdb.Error as exc:
                # "different configuration": this process has the file open read-only itself (a
                # dashboard, a report); like another process's lock, it passes.
                if not (is_lock_error(exc) or "different configuration" in str(exc)):
                    raise StoreError(f"cannot open {self.path}: {exc}") from None
                if time.monotonic() >= deadline:
                    return None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def live_store_ids(self) -> set[str]:
        """Stores whose latest snapshot (stored or spooled) is not ``deleted``; empty when unreadable."""
        try:
            conn = open_snapshots(self.path, timeout=self.lock_timeout)
        except Exception as exc:  # an unreadable store only costs the deleted-store check
            _LOG.debug("runmeter: could not read known stores from %s: %s", self.path, exc)
            return {r.vector_store_id for r in _latest(spooled_rows(self.path)) if r.status != "deleted"}
        # Imported here: analysis pulls in polars, which the writer's lazy import of this module must not pay.
        from analysis.snapshots import LATEST_SQL

        try:
            rows = conn.execute(
                f"SELECT vector_store_id FROM ({LATEST_SQL}) WHERE coalesce(status, '') <> 'deleted'",
                {"as_of": None},
            ).fetchall()
        finally:
            conn.close()
        return {r[0] for r in rows}


def _latest(rows: Iterable[SnapshotRow]) -> list[SnapshotRow]:
    last: dict[str, SnapshotRow] = {}
    for r in rows:
        if r.vector_store_id not in last or r.observed_at >= last[r.vector_store_id].observed_at:
            last[r.vector_store_id] = r
    return list(last.values())


def open_snapshots(path: str | os.PathLike[str], *, timeout: float = 5.0) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection whose ``vector_store_snapshots`` holds the store's and the spool's rows.

    The store is opened read-only (waiting out the writer's batches, see
    :func:`collector.store.reader.open_reader`) only long enough to copy the table, so the analysis runs
    without holding the file. Raises StoreError for a missing or foreign store.
    """
    reader = open_reader(path, timeout=timeout)
    try:
        # A cursor of its own: check_store leaves a result open on the reader connection.
        stored = reader.cursor().sql("SELECT * FROM vector_store_snapshots").to_arrow_table()
    finally:
        reader.close()
    conn = duckdb.connect()
    cols = ", ".join(f"{name} {typ}" for name, typ in SNAPSHOTS_COLUMNS)
    conn.execute(f"CREATE TABLE vector_store_snapshots ({cols}, PRIMARY KEY (vector_store_id, observed_at))")
    conn.register("_rm_stored", stored)
    conn.execute("INSERT INTO vector_store_snapshots SELECT * FROM _rm_stored")
    conn.unregister("_rm_stored")
    _upsert(conn, spooled_rows(path))
    return conn


# --- the poller ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PollResult:
    """What one poll saw and did."""

    observed_at: float
    rows: tuple[SnapshotRow, ...]
    deleted: tuple[str, ...]
    """Stores found deleted by this poll."""
    outcome: str
    """``stored`` or ``spooled``."""

    @property
    def billed_bytes(self) -> int:
        """Bytes of the stores that bill (not expired or deleted) at this poll."""
        return sum(r.usage_bytes for r in self.rows if r.status not in ("expired", "deleted"))


class StoragePoller:
    """Snapshots every vector store of the organization behind ``client`` into ``sink``.

    Args:
        client: an ``openai.OpenAI`` client (any base URL: the API, the proxy, the simulator).
        sink: where snapshots go (:class:`StoreSink` for a DuckDB store).
        clock: unix-seconds clock stamping ``observed_at`` (the simulator's logical clock in tests).
        page_size: ``limit`` of each list page (1-100).

    ``last_poll_at`` is the clock time of the last poll that completed (``None`` before one did).
    """

    def __init__(self, client: openai.OpenAI, sink: SnapshotSink, clock: Callable[[], float] = time.time,
                 *, page_size: int = 100, logger: logging.Logger | None = None) -> None:
        self.client = client
        self.sink = sink
        self.clock = clock
        self.page_size = page_size
        self.last_poll_at: float | None = None
        self.polls = 0
        self._log = logger or _LOG
        self._live: set[str] | None = None
        self._names: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def poll_once(self) -> PollResult:
        """List all stores, confirm vanished ones, write one snapshot each. Raises ``openai.OpenAIError``
        when the listing fails (nothing is written then) and OSError when the sink cannot persist."""
        with self._lock:
            if self._live is None:
                self._live = set(self.sink.live_store_ids())
            observed_at = self.clock()
            rows: list[SnapshotRow] = []
            for store in self.client.vector_stores.list(limit=self.page_size):
                rows.append(snapshot_row(store, observed_at))
            seen = {r.vector_store_id for r in rows}
            deleted: list[str] = []
            unconfirmed: set[str] = set()
            for vs_id in sorted(self._live - seen):
                row = self._confirm(vs_id, observed_at)
                if row is None:
                    unconfirmed.add(vs_id)  # asked again next poll
                    continue
                rows.append(row)
                if row.status == "deleted":
                    deleted.append(vs_id)
            outcome = self.sink.write(rows)
            for r in rows:
                self._names[r.vector_store_id] = r.name or self._names.get(r.vector_store_id)
            self._live = {r.vector_store_id for r in rows if r.status != "deleted"} | unconfirmed
            self.last_poll_at = observed_at
            self.polls += 1
            return PollResult(observed_at, tuple(rows), tuple(deleted), outcome)

    def _confirm(self, vs_id: str, observed_at: float) -> SnapshotRow | None:
        """A store missing from the listing: ``deleted`` on a 404, its state if it is still there."""
        try:
            store = self.client.vector_stores.retrieve(vs_id)
        except openai.NotFoundError:
            return deleted_row(vs_id, observed_at, self._names.get(vs_id))
        except openai.OpenAIError as exc:
            self._log.warning("runmeter: vector store %s left the listing; could not confirm: %s", vs_id, exc)
            return None
        return snapshot_row(store, observed_at)


class BackgroundPoller:
    """A daemon thread calling ``poller.poll_once()`` every ``interval`` seconds (:func:`start_background`).

    ``errors`` counts failed polls (logged, never raised); ``last_poll_at`` is the poller's.
    """

    def __init__(self, poller: StoragePoller, interval: float) -> None:
        if not interval > 0:
            raise ValueError(f"poll interval must be positive, got {interval!r}")
        self.poller = poller
        self.interval = interval
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="runmeter-storage-poller", daemon=True)

    @property
    def last_poll_at(self) -> float | None:
        """Clock time of the last completed poll."""
        return self.poller.last_poll_at

    def start(self) -> BackgroundPoller:
        """Start the thread (the first poll runs at once)."""
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to stop and wait for a poll in flight to finish."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poller.poll_once()
            except Exception as exc:  # telemetry never breaks the program it observes
                self.errors += 1
                _LOG.warning("runmeter: storage poll failed: %s", exc)
            self._stop.wait(self.interval)


def start_background(poller: StoragePoller, interval: float) -> BackgroundPoller:
    """Run ``poller`` every ``interval`` seconds in a daemon thread; ``.stop()`` ends it."""
    return BackgroundPoller(poller, interval).start()
