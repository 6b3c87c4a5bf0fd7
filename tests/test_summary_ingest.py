"""Summary tables kept at ingest: after runs go through the real Writer in several batches (new runs,
merged updates, replaced chunks), the tables equal what ``materialize`` builds from the same rows, and the
CLI answers the same with them as from the raw rows."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pytest

from analysis import fit
from analysis import summary_tables as st
from collector.cli import main
from collector.record import Api, ChunkRecord, RunRecord
from collector.store import summary_hook
from collector.store.migrations import migrate
from collector.store.writer import METRIC_COUNTS, SUMMARY_TABLES, IngestHook, Writer

T0 = 1_764_000_000.0
DAY = 86_400.0
MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1-mini", "no-such-model", None)


def _chunks(rng: random.Random, call: str, n: int, *, tokens: bool = True) -> list[ChunkRecord]:
    score = rng.uniform(0.7, 0.99)
    out = []
    for rank in range(1, n + 1):
        score -= rng.uniform(0.0, 0.05)
        cited = rng.random() < 0.3
        out.append(ChunkRecord(call_id=call, rank=rank, file_id=f"file-{rng.randint(1, 9)}",
                               score=max(score, 0.001) if rng.random() > 0.05 else None,
                               content_tokens=(rng.randint(100, 900) if tokens and rng.random() > 0.1
                                               else None),
                               cited=cited, cited_by="result" if cited else None))
    return out


def _run(rng: random.Random, i: int, **over: Any) -> RunRecord:
    api: Api = rng.choice(("assistants", "responses", "chat"))
    calls = rng.choice((0, 0, 1, 1, 2)) if api != "chat" else 0
    chunks: list[ChunkRecord] = []
    if calls and not (api == "responses" and rng.random() < 0.3):  # some responses runs without results
        for c in range(calls):
            chunks += _chunks(rng, f"call_{i}_{c}", rng.randint(1, 12), tokens=rng.random() > 0.2)
    inp = rng.randint(500, 20_000)
    cached = rng.choice((0, 0, 256, 1024))
    r = RunRecord(
        run_id=f"run_{i:05d}", api=api, model=rng.choice(MODELS), status="completed",
        thread_id=f"thread_{rng.randint(0, 40)}" if api == "assistants" else None,
        started_at=T0 + rng.uniform(0, 6 * DAY) + rng.random() / 7, input_tokens=inp,
        cached_input_tokens=cached, cache_write_tokens=rng.choice((None, 0, 100)),
        output_tokens=rng.randint(10, 900), file_search_calls=calls or None,
        retrieved_chunks=len(chunks) if chunks else None,
        max_num_results=rng.choice((None, 5, 10, 20)) if calls else None,
        score_threshold=rng.choice((None, 0.0, 0.3)) if calls else None,
        service_tier=rng.choice((None, "default", "flex", "priority", "")), streams=1,
        tags={"customer": rng.choice(("acme", "globex", "initech")), **({"feature": "x"} if i % 4 else {})},
        chunks=chunks, model_steps=rng.randint(1, 4) if api == "assistants" else None,
    )
    for key, value in over.items():
        setattr(r, key, value)
    return r


def _odd_runs(rng: random.Random) -> list[RunRecord]:
    """Usage problems, a response chain, and an earlier turn of a thread arriving after later ones."""
    return [
        _run(rng, 90_001, input_tokens=None, output_tokens=None, status="failed"),
        _run(rng, 90_002, output_tokens=None),
        _run(rng, 90_003, input_tokens=-5),
        _run(rng, 90_004, input_tokens=100, cached_input_tokens=200),
        _run(rng, 90_005, api="responses", thread_id="run_90006", model="gpt-4o"),
        _run(rng, 90_006, api="responses", thread_id=None, model="gpt-4o"),
        _run(rng, 90_007, api="assistants", thread_id="thread_7", started_at=T0 - DAY),
    ]


def _batches(seed: int) -> list[list[RunRecord]]:
    """Four batches: new runs, then observations that merge with stored runs (and with each other)."""
    rng = random.Random(seed)
    first = [_run(rng, i) for i in range(0, 150)]
    interrupted = _run(rng, 80_001, api="assistants", status="interrupted", input_tokens=None,
                       output_tokens=None, chunks=_chunks(rng, "call_i", 3), file_search_calls=1,
                       retrieved_chunks=3, thread_id="thread_3", model_steps=None)
    tool_first = _run(rng, 80_002, api="assistants", status="requires_action", input_tokens=900,
                      output_tokens=20, chunks=_chunks(rng, "call_t1", 4), file_search_calls=1,
                      retrieved_chunks=4, thread_id="thread_5", model_steps=1, streams=1)
    first += [interrupted, tool_first]
    second = [_run(rng, i) for i in range(150, 260)] + _odd_runs(rng)
    # the interrupted run completes (usage, more chunks); the tool-call run's second stream
    completed = _run(rng, 80_001, api="assistants", status="completed", input_tokens=8000, output_tokens=300,
                     chunks=_chunks(rng, "call_i", 6), file_search_calls=1, retrieved_chunks=6,
                     thread_id="thread_3", model_steps=3)
    completed.started_at = (interrupted.started_at or T0) + 2.0
    tool_second = _run(rng, 80_002, api="assistants", status="completed", input_tokens=2400,
                       output_tokens=200, chunks=[], file_search_calls=None, retrieved_chunks=None,
                       thread_id="thread_5", model_steps=2, streams=1)
    third = [completed, tool_second] + [_run(rng, i) for i in range(260, 320)]
    # replaced chunks and changed usage for stored runs, a run observed twice in one batch, new runs
    fourth = []
    for i in (3, 10, 17, 151, 152):
        again = _run(random.Random(i), i)
        again.api = first[i].api if i < 150 else second[i - 150].api
        again.chunks = _chunks(rng, f"call_{i}_0", rng.randint(1, 8)) if again.api != "chat" else []
        again.file_search_calls = 1 if again.chunks else None
        again.retrieved_chunks = len(again.chunks) or None
        fourth.append(again)
    fourth += [_run(rng, i) for i in range(320, 400)] + [_run(rng, 399, status="incomplete")]
    return [first, second, third, fourth]


def _write(path: Path, batches: Sequence[Sequence[RunRecord]], hooks: Sequence[IngestHook],
           after_batch: Callable[[], object] = lambda: None) -> Writer:
    w = Writer(path, flush_interval=60.0, install_signal_handlers=False, ingest_hooks=hooks)
    for batch in batches:
        for r in batch:
            w.submit(r)
        assert w.flush(30.0)
        after_batch()
    w.close()
    assert w.errors == 0 and w.written == sum(map(len, batches))
    return w


def _rows(con: duckdb.DuckDBPyConnection, name: str) -> list[tuple[Any, ...]]:
    return sorted((tuple(r) for r in con.execute(f"SELECT * FROM {name}").fetchall()), key=repr)


def _snapshot(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    return {n: (st.columns(con, n), _rows(con, n)) for n in st.ALL}


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("summary") / "store.duckdb"
    _write(path, _batches(7), (METRIC_COUNTS, SUMMARY_TABLES))
    yield path


def test_ingest_maintained_tables_equal_a_rebuild(ingested: Path) -> None:
    with duckdb.connect(str(ingested)) as con:
        assert st.fresh(con, st.ALL)
        kept = _snapshot(con)
        # the merged runs really merged: one row each, completed, with the second observation's chunks
        assert con.execute("SELECT status, input_tokens, retrieved_chunks FROM runs "
                           "WHERE run_id = 'run_80001'").fetchall() == [("completed", 8000, 6)]
        assert con.execute("SELECT count(*) FROM retrieved_chunks WHERE run_id = 'run_80001'"
                           ).fetchall()[0][0] == 6
        assert con.execute("SELECT status FROM runs WHERE run_id = 'run_80002'"
                           ).fetchall() == [("completed",)]
        st.materialize_all(con)
        rebuilt = _snapshot(con)
        meta = con.execute(f"SELECT name, runs, chunks FROM {st.META} ORDER BY name").fetchall()
        counts = con.execute("SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM retrieved_chunks)"
                             ).fetchall()[0]
    for name in st.ALL:
        assert kept[name] == rebuilt[name], name
    assert {n: (r, c) for n, r, c in meta if n in st.ALL} == {n: counts for n in st.ALL}
    assert counts[0] == 400 + 2 + 7 and counts[1] > 500
    # every kind of row is there: problems, virtual results, thread continuations, several days
    problems = {r[5] for r in kept[st.USAGE][1]}
    assert len(problems - {None}) == 4
    later = [r for r in kept[st.FIT_SAMPLE][1] if r[-1]]
    assert len(later) > 20


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(list(args)) == 0
    return capsys.readouterr().out


def test_cli_answers_the_same_with_and_without_the_tables(ingested: Path, capsys: pytest.CaptureFixture[str],
                                                          tmp_path: Path) -> None:
    queries = [("cost", "--db", str(ingested)), ("cost", "--db", str(ingested), "--by", "tag:customer,day"),
               ("whatif", "--db", str(ingested), "--json", "--score-threshold", "0.3,0.5,0.8"),
               ("whatif", "--db", str(ingested), "--json", "--details", "--n", "1-25")]
    with duckdb.connect(str(ingested), read_only=True) as con:
        assert st.fresh(con, st.ALL)
    kept = [_cli(capsys, *q) for q in queries]
    with duckdb.connect(str(ingested)) as con:
        con.execute(f"UPDATE {st.META} SET runs = runs - 1")  # stale: analyses read the raw rows
    try:
        raw = [_cli(capsys, *q) for q in queries]
    finally:
        with duckdb.connect(str(ingested)) as con:
            con.execute(f"UPDATE {st.META} SET runs = runs + 1")
    assert kept == raw
    report = json.loads(kept[3])
    assert report["baseline"]["runs"] > 300 and len(report["rows"]) == 25
    assert any(r["score_mass_kept"] not in (None, 1.0) for r in json.loads(kept[2]))


def test_fit_sample_modulus_changes_and_thread_turns_are_kept_exact(tmp_path: Path) -> None:
    """A small sample size makes the sample hashed, its modulus change between batches (rebuild) and
    stay between others (incremental), with thread-mates of sampled runs arriving later."""
    sample = 120
    hook = IngestHook(lambda _db: False, lambda _c, _d: None,
                      lambda conn, pairs: summary_hook.maintain(conn, pairs, sample=sample))
    path = tmp_path / "s.duckdb"
    moduli: list[int] = []

    def modulus() -> None:
        with duckdb.connect(str(path), read_only=True) as con:
            n = con.execute("SELECT count(*) FROM runs "
                            "WHERE input_tokens IS NOT NULL AND status = 'completed'").fetchall()[0][0]
        moduli.append(summary_hook.sample_modulus(n, sample))

    _write(path, _batches(11), (hook,), modulus)
    steps = list(itertools.pairwise(moduli))
    assert any(a == b != 0 for a, b in steps) and any(a != b for a, b in steps), moduli
    with duckdb.connect(str(path)) as con:
        assert st.fresh(con, st.ALL)
        kept = _rows(con, st.FIT_SAMPLE)
        want = sorted((tuple(r) for r in con.execute(fit.summaries(con, sample)[fit.FIT_SUMMARY]).fetchall()),
                      key=repr)
        for name in st.ALL:
            if name != st.FIT_SAMPLE:
                rows = _rows(con, name)
                st.materialize(con, {name: f"SELECT * FROM {name}"})  # same rows back: sanity of _rows
                assert _rows(con, name) == rows
    assert kept == want and 0 < len(kept) < 400


def test_hook_leaves_stale_tables_alone(tmp_path: Path) -> None:
    path = tmp_path / "stale.duckdb"
    with duckdb.connect(str(path)) as con:
        migrate(con, str(path))
        assert st.fresh(con, st.ALL)
        con.execute("INSERT INTO runs (run_id, api, status) VALUES ('outside', 'chat', 'completed')")
        assert not st.fresh(con, st.ALL)
    _write(path, _batches(3)[:1], (SUMMARY_TABLES,))
    with duckdb.connect(str(path)) as con:
        assert not st.fresh(con, st.ALL)
        assert con.execute(f"SELECT count(*) FROM {st.USAGE}").fetchall()[0][0] == 0
        st.materialize_all(con)
        assert st.fresh(con, st.ALL)
        assert con.execute(f"SELECT sum(runs) FROM {st.USAGE}").fetchall()[0][0] == 153


def test_migration_backfills_an_existing_store(tmp_path: Path) -> None:
    """A store written before the summary migration gets its tables built by the migration itself."""
    from collector.store import migrations

    path = tmp_path / "old.duckdb"
    saved = list(migrations.MIGRATIONS)
    migrations.MIGRATIONS[:] = [m for m in saved if m.__name__ != "m003_summary_tables"]
    try:
        _write(path, _batches(5)[:2], (SUMMARY_TABLES,))  # no summary tables yet: the hook does nothing
    finally:
        migrations.MIGRATIONS[:] = saved
    with duckdb.connect(str(path)) as con:
        assert not st.fresh(con, st.ALL)
        assert migrate(con, str(path)) == ["m003_summary_tables"]
        assert st.fresh(con, st.ALL)
        runs = con.execute("SELECT count(*) FROM runs").fetchall()[0][0]
        assert con.execute(f"SELECT sum(runs) FROM {st.USAGE}").fetchall()[0][0] == runs > 250


def test_over_rewrites_only_table_references() -> None:
    sql = ("SELECT run_id FROM runs r JOIN retrieved_chunks c USING (run_id) "
           "WHERE r.runs_x IN (SELECT 1 FROM runs)")
    assert summary_hook.over(sql, "A", "B") == (
        "SELECT run_id FROM A r JOIN B c USING (run_id) WHERE r.runs_x IN (SELECT 1 FROM A)")


def test_effective_chunks_follow_the_writer() -> None:
    old = [ChunkRecord("c", 1, "f", 0.5), ChunkRecord("c", 2, "f", 0.4)]
    new = [ChunkRecord("c", 1, "f", 0.9), ChunkRecord("d", 1, "f", 0.3), ChunkRecord("c", 1, "g", 0.8)]
    before = RunRecord(run_id="r", api="assistants", chunks=old)
    assert summary_hook.effective_chunks(before, RunRecord(run_id="r", api="assistants")) == old
    got = summary_hook.effective_chunks(before, RunRecord(run_id="r", api="assistants", chunks=new))
    assert [(c.call_id, c.rank, c.file_id) for c in got] == [("c", 1, "g"), ("d", 1, "f")]
    frames = summary_hook.BatchFrames.of([(before, RunRecord(run_id="r", api="assistants", chunks=new)),
                                          (None, RunRecord(run_id="s", api="chat", status="completed",
                                                           input_tokens=5))])
    assert (frames.new_runs, frames.chunk_delta, frames.fit_delta) == (1, 0, 1)
    assert frames.after_chunks.num_rows == 2 and frames.before_chunks.num_rows == 2


def test_a_failing_summary_batch_costs_the_writer_nothing(tmp_path: Path) -> None:
    """An error in the summaries' SQL (a score whose bin overflows INTEGER) is the hook's alone: the runs
    are written, the error counted, and the summaries left stale for the raw rows to answer."""
    path = tmp_path / "bad.duckdb"
    rng = random.Random(2)
    bad = _run(rng, 50, api="assistants", chunks=[ChunkRecord("c", 1, "f", 1e12, 10)], file_search_calls=1,
               retrieved_chunks=1)
    w = Writer(path, flush_interval=60.0, install_signal_handlers=False, ingest_hooks=(SUMMARY_TABLES,))
    for r in [_run(rng, i) for i in range(20)]:
        w.submit(r)
    assert w.flush(30.0) and w.errors == 0
    for r in [bad, *(_run(rng, i) for i in range(20, 30))]:
        w.submit(r)
    assert w.flush(30.0)
    w.close()
    assert w.errors == 1 and w.written == 31
    with duckdb.connect(str(path)) as con:
        assert con.execute("SELECT count(*) FROM runs").fetchall()[0][0] == 31
        assert con.execute("SELECT count(*) FROM retrieved_chunks WHERE run_id = 'run_00050'"
                           ).fetchall()[0][0] == 1
        assert not st.fresh(con, st.ALL)
        assert con.execute(f"SELECT sum(runs) FROM {st.USAGE}").fetchall()[0][0] == 20
