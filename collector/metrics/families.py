"""Every metric family runmeter exposes: name, type, help, labels and buckets, declared once.

grafana/METRICS.md documents the same table for the dashboards and rules; tests/test_serve.py checks
that the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "gauge", "histogram"]

LATENCY_BUCKETS: tuple[float, ...] = tuple(round(0.01 * 2**k, 2) for k in range(17))
"""0.01, 0.02, 0.04 ... 81.92, 163.84, 327.68, 655.36 s: the OTel GenAI advice, extended to minutes."""

CHUNK_BUCKETS: tuple[float, ...] = (0, 1, 2, 3, 5, 8, 10, 15, 20, 30, 50)

OTHER_MODEL = "other"
"""The ``model`` label of every model the price table does not list (fine-tunes, typos, none)."""


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family. ``name`` is the exposed name (counters include ``_total``)."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    @property
    def base(self) -> str:
        """The name prometheus_client's ``*MetricFamily`` wants (counters without ``_total``)."""
        return self.name[: -len("_total")] if self.kind == "counter" else self.name


def _f(name: str, kind: Kind, help: str, labels: tuple[str, ...] = (),
       buckets: tuple[float, ...] = ()) -> Family:
    return Family(name, kind, help, labels, buckets)


AM = ("api", "model")

RUNS = _f("runmeter_runs_total", "counter", "Runs observed, by terminal status.", (*AM, "status"))
TOKENS = _f("runmeter_tokens_total", "counter",
            "Tokens used by type (reasoning tokens are part of output tokens).", (*AM, "token_type"))
COST = _f("runmeter_cost_usd_total", "counter", "Spend in USD by meter, priced at ingest.", (*AM, "meter"))
FILE_SEARCH_CALLS = _f("runmeter_file_search_calls_total", "counter", "file_search tool calls made by runs.",
                       AM)
RETRIEVED_CHUNKS = _f("runmeter_retrieved_chunks_total", "counter", "Chunks returned by file_search.", AM)
CHAT_NO_USAGE = _f("runmeter_chat_streams_without_usage_total", "counter",
                   "Chat Completions streams that ended without a usage chunk.", ("model",))
UNPRICED = _f("runmeter_unpriced_runs_total", "counter",
              "Runs the price table cannot price (unknown model, or no price for its service tier).", AM)
WRITER_DROPPED = _f("runmeter_writer_dropped_total", "counter", "Run records the writer dropped.")
WRITER_ERRORS = _f("runmeter_writer_errors_total", "counter", "Failed writes to the store.")
TTFT = _f("runmeter_time_to_first_token_seconds", "histogram",
          "Time from the request to the first streamed content.", AM, LATENCY_BUCKETS)
DURATION = _f("runmeter_run_duration_seconds", "histogram",
              "Time from the request to the run's terminal event.", AM, LATENCY_BUCKETS)
CHUNKS_PER_RUN = _f("runmeter_retrieved_chunks_per_run", "histogram",
                    "Chunks retrieved per run that made file_search calls.", AM, CHUNK_BUCKETS)
USAGE_ALL = _f("runmeter_vector_stores_usage_bytes", "gauge", "Bytes held by all vector stores.")
USAGE_TOP = _f("runmeter_vector_store_usage_bytes", "gauge", "Bytes per vector store, largest stores only.",
               ("vector_store_id",))
STORES = _f("runmeter_vector_stores", "gauge", "Number of vector stores by status.", ("status",))
BILLABLE_GB = _f("runmeter_storage_billable_gigabytes", "gauge", "GB held beyond the free tier.")
STORAGE_COST = _f("runmeter_storage_cost_usd_per_day", "gauge",
                  "Modelled storage cost in USD per day beyond the free tier.")
STORAGE_FORECAST = _f("runmeter_storage_forecast_usd_per_day", "gauge",
                      "Forecast daily storage cost 30 days ahead, from the usage trend.")
LAST_POLL = _f("runmeter_storage_last_poll_timestamp_seconds", "gauge",
               "Unix time of the last successful vector store poll.")
WRITER_PENDING = _f("runmeter_writer_pending", "gauge", "Run records waiting to be written to the store.")
WRITER_SPOOLED = _f("runmeter_writer_spooled", "gauge", "Run records in spool files, not yet in the store.")
STORE_UP = _f("runmeter_store_up", "gauge", "1 when the store could be read at this scrape, else 0.")
BUILD_INFO = _f("runmeter_build_info", "gauge", "Always 1; the runmeter version.", ("version",))

FAMILIES: tuple[Family, ...] = (
    RUNS, TOKENS, COST, FILE_SEARCH_CALLS, RETRIEVED_CHUNKS, CHAT_NO_USAGE, WRITER_DROPPED, WRITER_ERRORS,
    UNPRICED, TTFT, DURATION, CHUNKS_PER_RUN, USAGE_ALL, USAGE_TOP, STORES, BILLABLE_GB, STORAGE_COST,
    STORAGE_FORECAST, LAST_POLL, WRITER_PENDING, WRITER_SPOOLED, STORE_UP, BUILD_INFO,
)
BY_NAME: dict[str, Family] = {f.name: f for f in FAMILIES}

RUN_COUNTERS: tuple[Family, ...] = (RUNS, TOKENS, COST, FILE_SEARCH_CALLS, RETRIEVED_CHUNKS, CHAT_NO_USAGE,
                                    UNPRICED)
"""The counters a run record contributes to (counted at ingest, or live in-process)."""
RUN_HISTOGRAMS: tuple[Family, ...] = (TTFT, DURATION, CHUNKS_PER_RUN)

TOP_STORES = 20
"""``runmeter_vector_store_usage_bytes`` carries only the largest N stores (a bounded label set)."""


def version() -> str:
    """The installed runmeter version (``0+unknown`` from a bare checkout)."""
    from importlib import metadata

    try:
        return metadata.version("runmeter")
    except metadata.PackageNotFoundError:
        return "0+unknown"
