"""`runmeter demo`: the README's main command, end to end (fast latency profile)."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from collector.cli import main

pytestmark = pytest.mark.filterwarnings("ignore:deprecated$:DeprecationWarning")


def test_demo_records_the_mixed_workload_and_prints_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "demo.duckdb"
    assert main(["demo", "--fast", "--runs", "12", "--seed", "3", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Runs: 12\n")
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("SELECT api, status, count(*) FROM runs GROUP BY ALL ORDER BY ALL").fetchall()
        chunks = con.execute("SELECT count(*), count(content_tokens) FROM retrieved_chunks").fetchone()
    assert sum(n for _, _, n in rows) == 12
    assert {status for _, status, _ in rows} == {"completed"}
    assert {api for api, _, _ in rows} <= {"assistants", "responses", "chat"}
    assert chunks is not None and chunks[0] > 0 and chunks[0] == chunks[1]  # every chunk has its tokens
    assert main(["report", "--db", str(db), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["runs"] == 12 and report["tokens"]["input"] > 0
    # The demo prints the cost the `cost` command prints, and leaves a storage snapshot behind.
    assert main(["cost", "--db", str(db)]) == 0
    cost_table = capsys.readouterr().out.strip()
    assert cost_table.startswith("Cost by api, model") and cost_table in out
    assert main(["storage", "report", "--db", str(db), "--json"]) == 0
    storage = json.loads(capsys.readouterr().out)
    with duckdb.connect(str(db), read_only=True) as con:
        snapshots = con.execute("SELECT count(*), sum(usage_bytes) FROM vector_store_snapshots").fetchone()
    assert snapshots is not None and snapshots[0] >= 1 and snapshots[1] > 0
    assert len(storage["stores"]) == snapshots[0]
