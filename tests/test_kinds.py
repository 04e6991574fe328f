"""One list of finding kinds: every kind a detector emits is known to the advice, the alert rules, the dashboard,
Alertmanager and the CLI, and no list elsewhere names a kind that nothing emits."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from vramwatch.actions.payload import alertname
from vramwatch.advice.rules import ADVICE_KINDS, default_rules
from vramwatch.cli import main
from vramwatch.detectors.registry import BUILTIN, detectors
from vramwatch.model import FindingKind

REPO = Path(__file__).resolve().parent.parent
KINDS = sorted(FindingKind)
# `vramwatch_findings_active{kind=~"growth|oom"}`: the series name, then its label matchers if any.
SELECTOR = re.compile(r"(vramwatch_findings_(?:active|total))(?:\{([^}]*)\})?")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def admits(matchers: str, kind: str) -> bool:
    """Whether a PromQL selector's label matchers let a series with `kind` through (other labels: any value)."""
    for label, op, value in MATCHER.findall(matchers):
        if label != "kind":
            continue
        hit = re.fullmatch(value, kind) is not None if op in ("=~", "!~") else value == kind
        if hit != (op in ("=", "=~")):
            return False
    return True


def shows_by_kind(expr: str, kind: str) -> bool:
    """The expression keeps the `kind` label (no aggregation drops it) and a findings selector admits `kind`."""
    groupings = re.findall(r"\bby\s*\(([^)]*)\)", expr.replace(" ", ""))
    aggregates = re.search(r"\b(sum|avg|min|max|count|topk|bottomk)\s*\(", expr) is not None
    keeps = all("kind" in by.split(",") for by in groupings) and (bool(groupings) or not aggregates)
    return keeps and any(admits(m or "", kind) for _, m in SELECTOR.findall(expr))


def dashboard_exprs() -> list[str]:
    doc = json.loads((REPO / "grafana" / "vramwatch-dashboard.json").read_text())
    exprs = [a.get("expr", "") for a in doc["annotations"]["list"]]
    for panel in doc["panels"]:
        exprs += [t.get("expr", "") for t in panel.get("targets", [])]
    return [e for e in exprs if SELECTOR.search(e)]


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((REPO / "prometheus" / "vramwatch-rules.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r and SELECTOR.search(r["expr"])]


def test_the_registry_and_the_enum_list_the_same_kinds() -> None:
    """Each FindingKind has exactly one built-in detector, and each built-in detector emits a FindingKind."""
    assert sorted(d.kind for d in BUILTIN) == KINDS


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_gets_advice_the_rules_know(kind: FindingKind) -> None:
    """The advice a kind's detector names is an advice kind that at least one rule in rules.toml answers."""
    (detector,) = [d for d in detectors() if d.kind == kind]
    assert detector.advice in ADVICE_KINDS
    assert any(detector.advice in rule.kinds for rule in default_rules().rules)


def test_every_advice_kind_is_used() -> None:
    """No phantom advice kind: each is named by a rule, and each is a detector's advice or a situation asked by hand."""
    used = {k for rule in default_rules().rules for k in rule.kinds}
    assert used == ADVICE_KINDS
    # `spike` is the agent's OOM's advice (and a young probable OOM's); `plateau` is asked for by hand and by the
    # step forecast (`vramwatch probe` / `run`), `sampling` only by the step forecast.
    assert ADVICE_KINDS - {d.advice for d in BUILTIN} == {"plateau", "sampling"}


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_reaches_an_alert_rule(kind: FindingKind) -> None:
    """Some alert selects the kind's active findings and names the kind in what it says."""
    assert any(
        admits(m or "", kind) and "$labels.kind" in json.dumps(rule.get("annotations", {}))
        for rule in alert_rules()
        for _, m in SELECTOR.findall(rule["expr"])
    )


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_is_shown_by_name_on_the_dashboard(kind: FindingKind) -> None:
    """Some dashboard panel or annotation shows the kind's findings per kind."""
    assert any(shows_by_kind(expr, kind) for expr in dashboard_exprs())


def test_the_dashboard_check_would_catch_a_kind_left_out() -> None:
    """The matchers are read: a panel filtered to other kinds does not count for a missing one."""
    assert not shows_by_kind('sum by (kind) (vramwatch_findings_active{kind=~"growth|pressure"})', "oom")
    assert not shows_by_kind('sum(vramwatch_findings_active{kind!="oom"})', "oom")
    assert not shows_by_kind('sum(vramwatch_findings_active{instance=~"$instance"})', "oom")  # no kind left
    assert shows_by_kind('sum by (kind) (vramwatch_findings_active{instance=~"$instance"})', "oom")


def test_alertmanager_names_each_kind_apart() -> None:
    """Each kind becomes its own CamelCase alertname."""
    names = {alertname(k) for k in KINDS}
    assert len(names) == len(KINDS)
    assert all(re.fullmatch(r"Vramwatch[A-Z][A-Za-z]+", n) for n in names)


def test_the_cli_offers_every_advice_kind() -> None:
    """`vramwatch advise --kind` accepts every advice kind and nothing else."""
    (option,) = [p for p in main.commands["advise"].params if p.name == "kind"]
    assert sorted(option.type.choices) == sorted(ADVICE_KINDS)  # type: ignore[attr-defined]
    res = CliRunner().invoke(main, ["advise", "--cmdline", "python train.py", "--kind", "stable"])
    assert res.exit_code == 2
