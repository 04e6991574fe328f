"""A live GPU run replayed: benchmarks/detection/hold_gpu.py on a lent H100 (benchmarks/results/hold-h100-2026-12-06).

A ballast leaving 24 GiB, a healthy trainer, a slow load (11 GiB at ~450 MB/s, then held and ended normally) and a
run leaking ~20 MB/s, watched by `vramwatch serve` under a policy that names `trainer.py` with an adapter that saves
and then ends the run. The recording is replayed through the detectors, the tracker and that policy (dry-run), and
what it concludes is checked against what the live daemon logged in the same run (`serve.log`): the same, but the
slow load's forecast, which this tree no longer raises (a load's climb of 25 s, under `forecast_load_seconds`).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from _recorded import Decided, recorded, replay_with_policy
from vramwatch.model import Finding, Snapshot

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "results" / "hold-h100-2026-12-06" / "run1"
LOAD, LEAKER = 713, 761


def _snapshots() -> list[Snapshot]:
    return recorded(RUN / "hold.raw.jsonl.gz")


@pytest.fixture(scope="module")
def replayed() -> Decided:
    """Every finding raised, and every signal decision the run's policy (in dry-run) made on it."""
    return replay_with_policy(_snapshots(), RUN / "serve.toml")


def _live() -> list[dict[str, object]]:
    lines = (RUN / "serve.log").read_text().splitlines()
    return [r for r in (json.loads(line) for line in lines if line.startswith("{")) if r.get("event") == "finding"]


def test_the_slow_load_raised_nothing_here_where_the_live_daemon_raised_a_tentative_forecast(
    replayed: tuple[list[Finding], list],
) -> None:
    """The slow load climbed 25 s: shorter than `forecast_load_seconds` (30 s), so this tree raises nothing about it.
    The live daemon of that run (before the gate) forecast it critical, tentative, and ended no run."""
    raised, _ = replayed
    assert [f for f in raised if f.culprit is not None and f.culprit.pid == LOAD] == []
    live = [r for r in _live() if f"(pid {LOAD}," in str(r["message"])]
    assert [(r["kind"], r["severity"], r.get("tentative") is not None) for r in live] == [
        ("oom_forecast", "critical", True)
    ]


def test_the_leak_is_warned_and_nothing_else_is_raised(replayed: tuple[list[Finding], list]) -> None:
    """The leaking run gets a firm warning forecast (its rate fills the card in about ten minutes); nothing else is
    raised over the run, and no signal is sent."""
    raised, decisions = replayed
    leak = [f for f in raised if f.culprit is not None and f.culprit.pid == LEAKER]
    assert [(f.kind, f.severity.value, f.tentative) for f in leak] == [("oom_forecast", "warning", None)]
    assert len(raised) == 1
    assert not any(done for _, _, done in decisions)


def test_the_replay_says_what_the_live_daemon_said_but_the_load(replayed: tuple[list[Finding], list]) -> None:
    """The same findings as the live daemon logged in that run, in the same order, about the same grower, within
    two ticks of it, but the slow load's forecast (above)."""
    raised, _ = replayed
    live = [r for r in _live() if f"(pid {LOAD}," not in str(r["message"])]
    assert [(r["kind"], r["severity"]) for r in live] == [(f.kind, f.severity.value) for f in raised]
    wall_of = {snap.t: snap.wall_time for snap in _snapshots()}
    for finding, record in zip(raised, live, strict=True):
        assert str(record["message"]).split(" grows ")[0] == finding.message.split(" grows ")[0]
        logged = datetime.fromisoformat(str(record["timestamp"]).replace("Z", "+00:00")).timestamp()
        assert abs(logged - wall_of[finding.t]) <= 2.5
