"""Pricing audit: defects found in analysis/ pricing, each pinned with hand-computed Decimals.

Every expected amount is worked out in the comment above it from analysis/prices.json and
/work/shared/reference/openai-wire.md section 6 (USD per 1M tokens; file_search $2.50 per 1,000 calls on
Responses only).
"""

from __future__ import annotations

import warnings
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import polars as pl
import pytest

from analysis.cost import Usage, price_record, price_run, run_costs
from analysis.cost_by import price_groups
from analysis.fit import fit_api
from analysis.prices import builtin_price_table
from collector.record import RunRecord
from collector.store.migrations import migrate

D = Decimal
TABLE = builtin_price_table()
OCT_2026 = date(2026, 10, 1)


# --- service_tier "fast" is "priority" ------------------------------------------------------------------
# SDK 3.57 Response.service_tier docstring: "include service_tier=fast or service_tier=priority ... The
# response will show service_tier=priority regardless". The Responses tap falls back to the request body's
# service_tier when the response carries none, so "fast" can reach the store; it must price as priority.

def test_fast_tier_prices_as_priority() -> None:
    usage = Usage(input_tokens=1_000_000, cached_input_tokens=200_000, output_tokens=100_000)
    fast = price_run(TABLE, model="gpt-6-astra", api="responses", usage=usage, on=OCT_2026,
                     service_tier="fast")
    priority = price_run(TABLE, model="gpt-6-astra", api="responses", usage=usage, on=OCT_2026,
                         service_tier="priority")
    # gpt-6-astra from 2026-09-03: 10.00 / cached 1.00 / output 50.00, priority 2x:
    #   input  800,000 * 10.00/1M * 2 = 16.00
    #   cached 200,000 *  1.00/1M * 2 =  0.40
    #   output 100,000 * 50.00/1M * 2 = 10.00          total 26.40
    assert fast.meters == {"input": D("16"), "cached_input": D("0.4"), "cache_write": 0,
                           "output": D("10"), "file_search_calls": 0}
    assert fast.total == priority.total == D("26.40")
    assert fast.service_tier == "fast"  # reported as recorded; only the price follows priority


def test_fast_tier_prices_as_priority_in_sql_too(tmp_path: Path) -> None:
    con = duckdb.connect(str(tmp_path / "store.duckdb"))
    try:
        migrate(con)
        con.execute(
            "INSERT INTO runs (run_id, api, model, started_at, input_tokens, cached_input_tokens, "
            "output_tokens, service_tier) VALUES ('r', 'responses', 'gpt-6-astra', "
            "TIMESTAMPTZ '2026-10-01 12:00:00+00', 1000000, 200000, 100000, 'fast')")
        frame = run_costs(con, TABLE)
        groups = price_groups(con, TABLE, ["tier"])
    finally:
        con.close()
    # the same 16.00 + 0.40 + 10.00 as above
    assert frame["total_usd"].to_list() == [26.4] and frame["unpriced_reason"].to_list() == [None]
    assert [(g.key, g.total) for g in groups] == [(("fast",), D("26.40"))]


def test_fast_tier_without_a_priority_price_stays_unpriced() -> None:
    cost = price_run(TABLE, model="gpt-4o", api="responses", usage=Usage(10, 10), on=OCT_2026,
                     service_tier="fast")
    assert cost.total is None
    assert cost.reason == "service tier 'fast' has no known price for gpt-4o"


# --- the boundary of a price change, to the microsecond, on every path ------------------------------------

def test_price_change_boundary_is_the_utc_midnight_on_every_path(tmp_path: Path) -> None:
    last_old = datetime(2025, 6, 9, 23, 59, 59, 999_999, tzinfo=UTC)
    first_new = datetime(2025, 6, 10, tzinfo=UTC)
    records = [
        RunRecord(run_id=run_id, api="responses", model="o3-2025-04-16", status="completed",
                  started_at=at.timestamp(), input_tokens=1_000_000, cached_input_tokens=500_000,
                  output_tokens=10_000, file_search_calls=4)
        for run_id, at in (("old", last_old), ("new", first_new))
    ]
    # old: 500,000 * 10.00/1M + 500,000 * 2.50/1M + 10,000 * 40.00/1M + 4 * 2.50/1,000
    #    = 5.00 + 1.25 + 0.40 + 0.01 = 6.66
    # new: 500,000 *  2.00/1M + 500,000 * 0.50/1M + 10,000 *  8.00/1M + 4 * 2.50/1,000
    #    = 1.00 + 0.25 + 0.08 + 0.01 = 1.34
    expected = {"old": D("6.66"), "new": D("1.34")}
    assert {r.run_id: price_record(TABLE, r).total for r in records} == expected
    con = duckdb.connect(str(tmp_path / "store.duckdb"))
    try:
        migrate(con)
        con.execute("SET TimeZone = 'Pacific/Kiritimati'")  # UTC+14: the UTC day must still decide
        for r in records:
            con.execute(
                "INSERT INTO runs (run_id, api, model, started_at, input_tokens, cached_input_tokens, "
                "output_tokens, file_search_calls) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [r.run_id, r.api, r.model, datetime.fromtimestamp(r.started_at or 0, UTC), r.input_tokens,
                 r.cached_input_tokens, r.output_tokens, r.file_search_calls])
        frame = run_costs(con, TABLE)
        groups = price_groups(con, TABLE, ["day"])
    finally:
        con.close()
    assert dict(zip(frame["run_id"], frame["total_usd"], strict=True)) == {"old": 6.66, "new": 1.34}
    assert {g.key[0]: g.total for g in groups} == {date(2025, 6, 9): D("6.66"), date(2025, 6, 10): D("1.34")}


# --- the billing fit behind the what-if: runs that report 0 input tokens -----------------------------------
# The held-out error skips runs with 0 input tokens (a relative error of 0 is undefined). When every held-out
# run had 0, the mean of an empty array raised "Mean of empty slice" (an error under the test settings; a
# NaN MAPE in production). tests/test_whatif.py::test_lower_n_never_adds_tokens_and_recall_never_rises found
# it with two zero-usage Assistants runs.

def test_fit_of_zero_input_runs_has_no_holdout_error_and_no_warning() -> None:
    n = 12
    frame = pl.DataFrame({
        "run_id": [f"run_{i}" for i in range(n)], "api": ["assistants"] * n, "model": ["gpt-4o"] * n,
        "input_tokens": [0] * n, "model_steps": [None] * n, "calls": [0] * n,
        "t_known": [0.0] * n, "n_known": [0.0] * n, "n_unknown": [0.0] * n,
    }, schema_overrides={"model_steps": pl.Int64})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = fit_api(frame, "assistants")
    assert fit.mape_holdout is None
    assert fit.intercept == pytest.approx(0.0, abs=1e-12)
