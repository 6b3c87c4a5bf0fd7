"""The price table: per-model token prices by date, read from a data file, with lookup by snapshot name.

The built-in table is ``analysis/prices.json`` (each entry names its source and date). A user's file in the
same shape (JSON, or TOML when the name ends in ``.toml``), given by ``--prices FILE`` or
``RUNMETER_PRICES``, merges over it: a model the user lists replaces the built-in entry for that model as a
whole; ``tools`` and ``service_tiers`` keys merge one by one.

File shape::

    {"models": {"gpt-4o": [{"from": "2024-08-06", "input": 2.5, "cached_input": 1.25,
                            "cache_write": null, "output": 10, "source": "..."}],
                "gpt-5.6-sol": {"aliases": ["gpt-5.6"], "periods": [...]}},
     "tools": {"file_search_call_per_1k": {"responses": 2.5, "assistants": 0, "chat": 0}},
     "service_tiers": {"flex": 0.5, "batch": 0.5}}

Prices are USD per 1M tokens, held as :class:`~decimal.Decimal` (parsed from the file's text, so ``0.075``
stays exactly 0.075). In a user file ``from`` may be left out (the price then holds from 1970-01-01).
"""

from __future__ import annotations

import itertools
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any

from collector import settings

BUILTIN_PRICES = "prices.json"
_EPOCH = date(1970, 1, 1)
_SNAPSHOT_SUFFIX = re.compile(r"^(\d{4}-\d{2}-\d{2}|\d{4})$")
_PERIOD_KEYS = frozenset({"from", "input", "cached_input", "cache_write", "output", "service_tiers", "source",
                          "checked", "note"})
_TOP_KEYS = frozenset({"schema", "currency", "unit", "notes", "models", "tools", "service_tiers"})

TIER_SERVED_AS = {"fast": "priority"}
"""Requested service tiers the API serves (and reports) under another name: SDK 3.57's ``service_tier``
docstring says a request with ``fast`` or ``priority`` is shown as ``priority``. A run records the request's
tier when the response carries none, so ``fast`` is priced as ``priority``. The model's own entry comes
first (its ``fast``, then its ``priority``), then the table's tiers (``fast``, then ``priority``)."""


class PriceFileError(ValueError):
    """A price file that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """One model's standard-tier prices (USD per 1M tokens) from ``effective_from`` on.

    ``cached_input`` ``None``: no cached discount (cached tokens bill as input). ``cache_write`` ``None``: no
    separate write price (write tokens bill as input).
    """

    effective_from: date
    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None
    service_tiers: Mapping[str, Decimal] = field(default_factory=dict)
    """Per-model tier multipliers (e.g. ``priority: 2``), consulted before the table-wide ones."""
    source: str | None = None


@dataclass(frozen=True, slots=True)
class PriceMatch:
    """The outcome of a lookup: the price that applies, or why there is none."""

    model: str | None
    priced_as: str | None
    """The table entry used (``gpt-4o-mini`` for ``gpt-4o-mini-2024-07-18``); ``None`` when unpriced."""
    price: ModelPrice | None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class PriceTable:
    """Model prices by date, tool prices and service-tier multipliers. Build with :func:`load_price_table`."""

    models: Mapping[str, tuple[ModelPrice, ...]]
    """Periods per model name, sorted by ``effective_from``."""
    aliases: Mapping[str, str] = field(default_factory=dict)
    """Other exact names of a model (``gpt-5.6`` -> ``gpt-5.6-sol``)."""
    file_search_call_per_1k: Mapping[str, Decimal] = field(default_factory=dict)
    """USD per 1,000 file_search calls, per API (``responses``, ``assistants``, ``chat``)."""
    service_tiers: Mapping[str, Decimal] = field(default_factory=dict)
    """Table-wide multipliers on token prices per ``service_tier`` (``flex``, ``batch``, ...)."""
    sources: tuple[str, ...] = ()
    """The files this table was read from, built-in first."""
    _resolved: dict[str, str | None] = field(default_factory=dict, compare=False, repr=False)

    def merged(self, other: PriceTable) -> PriceTable:
        """This table with ``other`` laid over it (a model in ``other`` replaces this table's entry)."""
        models = dict(self.models)
        aliases = {a: m for a, m in self.aliases.items() if a not in other.models}
        models.update(other.models)
        aliases.update(other.aliases)
        return PriceTable(
            models=models,
            aliases=aliases,
            file_search_call_per_1k={**self.file_search_call_per_1k, **other.file_search_call_per_1k},
            service_tiers={**self.service_tiers, **other.service_tiers},
            sources=self.sources + other.sources,
        )

    def resolve_name(self, model: str) -> str | None:
        """The table entry ``model`` is priced as, or ``None``.

        The exact name (or an alias) first; then the longest known name that ``model`` extends with a
        snapshot suffix (``-YYYY-MM-DD`` or ``-MMDD``), so ``gpt-4o-mini-2024-07-18`` is ``gpt-4o-mini``.
        A different model that merely shares a prefix (``gpt-5-pro``, ``o3-mini``) is not matched.
        """
        if model in self.models:
            return model
        if model in self.aliases:
            return self.aliases[model]
        if model not in self._resolved:
            self._resolved[model] = self._longest_snapshot_base(model)
        return self._resolved[model]

    def _longest_snapshot_base(self, model: str) -> str | None:
        best: str | None = None
        for name in (*self.models, *self.aliases):
            if (
                model.startswith(name + "-")
                and _SNAPSHOT_SUFFIX.match(model[len(name) + 1 :])
                and (best is None or len(name) > len(best))
            ):
                best = name
        if best is None:
            return None
        return self.aliases.get(best, best)

    def lookup(self, model: str | None, on: date | None = None) -> PriceMatch:
        """The price of ``model`` on the UTC day ``on`` (``None``: the latest price).

        A day before the model's first period gets the first period's price (launch dates in sources are
        approximate; a run cannot predate its model). An unknown model gives ``price=None`` and a reason.
        """
        if not model:
            return PriceMatch(model, None, None, "no model recorded")
        name = self.resolve_name(model)
        if name is None:
            return PriceMatch(model, None, None, f"model {model!r} is not in the price table")
        periods = self.models[name]
        chosen = periods[-1]
        if on is not None:
            chosen = periods[0]
            for period in periods:
                if period.effective_from <= on:
                    chosen = period
        return PriceMatch(model, name, chosen)

    def tier_multiplier(self, price: ModelPrice, service_tier: str | None) -> Decimal | None:
        """The multiplier on token prices for ``service_tier``; ``None`` when that tier's price is unknown.

        A tier the table does not name is looked up under the name the API serves it as (``fast`` is
        ``priority``: see :data:`TIER_SERVED_AS`). The model's own multipliers come before the table's.
        """
        if service_tier is None:
            return Decimal(1)
        names = [service_tier]
        if service_tier in TIER_SERVED_AS:
            names.append(TIER_SERVED_AS[service_tier])
        for tiers in (price.service_tiers, self.service_tiers):
            for name in names:
                if name in tiers:
                    return tiers[name]
        return None


def _fail(source: str, where: str, what: str) -> PriceFileError:
    return PriceFileError(f"price file {source}: {where}: {what}")


def _decimal(value: Any, source: str, where: str, *, nullable: bool) -> Decimal | None:
    if value is None and nullable:
        return None
    bad = _fail(source, where, f"expected a non-negative number, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        raise bad
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise bad from None
    if not number.is_finite() or number < 0:
        raise bad
    return number


def _required_decimal(value: Any, source: str, where: str) -> Decimal:
    number = _decimal(value, source, where, nullable=False)
    assert number is not None
    return number


def _parse_date(value: Any, source: str, where: str) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise _fail(source, where, f"expected a date YYYY-MM-DD, got {value!r}")


def _multipliers(value: Any, source: str, where: str) -> dict[str, Decimal]:
    if not isinstance(value, Mapping):
        raise _fail(source, where, f"expected a table of tier -> multiplier, got {value!r}")
    out: dict[str, Decimal] = {}
    for tier, factor in value.items():
        if tier in ("source", "note"):
            continue
        out[str(tier)] = _required_decimal(factor, source, f"{where}.{tier}")
    return out


def _parse_period(raw: Any, source: str, where: str, *, require_from: bool) -> ModelPrice:
    if not isinstance(raw, Mapping):
        raise _fail(source, where, f"expected a table of prices, got {raw!r}")
    unknown = set(raw) - _PERIOD_KEYS
    if unknown:
        raise _fail(source, where, f"unknown key(s) {sorted(unknown)} (known: {sorted(_PERIOD_KEYS)})")
    for key in ("input", "output"):
        if key not in raw:
            raise _fail(source, where, f"missing {key!r}")
    if "from" not in raw and require_from:
        raise _fail(source, where, "missing 'from' (the date the price took effect)")
    effective = _parse_date(raw["from"], source, f"{where}.from") if "from" in raw else _EPOCH
    return ModelPrice(
        effective_from=effective,
        input=_required_decimal(raw["input"], source, f"{where}.input"),
        output=_required_decimal(raw["output"], source, f"{where}.output"),
        cached_input=_decimal(raw.get("cached_input"), source, f"{where}.cached_input", nullable=True),
        cache_write=_decimal(raw.get("cache_write"), source, f"{where}.cache_write", nullable=True),
        service_tiers=_multipliers(raw.get("service_tiers", {}), source, f"{where}.service_tiers"),
        source=str(raw["source"]) if raw.get("source") is not None else None,
    )


def _parse_model(
    name: str, raw: Any, source: str, *, require_from: bool
) -> tuple[tuple[ModelPrice, ...], list[str]]:
    where = f"models.{name}"
    aliases: list[str] = []
    periods_raw: Any = raw
    if isinstance(raw, Mapping) and ("periods" in raw or "aliases" in raw):
        unknown = set(raw) - {"periods", "aliases", "note"}
        if unknown:
            raise _fail(source, where, f"unknown key(s) {sorted(unknown)} (known: aliases, periods, note)")
        periods_raw = raw.get("periods")
        alias_raw = raw.get("aliases", [])
        if not isinstance(alias_raw, list) or not all(isinstance(a, str) and a for a in alias_raw):
            raise _fail(source, f"{where}.aliases", f"expected a list of model names, got {alias_raw!r}")
        aliases = list(alias_raw)
    elif isinstance(raw, Mapping):
        periods_raw = [raw]
    if not isinstance(periods_raw, Sequence) or isinstance(periods_raw, str) or not periods_raw:
        raise _fail(source, where, f"expected a non-empty list of price periods, got {periods_raw!r}")
    periods = [
        _parse_period(p, source, f"{where}[{i}]", require_from=require_from)
        for i, p in enumerate(periods_raw)
    ]
    periods.sort(key=lambda p: p.effective_from)
    for a, b in itertools.pairwise(periods):
        if a.effective_from == b.effective_from:
            raise _fail(source, where, f"two periods start on {a.effective_from.isoformat()}")
    return tuple(periods), aliases


def parse_price_table(data: Any, source: str, *, require_from: bool = True) -> PriceTable:
    """Validate parsed price-file content and build a :class:`PriceTable` (pure; no IO).

    Raises :class:`PriceFileError` naming ``source`` and the offending key on any malformed content.
    """
    if not isinstance(data, Mapping):
        raise _fail(source, "top level", f"expected a table with a 'models' key, got {type(data).__name__}")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise _fail(source, "top level", f"unknown key(s) {sorted(unknown)} (known: {sorted(_TOP_KEYS)})")
    models_raw = data.get("models", {})
    if not isinstance(models_raw, Mapping):
        raise _fail(source, "models", f"expected a table of model -> prices, got {models_raw!r}")
    models: dict[str, tuple[ModelPrice, ...]] = {}
    aliases: dict[str, str] = {}
    for name, raw in models_raw.items():
        if not isinstance(name, str) or not name:
            raise _fail(source, "models", f"model names must be non-empty strings, got {name!r}")
        models[name], model_aliases = _parse_model(name, raw, source, require_from=require_from)
        for alias in model_aliases:
            aliases[alias] = name
    calls: dict[str, Decimal] = {}
    tools = data.get("tools", {})
    if not isinstance(tools, Mapping):
        raise _fail(source, "tools", f"expected a table, got {tools!r}")
    per_call = tools.get("file_search_call_per_1k", {})
    if not isinstance(per_call, Mapping):
        where = "tools.file_search_call_per_1k"
        raise _fail(source, where, f"expected a table of api -> USD, got {per_call!r}")
    for api, value in per_call.items():
        calls[str(api)] = _required_decimal(value, source, f"tools.file_search_call_per_1k.{api}")
    tiers = _multipliers(data.get("service_tiers", {}), source, "service_tiers")
    return PriceTable(models, aliases, calls, tiers, (source,))


def read_price_file(path: str | Path, *, require_from: bool = False) -> PriceTable:
    """Read and validate one price file (JSON, or TOML when the name ends in ``.toml``)."""
    path = Path(path)
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PriceFileError(f"price file {source}: cannot be read: {exc.strerror or exc}") from None
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(raw.decode("utf-8"))
        else:
            data = json.loads(raw.decode("utf-8"), parse_float=Decimal)
    except UnicodeDecodeError:
        raise PriceFileError(f"price file {source}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise PriceFileError(f"price file {source}: not valid JSON: {exc.msg} (line {exc.lineno})") from None
    except tomllib.TOMLDecodeError as exc:
        raise PriceFileError(f"price file {source}: not valid TOML: {exc}") from None
    return parse_price_table(data, source, require_from=require_from)


def builtin_price_table() -> PriceTable:
    """The table shipped in ``analysis/prices.json``."""
    text = resources.files("analysis").joinpath(BUILTIN_PRICES).read_text(encoding="utf-8")
    data = json.loads(text, parse_float=Decimal)
    return parse_price_table(data, f"analysis/{BUILTIN_PRICES} (built-in)")


def price_file_from_env(cli_value: str | None, environ: Mapping[str, str]) -> str | None:
    """The user's price file: ``--prices`` if given, else ``RUNMETER_PRICES``, else ``None``."""
    if cli_value:
        return cli_value
    return environ.get(settings.RUNMETER_PRICES) or None


def load_price_table(user_file: str | Path | None = None) -> PriceTable:
    """The built-in table with ``user_file`` (if any) merged over it."""
    table = builtin_price_table()
    if user_file is None:
        return table
    return table.merged(read_price_file(user_file))
