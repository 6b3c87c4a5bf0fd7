"""The max_num_results what-if with runs whose file_search returned no results.

A run whose calls carried their results and held none (``retrieved_chunks`` 0) is known: a lower N drops
nothing from it and a higher N adds nothing, so it is neither affected, nor "recorded without results", nor
saturated. Stores go through the real Writer (merges, the summary hook); the counts below are worked out by
hand from the runs. The run histogram's SQL changed for this, so a store whose summary was kept with the old
SQL is rebuilt by migration m004; ingest after it keeps the summaries equal to a full rebuild.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pytest

from analysis import summary_tables as st
from analysis import totals, whatif
from analysis.fit import BillingFit
from analysis.prices import load_price_table
from analysis.whatif import Baseline, WhatIfReport
from collector.record import Api, ChunkRecord, RunRecord
from collector.store import migrations
from collector.store.migrations import applied_migrations, migrate
from collector.store.writer import METRIC_COUNTS, SUMMARY_TABLES, Writer
from collector.taps.base import Calls, set_calls

T0 = 1_764_000_000.0

# The histogram's SQL before this change, verbatim: the keys stores written by earlier versions hold.
OLD_RUNS_SQL = """
SELECT r.api, r.setting, r.thr, r.calls,
       (r.calls > 0 AND p.run_id IS NULL) AS unobserved,
       coalesce(p.max_rank >= r.setting, r.calls > 0) AS saturated,
       p.max_rank, p.min_cited_rank, p.min_bin, p.max_cited_bin,
       count(*)::BIGINT AS runs
FROM _wi_runs r LEFT JOIN _wi_per_run p USING (run_id)
GROUP BY ALL
"""

FITS = {api: BillingFit(api=api, runs=100, search_runs=80, repeat_source="hidden", per_token=1.0,
                        per_known_result=38.0, per_unknown_result=338.0, per_call=300.0, intercept=250.0,
                        per_step=None, mape_holdout=None, folds=0)
        for api in ("assistants", "responses")}


def _chunks(call: str, n: int, *, cited_rank: int | None = None) -> list[ChunkRecord]:
    return [ChunkRecord(call_id=call, rank=k, file_id=f"file-{k}", score=0.95 - k * 0.02, content_tokens=200,
                        cited=k == cited_rank, cited_by="result" if k == cited_rank else None)
            for k in range(1, n + 1)]


def _run(run_id: str, calls: Calls | None, *, api: Api = "responses", n: int | None = 10,
         thr: float | None = 0.5, status: str = "completed", input_tokens: int = 3000, at: float = 0.0,
         steps: int | None = None) -> RunRecord:
    """A run with usage; ``calls``: call id -> its results (``[]``: none came back, ``None``: not
    recorded), set as a tap sets them so that merging works as on the wire."""
    r = RunRecord(run_id=run_id, api=api, model="gpt-4o", status=status, started_at=T0 + at,
                  input_tokens=input_tokens, output_tokens=100, max_num_results=n if calls else None,
                  score_threshold=thr if calls else None, model_steps=steps, streams=1)
    if calls is not None:
        set_calls(r, calls, count_known=True)
    return r


def _mixed() -> list[RunRecord]:
    """F: results found; Z: searched, none came back; U: results not recorded; C: no file_search."""
    found = [
        _run("F1", {"f1": _chunks("f1", 10, cited_rank=2)}),
        _run("F2", {"f2": _chunks("f2", 10)}),
        _run("F3", {"f3": _chunks("f3", 5, cited_rank=5)}),
        _run("F4", {"f4": _chunks("f4", 5)}),
        _run("F5", {"f5": _chunks("f5", 2, cited_rank=1)}),
        _run("F6", {"f6a": _chunks("f6a", 3), "f6b": _chunks("f6b", 1)}, api="assistants", steps=2),
        # one call's results recorded, the other's not: its chunk rows make it observed
        _run("M", {"ma": _chunks("ma", 2), "mb": None}),
    ]
    zero = [_run(f"Z{i}", {f"z{i}": []}) for i in range(1, 5)] + [
        _run("Z5", {"z5": []}, n=None, thr=None),  # default setting 20, threshold 0
        _run("Z6", {"z6a": [], "z6b": []}, api="assistants", steps=3),
    ]
    unrecorded = [_run(f"U{i}", {f"u{i}": None}) for i in range(1, 4)] + [_run("U4", {"u4": None}, n=None)]
    chat = [_run("C1", None, api="chat"), _run("C2", None, api="chat")]
    runs = found + zero + unrecorded + chat
    for i, r in enumerate(runs):
        r.started_at = T0 + i * 600.0
    return runs


def _write(path: Path, batches: Sequence[Sequence[RunRecord]]) -> None:
    w = Writer(path, flush_interval=60.0, install_signal_handlers=False,
               ingest_hooks=(METRIC_COUNTS, SUMMARY_TABLES))
    for batch in batches:
        for r in batch:
            w.submit(r)
        assert w.flush(30.0)
    w.close()
    assert w.errors == 0 and w.written == sum(map(len, batches))


def _report(con: duckdb.DuckDBPyConnection, **kw: Any) -> WhatIfReport:
    return whatif.whatif(con, load_price_table(), fits=FITS, **kw)


def _by_n(report: WhatIfReport) -> dict[int | None, tuple[int, int]]:
    return {r.max_num_results: (r.runs_affected, r.runs_unknown) for r in report.rows
            if r.max_num_results is not None}


@contextmanager
def _old_code(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """What runmeter was before: the old histogram SQL, and no m004 to apply."""
    with monkeypatch.context() as m:
        m.setitem(whatif.SUMMARIES, whatif.RUNS_SUMMARY, OLD_RUNS_SQL)
        m.setattr(migrations, "MIGRATIONS", [fn for fn in migrations.MIGRATIONS
                                             if fn.__name__ != whatif.RUNS_SUMMARY_MIGRATION])
        yield


@pytest.fixture(scope="module")
def mixed_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("zero") / "store.duckdb"
    _write(path, [_mixed()])
    return path


def test_zero_result_runs_are_known_not_affected_nor_saturated(mixed_store: Path) -> None:
    with duckdb.connect(str(mixed_store), read_only=True) as con:
        assert st.fresh(con, st.ALL) and st.migrated(con, whatif.RUNS_SUMMARY_MIGRATION)
        assert con.execute("SELECT run_id, retrieved_chunks, file_search_calls FROM runs "
                           "WHERE run_id IN ('Z1', 'Z6', 'U1', 'M') ORDER BY run_id").fetchall() == [
            ("M", None, 2), ("U1", None, 1), ("Z1", 0, 1), ("Z6", 0, 2)]
        report = _report(con, max_num_results=[3, 7, 10, 15, 25], score_thresholds=[0.3])
    rows = {r.max_num_results: r for r in report.rows}
    # (affected, unknown) by hand: setting 10 unless said; F max ranks 10,10,5,5,2,3, M 2;
    # U1-U3 at 10, U4 at 20
    # N=3:  ranks 10,10,5,5 above 3, U1-U4 (settings above 3) -> 8; nothing saturated below 3
    # N=7:  ranks 10,10, U1-U4 -> 6
    # N=10: U4 (setting 20) -> 1
    # N=15: U4 -> 1 affected; saturated with setting < 15: F1, F2, U1-U3 -> 5 unknown
    # N=25: none affected; saturated F1, F2, U1-U4 -> 6 unknown
    assert _by_n(report) == {3: (8, 0), 7: (6, 0), 10: (1, 0), 15: (1, 5), 25: (0, 6)}
    assert rows[3].notes == ("4 affected run(s) were recorded without results: citations unknown",)
    assert rows[15].bound == "lower" and rows[10].bound == "exact"
    assert report.baseline.runs == 19 and report.baseline.file_search_runs == 17
    assert report.baseline.current_max_num_results == 20
    # a lower threshold (0.3 < 0.5) could add results to unsaturated runs: F3-F6, M and Z1-Z4, Z6 (Z5 used 0)
    t = next(r for r in report.rows if r.score_threshold == 0.3)
    assert (t.runs_affected, t.runs_unknown) == (0, 10)
    assert t.notes[0].startswith("4 run(s) were recorded without results")
    # lose_all_cited at N=3: of F1, F3, F5 (the runs that cited), F3 cited only rank 5
    assert rows[3].lose_all_cited_share == pytest.approx(1 / 3)


def test_old_sql_miscounted_them_and_dollars_do_not_change(mixed_store: Path, monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    with duckdb.connect(str(mixed_store), read_only=True) as con:
        new = _report(con, max_num_results=[3, 15, 25])
        with monkeypatch.context() as m:
            m.setitem(whatif.SUMMARIES, whatif.RUNS_SUMMARY, OLD_RUNS_SQL)
            m.setattr(whatif, "RUNS_SUMMARY_MIGRATION", "m999_never")  # the raw rows, through the old SQL
            old = _report(con, max_num_results=[3, 15, 25])
    # the bug: Z1-Z6 counted affected at N=3 (and Z5, setting 20, at 15), saturated below 15 and 25
    assert _by_n(old) == {3: (14, 0), 15: (2, 10), 25: (0, 12)}
    assert _by_n(new) == {3: (8, 0), 15: (1, 5), 25: (0, 6)}
    for a, b in zip(new.rows, old.rows, strict=True):
        assert (a.input_tokens_per_run, a.cost_per_1k_runs_usd, a.cost_per_month_usd, a.citation_recall) == (
            b.input_tokens_per_run, b.cost_per_1k_runs_usd, b.cost_per_month_usd, b.citation_recall)
    assert new.rows[0].input_tokens_saved_per_run is not None and new.rows[0].input_tokens_saved_per_run > 0


def test_summary_and_raw_rows_answer_the_same(mixed_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with duckdb.connect(str(mixed_store), read_only=True) as con:
        kept = _report(con, max_num_results=list(range(1, 26)), score_thresholds=[0.3, 0.8]).to_json()
        monkeypatch.setattr(whatif, "RUNS_SUMMARY_MIGRATION", "m999_never")
        raw = _report(con, max_num_results=list(range(1, 26)), score_thresholds=[0.3, 0.8]).to_json()
    assert kept == raw


def test_cost_per_1k_runs_is_one_formula() -> None:
    b = Baseline(runs=8, priced_runs=4, input_tokens=8000.0, cost_usd=0.5, runs_per_day=8.0, window_days=1.0,
                 current_max_num_results=10, file_search_runs=6, runs_with_citations=2)
    assert b.cost_per_1k_runs() == 125.0 and b.cost_per_1k_runs(0.1) == pytest.approx(100.0)
    assert totals.baseline_cost_per_1k_runs(b) == 125.0
    none = Baseline(runs=3, priced_runs=0, input_tokens=10.0, cost_usd=0.0, runs_per_day=3.0, window_days=1.0,
                    current_max_num_results=None, file_search_runs=0, runs_with_citations=0)
    assert none.cost_per_1k_runs() is None and totals.baseline_cost_per_1k_runs(none) is None


def test_cost_per_1k_rows_use_the_baseline_formula(mixed_store: Path) -> None:
    with duckdb.connect(str(mixed_store), read_only=True) as con:
        report = _report(con, max_num_results=[3, 20])
    b = report.baseline
    at20 = report.rows[1]
    assert at20.input_tokens_saved_per_run == 0.0
    now = totals.baseline_cost_per_1k_runs(b)
    assert at20.cost_per_1k_runs_usd == now == b.cost_usd / b.priced_runs * 1000
    at3 = report.rows[0]
    assert at3.cost_per_1k_runs_usd is not None and at3.cost_per_month_usd is not None
    assert at3.cost_per_1k_runs_usd < at20.cost_per_1k_runs_usd
    assert at3.cost_per_month_usd == pytest.approx(at3.cost_per_1k_runs_usd / 1000 * b.runs_per_day * 30)


# ------------------------------------------------------------------------------- migration of old stores


def _interrupted() -> list[RunRecord]:
    """X searched and found nothing before its stream broke; Y's results were not recorded."""
    return [_run("X", {"cx": []}, api="assistants", status="interrupted", input_tokens=900, at=20_000,
                 steps=1),
            _run("Y", {"cy": None}, status="interrupted", input_tokens=700, at=20_100)]


def _later() -> list[RunRecord]:
    """New runs (one found, one zero) and Z1 observed again (a second stream, the same empty call)."""
    again = _run("Z1", {"z1": []}, at=0.0)
    again.started_at = None
    return [_run("F7", {"f7": _chunks("f7", 10)}, at=21_000), _run("Z7", {"z7": []}, at=21_100), again]


def _upgrades() -> list[RunRecord]:
    """X completes with 4 results in the same call, Y completes with none; a new unrecorded run."""
    return [_run("X", {"cx": _chunks("cx", 4)}, api="assistants", input_tokens=5000, at=20_005, steps=3),
            _run("Y", {"cy": []}, input_tokens=2100, at=20_105),
            _run("U5", {"u5": None}, at=22_000)]


def _rows(con: duckdb.DuckDBPyConnection, name: str) -> list[tuple[Any, ...]]:
    return sorted((tuple(r) for r in con.execute(f"SELECT * FROM {name}").fetchall()), key=repr)


def _snapshot(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    meta = dict((n, (r, c)) for n, r, c in con.execute(f"SELECT * FROM {st.META}").fetchall())
    return {n: (st.columns(con, n), _rows(con, n), meta.get(n)) for n in st.ALL}


def _rebuilt(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """The summaries a full rebuild from the raw tables gives (rolled back: the store is left as it was)."""
    con.execute("BEGIN TRANSACTION")
    try:
        st.materialize_all(con)
        return _snapshot(con)
    finally:
        con.execute("ROLLBACK")


def _unobserved_runs(con: duckdb.DuckDBPyConnection) -> int:
    return int(con.execute(f"SELECT coalesce(sum(runs), 0) FROM {st.WHATIF_RUNS} WHERE unobserved"
                           ).fetchall()[0][0])


@pytest.fixture(scope="module")
def old_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store written by the old code (old histogram SQL kept at ingest, migrations up to m003)."""
    path = tmp_path_factory.mktemp("old") / "store.duckdb"
    with pytest.MonkeyPatch.context() as m, _old_code(m):
        _write(path, [_mixed() + _interrupted(), _later()])
    return path


def _copy(src: Path, dst: Path) -> Path:
    shutil.copy(src, dst)
    return dst


def test_old_store_is_migrated_to_a_rebuild(old_store: Path, tmp_path: Path) -> None:
    path = _copy(old_store, tmp_path / "s.duckdb")
    with duckdb.connect(str(path)) as con:
        assert applied_migrations(con) == ["m001_initial", "m002_metric_aggregates", "m003_summary_tables"]
        assert st.fresh(con, st.ALL)
        # the old keys: U1-U4, Y, and the zero-result runs Z1-Z7, X held as recorded without results
        assert _unobserved_runs(con) == 13
        before = _snapshot(con)
        want = _rebuilt(con)
        assert before[st.WHATIF_RUNS] != want[st.WHATIF_RUNS]
        assert {n: v for n, v in before.items() if n != st.WHATIF_RUNS} == {
            n: v for n, v in want.items() if n != st.WHATIF_RUNS}  # only the histogram's SQL changed
        # new code reading the old store: its histogram is not trusted, the raw rows answer
        # N=3: ranks 10 (F1, F2, F7) and 5 (F3, F4), U1-U4 and Y -> 10 (the old summary said 18)
        assert _by_n(_report(con, max_num_results=[3])) == {3: (10, 0)}
        assert migrate(con, str(path)) == [whatif.RUNS_SUMMARY_MIGRATION]
        assert _snapshot(con) == want and _unobserved_runs(con) == 5
        assert st.fresh(con, st.ALL) and st.migrated(con, whatif.RUNS_SUMMARY_MIGRATION)
        assert _by_n(_report(con, max_num_results=[3])) == {3: (10, 0)}  # now from the summary


def test_ingest_after_the_migration_keeps_the_summaries_exact(old_store: Path, tmp_path: Path) -> None:
    path = _copy(old_store, tmp_path / "s.duckdb")
    _write(path, [_upgrades()])  # the new Writer migrates, then its hook replaces X and Y
    with duckdb.connect(str(path)) as con:
        assert applied_migrations(con)[-1] == whatif.RUNS_SUMMARY_MIGRATION
        assert con.execute("SELECT run_id, status, retrieved_chunks FROM runs WHERE run_id IN ('X', 'Y') "
                           "ORDER BY run_id").fetchall() == [("X", "completed", 4), ("Y", "completed", 0)]
        assert st.fresh(con, st.ALL)
        assert _snapshot(con) == _rebuilt(con)
        # N=3: F1, F2, F7, F3, F4, X (rank 4), U1-U5 -> 11; Y now found nothing: not affected
        assert _by_n(_report(con, max_num_results=[3])) == {3: (11, 0)}


def test_without_the_migration_ingest_would_corrupt_the_histogram(old_store: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Why m004 exists: new SQL maintaining rows kept under the old keys drifts from a rebuild."""
    path = _copy(old_store, tmp_path / "s.duckdb")
    monkeypatch.setattr(migrations, "MIGRATIONS", [fn for fn in migrations.MIGRATIONS
                                                   if fn.__name__ != whatif.RUNS_SUMMARY_MIGRATION])
    _write(path, [_upgrades()])
    with duckdb.connect(str(path)) as con:
        assert st.fresh(con, st.ALL)
        assert _snapshot(con)[st.WHATIF_RUNS] != _rebuilt(con)[st.WHATIF_RUNS]
