"""The monitoring an operator installs beside the daemon: Prometheus alert rules (checked and
unit-tested by promtool), the example Prometheus configuration, and the Grafana dashboard —
every metric they query exists in what a real daemon exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.metrics_harness import metrics_daemon, scrape_text

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS = REPO / "configs" / "prometheus"
RULES = PROMETHEUS / "wemixvisor-alerts.yml"
RULE_TESTS = PROMETHEUS / "wemixvisor-alerts.test.yml"
DASHBOARD = REPO / "configs" / "grafana" / "wemixvisor.json"
# Series Prometheus makes itself for every target, not the exporter.
SCRAPE_SERIES = {"up"}
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def tool(name: str, package: str) -> str:
    """The path of a command-line tool; skipped when it is absent and cannot be installed here
    (not root), a failure when scripts/setup.sh should have installed it."""
    path = shutil.which(name)
    if path is not None:
        return path
    if os.geteuid() == 0:
        pytest.fail(f"{name} is missing: scripts/setup.sh installs Debian's {package}")
    pytest.skip(f"{name} is missing and installing Debian's {package} needs root")


def promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool", "prometheus"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, keywords, label names, ranges and
    Grafana variables left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\$\{?\w+\}?", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        follows = text[match.end() :].lstrip()
        if follows.startswith("(") or match.group() in _KEYWORDS:
            continue
        if match.start() > 0 and (
            text[match.start() - 1].isdigit() or text[match.start() - 1] == "."
        ):
            continue  # the exponent or unit of a number
        names.add(match.group())
    return names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('up{job="wemixvisor"} == 0', {"up"}),
        ("increase(a_total[15m]) >= 3", {"a_total"}),
        ("x == 0 and on (instance, job, plan) y < 3600", {"x", "y"}),
        ('time() - b{instance=~"$instance"}', {"b"}),
        ("histogram_quantile(0.99, sum by (le) (rate(c_bucket[$__rate_interval])))", {"c_bucket"}),
        ("d > bool 1e3", {"d"}),
    ],
)
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def rule_expressions() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def dashboard_expressions(dashboard: dict[str, Any]) -> list[str]:
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    exprs += [
        re.sub(r"^label_values\((\w+).*", r"\1", v["definition"])
        for v in dashboard["templating"]["list"]
        if v["type"] == "query"
    ]
    return exprs


def test_the_alert_rules_and_the_example_configuration_pass_promtool_check() -> None:
    rules = promtool("check", "rules", RULES.name)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


def test_the_alert_rules_pass_their_promtool_unit_tests() -> None:
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_case_that_fires_it_and_one_that_does_not() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = set(rule_expressions())
    assert fired == alerts
    assert quiet == alerts


def test_promtool_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    (tmp_path / RULES.name).write_text(
        RULES.read_text().replace("wemixvisor_rpc_available == 0", "wemixvisor_rpc_available == 2")
    )
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "WemixvisorRpcUnavailable" in result.stdout + result.stderr


def test_the_dashboard_is_an_importable_grafana_model() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "wemixvisor"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids are unique"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(set(refs)) == len(refs), panel["title"]
        for target in panel["targets"]:
            assert 'instance=~"$instance"' in target["expr"], target["expr"]
    titles = " ".join(p["title"].lower() for p in panels)
    for subject in ("node state", "head", "block time", "restarts", "upgrade", "downtime"):
        assert subject in titles
    for subject in ("backup size", "backup age", "rpc errors", "events published / dropped"):
        assert subject in titles


@pytest.fixture(scope="module")
def exported(anvil_bin_1_5_1: Path) -> Iterator[set[str]]:
    """Every metric name a real daemon exports once it has a pending plan, a backup and a
    measured block time; families without samples (no validator event yet) count by name."""
    with metrics_daemon(anvil_bin_1_5_1) as running:
        client, events = running.client, running.events
        head = client.request({"type": "status"})["head"]["height"]
        client.request({"type": "schedule_upgrade", "name": "v2", "height": head + 1000})
        client.request({"type": "backup_create", "label": "monitoring"})
        events.wait_for("backup.completed", lambda p: p["label"] == "monitoring", timeout=60)
        # What only shows once measured or listed: the block time, the plan's ETA, the backup.
        later = {
            "wemixvisor_block_time_seconds",
            "wemixvisor_plan_eta_seconds",
            "wemixvisor_backup_bytes",
        }
        deadline = time.monotonic() + 30
        while not later <= (names := exported_names(scrape_text(running.port))):
            assert time.monotonic() < deadline, f"never exported: {later - names}"
            time.sleep(0.1)
        yield names


def exported_names(text: str) -> set[str]:
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def test_every_metric_the_alerts_read_is_exported(exported: set[str]) -> None:
    for alert, expr in rule_expressions().items():
        missing = metric_names(expr) - exported - SCRAPE_SERIES
        assert not missing, f"{alert} reads {missing}, which the daemon does not export"


def test_every_metric_the_dashboard_reads_is_exported(exported: set[str]) -> None:
    exprs = dashboard_expressions(json.loads(DASHBOARD.read_text()))
    assert len(exprs) > 20
    read = set().union(*(metric_names(expr) for expr in exprs))
    assert not read - exported, f"the dashboard reads {read - exported}, not exported"
    for needed in ("wemixvisor_plan_eta_seconds", "wemixvisor_backup_last_timestamp_seconds"):
        assert needed in read
