"""The store at a glance: runs by api, model and status; tokens by type; TTFT; chunks per run.

What ``runmeter report`` and the end of ``runmeter demo`` print. Aggregation runs in SQL; only the
small result comes back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import duckdb


@dataclass(frozen=True, slots=True)
class RunGroup:
    """Runs of one api, model and status."""

    api: str
    model: str | None
    status: str | None
    runs: int


@dataclass(frozen=True, slots=True)
class Summary:
    """Headline numbers of a store."""

    runs: int
    groups: list[RunGroup] = field(default_factory=list)
    tokens: dict[str, int] = field(default_factory=dict)
    """input, cached_input, cache_write, output, reasoning: sums over runs that reported usage."""
    runs_without_usage: int = 0
    ttft_p50_seconds: float | None = None
    ttft_p95_seconds: float | None = None
    file_search_runs: int = 0
    chunks_per_run_mean: float | None = None
    chunks_per_run_p95: float | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def summarize(conn: duckdb.DuckDBPyConnection) -> Summary:
    """Summarise the ``runs`` table of an open store."""
    groups = [
        RunGroup(api, model, status, int(n))
        for api, model, status, n in conn.execute(
            "SELECT api, model, status, count(*) FROM runs GROUP BY ALL ORDER BY api, model, status"
        ).fetchall()
    ]
    row = conn.execute(
        """
        SELECT count(*),
               coalesce(sum(input_tokens), 0), coalesce(sum(cached_input_tokens), 0),
               coalesce(sum(cache_write_tokens), 0), coalesce(sum(output_tokens), 0),
               coalesce(sum(reasoning_tokens), 0),
               count(*) FILTER (WHERE input_tokens IS NULL),
               quantile_cont(ttft_seconds, 0.5), quantile_cont(ttft_seconds, 0.95),
               count(*) FILTER (WHERE file_search_calls > 0),
               avg(retrieved_chunks) FILTER (WHERE file_search_calls > 0),
               quantile_cont(retrieved_chunks, 0.95) FILTER (WHERE file_search_calls > 0)
        FROM runs
        """
    ).fetchone()
    assert row is not None
    (n, inp, cached, cw, out, reasoning, no_usage, p50, p95, fs_runs, chunks_mean, chunks_p95) = row
    return Summary(
        runs=int(n),
        groups=groups,
        tokens={"input": int(inp), "cached_input": int(cached), "cache_write": int(cw),
                "output": int(out), "reasoning": int(reasoning)},
        runs_without_usage=int(no_usage),
        ttft_p50_seconds=p50,
        ttft_p95_seconds=p95,
        file_search_runs=int(fs_runs),
        chunks_per_run_mean=chunks_mean,
        chunks_per_run_p95=chunks_p95,
    )
