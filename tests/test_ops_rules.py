"""Prometheus rules and scrape config: promtool accepts them, the unit tests pass, names match the contract.

Needs `promtool` (Debian package `prometheus`); those tests skip with that reason where it is absent. The
structural tests (metric names against docs/metrics.md, every alert tested) run everywhere.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
PROM = REPO / "prometheus"
RULES = PROM / "vramwatch-rules.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian: apt-get install prometheus)"
)


def documented_series() -> set[str]:
    """Series names docs/metrics.md promises, with a histogram's _bucket/_sum/_count expanded."""
    names: set[str] = set()
    table = (REPO / "docs" / "metrics.md").read_text()
    for name, kind in re.findall(r"^\| `(vramwatch_\w+)` \| ([a-z]+)", table, flags=re.MULTILINE):
        names.add(name)
        if kind == "histogram":
            names.update({name + "_bucket", name + "_sum", name + "_count"})
    assert len(names) > 20, "docs/metrics.md table not found"
    return names


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, check=False, cwd=REPO)


@needs_promtool
def test_promtool_check_rules() -> None:
    """`promtool check rules` accepts the rule file."""
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


@needs_promtool
def test_promtool_rule_unit_tests() -> None:
    """`promtool test rules prometheus/tests/*.yml` passes: each alert fires on its story and not on near misses."""
    tests = sorted(str(p) for p in (PROM / "tests").glob("*.yml"))
    assert tests
    result = promtool("test", "rules", *tests)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
@pytest.mark.parametrize(
    ("decision", "ignored", "alert"),
    [
        ('{kind="oom_forecast", severity="warning"}', '{kind="oom_forecast"}', "VramwatchOomForecastWarning"),
        ('severity="critical", tentative="false"}', 'severity="critical"}', "VramwatchOomForecastCritical"),
    ],
)
def test_promtool_unit_tests_are_live(tmp_path: Path, decision: str, ignored: str, alert: str) -> None:
    """The unit tests catch a changed decision: a warning alert that ignores the finding's severity, a critical
    one that pages on a tentative finding, fail them."""
    (tmp_path / "tests").mkdir()
    broken = RULES.read_text().replace(decision, ignored)
    assert broken != RULES.read_text()
    (tmp_path / RULES.name).write_text(broken)
    for test in (PROM / "tests").glob("*.yml"):
        (tmp_path / "tests" / test.name).write_text(test.read_text())
    result = promtool("test", "rules", *(str(p) for p in (tmp_path / "tests").glob("*.yml")))
    assert result.returncode != 0
    assert alert in result.stdout + result.stderr


@needs_promtool
def test_promtool_check_config() -> None:
    """The example prometheus.yml, its rule file and its file_sd target files pass `promtool check config`."""
    result = promtool("check", "config", str(PROM / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_use_only_documented_metrics() -> None:
    """Every vramwatch_* series a rule reads is in docs/metrics.md (recording-rule outputs aside)."""
    documented = documented_series()
    for rule in rules():
        used = set(re.findall(r"(?<![:\w])vramwatch_\w+", rule["expr"]))
        assert used <= documented, (rule.get("alert") or rule.get("record"), used - documented)


def test_alerts_carry_severity_and_text() -> None:
    """Every alert has a summary and description, and a severity (or inherits one from its series)."""
    for rule in rules():
        if "alert" not in rule:
            continue
        assert {"summary", "description"} <= rule["annotations"].keys(), rule["alert"]
        severity = rule.get("labels", {}).get("severity")
        assert severity in {"warning", "critical"} or "findings_active" in rule["expr"], rule["alert"]


def test_every_alert_has_a_unit_test() -> None:
    """Each alert appears in at least one promtool test case that expects it to fire."""
    tested: set[str] = set()
    for path in (PROM / "tests").glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    tested.add(check["alertname"])
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert alerts <= tested, alerts - tested


def test_exporter_down_alert_matches_scrape_job() -> None:
    """The exporter-down alert selects the job name the example scrape config uses."""
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    down = next(rule for rule in rules() if rule.get("alert") == "VramwatchExporterDown")
    match = re.search(r'up\{job="(\w+)"\}', down["expr"])
    assert match is not None
    assert match.group(1) in jobs
