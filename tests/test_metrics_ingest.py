"""Counting at ingest: the store's writer adds each run's difference to the aggregate tables."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from analysis.cost import price_record
from analysis.prices import builtin_price_table
from collector.metrics import families as fam
from collector.metrics.contributions import Labeller
from collector.metrics.ingest import load_aggregates
from collector.record import RunRecord
from collector.store.writer import Writer

T0 = 1_764_000_000.0
PRICES = builtin_price_table()


def _run(run_id: str, **kw: object) -> RunRecord:
    base: dict[str, object] = {"api": "responses", "model": "gpt-4o-mini-2024-07-18", "status": "completed",
                               "started_at": T0, "streams": 1}
    base.update(kw)
    return RunRecord(run_id=run_id, **base)  # type: ignore[arg-type]


def _write(db: Path, *batches: list[RunRecord]) -> None:
    """Each batch is one ingest transaction of a writer holding the role."""
    with Writer(db, flush_interval=60, install_signal_handlers=False) as w:
        for batch in batches:
            for r in batch:
                w.submit(r)
            assert w.flush()
        assert w.errors == 0


def _counters(db: Path) -> dict[tuple[str, tuple[str, ...]], float]:
    with duckdb.connect(str(db), read_only=True) as conn:
        return load_aggregates(conn).counters


def test_a_completed_run_counts_its_status_tokens_cost_and_retrieval(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    run = _run("resp_1", input_tokens=1000, cached_input_tokens=200, output_tokens=300, reasoning_tokens=50,
               file_search_calls=2, retrieved_chunks=7, ttft_seconds=0.3, duration_seconds=2.5)
    _write(db, [run])
    c = _counters(db)
    am = ("responses", "gpt-4o-mini")  # the snapshot name folds into its price-table entry
    assert c[("runmeter_runs_total", (*am, "completed"))] == 1
    assert c[("runmeter_tokens_total", (*am, "input"))] == 800  # uncached only
    assert c[("runmeter_tokens_total", (*am, "cached_input"))] == 200
    assert c[("runmeter_tokens_total", (*am, "output"))] == 300
    assert c[("runmeter_tokens_total", (*am, "reasoning"))] == 50
    cost = price_record(PRICES, run)
    assert c[("runmeter_cost_usd_total", (*am, "file_search_calls"))] == pytest.approx(0.005)
    for meter in ("input", "cached_input", "output"):
        assert c[("runmeter_cost_usd_total", (*am, meter))] == pytest.approx(float(cost.meters[meter]))
    assert c[("runmeter_file_search_calls_total", am)] == 2
    assert c[("runmeter_retrieved_chunks_total", am)] == 7
    assert ("runmeter_unpriced_runs_total", am) not in c
    with duckdb.connect(str(db), read_only=True) as conn:
        agg = load_aggregates(conn)
    ttft = agg.histograms[("runmeter_time_to_first_token_seconds", am)]
    assert sum(ttft.counts) == 1 and ttft.sum == pytest.approx(0.3)
    assert ttft.counts[fam.LATENCY_BUCKETS.index(0.32)] == 1  # 0.3 s lands in the (0.16, 0.32] bucket
    chunks = agg.histograms[("runmeter_retrieved_chunks_per_run", am)]
    assert chunks.counts[fam.CHUNK_BUCKETS.index(8)] == 1


def test_an_interrupted_run_completed_later_adds_only_the_difference(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    broken = _run("run_1", api="assistants", model="gpt-4o", status="interrupted", ttft_seconds=0.4,
                  duration_seconds=1.0)
    final = _run("run_1", api="assistants", model="gpt-4o", status="completed", input_tokens=500,
                 output_tokens=100, duration_seconds=3.0, streams=0)
    _write(db, [broken], [final], [final])  # the final state read twice adds nothing the second time
    c = _counters(db)
    am = ("assistants", "gpt-4o")
    assert c[("runmeter_runs_total", (*am, "interrupted"))] == 1
    assert c[("runmeter_runs_total", (*am, "completed"))] == 1  # counters never go down
    assert c[("runmeter_tokens_total", (*am, "input"))] == 500
    assert c[("runmeter_tokens_total", (*am, "output"))] == 100
    with duckdb.connect(str(db), read_only=True) as conn:
        agg = load_aggregates(conn)
        stored = conn.execute("SELECT input_tokens, status FROM runs").fetchall()
    assert stored == [(500, "completed")]
    # Duration is observed once, when the run first settled.
    assert sum(agg.histograms[("runmeter_run_duration_seconds", am)].counts) == 1


def test_two_streams_of_a_tool_call_run_do_not_double_count(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    first = _run("run_t", api="assistants", model="gpt-4o", status="requires_action", input_tokens=400,
                 output_tokens=20, duration_seconds=1.0)
    first.extra["run_usage"] = True
    second = _run("run_t", api="assistants", model="gpt-4o", status="completed", input_tokens=900,
                  output_tokens=120, duration_seconds=1.5, started_at=T0 + 5)
    second.extra["run_usage"] = True  # run-level usage: the whole run so far, not the stream's share
    _write(db, [first], [second])
    c = _counters(db)
    am = ("assistants", "gpt-4o")
    # one run, counted when it settled: requires_action is a pause for tool outputs, not an outcome
    assert {k[1][2]: v for k, v in c.items() if k[0] == "runmeter_runs_total"} == {"completed": 1}
    assert c[("runmeter_tokens_total", (*am, "input"))] == 900
    assert c[("runmeter_tokens_total", (*am, "output"))] == 120
    with duckdb.connect(str(db), read_only=True) as conn:
        agg = load_aggregates(conn)
    duration = agg.histograms[("runmeter_run_duration_seconds", am)]
    assert sum(duration.counts) == 1 and duration.sum == pytest.approx(2.5)  # both streams' time


def test_same_batch_observations_fold_before_counting(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    _write(db, [_run("r", status="interrupted"), _run("r", input_tokens=10, output_tokens=5)])
    c = _counters(db)
    runs = {k[1][2]: v for k, v in c.items() if k[0] == "runmeter_runs_total"}
    assert runs == {"completed": 1}


def test_unknown_models_fold_into_other_and_count_as_unpriced(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    _write(db, [_run("a", model="ft:gpt-4o-mini:acme::abc", input_tokens=10, output_tokens=5),
                _run("b", model="gtp-4o", input_tokens=1, output_tokens=1), _run("c", model=None)])
    c = _counters(db)
    models = {k[1][1] for k in c}
    assert models == {"other"}
    assert c[("runmeter_unpriced_runs_total", ("responses", "other"))] == 3
    assert not any(k[0] == "runmeter_cost_usd_total" for k in c)


def test_a_known_model_without_a_price_for_its_tier_counts_as_unpriced(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    usage = {"input_tokens": 100, "output_tokens": 10}
    _write(db, [_run("tier", service_tier="scale", **usage),  # no price for this tier
                _run("ok", service_tier="flex", **usage),
                _run("no_usage", status="interrupted")])  # nothing to price: not an unpriced model
    c = _counters(db)
    assert c[("runmeter_unpriced_runs_total", ("responses", "gpt-4o-mini"))] == 1
    flex = price_record(PRICES, _run("ok", service_tier="flex", **usage))
    assert flex.total is not None
    assert c[("runmeter_cost_usd_total", ("responses", "gpt-4o-mini", "input"))] == pytest.approx(
        float(flex.meters["input"]))


def test_chat_streams_without_usage_are_counted(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    r = _run("chatcmpl-1", api="chat", model="gpt-4o-mini")
    r.extra["chat_stream_without_usage"] = True
    _write(db, [r, _run("chatcmpl-2", api="chat", model="gpt-4o-mini", input_tokens=3, output_tokens=2)])
    c = _counters(db)
    assert c[("runmeter_chat_streams_without_usage_total", ("gpt-4o-mini",))] == 1
    assert c[("runmeter_runs_total", ("chat", "gpt-4o-mini", "completed"))] == 2


def test_spooled_records_of_another_process_are_counted_once_by_the_role_holder(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    holder = Writer(db, flush_interval=60, install_signal_handlers=False)
    try:
        assert holder.flush()  # takes the role and creates the store
        other = Writer(db, flush_interval=60, install_signal_handlers=False)
        for i in range(50):
            other.submit(_run(f"r{i}", input_tokens=10, output_tokens=1))
        assert other.flush()
        assert other.spooled == 50
        other.close()
        assert holder.flush() and holder.flush()
    finally:
        holder.close()
    c = _counters(db)
    assert c[("runmeter_runs_total", ("responses", "gpt-4o-mini", "completed"))] == 50
    assert c[("runmeter_tokens_total", ("responses", "gpt-4o-mini", "input"))] == 500


def test_delta_never_subtracts() -> None:
    lab = Labeller(PRICES)
    before = _run("r", input_tokens=100, output_tokens=50)
    after = _run("r", input_tokens=80, output_tokens=70)
    d = lab.delta(before, after)
    assert d.counters == {
        ("runmeter_tokens_total", ("responses", "gpt-4o-mini", "output")): 20.0,
        ("runmeter_cost_usd_total", ("responses", "gpt-4o-mini", "output")): pytest.approx(20 * 0.6 / 1e6),
    }
    assert d.observations == []  # the run had settled already


def test_a_failing_metrics_hook_never_loses_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import collector.metrics.ingest as ingest

    def boom(*_: object, **__: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(ingest, "count_runs", boom)
    db = tmp_path / "s.duckdb"
    with Writer(db, flush_interval=60, install_signal_handlers=False) as w:
        w.submit(_run("r1"))
        assert w.flush()
        assert w.errors == 1
    with duckdb.connect(str(db), read_only=True) as conn:
        assert conn.execute("SELECT run_id FROM runs").fetchall() == [("r1",)]


def test_chunks_per_run_observes_only_runs_that_searched(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    _write(db, [_run("searched", file_search_calls=2, retrieved_chunks=9),
                _run("empty_search", file_search_calls=1, retrieved_chunks=0),
                _run("no_search", file_search_calls=0, retrieved_chunks=0),  # the tap's "known: no calls"
                _run("unknown", file_search_calls=1, retrieved_chunks=None)])  # results not on the wire
    with duckdb.connect(str(db), read_only=True) as conn:
        chunks = load_aggregates(conn).histograms[("runmeter_retrieved_chunks_per_run",
                                                   ("responses", "gpt-4o-mini"))]
    assert sum(chunks.counts) == 2 and chunks.sum == 9  # as `runmeter report`: mean 4.5 over two runs
