"""The ingest hooks' fast paths give what the slow ones gave: cost by unit prices equals price_record exactly,
the writer hands the hooks its own Arrow rows, and the summary hook without them (a plain list of pairs)
still keeps the tables equal to a rebuild."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from analysis import summary_tables as st
from analysis.cost import price_record
from analysis.prices import builtin_price_table
from collector.metrics.contributions import Labeller
from collector.record import ChunkRecord, RunRecord
from collector.store import summary_hook
from collector.store.migrations import migrate
from collector.store.schema import chunks_table, runs_table
from collector.store.writer import IngestHook, RunPairs, Writer

PRICES = builtin_price_table()
DAY = 86_400.0
# o3 and gpt-5.6-sol change price between these days, so unit prices must be per UTC day
T0 = 1_749_513_600.0 - 3 * DAY  # 2025-06-07


def _random_run(rng: random.Random, i: int) -> RunRecord:
    odd = rng.random() < 0.3  # usage price_run rejects: missing, negative, cached beyond input
    inp = rng.choice((None, -3, 0, 1) if odd else (17, 5_000, 123_457))
    cached = rng.choice((None, 1, 64, 200_000) if odd else (None, 0, 1, 16))
    return RunRecord(
        run_id=f"r{i}", api=rng.choice(("assistants", "responses", "chat", None, "batch")),  # type: ignore[arg-type]
        model=rng.choice(("gpt-4o-mini", "gpt-4o-mini-2024-07-18", "o3", "gpt-5.6-sol", "gpt-4o", "no-such",
                          None, "")),
        status=rng.choice(("completed", "failed", "incomplete")),
        started_at=rng.choice((None, T0 + rng.uniform(0, 8 * DAY), T0 + 3 * DAY - 1e-7)),
        input_tokens=inp, output_tokens=rng.choice((None, -1, 0, 7) if odd else (0, 7, 900)),
        cached_input_tokens=cached, cache_write_tokens=rng.choice((None, 0, 3, 10)),
        reasoning_tokens=rng.choice((None, 0, 12)),
        file_search_calls=rng.choice((None, 0, 1, 3, -1) if odd else (None, 0, 1, 3)),
        service_tier=rng.choice((None, "", "default", "flex", "priority", "batch", "nonsense")),
    )


def test_meters_by_unit_prices_equal_price_record_exactly() -> None:
    rng = random.Random(5)
    lab = Labeller(PRICES)
    priced = unpriced = no_price = 0
    for i in range(4_000):
        r = _random_run(rng, i)
        cost = price_record(PRICES, r)
        want = dict(cost.meters)
        got = lab.meters(r)
        # same Decimals to the digit (str shows the exponent too), so the float counters are the same
        assert {k: str(v) for k, v in (got or {}).items()} == {k: str(v) for k, v in want.items()}, r
        # None (counted as unpriced) exactly when the usage is sound but the price table has no price
        sound = (r.input_tokens is not None and r.output_tokens is not None and r.input_tokens >= 0
                 and r.output_tokens >= 0 and (r.file_search_calls or 0) >= 0
                 and (r.cached_input_tokens or 0) >= 0 and (r.cache_write_tokens or 0) >= 0
                 and (r.cached_input_tokens or 0) + (r.cache_write_tokens or 0) <= r.input_tokens)
        assert (got is None) == (sound and cost.total is None), (r, cost.reason)
        priced += bool(want)
        unpriced += not want
        no_price += got is None
    assert priced > 800 and unpriced > 800 and no_price > 200


def test_the_writer_hands_the_hooks_its_rows_of_the_merged_runs(tmp_path: Path) -> None:
    seen: list[tuple[list[str], list[str], list[int | None]]] = []

    def runs(_conn: duckdb.DuckDBPyConnection, pairs: RunPairs) -> None:
        frame = getattr(pairs, "runs_frame")  # noqa: B009 (the hook interface types pairs as a Sequence)
        seen.append(([a.run_id for _, a in pairs], frame.column("run_id").to_pylist(),
                     frame.column("output_tokens").to_pylist()))

    hook = IngestHook(lambda _db: False, lambda _c, _d: None, runs)
    with Writer(tmp_path / "s.duckdb", flush_interval=60, install_signal_handlers=False,
                ingest_hooks=(hook,)) as w:
        for i in range(3):
            w.submit(RunRecord(run_id=f"r{i}", api="responses", status="completed", output_tokens=i))
        assert w.flush()
        w.submit(RunRecord(run_id="r1", api="responses", status="completed", output_tokens=50))
        assert w.flush()
    assert seen == [(["r0", "r1", "r2"], ["r0", "r1", "r2"], [0, 1, 2]), (["r1"], ["r1"], [50])]


def _rows(con: duckdb.DuckDBPyConnection, name: str) -> list[tuple[Any, ...]]:
    return sorted((tuple(r) for r in con.execute(f"SELECT * FROM {name}").fetchall()), key=repr)


def _run(rng: random.Random, i: int, output: int) -> RunRecord:
    chunks = [ChunkRecord("c1", k, f"f{k}", rng.uniform(0.1, 0.9), rng.randint(50, 500), cited=k == 1)
              for k in range(1, rng.randint(1, 6))]
    return RunRecord(run_id=f"r{i}", api=rng.choice(("assistants", "responses")), model="gpt-4o",
                     status="completed", thread_id=f"t{i % 7}", started_at=T0 + i * 600.0,
                     input_tokens=4_000 + i, output_tokens=output, file_search_calls=1,
                     retrieved_chunks=len(chunks), max_num_results=5, model_steps=2,
                     tags={"team": f"x{i % 3}"}, chunks=chunks)


def _write(con: duckdb.DuckDBPyConnection, pairs: list[tuple[RunRecord | None, RunRecord]]) -> None:
    """One batch the way the writer writes it, the hook given a plain list (no Arrow rows)."""
    con.execute("BEGIN TRANSACTION")
    assert summary_hook.maintain(con, pairs)
    afters = [a for _, a in pairs]
    con.register("_t_runs", runs_table(afters, 0.0))
    con.execute("INSERT OR REPLACE INTO runs SELECT * FROM _t_runs")
    with_chunks = [a for a in afters if a.chunks]  # a run observed without chunks keeps its stored ones
    con.register("_t_ids", pa.table({"run_id": pa.array([a.run_id for a in with_chunks], pa.string())}))
    con.execute("DELETE FROM retrieved_chunks WHERE run_id IN (SELECT run_id FROM _t_ids)")
    con.register("_t_chunks", chunks_table(with_chunks))
    con.execute("INSERT INTO retrieved_chunks SELECT * FROM _t_chunks")
    con.execute("COMMIT")


def test_summary_hook_without_the_writers_rows_matches_a_rebuild(tmp_path: Path) -> None:
    rng = random.Random(9)
    path = tmp_path / "s.duckdb"
    with duckdb.connect(str(path)) as con:
        migrate(con, str(path))
        first = [_run(rng, i, 100) for i in range(40)]
        _write(con, [(None, r) for r in first])
        # upgrades of stored runs (more output, other chunks) and new runs in one batch
        again = [_run(rng, i, 250) for i in range(30, 50)]
        _write(con, [(first[i] if i < 40 else None, r) for i, r in zip(range(30, 50), again, strict=True)])
        assert st.fresh(con, st.ALL)
        kept = {n: _rows(con, n) for n in st.ALL}
        assert con.execute(f"SELECT sum(runs) FROM {st.USAGE}").fetchall()[0][0] == 50
        st.materialize_all(con)
        assert {n: _rows(con, n) for n in st.ALL} == kept
