"""Alerts, recording rules and the dashboard: promtool, and what each must carry.

promtool is Debian's (package `prometheus`): without it these tests skip, unless .ci/run's
SCORER_REQUIRE_DEPLOY_TOOLS=1 makes that a failure.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from tests.deploykit import (
    DASHBOARD,
    RULES_TEST,
    alerts,
    debian_tool,
    rules_spec,
    run,
)

CONCERNS = ["Traffic", "Latency", "Features", "Store (DynamoDB)", "Model", "Event log (Kafka)"]
SEVERITIES = {"critical", "warning"}


def rules_dir(tmp_path: Path) -> Path:
    """Write the PrometheusRule's spec as rules.yaml beside a copy of the promtool tests."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules_spec(), sort_keys=False))
    shutil.copy(RULES_TEST, tmp_path / RULES_TEST.name)
    return tmp_path


def test_promtool_checks_the_rules(tmp_path: Path) -> None:
    promtool = debian_tool("promtool")
    result = run(promtool, "check", "rules", str(rules_dir(tmp_path) / "rules.yaml"))

    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_tests_pass(tmp_path: Path) -> None:
    promtool = debian_tool("promtool")
    result = run(promtool, "test", "rules", str(rules_dir(tmp_path) / RULES_TEST.name))

    assert result.returncode == 0, result.stdout + result.stderr


def alert_cases() -> list[dict[str, Any]]:
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    return [case for test in tests for case in test.get("alert_rule_test", [])]


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    cases = alert_cases()
    firing = {c["alertname"] for c in cases if c["exp_alerts"]}
    quiet = {c["alertname"] for c in cases if not c["exp_alerts"]}

    assert set(alerts()) - firing == set(), "alerts never fired by a test"
    assert set(alerts()) - quiet == set(), "alerts never shown quiet by a test"
    assert {c["alertname"] for c in cases} <= set(alerts()), "a test of an alert that is gone"


def test_every_alert_says_what_happened_and_what_to_look_at_first() -> None:
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["annotations"]["summary"].strip(), name
        # The runbook: what it means and the first thing to look at.
        assert "Look first at" in rule["annotations"]["description"], name


def test_alerts_are_documented_in_the_operations_guide() -> None:
    guide = (Path(__file__).parent.parent / "docs" / "operations.md").read_text()
    section = guide.partition("## Running on Kubernetes")[2]

    assert [name for name in alerts() if f"`{name}`" not in section] == []


def dashboard_panels() -> list[dict[str, Any]]:
    return list(json.loads(DASHBOARD.read_text())["panels"])


def test_dashboard_has_one_row_per_concern_each_with_panels() -> None:
    panels = dashboard_panels()
    rows = [p["title"] for p in panels if p["type"] == "row"]

    assert rows == CONCERNS
    row_of = ""
    per_row: dict[str, int] = {}
    for panel in panels:
        if panel["type"] == "row":
            row_of = panel["title"]
            continue
        per_row[row_of] = per_row.get(row_of, 0) + 1
    assert set(per_row) == set(CONCERNS)


def test_every_panel_queries_the_chosen_prometheus() -> None:
    panels = [p for p in dashboard_panels() if p["type"] != "row"]
    ids = [p["id"] for p in dashboard_panels()]

    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert 'namespace=~"$namespace"' in target["expr"], panel["title"]
