"""The storage poller against the real simulator (SDK over sockets) and real DuckDB files."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import openai
import pytest

from collector.simulator import Simulator
from collector.storage_poller import (
    SnapshotRow,
    StoragePoller,
    StoreSink,
    ingest_snapshot_spool,
    open_snapshots,
    snapshot_spool_dir,
    spooled_rows,
    start_background,
)
from collector.store.migrations import StoreError, migrate
from collector.store.schema import SNAPSHOTS_COLUMNS
from collector.store.writer import lock_path

EPOCH = 1_764_000_000


@pytest.fixture
def vsim() -> Iterator[Simulator]:
    """A simulator whose files finish processing the moment they are attached (latency ``none``)."""
    with Simulator(seed=3, epoch=EPOCH, latency="none") as s:
        yield s


@pytest.fixture
def vclient(vsim: Simulator) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=vsim.base_url, api_key="sk-test", max_retries=0)
    yield c
    c.close()


def _store(client: openai.OpenAI, name: str, words: int = 300, **kw: object) -> str:
    vs = client.vector_stores.create(name=name, **kw)  # type: ignore[arg-type]
    text = " ".join(f"{name}-word{i}" for i in range(words))
    client.vector_stores.files.upload_and_poll(vector_store_id=vs.id, file=(f"{name}.txt", text.encode()))
    return vs.id


def _rows(db: Path) -> list[tuple[object, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(
            "SELECT vector_store_id, epoch(observed_at), usage_bytes, status, name, file_counts_completed, "
            "file_counts_total, epoch(expires_at), expires_after_days, epoch(last_active_at) "
            "FROM vector_store_snapshots ORDER BY observed_at, vector_store_id"
        ).fetchall()
    finally:
        con.close()


def test_snapshot_row_follows_the_table_schema() -> None:
    assert tuple(SnapshotRow.__dataclass_fields__) == tuple(name for name, _ in SNAPSHOTS_COLUMNS)


def test_poll_walks_every_page_and_records_each_store(
    vsim: Simulator, vclient: openai.OpenAI, tmp_path: Path
) -> None:
    ids = [vclient.vector_stores.create(name=f"empty {i}").id for i in range(55)]
    full = _store(vclient, "full", expires_after={"anchor": "last_active_at", "days": 3})
    db = tmp_path / "s.duckdb"
    poller = StoragePoller(vclient, StoreSink(db), clock=vsim.world.clock.now, page_size=20)
    assert poller.last_poll_at is None
    result = poller.poll_once()
    assert result.outcome == "stored" and result.deleted == ()
    assert poller.last_poll_at == EPOCH and poller.polls == 1
    rows = _rows(db)
    assert sorted(r[0] for r in rows) == sorted([*ids, full])  # 56 stores over 3 pages of 20
    world = vsim.world.vector_stores[full]
    assert world["usage_bytes"] > 0
    by_id = {r[0]: r for r in rows}
    assert by_id[full][1:] == (EPOCH, world["usage_bytes"], "completed", "full", 1, 1,
                               EPOCH + 3 * 86_400, 3, EPOCH)
    assert by_id[ids[0]][2:5] == (0, "completed", "empty 0")
    assert result.billed_bytes == world["usage_bytes"]


def test_a_deleted_store_gets_a_final_zero_snapshot_even_from_a_new_poller(
    vsim: Simulator, vclient: openai.OpenAI, tmp_path: Path
) -> None:
    keep, gone = _store(vclient, "keep"), _store(vclient, "gone")
    db = tmp_path / "s.duckdb"
    clock = vsim.world.clock
    StoragePoller(vclient, StoreSink(db), clock=clock.now).poll_once()
    clock.advance(3600)
    vclient.vector_stores.delete(gone)
    # A fresh process knows the store from the snapshots already stored.
    result = StoragePoller(vclient, StoreSink(db), clock=clock.now).poll_once()
    assert result.deleted == (gone,)
    last = {r[0]: r for r in _rows(db) if r[1] == EPOCH + 3600}
    assert last[gone][2:4] == (0, "deleted")
    assert last[keep][2:4] == (vsim.world.vector_stores[keep]["usage_bytes"], "completed")
    # Deleted once: the next poll does not record it again.
    clock.advance(3600)
    again = StoragePoller(vclient, StoreSink(db), clock=clock.now).poll_once()
    assert again.deleted == () and [r.vector_store_id for r in again.rows] == [keep]


def test_two_pollers_at_one_instant_leave_one_row_per_store(
    vsim: Simulator, vclient: openai.OpenAI, tmp_path: Path
) -> None:
    a, b = _store(vclient, "a"), _store(vclient, "b")
    db = tmp_path / "s.duckdb"
    clock = vsim.world.clock
    first = StoragePoller(vclient, StoreSink(db), clock=clock.now)
    second = StoragePoller(vclient, StoreSink(db), clock=clock.now)
    for _ in range(3):
        first.poll_once()
        second.poll_once()
        clock.advance(600)
    rows = _rows(db)
    assert len(rows) == 6  # 2 stores x 3 instants, not 12
    assert {(r[0], r[1]) for r in rows} == {(s, EPOCH + k * 600) for s in (a, b) for k in range(3)}


def test_a_busy_store_spools_and_readers_and_the_next_writer_see_it(
    vsim: Simulator, vclient: openai.OpenAI, tmp_path: Path
) -> None:
    store = _store(vclient, "s")
    db = tmp_path / "s.duckdb"
    clock = vsim.world.clock
    poller = StoragePoller(vclient, StoreSink(db), clock=clock.now)
    poller.poll_once()
    # Another process (a running run writer) holds the writer role.
    fd = os.open(lock_path(db), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        clock.advance(60)
        assert poller.poll_once().outcome == "spooled"
        assert [r.observed_at for r in spooled_rows(db)] == [EPOCH + 60]
        assert len(_rows(db)) == 1  # not in the file yet
        conn = open_snapshots(db)
        try:
            seen = conn.execute("SELECT epoch(observed_at) FROM vector_store_snapshots ORDER BY 1").fetchall()
        finally:
            conn.close()
        assert seen == [(EPOCH,), (EPOCH + 60,)]
    finally:
        os.close(fd)
    clock.advance(60)
    assert poller.poll_once().outcome == "stored"
    assert [(r[0], r[1]) for r in _rows(db)] == [(store, EPOCH + k * 60) for k in range(3)]
    assert spooled_rows(db) == [] and list(snapshot_spool_dir(db).iterdir()) == []


def test_the_writer_hook_ingests_the_spool_idempotently(
    vsim: Simulator, vclient: openai.OpenAI, tmp_path: Path
) -> None:
    _store(vclient, "s")
    db = tmp_path / "s.duckdb"
    fd = os.open(lock_path(db), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        poller = StoragePoller(vclient, StoreSink(db), clock=vsim.world.clock.now)
        assert poller.poll_once().outcome == "spooled"
        spooled = spooled_rows(db)
        # What the run writer does while it holds the role.
        conn = duckdb.connect(str(db))
        try:
            migrate(conn)
            assert ingest_snapshot_spool(conn, db) == 1
            assert ingest_snapshot_spool(conn, db, spooled) == 1  # a replay after a crash: still one row
            assert ingest_snapshot_spool(conn, db) == 0
        finally:
            conn.close()
    finally:
        os.close(fd)
    assert len(_rows(db)) == 1 and spooled_rows(db) == []


def test_background_poller_polls_and_survives_a_dead_api(
    vsim: Simulator, vclient: openai.OpenAI, tmp_path: Path
) -> None:
    _store(vclient, "s")
    db = tmp_path / "s.duckdb"
    bg = start_background(StoragePoller(vclient, StoreSink(db)), interval=0.05)
    try:
        deadline = time.monotonic() + 5
        while bg.poller.polls < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        bg.stop()
    assert bg.poller.polls >= 2 and bg.errors == 0
    assert bg.last_poll_at is not None and abs(bg.last_poll_at - time.time()) < 10
    dead = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-test", max_retries=0)
    bad = start_background(StoragePoller(dead, StoreSink(db)), interval=0.05)
    try:
        deadline = time.monotonic() + 5
        while bad.errors < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        bad.stop()
        dead.close()
    assert bad.errors >= 2 and bad.last_poll_at is None
    with pytest.raises(ValueError, match="positive"):
        start_background(StoragePoller(vclient, StoreSink(db)), interval=0)


def test_a_file_that_is_not_a_runmeter_store_is_refused(vclient: openai.OpenAI, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.duckdb"
    con = duckdb.connect(str(foreign))
    con.execute("CREATE TABLE t (x INTEGER)")
    con.close()
    with pytest.raises(StoreError, match="not a runmeter store"):
        StoragePoller(vclient, StoreSink(foreign)).poll_once()
    text = tmp_path / "notes.duckdb"
    text.write_text("hello")
    with pytest.raises(StoreError, match="cannot open"):
        StoragePoller(vclient, StoreSink(text)).poll_once()
    assert text.read_text() == "hello"


def test_a_running_run_writer_ingests_the_pollers_spool(
    vsim: Simulator, vclient: openai.OpenAI, tmp_path: Path
) -> None:
    from collector.store.writer import Writer

    store = _store(vclient, "s")
    db = tmp_path / "s.duckdb"
    writer = Writer(db, flush_interval=0.05, install_signal_handlers=False)
    try:
        assert writer.flush()  # the writer now holds the role, as in `runmeter serve`
        result = StoragePoller(vclient, StoreSink(db), clock=vsim.world.clock.now).poll_once()
        assert result.outcome == "spooled"
        assert writer.flush()
    finally:
        writer.close()
    assert [(r[0], r[1], r[3]) for r in _rows(db)] == [(store, EPOCH, "completed")]
    assert spooled_rows(db) == []


def test_a_reader_in_this_process_makes_the_poller_spool_not_fail(
    vsim: Simulator, vclient: openai.OpenAI, tmp_path: Path
) -> None:
    _store(vclient, "s")
    db = tmp_path / "s.duckdb"
    poller = StoragePoller(vclient, StoreSink(db, lock_timeout=0.2), clock=vsim.world.clock.now)
    poller.poll_once()
    reader = duckdb.connect(str(db), read_only=True)
    try:
        vsim.world.clock.advance(60)
        assert poller.poll_once().outcome == "spooled"
    finally:
        reader.close()
    vsim.world.clock.advance(60)
    assert poller.poll_once().outcome == "stored"
    assert [r[1] for r in _rows(db)] == [EPOCH, EPOCH + 60, EPOCH + 120]
