"""The 30-day storage forecast is one rule, applied by analysis, and every face shows its result.

``analysis.storage.storage_forecast`` fits only the complete UTC days the snapshots cover (the first
snapshot's day counts only if it began at midnight) and returns ``None`` when there is none. The CLI
(``runmeter storage forecast``), the Streamlit storage page and the Prometheus exporter
(``runmeter_storage_forecast_usd_per_day``) each show that result: a store polled only today has no
forecast anywhere (the page used to say $0.00 and /metrics 0.0), and a store with days of snapshots has the
same forecast everywhere. Stores are written with the poller's own ``StoreSink``.

Growing store (GiB = 2^30 bytes; one store ``vs_grow``; last poll 2026-03-05 06:00 UTC, so "today" is
2026-03-05):

* 2026-03-01 09:00: 1 GiB (the first snapshot: its day is partial, 0.625 GiB-days, and is not fitted);
* 2026-03-02 00:00: 2 GiB, 2026-03-03 00:00: 4 GiB, 2026-03-04 00:00: 5 GiB (three complete days);
* 2026-03-05 06:00: 6 GiB (today: not complete, not fitted).

Fit over x = 0, 1, 2 (Mar 2, 3, 4), y = 2, 4, 5 GiB: mean x = 1, mean y = 11/3;
sxy = (-1)(2 - 11/3) + 0 + (1)(5 - 11/3) = 5/3 + 4/3 = 3, sxx = 2, so slope = 3/2 GiB/day and
intercept = 11/3 - 3/2 = 13/6 GiB. The forecast days Mar 5 .. Apr 3 are x = 3 .. 32: GiB = 13/6 + 3x/2,
cost = $0.10 x (GiB - 1 free). Last day (x = 32): 13/6 + 48 = 301/6 GiB, cost 0.1 x 295/6 = $59/12
(4.91666...). Total: 0.1 x (30 x 7/6 + 3/2 x (3 + ... + 32)) = 0.1 x (35 + 3/2 x 525) = $82.25.
"""

from __future__ import annotations

import json
import time
import urllib.request
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import pytest
from prometheus_client.parser import text_string_to_metric_families
from streamlit.testing.v1 import AppTest
from test_dashboard_apptest import _open, metrics

from analysis.storage import StorageForecast, linear_forecast, storage_forecast
from collector.cli import main
from collector.commands import dashboard as command
from collector.metrics.exporter import StoreCollector
from collector.metrics.sidecar import Sidecar
from collector.storage_poller import SnapshotRow, StoreSink

APP = str(command.app_path())
GIB = 2**30
FORECAST = "runmeter_storage_forecast_usd_per_day"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _ts(year: int, month: int, day: int, hour: int = 0) -> float:
    return datetime(year, month, day, hour, tzinfo=UTC).timestamp()


FIRST = _ts(2026, 3, 1, 9)
LAST = _ts(2026, 3, 5, 6)
GROWTH = [(FIRST, 1), (_ts(2026, 3, 2), 2), (_ts(2026, 3, 3), 4), (_ts(2026, 3, 4), 5), (LAST, 6)]


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@pytest.fixture(scope="module")
def today_only(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float, float]:
    """One store polled twice in the last minutes: no complete UTC day before the last poll's day (even
    just after midnight the first poll's day is partial)."""
    db = tmp_path_factory.mktemp("forecast_today") / "runmeter.duckdb"
    now = time.time()
    first, last = now - 600, now - 60
    sink = StoreSink(db)
    assert sink.write([SnapshotRow("vs_new", first, 3 * GIB, "completed", "new")]) == "stored"
    assert sink.write([SnapshotRow("vs_new", last, 3 * GIB, "completed", "new")]) == "stored"
    return db, first, last


@pytest.fixture(scope="module")
def growing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("forecast_growing") / "runmeter.duckdb"
    sink = StoreSink(db)
    for t, gib in GROWTH:  # one write per poll, as the poller does
        assert sink.write([SnapshotRow("vs_grow", t, gib * GIB, "completed", "grow")]) == "stored"
    return db


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _page(db: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("RUNMETER_DB", str(db))
    return _open(AppTest.from_file(APP, default_timeout=60), "storage")


def _samples(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _analysis(db: Path, today: date, until: datetime) -> StorageForecast | None:
    with duckdb.connect(str(db), read_only=True) as con:
        return storage_forecast(con, today, until=until)


# ----------------------------------------------------------------------------- (a) no complete day yet

def test_a_store_polled_only_today_has_no_forecast_on_any_face(
    today_only: tuple[Path, float, float], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db, first, last = today_only
    until = datetime.fromtimestamp(last, UTC)
    today = until.date()
    assert _analysis(db, today, until) is None
    reason = (f"forecast needs one complete UTC day of snapshots before {today} "
              f"(first snapshot {_stamp(first)}, last poll {_stamp(last)})")

    code, out, err = _cli(capsys, "storage", "forecast", "--db", str(db))
    assert (code, out, err) == (1, "", f"runmeter storage: {reason}\n")
    code, out, err = _cli(capsys, "storage", "forecast", "--db", str(db), "--json")
    assert (code, out, err) == (1, "", f"runmeter storage: {reason}\n")

    app = _page(db, monkeypatch)
    m = metrics(app)
    assert m["Stored now (GiB)"] == "3.000"  # the page itself works
    assert m["Forecast, next 30 days"] == "not yet" and "$" not in m["Forecast, next 30 days"]
    [shown] = [x for x in app.metric if x.label == "Forecast, next 30 days"]
    assert shown.help == reason
    assert [i.value for i in app.info] == [f"No forecast yet: {reason}."]
    assert len(app.get("vega_lite_chart")) == 2  # GB per store and cost per day; no forecast chart

    sidecar = Sidecar(db, port=0, flush_interval=0.2)
    try:
        with urllib.request.urlopen(sidecar.url + "metrics", timeout=10) as resp:
            resp.read()
        sidecar.collector.wait_forecast()  # the forecast ran (and found none) ...
        with urllib.request.urlopen(sidecar.url + "metrics", timeout=10) as resp:
            s = _samples(resp.read().decode())
    finally:
        sidecar.close()
    assert s[("runmeter_storage_billable_gigabytes", ())] == 2.0  # the store was read
    assert not any(name == FORECAST for name, _ in s)  # ... and the gauge is left out, not 0


# ------------------------------------------------------------------ (b) three complete days, one partial

def test_three_complete_days_give_the_same_forecast_on_every_face(
    growing: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    until = datetime.fromtimestamp(LAST, UTC)
    fc = _analysis(growing, date(2026, 3, 5), until)
    assert fc is not None
    # the fit used exactly the three complete days (module doc: slope 3/2, intercept 13/6)
    assert fc.fitted_days == (date(2026, 3, 2), date(2026, 3, 3), date(2026, 3, 4))
    assert fc.slope_gb_per_day == pytest.approx(1.5) and fc.intercept_gb == pytest.approx(13 / 6)
    assert (fc.points[0].day, fc.points[-1].day) == (date(2026, 3, 5), date(2026, 4, 3))
    assert fc.points[-1].gb == pytest.approx(301 / 6)
    assert fc.points[-1].cost_usd == pytest.approx(59 / 12)
    assert fc.total_cost_usd == pytest.approx(82.25)
    # what the faces used to fit (14 days, 0 GB before the first snapshot, the partial first day) differs
    old = linear_forecast([(date(2026, 2, d), 0.0) for d in range(19, 29)]
                          + [(date(2026, 3, 1), 0.625), (date(2026, 3, 2), 2.0), (date(2026, 3, 3), 4.0),
                             (date(2026, 3, 4), 5.0)])
    assert abs(old.total_cost_usd - fc.total_cost_usd) > 1

    code, out, err = _cli(capsys, "storage", "forecast", "--db", str(growing), "--json")
    assert code == 0, err
    cli = json.loads(out)
    assert cli["total_cost_usd"] == fc.total_cost_usd
    assert cli["fitted_days"] == ["2026-03-02", "2026-03-03", "2026-03-04"]
    assert cli["slope_gb_per_day"] == fc.slope_gb_per_day
    assert "the last 3 complete days" in cli["method"]

    app = _page(growing, monkeypatch)
    assert metrics(app)["Forecast, next 30 days"] == f"${fc.total_cost_usd:,.2f}" == "$82.25"
    assert not app.info and len(app.get("vega_lite_chart")) == 3

    collector = StoreCollector(growing, clock=lambda: LAST, forecast_ttl=1e9)
    try:
        list(collector.collect())
        collector.wait_forecast()
        s = {(x.name, tuple(sorted(x.labels.items()))): x.value
             for family in collector.collect() for x in family.samples}
    finally:
        collector.close()
    assert s[(FORECAST, ())] == fc.points[-1].cost_usd
