"""A daemon restart on a busy card, live: benchmarks/detection/restart_gpu.py on a lent H100
(benchmarks/results/restart-h100-2026-12-06).

A ballast leaves 24 GiB. A healthy trainer and two model servers at their bare CUDA context run for 190 s before
`vramwatch serve` starts, under a policy that saves and then ends `trainer.py` on a critical finding. 6 s after the
daemon starts, server A loads 5 GiB over 20 s; 10 s after, server B loads 9 GiB over 40 s. Nobody runs out of memory.
The recording (from before they started) is replayed from the moment the daemon started, through the detectors, the
tracker and that policy (dry-run), and from its own start (a daemon that watched them sit at their context).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from _recorded import recorded
from vramwatch.actions import ActionDispatcher, parse_policy
from vramwatch.config import tomllib
from vramwatch.detectors import DetectorConfig, FindingTracker, analyze
from vramwatch.history import History
from vramwatch.model import Finding, Snapshot
from vramwatch.testing import StaticInspector

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "results" / "restart-h100-2026-12-06"
TRAINER, A, B = 703, 704, 705
Replayed = tuple[list[Finding], list[tuple[Finding, str, bool]]]


def _daemon_started() -> float:
    """The wall time the restarted daemons began to read NVML (their `backend_ready` line; both started at once)."""
    for line in (RUN / "serve-base.log").read_text().splitlines():
        if line.startswith("{") and (record := json.loads(line)).get("event") == "backend_ready":
            return datetime.fromisoformat(str(record["timestamp"]).replace("Z", "+00:00")).timestamp()
    raise AssertionError("serve-base.log has no backend_ready line")


def _replay(snaps: list[Snapshot]) -> Replayed:
    """Every finding raised, and every signal decision the run's policy (in dry-run) made on it."""
    policy = tomllib.loads((RUN / "serve.toml").read_text())["policy"]
    policy.update(dry_run=True, recheck=False)
    metas = {p.pid: p.meta for s in snaps for p in s.processes}
    dispatcher = ActionDispatcher(
        parse_policy(policy),
        (),
        inspector=StaticInspector(metas),
        start_time_of=lambda pid: metas[pid].start_time if pid in metas else None,
        environ_of=lambda _pid: {},
        default_log=False,
    )
    config = DetectorConfig()
    history, tracker = History(), FindingTracker(config)
    raised: list[Finding] = []
    decisions: list[tuple[Finding, str, bool]] = []
    for snap in snaps:
        history.add(snap)
        new, cleared = tracker.update(analyze(history, config))
        raised += new
        for f in new:
            decisions += [(f, r.reason, r.done) for r in dispatcher.handle([f], [], frozenset(), snap.processes)
                          if r.action == "signal"]  # fmt: skip
        dispatcher.handle([], cleared, frozenset(), snap.processes)
    dispatcher.close()
    return raised, decisions


@pytest.fixture(scope="module")
def snapshots() -> list[Snapshot]:
    return recorded(RUN / "restart.raw.jsonl.gz")


@pytest.fixture(scope="module", params=["from the restart", "watched all along"])
def replayed(request: pytest.FixtureRequest, snapshots: list[Snapshot]) -> Replayed:
    """The recording from the daemon's start (the servers first seen at their context, 190 s old), or whole."""
    start = _daemon_started() if request.param == "from the restart" else 0.0
    return _replay([s for s in snapshots if s.wall_time >= start])


def test_the_restart_is_replayed_with_old_servers_at_their_context(snapshots: list[Snapshot]) -> None:
    """The replay's first tick sees the trainer and both servers, three minutes old, the servers at their context."""
    start = _daemon_started()
    first = next(s for s in snapshots if s.wall_time >= start)
    held = {p.pid: p.used_bytes for p in first.processes}
    assert {TRAINER, A, B} <= set(held)
    assert all((held[pid] or 0) < 1 << 30 for pid in (A, B))
    ages = [first.wall_time - p.meta.start_time for p in first.processes if p.meta.start_time is not None]
    assert min(ages) >= 180


def test_the_two_loads_raise_one_tentative_forecast_and_end_no_run(replayed: Replayed) -> None:
    """A's 20-s load raises nothing; B's 40-s load is forecast critical, tentative, as a load from its bare context;
    the policy that saves and then ends the trainer waits: no run is signalled."""
    raised, decisions = replayed
    assert [(f.kind, f.severity.value, f.culprit.pid if f.culprit else None) for f in raised] == [
        ("oom_forecast", "critical", B)
    ]
    (forecast,) = raised
    assert forecast.tentative is not None
    assert "began to climb" in forecast.tentative
    assert decisions
    assert not any(done for _, _, done in decisions)
    assert all("waits until it is confirmed" in reason for _, reason, _ in decisions)


def test_the_live_daemons_of_this_tree_and_the_one_before_said_so() -> None:
    """Live, this tree's daemon raised that one tentative forecast and signalled no one; the tree before it (`56a2349`,
    dry-run) forecast both loads firm, as an old run leaking, and would have sent the healthy trainer SIGTERM."""
    summary = json.loads((RUN / "summary.json").read_text())
    live = summary["serve"]
    assert [(r["kind"], r["severity"], r["tentative"] is not None) for r in live["findings_raised"]] == [
        ("oom_forecast", "critical", True)
    ]
    assert "it held only its CUDA context" in live["findings_raised"][0]["message"]
    assert not any(d["done"] for d in live["signal_decisions"])
    base = summary["serve-base"]
    assert [(r["kind"], r["severity"], r["tentative"]) for r in base["findings_raised"]] == [
        ("oom_forecast", "critical", None)
    ] * 2
    assert [d["pid"] for d in base["signal_decisions"] if d["dry_run"]] == [TRAINER]
    assert summary["exit_codes"] == {"A": 0, "B": 0}
