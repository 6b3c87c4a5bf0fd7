"""Reconciliation against the simulator's organization Costs and Usage APIs, with a real store.

A deterministic workload runs through an instrumented SDK client on three simulated days (the
simulator's logical clock jumps a day between them); vector stores exist so storage is billed, and the
storage poller (on the simulator's clock) snapshots them into ``vector_store_snapshots``. runmeter stamps
runs with the machine's wall clock, so the test's sink moves each record onto the simulator's clock (the
two clocks differ by a fixed offset plus the few milliseconds of simulated latency) before handing it to
the real writer.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import openai
import pytest

from analysis.cost import METERS, price_record, run_costs, utc_day
from analysis.cost_by import DimensionError, price_groups
from analysis.prices import builtin_price_table
from analysis.reconcile import (
    LINE_FILE_SEARCH,
    LINE_STORAGE,
    Bill,
    BilledCost,
    BilledTokens,
    DayContext,
    Reconciliation,
    explain,
    model_key,
    reconcile,
    recorded_from_store,
    split_line_item,
)
from analysis.storage import StorageAssumptions
from collector import cli
from collector.instrument import instrument, uninstrument
from collector.reconcile_client import BillFetcher, ReconcileError, admin_client
from collector.record import Api, RunRecord
from collector.simulator import Simulator
from collector.simulator.organization import storage_bill
from collector.storage_poller import SnapshotRow, StoragePoller, StoreSink
from collector.store.writer import Writer
from collector.workload import QUESTIONS
from collector.workload import setup as workload_setup

EPOCH = 1_764_000_000  # 2025-11-24 16:00:00 UTC
DAY0 = date(2025, 11, 24)
DAYS = 3
ADMIN_KEY = "sk-admin-test"


@dataclass
class World:
    """The recorded workload: simulator, store and the days it spans."""

    sim: Simulator
    db: Path
    start: date
    end: date
    unseen_day: date
    """A day on which only an un-instrumented client ran."""


class _Collect:
    """A snapshot sink holding rows until the run writer has let go of the store (same process)."""

    def __init__(self) -> None:
        self.rows: list[SnapshotRow] = []

    def write(self, rows: Sequence[SnapshotRow]) -> str:
        self.rows.extend(rows)
        return "stored"

    def live_store_ids(self) -> set[str]:
        return {r.vector_store_id for r in self.rows if r.status != "deleted"}


def _day_runs(client: openai.OpenAI, vector_store_id: str, assistant_id: str, i: int) -> None:
    """One Assistants run with file_search, one Responses file_search and one Chat stream with usage."""
    thread = client.beta.threads.create(messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}])
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant_id) as stream:
        stream.until_done()
    with client.responses.stream(
        model="gpt-4.1-mini", input=QUESTIONS[(i + 1) % len(QUESTIONS)],
        tools=[{"type": "file_search", "vector_store_ids": [vector_store_id], "max_num_results": 8}],
    ) as rstream:
        rstream.get_final_response()
    chat = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": QUESTIONS[(i + 2) % len(QUESTIONS)]}],
        stream=True, stream_options={"include_usage": True})
    for _ in chat:
        pass


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    db = tmp_path_factory.mktemp("reconcile") / "runmeter.duckdb"
    with Simulator(seed=11, epoch=EPOCH, latency="fast") as sim:
        writer = Writer(db, flush_interval=0.05, install_signal_handlers=False)

        def sink(record: RunRecord) -> None:
            # runmeter stamps the machine's wall clock; move the record onto the simulator's clock
            offset = sim.world.clock.now() - time.time()
            for name in ("started_at", "first_token_at", "completed_at"):
                value = getattr(record, name)
                if value is not None:
                    setattr(record, name, value + offset)
            writer.submit(record)

        plain = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
        client = instrument(openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0), sink)
        collected = _Collect()
        poller = StoragePoller(plain, collected, clock=sim.world.clock.now)
        try:
            fx = workload_setup(client, seed=11, n_documents=4)
            poller.poll_once()
            for i in range(DAYS):
                if i:
                    sim.world.clock.advance(86_400)
                if i == 1:  # a second store appears on the second day
                    f = plain.files.create(file=("extra.txt", ("Extra policy text. " * 400).encode()),
                                           purpose="assistants")
                    vs = plain.vector_stores.create(name="extra", file_ids=[f.id])
                    plain.vector_stores.files.poll(f.id, vector_store_id=vs.id, poll_interval_ms=10)
                _day_runs(client, fx.vector_store_id, fx.assistants[10], i)
                poller.poll_once()
            # a day on which only an un-instrumented client (another app) ran
            sim.world.clock.advance(86_400)
            plain.chat.completions.create(model="gpt-4.1-nano", messages=[{"role": "user", "content": "hi"}])
            poller.poll_once()
        finally:
            uninstrument(client)
            client.close()
            plain.close()
            writer.close()
        assert StoreSink(db).write(collected.rows) == "stored"
        yield World(sim, db, DAY0, DAY0 + timedelta(days=DAYS), DAY0 + timedelta(days=DAYS))


@pytest.fixture
def admin(world: World) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=world.sim.base_url, admin_api_key=ADMIN_KEY, api_key=ADMIN_KEY, max_retries=0)
    yield c
    c.close()


def _reconcile(world: World, admin: openai.OpenAI, start: date, end: date,
               page_limit: int | None = None) -> Reconciliation:
    table = builtin_price_table()
    con = duckdb.connect(str(world.db), read_only=True)
    try:
        recorded = recorded_from_store(con, table, start, end)
    finally:
        con.close()
    bill = BillFetcher(admin, page_limit=page_limit).fetch(start, end)
    return reconcile(recorded, bill, table, start, end)


# ------------------------------------------------------------------------------------ end to end

def test_tokens_and_calls_match_exactly(world: World, admin: openai.OpenAI) -> None:
    rec = _reconcile(world, admin, world.start, world.end)
    tokens = [c for c in rec.counts if c.measure != "file_search_calls"]
    assert {c.day for c in tokens} == {world.start + timedelta(days=i) for i in range(DAYS)}
    assert {c.model for c in tokens} == {"gpt-4o", "gpt-4.1-mini", "gpt-4o-mini"}
    assert [c for c in rec.counts if c.drift != 0] == []
    assert all(c.explanation == "" for c in rec.counts)
    by_key = {(c.day, c.model, c.measure): c for c in rec.counts}
    # Assistants: a file_search run is two model steps (tool-call step + message step)
    assert by_key[(world.start, "gpt-4o", "num_model_requests")].billed == 2
    assert by_key[(world.start, "gpt-4.1-mini", "num_model_requests")].billed == 1
    assert by_key[(world.start, "gpt-4o", "input_tokens")].billed > 1000
    assert by_key[(world.start, "gpt-4.1-mini", "cached_input_tokens")].billed >= 0
    # only the Responses search bills per call: one a day
    calls = [c for c in rec.counts if c.measure == "file_search_calls"]
    assert [(c.recorded, c.billed) for c in calls] == [(1, 1)] * DAYS
    # the ledger agrees with the bill
    ledger_input = sum(e.input_tokens for e in world.sim.ledger.usage
                       if datetime.fromtimestamp(e.at, UTC).date() == world.start)
    billed_input = sum(c.billed for c in tokens if c.day == world.start and c.measure == "input_tokens")
    assert billed_input == ledger_input


def test_costs_match_per_line_item(world: World, admin: openai.OpenAI) -> None:
    rec = _reconcile(world, admin, world.start, world.end)
    lines = {(c.day, c.line_item): c for c in rec.costs}
    day1 = world.start + timedelta(days=1)
    assert {ln for d, ln in lines if d == day1} >= {
        "gpt-4o, input", "gpt-4o, output", "gpt-4.1-mini, input", "gpt-4.1-mini, output",
        "gpt-4o-mini, input", "gpt-4o-mini, output", LINE_FILE_SEARCH, LINE_STORAGE}
    assert lines[(day1, "gpt-4o, output")].billed_as == ("gpt-4o-2024-08-06, output",)
    assert lines[(day1, LINE_FILE_SEARCH)].billed_usd == pytest.approx(0.0025)
    mismatched = [c for c in rec.costs if not c.matches]
    assert mismatched == []
    assert all(c.explanation == "" for c in rec.costs)
    assert sum(c.billed_usd or 0 for c in rec.costs) > 0.01


def test_storage_within_one_percent(world: World, admin: openai.OpenAI) -> None:
    rec = _reconcile(world, admin, world.start, world.end)
    assert [s.day for s in rec.storage] == [world.start + timedelta(days=i) for i in range(DAYS)]
    for s in rec.storage:
        assert s.recorded_gib_hours is not None and s.recorded_gib_hours > 0
        assert s.drift_pct is not None and abs(s.drift_pct) <= 1.0, s
        assert s.billed_mean_bytes is not None and s.billed_mean_bytes > 0
        # far below the free GiB: nothing to pay on either side
        assert s.recorded_usd == 0 and s.billed_usd == 0
    day0, day1 = rec.storage[0], rec.storage[1]
    # the first day holds the store from 16:00 (8 h), the second all day plus a second store
    assert day1.billed_gib_hours is not None and day0.billed_gib_hours is not None
    assert day1.billed_gib_hours > 3 * day0.billed_gib_hours


def test_three_percent_adjustment_shows_exactly_there(world: World, admin: openai.OpenAI) -> None:
    day1 = world.start + timedelta(days=1)
    adjustment = {"day": day1.isoformat(), "line_item": "gpt-4o-2024-08-06, output", "factor": 1.03}
    world.sim.ledger.adjustments.append(adjustment)
    try:
        rec = _reconcile(world, admin, world.start, world.end)
    finally:
        world.sim.ledger.adjustments.remove(adjustment)
    drifting = [c for c in rec.costs if not c.matches]
    assert [(c.day, c.line_item) for c in drifting] == [(day1, "gpt-4o, output")]
    row = drifting[0]
    assert row.drift_pct == pytest.approx(3.0, abs=1e-9)
    assert row.recorded_usd is not None and row.drift_usd == pytest.approx(0.03 * row.recorded_usd, rel=1e-9)
    assert row.explanation == "unexplained"
    assert [c for c in rec.counts if c.drift] == []  # the usage endpoints are not what changed


def test_run_not_seen_by_runmeter_is_explained(world: World, admin: openai.OpenAI) -> None:
    day = world.unseen_day
    rec = _reconcile(world, admin, day, day + timedelta(days=1))
    tokens = [c for c in rec.counts if c.measure == "input_tokens"]
    assert len(tokens) == 1 and tokens[0].model == "gpt-4.1-nano"
    assert tokens[0].recorded == 0 and tokens[0].billed > 0
    assert tokens[0].explanation.startswith("runs not seen by runmeter: no runs recorded this day")
    cost = next(c for c in rec.costs if c.line_item == "gpt-4.1-nano, input")
    assert cost.recorded_usd == 0 and cost.billed_usd is not None and cost.billed_usd > 0
    assert "runs not seen by runmeter" in cost.explanation


def test_client_follows_next_page_to_the_end(world: World, admin: openai.OpenAI) -> None:
    fetcher = BillFetcher(admin, page_limit=1)
    paged = fetcher.fetch(world.start, world.end)
    assert fetcher.pages_fetched == 4 * DAYS  # four endpoints, one daily bucket per page
    whole = BillFetcher(admin).fetch(world.start, world.end)
    assert sorted(paged.costs, key=repr) == sorted(whole.costs, key=repr)
    assert paged.tokens == whole.tokens and paged.file_search_calls == whole.file_search_calls
    assert {c.day for c in paged.costs} == {world.start + timedelta(days=i) for i in range(DAYS)}
    raw = admin.admin.organization.usage.costs(start_time=int(datetime(2025, 11, 24, tzinfo=UTC).timestamp()),
                                               end_time=int(datetime(2025, 11, 27, tzinfo=UTC).timestamp()),
                                               limit=2)
    assert (len(raw.data), raw.has_more, raw.object) == (2, True, "page")
    assert raw.next_page is not None
    last = admin.admin.organization.usage.costs(start_time=raw.data[0].start_time,
                                                end_time=raw.data[-1].end_time + 86_400, limit=2,
                                                page=raw.next_page)
    assert (len(last.data), last.has_more, last.next_page) == (1, False, None)
    assert last.data[0].start_time == raw.data[-1].end_time


# ---------------------------------------------------------------------------------- wire shapes

def _get(world: World, path: str, key: str = ADMIN_KEY) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(world.sim.base_url + path, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


@pytest.mark.parametrize(("path", "param"), [
    ("/organization/costs?start_time=1764000000&bucket_width=1h", "bucket_width"),
    ("/organization/costs?start_time=1764000000&limit=181", "limit"),
    ("/organization/costs?start_time=1764000000&limit=0", "limit"),
    ("/organization/usage/completions?start_time=1764000000&limit=32", "limit"),
    ("/organization/usage/completions?start_time=1764000000&bucket_width=1w", "bucket_width"),
    ("/organization/usage/file_search_calls?bucket_width=1d", "start_time"),
    ("/organization/costs?start_time=1764000000&group_by[]=model", "group_by"),
    ("/organization/costs?start_time=1764000000&page=page_bogus", "page"),
])
def test_bad_parameters_get_the_api_400(world: World, path: str, param: str) -> None:
    status, body = _get(world, path)
    assert status == 400
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["param"] == param


def test_result_shapes(world: World) -> None:
    start = int(datetime(2025, 11, 25, tzinfo=UTC).timestamp())
    status, page = _get(world, f"/organization/usage/completions?start_time={start}&end_time={start + 86400}"
                               "&group_by[]=model&group_by[]=project_id")
    assert status == 200 and page["object"] == "page" and page["has_more"] is False
    bucket = page["data"][0]
    assert (bucket["object"], bucket["start_time"], bucket["end_time"]) == ("bucket", start, start + 86400)
    result = next(r for r in bucket["results"] if r["model"] == "gpt-4o-2024-08-06")
    assert result["object"] == "organization.usage.completions.result"
    assert result["project_id"] == "proj_runmeter_sim" and result["num_model_requests"] == 2
    assert result["input_tokens"] == result["input_uncached_tokens"] + result["input_cached_tokens"]
    window = f"start_time={start}&end_time={start + 86400}"
    _, fs = _get(world, f"/organization/usage/file_search_calls?{window}")
    assert fs["data"][0]["results"] == [{
        "object": "organization.usage.file_searches.result", "num_requests": 1, "project_id": None,
        "user_id": None, "api_key_id": None, "vector_store_id": None}]
    _, costs = _get(world, f"/organization/costs?{window}&group_by[]=line_item")
    storage = next(r for r in costs["data"][0]["results"] if r["line_item"] == LINE_STORAGE)
    assert storage["quantity_unit"] == "gibibyte_hours"
    assert storage["amount"] == {"value": 0.0, "currency": "usd"}
    _, total = _get(world, f"/organization/costs?{window}")
    [only] = total["data"][0]["results"]
    by_item = sum(r["amount"]["value"] for r in costs["data"][0]["results"])
    assert only["line_item"] is None and only["amount"]["value"] == pytest.approx(by_item, rel=1e-12)


def test_missing_bearer_is_401(world: World) -> None:
    req = urllib.request.Request(world.sim.base_url + "/organization/costs?start_time=1764000000")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    with info.value:
        assert info.value.code == 401


# --------------------------------------------------------------------------------------------- CLI

def test_cli_json(world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OPENAI_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", world.sim.base_url)
    code = cli.main(["reconcile", "--db", str(world.db), "--start", world.start.isoformat(),
                     "--end", (world.end - timedelta(days=1)).isoformat(), "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["start"], out["end"]) == (world.start.isoformat(), world.end.isoformat())
    assert out["costs"] and all(c["explanation"] == "" for c in out["costs"])
    assert all(c["drift"] == 0 for c in out["counts"])


def test_cli_tables(world: World, monkeypatch: pytest.MonkeyPatch,
                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OPENAI_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", world.sim.base_url)
    code = cli.main(["reconcile", "--db", str(world.db), "--start", world.start.isoformat(),
                     "--end", (world.end - timedelta(days=1)).isoformat()])
    text = capsys.readouterr().out
    assert code == 0
    assert "Costs by day and line item" in text and "gpt-4o, output" in text
    assert "Vector-store storage" in text and "All lines match." in text


def test_cli_missing_admin_key_is_one_line(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["reconcile", "--db", str(world.db)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "OPENAI_ADMIN_KEY is not set" in err


def test_cli_missing_store_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OPENAI_ADMIN_KEY", ADMIN_KEY)
    code = cli.main(["reconcile", "--db", str(tmp_path / "none.duckdb")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no runmeter store" in err


def test_unreachable_api_is_a_clear_error() -> None:
    client = admin_client({"OPENAI_ADMIN_KEY": ADMIN_KEY, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    client = client.with_options(max_retries=0, timeout=2)
    with pytest.raises(ReconcileError, match="cannot reach the organization API"):
        BillFetcher(client).fetch(DAY0, DAY0 + timedelta(days=1))


# -------------------------------------------------------------------------------------------- pure

def test_split_line_item() -> None:
    assert split_line_item("gpt-4o-2024-08-06, cached input") == ("gpt-4o-2024-08-06", "cached input")
    assert split_line_item("file search tool calls") == (None, "file search tool calls")


def test_explanations_name_known_causes() -> None:
    quiet = DayContext()
    assert explain(quiet, quiet, 1.0, 1.0, matched=True) == ""
    assert explain(quiet, quiet, 0, 5.0, matched=False).startswith("runs not seen by runmeter")
    busy = DayContext(runs=4, interrupted_without_usage=2)
    assert "2 interrupted run(s) without usage: billed but unseen" in explain(busy, busy, 3.0, 5.0,
                                                                                matched=False)
    silent = DayContext(runs=3, without_usage=1)
    assert "1 run(s) recorded without usage" in explain(silent, silent, 3.0, 5.0, matched=False)
    unpriced = DayContext(runs=1, unpriced_reason="no price for model 'gpt-9'")
    assert explain(unpriced, unpriced, None, 2.0, matched=False).startswith("unpriced in runmeter")
    assert "not on the bill" in explain(DayContext(runs=1), DayContext(runs=1), 2.0, None, matched=False)


def test_reconcile_unpriced_model_and_missing_bill_line() -> None:
    day = DAY0
    from analysis.reconcile import Recorded

    rec = Recorded(costs={(day, "gpt-9, input"): None, (day, "gpt-4o, input"): 0.5},
                   tokens={}, file_search_calls={}, storage_gib_hours={}, storage_usd={},
                   context={(day, None): DayContext(runs=2),
                            (day, "gpt-9"): DayContext(runs=1, unpriced_reason="model 'gpt-9' has no price"),
                            (day, "gpt-4o"): DayContext(runs=1)})
    bill = Bill(costs=(BilledCost(day, "gpt-9-2030-01-01, input", 1.0, 100, "tokens"),))
    out = {c.line_item: c for c in reconcile(rec, bill, builtin_price_table(), day, day).costs}
    assert set(out) == {"gpt-9, input", "gpt-4o, input"}
    assert out["gpt-9, input"].billed_as == ("gpt-9-2030-01-01, input",)
    assert out["gpt-9, input"].recorded_usd is None and out["gpt-9, input"].billed_usd == 1.0
    assert out["gpt-9, input"].explanation.startswith("unpriced in runmeter")
    assert out["gpt-4o, input"].billed_usd is None
    assert "not on the bill" in out["gpt-4o, input"].explanation


def test_interrupted_runs_in_the_store_explain_the_gap(tmp_path: Path) -> None:
    """Store side of the explanation: an interrupted run with no usage is billed but unseen."""
    db = tmp_path / "interrupted.duckdb"
    t0 = datetime(2025, 11, 24, 9, tzinfo=UTC).timestamp()
    with Writer(db, install_signal_handlers=False) as writer:
        writer.submit(RunRecord(run_id="run_done", api="assistants", model="gpt-4o", status="completed",
                                started_at=t0, input_tokens=1000, cached_input_tokens=0, output_tokens=50,
                                model_steps=2))
        writer.submit(RunRecord(run_id="run_cut", api="assistants", model="gpt-4o", status="interrupted",
                                started_at=t0 + 60))
    table = builtin_price_table()
    con = duckdb.connect(str(db), read_only=True)
    try:
        recorded = recorded_from_store(con, table, DAY0, DAY0 + timedelta(days=1))
    finally:
        con.close()
    assert recorded.context[(DAY0, "gpt-4o")] == DayContext(runs=2, interrupted_without_usage=1)
    bill = Bill(tokens=(BilledTokens(DAY0, "gpt-4o-2024-08-06", 1900, 0, 90, 4),),
                costs=(BilledCost(DAY0, "gpt-4o-2024-08-06, input", 1900 * 2.5e-6, 1900, "tokens"),))
    out = reconcile(recorded, bill, table, DAY0, DAY0 + timedelta(days=1))
    inputs = next(c for c in out.counts if c.measure == "input_tokens")
    assert (inputs.recorded, inputs.billed, inputs.drift) == (1000, 1900, 900)
    assert inputs.explanation == "1 interrupted run(s) without usage: billed but unseen"
    cost = next(c for c in out.costs if c.line_item == "gpt-4o, input")
    assert cost.recorded_usd == pytest.approx(0.0025) and cost.drift_pct == pytest.approx(90.0)
    assert cost.explanation == "1 interrupted run(s) without usage: billed but unseen"


def test_storage_bill_meters_hours_over_the_free_gib() -> None:
    gib = 2**30
    # 3 GiB for the whole day: 72 GiB-hours, (3 - 1) GiB-days billable at $0.10
    hours, cost = storage_bill([(0.0, 86_400.0, 3 * gib)], 0, 86_400)
    assert (hours, cost) == (72, Decimal("0.2"))
    # 2 GiB for 12 hours: 24 GiB-hours, 12 h x (2 - 1) GiB / 24 = 0.5 GiB-days
    hours, cost = storage_bill([(0.0, 43_200.0, 2 * gib)], 0, 86_400)
    assert (hours, cost) == (24, Decimal("0.05"))


# ------------------------------------------------------------- grouped pricing against per-run pricing

O3_CUT = date(2025, 6, 10)  # o3's price changed on this UTC day: each day must be priced on its own


def _varied_records() -> list[RunRecord]:
    """Runs over three days around the o3 price cut, across models (one unpriced), apis, tiers and statuses,
    with runs missing usage (interrupted, chat without include_usage, output missing) and bad usage."""
    models = ("gpt-4o", "gpt-4o-2024-08-06", "o3", "gpt-4.1-mini", "gpt-9-preview")
    tiers = (None, "default", "", "flex")
    apis: tuple[Api, ...] = ("assistants", "responses", "chat")
    base = datetime(2025, 6, 9, tzinfo=UTC).timestamp()
    out = []
    for i in range(360):
        api = apis[i % 3]
        # spread over 3 days, with some runs in the last second before midnight
        at = base + (i // 2) % 3 * 86_400 + (86_399.5 if i % 17 == 0 else (i * 613) % 86_000)
        inp, cached = 1_000 + (i * 37) % 5_000, (i * 11) % 700
        rec = RunRecord(
            run_id=f"run_{i:04d}", api=api, model=models[i % 5], status="completed", started_at=at,
            input_tokens=inp, cached_input_tokens=cached, cache_write_tokens=(i % 4) * 10,
            output_tokens=50 + (i * 13) % 900, reasoning_tokens=(i % 3) * 20,
            file_search_calls=(i % 4) if api != "chat" else 0, service_tier=tiers[(i // 5) % 4],
            model_steps=2 if api == "assistants" else None)
        if i % 29 == 0:  # interrupted before usage arrived: billed, never seen
            rec.status = "interrupted"
            rec.input_tokens = rec.output_tokens = rec.cached_input_tokens = None
        elif i % 31 == 0:  # a chat stream without include_usage
            rec.input_tokens = rec.output_tokens = rec.cached_input_tokens = None
        elif i % 37 == 0:
            rec.output_tokens = None
        elif models[i % 5] == "gpt-4.1-mini":  # unpriced on one model only: the other lines stay priced
            if i % 7 == 0:
                rec.service_tier = "priority"  # no priority price for gpt-4.1-mini
            elif (i // 5) % 11 == 1:
                rec.cached_input_tokens = inp + 1  # inconsistent
            elif (i // 5) % 11 == 2:
                rec.output_tokens = -5  # negative
        out.append(rec)
    return out


@pytest.fixture(scope="module")
def varied(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[RunRecord]]:
    db = tmp_path_factory.mktemp("varied") / "runmeter.duckdb"
    records = _varied_records()
    with Writer(db, install_signal_handlers=False) as writer:
        for r in records:
            writer.submit(RunRecord(**{f: getattr(r, f) for f in r.__dataclass_fields__}))
    # an API with no file_search call price: only its runs that made calls are unpriced
    # run_0016 (no call) and run_0076 (2 calls) share a day, model, tier and status
    batch = ["run_0007", "run_0010", "run_0013", "run_0016", "run_0076"]
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE runs SET api = 'batch' WHERE list_contains(?, run_id)", [batch])
        con.execute("UPDATE runs SET file_search_calls = 2 WHERE run_id = 'run_0076'")
    for r in records:
        if r.run_id in batch:
            r.api = "batch"  # type: ignore[assignment]
        if r.run_id == "run_0076":
            r.file_search_calls = 2
    return db, records


def _tier(t: str | None) -> str | None:
    return None if t in (None, "", "default") else t


def _reason(text: str | None) -> str:
    """An unpriced reason without the per-run numbers of an inconsistency (a group sums them)."""
    assert text is not None
    return text.split(":")[0] if text.startswith("inconsistent") else text


def test_grouped_pricing_equals_the_per_run_sum(varied: tuple[Path, list[RunRecord]]) -> None:
    db, records = varied
    table = builtin_price_table()
    with duckdb.connect(str(db), read_only=True) as con:
        groups = price_groups(con, table, ["day", "api", "model", "tier", "status"])
    key: tuple[Any, ...]
    per_run: dict[tuple[Any, ...], dict[str, Decimal]] = {}
    unpriced_runs: dict[tuple[Any, ...], int] = {}
    reasons: set[tuple[tuple[Any, ...], str]] = set()
    for r in records:
        key = (utc_day(r.started_at), r.api, r.model, _tier(r.service_tier), r.status)
        cost = price_record(table, r)
        if cost.total is None:
            unpriced_runs[key] = unpriced_runs.get(key, 0) + 1
            reasons.add((key, _reason(cost.reason)))
            continue
        acc = per_run.setdefault(key, dict.fromkeys(METERS, Decimal(0)))
        for m in METERS:
            acc[m] += cost.meters[m]
    grouped: dict[tuple[Any, ...], dict[str, Decimal]] = {}
    grouped_unpriced: dict[tuple[Any, ...], int] = {}
    grouped_reasons: set[tuple[tuple[Any, ...], str]] = set()
    for g in groups:
        key = g.key
        if g.total is None:
            grouped_unpriced[key] = grouped_unpriced.get(key, 0) + g.runs
            grouped_reasons.add((key, _reason(g.reason)))
            continue
        acc = grouped.setdefault(key, dict.fromkeys(METERS, Decimal(0)))
        for m in METERS:
            acc[m] += g.meters[m]
    assert grouped == per_run  # exact Decimals, meter by meter
    assert grouped_unpriced == unpriced_runs and grouped_reasons == reasons
    assert sum(g.runs for g in groups) == len(records)
    # the store does exercise what it is meant to
    reason_text = {reason for _k, reason in reasons}
    assert {"usage not recorded (input_tokens missing)", "usage not recorded (output_tokens missing)",
            "negative usage: output_tokens", "inconsistent usage",
            "file_search call price unknown for api 'batch'"} <= reason_text
    assert any("gpt-9-preview" in reason for reason in reason_text)
    assert any("'priority'" in reason for reason in reason_text)
    o3 = {k[0]: v for k, v in per_run.items() if k[2] == "o3"}
    assert O3_CUT - timedelta(days=1) in o3 and O3_CUT in o3  # both o3 prices are in play
    # a batch run without calls stays priced next to its unpriced siblings
    assert any(k[1] == "batch" for k in per_run) and any(k[1] == "batch" for k in unpriced_runs)


def test_grouped_pricing_filters_and_counts_model_requests(varied: tuple[Path, list[RunRecord]]) -> None:
    db, records = varied
    table = builtin_price_table()
    day = date(2025, 6, 10)
    with duckdb.connect(str(db), read_only=True) as con:
        groups = price_groups(con, table, ["day", "model"], since=day, until=day + timedelta(days=1),
                              where="status = 'completed'", model_requests=True)
        with pytest.raises(DimensionError, match="'colour' is not a dimension"):
            price_groups(con, table, ["api", "colour"])
    runs: dict[tuple[Any, ...], int] = {}
    steps: dict[tuple[Any, ...], int] = {}
    total = Decimal(0)
    for r in records:
        if r.status != "completed" or utc_day(r.started_at) != day:
            continue
        key = (day, r.model)
        runs[key] = runs.get(key, 0) + 1
        steps[key] = steps.get(key, 0) + (r.model_steps or 1)
        total += price_record(table, r).total or Decimal(0)
    got_runs: dict[tuple[Any, ...], int] = {}
    got_steps: dict[tuple[Any, ...], int] = {}
    for g in groups:
        got_runs[g.key] = got_runs.get(g.key, 0) + g.runs
        got_steps[g.key] = got_steps.get(g.key, 0) + (g.model_requests or 0)
    assert got_runs == runs and got_steps == steps
    assert sum(steps.values()) > sum(runs.values())  # assistants runs take two model steps
    assert sum(g.total or Decimal(0) for g in groups) == total
    assert sum(runs.values()) < sum(1 for r in records if utc_day(r.started_at) == day)  # the filter bit


def test_grouped_pricing_by_any_tag_key(tmp_path: Path) -> None:
    db = tmp_path / "tags.duckdb"
    at = datetime(2025, 6, 9, 12, tzinfo=UTC).timestamp()
    records = [RunRecord(run_id=f"t{i}", api="responses", model="gpt-4o", status="completed", started_at=at,
                         input_tokens=1000 * (i + 1), output_tokens=10, file_search_calls=i % 2,
                         tags={"team's": "a'b"} if i < 2 else {})
               for i in range(3)]
    with Writer(db, install_signal_handlers=False) as writer:
        for r in records:
            writer.submit(r)
    table = builtin_price_table()
    with duckdb.connect(str(db), read_only=True) as con:
        groups = price_groups(con, table, ["tag:team's"], no_tag="(untagged)")
    got = {g.key: (g.runs, g.total) for g in groups}
    assert got == {("a'b",): (2, sum((price_record(table, r).total or Decimal(0)) for r in records[:2])),
                   ("(untagged)",): (1, price_record(table, records[2]).total)}
    # input at $2.50 and output at $10 per 1M, a call at $2.50 per 1,000 (input/output/calls):
    # t0 1000/10/0 = 0.0026, t1 2000/10/1 = 0.0076, t2 3000/10/0 = 0.0076
    assert got[("a'b",)][1] == Decimal("0.0102") and got[("(untagged)",)][1] == Decimal("0.0076")


def test_recorded_costs_are_the_per_run_costs_summed(varied: tuple[Path, list[RunRecord]]) -> None:
    db, records = varied
    table = builtin_price_table()
    start, end = date(2025, 6, 9), date(2025, 6, 12)
    with duckdb.connect(str(db), read_only=True) as con:
        rec = recorded_from_store(con, table, start, end)
        frame = run_costs(con, table)
    # oracle: each run priced alone (Decimal), runs without usage left out, an unpriced run unprices its lines
    lines: dict[tuple[date, str], Decimal | None] = {}
    meter_line = {"input": "input", "cache_write": "input", "cached_input": "cached input",
                  "output": "output"}
    for r in records:
        if r.input_tokens is None or r.output_tokens is None:
            continue
        cost, day = price_record(table, r), utc_day(r.started_at)
        assert day is not None
        name = model_key(table, r.model)
        if cost.total is None:
            for meter in ("input", "cached input", "output"):
                lines[(day, f"{name}, {meter}")] = None
            continue
        for m, line_meter in meter_line.items():
            key = (day, f"{name}, {line_meter}")
            if cost.meters[m] and (key not in lines or lines[key] is not None):
                lines[key] = (lines.get(key) or Decimal(0)) + cost.meters[m]
        if cost.meters["file_search_calls"]:
            key = (day, LINE_FILE_SEARCH)
            lines[key] = (lines.get(key) or Decimal(0)) + cost.meters["file_search_calls"]
    assert rec.costs == {k: None if v is None else float(v) for k, v in lines.items()}
    assert (start, "gpt-9-preview, input") in rec.costs and rec.costs[(start, "gpt-9-preview, input")] is None
    # and the float per-run path (run_costs, what this used to sum) agrees to float noise on every line
    floats: dict[tuple[date, str], float] = {}
    for row in frame.filter(frame["total_usd"].is_not_null()).iter_rows(named=True):
        name = model_key(table, row["model"])
        for column, line_meter in (("input_usd", "input"), ("cache_write_usd", "input"),
                                   ("cached_input_usd", "cached input"), ("output_usd", "output")):
            key = (row["started_at"].date(), f"{name}, {line_meter}")
            floats[key] = floats.get(key, 0.0) + row[column]
    priced = {k: v for k, v in rec.costs.items() if v is not None and k[1] != LINE_FILE_SEARCH}
    assert len(priced) > 10
    assert priced == pytest.approx({k: floats[k] for k in priced}, rel=1e-12)
    # tokens and context from the same groups
    interrupted = sum(1 for r in records if r.status == "interrupted")
    assert sum(c.interrupted_without_usage for (d, m), c in rec.context.items() if m is None) == interrupted
    assert sum(c.runs for (d, m), c in rec.context.items() if m is None) == len(records)
    with_input = [r for r in records if r.input_tokens is not None]
    assert sum(t["input_tokens"] for t in rec.tokens.values()) == sum(r.input_tokens or 0 for r in with_input)
    assert sum(t["num_model_requests"] for t in rec.tokens.values()) == sum(
        r.model_steps or 1 for r in with_input)
    unpriced = rec.context[(start, "gpt-9-preview")].unpriced_reason
    assert unpriced == "model 'gpt-9-preview' is not in the price table"
    responses_calls = sum(r.file_search_calls or 0 for r in records if r.api == "responses")
    assert sum(rec.file_search_calls.values()) == responses_calls


# ------------------------------------------------------------------------------ storage assumptions

STORAGE_DAY = date(2025, 6, 9)


def _storage_store(path: Path) -> None:
    """2 GiB from 00:00 to 12:00, then the store is emptied (the last snapshot); one priced run."""
    with Writer(path, install_signal_handlers=False) as writer:
        writer.submit(RunRecord(run_id="run_1", api="chat", model="gpt-4o", status="completed",
                                started_at=datetime(2025, 6, 9, 8, tzinfo=UTC).timestamp(), input_tokens=1000,
                                cached_input_tokens=0, output_tokens=100))
    t0 = datetime(2025, 6, 9, tzinfo=UTC).timestamp()
    rows = [SnapshotRow(vector_store_id="vs_1", observed_at=t0, usage_bytes=2 * 2**30, status="completed"),
            SnapshotRow(vector_store_id="vs_1", observed_at=t0 + 43_200, usage_bytes=0, status="completed")]
    assert StoreSink(path).write(rows) == "stored"


@pytest.fixture(scope="module")
def storage_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("storage") / "runmeter.duckdb"
    _storage_store(db)
    return db


@pytest.mark.parametrize(("assumptions", "usd"), [
    (None, 0.0),  # the defaults: 1 GiB free off the day's mean (1 GiB): nothing to pay
    (StorageAssumptions(free_per="hour"), 0.05),  # 12 h x (2 - 1) GiB / 24 at $0.10
    (StorageAssumptions(Decimal("0.2"), free_per="hour"), 0.10),
    (StorageAssumptions(free_gb=Decimal(0)), 0.10),  # 1 GiB-day, nothing free
    (StorageAssumptions(free_gb=Decimal(0), unit="GB"), 0.1 * 2**31 / 2 / 1e9),  # 10^9-byte GB
])
def test_storage_cost_follows_the_assumptions(storage_db: Path, assumptions: StorageAssumptions | None,
                                              usd: float) -> None:
    with duckdb.connect(str(storage_db), read_only=True) as con:
        rec = recorded_from_store(con, builtin_price_table(), STORAGE_DAY, STORAGE_DAY + timedelta(days=1),
                                  assumptions)
    assert rec.storage_usd[STORAGE_DAY] == pytest.approx(usd, rel=1e-12, abs=1e-15)
    assert rec.storage_gib_hours == {STORAGE_DAY: 24.0}  # always 2^30-byte hours, as billed
    assert rec.storage_assumptions == (assumptions or StorageAssumptions())


def test_storage_drift_names_the_assumptions(storage_db: Path) -> None:
    gib_hours, billed = storage_bill([(0.0, 43_200.0, 2 * 2**30)], 0, 86_400)  # the simulator's meter
    bill = Bill(costs=(BilledCost(STORAGE_DAY, LINE_STORAGE, float(billed), float(gib_hours),
                                  "gibibyte_hours"),))
    table = builtin_price_table()
    end = STORAGE_DAY + timedelta(days=1)
    with duckdb.connect(str(storage_db), read_only=True) as con:
        daily = recorded_from_store(con, table, STORAGE_DAY, end)
        hourly = recorded_from_store(con, table, STORAGE_DAY, end, StorageAssumptions(free_per="hour"))
    by_day = next(c for c in reconcile(daily, bill, table, STORAGE_DAY, end).costs
                  if c.line_item == LINE_STORAGE)
    assert (by_day.recorded_usd, by_day.billed_usd) == (0.0, 0.05)
    assert "recorded storage assumes $0.10 per GiB-day, 1 GiB free per day" in by_day.explanation
    assert "may apply per hour" in by_day.explanation
    by_hour = next(c for c in reconcile(hourly, bill, table, STORAGE_DAY, end).costs
                   if c.line_item == LINE_STORAGE)
    assert by_hour.matches and by_hour.explanation == ""
    [row] = reconcile(hourly, bill, table, STORAGE_DAY, end).storage
    assert (row.recorded_gib_hours, row.billed_gib_hours, row.drift_pct) == (24.0, 24.0, 0.0)


def test_cli_takes_the_storage_flags(world: World, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OPENAI_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", world.sim.base_url)
    argv = ["reconcile", "--db", str(world.db), "--start", world.start.isoformat(),
            "--end", world.start.isoformat(), "--json"]
    assert cli.main(argv) == 0
    default = json.loads(capsys.readouterr().out)
    assert default["storage_assumptions"] == {"price_per_gb_day": 0.1, "free_gb": 1.0, "unit": "GiB",
                                              "bytes_per_gb": 2**30, "free_per": "day"}
    assert cli.main([*argv, "--free-gb", "0", "--price-per-gb-day", "0.2", "--free-per", "hour"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["storage_assumptions"] == {"price_per_gb_day": 0.2, "free_gb": 0.0, "unit": "GiB",
                                          "bytes_per_gb": 2**30, "free_per": "hour"}
    [storage] = out["storage"]
    [line] = [c for c in out["costs"] if c["line_item"] == LINE_STORAGE]
    # nothing free: every GiB-hour costs $0.20 / 24, and the bill (1 GiB free) says $0
    assert line["recorded_usd"] == pytest.approx(storage["recorded_gib_hours"] * 0.2 / 24, rel=1e-9)
    assert line["billed_usd"] == 0 and "recorded storage assumes $0.2 per GiB-day" in line["explanation"]
    monkeypatch.setenv("RUNMETER_STORAGE_FREE_PER", "hour")
    assert cli.main(argv[:-1]) == 0
    assert "first 1 GiB free per hour" in capsys.readouterr().out


def test_cli_bad_storage_flag_is_one_line(world: World, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OPENAI_ADMIN_KEY", ADMIN_KEY)
    assert cli.main(["reconcile", "--db", str(world.db), "--free-per", "week"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--free-per 'week' must be one of day, hour" in err


def test_dashboard_page_uses_the_sidebar_storage_assumptions(storage_db: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    from collector.commands.dashboard import app_path

    monkeypatch.setenv("RUNMETER_DB", str(storage_db))
    monkeypatch.delenv("OPENAI_ADMIN_KEY", raising=False)
    at = AppTest.from_file(str(app_path()), default_timeout=60)
    at.run()
    at.switch_page("views/reconciliation.py").run()
    assert not at.exception
    run_usd = 1000 * 2.5e-6 + 100 * 10e-6

    def recorded() -> str:
        return next(m.value for m in at.metric if m.label == "Recorded")

    assert recorded() == f"${run_usd:,.2f}"  # 1 GiB free per day: storage costs nothing
    at.selectbox(key="a_free_per").set_value("hour").run()
    at.number_input(key="a_price_per_gb_day").set_value(1.0).run()
    assert not at.exception
    assert recorded() == f"${run_usd + 0.5:,.2f}"  # 0.5 GiB-days over the free GiB at $1
    assert "$1.0 per GiB per day, the first 1.0 GiB free per hour" in at.caption[0].value
