"""The Prometheus rules in grafana/rules: promtool checks and unit tests, the mixin conventions for
alerts and recording rules, the runbook anchors, and a live Prometheus evaluating them."""

from __future__ import annotations

import math
import re
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import require_binary
from prom_helpers import PrometheusServer, exposition, scan_selectors, serve_metrics, start_prometheus

GRAFANA = Path(__file__).resolve().parents[1] / "grafana"
RULES = GRAFANA / "rules" / "runmeter-rules.yaml"
RULE_TESTS = sorted((GRAFANA / "tests").glob("*.yaml"))
RUNBOOK = GRAFANA / "RUNBOOK.md"

SEVERITIES = {"critical", "warning", "info"}
RECORD_NAME = re.compile(r"^[a-z][a-z0-9_]*:runmeter_[a-z0-9_]+:[a-z0-9_]+$")
ALERT_NAME = re.compile(r"^Runmeter(?:[A-Z][a-z0-9]*|[A-Z]+(?=[A-Z][a-z]|$))+$")
DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
CLI_COMMANDS = ("runmeter report", "runmeter cost", "runmeter whatif", "runmeter storage report")


def seconds(duration: str) -> float:
    """Seconds in a Prometheus duration such as ``1h30m``."""
    parts = DURATION.findall(duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a Prometheus duration: {duration!r}")
    return sum(int(n) * UNIT_SECONDS[u] for n, u in parts)


def load_rules(path: Path = RULES) -> list[dict[str, Any]]:
    """Every rule of every group."""
    doc = yaml.safe_load(path.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [r for r in load_rules() if "alert" in r]


def records() -> list[dict[str, Any]]:
    return [r for r in load_rules() if "record" in r]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def runbook_sections(text: str) -> dict[str, str]:
    """Anchor -> section body for every ``##`` heading."""
    sections: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("## "):
            current = github_anchor(line[3:])
            sections[current] = ""
        elif current is not None:
            sections[current] += line + "\n"
    return sections


def alert_problems(rule: Mapping[str, Any], anchors: set[str]) -> list[str]:
    """What breaks the mixin conventions in one alerting rule (empty when none)."""
    name = str(rule.get("alert", ""))
    problems = []
    if not ALERT_NAME.match(name):
        problems.append(f"{name!r} is not CamelCase with the Runmeter prefix")
    labels = rule.get("labels") or {}
    if labels.get("severity") not in SEVERITIES:
        problems.append(f"{name}: severity {labels.get('severity')!r} not in {sorted(SEVERITIES)}")
    ann = rule.get("annotations") or {}
    summary, description = str(ann.get("summary", "")), str(ann.get("description", ""))
    if not summary or "{{" in summary:
        problems.append(f"{name}: summary must be a static sentence, is {summary!r}")
    if "{{" not in description or ("$value" not in description and "$labels" not in description):
        problems.append(f"{name}: description must be templated with values, is {description!r}")
    url = str(ann.get("runbook_url", ""))
    path, _, anchor = url.partition("#")
    if not path.endswith("RUNBOOK.md") or anchor not in anchors:
        problems.append(f"{name}: runbook_url {url!r} does not point at a RUNBOOK.md section")
    elif anchor != name.lower():
        problems.append(f"{name}: runbook_url anchor {anchor!r} is not the alert's own section")
    if "for" in rule:
        seconds(str(rule["for"]))
    return problems


def rule_tests() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in RULE_TESTS:
        for group in yaml.safe_load(path.read_text())["tests"]:
            yield path, group


def for_sides(alertname: str, for_seconds: float) -> tuple[bool, bool]:
    """Whether some test group checks the alert not firing less than ``for`` before it fires
    (the pending side), and firing (the other side)."""
    pending_side = firing_side = False
    for _, group in rule_tests():
        checks = [c for c in group.get("alert_rule_test", []) if c["alertname"] == alertname]
        fired = [seconds(c["eval_time"]) for c in checks if c.get("exp_alerts")]
        quiet = [seconds(c["eval_time"]) for c in checks if not c.get("exp_alerts")]
        firing_side |= bool(fired)
        pending_side |= any(t_fire - for_seconds < t < t_fire for t_fire in fired for t in quiet)
    return pending_side, firing_side


# promtool


def test_promtool_check_rules_accepts_the_rules() -> None:
    promtool = require_binary("promtool")
    proc = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(load_rules())} rules found" in proc.stdout


def test_promtool_check_rules_rejects_a_broken_rule(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [
        {"record": "job:runmeter_runs:rate5m", "expr": "sum by (job) (rate(runmeter_runs_total[5m])"}]}]}))
    proc = subprocess.run([promtool, "check", "rules", str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0


def test_promtool_unit_tests_pass() -> None:
    promtool = require_binary("promtool")
    assert RULE_TESTS, "no promtool unit tests under grafana/tests"
    proc = subprocess.run([promtool, "test", "rules", *map(str, RULE_TESTS)],
                          capture_output=True, text=True, timeout=120, cwd=GRAFANA)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("SUCCESS") == len(RULE_TESTS)


def test_promtool_unit_tests_catch_a_changed_threshold(tmp_path: Path) -> None:
    """The unit tests pin the thresholds: raising the budget breaks them."""
    promtool = require_binary("promtool")
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "rules" / RULES.name).write_text(RULES.read_text().replace("* 86400 > 100", "* 86400 > 5000"))
    test_file = tmp_path / "tests" / "alerts-test.yaml"
    test_file.write_text((GRAFANA / "tests" / "alerts-test.yaml").read_text())
    proc = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode != 0
    assert "RunmeterSpendBurnHigh" in proc.stdout + proc.stderr


# conventions


def test_the_required_alerts_exist() -> None:
    names = {r["alert"] for r in alerts()}
    required = {"RunmeterSpendBurnHigh", "RunmeterTTFTSlow", "RunmeterFailedRunsRising",
                "RunmeterStorageAboveFreeTier", "RunmeterStorageGrowingFast", "RunmeterChunksPerRunJump",
                "RunmeterWriterBacklog", "RunmeterWriterDropping", "RunmeterStoragePollStale",
                "RunmeterStoreDown"}
    assert required <= names, required - names
    assert len(names) == len(alerts()), "duplicate alert names"


@pytest.mark.parametrize("rule", alerts(), ids=lambda r: r["alert"])
def test_alert_follows_the_mixin_conventions(rule: dict[str, Any]) -> None:
    anchors = set(runbook_sections(RUNBOOK.read_text()))
    assert alert_problems(rule, anchors) == []


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda r: r.update(alert="runmeter_spend_high"), "CamelCase"),
    (lambda r: r["labels"].update(severity="page"), "severity"),
    (lambda r: r["labels"].pop("severity"), "severity"),
    (lambda r: r["annotations"].update(summary="Spend is {{ $value }}"), "summary"),
    (lambda r: r["annotations"].update(description="Spend is high."), "description"),
    (lambda r: r["annotations"].update(description="Spend is {{ 1 }}."), "description"),
    (lambda r: r["annotations"].update(runbook_url="grafana/RUNBOOK.md#no-such-section"), "runbook_url"),
    (lambda r: r["annotations"].pop("runbook_url"), "runbook_url"),
    (lambda r: r["annotations"].update(runbook_url="grafana/RUNBOOK.md#runmeterstoredown"), "own section"),
], ids=["name", "severity-value", "severity-missing", "summary", "description", "description-no-value",
        "anchor", "no-runbook", "wrong-anchor"])
def test_alert_convention_check_catches(mutate: Any, expected: str) -> None:
    rule = yaml.safe_load(yaml.safe_dump(alerts()[0]))
    mutate(rule)
    problems = alert_problems(rule, set(runbook_sections(RUNBOOK.read_text())))
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize("rule", records(),
                         ids=lambda r: f"{r['record']}{r.get('labels', {}).get('quantile', '')}")
def test_recording_rule_is_named_level_metric_operations(rule: dict[str, Any]) -> None:
    assert RECORD_NAME.match(rule["record"]), rule["record"]
    metric = rule["record"].split(":")[1]
    # The metric part starts with a family the expression reads (counters lose `_total` once rated).
    read = {re.sub(r"_(total|bucket|sum|count)$", "", s.metric) for s in scan_selectors(rule["expr"])}
    assert any(metric.startswith(family) for family in read), (metric, read)


def test_every_runbook_section_belongs_to_an_alert_and_uses_the_cli() -> None:
    sections = runbook_sections(RUNBOOK.read_text())
    names = {r["alert"].lower() for r in alerts()}
    assert set(sections) == names
    for anchor, body in sections.items():
        for part in ("**Meaning**", "**Impact**", "**Diagnosis**", "**Fix**"):
            assert part in body, (anchor, part)
        assert any(cmd in body for cmd in CLI_COMMANDS), anchor
    text = RUNBOOK.read_text()
    for cmd in CLI_COMMANDS:
        assert f"`{cmd}" in text, cmd


def test_runbook_anchor_slugs_match_github() -> None:
    assert github_anchor("RunmeterTTFTSlow") == "runmeterttftslow"
    assert github_anchor("Fix: the `for` clause!") == "fix-the-for-clause"


def test_spend_budget_is_documented_where_it_is_set() -> None:
    rule = next(r for r in alerts() if r["alert"] == "RunmeterSpendBurnHigh")
    budget = re.search(r"86400 > (\d+)", rule["expr"])
    assert budget is not None
    assert f"{budget.group(1)} USD per day" in rule["annotations"]["description"]
    section = runbook_sections(RUNBOOK.read_text())["runmeterspendburnhigh"]
    assert f"`job:runmeter_cost_usd:rate1h * 86400 > {budget.group(1)}`" in section


# unit-test coverage


@pytest.mark.parametrize("rule", alerts(), ids=lambda r: r["alert"])
def test_alert_is_unit_tested_on_both_sides_of_for(rule: dict[str, Any]) -> None:
    for_seconds = seconds(rule["for"]) if "for" in rule else 0.0
    pending_side, firing_side = for_sides(rule["alert"], for_seconds)
    assert firing_side, f"{rule['alert']} is never tested firing"
    if for_seconds:
        assert pending_side, f"{rule['alert']} is not tested silent within `for: {rule['for']}` before firing"
    else:
        quiet = [c for _, g in rule_tests() for c in g.get("alert_rule_test", [])
                 if c["alertname"] == rule["alert"] and not c.get("exp_alerts")]
        assert quiet, f"{rule['alert']} is never tested silent"


def test_for_sides_check_rejects_a_quiet_check_outside_the_for_window() -> None:
    # RunmeterStoreDown is quiet at 15m and fires at 16m; a `for` of 30s would not cover 15m.
    assert for_sides("RunmeterStoreDown", 300) == (True, True)
    assert for_sides("RunmeterStoreDown", 30) == (False, True)
    assert for_sides("RunmeterNoSuchAlert", 300) == (False, False)


def test_every_recording_rule_value_is_unit_tested() -> None:
    tested = " ".join(t["expr"] for _, g in rule_tests() for t in g.get("promql_expr_test", []))
    assert [r["record"] for r in records() if r["record"] not in tested] == []


def test_the_durations_parse() -> None:
    assert seconds("1h30m") == 5400
    assert seconds("1561m") == 93660
    with pytest.raises(ValueError):
        seconds("15 minutes")


# a live Prometheus


@pytest.fixture(scope="module")
def live_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    binary = require_binary("prometheus")
    with serve_metrics(exposition) as target, \
            start_prometheus(binary, tmp_path_factory.mktemp("prom"), [target], [RULES]) as prom:
        yield prom


def _has_data(prom: PrometheusServer, expr: str) -> bool:
    return any(not math.isnan(float(s["value"][1])) for s in prom.query(expr))


def test_live_prometheus_records_every_rule_from_a_scrape(live_prometheus: PrometheusServer) -> None:
    prom = live_prometheus
    names = sorted({r["record"] for r in records()})
    prom.wait_until(lambda: all(_has_data(prom, n) for n in names), timeout=30, what="recorded series")
    runs = {s["metric"]["status"]: float(s["value"][1])
            for s in prom.query("api_model_status:runmeter_runs:rate5m")}
    assert runs["completed"] > 0 and runs["failed"] > 0
    quantiles = prom.query('api_model_quantile:runmeter_time_to_first_token_seconds:histogram_quantile_rate5m'
                           '{quantile="0.5"}')
    # Every first token takes 0.5 s, inside the (0.32, 0.64] bucket.
    assert 0.32 < float(quantiles[0]["value"][1]) <= 0.64
    assert quantiles[0]["metric"] == {
        "__name__": "api_model_quantile:runmeter_time_to_first_token_seconds:histogram_quantile_rate5m",
        "job": "runmeter", "api": "responses", "model": "gpt-5", "quantile": "0.5"}
    mean = prom.query("api_model:runmeter_retrieved_chunks_per_run:mean1h")
    assert float(mean[0]["value"][1]) == pytest.approx(4.0)


def test_live_prometheus_evaluates_every_rule_without_error(live_prometheus: PrometheusServer) -> None:
    prom = live_prometheus
    # Prometheus reports a rule never evaluated with the zero time, year 0001.
    prom.wait_until(lambda: all(not r.get("lastEvaluation", "0001").startswith("0001")
                                for g in prom.api("rules")["groups"] for r in g["rules"]),
                    what="every rule evaluated")
    rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
    assert len(rules) == len(load_rules())
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    # The exposition drops writer records every third scrape: the no-`for` alert fires at once.
    prom.wait_until(lambda: any(a["labels"]["alertname"] == "RunmeterWriterDropping"
                                for a in prom.api("alerts")["alerts"]), what="RunmeterWriterDropping")
