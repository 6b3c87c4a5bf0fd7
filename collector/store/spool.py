"""The spool: small append-only JSON-lines files beside the store, one writer per file.

Layout: ``<db>.spool/<time_ns>-<pid>-<random>.tmp`` while a process appends to it (it holds an
exclusive ``flock`` on the file the whole time), renamed to ``.jsonl`` once ``fsync``'d ("sealed").
A sealed file is complete and never written again. A ``.tmp`` file whose lock can be taken belongs
to a process that died (SIGKILL): its complete lines are ingested, a partial last line is skipped.

Chunk text is never written here: the writer thread counts its tokens first, and the overflow path
(which runs on the caller's thread) drops it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from collector.record import ChunkRecord, RunRecord

SEALED = ".jsonl"
OPEN = ".tmp"

_RUN_FIELDS = tuple(f.name for f in dataclasses.fields(RunRecord) if f.name != "chunks")
_CHUNK_FIELDS = tuple(f.name for f in dataclasses.fields(ChunkRecord) if f.name != "text")
_ORPHAN_GRACE_SECONDS = 2.0


def encode(record: RunRecord) -> bytes:
    """One JSON line for the record (no chunk text; ``extra`` only when JSON-serialisable)."""
    d: dict[str, Any] = {name: getattr(record, name) for name in _RUN_FIELDS}
    d["chunks"] = [{name: getattr(c, name) for name in _CHUNK_FIELDS} for c in record.chunks]
    try:
        line = json.dumps(d, separators=(",", ":"))
    except (TypeError, ValueError):
        d["extra"] = {}
        line = json.dumps(d, separators=(",", ":"), default=str)
    return line.encode() + b"\n"


def decode(line: bytes) -> RunRecord:
    """The record of one spool line (unknown keys are ignored, so older readers survive new fields)."""
    d = json.loads(line)
    if not isinstance(d, dict) or not isinstance(d.get("run_id"), str):
        raise ValueError("not a run record")
    chunks = [ChunkRecord(**{k: v for k, v in c.items() if k in _CHUNK_FIELDS})
              for c in d.get("chunks") or []]
    return RunRecord(**{k: v for k, v in d.items() if k in _RUN_FIELDS}, chunks=chunks)


class Segment:
    """One open spool file of this process, appended to and then sealed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            raise

    def append(self, records: Iterable[RunRecord]) -> int:
        """Write the records (no fsync); returns how many."""
        if self._fd is None:
            raise ValueError("segment is sealed")
        data = [encode(r) for r in records]
        if data:
            os.write(self._fd, b"".join(data))
            self.count += len(data)
        return len(data)

    def seal(self) -> Path | None:
        """fsync and rename to ``.jsonl`` (an empty segment is removed); returns the sealed path."""
        if self._fd is None:
            return None
        fd, self._fd = self._fd, None
        try:
            if self.count == 0:
                self.path.unlink(missing_ok=True)
                return None
            os.fsync(fd)
            sealed = self.path.with_suffix(SEALED)
            os.replace(self.path, sealed)
            _fsync_dir(self.path.parent)
            return sealed
        finally:
            os.close(fd)

    def discard(self) -> None:
        """Close and remove an unsealed segment (after a failed write)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        self.path.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The spool directory of one store.

    Args:
        directory: ``<db>.spool``; created on first write.
        clock: wall clock (file names sort by it, so ingestion follows write order).
    """

    def __init__(self, directory: Path, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self._clock = clock

    def open_segment(self) -> Segment:
        """A new locked ``.tmp`` file of this process (raises OSError when the directory is unwritable)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{int(self._clock() * 1e9):020d}-{os.getpid()}-{secrets.token_hex(4)}{OPEN}"
        return Segment(self.directory / name)

    def write(self, records: list[RunRecord]) -> Path | None:
        """Append the records to a new sealed file, fsync'd; raises OSError (nothing left behind)."""
        if not records:
            return None
        seg = self.open_segment()
        try:
            seg.append(records)
            return seg.seal()
        except BaseException:
            seg.discard()
            raise

    def ready_files(self) -> list[Path]:
        """Files to ingest, oldest first: sealed ones and those left open by a dead process."""
        try:
            with os.scandir(self.directory) as it:
                entries = list(it)
        except (FileNotFoundError, NotADirectoryError):
            return []
        ready: list[Path] = []
        now = time.time()
        for e in entries:
            if e.name.endswith(SEALED) or (e.name.endswith(OPEN) and _is_orphan(e, now)):
                ready.append(Path(e.path))
        ready.sort(key=lambda p: p.name)
        return ready

    @staticmethod
    def read(path: Path) -> tuple[list[RunRecord], int]:
        """The file's records and the number of lines skipped (partial last line, corrupt lines)."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return [], 0
        lines = data.split(b"\n")
        skipped = 0
        if lines and lines[-1] == b"":
            lines.pop()
        elif lines:
            lines.pop()  # no newline: a process died while writing it
            skipped += 1
        records: list[RunRecord] = []
        for line in lines:
            try:
                records.append(decode(line))
            except (ValueError, TypeError):
                skipped += 1
        return records, skipped

    @staticmethod
    def remove(path: Path) -> None:
        """Delete an ingested file."""
        path.unlink(missing_ok=True)


def _is_orphan(entry: os.DirEntry[str], now: float) -> bool:
    try:
        if now - entry.stat().st_mtime < _ORPHAN_GRACE_SECONDS:
            return False  # may be just created, before its owner took the lock
        fd = os.open(entry.path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    else:
        return True
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
