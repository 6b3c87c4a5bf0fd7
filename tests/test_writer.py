"""The writer: batch writes, one row per run with merging, the spool, drops, token counting."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pytest

from collector.record import INTERRUPTED, ChunkRecord, RunRecord
from collector.store import IngestHook, StoreError, Writer, migrate, open_reader
from collector.store.schema import SELECT_CHUNKS_SQL, chunk_from_row, record_from_row, select_runs_sql
from collector.store.spool import encode
from collector.store.writer import lock_path, spool_dir

SECRET = "ZEBRA-SECRET-42 the vector store chunk text"
SECRET_TOKENS = 12  # o200k_base


def _record(i: int, **kw: object) -> RunRecord:
    base: dict[str, object] = dict(
        run_id=f"run_{i:05d}",
        api="assistants",
        model="gpt-4o",
        status="completed",
        started_at=1_764_000_000.25 + i,
        input_tokens=100 + i,
        output_tokens=7,
        streams=1,
        tags={"customer": "acme" if i % 2 else "globex"},
    )
    base.update(kw)
    return RunRecord(**base)  # type: ignore[arg-type]


def _stored(path: Path) -> dict[str, RunRecord]:
    with open_reader(path, timeout=5) as conn:
        chunks: dict[str, list[ChunkRecord]] = {}
        for row in conn.execute(f"{SELECT_CHUNKS_SQL} ORDER BY call_id, rank").fetchall():
            run_id, c = chunk_from_row(row)
            chunks.setdefault(run_id, []).append(c)
        return {
            row[0]: record_from_row(row, chunks.get(row[0], []))
            for row in conn.execute(select_runs_sql("true")).fetchall()
        }


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "runmeter.duckdb"


@contextmanager
def hold_db_open(path: Path, seconds: float = 20.0) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the DuckDB file read-write (which locks out every other process)."""
    code = (
        "import duckdb, sys, time\n"
        f"c = duckdb.connect({str(path)!r})\n"
        "print('locked', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        assert proc.stdin is not None
        proc.stdin.close()  # the child exits when its stdin closes
        proc.wait(timeout=seconds)
        if proc.stdout is not None:
            proc.stdout.close()


@contextmanager
def hold_role(path: Path) -> Iterator[None]:
    """Hold the writer role the way another Recorder process would (so this one only spools)."""
    fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        yield
    finally:
        os.close(fd)


def _create_store(path: Path) -> None:
    with duckdb.connect(str(path)) as conn:
        migrate(conn)


def test_real_merge_unions_file_search_calls_across_flushes(db: Path) -> None:
    first = _record(
        1,
        status=INTERRUPTED,
        streams=1,
        chunks=[ChunkRecord("call_1", r, f"file_{r}", 0.5, 10) for r in (1, 2)],
    )
    first.extra = {"fs_calls": {"call_1": True}}
    second = _record(1, status="completed", streams=1, chunks=[ChunkRecord("call_2", 1, "file_9", 0.9, 30)])
    second.extra = {"fs_calls": {"call_2": True}}
    with Writer(db, flush_interval=60) as w:
        w.submit(first)
        assert w.flush()
        w.submit(second)
        assert w.flush()
    stored = _stored(db)["run_00001"]
    assert stored.status == "completed" and stored.streams == 2
    assert sorted((c.call_id, c.rank) for c in stored.chunks) == [("call_1", 1), ("call_1", 2), ("call_2", 1)]
    assert stored.file_search_calls == 2 and stored.retrieved_chunks == 3
    with open_reader(db) as conn:
        (state,) = conn.execute("SELECT extra FROM run_merge_state").fetchone() or ("",)
    assert '"fs_calls":{"call_1":true,"call_2":true}' in state


def test_batch_write_round_trips_every_field(db: Path) -> None:
    full = RunRecord(
        run_id="run_full",
        api="assistants",
        model="gpt-4o-mini",
        status="incomplete",
        thread_id="thread_1",
        assistant_id="asst_1",
        started_at=1_764_000_000.123456,
        first_token_at=1_764_000_000.9,
        completed_at=1_764_000_003.5,
        ttft_seconds=0.776544,
        duration_seconds=3.376544,
        input_tokens=12_345,
        cached_input_tokens=1_024,
        cache_write_tokens=0,
        output_tokens=321,
        reasoning_tokens=64,
        total_tokens=12_666,
        file_search_calls=2,
        retrieved_chunks=3,
        max_num_results=20,
        score_threshold=0.25,
        truncation="auto",
        max_prompt_tokens=20_000,
        max_completion_tokens=1_000,
        incomplete_reason="max_prompt_tokens",
        error_code=None,
        service_tier="default",
        streams=2,
        tags={"customer": "acme", "env": "prod"},
        model_steps=3,
        chunks=[
            ChunkRecord("call_1", 1, "file_a", 0.91, 800, True, "result"),
            ChunkRecord("call_1", 2, "file_b", 0.55, 650, False, None),
            ChunkRecord("call_2", 1, None, None, None, True, "file"),
        ],
    )
    with Writer(db, flush_interval=60, clock=lambda: 1_764_100_000.0) as w:
        w.submit(full)
        assert w.flush(timeout=10)
        assert (w.written, w.spooled, w.dropped, w.errors, w.pending) == (1, 0, 0, 0, 0)
        assert w.last_flush_at == 1_764_100_000.0
    assert _stored(db) == {"run_full": full}
    with open_reader(db) as conn:
        assert conn.execute("SELECT epoch(recorded_at) FROM runs").fetchone() == (1_764_100_000.0,)


def test_many_records_are_written_in_batches_not_row_by_row(db: Path) -> None:
    # Row-at-a-time inserts run at ~1,000 rows/s here, so 20,000 rows would take ~20 s that way.
    n = 20_000
    w = Writer(db, flush_interval=60, batch_size=5_000, queue_max=n)
    for i in range(n):
        w.submit(_record(i))
    t0 = time.perf_counter()
    assert w.flush(timeout=30)
    elapsed = time.perf_counter() - t0
    w.close()
    assert w.written == n and w.errors == 0
    assert elapsed < 6.0, f"{n} rows took {elapsed:.1f} s"
    with open_reader(db) as conn:
        assert conn.execute(
            "SELECT count(*), count(DISTINCT run_id), sum(input_tokens) FROM runs"
        ).fetchone() == (n, n, sum(100 + i for i in range(n)))
        assert conn.execute(
            "SELECT tags['customer'], count(*) FROM runs GROUP BY 1 ORDER BY 1"
        ).fetchall() == [("acme", n // 2), ("globex", n // 2)]


@pytest.mark.parametrize("same_batch", [True, False])
def test_terminal_observation_replaces_interrupted_never_the_reverse(db: Path, same_batch: bool) -> None:
    interrupted = _record(1, status=INTERRUPTED, output_tokens=None, input_tokens=None, streams=1)
    terminal = _record(
        1, status="completed", output_tokens=40, input_tokens=900, completed_at=1_764_000_009.0
    )
    late_interrupted = _record(1, status=INTERRUPTED, output_tokens=None, input_tokens=None, model="other")
    with Writer(db, flush_interval=60) as w:
        for rec in (interrupted, terminal, late_interrupted):
            w.submit(rec)
            if not same_batch:
                assert w.flush()
        assert w.flush()
    stored = _stored(db)
    assert list(stored) == ["run_00001"]
    row = stored["run_00001"]
    assert (row.status, row.input_tokens, row.output_tokens, row.model) == ("completed", 900, 40, "gpt-4o")
    assert row.completed_at == 1_764_000_009.0


def test_chunks_replaced_when_the_merged_record_carries_chunks(db: Path) -> None:
    # The writer stores exactly the merged record's chunks; which chunks survive a merge is
    # collector.merge's policy, so a merge that keeps the newer observation isolates the writer's rule.
    three = [ChunkRecord("call_1", r, f"file_{r}", 0.9 - r / 10, 100 * r) for r in (1, 2, 3)]
    two = [ChunkRecord("call_9", r, f"file_{r}", 0.5, 10) for r in (1, 2)]
    with Writer(db, flush_interval=60, merge=lambda old, new: new) as w:
        w.submit(_record(1, chunks=three))
        w.flush()
        assert [(c.call_id, c.rank) for c in _stored(db)["run_00001"].chunks] == [
            ("call_1", 1),
            ("call_1", 2),
            ("call_1", 3),
        ]
        w.submit(_record(1, chunks=two))
        w.flush()
        assert [(c.call_id, c.rank) for c in _stored(db)["run_00001"].chunks] == [
            ("call_9", 1),
            ("call_9", 2),
        ]
        w.submit(_record(1, chunks=[], output_tokens=99))  # no chunks: keep the stored ones
        w.flush()
    stored = _stored(db)["run_00001"]
    assert stored.output_tokens == 99
    assert [(c.call_id, c.rank, c.content_tokens) for c in stored.chunks] == [
        ("call_9", 1, 10),
        ("call_9", 2, 10),
    ]


def test_spools_while_another_process_holds_the_file_then_ingests(db: Path) -> None:
    _create_store(db)
    w = Writer(db, flush_interval=60)
    try:
        with hold_db_open(db):
            for i in range(300):
                w.submit(_record(i))
            assert w.flush(timeout=10)
            assert (w.written, w.spooled, w.dropped) == (0, 300, 0)
            files = list(spool_dir(db).glob("*.jsonl"))
            assert len(files) == 1 and len(files[0].read_bytes().splitlines()) == 300
            with pytest.raises(StoreError, match="stayed locked"):
                open_reader(db, timeout=0.2)
        assert w.flush(timeout=10)  # the file is free again: the spool is ingested
        assert (w.written, w.spooled, w.errors) == (300, 300, 0)
        assert list(spool_dir(db).iterdir()) == []
    finally:
        w.close()
    assert len(_stored(db)) == 300


def test_a_process_without_the_role_spools_and_the_role_holder_ingests(db: Path) -> None:
    with hold_role(db):
        w1 = Writer(db, flush_interval=60)
        for i in range(50):
            w1.submit(_record(i))
        w1.close()  # the role is held elsewhere: the records wait in the spool
        assert (w1.written, w1.spooled) == (0, 50)
        assert not db.exists()
    with Writer(db, flush_interval=60) as w2:
        assert w2.flush()
        assert w2.written == 50
    assert len(_stored(db)) == 50


def test_dropped_when_spool_is_unwritable_and_submit_never_raises(db: Path) -> None:
    spool_dir(db).write_text("a file where the spool directory should be")
    with hold_role(db):
        w = Writer(db, flush_interval=60, queue_max=10, batch_size=100)
        for i in range(50):
            w.submit(_record(i))  # 40 overflow to the (unwritable) spool on this thread
        assert (w.pending, w.dropped) == (10, 40)
        w.submit(None)  # type: ignore[arg-type]  # garbage in: still no exception
        assert w.flush(timeout=10)
        assert (w.dropped, w.errors, w.pending, w.spooled, w.written) == (50, 1, 0, 0, 0)
        w.close()
    assert not db.exists()


def test_chunk_tokens_counted_and_text_never_stored(db: Path) -> None:
    chunks = [
        ChunkRecord("call_1", 1, "file_a", 0.8, text=SECRET),
        ChunkRecord("call_1", 2, "file_b", 0.7, content_tokens=5, text=SECRET),
    ]
    # First through the spool (another process holds the role), then into DuckDB.
    with hold_role(db):
        w = Writer(db, flush_interval=60)
        w.submit(_record(1, chunks=chunks))
        w.flush()
        spooled = b"".join(p.read_bytes() for p in spool_dir(db).iterdir())
        assert SECRET.encode() not in spooled and b'"content_tokens":12' in spooled
        w.close()
    with Writer(db, flush_interval=60) as w2:
        w2.submit(_record(2, chunks=[ChunkRecord("call_1", 1, "file_a", 0.8, text=SECRET)]))
        w2.flush()
    stored = _stored(db)
    assert [c.content_tokens for c in stored["run_00001"].chunks] == [SECRET_TOKENS, 5]
    assert [c.content_tokens for c in stored["run_00002"].chunks] == [SECRET_TOKENS]
    with duckdb.connect(str(db)) as conn:
        conn.execute("CHECKPOINT")
    assert SECRET.encode() not in db.read_bytes()
    assert not list(db.parent.glob("*.wal"))


def test_overflow_path_drops_text_without_counting(db: Path) -> None:
    with hold_role(db):
        w = Writer(db, flush_interval=60, queue_max=1)
        w.submit(_record(1))
        w.submit(_record(2, chunks=[ChunkRecord("call_1", 1, "file_a", 0.8, text=SECRET)]))
        assert (w.pending, w.spooled) == (1, 1)
        w.close()
    assert SECRET.encode() not in b"".join(p.read_bytes() for p in spool_dir(db).iterdir())
    with Writer(db, flush_interval=60):
        pass
    stored = _stored(db)
    assert set(stored) == {"run_00001", "run_00002"}
    assert stored["run_00002"].chunks[0].content_tokens is None


def test_partial_last_line_of_a_killed_process_is_skipped(db: Path) -> None:
    d = spool_dir(db)
    d.mkdir()
    orphan = d / "00000000000000000001-99999-deadbeef.tmp"  # left open by a process that died
    orphan.write_bytes(encode(_record(1)) + encode(_record(2)) + encode(_record(3))[:40])
    old = time.time() - 60
    os.utime(orphan, (old, old))
    with Writer(db, flush_interval=60) as w:
        assert w.flush()
        assert (w.written, w.skipped_lines) == (2, 1)
    assert set(_stored(db)) == {"run_00001", "run_00002"}
    assert list(d.iterdir()) == []


def test_a_spool_file_is_never_applied_twice(db: Path) -> None:
    calls: list[str] = []

    def summing_merge(old: RunRecord, new: RunRecord) -> RunRecord:
        calls.append(new.run_id)
        new.streams = old.streams + new.streams  # not idempotent: a second application would show
        return new

    with hold_role(db):
        w = Writer(db, flush_interval=60)
        w.submit(_record(1, streams=1))
        w.close()
    (spooled,) = spool_dir(db).iterdir()
    copy = spooled.read_bytes()
    with Writer(db, flush_interval=60, merge=summing_merge) as w2:
        assert w2.flush()
    spooled.write_bytes(copy)  # as if the process died between COMMIT and unlink
    with Writer(db, flush_interval=60, merge=summing_merge) as w3:
        assert w3.flush()
        assert w3.written == 0
    assert calls == []
    assert _stored(db)["run_00001"].streams == 1
    assert not spooled.exists()


def test_foreign_file_is_not_written_and_records_wait_in_the_spool(db: Path) -> None:
    with duckdb.connect(str(db)) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    with Writer(db, flush_interval=60) as w:
        w.submit(_record(1))
        w.flush()
        assert (w.written, w.spooled) == (0, 1) and w.errors >= 1
    with duckdb.connect(str(db)) as conn:
        tables = {r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert tables == {"invoices"}
    assert len(list(spool_dir(db).glob("*.jsonl"))) == 1


def test_submit_after_close_goes_to_the_spool(db: Path) -> None:
    w = Writer(db, flush_interval=60)
    w.close()
    w.submit(_record(1))
    assert (w.spooled, w.dropped) == (1, 0)
    with Writer(db, flush_interval=60):
        pass
    assert set(_stored(db)) == {"run_00001"}


def test_ingest_hooks_run_only_for_the_role_holder(db: Path) -> None:
    calls: list[str] = []

    def ingest(conn: duckdb.DuckDBPyConnection, path: Path) -> None:
        conn.execute(
            "INSERT INTO vector_store_snapshots (vector_store_id, observed_at, usage_bytes) "
            "VALUES ('vs_1', TIMESTAMPTZ '2026-11-25 00:00:00+00', 1234)"
        )
        calls.append(path.name)

    hook = IngestHook(pending=lambda path: not calls, ingest=ingest)
    with hold_role(db):
        w = Writer(db, flush_interval=60, ingest_hooks=[hook])
        w.submit(_record(1))
        assert w.flush()
        assert calls == []
        w.close()
    with Writer(db, flush_interval=60, ingest_hooks=[hook]) as w2:
        assert w2.flush()
        assert w2.flush()
    assert calls == ["runmeter.duckdb"]
    with open_reader(db) as conn:
        assert conn.execute("SELECT vector_store_id, usage_bytes FROM vector_store_snapshots").fetchall() == [
            ("vs_1", 1234)
        ]
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (1,)


def test_public_surface() -> None:
    import collector.store

    assert sorted(collector.store.__all__) == [
        "ForeignStoreError",
        "IngestHook",
        "MIGRATIONS",
        "NewerStoreError",
        "StoreError",
        "Writer",
        "migrate",
        "open_reader",
    ]


def test_a_read_only_connection_in_this_process_defers_the_write(db: Path) -> None:
    with Writer(db, flush_interval=60) as w:
        w.submit(_record(1))
        assert w.flush()
        reader = open_reader(db)
        w.submit(_record(2))
        assert w.flush()
        assert (w.written, w.spooled, w.errors) == (1, 1, 0)  # waits in the spool, not an error
        reader.close()
        assert w.flush()
        assert w.written == 2
    assert set(_stored(db)) == {"run_00001", "run_00002"}
