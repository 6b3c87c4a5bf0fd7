"""``runmeter storage``: poll vector-store usage, report GB-days and cost, forecast it, and what-ifs.

``poll`` snapshots every vector store (:mod:`collector.storage_poller`); ``report``, ``forecast`` and
``whatif`` read the snapshots and run :mod:`analysis.storage`. Every table is followed by the billing
assumptions it used; ``--json`` prints the same facts for machines.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import duckdb

from collector import settings
from collector.commands._args import add_day_flag, add_db_flag, add_json_flag, check_span, parse_span
from collector.commands._table import table

NAME = "storage"
HELP = "Vector-store storage: poll usage snapshots, report GB-days and cost, forecast, what-ifs."

_DEFAULT_INTERVAL = 300.0
_MAX_INTERVAL = 86_400.0
_MAX_IDLE_DAYS = 3650
_MAX_EXPIRES_DAYS = 365  # the API's expires_after.days range is 1-365
_MAX_HORIZON = 3650


# --- arguments -------------------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser) -> None:
    add_db_flag(p)
    add_json_flag(p)


def add_assumption_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("billing assumptions")
    g.add_argument("--price-per-gb-day", metavar="USD",
                   help="USD per GB per day (env RUNMETER_STORAGE_PRICE_PER_GB_DAY; default 0.10)")
    g.add_argument("--free-gb", metavar="GB",
                   help="free GB for the whole organization (env RUNMETER_STORAGE_FREE_GB; default 1)")
    g.add_argument("--unit", metavar="gib|gb",
                   help="a billed GB is 2^30 (gib) or 10^9 (gb) bytes "
                        "(env RUNMETER_STORAGE_UNIT; default gib)")
    g.add_argument("--free-per", metavar="day|hour",
                   help="apply the free GB to each UTC day's or each hour's mean GB "
                        "(env RUNMETER_STORAGE_FREE_PER; default day)")


def _window_flags(p: argparse.ArgumentParser) -> None:
    add_day_flag(p, "--from", "first UTC day (default: the day of the first snapshot)", dest="day_from")
    add_day_flag(p, "--to", "last UTC day, included (default: the day of the last poll)", dest="day_to")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``poll``, ``report``, ``forecast`` and ``whatif`` actions and their flags."""
    sub = p.add_subparsers(dest="storage_command", metavar="ACTION", required=True,
                           help="poll, report, forecast or whatif (each has its own --help)")
    poll = sub.add_parser("poll", help="snapshot every vector store (OPENAI_API_KEY, OPENAI_BASE_URL)",
                          description="List every vector store through the SDK and record one snapshot each.")
    _common(poll)
    poll.add_argument("--interval", metavar="S",
                      help="seconds between polls (env RUNMETER_STORAGE_POLL_INTERVAL; default 300)")
    poll.add_argument("--once", action="store_true", help="poll once and exit")

    report = sub.add_parser("report", help="GB-days and cost per UTC day, and per store",
                            description="GB-days and cost per UTC day and per store, from the snapshots.")
    _common(report)
    _window_flags(report)
    report.add_argument("--store", metavar="VS_ID",
                        help="show only this vector store in the per-store tables")
    add_assumption_flags(report)

    forecast = sub.add_parser("forecast", help="daily GB and cost for the next 30 days (linear fit)",
                              description="Forecast daily GB and cost from a linear fit of recent days.")
    _common(forecast)
    forecast.add_argument("--days", metavar="N", help="days to forecast (default 30)")
    forecast.add_argument("--window", metavar="N", help="complete past days to fit (default 14)")
    add_assumption_flags(forecast)

    whatif = sub.add_parser("whatif", help="savings from deleting idle stores or expiring every store",
                            description="Money saved over the observed days under a policy.")
    _common(whatif)
    _window_flags(whatif)
    whatif.add_argument("--idle-days", metavar="N",
                        help="scenario: delete the stores idle more than N days at the last poll")
    whatif.add_argument("--expires-after-days", metavar="N",
                        help="scenario: every store has expires_after N days (anchor last_active_at, 1-365)")
    add_assumption_flags(whatif)


# --- parsing flags (bad input is one line naming the value) ----------------------------------------------


def _setting(value: str | None, flag: str, env: str) -> tuple[str | None, str]:
    """The flag's value, else the environment variable's; with the name to quote in an error."""
    if value is not None:
        return value, flag
    raw = settings.env_str(env, "")
    return (raw or None), f"{env}="


def _int_in(value: str | None, flag: str, lo: int, hi: int, default: int | None) -> int | None:
    if value is None:
        return default
    try:
        n = int(value)
    except ValueError:
        n = lo - 1
    if not lo <= n <= hi:
        raise ValueError(f"{flag} must be a whole number from {lo} to {hi}, got {value!r}")
    return n


def assumptions_from(args: argparse.Namespace) -> Any:
    """The :class:`~analysis.storage.StorageAssumptions` of the flags, else the env vars, else defaults."""
    from analysis.storage import StorageAssumptions

    def decimal(flag: str, env: str, default: str) -> Decimal:
        raw, name = _setting(getattr(args, flag.lstrip("-").replace("-", "_")), flag, env)
        if raw is None:
            return Decimal(default)
        try:
            value = Decimal(raw)
        except InvalidOperation:
            value = Decimal(-1)
        if not value.is_finite() or value < 0:
            sep = "" if name.endswith("=") else " "
            raise ValueError(f"{name}{sep}{raw!r} is not a non-negative number")
        return value

    def choice(flag: str, env: str, options: dict[str, str], default: str) -> str:
        raw, name = _setting(getattr(args, flag.lstrip("-").replace("-", "_")), flag, env)
        if raw is None:
            return default
        key = raw.strip().lower()
        if key not in options:
            sep = "" if name.endswith("=") else " "
            raise ValueError(f"{name}{sep}{raw!r} must be one of {', '.join(options)}")
        return options[key]

    return StorageAssumptions(
        price_per_gb_day=decimal("--price-per-gb-day", settings.RUNMETER_STORAGE_PRICE_PER_GB_DAY, "0.10"),
        free_gb=decimal("--free-gb", settings.RUNMETER_STORAGE_FREE_GB, "1"),
        unit=choice("--unit", settings.RUNMETER_STORAGE_UNIT, {"gib": "GiB", "gb": "GB"}, "GiB"),  # type: ignore[arg-type]
        free_per=choice("--free-per", settings.RUNMETER_STORAGE_FREE_PER, {"day": "day", "hour": "hour"},
                        "day"),  # type: ignore[arg-type]
    )


def assumptions_text(a: Any, until: datetime | None) -> str:
    """The billing assumptions as sentences for a person."""
    size = "2^30" if a.unit == "GiB" else "10^9"
    per = ("each UTC day's mean GB (its GB-days)" if a.free_per == "day"
           else "each hour's mean GB, each hour billed at price/24")
    last = f" or the last poll ({_stamp(until)})" if until is not None else ""
    return (
        f"Assumptions: ${a.price_per_gb_day} per {a.unit} ({size} bytes) per day; the first {a.free_gb} "
        f"{a.unit} free, subtracted once from the organization's total of {per}. The scope of the free GB "
        "and the billing unit are not documented by OpenAI: change them with --price-per-gb-day, --free-gb, "
        "--unit, --free-per.\nGB-days: each snapshot's usage_bytes held until the store's next snapshot, "
        f"its expires_at{last}; expired and deleted stores stop counting."
    )


def assumptions_json(a: Any) -> dict[str, Any]:
    return {"price_per_gb_day": float(a.price_per_gb_day), "free_gb": float(a.free_gb), "unit": a.unit,
            "bytes_per_gb": a.bytes_per_gb, "free_per": a.free_per}


def _stamp(value: datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- poll ------------------------------------------------------------------------------------------------


def _poll(args: argparse.Namespace) -> int:
    import openai

    from collector.storage_poller import StoragePoller, StoreSink

    raw, name = _setting(args.interval, "--interval", settings.RUNMETER_STORAGE_POLL_INTERVAL)
    interval = _DEFAULT_INTERVAL
    if raw is not None:
        try:
            interval = float(raw)
        except ValueError:
            interval = -1.0
        if not 0 < interval <= _MAX_INTERVAL:
            sep = "" if name.endswith("=") else " "
            raise ValueError(f"{name}{sep}{raw!r} must be a number of seconds above 0 and at most 86400")
    if args.once and args.interval is not None:
        raise ValueError("--once and --interval exclude each other")
    try:
        client = openai.OpenAI()
    except openai.OpenAIError as exc:
        raise ValueError(f"cannot create the OpenAI client: {exc}") from None
    poller = StoragePoller(client, StoreSink(args.db))
    stop = threading.Event()
    try:
        while True:
            try:
                result = poller.poll_once()
            except (openai.OpenAIError, OSError) as exc:
                print(f"runmeter storage: poll failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                if args.once:
                    return 1
            else:
                print(_poll_line(result, args.db, args.json), flush=True)
            if args.once:
                return 0
            stop.wait(interval)
    except KeyboardInterrupt:
        return 0
    finally:
        client.close()


def _poll_line(result: Any, db: str, as_json: bool) -> str:
    if as_json:
        return json.dumps({
            "observed_at": result.observed_at, "stores": len(result.rows), "deleted": list(result.deleted),
            "billed_bytes": result.billed_bytes, "outcome": result.outcome,
            "snapshots": [{"vector_store_id": r.vector_store_id, "status": r.status,
                           "usage_bytes": r.usage_bytes} for r in result.rows],
        })
    when = datetime.fromtimestamp(result.observed_at, UTC)
    expired = sum(1 for r in result.rows if r.status == "expired")
    where = f"stored in {db}" if result.outcome == "stored" else f"spooled beside {db} (store busy)"
    return (f"{_stamp(when)}  {len(result.rows) - len(result.deleted):,} stores ({expired:,} expired), "
            f"{len(result.deleted):,} deleted, {result.billed_bytes:,} billed bytes; {where}")


# --- reading the snapshots -------------------------------------------------------------------------------


class _Window:
    """The UTC days ``[start, end)`` to report and ``until``, the time of the last poll (naive UTC)."""

    def __init__(self, first: datetime, until: datetime, start: date, end: date) -> None:
        self.first, self.until, self.start, self.end = first, until, start, end


def _open(db: str) -> tuple[duckdb.DuckDBPyConnection, datetime, datetime] | None:
    from analysis.snapshots import snapshot_span
    from collector.storage_poller import open_snapshots

    conn = open_snapshots(db)
    conn.execute("SET TimeZone = 'UTC'")
    span = snapshot_span(conn)
    if span is None:
        conn.close()
        return None
    return conn, *span


def _days(args: argparse.Namespace) -> tuple[date | None, date | None]:
    """``--from`` and ``--to``, checked before the store is opened so bad input fails alike on any store."""
    return parse_span(args.day_from, "--from", args.day_to, "--to")


def _window(days: tuple[date | None, date | None], first: datetime, until: datetime) -> _Window:
    day_from, day_to = days
    start = day_from or first.date()
    last = day_to or until.date()
    check_span(start, "--from" if day_from else "the first snapshot's day",
               last, "--to" if day_to else "the last poll's day")
    return _Window(first, until, start, last + timedelta(days=1))


def _no_snapshots(db: str) -> int:
    print(f"runmeter storage: no vector-store snapshots in {db} yet; run `runmeter storage poll` first",
          file=sys.stderr)
    return 1


def _cost_rows(costs: Any) -> list[tuple[object, ...]]:
    return [(c.day.isoformat(), float(c.gb_days), float(c.billable_gb_days), float(c.cost_usd))
            for c in costs]


def _cost_json(costs: Any) -> list[dict[str, Any]]:
    return [{"day": c.day.isoformat(), "gb_days": float(c.gb_days),
             "billable_gb_days": float(c.billable_gb_days), "cost_usd": float(c.cost_usd)} for c in costs]


# --- report ----------------------------------------------------------------------------------------------


def _report(args: argparse.Namespace) -> int:
    from analysis.snapshots import latest_snapshots
    from analysis.storage import daily_gb_days, daily_storage_costs
    from analysis.totals import gb_days_by_store, storage_total

    assumptions = assumptions_from(args)
    span = _days(args)
    opened = _open(args.db)
    if opened is None:
        return _no_snapshots(args.db)
    conn, first, until = opened
    try:
        w = _window(span, first, until)
        stores = latest_snapshots(conn)
        if args.store is not None and args.store not in {s["vector_store_id"] for s in stores}:
            raise ValueError(f"--store {args.store!r}: no snapshots of that vector store in {args.db}")
        costs = daily_storage_costs(conn, w.start, w.end, until=until, assumptions=assumptions)
        per_day = daily_gb_days(conn, w.start, w.end, until=until, assumptions=assumptions)
    finally:
        conn.close()
    store_days = [r for r in per_day.iter_rows(named=True) if args.store in (None, r["vector_store_id"])]
    gb_by_store = gb_days_by_store(per_day)
    shown = [s for s in stores if args.store in (None, s["vector_store_id"])]
    t = storage_total(costs)
    total = (t.gb_days, t.billable_gb_days, t.cost_usd)
    if args.json:
        print(json.dumps({
            "window": {"from": w.start.isoformat(), "to": (w.end - timedelta(days=1)).isoformat(),
                       "first_snapshot": _iso(first), "last_poll": _iso(until)},
            "days": _cost_json(costs),
            "total": {"gb_days": float(total[0]), "billable_gb_days": float(total[1]),
                      "cost_usd": float(total[2])},
            "stores": [{**{k: (_iso(v) if isinstance(v, datetime) else v) for k, v in s.items()},
                        "gb_days": gb_by_store.get(s["vector_store_id"], 0.0)} for s in shown],
            "store_days": [{"day": r["day"].isoformat(), "vector_store_id": r["vector_store_id"],
                            "gb_days": r["gb_days"]} for r in store_days],
            "assumptions": {**assumptions_json(assumptions), "text": assumptions_text(assumptions, until)},
        }, indent=2))
        return 0
    unit = assumptions.unit
    rows = _cost_rows(costs)
    rows.append(("total", float(total[0]), float(total[1]), float(total[2])))
    print(table(["day (UTC)", f"{unit}-days", f"billable {unit}-days", "cost USD"], rows,
                title=f"Vector-store storage, {w.start} to {w.end - timedelta(days=1)} "
                      f"(last poll {_stamp(until)})"))
    print()
    print(table(
        ["vector store", "name", "status", "bytes now", "files", f"{unit}-days", "last active", "expires at"],
        [(s["vector_store_id"], s["name"], s["status"], s["usage_bytes"], s["files"],
          gb_by_store.get(s["vector_store_id"], 0.0), _stamp(s["last_active_at"]), _stamp(s["expires_at"]))
         for s in shown],
        title="Stores (latest snapshot; GB-days over the window)"))
    print()
    print(assumptions_text(assumptions, until))
    return 0


# --- forecast --------------------------------------------------------------------------------------------


def _forecast(args: argparse.Namespace) -> int:
    from analysis.storage import no_forecast_reason, storage_forecast

    assumptions = assumptions_from(args)
    horizon = _int_in(args.days, "--days", 1, _MAX_HORIZON, 30)
    window = _int_in(args.window, "--window", 1, _MAX_HORIZON, 14)
    assert horizon is not None and window is not None
    opened = _open(args.db)
    if opened is None:
        return _no_snapshots(args.db)
    conn, first, until = opened
    today = until.date()
    try:
        fc = storage_forecast(conn, today, until=until, horizon_days=horizon, window_days=window,
                              assumptions=assumptions)
    finally:
        conn.close()
    if fc is None:
        print(f"runmeter storage: {no_forecast_reason(today, first, until)}", file=sys.stderr)
        return 1
    method = (f"{fc.method}. Fitted days: {fc.fitted_days[0]} to {fc.fitted_days[-1]}; slope "
              f"{fc.slope_gb_per_day:.6g} {assumptions.unit}/day. The free GB is applied per day.")
    if args.json:
        print(json.dumps({
            "method": method, "slope_gb_per_day": fc.slope_gb_per_day, "intercept_gb": fc.intercept_gb,
            "fitted_days": [d.isoformat() for d in fc.fitted_days], "last_poll": _iso(until),
            "days": [{"day": p.day.isoformat(), "gb": p.gb, "cost_usd": p.cost_usd} for p in fc.points],
            "total_cost_usd": fc.total_cost_usd,
            "assumptions": {**assumptions_json(assumptions), "text": assumptions_text(assumptions, until)},
        }, indent=2))
        return 0
    rows: list[tuple[object, ...]] = [(p.day.isoformat(), p.gb, p.cost_usd) for p in fc.points]
    rows.append(("total", None, fc.total_cost_usd))
    print(table(["day (UTC)", assumptions.unit, "cost USD"], rows,
                title=f"Storage forecast, next {horizon} days"))
    print()
    print(f"Method: {method}")
    print(assumptions_text(assumptions, until))
    return 0


# --- what-if ---------------------------------------------------------------------------------------------


def _whatif(args: argparse.Namespace) -> int:
    from analysis.storage import whatif_delete_idle, whatif_expires_after
    from analysis.totals import storage_total

    assumptions = assumptions_from(args)
    idle = _int_in(args.idle_days, "--idle-days", 1, _MAX_IDLE_DAYS, None)
    expires = _int_in(args.expires_after_days, "--expires-after-days", 1, _MAX_EXPIRES_DAYS, None)
    if idle is None and expires is None:
        raise ValueError("give --idle-days N and/or --expires-after-days N")
    span = _days(args)
    opened = _open(args.db)
    if opened is None:
        return _no_snapshots(args.db)
    conn, first, until = opened
    try:
        w = _window(span, first, until)
        scenarios = []
        if idle is not None:
            scenarios.append(whatif_delete_idle(conn, idle, w.start, w.end, as_of=until,
                                                assumptions=assumptions))
        if expires is not None:
            scenarios.append(whatif_expires_after(conn, expires, w.start, w.end, as_of=until,
                                                  assumptions=assumptions))
    finally:
        conn.close()
    days = (w.end - w.start).days

    def total(costs: Any) -> Decimal:
        return storage_total(costs).cost_usd

    if args.json:
        print(json.dumps({
            "window": {"from": w.start.isoformat(), "to": (w.end - timedelta(days=1)).isoformat(),
                       "last_poll": _iso(until)},
            "scenarios": [{
                "scenario": s.scenario, "stores": list(s.stores), "baseline_usd": float(total(s.baseline)),
                "scenario_usd": float(total(s.scenario_costs)), "saved_usd": float(s.savings_usd),
                "saved_last_day_usd": float(s.savings_last_day_usd),
                "days": [{"day": b.day.isoformat(), "baseline_usd": float(b.cost_usd),
                          "scenario_usd": float(c.cost_usd)}
                         for b, c in zip(s.baseline, s.scenario_costs, strict=True)],
            } for s in scenarios],
            "assumptions": {**assumptions_json(assumptions), "text": assumptions_text(assumptions, until)},
        }, indent=2))
        return 0
    print(table(
        ["scenario", "stores", "baseline USD", "scenario USD", "saved USD", "saved on last day USD"],
        [(s.scenario, len(s.stores), float(total(s.baseline)), float(total(s.scenario_costs)),
          float(s.savings_usd), float(s.savings_last_day_usd)) for s in scenarios],
        title=f"What-if, {w.start} to {w.end - timedelta(days=1)} ({days} days; last poll {_stamp(until)})"))
    for s in scenarios:
        print(f"\n{s.scenario}: {', '.join(s.stores) if s.stores else 'no store affected'}")
    print()
    print(assumptions_text(assumptions, until))
    return 0


_ACTIONS: dict[str, Callable[[argparse.Namespace], int]] = {
    "poll": _poll, "report": _report, "forecast": _forecast, "whatif": _whatif,
}


def run(args: argparse.Namespace) -> int:
    """Run the chosen action; bad input raises ValueError (one line, exit 2, from ``runmeter``)."""
    return _ACTIONS[args.storage_command](args)
