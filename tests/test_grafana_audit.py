"""Audit of how the dashboards and rules use runmeter's data, against what runmeter really exports.

The other Grafana tests read a hand-written, runmeter-shaped exposition; here the series come from a
real ``runmeter serve`` (:class:`~collector.metrics.sidecar.Sidecar`) over a real DuckDB store, fed run
records the way recording processes are (tool-call Assistants runs seen at ``requires_action`` and
then settled, cache writes, unpriced models, chat streams without usage, every status). Every
selector, grouping label and literal label value in every panel and rule must exist in that scrape,
and a real Prometheus scraping the sidecar must compute the numbers the panels and rules claim.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import require_binary
from prom_helpers import (
    DASHBOARDS,
    GRAFANA,
    GRAFANA_DEFAULTS,
    METRICS_MD,
    RULES,
    PrometheusServer,
    Selector,
    panel_queries,
    scan_selectors,
    start_prometheus,
    substitute_grafana_vars,
)
from prometheus_client.parser import text_string_to_metric_families

from collector.metrics import families as fam
from collector.metrics.sidecar import Sidecar
from collector.record import INTERRUPTED, TERMINAL_STATUSES, RunRecord
from collector.storage_poller import SnapshotRow, StoreSink

RUNBOOK = GRAFANA / "RUNBOOK.md"
DATASOURCE = GRAFANA / "provisioning" / "datasources" / "prometheus.yaml"
TARGET_LABELS = frozenset({"job", "instance"})
"""Labels Prometheus adds to every scraped series."""
GIB = 2**30
UNPRICED_MODEL = "ft:gpt-4o-mini:acme::audit"
ROUNDS = 3
"""Rounds of identical traffic: one before Prometheus starts, the rest scraped."""

# One round of traffic, per (api, model). Assistants/gpt-4o runs call a tool: each is observed at
# requires_action (first stream) and then settled (second stream), in separate writer batches.
TOOL_RUNS_COMPLETED = 17
TOOL_RUNS_FAILED = 3
TOOL_INPUT = (1000, 200, 0)  # input, cached, cache_write at requires_action
TOOL_FINAL_INPUT = (2500, 400, 100)  # cumulative at the terminal event


def _rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def _dashboards() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in DASHBOARDS}


def _panel(dashboard: str, title: str) -> dict[str, Any]:
    panels: list[dict[str, Any]] = _dashboards()[dashboard]["panels"]
    return next(p for p in panels if p["title"] == title)


# Traffic


def _round_first(r: int) -> list[RunRecord]:
    """The first writer batch of round ``r``: every run but the tool-call runs' settlement."""
    now = time.time()
    out = []
    inp, cached, written = TOOL_INPUT
    for i in range(TOOL_RUNS_COMPLETED + TOOL_RUNS_FAILED):
        out.append(RunRecord(f"run_{r}_{i}", "assistants", "gpt-4o", "requires_action", thread_id=f"t{r}_{i}",
                             started_at=now, ttft_seconds=0.8, input_tokens=inp, cached_input_tokens=cached,
                             cache_write_tokens=written, output_tokens=50, file_search_calls=1,
                             retrieved_chunks=6, streams=1))
    statuses = sorted((TERMINAL_STATUSES | {INTERRUPTED}) - {"requires_action"})
    for i, status in enumerate(statuses):
        out.append(RunRecord(f"resp_{r}_{i}", "responses", "gpt-5", status, started_at=now, ttft_seconds=0.4,
                             duration_seconds=3.0, input_tokens=1500, cached_input_tokens=500,
                             output_tokens=300, reasoning_tokens=100, file_search_calls=1,
                             retrieved_chunks=4, streams=1))
    out.append(RunRecord(f"chat_{r}", "chat", "gpt-4o-mini", "completed", started_at=now, ttft_seconds=0.2,
                         duration_seconds=1.0, streams=1, extra={"chat_stream_without_usage": True}))
    out.append(RunRecord(f"ft_{r}", "chat", UNPRICED_MODEL, "completed", started_at=now, ttft_seconds=0.3,
                         duration_seconds=1.5, input_tokens=20, output_tokens=5, streams=1))
    return out


def _round_second(r: int) -> list[RunRecord]:
    """The tool-call runs settling after their tool outputs were submitted (the second stream)."""
    now = time.time()
    inp, cached, written = TOOL_FINAL_INPUT
    return [RunRecord(f"run_{r}_{i}", "assistants", "gpt-4o",
                      "completed" if i < TOOL_RUNS_COMPLETED else "failed", thread_id=f"t{r}_{i}",
                      started_at=now - 6, completed_at=now, duration_seconds=6.0, input_tokens=inp,
                      cached_input_tokens=cached, cache_write_tokens=written, output_tokens=120,
                      file_search_calls=1, retrieved_chunks=6, streams=2)
            for i in range(TOOL_RUNS_COMPLETED + TOOL_RUNS_FAILED)]


def _write_round(sidecar: Sidecar, r: int) -> None:
    writer = sidecar.writer
    assert writer is not None, sidecar.refused
    for batch in (_round_first(r), _round_second(r)):
        for record in batch:
            writer.submit(record)
        assert writer.flush()


@dataclass
class Served:
    """The sidecar after round 0, and its ``/metrics`` text then."""

    sidecar: Sidecar
    text: str

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.sidecar.server.port}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    db = tmp_path_factory.mktemp("audit") / "runmeter.duckdb"
    now = time.time()
    sink = StoreSink(db)
    rows = [SnapshotRow("vs_big", now - 60, 2 * GIB, "completed", "big"),
            SnapshotRow("vs_small", now - 60, GIB // 2, "in_progress", "small"),
            SnapshotRow("vs_old", now - 60, GIB, "expired", "old")]
    assert sink.write(rows) == "stored"
    # two days back: one complete UTC day of snapshots, so the storage forecast exists
    assert sink.write([SnapshotRow("vs_big", now - 2 * 86_400, 2 * GIB, "completed", "big")]) == "stored"
    sidecar = Sidecar(db, port=0, flush_interval=0.2)
    try:
        _write_round(sidecar, 0)
        sidecar.collector.read()  # starts the storage forecast, which is computed off the scrape path
        sidecar.collector.wait_forecast()
        with urllib.request.urlopen(sidecar.url + "metrics", timeout=10) as resp:
            text = resp.read().decode()
        yield Served(sidecar, text)
    finally:
        sidecar.close()


@dataclass(frozen=True)
class Exported:
    """What one scrape exposes: label names and values per sample name."""

    labels: dict[str, dict[str, set[str]]]

    @classmethod
    def parse(cls, text: str) -> Exported:
        labels: dict[str, dict[str, set[str]]] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                per = labels.setdefault(s.name, {})
                for k, v in s.labels.items():
                    per.setdefault(k, set()).add(v)
        return cls(labels)


def _records() -> dict[str, set[str]]:
    """Recording rule name -> the labels its series carry (its grouping labels plus static labels)."""
    out: dict[str, set[str]] = {}
    for r in _rules():
        if "record" in r:
            names = set(_grouping_labels(r["expr"])) | set(r.get("labels", {}))
            if not names:  # deriv() and friends keep the source series' labels
                names = {n for s in scan_selectors(r["expr"]) for n in _source_labels(s.metric)}
            out.setdefault(r["record"], set()).update(names)
    return out


def _source_labels(metric: str) -> set[str]:
    f = fam.BY_NAME.get(re.sub(r"_(bucket|sum|count)$", "", metric)) or fam.BY_NAME.get(metric)
    return set(TARGET_LABELS) | (set(f.labels) if f else set())


_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def _grouping_labels(expr: str) -> list[str]:
    return [x.strip() for m in _GROUPING.finditer(expr) for x in m.group(1).split(",") if x.strip()]


def _all_exprs() -> list[tuple[str, str]]:
    """(where, expr) for every panel target, variable query and rule."""
    out = []
    for name, d in _dashboards().items():
        for panel, target in panel_queries(d):
            out.append((f"{name} / {panel['title']} / {target.get('refId')}", str(target["expr"])))
        for v in d.get("templating", {}).get("list", []):
            if v.get("type") == "query":
                q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
                m = re.match(r"^label_values\((.*),\s*\w+\)$", q.strip(), re.S)
                assert m, q
                out.append((f"{name} / ${v['name']}", m.group(1)))
    for r in _rules():
        out.append((r.get("alert") or r["record"], str(r["expr"])))
    return out


def _literal_values(sel: Selector, label: str) -> list[str]:
    """The values a literal `=` or simple alternation `=~` matcher on ``label`` asks for."""
    found = sel.matcher(label)
    if found is None or "$" in found[1]:
        return []
    op, value = found
    if op == "=":
        return [value]
    if op == "=~" and re.fullmatch(r"[\w.+-]+(\|[\w.+-]+)*", value):
        return value.split("|")
    return []


def _reference_problems(exported: Exported) -> list[str]:
    records = _records()
    problems = []
    for where, expr in _all_exprs():
        sels = scan_selectors(expr)
        available: set[str] = set(TARGET_LABELS)
        for s in sels:
            if s.metric == "up":
                available |= TARGET_LABELS
                continue
            if s.metric in records:
                have = records[s.metric] | TARGET_LABELS
            elif s.metric in exported.labels:
                have = set(exported.labels[s.metric]) | TARGET_LABELS
            else:
                problems.append(f"{where}: {s.metric} is neither exported nor recorded")
                continue
            available |= have
            for label, _, _ in s.matchers:
                if label not in have:
                    problems.append(f"{where}: {s.metric} has no label {label!r}")
                    continue
                values = exported.labels.get(s.metric, {}).get(label)
                if values is None:
                    continue  # a recorded series: its label values are checked where it is recorded
                missing = [v for v in _literal_values(s, label) if v not in values]
                if missing:
                    problems.append(f"{where}: {s.metric}{{{label}}} is never {missing} (exported: "
                                    f"{sorted(values)})")
        for label in _grouping_labels(expr):
            if label not in available:
                problems.append(f"{where}: groups by {label!r}, which no series it reads carries")
    return problems


# Every reference against a real scrape


def test_every_selector_label_and_value_is_exported(served: Served) -> None:
    assert _reference_problems(Exported.parse(served.text)) == []


def test_the_reference_check_catches_wrong_names_labels_and_values(served: Served) -> None:
    exported = Exported.parse(served.text)
    assert "runmeter_cost_usd_total" in exported.labels
    # The scrape covers every label value the code can produce for the closed sets.
    assert exported.labels["runmeter_runs_total"]["status"] == (TERMINAL_STATUSES | {INTERRUPTED}) - {
        "requires_action"}  # a pause, not an outcome: a tool-call run counts once, when it settles
    assert exported.labels["runmeter_tokens_total"]["token_type"] == {
        "input", "cached_input", "cache_write", "output", "reasoning"}
    assert exported.labels["runmeter_unpriced_runs_total"]["model"] == {fam.OTHER_MODEL}
    broken = Exported({k: v for k, v in exported.labels.items() if k != "runmeter_cost_usd_total"})
    assert any("runmeter_cost_usd_total is neither" in p for p in _reference_problems(broken))
    renamed = Exported({**exported.labels, "runmeter_runs_total": {
        **exported.labels["runmeter_runs_total"], "status": {"completed", "failed", "interrupted"}}})
    assert any("is never ['expired']" in p for p in _reference_problems(renamed))
    no_le = Exported({**exported.labels, "runmeter_run_duration_seconds_bucket": {"api": {"chat"}}})
    assert any("groups by 'le'" in p or "no label" in p for p in _reference_problems(no_le))


def test_histogram_quantile_aggregations_keep_le() -> None:
    bad = []
    call = r"histogram_quantile\(\s*[\d.]+\s*,\s*"
    for where, expr in _all_exprs():
        for m in re.finditer(call + r"(sum|max|min|avg)\s+by\s*\(([^)]*)\)", expr):
            if "le" not in [x.strip() for x in m.group(2).split(",")]:
                bad.append(where)
        if "histogram_quantile(" in expr and not re.search(call + r"\w+\s+by", expr):
            bad.append(f"{where}: histogram_quantile without an explicit `by (..., le)`")
    assert bad == []


# Units


def _dimension(expr: str) -> str:
    """What a panel's expression measures, from the families it reads and how."""
    sels = [s for s in scan_selectors(expr) if s.metric.startswith("runmeter_")]
    names = {s.metric for s in sels}
    if "histogram_quantile" in expr:
        return "seconds" if any(n.endswith("_seconds_bucket") for n in names) else "count"
    if " / " in expr:  # sum over count, or a per-run ratio
        return "seconds" if any(n.endswith("_seconds_sum") for n in names) else "count"
    if any(n.startswith("runmeter_cost_usd") for n in names):
        return "usd_rate"
    if any(n.endswith("_usd_per_day") for n in names):
        return "usd"
    if any(n.endswith("_timestamp_seconds") for n in names):
        return "seconds" if expr.lstrip().startswith("time()") else "timestamp"
    if any(n.endswith("_gigabytes") for n in names):
        return "gibibytes"
    if any(n.endswith("_bytes") for n in names):
        return "bytes"
    if names == {fam.STORE_UP.name}:
        return "bool"
    if any(s.range is not None for s in sels):
        return "per_second"
    return "count"


UNITS = {
    "seconds": {"s", "dtdurations"},
    "count": {"short", "none"},
    "usd_rate": {"currencyUSD"},
    "usd": {"currencyUSD"},
    "timestamp": {"dateTimeAsIso", "dateTimeFromNow"},
    "gibibytes": {"gbytes"},  # StorageAssumptions' default unit is GiB; Grafana's gbytes is IEC
    "bytes": {"bytes"},
    "bool": {"bool", "bool_yes_no"},
    "per_second": {"ops", "cps", "reqps", "short"},
}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_panel_units_match_what_the_query_measures(path: Path) -> None:
    d = json.loads(path.read_text())
    wrong = []
    for panel, target in panel_queries(d):
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        dim = _dimension(str(target["expr"]))
        if unit not in UNITS[dim]:
            wrong.append((panel["title"], target.get("refId"), dim, unit))
        if dim == "usd_rate":
            per = {"3600": "per hour", "86400": "per day"}
            factor = re.search(r"\*\s*(3600|86400)\s*$", str(target["expr"]))
            if factor is None or per[factor.group(1)] not in str(panel.get("description", "")):
                wrong.append((panel["title"], target.get("refId"), "spend not per hour/day", unit))
    assert wrong == []


def test_unit_inference() -> None:
    assert _dimension("time() - max(runmeter_storage_last_poll_timestamp_seconds)") == "seconds"
    assert _dimension("sum(rate(runmeter_cost_usd_total[5m])) * 3600") == "usd_rate"
    assert _dimension("histogram_quantile(0.5, sum by (le) (rate(runmeter_run_duration_seconds_bucket[1m])))"
                      ) == "seconds"
    assert _dimension("sum(rate(runmeter_tokens_total[1m])) / sum(rate(runmeter_runs_total[1m]))") == "count"
    assert _dimension("sum(runmeter_vector_stores_usage_bytes)") == "bytes"


# Per-run semantics


def test_per_run_ratios_do_not_count_requires_action_as_a_run() -> None:
    """Stores written before runmeter stopped counting requires_action still export that series (each
    tool-call run counted there and again when it settled): a denominator over every status would count
    those runs twice (halving failure ratios and per-run figures)."""
    bad = []
    for where, expr in _all_exprs():
        if not re.search(r"\)\s*/", expr):
            continue
        denominator = re.split(r"\)\s*/\s*", expr, maxsplit=1)[-1]
        for s in scan_selectors(denominator):
            if s.metric == fam.RUNS.name and s.matcher("status") != ("!=", "requires_action"):
                bad.append(where)
    assert bad == []


def test_input_tokens_per_run_counts_every_input_token_type() -> None:
    panel = _panel("runmeter-retrieval", "Input tokens per run by model")
    [target] = panel["targets"]
    [tokens] = [s for s in scan_selectors(target["expr"]) if s.metric == fam.TOKENS.name]
    op, value = tokens.matcher("token_type") or ("", "")
    assert op == "=~" and set(value.split("|")) == {"input", "cached_input", "cache_write"}


# A real Prometheus scraping the real sidecar


@pytest.fixture(scope="module")
def prom(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    binary = require_binary("prometheus")
    with start_prometheus(binary, tmp_path_factory.mktemp("prom"), [served.target]) as server:
        selector = 'runmeter_runs_total{api="assistants",status="completed"}'
        for r in range(1, ROUNDS):
            server.wait_until(lambda: bool(server.query(selector)), what="first scrape")
            _write_round(served.sidecar, r)
            want = str(TOOL_RUNS_COMPLETED * (r + 1))
            server.wait_until(_shows(server, selector, want), what=f"round {r} scraped")
        yield server


def _shows(server: PrometheusServer, selector: str, value: str) -> Callable[[], bool]:
    """A check that ``selector`` has exactly one series, at ``value``."""
    return lambda: [s["value"][1] for s in server.query(selector)] == [value]


RATE_ALL = {**GRAFANA_DEFAULTS, "__rate_interval": "5m"}
"""Grafana values with a rate window covering every sample the fixture scraped."""


def _values(prom: PrometheusServer, expr: str) -> dict[str, float]:
    return {s["metric"].get("model", ""): float(s["value"][1]) for s in prom.query(expr)}


def test_failed_run_ratio_rule_counts_each_tool_call_run_once(prom: PrometheusServer) -> None:
    name = "api_model:runmeter_runs_failed_per_runs:ratio_rate15m"
    [rule] = [r for r in _rules() if r.get("record") == name]
    ratios = {(s["metric"]["api"], s["metric"]["model"]): float(s["value"][1])
              for s in prom.query(rule["expr"])}
    expected = TOOL_RUNS_FAILED / (TOOL_RUNS_COMPLETED + TOOL_RUNS_FAILED)
    assert ratios[("assistants", "gpt-4o")] == pytest.approx(expected, rel=0.02)
    # responses/gpt-5: one run of each settled status; failed, expired and interrupted fail.
    assert ratios[("responses", "gpt-5")] == pytest.approx(3 / 6, rel=0.02)


def test_input_tokens_per_run_panel_equals_the_runs_input_tokens(prom: PrometheusServer) -> None:
    [target] = _panel("runmeter-retrieval", "Input tokens per run by model")["targets"]
    values = _values(prom, substitute_grafana_vars(target["expr"], RATE_ALL))
    assert values["gpt-4o"] == pytest.approx(TOOL_FINAL_INPUT[0], rel=0.02)
    assert values["gpt-5"] == pytest.approx(1500, rel=0.02)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_panel_returns_data_with_its_legend_labels(path: Path, prom: PrometheusServer) -> None:
    problems = []
    for panel, target in panel_queries(json.loads(path.read_text())):
        key = f"{panel['title']} / {target.get('refId')}"
        samples = prom.query(substitute_grafana_vars(str(target["expr"]), RATE_ALL))
        if not any(not math.isnan(float(s["value"][1])) for s in samples):
            problems.append(f"{key}: no data")
        wanted = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", str(target.get("legendFormat", ""))))
        for s in samples:
            if wanted - set(s["metric"]):
                problems.append(f"{key}: legend needs {sorted(wanted - set(s['metric']))}, got {s['metric']}")
    assert problems == []


def test_every_rule_expression_evaluates_on_the_real_scrape(prom: PrometheusServer) -> None:
    for r in _rules():
        prom.query(str(r["expr"]))  # raises with Prometheus's error on a bad expression


# Alerting conventions


def test_rule_windows_span_at_least_four_scrapes() -> None:
    interval = yaml.safe_load(DATASOURCE.read_text())["datasources"][0]["jsonData"]["timeInterval"]
    scrape = _seconds(interval)
    short = [(r.get("alert") or r["record"], s.range) for r in _rules() for s in scan_selectors(r["expr"])
             if s.range and _seconds(s.range) < 4 * scrape]
    assert short == []


def _seconds(duration: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smhd])", duration))


def _promtool_alerts(tmp_path: Path, series: list[dict[str, str]], eval_time: str) -> str:
    """promtool's output for a test that expects no alert at all at ``eval_time``."""
    promtool = require_binary("promtool")
    test = {"rule_files": [str(RULES)], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": [
                {"eval_time": eval_time, "alertname": a["alert"]} for a in _rules() if "alert" in a]}]}
    path = tmp_path / "probe-test.yaml"
    path.write_text(yaml.safe_dump(test))
    proc = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    return proc.stdout + proc.stderr


def test_an_alert_fires_when_runmeter_is_down_or_not_scraped(tmp_path: Path) -> None:
    """Every other alert reads runmeter's own series: when the sidecar dies they all vanish and the
    spend, latency and storage alerts go silent. Something must fire on that (mixin: absent(up == 1))."""
    down = _promtool_alerts(tmp_path, [{"series": 'up{job="runmeter",instance="sidecar:9464"}',
                                        "values": "1x5 0x30"}], "30m")
    gone = _promtool_alerts(tmp_path, [{"series": 'runmeter_build_info{job="other",version="1"}',
                                        "values": "1x30"}], "30m")
    healthy = _promtool_alerts(tmp_path, [{"series": 'up{job="runmeter",instance="sidecar:9464"}',
                                           "values": "1x30"}], "30m")
    assert "alertname: RunmeterDown" in down and 'instance="sidecar:9464"' in down, down
    assert "alertname: RunmeterDown" in gone, gone
    assert "SUCCESS" in healthy, healthy


def test_alert_thresholds_are_in_their_runbook_sections() -> None:
    sections = re.split(r"^## ", RUNBOOK.read_text(), flags=re.M)
    by_name = {s.split("\n", 1)[0].strip(): s for s in sections[1:]}
    missing = []
    for a in (r for r in _rules() if "alert" in r):
        expr = re.sub(r"\[[^\]]*\]|\{[^}]*\}|offset \w+|\b\d+(?:\.\d+)?(?=\s*,)", "", str(a["expr"]))
        for number in re.findall(r"(?<![\w.])(\d+(?:\.\d+)?)(?![\w.])", expr):
            if number not in ("0", "1", "86400") and f"`{number}`" not in by_name.get(a["alert"], ""):
                missing.append((a["alert"], number))
    assert missing == []


# METRICS.md


def _metrics_md_table(header: str) -> list[list[str]]:
    text = METRICS_MD.read_text()
    rows, inside = [], False
    for line in text.splitlines():
        if line.startswith(f"| {header} |"):
            inside = True
        elif inside and line.startswith("|") and not line.startswith("|---"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
        elif inside and not line.startswith("|"):
            break
    return rows


def test_metrics_md_buckets_and_help_match_families() -> None:
    rows = {r[0].strip("`"): r for r in _metrics_md_table("Family")}
    assert set(rows) == set(fam.BY_NAME)
    for f in fam.FAMILIES:
        meaning = rows[f.name][4]
        if f.buckets:
            assert re.search(r"Buckets [\d., …]+|Same buckets as above", meaning), f.name
        if f.buckets == fam.CHUNK_BUCKETS:
            assert "Buckets " + ", ".join(f"{b:g}" for b in f.buckets) + "." in meaning
        if f.buckets == fam.LATENCY_BUCKETS:
            assert meaning.startswith(f.help.rstrip("."))
            assert ("Same buckets" in meaning
                    or "Buckets 0.01, 0.02, 0.04 … 81.92, 163.84, 327.68, 655.36 s." in meaning)
    assert fam.LATENCY_BUCKETS[:3] == (0.01, 0.02, 0.04) and fam.LATENCY_BUCKETS[-4:] == (81.92, 163.84,
                                                                                         327.68, 655.36)
    assert f"largest {fam.TOP_STORES} billing stores" in rows[fam.USAGE_TOP.name][4]


def test_metrics_md_label_values_match_the_code() -> None:
    text = METRICS_MD.read_text()
    status = re.search(r"`status` is a run's terminal status\s*\(([^)]*)\)\s*or `interrupted`", text)
    assert status is not None
    assert set(re.findall(r"`(\w+)`", status.group(1))) == TERMINAL_STATUSES - {"requires_action"}
    tokens = next(r for r in _metrics_md_table("Family") if r[0] == f"`{fam.TOKENS.name}`")[4]
    assert set(re.findall(r"`(\w+)`", tokens.split("(OpenAI")[0])) - {"token_type"} == {
        "input", "cached_input", "cache_write", "output", "reasoning"}
    meters = next(r for r in _metrics_md_table("Family") if r[0] == f"`{fam.COST.name}`")[4]
    assert set(re.findall(r"`(\w+)`", meters)) == {"input", "cached_input", "cache_write", "output",
                                                   "file_search_calls"}


def test_metrics_md_lists_exactly_the_recording_rules() -> None:
    documented = {r[0].strip("`") for r in _metrics_md_table("Rule")}
    assert documented == {r["record"] for r in _rules() if "record" in r}
