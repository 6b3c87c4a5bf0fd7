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
    reconcile,
    recorded_from_store,
    split_line_item,
)
from collector import cli
from collector.instrument import instrument, uninstrument
from collector.reconcile_client import BillFetcher, ReconcileError, admin_client
from collector.record import RunRecord
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
