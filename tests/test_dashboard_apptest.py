"""The cost explorer's pages under Streamlit's AppTest, against a store with known numbers.

The fixture store is built with the real schema (``migrate``) and rows inserted in SQL, so every figure a
page shows can be checked against a hand computation and against the ``analysis`` function it comes from.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
from streamlit.testing.v1 import AppTest

from analysis.cost import Usage, price_run, run_costs
from analysis.prices import load_price_table
from analysis.storage import StorageAssumptions, daily_storage_costs
from analysis.whatif import whatif
from collector.commands import dashboard as command
from collector.store.migrations import migrate

APP = command.app_path()
T0 = datetime(2026, 11, 1, tzinfo=UTC)
GIB = 2**30
PAGES = ("overview", "storage", "whatif", "threads", "runs", "reconciliation")


@dataclass(frozen=True)
class Run:
    run_id: str
    api: str
    model: str
    started_at: datetime
    input_tokens: int | None
    output_tokens: int | None
    calls: int
    thread_id: str | None
    tenant: str
    chunks: tuple[tuple[int, int, float, bool], ...] = ()
    """(rank, content_tokens, score, cited)."""


def _runs() -> list[Run]:
    runs: list[Run] = []
    step = timedelta(days=3) / 340
    k = 0
    # 50 assistants threads of 4 turns, gpt-4o: input 1000, 1800, 2600, 3400; output 100 each.
    for t in range(50):
        for turn in range(4):
            runs.append(Run(f"run_a{t:02d}_{turn}", "assistants", "gpt-4o", T0 + k * step, 1000 + 800 * turn,
                            100, 0, f"thread_{t:02d}", "acme" if k % 2 == 0 else "globex"))
            k += 1
    # 100 Responses runs with one file_search call each, gpt-4o-mini, 1-10 chunks at max_num_results 10;
    # input = 500 + chunk tokens + 10 per chunk (the fit recovers this billing exactly).
    for i in range(100):
        n = 1 + i % 10
        chunks = tuple((r, 80 + (i * 7 + r * 13) % 50, round(0.95 - 0.05 * r, 2), r <= (1 + i % 3))
                       for r in range(1, n + 1))
        tokens = 500 + sum(c[1] for c in chunks) + 10 * n
        runs.append(Run(f"run_r{i:03d}", "responses", "gpt-4o-mini", T0 + k * step, tokens, 200, 1, None,
                        "acme" if k % 2 == 0 else "globex", chunks))
        k += 1
    # 30 Responses runs without file_search (they separate the base prompt from retrieval in the fit).
    for i in range(30):
        runs.append(Run(f"run_p{i:02d}", "responses", "gpt-4o-mini", T0 + k * step, 500, 200, 0, None,
                        "acme" if k % 2 == 0 else "globex"))
        k += 1
    # 10 chat runs streamed without include_usage: no usage, unpriced.
    for i in range(10):
        runs.append(Run(f"run_c{i}", "chat", "gpt-4o-mini", T0 + k * step, None, None, 0, None, "acme"))
        k += 1
    return runs


RUNS = _runs()


def _hand_cost(r: Run) -> Decimal:
    """Cost from the published prices (USD per 1M tokens; $2.50 per 1,000 Responses file_search calls)."""
    rates = {"gpt-4o": (Decimal("2.5"), Decimal(10)), "gpt-4o-mini": (Decimal("0.15"), Decimal("0.6"))}
    inp, out = rates[r.model]
    assert r.input_tokens is not None and r.output_tokens is not None
    return (r.input_tokens * inp + r.output_tokens * out) / 1_000_000 + r.calls * Decimal("0.0025")


def build_store(path: Path) -> None:
    """The fixture store: RUNS, their chunks, and two vector stores (2 GiB idle, 0.5 GiB active)."""
    con = duckdb.connect(str(path))
    try:
        migrate(con, str(path))
        for i, r in enumerate(RUNS):
            con.execute(
                """INSERT INTO runs (run_id, api, model, status, thread_id, started_at, ttft_seconds,
                       input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, reasoning_tokens,
                       file_search_calls, retrieved_chunks, max_num_results, streams, tags, model_steps,
                       recorded_at)
                   VALUES (?, ?, ?, 'completed', ?, ?, ?, ?, ?, 0, ?, 0, ?, ?, ?, 1, MAP {'tenant': ?}, ?,
                           now())""",
                [r.run_id, r.api, r.model, r.thread_id, r.started_at, 0.1 * (1 + i % 10), r.input_tokens,
                 None if r.input_tokens is None else 0, r.output_tokens, r.calls,
                 len(r.chunks) if r.calls else None, 10 if r.calls else None, r.tenant,
                 1 if r.api == "assistants" else None],
            )
            for rank, tokens, score, cited in r.chunks:
                con.execute("INSERT INTO retrieved_chunks VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                            [r.run_id, f"fs_{r.run_id}", rank, f"file_{rank}", score, tokens, cited])
        for day in range(4):
            at = T0 + timedelta(days=day)
            stores = (("vs_idle", 2 * GIB, T0), ("vs_busy", GIB // 2, T0 + timedelta(days=2)))
            for store, size, active in stores:
                con.execute(
                    "INSERT INTO vector_store_snapshots VALUES (?, ?, ?, 'completed', ?, 0, 3, 0, 0, 3, "
                    "NULL, NULL, ?)", [store, at, size, store, min(active, at)])
    finally:
        con.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dash") / "fixture.duckdb"
    build_store(path)
    return path


@pytest.fixture
def app(store: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AppTest]:
    monkeypatch.setenv("RUNMETER_DB", str(store))
    yield AppTest.from_file(str(APP), default_timeout=60)


def _open(at: AppTest, page: str) -> AppTest:
    at.run()  # st.navigation registers the pages on the first run; only then does switch_page route
    if page != "overview":
        at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _usd(value: float | Decimal, places: int = 2) -> str:
    return f"${float(value):,.{places}f}"


# ------------------------------------------------------------------------------------------ overview

def test_overview_shows_spend_that_matches_hand_and_per_run_pricing(app: AppTest, store: Path) -> None:
    m = metrics(_open(app, "overview"))
    priced = [r for r in RUNS if r.input_tokens is not None]
    hand = sum((_hand_cost(r) for r in priced), Decimal(0))
    # 50 threads × (8800 × 2.5 + 400 × 10) / 1M = $1.30 of gpt-4o, plus the mini runs and 100 calls
    assert sum((_hand_cost(r) for r in priced if r.model == "gpt-4o"), Decimal(0)) == Decimal("1.3")
    with duckdb.connect(str(store), read_only=True) as con:
        per_run = float(run_costs(con, load_price_table())["total_usd"].sum())
    assert abs(per_run - float(hand)) < 1e-9
    assert m["Runs"] == f"{len(RUNS):,}" == "340"
    assert m["Token and tool spend"] == _usd(hand)
    # storage: 2.5 GiB for 3 days, 1 GiB free, $0.10 per GiB-day = $0.45
    assert m["Storage spend"] == "$0.45"
    assert m["Total spend"] == _usd(hand + Decimal("0.45"))
    assert m["Unpriced runs"] == "10"
    assert "10 × usage not recorded" in app.warning[0].value
    assert len(app.get("vega_lite_chart")) == 4


def test_overview_split_by_tag(app: AppTest) -> None:
    _open(app, "overview")
    app.selectbox(key="ov_tag").set_value("tenant").run()
    assert not app.exception
    assert "tag" in app.radio(key="ov_by").options
    app.radio(key="ov_by").set_value("tag").run()
    assert not app.exception
    assert any("by tenant" in h.value for h in app.subheader)


def test_sidebar_storage_price_and_price_override_change_every_number(app: AppTest) -> None:
    _open(app, "overview")
    app.number_input(key="a_price_per_gb_day").set_value(0.2).run()
    assert metrics(app)["Storage spend"] == "$0.90"
    # gpt-4o at 5 / 20 per 1M doubles the $1.30 of assistants spend
    mini = sum((_hand_cost(r) for r in RUNS if r.model == "gpt-4o-mini" and r.input_tokens is not None),
               Decimal(0))
    app.text_area(key="a_price_overrides").set_value(
        '{"models": {"gpt-4o": [{"from": "2024-01-01", "input": 5, "output": 20}]}}').run()
    assert not app.exception
    assert metrics(app)["Token and tool spend"] == _usd(Decimal("2.6") + mini)
    app.text_area(key="a_price_overrides").set_value('{"models": ').run()
    assert "price overrides: not valid JSON" in app.sidebar.error[0].value
    assert metrics(app)["Token and tool spend"] == _usd(Decimal("1.3") + mini)


# ------------------------------------------------------------------------------------------- storage

def test_storage_page_costs_forecast_and_whatifs(app: AppTest, store: Path) -> None:
    m = metrics(_open(app, "storage"))
    assert m["Storage spend"] == "$0.45"
    assert m["Stored now (GiB)"] == "2.500"
    # deleting the store idle since Nov 1 (> 7 days? no: 3 days at as-of Nov 4) — default 7 days: nothing
    assert m["Saved over the store's days"] == "$0.0000"
    app.number_input(key="st_idle").set_value(2).run()
    app.number_input(key="st_expire").set_value(2).run()
    labels = [x.label for x in app.metric]
    values = [x.value for x in app.metric]
    saved = [v for lab, v in zip(labels, values, strict=True) if lab == "Saved over the store's days"]
    # delete vs_idle: 0.5 GiB left, under the free GiB: all $0.45 saved; expires after 2 days: Nov 3 free
    assert saved == ["$0.4500", "$0.1500"]
    with duckdb.connect(str(store), read_only=True) as con:
        days = daily_storage_costs(con, date(2026, 11, 1), date(2026, 11, 5), until=T0.replace(day=4),
                                   assumptions=StorageAssumptions())
    assert [float(d.cost_usd) for d in days] == [0.15, 0.15, 0.15, 0.0]
    assert len(app.get("vega_lite_chart")) == 3


# ----------------------------------------------------------------------------------------- what-if

def test_whatif_slider_moves_projected_cost_to_the_analysis_value(app: AppTest, store: Path) -> None:
    _open(app, "whatif")
    m = metrics(app)
    assert m["Current max_num_results (highest recorded)"] == "10"
    with duckdb.connect(str(store), read_only=True) as con:
        report = whatif(con, load_price_table(), max_num_results=[3, 10, 30], score_thresholds=[0.6])
    at3, at10, at30, t06 = report.rows
    assert m["Projected cost per 1,000 runs (N = 10)"] == _usd(at10.cost_per_1k_runs_usd or 0, 4)
    app.slider(key="wi_n").set_value(3).run()
    m = metrics(app)
    assert at3.cost_per_1k_runs_usd is not None and at10.cost_per_1k_runs_usd is not None
    assert at3.cost_per_1k_runs_usd < at10.cost_per_1k_runs_usd
    assert m["Projected cost per 1,000 runs (N = 3)"] == _usd(at3.cost_per_1k_runs_usd, 4)
    assert m["Citation recall"] == f"{at3.citation_recall:.1%}"
    assert at3.bound == "exact"
    # N = 3 drops ranks 4-10: 100 runs cite ranks 1..(1 + i % 3), none only beyond 3
    assert m["Runs losing every cited chunk"] == "0"
    # N = 30 asks for results never retrieved (runs with 10 results were capped): unknown, a lower bound
    app.slider(key="wi_n").set_value(30).run()
    assert at30.bound in ("lower", "unknown")
    assert metrics(app)["Projected cost per 1,000 runs (N = 30)"].startswith("unknown (≥ $")
    app.select_slider(key="wi_t").set_value(0.6).run()
    assert metrics(app)["Projected cost per 1,000 runs (threshold 0.60)"].endswith(
        _usd(t06.cost_per_1k_runs_usd or 0, 4) + ("" if t06.bound in ("exact", "upper") else ")"))
    assert len(app.get("vega_lite_chart")) == 2


# ------------------------------------------------------------------------------------------ threads

def test_threads_page_history_tokens_and_cost(app: AppTest) -> None:
    m = metrics(_open(app, "threads"))
    assert m["Threads"] == "50"
    assert m["Threads with 2+ turns"] == "50"
    # analysis.threads: history_k = (input_k - payload_k) - (input_1 - payload_1) × steps_k / steps_1. Here
    # every turn ran one model step and no file_search (payload 0), so history_k = input_k - 1,000:
    # per thread 0 + 800 + 1600 + 2400 = 4,800 history tokens; × 50 = 240,000 at $2.50 / 1M = $0.60,
    # 240,000 of 50 × (1,000 + 1,800 + 2,600 + 3,400) = 440,000 input tokens = 54.5%
    assert m["History tokens"] == "240,000"
    assert m["History share"] == "54.5%"
    assert m["Thread history cost"] == "$0.6000"
    table = app.dataframe[0].value
    assert table["input_tokens_mean"].tolist() == [1000.0, 1800.0, 2600.0, 3400.0]
    assert table["history_tokens_mean"].tolist() == [0.0, 800.0, 1600.0, 2400.0]
    # 50 runs per turn × 800 history tokens per turn step × $2.50 / 1M
    assert table["history_usd"].tolist() == pytest.approx([0.0, 0.1, 0.2, 0.3])
    top = app.dataframe[1].value  # ten threads with 4,800 history tokens each (× $2.50 / 1M = $0.012)
    assert top["thread"].tolist() == [f"thread_{t:02d}" for t in range(10)]
    assert top["history_tokens"].tolist() == [4800.0] * 10
    assert top["history_usd"].tolist() == pytest.approx([0.012] * 10)


# --------------------------------------------------------------------------------------------- runs

def test_runs_page_filters_pages_and_opens_a_run(app: AppTest) -> None:
    _open(app, "runs")
    assert metrics(app)["Matching runs"] == "340"
    assert len(app.dataframe[0].value) == 50
    app.selectbox(key="runs_api").set_value("responses").run()
    app.checkbox(key="runs_fs").check().run()
    assert metrics(app)["Matching runs"] == "100"
    app.number_input(key="runs_page").set_value(2).run()
    table = app.dataframe[0].value
    assert len(table) == 50 and set(table["api"]) == {"responses"}
    app.text_input(key="runs_id").set_value("run_r009").run()
    assert metrics(app)["Matching runs"] == "1"
    app.selectbox(key="runs_open").set_value("run_r009").run()
    run = next(r for r in RUNS if r.run_id == "run_r009")
    m = metrics(app)
    assert m["Cost"] == _usd(_hand_cost(run), 6)
    assert m["Chunks retrieved"] == "10"
    assert m["Chunks cited"] == "1"
    chunks = app.dataframe[-1].value
    assert chunks["rank"].tolist() == list(range(1, 11))
    cost = price_run(load_price_table(), model=run.model, api=run.api, on=run.started_at,
                     usage=Usage(run.input_tokens, run.output_tokens, 0, 0, file_search_calls=1))
    assert cost.total == _hand_cost(run)


# ----------------------------------------------------------------------------------- reconciliation

def test_reconciliation_without_admin_key_shows_recorded_and_says_why(app: AppTest) -> None:
    assert "OPENAI_ADMIN_KEY" not in os.environ
    _open(app, "reconciliation")
    assert "OPENAI_ADMIN_KEY is not set" in app.info[0].value
    m = metrics(app)
    assert m["Billed"] == "not fetched"
    hand = sum((_hand_cost(r) for r in RUNS if r.input_tokens is not None), Decimal(0))
    # storage metered hourly as on the bill: the same $0.15 a day here (constant usage)
    assert m["Recorded"] == _usd(hand + Decimal("0.45"))
    days = app.dataframe[0].value
    assert list(days.columns) == ["day", "recorded_usd", "unpriced_lines"]  # no bill: no billed or drift
    per_day = [sum((_hand_cost(r) for r in RUNS if r.input_tokens is not None and r.started_at.day == d),
                   Decimal(0)) + Decimal("0.15") for d in (1, 2, 3)]
    assert days["recorded_usd"].round(9).tolist() == [round(float(v), 9) for v in per_day]


# ------------------------------------------------------------------------------ stores with no data

def _message(at: AppTest) -> str:
    return " ".join(x.value for x in [*at.info, *at.warning])


@pytest.mark.parametrize("page", PAGES)
def test_missing_store_says_how_to_make_data(page: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNMETER_DB", str(tmp_path / "nothing.duckdb"))
    at = _open(AppTest.from_file(str(APP), default_timeout=30), page)
    assert "no runmeter store" in _message(at) and "runmeter demo" in _message(at)


@pytest.mark.parametrize("kind", ["empty", "foreign", "text"])
def test_empty_or_foreign_store_is_a_message_not_a_traceback(kind: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.duckdb"
    if kind == "text":
        path.write_text("not a database")
    else:
        with duckdb.connect(str(path)) as con:
            if kind == "empty":
                migrate(con, str(path))
            else:
                con.execute("CREATE TABLE invoices (id INTEGER)")
    monkeypatch.setenv("RUNMETER_DB", str(path))
    for page in PAGES:
        at = _open(AppTest.from_file(str(APP), default_timeout=30), page)
        text = _message(at)
        assert "runmeter demo" in text
        expected = {"empty": "no runs or vector-store snapshots", "foreign": "not a runmeter store",
                    "text": "cannot be shown"}[kind]
        assert expected in text


# ------------------------------------------------------------------------------- across pages, live

def test_sidebar_assumptions_follow_the_person_across_pages(app: AppTest) -> None:
    _open(app, "overview")
    app.number_input(key="a_price_per_gb_day").set_value(0.2).run()
    app.switch_page("views/storage.py").run()
    assert not app.exception
    assert metrics(app)["Storage spend"] == "$0.90"
    assert app.number_input(key="a_price_per_gb_day").value == 0.2


_WRITER = """
import sys, time
from collector.record import RunRecord
from collector.store import Writer
w = Writer(sys.argv[1], flush_interval=0.02)
i = 0
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    w.submit(RunRecord(run_id=f"live_{i}", api="chat", model="gpt-4o-mini", status="completed",
                       started_at=1_793_534_400.0 + i, input_tokens=100, output_tokens=10, streams=1))
    i += 1
    time.sleep(0.002)
w.close()
print(i)
"""


def test_pages_read_while_another_process_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    db = tmp_path / "live.duckdb"
    build_store(db)
    monkeypatch.setenv("RUNMETER_DB", str(db))
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(db), "4"], stdout=subprocess.PIPE,
                              text=True)
    try:
        at = AppTest.from_file(str(APP), default_timeout=60)
        seen = []
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            at.run()
            assert not at.exception, [e.value for e in at.exception]
            assert not at.warning or "usage not recorded" in at.warning[0].value
            seen.append(int(metrics(at)["Runs"].replace(",", "")))
    finally:
        out, _ = writer.communicate(timeout=30)
    written = int(out.strip())
    assert writer.returncode == 0 and written > 0
    assert seen[0] >= 340 and seen[-1] > seen[0], seen  # new runs show up on the next rerun
    at.run()
    assert metrics(at)["Runs"] == f"{340 + written:,}"


# ---------------------------------------------------------------------------------------- the command

def test_dashboard_command_binds_loopback_and_rejects_a_bad_port(capsys: pytest.CaptureFixture[str]) -> None:
    from collector.cli import build_parser, main

    args = build_parser().parse_args(["dashboard"])
    assert (args.host, args.port, args.db) == ("127.0.0.1", 8501, "runmeter.duckdb")
    cmd = command.streamlit_command(APP, args.host, 8501)
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert cmd[cmd.index("run") + 1] == str(APP) and APP.name == "app.py"
    assert main(["dashboard", "--port", "70000"]) == 2
    assert "--port 70000 is not a port number" in capsys.readouterr().err
    assert 0 < command.free_port("127.0.0.1") < 65536


def test_reconciliation_with_an_admin_key_reads_the_bill(store: Path, sim: object,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from collector.simulator import Simulator

    assert isinstance(sim, Simulator)
    monkeypatch.setenv("RUNMETER_DB", str(store))
    monkeypatch.setenv("OPENAI_ADMIN_KEY", "sk-admin-test")
    monkeypatch.setenv("OPENAI_BASE_URL", sim.base_url)
    at = _open(AppTest.from_file(str(APP), default_timeout=60), "reconciliation")
    assert not at.info, [i.value for i in at.info]
    m = metrics(at)
    assert m["Billed"].startswith("$")
    days = at.dataframe[0].value
    assert {"billed_usd", "drift_usd"} <= set(days.columns)
