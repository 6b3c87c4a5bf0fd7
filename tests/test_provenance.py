"""Provenance: every number a face shows is the value of one analysis function.

The store is real: ``runmeter demo --fast`` drives the simulator through the unmodified SDK, the taps and
the writer into DuckDB; vector-store snapshots are written by the storage poller's own sink. Each test reads
a number off a face (a Streamlit page under AppTest, or the CLI's output) and checks that it is exactly what
the named :mod:`analysis` function returns, and that that value is the hand-computed or independently
priced one, so a face that recomputed it (or an analysis that drifted) fails here.

Storage fixture (GiB = 2^30 bytes; snapshots at midnight UTC of D-3 .. D, D = the demo's day; the last
poll is D 00:00, so day D holds nothing yet):

* ``vs_big`` 2 GiB and ``vs_small`` 0.5 GiB on every snapshot (``vs_small`` last active on D-3);
* ``vs_gone`` 1 GiB on D-3 and D-2, with ``expires_at`` D-1 00:00 (never re-polled: it stops at expiry).

Held GiB per day: 3.5, 3.5, 2.5, 0 → 9.5 GiB-days; billable (1 GiB free per day) 2.5 + 2.5 + 1.5 = 6.5;
at $0.10 per GiB-day: $0.65. Deleting ``vs_small`` (idle more than 1 day): 3.0, 3.0, 2.0 GiB → $0.50.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import polars as pl
import pytest
from streamlit.testing.v1 import AppTest
from test_dashboard_apptest import _open
from test_dashboard_apptest import metrics as _metrics

from analysis import explorer
from analysis.cost import run_costs
from analysis.cost_by import cost_by
from analysis.fit import fit_store
from analysis.prices import PriceTable, load_price_table
from analysis.reconcile import reconcile, recorded_from_store
from analysis.snapshots import complete_days, held_bytes, held_gb, latest_snapshots
from analysis.storage import StorageAssumptions, daily_gb_days, daily_storage_costs, whatif_delete_idle
from analysis.totals import (
    baseline_cost_per_1k_runs,
    cost_total,
    gb_days_by_store,
    storage_total,
)
from analysis.whatif import whatif
from collector.cli import main
from collector.commands import dashboard as command
from collector.commands._table import fmt
from collector.record import RunRecord
from collector.storage_poller import SnapshotRow, StoreSink
from collector.store.writer import Writer
from dashboards import data

pytestmark = pytest.mark.filterwarnings("ignore:deprecated$:DeprecationWarning")

APP = str(command.app_path())
GIB = 2**30
DEFAULTS = StorageAssumptions()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's 30 runs, then the snapshots of the module doc."""
    db = tmp_path_factory.mktemp("provenance") / "demo.duckdb"
    assert main(["demo", "--fast", "--runs", "30", "--seed", "5", "--db", str(db)]) == 0
    with duckdb.connect(str(db)) as con:
        first_run = con.execute("SELECT min(started_at) FROM runs").fetchone()
        # the demo's own storage poll (taken at wall-clock time) is not part of this fixture
        con.execute("DELETE FROM vector_store_snapshots")
    assert first_run is not None
    d = datetime.combine(first_run[0].astimezone(UTC).date(), datetime.min.time(), UTC)
    at = [(d - timedelta(days=k)).timestamp() for k in (3, 2, 1, 0)]
    rows = []
    for i, t in enumerate(at):
        rows.append(SnapshotRow("vs_big", t, 2 * GIB, "completed", "big", last_active_at=at[-1]))
        rows.append(SnapshotRow("vs_small", t, GIB // 2, "completed", "small", last_active_at=at[0]))
        if i < 2:
            rows.append(SnapshotRow("vs_gone", t, GIB, "completed", "gone", expires_at=at[2]))
    assert StoreSink(db).write(rows) == "stored"
    return db


@pytest.fixture(scope="module")
def prices() -> PriceTable:
    assert "RUNMETER_PRICES" not in os.environ
    return load_price_table()


@pytest.fixture
def con(store: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    c = duckdb.connect(str(store), read_only=True)
    yield c
    c.close()


def _page(store: Path, monkeypatch: pytest.MonkeyPatch, page: str) -> AppTest:
    monkeypatch.setenv("RUNMETER_DB", str(store))
    return _open(AppTest.from_file(APP, default_timeout=60), page)


def _window(con: duckdb.DuckDBPyConnection) -> tuple[date, date, datetime]:
    """The days and "now" every dashboard page uses (the store's span)."""
    found = explorer.store_span(con)
    start, end = data.range_of(found)
    return start, end, data.as_of(found)


# ------------------------------------------------------------------------------------------- dashboard

def test_overview_headline_is_spend_headline(store: Path, con: duckdb.DuckDBPyConnection, prices: PriceTable,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    m = _metrics(_page(store, monkeypatch, "overview"))
    start, end, now = _window(con)
    assert (end - start).days == 4  # the snapshots' three days before the runs' day count too
    storage = storage_total(daily_storage_costs(con, start, end, until=now, assumptions=DEFAULTS))
    head = explorer.spend_headline(explorer.spend_by_day(con, prices), storage)
    assert m["Token and tool spend"] == data.usd(head.token_usd)
    assert m["Storage spend"] == data.usd(head.storage_usd) == "$0.65"
    assert m["Total spend"] == data.usd(head.total_usd)
    assert m["Unpriced runs"] == f"{head.unpriced_runs:,}"
    # the same figures from independent sources: per-run pricing, and the runs without usage
    per_run = run_costs(con, prices)["total_usd"].drop_nulls().sum()
    assert head.token_usd == pytest.approx(float(per_run), abs=1e-9) and head.token_usd > 0
    no_usage = con.execute("SELECT count(*) FROM runs WHERE input_tokens IS NULL").fetchone()
    assert no_usage is not None and head.unpriced_runs == no_usage[0] >= 1
    assert head.total_usd == head.token_usd + 0.65


def test_storage_page_spend_and_stored_now(store: Path, con: duckdb.DuckDBPyConnection,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    m = _metrics(_page(store, monkeypatch, "storage"))
    start, end, now = _window(con)
    total = storage_total(daily_storage_costs(con, start, end, until=now, assumptions=DEFAULTS))
    assert (total.gb_days, total.billable_gb_days, total.cost_usd) == (Decimal("9.5"), Decimal("6.5"),
                                                                       Decimal("0.65"))
    assert m["Storage spend"] == data.usd(float(total.cost_usd))
    # vs_gone's latest snapshot is past its expires_at: 2.5 GiB held now
    assert held_gb(con, now, DEFAULTS) == 2.5
    assert m["Stored now (GiB)"] == f"{held_gb(con, now, DEFAULTS):,.3f}" == "2.500"
    idle = whatif_delete_idle(con, 7, start, end, as_of=now, assumptions=DEFAULTS)
    assert m["Saved over the store's days"] == data.usd(float(idle.savings_usd), 4)


def test_whatif_cost_per_1k_runs_now_is_the_baseline_figure(store: Path, con: duckdb.DuckDBPyConnection,
                                                             prices: PriceTable,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    m = _metrics(_page(store, monkeypatch, "whatif"))
    b = whatif(con, prices, max_num_results=[1]).baseline
    now = baseline_cost_per_1k_runs(b)
    assert now is not None and now > 0
    assert m["Cost per 1,000 runs now"] == data.usd(now, 4)
    assert m["Current max_num_results (highest recorded)"] == str(b.current_max_num_results)
    # at the recorded setting nothing is dropped: the sweep's own figure is the baseline's
    assert b.current_max_num_results is not None
    row = whatif(con, prices, max_num_results=[b.current_max_num_results]).rows[0]
    assert row.cost_per_1k_runs_usd == now


def test_reconciliation_headline_without_a_bill(store: Path, con: duckdb.DuckDBPyConnection,
                                                prices: PriceTable, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_ADMIN_KEY", raising=False)
    m = _metrics(_page(store, monkeypatch, "reconciliation"))
    start, end, _ = _window(con)
    from analysis.reconcile import Bill

    result = reconcile(recorded_from_store(con, prices, start, end, DEFAULTS), Bill(), prices, start, end)
    totals = explorer.reconciliation_totals(explorer.reconciliation_by_day(result), billed=False)
    assert m["Recorded"] == data.usd(totals.recorded_usd)
    assert (m["Billed"], m["Drift (billed − recorded)"]) == ("not fetched", "—")
    # recorded = tokens and calls priced by day and line item, plus storage metered per day
    head = explorer.spend_headline(explorer.spend_by_day(con, prices), storage_total([]))
    assert totals.recorded_usd == pytest.approx(head.token_usd + 0.65, abs=1e-9)


def test_reconciliation_headline_with_the_bill(store: Path, con: duckdb.DuckDBPyConnection,
                                               prices: PriceTable, sim: object,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from collector.reconcile_client import BillFetcher, admin_client
    from collector.simulator import Simulator

    assert isinstance(sim, Simulator)
    monkeypatch.setenv("OPENAI_ADMIN_KEY", "sk-admin-provenance")
    monkeypatch.setenv("OPENAI_BASE_URL", sim.base_url)
    at = _page(store, monkeypatch, "reconciliation")
    assert not at.info, [i.value for i in at.info]
    m = _metrics(at)
    start, end, _ = _window(con)
    with admin_client(os.environ) as client:
        bill = BillFetcher(client).fetch(start, end)
    result = reconcile(recorded_from_store(con, prices, start, end, DEFAULTS), bill, prices, start, end)
    totals = explorer.reconciliation_totals(explorer.reconciliation_by_day(result), billed=True)
    assert totals.billed_usd is not None and totals.drift_usd is not None
    assert m["Recorded"] == data.usd(totals.recorded_usd)
    assert m["Billed"] == data.usd(totals.billed_usd)
    assert m["Drift (billed − recorded)"] == data.usd(totals.drift_usd)
    assert totals.drift_usd == totals.billed_usd - totals.recorded_usd


def test_reconciliation_totals_count_an_unbilled_day_as_zero() -> None:
    per_day = pl.DataFrame({"day": [date(2026, 1, 1), date(2026, 1, 2)], "recorded_usd": [1.25, 0.5],
                            "billed_usd": [1.5, None]})
    totals = explorer.reconciliation_totals(per_day, billed=True)
    assert (totals.recorded_usd, totals.billed_usd, totals.drift_usd) == (1.75, 1.5, -0.25)
    unbilled = explorer.reconciliation_totals(per_day, billed=False)
    assert unbilled == explorer.ReconciliationTotals(1.75, None, None)


def test_run_detail_counts_come_from_the_run_row(store: Path, con: duckdb.DuckDBPyConnection,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    at = _page(store, monkeypatch, "runs")
    rows = con.execute(
        "SELECT run_id, input_tokens, retrieved_chunks FROM runs WHERE input_tokens IS NULL OR "
        "retrieved_chunks > 0 ORDER BY input_tokens IS NULL DESC, run_id LIMIT 2").fetchall()
    (silent, _, _), (searched, _, chunks) = rows
    for run_id in (silent, searched):
        at.text_input(key="runs_id").set_value(run_id).run()
        at.selectbox(key="runs_open").set_value(run_id).run()
        assert not at.exception, [e.value for e in at.exception]
        m = _metrics(at)
        if run_id == silent:  # a chat stream without usage or file_search: unknown, never 0
            assert (m["Input tokens"], m["Output tokens"], m["Cost"]) == ("—", "—", "—")
            assert (m["Chunks retrieved"], m["Chunks cited"]) == ("—", "—")
        else:
            assert m["Chunks retrieved"] == f"{chunks:,}"
            cited = con.execute("SELECT count(*) FILTER (WHERE cited) FROM retrieved_chunks WHERE run_id = ?",
                                [run_id]).fetchone()
            assert cited is not None and m["Chunks cited"] == f"{cited[0]:,}"


# ------------------------------------------------------------------------------------------------- CLI

def test_cost_total_line_is_cost_total(store: Path, con: duckdb.DuckDBPyConnection, prices: PriceTable,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cost", "--db", str(store)]) == 0
    out = capsys.readouterr().out
    total_line = next(line for line in out.splitlines() if line.startswith("total"))
    t = cost_total(cost_by(con, prices, ["api", "model"]))
    shown = [fmt(v) for v in (t.runs, t.unpriced_runs, t.input_tokens, t.cached_input_tokens, t.output_tokens,
                              t.file_search_calls)] + [f"{t.total_usd:,.4f}"]
    assert total_line.split()[1:] == shown
    assert t.runs == 30 and t.unpriced_runs >= 1
    per_run = float(run_costs(con, prices)["total_usd"].drop_nulls().sum())
    assert t.total_usd == pytest.approx(per_run, abs=1e-9)
    for reason, n in t.unpriced.items():
        assert f"- {n:,} × {reason}" in out


def test_whatif_details_baseline_is_the_baseline_figure(store: Path, con: duckdb.DuckDBPyConnection,
                                                        prices: PriceTable,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["whatif", "--db", str(store), "--details"]) == 0
    out = capsys.readouterr().out
    b = whatif(con, prices, max_num_results=[1], fits=fit_store(con)).baseline
    line = next(x for x in out.splitlines() if x.startswith("cost per 1,000 runs (USD)"))
    assert line.split()[-1] == fmt(baseline_cost_per_1k_runs(b))
    line = next(x for x in out.splitlines() if x.startswith("input tokens per run"))
    assert line.split()[-1] == fmt(b.input_tokens / b.runs)


def test_storage_report_totals_and_stores(store: Path, con: duckdb.DuckDBPyConnection,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["storage", "report", "--db", str(store), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    start, end, now = _window(con)
    total = storage_total(daily_storage_costs(con, start, end, until=now, assumptions=DEFAULTS))
    assert rep["total"] == {"gb_days": 9.5, "billable_gb_days": 6.5, "cost_usd": 0.65}
    assert rep["total"] == {"gb_days": float(total.gb_days), "cost_usd": float(total.cost_usd),
                            "billable_gb_days": float(total.billable_gb_days)}
    per_store = gb_days_by_store(daily_gb_days(con, start, end, until=now, assumptions=DEFAULTS))
    assert per_store == {"vs_big": 6.0, "vs_small": 1.5, "vs_gone": 2.0}
    assert {s["vector_store_id"]: s["gb_days"] for s in rep["stores"]} == per_store
    latest = {s["vector_store_id"]: s["usage_bytes"] for s in latest_snapshots(con)}
    assert {s["vector_store_id"]: s["usage_bytes"] for s in rep["stores"]} == latest
    assert held_bytes(con, now) == 2 * GIB + GIB // 2  # the dashboard's "stored now", from the same rows


def test_storage_whatif_totals_are_storage_totals(store: Path, con: duckdb.DuckDBPyConnection,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["storage", "whatif", "--db", str(store), "--idle-days", "1", "--json"]) == 0
    (s,) = json.loads(capsys.readouterr().out)["scenarios"]
    start, end, now = _window(con)
    w = whatif_delete_idle(con, 1, start, end, as_of=now, assumptions=DEFAULTS)
    assert s["stores"] == ["vs_small"] == list(w.stores)
    assert s["baseline_usd"] == float(storage_total(w.baseline).cost_usd) == 0.65
    assert s["scenario_usd"] == float(storage_total(w.scenario_costs).cost_usd) == 0.5
    assert s["saved_usd"] == float(w.savings_usd) == pytest.approx(0.15, abs=1e-12)


def test_latest_snapshot_rules() -> None:
    midnight = datetime(2026, 3, 4)
    assert complete_days(midnight, date(2026, 3, 10), 14) == 6
    assert complete_days(midnight + timedelta(hours=6), date(2026, 3, 10), 14) == 5
    assert complete_days(midnight, date(2026, 3, 10), 3) == 3


def test_held_bytes_follow_the_snapshots_up_to_as_of(con: duckdb.DuckDBPyConnection) -> None:
    found = explorer.store_span(con)
    assert found.first_snapshot is not None and found.last_snapshot is not None
    first = found.first_snapshot.replace(tzinfo=None)
    assert held_bytes(con, first - timedelta(seconds=1)) == 0
    assert held_bytes(con, first + timedelta(days=1)) == 3 * GIB + GIB // 2
    assert held_bytes(con, first + timedelta(days=2)) == 2 * GIB + GIB // 2  # vs_gone expired
    as_of = first + timedelta(days=1)
    assert {r["vector_store_id"]: r["observed_at"] for r in latest_snapshots(con, as_of)} == {
        "vs_big": as_of, "vs_small": as_of, "vs_gone": as_of}


def test_a_search_that_found_nothing_shows_zero_chunks_cited(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from collector.taps.base import set_calls

    db = tmp_path / "zero.duckdb"
    run = RunRecord(run_id="run_zero", api="responses", model="gpt-4o", status="completed",
                    started_at=1_764_000_000.0, input_tokens=3000, output_tokens=100, max_num_results=10,
                    streams=1)
    set_calls(run, {"call_1": []}, count_known=True)  # searched; results carried; none came back
    with Writer(db, flush_interval=60, install_signal_handlers=False) as w:
        w.submit(run)
    monkeypatch.setenv("RUNMETER_DB", str(db))
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    at.switch_page("views/runs.py").run()
    at.selectbox(key="runs_open").set_value("run_zero").run()
    assert not at.exception, [e.value for e in at.exception]
    assert {m.label: m.value for m in at.metric if m.label.startswith("Chunks")} == {
        "Chunks retrieved": "0", "Chunks cited": "0"}


def test_thread_history_nobody_could_price_is_not_shown_as_zero_dollars(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "unpriced.duckdb"
    with Writer(db, flush_interval=60, install_signal_handlers=False) as w:
        for t in range(3):
            for k in range(3):
                w.submit(RunRecord(run_id=f"run_{t}_{k}", api="assistants", model="mystery-model-x",
                                   status="completed", thread_id=f"thread_{t}",
                                   started_at=1_764_000_000.0 + t * 1000 + k * 60,
                                   input_tokens=1000 + 800 * k, output_tokens=50, model_steps=1, streams=1,
                                   file_search_calls=0))
    assert main(["whatif", "--db", str(db), "--threads"]) == 0
    title = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("Thread growth"))
    assert title.endswith("costing an unknown amount (no thread run could be priced)") and "$" not in title
