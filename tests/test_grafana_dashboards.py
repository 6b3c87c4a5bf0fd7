"""The Grafana dashboards in grafana/dashboards against grafana/dashboard-linter's rules (its binary
cannot be installed here, so each rule is a check below), the metric families in grafana/METRICS.md,
the provisioning files, and every panel query run against a live Prometheus."""

from __future__ import annotations

import copy
import json
import math
import re
import subprocess
from collections.abc import Callable, Iterator
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
    exposition,
    panel_queries,
    scan_selectors,
    serve_metrics,
    start_prometheus,
    substitute_grafana_vars,
)

PROVISIONING = GRAFANA / "provisioning"

Dashboard = dict[str, Any]
Check = Callable[[Dashboard], list[str]]

# grafana/dashboard-linter rule_panel_units.go: the units Grafana knows, for the kinds used here.
VALID_UNITS = frozenset({
    "none", "string", "short", "percent", "percentunit", "sci", "locale",
    "currencyUSD", "currencyEUR", "currencyGBP",
    "bytes", "decbytes", "bits", "decbits", "kbytes", "deckbytes", "mbytes", "decmbytes", "gbytes",
    "decgbytes", "tbytes", "dectbytes",
    "binBps", "Bps", "binbps", "bps",
    "dateTimeAsIso", "dateTimeAsLocal", "dateTimeFromNow",
    "hertz", "ns", "µs", "ms", "s", "m", "h", "d", "dtdurationms", "dtdurations", "dthms", "dtdhms",
    "cps", "ops", "reqps", "rps", "wps", "iops", "cpm", "opm", "rpm", "wpm",
    "bool", "bool_yes_no", "bool_on_off",
})
UNIT_PANELS = frozenset({"stat", "singlestat", "graph", "table", "timeseries", "gauge", "bargauge",
                         "heatmap"})
QUERY_PANELS = UNIT_PANELS
DATASOURCE_REFS = frozenset({"$datasource", "${datasource}"})
RATE_FUNCS = frozenset({"rate", "irate", "increase"})
LABEL_VALUES = re.compile(r"^label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$", re.S)


def load(path: Path) -> Dashboard:
    data: Dashboard = json.loads(path.read_text())
    return data


def metric_families() -> dict[str, str]:
    """Family -> type from the table in grafana/METRICS.md."""
    families = {}
    for line in METRICS_MD.read_text().splitlines():
        m = re.match(r"^\| `(runmeter_[a-z0-9_]+)` \| (counter|gauge|histogram) \|", line)
        if m:
            families[m.group(1)] = m.group(2)
    return families


def counters() -> set[str]:
    return {f for f, t in metric_families().items() if t == "counter"}


def gauges() -> set[str]:
    return {f for f, t in metric_families().items() if t == "gauge"}


def query_vars(d: Dashboard) -> list[dict[str, Any]]:
    return [v for v in d.get("templating", {}).get("list", []) if v.get("type") == "query"]


def var_query(v: dict[str, Any]) -> str:
    q = v.get("query")
    return str(q.get("query", "") if isinstance(q, dict) else q or "")


def selectors(d: Dashboard) -> Iterator[tuple[dict[str, Any], dict[str, Any], Selector]]:
    for panel, target in panel_queries(d):
        for sel in scan_selectors(target["expr"]):
            yield dict(panel), dict(target), sel


def all_panels(d: Dashboard) -> list[dict[str, Any]]:
    panels = list(d.get("panels", []))
    out = []
    while panels:
        p = panels.pop(0)
        out.append(p)
        panels.extend(p.get("panels", []))
    return out


# One function per dashboard-linter rule (named after it); each returns the problems it finds.


def template_datasource_rule(d: Dashboard) -> list[str]:
    ds = [v for v in d.get("templating", {}).get("list", []) if v.get("type") == "datasource"]
    if len(ds) != 1:
        return [f"expected one datasource variable, found {len(ds)}"]
    v = ds[0]
    problems = []
    if v.get("query") != "prometheus":
        problems.append(f"datasource variable queries {v.get('query')!r}, not prometheus")
    if v.get("name") != "datasource":
        problems.append(f"datasource variable is named {v.get('name')!r}, should be 'datasource'")
    if v.get("label") != "Data source":
        problems.append(f"datasource variable is labeled {v.get('label')!r}, should be 'Data source'")
    return problems


def _template_rule(name: str) -> Check:
    def check(d: Dashboard) -> list[str]:
        v = next((v for v in d.get("templating", {}).get("list", []) if v.get("name") == name), None)
        if v is None:
            return [f"missing the {name} variable"]
        problems = []
        if (v.get("datasource") or {}).get("uid") not in DATASOURCE_REFS:
            problems.append(f"{name} variable does not use $datasource")
        if v.get("type") != "query":
            problems.append(f"{name} variable is a {v.get('type')!r}, should be a query")
        if v.get("label") != name.capitalize():
            problems.append(f"{name} variable label {v.get('label')!r}, should be {name.capitalize()!r}")
        if not v.get("multi"):
            problems.append(f"{name} variable is not multi-select")
        if v.get("allValue") != ".+":
            problems.append(f"{name} variable allValue {v.get('allValue')!r}, should be '.+'")
        return problems

    check.__name__ = f"template_{name}_rule"
    return check


template_job_rule = _template_rule("job")
template_instance_rule = _template_rule("instance")


def template_label_promql_rule(d: Dashboard) -> list[str]:
    problems = []
    for v in query_vars(d):
        m = LABEL_VALUES.match(var_query(v).strip())
        if not m:
            problems.append(f"variable {v['name']} query {var_query(v)!r} is not label_values(expr, label)")
            continue
        try:
            sels = scan_selectors(m.group(1))
        except ValueError as exc:
            problems.append(f"variable {v['name']}: {exc}")
            continue
        if not sels or not all(s.metric.startswith("runmeter_") for s in sels):
            problems.append(f"variable {v['name']} does not read a runmeter_ series")
    return problems


def template_on_time_change_reload_rule(d: Dashboard) -> list[str]:
    return [f"variable {v['name']} refresh is {v.get('refresh')!r}, should be 2 (on time range change)"
            for v in query_vars(d) if v.get("refresh") != 2]


def template_unused_rule(d: Dashboard) -> list[str]:
    exprs = [t["expr"] for _, t in panel_queries(d)]
    problems = []
    for v in query_vars(d):
        pattern = re.compile(rf"\$({v['name']})\b|\$\{{{v['name']}(:[^}}]+)?\}}|\[\[{v['name']}\]\]")
        if not any(pattern.search(e) for e in exprs):
            problems.append(f"variable {v['name']} is not used in any panel")
    return problems


def panel_datasource_rule(d: Dashboard) -> list[str]:
    problems = []
    for p in all_panels(d):
        if p.get("type") not in QUERY_PANELS:
            continue
        if (p.get("datasource") or {}).get("uid") not in DATASOURCE_REFS:
            problems.append(f"panel {p.get('title')!r} does not use the datasource variable")
        for t in p.get("targets", []):
            if (t.get("datasource") or {}).get("uid") not in DATASOURCE_REFS:
                problems.append(f"panel {p.get('title')!r} target {t.get('refId')} does not use $datasource")
    return problems


def panel_title_description_rule(d: Dashboard) -> list[str]:
    return [f"panel {p.get('id')} lacks a title or description" for p in all_panels(d)
            if p.get("type") != "row" and not (str(p.get("title", "")).strip()
                                               and str(p.get("description", "")).strip())]


def panel_units_rule(d: Dashboard) -> list[str]:
    problems = []
    for p in all_panels(d):
        if p.get("type") not in UNIT_PANELS:
            continue
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit")
        if unit not in VALID_UNITS:
            problems.append(f"panel {p.get('title')!r} has no or an invalid unit: {unit!r}")
    return problems


def panel_no_targets_rule(d: Dashboard) -> list[str]:
    return [f"panel {p.get('title')!r} has no targets" for p in all_panels(d)
            if p.get("type") in QUERY_PANELS and not p.get("targets")]


def target_rate_interval_rule(d: Dashboard) -> list[str]:
    # Stricter than the linter: increase() must use $__rate_interval too.
    return [f"panel {p['title']!r}: {s.metric}[{s.range}] under {s.calls[-1]}() should use $__rate_interval"
            for p, _, s in selectors(d)
            if s.range not in (None, "$__rate_interval") and s.calls and s.calls[-1] in RATE_FUNCS]


def _target_matcher_rule(label: str) -> Check:
    def check(d: Dashboard) -> list[str]:
        return [f"panel {p['title']!r}: {s.metric} lacks {label}=~\"${label}\""
                for p, _, s in selectors(d) if s.matcher(label) != ("=~", f"${label}")]

    check.__name__ = f"target_{label}_rule"
    return check


target_job_rule = _target_matcher_rule("job")
target_instance_rule = _target_matcher_rule("instance")


def target_counter_agg_rule(d: Dashboard) -> list[str]:
    # Counters are the families METRICS.md types as counters, plus any undocumented `_total`.
    known_gauges = gauges()
    return [f"panel {p['title']!r}: counter {s.metric} is not inside rate(), irate() or increase()"
            for p, _, s in selectors(d)
            if (s.metric in counters() or (s.metric.endswith("_total") and s.metric not in known_gauges))
            and (s.range is None or not s.calls or s.calls[-1] not in RATE_FUNCS)]


def target_histogram_rule(d: Dashboard) -> list[str]:
    return [f"panel {p['title']!r}: {s.metric} is not inside histogram_quantile()"
            for p, _, s in selectors(d)
            if s.metric.endswith("_bucket") and "histogram_quantile" not in s.calls]


def uneditable_dashboard_rule(d: Dashboard) -> list[str]:
    return [] if d.get("editable") is False else ["dashboard is editable, should be 'editable: false'"]


def dashboard_identity_rule(d: Dashboard) -> list[str]:
    """Not a linter rule: the brief's schemaVersion, id and uid requirements."""
    problems = []
    if not isinstance(d.get("schemaVersion"), int) or d["schemaVersion"] < 36:
        problems.append(f"schemaVersion {d.get('schemaVersion')!r} < 36")
    if d.get("id", "missing") is not None:
        problems.append(f"id should be null, is {d.get('id', 'missing')!r}")
    uid = d.get("uid")
    if not isinstance(uid, str) or not re.fullmatch(r"runmeter-[a-z0-9-]+", uid) or len(uid) > 40:
        problems.append(f"uid {uid!r} is not a stable runmeter-* uid")
    if not str(d.get("title", "")).startswith("runmeter / ") or not d.get("description"):
        problems.append("title should start with 'runmeter / ' and the dashboard needs a description")
    return problems


def target_runmeter_series_rule(d: Dashboard) -> list[str]:
    """Not a linter rule: every query reads runmeter_ series only."""
    problems = []
    for p, t in panel_queries(d):
        sels = scan_selectors(t["expr"])
        if not sels or not all(s.metric.startswith("runmeter_") for s in sels):
            problems.append(f"panel {p['title']!r} {t.get('refId')}: {t['expr']!r} reads no runmeter_ series")
    return problems


def panel_layout_rule(d: Dashboard) -> list[str]:
    """Not a linter rule: panels fit the 24-column grid and do not overlap."""
    problems: list[str] = []
    taken: dict[tuple[int, int], Any] = {}
    for p in all_panels(d):
        g = p.get("gridPos", {})
        x, y, w, h = (int(g.get(k, -1)) for k in ("x", "y", "w", "h"))
        if x < 0 or y < 0 or w < 1 or h < 1 or x + w > 24:
            problems.append(f"panel {p.get('title')!r} has gridPos {g}")
            continue
        for cell in ((cx, cy) for cx in range(x, x + w) for cy in range(y, y + h)):
            if cell in taken:
                problems.append(f"panel {p.get('title')!r} overlaps {taken[cell]!r}")
                break
            taken[cell] = p.get("title")
    return problems


CHECKS: list[Check] = [
    template_datasource_rule, template_job_rule, template_instance_rule, template_label_promql_rule,
    template_on_time_change_reload_rule, template_unused_rule, panel_datasource_rule,
    panel_title_description_rule, panel_units_rule, panel_no_targets_rule, target_rate_interval_rule,
    target_job_rule, target_instance_rule, target_counter_agg_rule, target_histogram_rule,
    uneditable_dashboard_rule, dashboard_identity_rule, target_runmeter_series_rule, panel_layout_rule,
]


def test_there_are_four_dashboards_with_distinct_uids() -> None:
    uids = [load(p)["uid"] for p in DASHBOARDS]
    assert [p.stem for p in DASHBOARDS] == ["runmeter-latency", "runmeter-overview", "runmeter-retrieval",
                                            "runmeter-storage"]
    assert uids == [p.stem for p in DASHBOARDS]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_passes_lint_rule(path: Path, check: Check) -> None:
    assert check(load(path)) == []


def _first_target(d: Dashboard) -> dict[str, Any]:
    target: dict[str, Any] = d["panels"][0]["targets"][0]
    return target


def _var(d: Dashboard, name: str) -> dict[str, Any]:
    return next(v for v in d["templating"]["list"] if v["name"] == name)


# Each mutation breaks one rule on a real dashboard: the check must notice.
BREAKERS: dict[str, Callable[[Dashboard], None]] = {
    "template_datasource_rule": lambda d: _var(d, "datasource").update(name="prom"),
    "template_job_rule": lambda d: _var(d, "job").update(allValue=".*"),
    "template_instance_rule": lambda d: d["templating"]["list"].remove(_var(d, "instance")),
    "template_label_promql_rule": lambda d: _var(d, "job")["query"].update(query="label_values(job)"),
    "template_on_time_change_reload_rule": lambda d: _var(d, "job").update(refresh=1),
    "template_unused_rule": lambda d: d["templating"]["list"].append(
        {"name": "tenant", "type": "query", "query": {"query": "label_values(runmeter_build_info, tenant)"}}),
    "panel_datasource_rule": lambda d: d["panels"][0].update(datasource={"type": "prometheus", "uid": "abc"}),
    "panel_title_description_rule": lambda d: d["panels"][0].pop("description"),
    "panel_units_rule": lambda d: d["panels"][0]["fieldConfig"]["defaults"].update(unit="tokens"),
    "panel_no_targets_rule": lambda d: d["panels"][0].update(targets=[]),
    "target_rate_interval_rule": lambda d: _first_target(d).update(
        expr='sum(rate(runmeter_runs_total{job=~"$job", instance=~"$instance"}[5m]))'),
    "target_job_rule": lambda d: _first_target(d).update(
        expr='sum(rate(runmeter_runs_total{instance=~"$instance"}[$__rate_interval]))'),
    "target_instance_rule": lambda d: _first_target(d).update(
        expr='sum(rate(runmeter_runs_total{job=~"$job", instance="x"}[$__rate_interval]))'),
    "target_counter_agg_rule": lambda d: _first_target(d).update(
        expr='sum(runmeter_runs_total{job=~"$job", instance=~"$instance"})'),
    "target_histogram_rule": lambda d: _first_target(d).update(
        expr='sum(rate(runmeter_run_duration_seconds_bucket{job=~"$job", instance=~"$instance"}'
             '[$__rate_interval]))'),
    "uneditable_dashboard_rule": lambda d: d.update(editable=True),
    "dashboard_identity_rule": lambda d: d.update(id=7),
    "panel_layout_rule": lambda d: d["panels"][1]["gridPos"].update(x=6),
    "target_runmeter_series_rule": lambda d: _first_target(d).update(
        expr='up{job=~"$job", instance=~"$instance"}'),
}


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_lint_rule_catches_its_violation(check: Check) -> None:
    d = copy.deepcopy(load(GRAFANA / "dashboards" / "runmeter-overview.json"))
    assert check(d) == []
    BREAKERS[check.__name__](d)
    assert check(d) != []


# PromQL syntax: promtool parses every panel and variable query (as recording rules).


def _as_rules(exprs: list[str]) -> dict[str, Any]:
    return {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}:check", "expr": e} for i, e in enumerate(exprs)]}]}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_target_promql_rule_every_query_parses(path: Path, tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    d = load(path)
    exprs = [substitute_grafana_vars(t["expr"]) for _, t in panel_queries(d)]
    for v in query_vars(d):
        m = LABEL_VALUES.match(var_query(v).strip())
        assert m, var_query(v)
        exprs.append(substitute_grafana_vars(m.group(1)))
    rules = tmp_path / "queries.yaml"
    rules.write_text(yaml.safe_dump(_as_rules(exprs)))
    proc = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in proc.stdout


def test_promtool_syntax_check_rejects_a_bad_query(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    rules = tmp_path / "queries.yaml"
    rules.write_text(yaml.safe_dump(_as_rules(["sum by (model (rate(runmeter_runs_total[4s]))"])))
    proc = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0


# Metric families


def test_metrics_md_lists_the_exported_families() -> None:
    families = metric_families()
    assert len(families) == 23
    assert families["runmeter_cost_usd_total"] == "counter"
    assert families["runmeter_time_to_first_token_seconds"] == "histogram"
    assert families["runmeter_vector_stores_usage_bytes"] == "gauge"
    assert sum(t == "histogram" for t in families.values()) == 3


def _family(series: str) -> str:
    for fam, kind in metric_families().items():
        parts = {f"{fam}_bucket", f"{fam}_sum", f"{fam}_count"} if kind == "histogram" else set()
        if series == fam or series in parts:
            return fam
    return series


def test_every_family_is_used_by_a_panel_or_rule() -> None:
    used = {_family(s.metric) for p in DASHBOARDS for _, _, s in selectors(load(p))}
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            used |= {_family(s.metric) for s in scan_selectors(rule["expr"])}
    assert set(metric_families()) - used == set()


def test_every_family_is_on_a_dashboard() -> None:
    used = {_family(s.metric) for p in DASHBOARDS for _, _, s in selectors(load(p))}
    assert set(metric_families()) - used == set()


def test_every_runmeter_series_queried_is_documented() -> None:
    families = set(metric_families())
    queried = {_family(s.metric) for p in DASHBOARDS for _, _, s in selectors(load(p))}
    assert queried - families == set()


# The scanner the rules rely on


def test_scan_selectors_finds_ranges_calls_and_matchers() -> None:
    sels = scan_selectors('histogram_quantile(0.95, sum by (model, le) (rate(runmeter_x_bucket'
                          '{job=~"$job", le!="+Inf"}[$__rate_interval]))) / on (model) group_left '
                          'max(runmeter_y offset 1d) # runmeter_comment')
    assert [(s.metric, s.range, s.calls) for s in sels] == [
        ("runmeter_x_bucket", "$__rate_interval", ("histogram_quantile", "sum", "rate")),
        ("runmeter_y", None, ("max",)),
    ]
    assert sels[0].matchers == (("job", "=~", "$job"), ("le", "!=", "+Inf"))
    with pytest.raises(ValueError):
        scan_selectors("sum(rate(runmeter_x[5m])")


def test_substitute_grafana_vars() -> None:
    expr = 'rate(runmeter_x{job=~"$job", model=~"${model}", api=~"[[api]]"}[$__rate_interval])'
    assert substitute_grafana_vars(expr) == 'rate(runmeter_x{job=~".*", model=~".*", api=~".*"}[4s])'
    with pytest.raises(KeyError, match="tenant"):
        substitute_grafana_vars("runmeter_x{tenant=~\"$tenant\"}")


# Provisioning


def test_dashboard_provider_points_at_the_dashboards_folder() -> None:
    doc = yaml.safe_load((PROVISIONING / "dashboards" / "runmeter.yaml").read_text())
    assert doc["apiVersion"] == 1
    [provider] = doc["providers"]
    assert provider["type"] == "file"
    assert provider["folder"] == "runmeter"
    path = provider["options"]["path"]
    assert path.endswith("/dashboards/runmeter")
    # The mount the file documents maps this repository's grafana/dashboards onto that path.
    text = (PROVISIONING / "dashboards" / "runmeter.yaml").read_text()
    assert f'"$PWD/grafana/dashboards:{path}:ro"' in text
    assert DASHBOARDS and all(p.parent == GRAFANA / "dashboards" for p in DASHBOARDS)


def test_datasource_has_an_explicit_uid_the_dashboards_default_to() -> None:
    doc = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())
    assert doc["apiVersion"] == 1
    [ds] = doc["datasources"]
    assert ds["type"] == "prometheus"
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", ds["uid"])
    assert ds["url"].startswith("http")
    for path in DASHBOARDS:
        var = _var(load(path), "datasource")
        assert var["current"]["value"] == ds["uid"], path.name


# Every panel query against a live Prometheus scraping a runmeter-shaped /metrics


@pytest.fixture(scope="module")
def live_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    binary = require_binary("prometheus")
    with serve_metrics(exposition) as target, \
            start_prometheus(binary, tmp_path_factory.mktemp("prom"), [target], [RULES]) as prom:
        # Rates need two samples inside the 4s $__rate_interval.
        prom.wait_until(lambda: len(prom.query("runmeter_build_info")) == 1, what="first scrape")
        prom.wait_until(lambda: bool(prom.query("rate(runmeter_runs_total[4s]) > 0")), what="two scrapes")
        yield prom


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_panel_query_returns_data(path: Path, live_prometheus: PrometheusServer) -> None:
    results = live_prometheus.run_panel_queries(load(path))
    assert results
    empty = [k for k, samples in results.items()
             if not any(not math.isnan(float(s["value"][1])) for s in samples)]
    assert empty == []


def test_panel_query_values_follow_the_exposition(live_prometheus: PrometheusServer) -> None:
    prom = live_prometheus
    storage = prom.run_panel_queries(load(GRAFANA / "dashboards" / "runmeter-storage.json"))
    largest = {s["metric"]["vector_store_id"] for s in storage["Largest vector stores / A"]}
    assert largest == {"vs_big", "vs_small"}
    assert float(storage["Billable storage beyond the free tier / A"][0]["value"][1]) == 2
    latency = prom.run_panel_queries(load(GRAFANA / "dashboards" / "runmeter-latency.json"),
                                     {**GRAFANA_DEFAULTS, "__rate_interval": "10s"})
    p50 = float(latency["Run duration p50 / p95 / p99 by model / A"][0]["value"][1])
    assert 2.56 < p50 <= 5.12  # every run takes 3 s: the (2.56, 5.12] bucket


def test_panels_the_runbook_names_exist() -> None:
    text = (GRAFANA / "RUNBOOK.md").read_text()
    named = set(re.findall(r"(?<!\*)\*([A-Z][^*]+)\*(?!\*)", text))
    titles = {p["title"] for path in DASHBOARDS for p in all_panels(load(path))}
    assert named, "the runbook names no panels"
    assert named - titles == set()
