"""Simulated organization Costs and Usage APIs (admin key), served from the simulator's ledger.

Endpoints (shapes of SDK 3.57 ``client.admin.organization.usage.*``):

- ``GET /v1/organization/costs``: ``bucket_width`` ``1d`` only, ``limit`` 1-180 (default 7),
  ``group_by`` among ``project_id``, ``user_id``, ``line_item``, ``api_key_id``, ``api_source``.
- ``GET /v1/organization/usage/completions``, ``/usage/vector_stores``, ``/usage/file_search_calls``:
  ``bucket_width`` ``1m``/``1h``/``1d`` with limits 60/1440, 24/168, 7/31 (default/max).

Every answer is a page ``{object:"page", data:[bucket...], has_more, next_page}``; a bucket is
``{object:"bucket", start_time, end_time, results:[...]}``. Buckets start at ``start_time`` and step by
the bucket width up to ``end_time`` (default: the simulated now), empty ones included; ``page`` is the
previous answer's ``next_page``.

Billing (the service's own prices, private to the simulator; ``analysis/`` never reads them):

- Tokens, per ledger entry, under the model's dated snapshot name: ``"<snapshot>, input"`` (uncached
  and cache-write tokens), ``"<snapshot>, cached input"``, ``"<snapshot>, output"`` (reasoning inside).
- ``"file search tool calls"``: $2.50 per 1,000 calls (the ledger holds only calls billed per call).
- ``"vector storage"``: metered hourly in ``gibibyte_hours`` from the ledger's storage samples (a
  sample holds until the store's next sample, the latest until now); each hour's mean GiB over the
  organization's free 1 GiB bills at $0.10 per GiB-day / 24.
- ``ledger.adjustments``: ``{"day": "YYYY-MM-DD", "line_item": str, "factor": 1.03, "add_usd": 0}``
  changes the billed amount of one line item on one UTC day (drift tests); usage endpoints are not
  affected.

``/usage/vector_stores`` reports ``usage_bytes`` as the time-weighted mean bytes held over the bucket.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

from aiohttp import web

from collector.simulator.core import bad_request, json_response, query_list
from collector.simulator.prompts import snapshot
from collector.simulator.state import Ledger, StorageSample, UsageEntry, World

_M = Decimal(1_000_000)

# USD per 1M tokens (input, cached input, output), keyed by dated snapshot: the service's price list.
_PRICES: dict[str, tuple[Decimal, Decimal, Decimal]] = {
    "gpt-4o-2024-08-06": (Decimal("2.50"), Decimal("1.25"), Decimal("10.00")),
    "gpt-4o-mini-2024-07-18": (Decimal("0.15"), Decimal("0.075"), Decimal("0.60")),
    "gpt-4.1-2025-04-14": (Decimal("2.00"), Decimal("0.50"), Decimal("8.00")),
    "gpt-4.1-mini-2025-04-14": (Decimal("0.40"), Decimal("0.10"), Decimal("1.60")),
    "gpt-4.1-nano-2025-04-14": (Decimal("0.10"), Decimal("0.025"), Decimal("0.40")),
    "o3-2025-04-16": (Decimal("2.00"), Decimal("0.50"), Decimal("8.00")),
    "o4-mini-2025-04-16": (Decimal("1.10"), Decimal("0.275"), Decimal("4.40")),
    "gpt-5-2025-08-07": (Decimal("1.25"), Decimal("0.125"), Decimal("10.00")),
    "gpt-5-mini-2025-08-07": (Decimal("0.25"), Decimal("0.025"), Decimal("2.00")),
    "gpt-5-nano-2025-08-07": (Decimal("0.05"), Decimal("0.005"), Decimal("0.40")),
}
_FALLBACK_PRICE = _PRICES["gpt-4o-2024-08-06"]
"""What the service bills a model missing above (the simulator serves any model name)."""

FILE_SEARCH_PER_CALL = Decimal("2.50") / 1000
STORAGE_PER_GIB_DAY = Decimal("0.10")
FREE_GIB = 1
_GIB = 2**30

LINE_FILE_SEARCH = "file search tool calls"
LINE_STORAGE = "vector storage"

_WIDTHS = {"1m": 60, "1h": 3600, "1d": 86_400}
_LIMITS = {"1m": (60, 1440), "1h": (24, 168), "1d": (7, 31)}
_COSTS_LIMIT = (7, 180)
_DEFAULT_PROJECT = str(next(f.default for f in dataclasses.fields(UsageEntry) if f.name == "project_id"))


# ------------------------------------------------------------------------------------------- queries

@dataclass(frozen=True, slots=True)
class _Query:
    """Validated parameters of one request."""

    endpoint: str
    start: int
    end: int
    width: int
    limit: int
    first: int
    """Index of the first bucket of this page."""
    group_by: tuple[str, ...]
    filters: dict[str, list[str]]


def _int_param(request: web.Request, name: str) -> int | web.Response | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        return bad_request(f"Invalid '{name}': expected an integer, but got '{raw}' instead.",
                           param=name, code="invalid_type")


def _cursor(endpoint: str, index: int) -> str:
    return "page_" + base64.urlsafe_b64encode(f"{endpoint}:{index}".encode()).decode().rstrip("=")


def _uncursor(endpoint: str, page: str) -> int | None:
    if not page.startswith("page_"):
        return None
    body = page[5:]
    try:
        text = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    name, _, index = text.rpartition(":")
    if name != endpoint or not index.isdigit():
        return None
    return int(index)


def _parse(request: web.Request, world: World, endpoint: str, *, widths: Iterable[str],
           limits: Callable[[str], tuple[int, int]], group_fields: frozenset[str],
           filter_names: Iterable[str]) -> _Query | web.Response:
    """The request's parameters, or the API's 400 (missing start_time, bad width, limit, group_by, page)."""
    start = _int_param(request, "start_time")
    if isinstance(start, web.Response):
        return start
    if start is None:
        return bad_request("Missing required parameter: 'start_time'.", param="start_time",
                           code="missing_required_parameter")
    end = _int_param(request, "end_time")
    if isinstance(end, web.Response):
        return end
    if end is None:
        end = int(world.clock.now()) + 1
    if end <= start:
        return bad_request(f"Invalid 'end_time': must be greater than start_time ({start}), but got {end}.",
                           param="end_time", code="invalid_value")
    allowed = tuple(widths)
    width_name = request.query.get("bucket_width", "1d")
    if width_name not in allowed:
        expected = " or ".join(f"'{w}'" for w in allowed)
        return bad_request(f"Invalid value for 'bucket_width': expected {expected}, but got '{width_name}' "
                           "instead.", param="bucket_width", code="invalid_value")
    default_limit, max_limit = limits(width_name)
    limit = _int_param(request, "limit")
    if isinstance(limit, web.Response):
        return limit
    limit = default_limit if limit is None else limit
    if not 1 <= limit <= max_limit:
        return bad_request(f"Invalid 'limit': expected a value between 1 and {max_limit} for bucket_width "
                           f"'{width_name}', but got {limit} instead.", param="limit", code="invalid_value")
    group_by = tuple(dict.fromkeys(query_list(request, "group_by")))
    bad = [g for g in group_by if g not in group_fields]
    if bad:
        return bad_request(f"Invalid value for 'group_by': '{bad[0]}' is not one of "
                           f"{', '.join(sorted(group_fields))}.", param="group_by", code="invalid_value")
    width = _WIDTHS[width_name]
    n_buckets = -(-(end - start) // width)
    first = 0
    page = request.query.get("page")
    if page:
        index = _uncursor(endpoint, page)
        if index is None or index >= n_buckets:
            return bad_request(f"Invalid 'page': '{page}' is not a page cursor of this query.", param="page",
                               code="invalid_value")
        first = index
    filters = {name: query_list(request, name) for name in filter_names}
    return _Query(endpoint, start, end, width, limit, first, group_by,
                  {k: v for k, v in filters.items() if v})


def _page(q: _Query, results_of: Callable[[int, int], list[dict[str, Any]]]) -> web.Response:
    """One page of buckets; ``results_of(lo, hi)`` gives a bucket's results over ``[lo, hi)``."""
    n_buckets = -(-(q.end - q.start) // q.width)
    last = min(q.first + q.limit, n_buckets)
    data = []
    for k in range(q.first, last):
        b0, b1 = q.start + k * q.width, q.start + (k + 1) * q.width
        data.append({"object": "bucket", "start_time": b0, "end_time": b1,
                     "results": results_of(b0, min(b1, q.end))})
    more = last < n_buckets
    return json_response({"object": "page", "data": data, "has_more": more,
                          "next_page": _cursor(q.endpoint, last) if more else None})


def _in(at: float, lo: int, hi: int) -> bool:
    return lo <= at < hi


def _keep(entry: UsageEntry, filters: dict[str, list[str]]) -> bool:
    """Whether a ledger entry passes the query's filters (the ledger knows no users or API keys)."""
    if "project_ids" in filters and entry.project_id not in filters["project_ids"]:
        return False
    if "models" in filters and not {entry.model, snapshot(entry.model)} & set(filters["models"]):
        return False
    return not ("api_key_ids" in filters or "user_ids" in filters or "vector_store_ids" in filters)


def _group_value(field: str, entry: UsageEntry | None) -> Any:
    if field == "project_id":
        return entry.project_id if entry is not None else _DEFAULT_PROJECT
    if field == "model":
        return snapshot(entry.model) if entry is not None else None
    if field == "batch":
        return False
    if field == "service_tier":
        return "default"
    if field == "api_source":
        return "unlabeled"
    return None


# ------------------------------------------------------------------------------------------ storage

def _storage_intervals(samples: list[StorageSample], now: float) -> list[tuple[float, float, int]]:
    """(start, end, bytes) over which each store held bytes: until its next sample, the latest until now."""
    by_store: dict[str, list[StorageSample]] = defaultdict(list)
    for s in samples:
        by_store[s.vector_store_id].append(s)
    out = []
    for snaps in by_store.values():
        snaps.sort(key=lambda s: s.at)
        for i, s in enumerate(snaps):
            end = snaps[i + 1].at if i + 1 < len(snaps) else now
            if s.usage_bytes > 0 and end > s.at:
                out.append((s.at, end, s.usage_bytes))
    return out


def _byte_seconds(intervals: list[tuple[float, float, int]], lo: float, hi: float) -> Fraction:
    total = Fraction(0)
    for a, b, nbytes in intervals:
        overlap = min(b, hi) - max(a, lo)
        if overlap > 0:
            total += nbytes * Fraction(overlap)
    return total


def storage_bill(intervals: list[tuple[float, float, int]], lo: int, hi: int) -> tuple[Fraction, Decimal]:
    """GiB-hours held over ``[lo, hi)`` and their cost, metered hour by hour with the free GiB (pure)."""
    gib_hours = Fraction(0)
    billable_gib_days = Fraction(0)
    hour = lo - lo % 3600
    while hour < hi:
        held = _byte_seconds(intervals, max(hour, lo), min(hour + 3600, hi)) / (_GIB * 3600)
        gib_hours += held
        billable_gib_days += max(Fraction(0), held - FREE_GIB) / 24
        hour += 3600
    cost = Decimal(billable_gib_days.numerator) / Decimal(billable_gib_days.denominator) * STORAGE_PER_GIB_DAY
    return gib_hours, cost


# -------------------------------------------------------------------------------------------- costs

@dataclass(slots=True)
class _Line:
    amount: Decimal = Decimal(0)
    quantity: Fraction = Fraction(0)
    unit: str | None = None


def _token_lines(entry: UsageEntry) -> list[tuple[str, Decimal, int, str | None]]:
    """(line item, USD, quantity, unit) billed for one ledger entry."""
    name = snapshot(entry.model)
    p_in, p_cached, p_out = _PRICES.get(name, _FALLBACK_PRICE)
    uncached = entry.input_tokens - entry.cached_input_tokens
    lines = [
        (f"{name}, input", uncached * p_in / _M, uncached, "tokens"),
        (f"{name}, cached input", entry.cached_input_tokens * p_cached / _M, entry.cached_input_tokens,
         "tokens"),
        (f"{name}, output", entry.output_tokens * p_out / _M, entry.output_tokens, "tokens"),
        (LINE_FILE_SEARCH, entry.file_search_calls * FILE_SEARCH_PER_CALL, entry.file_search_calls, None),
    ]
    return [line for line in lines if line[2] > 0]


def _adjust(ledger: Ledger, day: date, line_item: str, amount: Decimal) -> Decimal:
    for adj in list(ledger.adjustments):
        raw_day = adj.get("day")
        adj_day = raw_day if isinstance(raw_day, date) else date.fromisoformat(str(raw_day))
        if adj_day == day and adj.get("line_item") == line_item:
            amount = amount * Decimal(str(adj.get("factor", 1))) + Decimal(str(adj.get("add_usd", 0)))
    return amount


def _cost_results(world: World, q: _Query, lo: int, hi: int) -> list[dict[str, Any]]:
    from collector.simulator.vector_stores import settle

    settle(world)
    ledger = world.ledger
    now = world.clock.now()
    lines: dict[tuple[str, str], _Line] = defaultdict(_Line)
    # list() copies are atomic: handlers on other threads only append
    entries = [e for e in list(ledger.usage) if _in(e.at, lo, hi) and _keep(e, q.filters)]
    samples = list(ledger.storage)
    for e in entries:
        for item, usd, quantity, unit in _token_lines(e):
            line = lines[(e.project_id, item)]
            line.amount += usd
            line.quantity += quantity
            line.unit = unit
    projects = q.filters.get("project_ids", [_DEFAULT_PROJECT])
    if "api_key_ids" not in q.filters and _DEFAULT_PROJECT in projects:
        gib_hours, cost = storage_bill(_storage_intervals(samples, now), lo, hi)
        if gib_hours > 0:
            lines[(_DEFAULT_PROJECT, LINE_STORAGE)] = _Line(cost, gib_hours, "gibibyte_hours")
    wanted = set(q.filters.get("line_items", [])) or None
    day = datetime.fromtimestamp(lo, tz=UTC).date()
    grouped: dict[tuple[Any, ...], _Line] = {}
    for (project, item), line in sorted(lines.items()):
        if wanted is not None and item not in wanted:
            continue
        amount = _adjust(ledger, day, item, line.amount)
        key = tuple(project if g == "project_id" else item if g == "line_item" else
                    "unlabeled" if g == "api_source" else None for g in q.group_by)
        acc = grouped.setdefault(key, _Line(unit=line.unit))
        acc.amount += amount
        acc.quantity += line.quantity
    out = []
    for key, line in grouped.items():
        values = dict(zip(q.group_by, key, strict=True))
        by_item = "line_item" in values
        out.append({
            "object": "organization.costs.result",
            "amount": {"value": float(line.amount), "currency": "usd"},
            "line_item": values.get("line_item"),
            "project_id": values.get("project_id"),
            "user_id": None,
            "api_key_id": None,
            "api_source": values.get("api_source"),
            "quantity": float(line.quantity) if by_item else None,
            "quantity_unit": line.unit if by_item else None,
        })
    return out


# -------------------------------------------------------------------------------------------- usage

def _usage_results(world: World, q: _Query, lo: int, hi: int, *, calls: bool) -> list[dict[str, Any]]:
    ledger = world.ledger
    entries = [e for e in list(ledger.usage) if _in(e.at, lo, hi) and _keep(e, q.filters)]
    if "batch" in q.filters and q.filters["batch"][0].lower() == "true":
        entries = []
    groups: dict[tuple[Any, ...], list[UsageEntry]] = defaultdict(list)
    for e in entries:
        if calls and e.file_search_calls == 0:
            continue
        groups[tuple(_group_value(g, e) for g in q.group_by)].append(e)
    out = []
    for key, items in groups.items():
        values = dict(zip(q.group_by, key, strict=True))
        if calls:
            out.append({
                "object": "organization.usage.file_searches.result",
                "num_requests": sum(e.file_search_calls for e in items),
                "project_id": values.get("project_id"), "user_id": None, "api_key_id": None,
                "vector_store_id": None,
            })
            continue
        cached = sum(e.cached_input_tokens for e in items)
        written = sum(e.cache_write_tokens for e in items)
        inputs = sum(e.input_tokens for e in items)
        out.append({
            "object": "organization.usage.completions.result",
            "input_tokens": inputs,
            "output_tokens": sum(e.output_tokens for e in items),
            "input_cached_tokens": cached,
            "input_cache_write_tokens": written,
            "input_uncached_tokens": inputs - cached - written,
            "input_audio_tokens": 0,
            "output_audio_tokens": 0,
            "num_model_requests": len(items),
            "project_id": values.get("project_id"),
            "user_id": None,
            "api_key_id": None,
            "model": values.get("model"),
            "batch": values.get("batch"),
            "service_tier": values.get("service_tier"),
            "api_source": values.get("api_source"),
        })
    return out


def _vector_store_results(world: World, q: _Query, lo: int, hi: int) -> list[dict[str, Any]]:
    from collector.simulator.vector_stores import settle

    settle(world)
    if q.filters.get("project_ids") and _DEFAULT_PROJECT not in q.filters["project_ids"]:
        return []
    samples = list(world.ledger.storage)
    now = world.clock.now()
    held = _byte_seconds(_storage_intervals(samples, now), lo, min(hi, now))
    if held == 0:
        return []
    mean = round(held / (hi - lo))
    return [{"object": "organization.usage.vector_stores.result", "usage_bytes": mean,
             "project_id": _DEFAULT_PROJECT if "project_id" in q.group_by else None}]


# ------------------------------------------------------------------------------------------- routes

class _Routes:
    def __init__(self, world: World) -> None:
        self.world = world

    async def costs(self, request: web.Request) -> web.Response:
        q = _parse(request, self.world, "costs", widths=("1d",), limits=lambda _w: _COSTS_LIMIT,
                   group_fields=frozenset({"project_id", "user_id", "line_item", "api_key_id", "api_source"}),
                   filter_names=("project_ids", "api_key_ids", "line_items"))
        if isinstance(q, web.Response):
            return q
        return _page(q, lambda lo, hi: _cost_results(self.world, q, lo, hi))

    async def completions(self, request: web.Request) -> web.Response:
        q = _parse(request, self.world, "completions", widths=_WIDTHS, limits=_LIMITS.__getitem__,
                   group_fields=frozenset({"project_id", "user_id", "api_key_id", "model", "batch",
                                           "service_tier", "api_source"}),
                   filter_names=("project_ids", "user_ids", "api_key_ids", "models", "batch"))
        if isinstance(q, web.Response):
            return q
        return _page(q, lambda lo, hi: _usage_results(self.world, q, lo, hi, calls=False))

    async def file_search_calls(self, request: web.Request) -> web.Response:
        q = _parse(request, self.world, "file_search_calls", widths=_WIDTHS, limits=_LIMITS.__getitem__,
                   group_fields=frozenset({"project_id", "user_id", "api_key_id", "vector_store_id"}),
                   filter_names=("project_ids", "user_ids", "api_key_ids", "vector_store_ids"))
        if isinstance(q, web.Response):
            return q
        return _page(q, lambda lo, hi: _usage_results(self.world, q, lo, hi, calls=True))

    async def vector_stores(self, request: web.Request) -> web.Response:
        q = _parse(request, self.world, "vector_stores", widths=_WIDTHS, limits=_LIMITS.__getitem__,
                   group_fields=frozenset({"project_id"}), filter_names=("project_ids",))
        if isinstance(q, web.Response):
            return q
        return _page(q, lambda lo, hi: _vector_store_results(self.world, q, lo, hi))


def register(router: web.UrlDispatcher, world: World) -> None:
    """Add the organization Costs and Usage routes."""
    r = _Routes(world)
    router.add_get("/v1/organization/costs", r.costs)
    router.add_get("/v1/organization/usage/completions", r.completions)
    router.add_get("/v1/organization/usage/file_search_calls", r.file_search_calls)
    router.add_get("/v1/organization/usage/vector_stores", r.vector_stores)


__all__ = ["FILE_SEARCH_PER_CALL", "FREE_GIB", "LINE_FILE_SEARCH", "LINE_STORAGE", "STORAGE_PER_GIB_DAY",
           "register", "storage_bill"]
