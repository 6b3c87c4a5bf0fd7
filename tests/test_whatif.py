"""The max_num_results / score_threshold what-if, the billing fit and cost by tag, on synthetic stores.

The synthetic stores use the real schema (migrations) and a billing with known parameters, so every
figure can be worked out by hand here. ``test_whatif_world.py`` checks the same analysis against the
simulator.
"""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analysis.cost import run_costs
from analysis.cost_by import DimensionError, cost_by, parse_by
from analysis.fit import fit_store
from analysis.prices import load_price_table
from analysis.whatif import WhatIfError, check_n, whatif
from collector.cli import main
from collector.store.migrations import migrate

OVERHEAD = 38
CALL = 300
BASE = 250
T0 = datetime(2026, 3, 1, tzinfo=UTC)
DAY2, DAY4 = date(2026, 3, 2), date(2026, 3, 4)


@dataclass
class SynthChunk:
    """One retrieved result of a synthetic run."""

    rank: int
    tokens: int | None
    score: float
    cited: bool = False


@dataclass
class SynthRun:
    """One synthetic run (only the columns the analysis reads)."""

    run_id: str
    api: str
    input_tokens: int | None
    output_tokens: int | None = 100
    model: str = "gpt-4o"
    steps: int | None = None
    calls: int = 1
    setting: int | None = 20
    chunks: list[SynthChunk] = field(default_factory=list)
    thread_id: str | None = None
    started_at: datetime = T0
    tags: dict[str, str] = field(default_factory=dict)
    retrieved: int | None = None
    threshold: float | None = 0.0
    cached: int = 0
    status: str = "completed"


def make_store(path: Path, runs: Sequence[SynthRun]) -> Path:
    """A real runmeter store (all migrations) holding ``runs``."""
    run_rows = pa.table({
        "run_id": [r.run_id for r in runs], "api": [r.api for r in runs], "model": [r.model for r in runs],
        "status": [r.status for r in runs], "thread_id": [r.thread_id for r in runs],
        "started_at": pa.array([r.started_at for r in runs], pa.timestamp("us", tz="UTC")),
        "input_tokens": pa.array([r.input_tokens for r in runs], pa.int64()),
        "cached_input_tokens": pa.array([r.cached for r in runs], pa.int64()),
        "output_tokens": pa.array([r.output_tokens for r in runs], pa.int64()),
        "file_search_calls": pa.array([r.calls for r in runs], pa.int32()),
        "retrieved_chunks": pa.array([r.retrieved if r.retrieved is not None else
                                      (len(r.chunks) if r.chunks else None) for r in runs], pa.int32()),
        "max_num_results": pa.array([r.setting for r in runs], pa.int32()),
        "score_threshold": pa.array([r.threshold for r in runs], pa.float64()),
        "model_steps": pa.array([r.steps for r in runs], pa.int32()),
        "tags": pa.array([list(r.tags.items()) for r in runs], pa.map_(pa.string(), pa.string())),
    })
    chunk_rows = pa.table({
        "run_id": [r.run_id for r in runs for _ in r.chunks],
        "rank": pa.array([c.rank for r in runs for c in r.chunks], pa.int32()),
        "score": pa.array([c.score for r in runs for c in r.chunks], pa.float64()),
        "content_tokens": pa.array([c.tokens for r in runs for c in r.chunks], pa.int32()),
        "cited": pa.array([c.cited for r in runs for c in r.chunks], pa.bool_()),
    })
    with duckdb.connect(str(path)) as con:
        migrate(con, str(path))
        con.register("run_rows", run_rows)
        con.register("chunk_rows", chunk_rows)
        con.execute("INSERT INTO runs BY NAME SELECT *, 1 AS streams FROM run_rows")
        con.execute("""INSERT INTO retrieved_chunks BY NAME
                       SELECT *, 'call_1' AS call_id, 'file-1' AS file_id,
                              CASE WHEN cited THEN 'result' END AS cited_by FROM chunk_rows""")
    return path


def billed(api: str, chunks: Sequence[SynthChunk], calls: int = 1, tokens_when_unknown: int = 0) -> int:
    """Input tokens under the synthetic billing: Assistants pay results once (2 steps), Responses twice."""
    repeat = 1 if api == "assistants" else 2
    steps = 2 if api == "assistants" else 3
    payload = sum((c.tokens if c.tokens is not None else tokens_when_unknown) + OVERHEAD for c in chunks)
    return steps * BASE + repeat * (payload + CALL * calls)


def synthetic_runs(seed: int, count: int = 80, *, text: bool = True) -> list[SynthRun]:
    """Runs at N=20 with 1–20 results (the store sometimes had fewer), scores falling with rank."""
    rng = random.Random(seed)
    runs = []
    for i in range(count):
        api = "assistants" if i % 2 == 0 else "responses"
        n = rng.randint(1, 20)
        chunks = []
        score = 0.95
        for rank in range(1, n + 1):
            score -= rng.uniform(0.0, 0.04)
            tokens = rng.randint(150, 800)
            chunks.append(SynthChunk(rank, tokens if text else None, round(score, 4), rng.random() < 0.3))
        input_tokens = billed(api, chunks, tokens_when_unknown=0) if text else 0
        if not text:
            input_tokens = billed(api, [SynthChunk(c.rank, 500, c.score) for c in chunks])
        runs.append(SynthRun(
            run_id=f"run_{i:04d}", api=api, input_tokens=input_tokens,
            model="gpt-4o" if api == "assistants" else "gpt-4o-mini",
            steps=2 if api == "assistants" else None, chunks=chunks,
            started_at=T0 + timedelta(hours=i), tags={"customer": ("acme", "globex", "initech")[i % 3]},
        ))
    return runs


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, list[SynthRun]]:
    runs = synthetic_runs(1)
    return make_store(tmp_path / "s.duckdb", runs), runs


def _report(path: Path, **kw: object) -> object:
    with duckdb.connect(str(path), read_only=True) as con:
        return whatif(con, load_price_table(), **kw)  # type: ignore[arg-type]


def test_fit_recovers_the_billing(store: tuple[Path, list[SynthRun]]) -> None:
    path, _ = store
    with duckdb.connect(str(path), read_only=True) as con:
        fits = fit_store(con)
    a, r = fits["assistants"], fits["responses"]
    assert a.repeat_source == "model_steps" and r.repeat_source == "hidden"
    assert a.repeat == pytest.approx(1.0, abs=1e-6)
    assert r.repeat == pytest.approx(2.0, abs=1e-6)
    assert a.overhead_per_result == pytest.approx(OVERHEAD, abs=1e-4)
    assert r.overhead_per_result == pytest.approx(OVERHEAD, abs=1e-4)
    assert a.mape_holdout is not None and a.mape_holdout < 1e-6  # the billing is exactly linear here
    assert a.per_unknown_result is None  # every chunk's text was captured


def test_whatif_matches_the_hand_computation(store: tuple[Path, list[SynthRun]]) -> None:
    path, runs = store
    report = _report(path, max_num_results=[3, 10])
    for row, n in zip(report.rows, (3, 10), strict=True):  # type: ignore[attr-defined]
        kept = [SynthRun(r.run_id, r.api, billed(r.api, [c for c in r.chunks if c.rank <= n])) for r in runs]
        expected = sum(k.input_tokens or 0 for k in kept) / len(runs)
        assert row.max_num_results == n
        assert row.bound == "exact"
        assert row.input_tokens_per_run == pytest.approx(expected, rel=1e-9)
        assert row.runs_affected == sum(1 for r in runs if len(r.chunks) > n)
        cited = [c for r in runs for c in r.chunks if c.cited]
        assert row.citation_recall == pytest.approx(sum(c.rank <= n for c in cited) / len(cited))
        scores = [c.score for r in runs for c in r.chunks]
        kept_scores = [c.score for r in runs for c in r.chunks if c.rank <= n]
        assert row.score_mass_kept == pytest.approx(sum(kept_scores) / sum(scores))
        citing = [r for r in runs if any(c.cited for c in r.chunks)]
        lost = [r for r in citing if min(c.rank for c in r.chunks if c.cited) > n]
        assert row.lose_all_cited_share == pytest.approx(len(lost) / len(citing))


def test_cost_follows_the_saved_tokens(store: tuple[Path, list[SynthRun]]) -> None:
    path, runs = store
    report = _report(path, max_num_results=[5, 20])
    at5, at20 = report.rows  # type: ignore[attr-defined]
    with duckdb.connect(str(path), read_only=True) as con:
        costs = run_costs(con, load_price_table())
    total = float(costs["total_usd"].sum())
    assert at20.cost_per_1k_runs_usd == pytest.approx(total / len(runs) * 1000)
    # no cached tokens here: saved tokens cost the model's input price (gpt-4o $2.50, gpt-4o-mini $0.15 /1M)
    saved = {"assistants": 0.0, "responses": 0.0}
    for r in runs:
        saved[r.api] += (r.input_tokens or 0) - billed(r.api, [c for c in r.chunks if c.rank <= 5])
    expected = total - saved["assistants"] * 2.5e-6 - saved["responses"] * 0.15e-6
    assert at5.cost_per_1k_runs_usd == pytest.approx(expected / len(runs) * 1000)
    # volume: 80 runs over 79 hours (< 1 day counts as one day... it is 3.3 days here)
    days = 79 / 24
    assert at5.cost_per_month_usd == pytest.approx(at5.cost_per_1k_runs_usd / 1000 * len(runs) / days * 30)


def test_higher_n_is_a_lower_bound_never_no_change(store: tuple[Path, list[SynthRun]]) -> None:
    path, runs = store
    row = _report(path, max_num_results=[25]).rows[0]  # type: ignore[attr-defined]
    saturated = sum(1 for r in runs if len(r.chunks) == 20)
    assert saturated > 0
    assert row.bound == "lower"
    assert row.runs_unknown == saturated  # a run that got fewer than 20 results would get no more
    assert any("lower bound" in n for n in row.notes)


def test_score_threshold_raise_and_lower(tmp_path: Path) -> None:
    chunks = [SynthChunk(1, 400, 0.81, True), SynthChunk(2, 300, 0.55), SynthChunk(3, 200, 0.35, True)]
    runs = [SynthRun(f"r{i}", "assistants", billed("assistants", chunks), steps=2, chunks=list(chunks),
                     setting=5, threshold=0.3) for i in range(30)]
    # a second shape so the fit can tell tokens from per-result overhead
    short = chunks[:2]
    runs += [SynthRun(f"s{i}", "assistants", billed("assistants", short), steps=2, chunks=list(short),
                      setting=5, threshold=0.3) for i in range(30)]
    short1 = chunks[:1]
    runs += [SynthRun(f"t{i}", "assistants", billed("assistants", short1), steps=2, chunks=list(short1),
                      setting=5, threshold=0.3) for i in range(30)]
    path = make_store(tmp_path / "t.duckdb", runs)
    report = _report(path, max_num_results=[], score_thresholds=[0.5, 0.2])
    lower, raise_ = report.rows  # type: ignore[attr-defined]
    assert raise_.score_threshold == 0.5
    assert raise_.runs_affected == 30  # only the runs holding the 0.35 result lose it
    assert raise_.input_tokens_saved_per_run == pytest.approx(30 * (200 + OVERHEAD) / 90)
    assert raise_.citation_recall == pytest.approx(90 / 120)  # 120 cited results, 30 of them at 0.35
    assert raise_.bound == "exact"
    # lowering the threshold below what the runs used asks for results never seen (they were not capped at 5)
    assert lower.bound == "lower" and lower.runs_unknown == 90


def test_text_not_captured_fits_tokens_per_result(tmp_path: Path) -> None:
    runs = synthetic_runs(2, text=False)
    path = make_store(tmp_path / "u.duckdb", runs)
    with duckdb.connect(str(path), read_only=True) as con:
        fits = fit_store(con)
    assert fits["assistants"].per_token is None
    assert fits["assistants"].per_unknown_result == pytest.approx(500 + OVERHEAD, rel=1e-6)
    assert fits["responses"].per_unknown_result == pytest.approx(2 * (500 + OVERHEAD), rel=1e-6)
    row = _report(path, max_num_results=[4]).rows[0]  # type: ignore[attr-defined]
    expected = sum(billed(r.api, [SynthChunk(c.rank, 500, 0) for c in r.chunks if c.rank <= 4])
                   for r in runs) / len(runs)
    assert row.input_tokens_per_run == pytest.approx(expected, rel=1e-9)


def test_responses_without_results_are_priced_but_have_unknown_citations(tmp_path: Path) -> None:
    rng = random.Random(3)
    runs = []
    for i in range(40):
        n = (20, 10)[i % 2]  # the same kind of prompt at two settings: results unseen, assumed n per call
        runs.append(SynthRun(f"r{i}", "responses", billed("responses", [SynthChunk(k, 600, 0) for k in
                                                                        range(1, n + 1)]) + rng.randint(0, 3),
                             model="gpt-4o-mini", setting=n))
    path = make_store(tmp_path / "r.duckdb", runs)
    row = _report(path, max_num_results=[5]).rows[0]  # type: ignore[attr-defined]
    assert row.runs_affected == 40
    assert row.citation_recall is None  # nobody saw a citation
    expected = sum(billed("responses", [SynthChunk(k, 600, 0) for k in range(1, 6)]) for _ in runs) / 40
    assert row.input_tokens_per_run == pytest.approx(expected, rel=0.002)
    assert any("without results" in n for n in row.notes)


run_shapes = st.lists(
    st.tuples(
        st.sampled_from(["assistants", "responses"]),
        st.lists(st.tuples(st.one_of(st.none(), st.integers(1, 900)), st.floats(0.01, 0.99), st.booleans()),
                 max_size=12),
        st.integers(0, 60_000),
    ),
    min_size=1, max_size=25,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shapes=run_shapes)
def test_lower_n_never_adds_tokens_and_recall_never_rises(tmp_path_factory: pytest.TempPathFactory,
                                                          shapes: list[tuple[str, list, int]]) -> None:
    runs = []
    for i, (api, chunks, input_tokens) in enumerate(shapes):
        ordered = sorted(chunks, key=lambda c: -c[1])
        runs.append(SynthRun(
            f"p{i}", api, input_tokens, steps=2 if api == "assistants" else None, calls=1 if chunks else 0,
            chunks=[SynthChunk(k + 1, t, s, cited) for k, (t, s, cited) in enumerate(ordered)],
            setting=12))
    path = make_store(tmp_path_factory.mktemp("prop") / "p.duckdb", runs)
    rows = _report(path, max_num_results=list(range(1, 13))).rows  # type: ignore[attr-defined]
    for lower, higher in itertools.pairwise(rows):
        assert lower.input_tokens_per_run <= higher.input_tokens_per_run + 1e-6
        if lower.citation_recall is not None:
            assert lower.citation_recall <= higher.citation_recall + 1e-12
        assert lower.runs_affected >= higher.runs_affected


def test_n_outside_1_to_50_is_refused() -> None:
    for bad in (0, 51, -3):
        with pytest.raises(WhatIfError, match=f"max_num_results {bad} is outside 1–50"):
            check_n([bad])
    assert check_n([5, 1, 5]) == [1, 5]


def test_cost_by_tag_matches_run_costs(store: tuple[Path, list[SynthRun]]) -> None:
    path, runs = store
    table = load_price_table()
    with duckdb.connect(str(path), read_only=True) as con:
        groups = cost_by(con, table, ["tag:customer"])
        per_run = run_costs(con, table)
    by_id = dict(zip(per_run["run_id"].to_list(), per_run["total_usd"].to_list(), strict=True))
    expected: dict[str, float] = {}
    for r in runs:
        expected[r.tags["customer"]] = expected.get(r.tags["customer"], 0.0) + by_id[r.run_id]
    got = {g.key["tag:customer"]: g.total_usd for g in groups}
    assert got == pytest.approx(expected)
    assert sum(g.runs for g in groups) == len(runs)
    with pytest.raises(DimensionError, match="'colour' is not a dimension"):
        parse_by(["api,colour"])
    assert parse_by(["api,tag:customer", "api"]) == ["api", "tag:customer"]


def test_cost_by_counts_unpriced_runs_with_their_reason(tmp_path: Path) -> None:
    runs = [SynthRun("a", "assistants", 1000, steps=2, calls=0, setting=None),
            SynthRun("b", "assistants", None, steps=2, calls=0, setting=None),
            SynthRun("c", "assistants", 1000, model="gpt-unknown", calls=0, setting=None)]
    path = make_store(tmp_path / "c.duckdb", runs)
    with duckdb.connect(str(path), read_only=True) as con:
        (group,) = cost_by(con, load_price_table(), ["api"])
    assert group.runs == 3 and group.priced_runs == 1
    assert group.total_usd == pytest.approx(1000 * 2.5e-6 + 100 * 10e-6)
    assert group.unpriced == {"usage not recorded (input_tokens missing)": 1,
                              "model 'gpt-unknown' is not in the price table": 1}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "collector.cli", *args], capture_output=True, text=True,
                          timeout=60)


def test_cli_whatif_json_and_tables(store: tuple[Path, list[SynthRun]]) -> None:
    path, runs = store
    out = _cli("whatif", "--db", str(path), "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["max_num_results"] for r in rows] == list(range(1, 21))
    for r in rows:
        assert {"max_num_results", "runs_affected", "input_tokens_per_run", "cost_per_1k_runs_usd",
                "citation_recall"} <= set(r)
    assert rows[-1]["runs_affected"] == 0 and rows[0]["runs_affected"] == sum(len(r.chunks) > 1 for r in runs)
    text = _cli("whatif", "--db", str(path), "--n", "5,10", "--score-threshold", "0.8", "--details")
    assert text.returncode == 0, text.stderr
    assert "Billing fit" in text.stdout and "N=5" in text.stdout and "threshold=0.8" in text.stdout
    cost = _cli("cost", "--db", str(path), "--by", "tag:customer", "--json")
    assert cost.returncode == 0, cost.stderr
    assert sorted(g["key"]["tag:customer"] for g in json.loads(cost.stdout)) == ["acme", "globex", "initech"]
    table = _cli("cost", "--db", str(path), "--by", "tag:customer")
    assert "tag:customer" in table.stdout and "total" in table.stdout


def test_cli_bad_input_is_one_line_and_changes_nothing(store: tuple[Path, list[SynthRun]], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = store
    before = path.read_bytes()
    bad_prices = tmp_path / "prices.json"
    bad_prices.write_text('{"models": {"gpt-4o": [{"from": "2024-01-01", "input": "cheap", "output": 1}]}}')
    foreign = tmp_path / "foreign.duckdb"
    with duckdb.connect(str(foreign)) as con:
        con.execute("CREATE TABLE t (a INT)")
    cases = [
        (("whatif", "--db", str(path), "--n", "0"), "max_num_results 0 is outside 1–50"),
        (("whatif", "--db", str(path), "--n", "51"), "max_num_results 51 is outside 1–50"),
        (("whatif", "--db", str(path), "--n", "5-1"), "--n 5-1: a range runs from low to high (e.g. 1-5)"),
        (("whatif", "--db", str(path), "--score-threshold", "2"), "score_threshold 2.0 is outside 0–1"),
        (("whatif", "--db", str(tmp_path / "missing.duckdb")), "no runmeter store at"),
        (("whatif", "--db", str(foreign)), "is not a runmeter store"),
        (("whatif", "--db", str(path), "--prices", str(bad_prices)), "models.gpt-4o[0].input"),
        (("cost", "--db", str(path), "--prices", str(bad_prices)), "models.gpt-4o[0].input"),
        (("cost", "--db", str(tmp_path / "missing.duckdb")), "no runmeter store at"),
        (("cost", "--db", str(path), "--by", "colour"), "'colour' is not a dimension"),
        (("cost", "--db", str(path), "--since", "yesterday"), "--since 'yesterday' is not a date"),
    ]
    for args, message in cases:
        code = main(list(args))
        out = capsys.readouterr()
        assert code == 2, (args, out.out, out.err)
        assert out.out == ""
        lines = out.err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, out.err)
    assert path.read_bytes() == before
    assert not (tmp_path / "missing.duckdb").exists()


def test_summary_tables_give_the_same_answers_and_are_ignored_when_stale(
        store: tuple[Path, list[SynthRun]]) -> None:
    from analysis.whatif import materialize

    path, runs = store
    prices = load_price_table()
    with duckdb.connect(str(path), read_only=True) as con:
        raw = whatif(con, prices, score_thresholds=[0.5]).to_json()
        raw_cost = [g.to_json() for g in cost_by(con, prices, ["tag:customer", "month"])]
        raw_window = [g.to_json() for g in cost_by(con, prices, ["day", "model"], since=DAY2, until=DAY4)]
    with duckdb.connect(str(path)) as con:
        materialize(con)
        chunks = con.execute("SELECT count(*) FROM retrieved_chunks").fetchall()[0][0]
        assert con.execute("SELECT count(*) FROM summary_whatif_ranks").fetchall()[0][0] < chunks / 4
    with duckdb.connect(str(path), read_only=True) as con:
        summarised = whatif(con, prices, score_thresholds=[0.5]).to_json()
        assert [g.to_json() for g in cost_by(con, prices, ["tag:customer", "month"])] == raw_cost
        window = [g.to_json() for g in cost_by(con, prices, ["day", "model"], since=DAY2, until=DAY4)]
        assert window == raw_window
        # runs at T0 + 24h .. T0 + 71h: the second and third UTC days only
        assert sum(g["runs"] for g in window) == 48 and {g["key"]["day"] for g in window} == {
            DAY2.isoformat(), (DAY2 + timedelta(days=1)).isoformat()}
    assert summarised["baseline"] == raw["baseline"]
    for got, want in zip(summarised["rows"], raw["rows"], strict=True):
        for key, value in want.items():
            assert got[key] == (pytest.approx(value) if isinstance(value, float) else value), key
    # a run recorded after the summaries were built: they are stale, the raw rows answer
    with duckdb.connect(str(path)) as con:
        con.execute("INSERT INTO runs (run_id, api, model, status, started_at, input_tokens, output_tokens, "
                    "tags) VALUES ('late', 'assistants', 'gpt-4o', 'completed', ?, 5000, 100, "
                    "MAP {'customer': 'acme'})", [T0])
    with duckdb.connect(str(path), read_only=True) as con:
        report = whatif(con, prices, max_num_results=[20])
        acme = next(g for g in cost_by(con, prices, ["tag:customer"]) if g.key["tag:customer"] == "acme")
    assert report.baseline.runs == len(runs) + 1
    assert acme.runs == sum(1 for r in runs if r.tags["customer"] == "acme") + 1
