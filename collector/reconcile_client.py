"""Fetch the organization Costs and Usage APIs through the SDK, following every page.

The SDK (3.57) returns one page per call (``{object:"page", data, has_more, next_page}``) and has no
auto-pagination for these endpoints, so :class:`BillFetcher` sends ``page=<next_page>`` until
``has_more`` is false. Requests ask for daily buckets over ``[start, end)`` UTC days; costs grouped by
``line_item``, completions by ``model``. The admin key is the SDK's ``admin_api_key``
(``OPENAI_ADMIN_KEY``), sent as the bearer.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, date, datetime, time
from typing import Any

import openai

from analysis.reconcile import Bill, BilledCost, BilledTokens
from collector import settings

COSTS_MAX_LIMIT = 180
USAGE_MAX_LIMIT = 31
"""Largest ``limit`` for daily buckets (costs; usage endpoints)."""


class ReconcileError(ValueError):
    """The organization APIs could not be read (message for a person, one line)."""


def admin_client(environ: Mapping[str, str], *, base_url: str | None = None) -> openai.OpenAI:
    """An SDK client for the admin endpoints: key from ``OPENAI_ADMIN_KEY``, URL from ``OPENAI_BASE_URL``."""
    key = environ.get(settings.OPENAI_ADMIN_KEY, "")
    if not key:
        raise ReconcileError(f"{settings.OPENAI_ADMIN_KEY} is not set: reconciliation reads the organization "
                             "Costs and Usage APIs, which need an admin key")
    url = base_url or environ.get(settings.OPENAI_BASE_URL) or None
    # The admin key is sent only on the admin endpoints: the ordinary key slot never carries it.
    return openai.OpenAI(admin_api_key=key, api_key=environ.get(settings.OPENAI_API_KEY) or "unused",
                         base_url=url, max_retries=2)


def _epoch(day: date) -> int:
    return int(datetime.combine(day, time(), tzinfo=UTC).timestamp())


def _day(ts: int) -> date:
    return datetime.fromtimestamp(ts, tz=UTC).date()


class BillFetcher:
    """Reads a range of days of the organization APIs into a :class:`~analysis.reconcile.Bill`.

    ``page_limit`` caps the buckets asked per page (default: each endpoint's maximum); tests pass 1 to
    exercise paging.
    """

    def __init__(self, client: openai.OpenAI, *, page_limit: int | None = None) -> None:
        self._usage = client.admin.organization.usage
        self._page_limit = page_limit
        self.pages_fetched = 0

    def _pages(self, call: Callable[..., Any], max_limit: int, days: int, **params: Any) -> Iterator[Any]:
        limit = min(self._page_limit or max_limit, max_limit, max(days, 1))
        page: str | None = None
        while True:
            try:
                resp = call(limit=limit, **params, **({"page": page} if page else {}))
            except openai.AuthenticationError as exc:
                raise ReconcileError(f"the admin key was refused ({exc.status_code}): {_message(exc)}"
                                     ) from None
            except openai.APIStatusError as exc:
                raise ReconcileError(f"{exc.status_code} from the organization API: {_message(exc)}"
                                     ) from None
            except openai.APIConnectionError as exc:
                raise ReconcileError(f"cannot reach the organization API: {exc}") from None
            self.pages_fetched += 1
            yield resp
            if not resp.has_more or not resp.next_page:
                return
            page = resp.next_page

    def _results(self, call: Callable[..., Any], max_limit: int, days: int, kind: str,
                 **params: Any) -> Iterator[tuple[date, Any]]:
        """(bucket day, result) of every page; results of another ``object`` kind are skipped."""
        for resp in self._pages(call, max_limit, days, **params):
            for bucket in resp.data:
                for result in bucket.results:
                    if result.object == kind:
                        yield _day(bucket.start_time), result

    def fetch(self, start: date, end: date) -> Bill:
        """Costs, completions, file_search calls and vector-store usage for UTC days ``[start, end)``."""
        window = {"start_time": _epoch(start), "end_time": _epoch(end), "bucket_width": "1d"}
        n_days = (end - start).days
        costs = [
            BilledCost(day, r.line_item or "(no line item)",
                       float(r.amount.value or 0) if r.amount is not None else 0.0,
                       r.quantity, r.quantity_unit)
            for day, r in self._results(self._usage.costs, COSTS_MAX_LIMIT, n_days,
                                        "organization.costs.result", group_by=["line_item"], **window)
        ]
        tokens = [
            BilledTokens(day, r.model or "(unknown model)", r.input_tokens, r.input_cached_tokens or 0,
                         r.output_tokens, r.num_model_requests)
            for day, r in self._results(self._usage.completions, USAGE_MAX_LIMIT, n_days,
                                        "organization.usage.completions.result", group_by=["model"], **window)
        ]
        calls: dict[date, int] = defaultdict(int)
        for day, r in self._results(self._usage.file_search_calls, USAGE_MAX_LIMIT, n_days,
                                    "organization.usage.file_searches.result", **window):
            calls[day] += r.num_requests
        storage: dict[date, int] = defaultdict(int)
        for day, r in self._results(self._usage.vector_stores, USAGE_MAX_LIMIT, n_days,
                                    "organization.usage.vector_stores.result", **window):
            storage[day] += r.usage_bytes
        return Bill(tuple(costs), tuple(tokens), dict(calls), dict(storage))


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        msg = body.get("message") or (body.get("error") or {}).get("message")
        if msg:
            return str(msg)
    return str(exc.message)


__all__ = ["BillFetcher", "ReconcileError", "admin_client"]
