"""``runmeter storage …`` end to end: the simulator's stores polled over days into DuckDB, then the CLI.

Every figure is checked against a hand computation from the simulator's own billing ledger
(``sim.ledger.storage``: each store's billed bytes from the moment they changed), not against runmeter's code.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import duckdb
import openai
import pytest

from collector.cli import main
from collector.simulator import Simulator
from collector.storage_poller import StoragePoller, StoreSink

EPOCH = 1_764_000_000  # 2025-11-24 16:00:00 UTC
STEP = 6 * 3600
STEPS = 24  # six days
GIB = 2**30
DAY = 86_400


@dataclass
class World:
    """The polled history: two stores (one and two pollers), the ledger, and the named stores."""

    one: Path
    two: Path
    ledger: list[Any]
    until: float
    ids: dict[str, str]
    bytes: dict[str, int]


def _store(client: openai.OpenAI, name: str, words: int, **kw: Any) -> str:
    vs = client.vector_stores.create(name=name, **kw)
    _add_file(client, vs.id, name, words)
    return vs.id


def _add_file(client: openai.OpenAI, vs_id: str, name: str, words: int) -> None:
    text = " ".join(f"{name}-w{i % 97}" for i in range(words))
    client.vector_stores.files.upload_and_poll(vector_store_id=vs_id, file=(f"{name}.txt", text.encode()))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Six days of stores: A grows and stays active, B expires after 2 idle days, C is deleted on day 3,
    D appears on day 2 and stays active, E sits idle. Every change is polled at the instant it happens."""
    base = tmp_path_factory.mktemp("storage")
    one, two = base / "one.duckdb", base / "two.duckdb"
    with Simulator(seed=5, epoch=EPOCH, latency="none") as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
        clock = sim.world.clock
        ids = {
            "A": _store(client, "A", 4000),
            "B": _store(client, "B", 1500, expires_after={"anchor": "last_active_at", "days": 2}),
            "C": _store(client, "C", 2500),
            "E": _store(client, "E", 1000),
        }
        p1 = StoragePoller(client, StoreSink(one), clock=clock.now)
        p1b = StoragePoller(client, StoreSink(two), clock=clock.now)  # the same instants as p1
        p2 = StoragePoller(client, StoreSink(two), clock=clock.now)  # a second poller on its own schedule
        bytes_seen: dict[str, int] = {}

        def poll(*pollers: StoragePoller) -> None:
            for p in pollers:
                for r in p.poll_once().rows:
                    bytes_seen.setdefault(r.vector_store_id, r.usage_bytes)

        poll(p1, p1b, p2)
        for step in range(1, STEPS + 1):
            clock.advance(STEP / 2)
            poll(p2)  # nothing changes here: a second poller between the first one's polls
            clock.advance(STEP / 2)
            if step == 4:
                ids["D"] = _store(client, "D", 3000)
            if step == 10:
                client.vector_stores.delete(ids["C"])
            if step == 14:
                _add_file(client, ids["A"], "A2", 2000)
            if step % 2 == 0:
                for key in ("A", "D"):
                    if key in ids:
                        client.vector_stores.search(vector_store_id=ids[key], query="w1")
            poll(p1, p1b, p2)
        until = clock.now()
        ledger = list(sim.ledger.storage)
        client.close()
    yield World(one, two, ledger, until, ids, bytes_seen)


# --- the hand computation from the ledger ------------------------------------------------------------------


def ledger_byte_seconds(world: World) -> dict[tuple[date, str], Fraction]:
    """Byte-seconds billed per (UTC day, store), from the ledger's change samples up to the last poll."""
    by_store: dict[str, list[Any]] = defaultdict(list)
    for s in world.ledger:
        by_store[s.vector_store_id].append(s)
    out: dict[tuple[date, str], Fraction] = defaultdict(Fraction)
    for store, samples in by_store.items():
        samples.sort(key=lambda s: s.at)
        for i, s in enumerate(samples):
            start = Fraction(s.at)
            end = Fraction(samples[i + 1].at) if i + 1 < len(samples) else Fraction(world.until)
            while start < end:
                midnight = (start // DAY + 1) * DAY
                cut = min(end, Fraction(midnight))
                day = datetime.fromtimestamp(float(start), UTC).date()
                out[(day, store)] += s.usage_bytes * (cut - start)
                start = cut
    return out


def hand_days(world: World, gb: int = GIB) -> dict[date, Fraction]:
    """GB-days per UTC day over all stores."""
    days: dict[date, Fraction] = defaultdict(Fraction)
    for (day, _), v in ledger_byte_seconds(world).items():
        days[day] += v / (gb * DAY)
    return days


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = cli(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


# --- report ------------------------------------------------------------------------------------------------


def test_the_world_changed_only_at_polled_instants(world: World) -> None:
    # The premise of an exact comparison: every ledger change is an instant the first poller saw
    # (or B's expiry, which its snapshots carry as expires_at).
    polled = {EPOCH + k * STEP for k in range(STEPS + 1)}
    expiry = EPOCH + 2 * DAY
    assert {s.at for s in world.ledger} <= polled | {expiry}
    assert [s.usage_bytes for s in world.ledger if s.vector_store_id == world.ids["C"]][-1] == 0
    assert [s.at for s in world.ledger if s.vector_store_id == world.ids["B"]][-1] == expiry


def test_report_gb_days_and_cost_equal_the_ledger(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    days = hand_days(world)
    daily = sorted(days.values())
    free = Fraction(Decimal(f"{float(daily[len(daily) // 2]):.12f}"))  # a free GB that some days exceed
    price = Fraction(1000)
    rep = cli_json(capsys, "storage", "report", "--db", str(world.one), "--price-per-gb-day", "1000",
                   "--free-gb", f"{float(free):.12f}")
    assert rep["window"] == {"from": "2025-11-24", "to": "2025-11-30",
                             "first_snapshot": "2025-11-24T16:00:00.000000Z",
                             "last_poll": "2025-11-30T16:00:00.000000Z"}
    assert [d["day"] for d in rep["days"]] == [f"2025-11-{d}" for d in range(24, 31)]
    billed_days = 0
    for d in rep["days"]:
        held = days[date.fromisoformat(d["day"])]
        cost = price * max(Fraction(0), held - free)
        billed_days += cost > 0
        assert d["gb_days"] == pytest.approx(float(held), rel=1e-12)
        assert d["cost_usd"] == pytest.approx(float(cost), rel=1e-9, abs=1e-12)
    assert 0 < billed_days < len(rep["days"])  # the free allowance mattered on some days only
    assert rep["total"]["gb_days"] == pytest.approx(float(sum(days.values())), rel=1e-12)
    assert rep["assumptions"]["free_per"] == "day" and rep["assumptions"]["bytes_per_gb"] == GIB

    per_store: dict[str, Fraction] = defaultdict(Fraction)
    for (_, store), v in ledger_byte_seconds(world).items():
        per_store[store] += v / (GIB * DAY)
    got = {s["vector_store_id"]: s for s in rep["stores"]}
    assert set(got) == set(world.ids.values())
    for store, v in per_store.items():
        assert got[store]["gb_days"] == pytest.approx(float(v), rel=1e-12)
    assert got[world.ids["C"]]["status"] == "deleted" and got[world.ids["C"]]["usage_bytes"] == 0
    assert got[world.ids["B"]]["status"] == "expired"
    # C counted for exactly 2.5 days (deleted at step 10), B for exactly 2 (its expiry).
    assert per_store[world.ids["C"]] == Fraction(world.bytes[world.ids["C"]] * 5, 2 * GIB)
    assert per_store[world.ids["B"]] == Fraction(world.bytes[world.ids["B"]] * 2, GIB)


def test_report_in_decimal_gb_with_the_default_free_gb(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    days = hand_days(world, gb=10**9)
    rep = cli_json(capsys, "storage", "report", "--db", str(world.one), "--unit", "GB")
    assert [d["gb_days"] for d in rep["days"]] == pytest.approx([float(days[date(2025, 11, d)])
                                                                  for d in range(24, 31)], rel=1e-12)
    assert rep["total"]["cost_usd"] == 0  # kilobytes never exceed the free GB
    assert rep["assumptions"]["price_per_gb_day"] == 0.1 and rep["assumptions"]["unit"] == "GB"


def test_two_pollers_do_not_double_count(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    con = duckdb.connect(str(world.two), read_only=True)
    n_two = con.execute("SELECT count(*) FROM vector_store_snapshots").fetchone()
    con.close()
    con = duckdb.connect(str(world.one), read_only=True)
    n_one = con.execute("SELECT count(*) FROM vector_store_snapshots").fetchone()
    con.close()
    assert n_two is not None and n_one is not None and n_two[0] > 1.5 * n_one[0]
    flags = ["--price-per-gb-day", "1000", "--free-gb", "0"]
    one = cli_json(capsys, "storage", "report", "--db", str(world.one), *flags)
    two = cli_json(capsys, "storage", "report", "--db", str(world.two), *flags)
    assert [d["gb_days"] for d in two["days"]] == pytest.approx([d["gb_days"] for d in one["days"]],
                                                                rel=1e-12)
    assert two["total"]["cost_usd"] == pytest.approx(one["total"]["cost_usd"], rel=1e-12)
    assert two["total"]["cost_usd"] == pytest.approx(1000 * float(sum(hand_days(world).values())), rel=1e-12)


def test_report_table_states_its_assumptions(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "storage", "report", "--db", str(world.one), "--free-gb", "0",
                         "--price-per-gb-day", "1000", "--store", world.ids["A"])
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == "Vector-store storage, 2025-11-24 to 2025-11-30 (last poll 2025-11-30 16:00:00 UTC)"
    assert lines[1].split() == ["day", "(UTC)", "GiB-days", "billable", "GiB-days", "cost", "USD"]
    day26 = next(x for x in lines if x.startswith("2025-11-26"))
    assert day26.split()[3] == f"{1000 * float(hand_days(world)[date(2025, 11, 26)]):,.4g}"
    assert any(x.startswith("total ") for x in lines)
    store_rows = [x for x in lines if x.startswith("vs_")]
    assert len(store_rows) == 1 and store_rows[0].split()[:3] == [world.ids["A"], "A", "completed"]
    assert "Assumptions: $1000 per GiB (2^30 bytes) per day; the first 0 GiB free" in out
    assert "expired and deleted stores stop counting" in out


def test_free_allowance_per_hour_is_a_setting(world: World, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNMETER_STORAGE_FREE_PER", "hour")
    monkeypatch.setenv("RUNMETER_STORAGE_PRICE_PER_GB_DAY", "2400")
    monkeypatch.setenv("RUNMETER_STORAGE_FREE_GB", "0")
    rep = cli_json(capsys, "storage", "report", "--db", str(world.one))
    assert rep["assumptions"]["free_per"] == "hour" and "each hour's mean GB" in rep["assumptions"]["text"]
    # With no free GB hourly billing is the daily one: price x GB-days.
    assert rep["days"][2]["cost_usd"] == pytest.approx(2400 * float(hand_days(world)[date(2025, 11, 26)]))


# --- forecast and what-if ----------------------------------------------------------------------------------


def test_forecast_is_a_linear_fit_of_the_complete_days(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    days = hand_days(world)
    fitted = [date(2025, 11, d) for d in range(25, 30)]  # 24th begins at 16:00, 30th is still running
    xs = [float((d - fitted[0]).days) for d in fitted]
    ys = [float(days[d]) for d in fitted]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    intercept = my - slope * mx
    fc = cli_json(capsys, "storage", "forecast", "--db", str(world.one), "--free-gb", "0",
                  "--price-per-gb-day", "1000")
    assert fc["fitted_days"] == [d.isoformat() for d in fitted]
    assert fc["slope_gb_per_day"] == pytest.approx(slope) and fc["intercept_gb"] == pytest.approx(intercept)
    assert len(fc["days"]) == 30
    assert (fc["days"][0]["day"], fc["days"][-1]["day"]) == ("2025-11-30", "2025-12-29")
    expect = [max(0.0, intercept + slope * (5 + k)) for k in range(30)]
    assert [d["gb"] for d in fc["days"]] == pytest.approx(expect)
    assert fc["total_cost_usd"] == pytest.approx(1000 * sum(expect))
    assert "least-squares" in fc["method"] and "2025-11-25 to 2025-11-29" in fc["method"]
    code, out, _ = cli(capsys, "storage", "forecast", "--db", str(world.one), "--days", "7")
    assert code == 0
    assert out.splitlines()[0] == "Storage forecast, next 7 days"
    assert "Method: ordinary least-squares" in out and "Assumptions: $0.10 per GiB" in out


def test_whatif_delete_idle_saves_the_idle_stores_cost(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--free-gb", "0", "--price-per-gb-day", "1000"]
    res = cli_json(capsys, "storage", "whatif", "--db", str(world.one), "--idle-days", "2", *flags)
    [scen] = res["scenarios"]
    e = world.ids["E"]
    assert scen["stores"] == [e]  # B expired and C deleted are not "idle"; A and D are searched twice a day
    e_gb_days = Fraction(world.bytes[e] * 6, GIB)  # E held its bytes for the whole six days
    assert scen["saved_usd"] == pytest.approx(1000 * float(e_gb_days), rel=1e-12)
    assert scen["baseline_usd"] - scen["scenario_usd"] == pytest.approx(scen["saved_usd"], rel=1e-9)
    assert scen["saved_last_day_usd"] == pytest.approx(1000 * world.bytes[e] * 16 / 24 / GIB, rel=1e-12)


def test_whatif_expires_after_cuts_each_idle_store_a_day_after_its_last_activity(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    ids, b = world.ids, world.bytes
    res = cli_json(capsys, "storage", "whatif", "--db", str(world.one), "--expires-after-days", "1",
                   "--free-gb", "0", "--price-per-gb-day", "1000")
    [scen] = res["scenarios"]
    assert sorted(scen["stores"]) == sorted([ids["B"], ids["C"], ids["E"]])
    # B loses day 2 of its 2 days, C the 1.5 days between day 1 and its deletion, E five of its six days.
    saved_gb_days = Fraction(b[ids["B"]] * 1, GIB) + Fraction(b[ids["C"]] * 3, 2 * GIB) + Fraction(
        b[ids["E"]] * 5, GIB)
    assert scen["saved_usd"] == pytest.approx(1000 * float(saved_gb_days), rel=1e-12)
    code, out, _ = cli(capsys, "storage", "whatif", "--db", str(world.one), "--expires-after-days", "1",
                       "--idle-days", "2", "--free-gb", "0", "--price-per-gb-day", "1000")
    assert code == 0
    rows = [x for x in out.splitlines() if x.startswith(("delete stores", "every store"))]
    assert rows[0].split()[-4:-1] != rows[1].split()[-4:-1]
    assert f"{1000 * float(saved_gb_days):,.4g}" in rows[1]
    assert "Assumptions:" in out


# --- poll --------------------------------------------------------------------------------------------------


@pytest.fixture
def sdk_env(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> Simulator:
    monkeypatch.setenv("OPENAI_BASE_URL", sim.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    return sim


def test_poll_once_records_every_store(sdk_env: Simulator, client: openai.OpenAI, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    ids = {client.vector_stores.create(name=f"s{i}").id for i in range(3)}
    code, out, err = cli(capsys, "storage", "poll", "--once", "--db", "p.duckdb")
    assert code == 0 and err == ""
    assert out.count("\n") == 1
    assert "3 stores (0 expired), 0 deleted, 0 billed bytes; stored in p.duckdb" in out
    line = cli_json(capsys, "storage", "poll", "--once", "--db", "p.duckdb")
    assert {s["vector_store_id"] for s in line["snapshots"]} == ids and line["outcome"] == "stored"
    con = duckdb.connect("p.duckdb", read_only=True)
    n = con.execute("SELECT count(DISTINCT vector_store_id), count(*) FROM vector_store_snapshots").fetchone()
    con.close()
    assert n == (3, 6)


def test_poll_with_an_interval_keeps_polling_until_interrupted(sdk_env: Simulator, client: openai.OpenAI,
                                                               tmp_path: Path) -> None:
    client.vector_stores.create(name="s")
    proc = subprocess.Popen(
        [sys.executable, "-m", "collector.cli", "storage", "poll", "--interval", "0.2", "--db", "l.duckdb"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(2)]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert all("1 stores" in x for x in lines), (lines, err)
    assert proc.returncode == 0, err


# --- bad input ---------------------------------------------------------------------------------------------


def _fingerprint(directory: Path) -> dict[str, str]:
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.mark.parametrize(("argv", "env", "needle"), [
    (["whatif", "--idle-days", "0"], {}, "--idle-days must be a whole number from 1 to 3650, got '0'"),
    (["whatif", "--idle-days", "ten"], {}, "got 'ten'"),
    (["whatif", "--expires-after-days", "366"], {},
     "--expires-after-days must be a whole number from 1 to 365"),
    (["whatif"], {}, "give --idle-days N and/or --expires-after-days N"),
    (["report", "--price-per-gb-day", "-1"], {}, "--price-per-gb-day '-1' is not a non-negative number"),
    (["report", "--unit", "tb"], {}, "--unit 'tb' must be one of gib, gb"),
    (["report"], {"RUNMETER_STORAGE_FREE_PER": "week"},
     "RUNMETER_STORAGE_FREE_PER='week' must be one of day, hour"),
    (["report", "--from", "2025-13-01"], {}, "--from '2025-13-01' is not a date (YYYY-MM-DD)"),
    (["report", "--from", "2025-11-29", "--to", "2025-11-25"], {},
     "--to 2025-11-25 is before --from 2025-11-29"),
    (["report", "--store", "vs_nope"], {}, "--store 'vs_nope': no snapshots of that vector store"),
    (["forecast", "--days", "0"], {}, "--days must be a whole number from 1 to 3650, got '0'"),
    (["poll", "--interval", "0"], {}, "--interval '0' must be a number of seconds above 0"),
    (["poll", "--once", "--interval", "5"], {}, "--once and --interval exclude each other"),
])
def test_bad_input_is_one_line_and_changes_nothing(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    argv: list[str], env: dict[str, str], needle: str,
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    before = _fingerprint(world.one.parent)
    code, out, err = cli(capsys, "storage", argv[0], "--db", str(world.one), *argv[1:])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("runmeter storage: error: ") and needle in err, err
    assert _fingerprint(world.one.parent) == before


def test_a_missing_or_foreign_store_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "storage", "report", "--db", "missing.duckdb")
    assert code == 2 and err == ("runmeter storage: error: no runmeter store at missing.duckdb "
                                 "(record some runs first, or set RUNMETER_DB)\n")
    assert not Path("missing.duckdb").exists()
    con = duckdb.connect("foreign.duckdb")
    con.execute("CREATE TABLE t (x INTEGER)")
    con.close()
    before = _fingerprint(tmp_path)
    for action in (["report"], ["forecast"], ["whatif", "--idle-days", "3"]):
        code, _, err = cli(capsys, "storage", *action, "--db", "foreign.duckdb")
        assert code == 2 and err.count("\n") == 1 and "is not a runmeter store" in err
    assert _fingerprint(tmp_path) == before
    code, _, err = cli(capsys, "storage", "poll", "--once", "--db", "p.duckdb")
    assert code == 2 and err.count("\n") == 1 and "OPENAI_API_KEY" in err


def test_an_empty_store_says_to_poll_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from collector.store.migrations import migrate

    con = duckdb.connect("empty.duckdb")
    migrate(con)
    con.close()
    code, out, err = cli(capsys, "storage", "report", "--db", "empty.duckdb")
    assert code == 1 and out == ""
    assert err == ("runmeter storage: no vector-store snapshots in empty.duckdb yet; "
                   "run `runmeter storage poll` first\n")
