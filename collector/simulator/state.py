"""The simulator's world: every object it has created, and the ledger of what it would bill.

Objects are kept as their wire dicts (what the API returns), keyed by id, in insertion order so
lists page deterministically. Route modules own their tables; this module only holds them.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from collector.simulator.core import Clock, Ids

if TYPE_CHECKING:
    from collector.simulator.app import SimulatorConfig


@dataclass(slots=True)
class UsageEntry:
    """Tokens one request was billed for (one run step, one response, one chat completion)."""

    at: float
    api: str
    model: str
    object_id: str
    """The run, response or completion id the usage belongs to."""
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cache_write_tokens: int = 0
    file_search_calls: int = 0
    project_id: str = "proj_runmeter_sim"


@dataclass(slots=True)
class StorageSample:
    """A vector store's billed bytes from ``at`` until the next sample of the same store."""

    at: float
    vector_store_id: str
    usage_bytes: int


@dataclass(slots=True)
class FirstDelta:
    """When the simulator wrote a stream's first non-empty text delta (monotonic and simulated)."""

    object_id: str
    monotonic: float
    sim_time: float


class Ledger:
    """What the simulator served and would have billed. Tests read it; ``analysis/`` never does."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.usage: list[UsageEntry] = []
        self.storage: list[StorageSample] = []
        self.first_deltas: list[FirstDelta] = []
        self.adjustments: list[dict[str, Any]] = []
        """Deliberate changes a test makes to the billed figures (reconciliation drift tests)."""

    def add_usage(self, entry: UsageEntry) -> None:
        """Record billed tokens."""
        with self._lock:
            self.usage.append(entry)

    def add_storage(self, sample: StorageSample) -> None:
        """Record a change of a store's billed bytes."""
        with self._lock:
            self.storage.append(sample)

    def add_first_delta(self, entry: FirstDelta) -> None:
        """Record the send time of a stream's first text delta."""
        with self._lock:
            self.first_deltas.append(entry)

    def usage_for(self, object_id: str) -> dict[str, int]:
        """Summed tokens and calls billed for one run, response or completion."""
        totals = {"input_tokens": 0, "cached_input_tokens": 0, "output_tokens": 0,
                  "reasoning_tokens": 0, "cache_write_tokens": 0, "file_search_calls": 0}
        with self._lock:
            for e in self.usage:
                if e.object_id == object_id:
                    for k in totals:
                        totals[k] += getattr(e, k)
        return totals


@dataclass
class World:
    """All simulator state. One instance per server."""

    config: SimulatorConfig
    clock: Clock
    ids: Ids
    ledger: Ledger = field(default_factory=Ledger)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("runmeter.simulator"))
    lock: threading.RLock = field(default_factory=threading.RLock)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    file_bytes: dict[str, bytes] = field(default_factory=dict)
    vector_stores: dict[str, dict[str, Any]] = field(default_factory=dict)
    vector_store_files: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """vector_store_id -> file_id -> vector_store.file object."""
    assistants: dict[str, dict[str, Any]] = field(default_factory=dict)
    threads: dict[str, dict[str, Any]] = field(default_factory=dict)
    messages: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """thread_id -> message_id -> message object."""
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    run_steps: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """run_id -> step_id -> run step object."""
    responses: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    """Route-module private state (e.g. chunk indexes, pending tool calls), keyed by module."""
