"""The detection benchmark's scorer: its arithmetic on synthetic runs, the peer rule, and a real trace file."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
from vramwatch.detectors.testing import GIB, MIB, Rig, meta, ticks
from vramwatch.model import GpuSample, Snapshot
from vramwatch.trace import TraceWriter, make_header

SCORE_PY = Path(__file__).resolve().parents[1] / "benchmarks" / "detection" / "score.py"


@pytest.fixture(scope="module")
def score() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vramwatch_detection_score", SCORE_PY)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_leads_are_measured_before_the_oom(score: ModuleType) -> None:
    """Lead times are OOM time minus the first warning / first critical raised before it."""
    truth = score.Truth("fast_leak", "simulated", oom_t=200.0, gradual=True)
    run = score.Run("t", truth, ticks=[float(t) for t in range(201)])
    run.ours = [
        score.Event(100.0, "oom_forecast", "warning"),
        score.Event(150.0, "oom_forecast", "critical"),
        score.Event(205.0, "probable_oom", "critical"),
    ]
    run.baseline = [score.Event(180.0, "baseline", "warning")]
    row, targets = score.score(run, 3)
    assert (row["lead_warning_s"], row["lead_critical_s"], row["baseline_lead_s"]) == (100.0, 50.0, 20.0)
    assert [(t.name, t.passed) for t in targets] == [
        ("warned ahead", True),
        ("critical ahead", True),
        ("no false finding", True),
    ]


@pytest.mark.parametrize(
    ("scenario", "rate", "required"),
    [("fast_leak", 0.0, 60.0), ("slow_leak", 1e9, 300.0), ("leak", 20e6, 60.0), ("stepwise", 3e6, 300.0)],
)
def test_required_lead_by_name_then_by_rate(score: ModuleType, scenario: str, rate: float, required: float) -> None:
    """A leak is slow by its name, or by rising under 10 MB/s in the ten minutes before its OOM."""
    truth = score.Truth(scenario, "simulated", oom_t=1000.0, gradual=True)
    run = score.Run("t", truth, used={"GPU-0": [(400.0, 1e9), (1000.0, 1e9 + rate * 600)]})
    assert score.required_lead(run) == required


def test_healthy_and_contention_targets(score: ModuleType) -> None:
    """Any finding fails a healthy run; a contender counts only when it names the right pid in time, and
    naming the wrong pid is a false finding."""
    healthy = score.Run("h", score.Truth("warmup", "simulated", healthy=True))
    healthy.ours = [score.Event(10.0, "pressure", "warning")]
    assert [t.passed for t in score.score(healthy, 3)[1]] == [False]
    truth = score.Truth("contention", "simulated", contention_t=60.0, contender_pid=7)
    run = score.Run("c", truth, ticks=[float(t) for t in range(100)])
    run.ours = [score.Event(61.0, "contention", "warning", pid=8), score.Event(64.0, "contention", "warning", pid=7)]
    row, targets = score.score(run, 3)
    assert row["contention_ticks"] == 4
    assert [(t.name, t.passed) for t in targets] == [("contender named", False), ("no false finding", False)]
    assert row["false"] == 1  # the finding that named pid 8, the wrong process


@pytest.mark.parametrize(
    ("event", "verdict"),
    [
        # a forecast about the card blaming the leak itself, or nobody: a warning of its OOM
        (("oom_forecast", None, 7, 150.0), "true"),
        (("oom_forecast", None, None, 150.0), "true"),
        # a forecast blaming a load elsewhere on the card (a two-stage start, 2026-12-06): no warning of it
        (("oom_forecast", None, 9, 150.0), "false"),
        # anything raised before the leaking run existed, even about nobody (a peer's alert on another's load)
        (("oom_forecast", None, None, 90.0), "false"),
        (("baseline", None, None, 90.0), "false"),
        # a post-mortem naming it
        (("probable_oom", 7, None, 201.0), "true"),
        # a contender allowed by the truth, blamed by a forecast while it takes the room
        (("oom_forecast", None, 8, 130.0), "allowed"),
    ],
)
def test_a_card_wide_finding_names_the_run_it_blames(
    score: ModuleType, event: tuple[str, int | None, int | None, float], verdict: str
) -> None:
    """A finding about the whole card that blames one run claims that run's OOM only; and nothing raised before
    the leaking run started warns of it."""
    oom = score.Expect("oom", 7, t=200.0, from_t=100.0, gradual=True)
    allow = score.Expect("oom_forecast", 8, from_t=120.0, required=False)
    truth = score.Truth("shared", "recorded", expect=(oom,), allow=(allow,))
    kind, pid, culprit, t = event
    assert score.classify(score.Event(t, kind, "critical", pid, culprit=culprit), truth) == verdict


def test_gpu_monitor_rule_alerts_on_30_percent_in_10_minutes(score: ModuleType) -> None:
    """The peer rule fires once a GPU is 30 % above its 10-minute low, checked every minute, once per episode."""
    rule = score.GpuMonitorRule()
    alerts = []
    for t in ticks(0.0, 1200.0, 10.0):
        used = 10 * GIB if t < 300 else 14 * GIB
        snap = Snapshot(t, t, (GpuSample(0, "GPU-0", "x", 24 * GIB, used, 24 * GIB - used),), ())
        alerts += rule.update(snap)
    assert [a.t for a in alerts] == [300.0]


def _write_trace(path: Path, rows: list[tuple[float, dict[int, int]]], rig: Rig) -> None:
    with path.open("w") as fp, TraceWriter(fp, make_header({"backend": "simulated"}, 1.0)) as writer:
        for t, usage in rows:
            writer.write(rig.snapshot(t, usage))


def test_scores_a_directory_of_real_trace_files(
    score: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A leak trace and a healthy trace on disk are replayed through the detectors and pass the targets."""
    rig = Rig(metas={4242: meta(4242)})
    leak = [(t, {4242: 6 * GIB + int(max(0.0, t - 20) * 150e6)}) for t in ticks(0.0, 200.0)]
    oom = next(t for t, u in leak if u[4242] + 300 * MIB >= 24 * GIB - 64 * MIB)
    _write_trace(tmp_path / "fast.jsonl", [r for r in leak if r[0] < oom], rig)
    (tmp_path / "fast.truth.json").write_text(
        json.dumps({"scenario": "fast_leak", "source": "simulated", "oom_t": oom, "gradual": True, "healthy": False})
    )
    _write_trace(tmp_path / "flat.jsonl", [(t, {4242: 12 * GIB}) for t in ticks(0.0, 300.0)], rig)
    (tmp_path / "flat.truth.json").write_text(
        json.dumps({"scenario": "steady", "source": "simulated", "healthy": True})
    )
    assert score.main([str(tmp_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["passed"] is True
    rows = {r["trace"]: r for r in summary["traces"]}
    assert rows["fast"]["lead_warning_s"] >= 60
    assert rows["flat"]["false_findings"] == 0


def test_nothing_to_score_exits_2(score: ModuleType, tmp_path: Path) -> None:
    """An empty directory is an error, not a pass."""
    assert score.main([str(tmp_path)]) == 2


@pytest.mark.parametrize("scenario", ["fast_leak", "contention", "warmup", "plateau", "lost_gpu", "stale"])
def test_simulated_scenarios_meet_the_targets(score: ModuleType, scenario: str) -> None:
    """The simulator's stories, replayed at 1 Hz, meet every target that applies to them."""
    (case,) = score.simulated_cases([scenario], [0])
    name, truth, snapshots, interval = case
    run = score.replay(name, truth, snapshots, score.DetectorConfig(), interval)
    _row, targets = score.score(run, 3)
    assert all(t.passed for t in targets), targets
    if scenario == "stale":
        assert {e.kind for e in run.ours} == {"stale_holder"}
