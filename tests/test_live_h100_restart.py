"""A daemon restart on a busy card, live: benchmarks/detection/restart_gpu.py on a lent H100
(benchmarks/results/restart-h100-2026-12-06).

A ballast leaves 24 GiB. A healthy trainer and two model servers run for 190 s before `vramwatch serve` starts,
under a policy that saves and then ends `trainer.py` on a critical finding; `56a2349` watches beside it in dry-run.
Nobody runs out of memory.
- `bare` (run 1): both servers at their bare CUDA context; 6 s after the daemon starts A loads 5 GiB over 20 s, 10 s
  after B loads 9 GiB over 40 s.
- `unseen` (run2/, and run3/ with the final tree's daemon): what the daemon did not see. A gave 6 of its 8 GiB
  back 30 s before the restart and takes them back over 40 s from 20 s after it; B began to load 9 GiB over 45 s
  15 s before the restart.
Each recording (from before the processes started) is replayed from the moment the daemons started, through the
detectors, the tracker and that policy (dry-run), and whole (a daemon that watched from the start).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from _recorded import Decided, recorded, replay_with_policy
from vramwatch.model import Snapshot

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "restart-h100-2026-12-06"
#: Each run's folder and its pids: the trainer, server A, server B.
RUNS = {
    "bare": (RESULTS, 703, 704, 705),
    "unseen": (RESULTS / "run2", 705, 706, 707),
    "unseen, final tree": (RESULTS / "run3", 702, 703, 704),
}


def _daemon_started(run: Path) -> float:
    """The wall time the restarted daemons began to read NVML (their `backend_ready` line; both started at once)."""
    for line in (run / "serve-base.log").read_text().splitlines():
        if line.startswith("{") and (record := json.loads(line)).get("event") == "backend_ready":
            return datetime.fromisoformat(str(record["timestamp"]).replace("Z", "+00:00")).timestamp()
    raise AssertionError("serve-base.log has no backend_ready line")


@pytest.fixture(scope="module", params=list(RUNS))
def recording(request: pytest.FixtureRequest) -> tuple[str, list[Snapshot]]:
    run = RUNS[request.param][0]
    return request.param, recorded(run / "restart.raw.jsonl.gz")


@pytest.fixture(scope="module", params=["from the restart", "watched all along"])
def replayed(request: pytest.FixtureRequest, recording: tuple[str, list[Snapshot]]) -> tuple[str, Decided]:
    """A run's recording from the daemons' start (the servers first seen 190 s old), or whole."""
    name, snapshots = recording
    run = RUNS[name][0]
    start = _daemon_started(run) if request.param == "from the restart" else 0.0
    return name, replay_with_policy([s for s in snapshots if s.wall_time >= start], run / "serve.toml")


def test_the_restart_is_replayed_with_old_runs_already_there(recording: tuple[str, list[Snapshot]]) -> None:
    """The replay's first tick sees the trainer and both servers, three minutes old; in `bare` the servers are at
    their context, in `unseen` A holds what it kept of its give-back and B is loading."""
    name, snapshots = recording
    run, trainer, a, b = RUNS[name]
    first = next(s for s in snapshots if s.wall_time >= _daemon_started(run))
    held = {p.pid: p.used_bytes or 0 for p in first.processes}
    assert {trainer, a, b} <= set(held)
    ages = [first.wall_time - p.meta.start_time for p in first.processes if p.meta.start_time is not None]
    assert min(ages) >= 180
    if name == "bare":
        assert max(held[a], held[b]) < 1 << 30
    else:
        assert 2 << 30 < held[a] < 3 << 30
        assert 1 << 30 < held[b] < 8 << 30


def test_nothing_that_could_end_a_run_is_raised(replayed: tuple[str, Decided]) -> None:
    """Both runs, both ways: every forecast is critical and tentative, and the policy that saves and then ends the
    trainer waits on each: no run is signalled. In `bare`, A's 20-s load raises nothing and B's 40-s load one
    forecast, as a load from its bare context."""
    name, (raised, decisions) = replayed
    _, _, _, b = RUNS[name]
    assert raised
    assert all((f.kind, f.severity.value) == ("oom_forecast", "critical") for f in raised)
    assert all(f.tentative is not None for f in raised)
    assert decisions
    assert not any(done for _, _, done in decisions)
    assert all("waits until it is confirmed" in reason for _, reason, _ in decisions)
    if name == "bare":
        assert [f.culprit.pid if f.culprit else None for f in raised] == [b]
        assert "began to climb" in str(raised[0].tentative)


@pytest.mark.parametrize("name", list(RUNS))
def test_the_live_daemons_of_this_tree_and_the_one_before_said_so(name: str) -> None:
    """Live, the new rule's daemon (`ac4b374` in `bare`, `863e3f7` in `unseen`, `bb4f0fc` in run 3) raised one
    tentative forecast and signalled no one; `56a2349` beside it (dry-run) forecast both servers' climbs firm, as old
    runs leaking, and would have sent the healthy trainer SIGTERM."""
    run, trainer, a, b = RUNS[name]
    summary = json.loads((run / "summary.json").read_text())
    live = summary["serve"]
    assert [(r["kind"], r["severity"], r["tentative"] is not None) for r in live["findings_raised"]] == [
        ("oom_forecast", "critical", True)
    ]
    said = f"phases.py (pid {b if name == 'bare' else a}, root) grows"
    assert live["findings_raised"][0]["message"].startswith(said)
    assert not any(d["done"] for d in live["signal_decisions"])
    base = summary["serve-base"]
    assert [(r["kind"], r["severity"], r["tentative"]) for r in base["findings_raised"]] == [
        ("oom_forecast", "critical", None)
    ] * 2
    blamed = {pid for r in base["findings_raised"] for pid in (a, b) if f"(pid {pid}, root) grows" in r["message"]}
    assert blamed == {a, b}
    assert [d["pid"] for d in base["signal_decisions"] if d["dry_run"]] == [trainer]
    assert summary["exit_codes"] == {"A": 0, "B": 0}
