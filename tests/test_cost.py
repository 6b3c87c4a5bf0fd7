"""Run cost: the meter breakdown, exact to the cent and below, and the reasons a run stays unpriced."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from analysis.cost import METERS, Usage, price_record, price_run, run_costs, utc_day
from analysis.prices import builtin_price_table, parse_price_table
from collector.record import RunRecord

D = Decimal
TABLE = builtin_price_table()
JAN_2026 = datetime(2026, 1, 15, 12, tzinfo=UTC)


def test_gpt4o_run_priced_exactly_per_meter() -> None:
    # 600 * 2.50/1M + 400 * 1.25/1M + 200 * 10/1M = 0.0015 + 0.0005 + 0.0020 = 0.0040
    cost = price_run(
        TABLE, model="gpt-4o", api="chat", on=JAN_2026,
        usage=Usage(input_tokens=1000, cached_input_tokens=400, output_tokens=200),
    )
    assert cost.meters == {
        "input": D("0.0015"), "cached_input": D("0.0005"), "cache_write": 0, "output": D("0.002"),
        "file_search_calls": 0,
    }
    assert cost.total == D("0.0040")
    assert cost.rounded() == D("0.00")
    assert cost.priced_as == "gpt-4o" and cost.price_from == date(2024, 8, 6)
    assert tuple(cost.meters) == METERS


def test_reasoning_tokens_are_not_billed_twice() -> None:
    base = Usage(input_tokens=3748, cached_input_tokens=2304, output_tokens=543)
    with_reasoning = Usage(
        input_tokens=3748, cached_input_tokens=2304, output_tokens=543, reasoning_tokens=448
    )
    a = price_run(TABLE, model="gpt-5-mini", api="responses", usage=base, on=JAN_2026)
    b = price_run(TABLE, model="gpt-5-mini", api="responses", usage=with_reasoning, on=JAN_2026)
    # CAP-4 numbers: 1444 * 0.25/1M + 2304 * 0.025/1M + 543 * 2/1M
    assert a.total == b.total == D("0.000361") + D("0.0000576") + D("0.001086")


def test_snapshot_prices_as_its_family_and_old_snapshot_at_its_own_price() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    mini = price_run(TABLE, model="gpt-4o-mini-2024-07-18", api="chat", usage=usage, on=JAN_2026)
    assert mini.priced_as == "gpt-4o-mini" and mini.total == D("0.75")
    old = price_run(TABLE, model="gpt-4o-2024-05-13", api="chat", usage=usage, on=date(2024, 6, 1))
    assert old.priced_as == "gpt-4o-2024-05-13" and old.total == D(20)


def test_unknown_snapshot_is_unpriced_not_zero() -> None:
    cost = price_run(
        TABLE, model="gpt-7-2031-02-03", api="responses", usage=Usage(10, 10), on=JAN_2026
    )
    assert cost.total is None and not cost.priced and cost.meters == {}
    assert cost.rounded() is None
    assert cost.reason == "model 'gpt-7-2031-02-03' is not in the price table"


def test_o3_run_priced_by_its_date() -> None:
    usage = Usage(input_tokens=1_000_000, cached_input_tokens=0, output_tokens=1_000_000)
    may = price_run(TABLE, model="o3-2025-04-16", api="responses", usage=usage,
                    on=datetime(2025, 5, 20, 23, 59, tzinfo=UTC))
    july = price_run(TABLE, model="o3-2025-04-16", api="responses", usage=usage,
                     on=datetime(2025, 7, 1, tzinfo=UTC).timestamp())
    assert may.total == D(50) and july.total == D(10)


def test_file_search_calls_cost_on_responses_only() -> None:
    usage = Usage(input_tokens=0, output_tokens=0, file_search_calls=3)
    responses = price_run(TABLE, model="gpt-4.1", api="responses", usage=usage, on=JAN_2026)
    assistants = price_run(TABLE, model="gpt-4.1", api="assistants", usage=usage, on=JAN_2026)
    assert responses.meters["file_search_calls"] == D("0.0075") and responses.total == D("0.0075")
    assert assistants.meters["file_search_calls"] == 0 and assistants.total == 0


def test_cache_write_priced_where_known_else_as_input() -> None:
    usage = Usage(input_tokens=1_000_000, cached_input_tokens=200_000, cache_write_tokens=300_000,
                  output_tokens=0)
    astra = price_run(TABLE, model="gpt-6-astra", api="responses", usage=usage, on=date(2026, 10, 1))
    assert astra.meters["input"] == D(5)  # 500k * 10
    assert astra.meters["cached_input"] == D("0.2")  # 200k * 1
    assert astra.meters["cache_write"] == D("3.75")  # 300k * 12.50
    gpt41 = price_run(TABLE, model="gpt-4.1", api="responses", usage=usage, on=JAN_2026)
    assert gpt41.meters["cache_write"] == D("0.6")  # 300k at the 2.00 input price


def test_service_tiers_flex_batch_priority_and_unknown() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000, file_search_calls=1000)
    default = price_run(TABLE, model="o3", api="responses", usage=usage, on=JAN_2026, service_tier="default")
    flex = price_run(TABLE, model="o3", api="responses", usage=usage, on=JAN_2026, service_tier="flex")
    batch = price_run(TABLE, model="o3", api="responses", usage=usage, on=JAN_2026, service_tier="batch")
    assert default.total == D("12.5") and default.service_tier is None
    assert flex.total == batch.total == D("7.5")  # tokens halved, the $2.50 of calls not
    priority = price_run(TABLE, model="gpt-6.1-terra", api="chat", usage=usage, on=date(2026, 11, 1),
                         service_tier="priority")
    assert priority.total == D(12)  # 2x (1 + 5)
    unknown = price_run(TABLE, model="o3", api="chat", usage=usage, on=JAN_2026, service_tier="priority")
    assert unknown.total is None and unknown.priced_as == "o3"
    assert unknown.reason == "service tier 'priority' has no known price for o3"


def test_missing_or_inconsistent_usage_is_unpriced() -> None:
    missing = price_run(TABLE, model="gpt-4o", api="chat", usage=Usage(None, 10), on=JAN_2026)
    assert missing.total is None and missing.reason == "usage not recorded (input_tokens missing)"
    over = Usage(10, 1, cached_input_tokens=11)
    bad = price_run(TABLE, model="gpt-4o", api="chat", usage=over, on=JAN_2026)
    assert bad.total is None and bad.reason is not None and "exceed input" in bad.reason
    neg = price_run(TABLE, model="gpt-4o", api="chat", usage=Usage(10, -1), on=JAN_2026)
    assert neg.reason == "negative usage: output_tokens"


def test_file_search_price_unknown_for_api_is_unpriced() -> None:
    table = parse_price_table({"models": {"m": {"from": "2025-01-01", "input": 1, "output": 1}}}, "t")
    cost = price_run(table, model="m", api="responses", usage=Usage(1, 1, file_search_calls=2), on=JAN_2026)
    assert cost.total is None and cost.reason == "file_search call price unknown for api 'responses'"


def test_price_record_uses_started_at_and_tier() -> None:
    record = RunRecord(
        run_id="run_1", api="assistants", model="gpt-4o-mini", started_at=JAN_2026.timestamp(),
        input_tokens=2000, cached_input_tokens=1000, output_tokens=100, file_search_calls=2,
        service_tier="flex",
    )
    cost = price_record(TABLE, record)
    # (1000 * 0.15 + 1000 * 0.075 + 100 * 0.60) / 1M * 0.5
    assert cost.total == D("0.0001425")


def test_utc_day_conversions() -> None:
    assert utc_day(datetime(2026, 1, 1, 23, 30, tzinfo=UTC)) == date(2026, 1, 1)
    assert utc_day(datetime(2026, 1, 1, 23, 30)) == date(2026, 1, 1)
    assert utc_day(0) == date(1970, 1, 1)
    assert utc_day(None) is None


@pytest.fixture
def runs_db(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    con = duckdb.connect(str(tmp_path / "runs.duckdb"))
    con.execute("""
        CREATE TABLE runs (
            run_id VARCHAR PRIMARY KEY, api VARCHAR, model VARCHAR, status VARCHAR,
            started_at TIMESTAMPTZ, input_tokens BIGINT, cached_input_tokens BIGINT,
            cache_write_tokens BIGINT, output_tokens BIGINT, reasoning_tokens BIGINT,
            file_search_calls INTEGER, retrieved_chunks INTEGER, max_num_results INTEGER, tags JSON
        )""")
    con.executemany(
        "INSERT INTO runs VALUES (?, ?, ?, 'completed', ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL)",
        [
            ("r1", "responses", "gpt-4o", "2026-01-15 12:00:00+00", 1000, 400, 0, 200, 0, 2),
            ("r2", "chat", "o3", "2025-05-01 00:00:00+00", 1_000_000, 0, None, 0, 0, None),
            ("r3", "assistants", "mystery-model", "2026-01-16 00:00:00+00", 5, 0, 0, 5, 0, 1),
            ("r4", "responses", "o3", "2025-07-01 00:00:00+00", 1_000_000, None, None, 0, 0, 0),
        ],
    )
    yield con
    con.close()


def test_run_costs_reads_runs_table(runs_db: duckdb.DuckDBPyConnection) -> None:
    frame = run_costs(runs_db, TABLE)
    assert frame["run_id"].to_list() == ["r2", "r4", "r1", "r3"]
    by_id = {row["run_id"]: row for row in frame.iter_rows(named=True)}
    assert by_id["r1"]["total_usd"] == pytest.approx(0.004 + 0.005, abs=1e-15)
    assert by_id["r1"]["file_search_calls_usd"] == pytest.approx(0.005, abs=1e-15)
    assert by_id["r2"]["total_usd"] == 10.0 and by_id["r4"]["total_usd"] == 2.0
    assert by_id["r3"]["total_usd"] is None
    assert by_id["r3"]["unpriced_reason"] == "model 'mystery-model' is not in the price table"
    assert by_id["r1"]["started_at"] == datetime(2026, 1, 15, 12)


def test_run_costs_window_and_service_tier_column(runs_db: duckdb.DuckDBPyConnection) -> None:
    runs_db.execute("ALTER TABLE runs ADD COLUMN service_tier VARCHAR")
    runs_db.execute("UPDATE runs SET service_tier = 'flex' WHERE run_id = 'r4'")
    frame = run_costs(runs_db, TABLE, since=datetime(2025, 6, 1, tzinfo=UTC),
                      until=datetime(2026, 1, 16, tzinfo=UTC))
    assert frame["run_id"].to_list() == ["r4", "r1"]
    assert frame.filter(frame["run_id"] == "r4")["total_usd"].item() == 1.0


def test_run_costs_empty_table(runs_db: duckdb.DuckDBPyConnection) -> None:
    runs_db.execute("DELETE FROM runs")
    frame = run_costs(runs_db, TABLE)
    assert frame.height == 0 and "total_usd" in frame.columns


def test_run_costs_against_the_real_store_schema(tmp_path: Path) -> None:
    from collector.store.migrations import migrate

    con = duckdb.connect(str(tmp_path / "store.duckdb"))
    try:
        migrate(con)
        con.execute(
            "INSERT INTO runs (run_id, api, model, started_at, input_tokens, cached_input_tokens, "
            "output_tokens, file_search_calls, service_tier) "
            "VALUES ('r', 'responses', 'gpt-4o-mini-2024-07-18', TIMESTAMPTZ '2026-02-01 00:00:00+00', "
            "2000, 1000, 100, 4, 'flex')"
        )
        frame = run_costs(con, TABLE)
    finally:
        con.close()
    # (1000 * 0.15 + 1000 * 0.075 + 100 * 0.60) / 1M * 0.5 + 4 * 2.50 / 1000
    assert frame["total_usd"].to_list() == [pytest.approx(0.0001425 + 0.01, abs=1e-15)]
    assert frame["priced_as"].to_list() == ["gpt-4o-mini"]


def test_run_costs_in_sql_agree_with_price_run(runs_db: duckdb.DuckDBPyConnection) -> None:
    runs_db.execute("DELETE FROM runs")
    runs_db.execute("ALTER TABLE runs ADD COLUMN service_tier VARCHAR")
    models = ["gpt-4o", "gpt-4o-mini-2024-07-18", "o3", "gpt-6-astra", "gpt-6.1-terra", "nope", None]
    tiers = [None, "", "default", "flex", "priority", "scale"]
    apis = ["responses", "assistants", "chat", None]
    usages = [
        (1000, 400, 0, 200, 3), (None, 0, 0, 5, 0), (5, 0, 0, None, 0), (10, -1, 0, 5, 0),
        (10, 8, 3, 5, 1), (1_234_567, 1000, 2000, 98_765, 0), (10, None, None, 5, None), (0, 0, 0, 0, 7),
    ]
    days = ["2025-05-01 10:00:00+00", "2025-07-01 23:59:59+00", "2026-11-01 00:00:00+00", None]
    rows, expected = [], {}
    for i in range(600):
        model, tier, api = models[i % 7], tiers[i % 6], apis[i % 4]
        inp, cached, written, out, calls = usages[i % 8]
        started = days[i % 5 % 4]
        run_id = f"run_{i:04d}"
        rows.append((run_id, api, model, started, inp, cached, written, out, 0, calls, tier))
        on = None if started is None else datetime.fromisoformat(started)
        expected[run_id] = price_run(
            TABLE, model=model, api=api, on=on, service_tier=tier,
            usage=Usage(inp, out, cached_input_tokens=cached, cache_write_tokens=written,
                        file_search_calls=calls),
        )
    runs_db.executemany(
        "INSERT INTO runs (run_id, api, model, started_at, input_tokens, cached_input_tokens, "
        "cache_write_tokens, output_tokens, reasoning_tokens, file_search_calls, service_tier) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    frame = run_costs(runs_db, TABLE)
    assert frame.height == 600
    priced = 0
    for row in frame.iter_rows(named=True):
        cost = expected[row["run_id"]]
        assert row["unpriced_reason"] == cost.reason, row
        assert row["priced_as"] == cost.priced_as
        assert row["service_tier"] == cost.service_tier
        if cost.total is None:
            assert row["total_usd"] is None and row["input_usd"] is None
        else:
            priced += 1
            assert row["total_usd"] == float(cost.total)
            for meter in METERS:
                assert row[f"{meter}_usd"] == float(cost.meters[meter])
    assert 50 < priced < 550
    kinds = {c.reason.split(" (")[0].split(":")[0].split(" for ")[0] for c in expected.values() if c.reason}
    assert kinds == {
        "usage not recorded", "negative usage", "inconsistent usage", "no model recorded",
        "model 'nope' is not in the price table", "service tier 'priority' has no known price",
        "service tier 'scale' has no known price", "file_search call price unknown",
    }


def test_run_costs_with_a_very_fine_user_price(runs_db: duckdb.DuckDBPyConnection) -> None:
    table = parse_price_table(
        {"models": {"gpt-4o": {"from": "2020-01-01", "input": "0.0000000001", "output": "1"}},
         "tools": {"file_search_call_per_1k": {"responses": 2.5, "chat": 0, "assistants": 0}}},
        "fine.json",
    )
    frame = run_costs(runs_db, table)
    row = frame.filter(frame["run_id"] == "r1").row(0, named=True)
    # 1e-16 USD per token is below the frame's 1e-15 resolution: rounded to 0, no error.
    assert row["output_usd"] == pytest.approx(0.0002, rel=1e-12) and row["input_usd"] == 0.0
