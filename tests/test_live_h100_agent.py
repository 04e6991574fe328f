"""Runs that fill the card with their cache, under the in-process agent, live: benchmarks/detection/ceiling_gpu.py
--agent on a lent H100 (benchmarks/results/ceiling-agent-h100-2026-12-06).

The runs of test_live_h100_ceiling.py again (`R` healthy, its cache refilling at the card's end; `L` leaking 100 MB/s
beneath its cache until its real OOM), each under `vramwatch run`, its agent reporting allocated and reserved memory to
the daemons. Run 4's live daemon recorded its ticks with the agents' figures (`serve.trace.jsonl.gz`); the replay runs
them through the detectors, the tracker and the live run's policy (critical findings save and then end `trainer.py`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from _recorded import recorded, replay_with_policy
from vramwatch.model import Finding, FindingKind

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "ceiling-agent-h100-2026-12-06"
#: Run 4: R (healthy) and L (leaks) as pids.
R, L = 1245, 1351
#: Every finding raised, every signal decision (finding, reason, done), t0, and when L ran out of memory.
Run = tuple[list[Finding], list[tuple[Finding, str, bool]], float, float]


def _about(pid: int, raised: list[Finding]) -> list[Finding]:
    return [f for f in raised if (f.culprit and f.culprit.pid == pid) or (f.process and f.process.pid == pid)]


@pytest.fixture(scope="module")
def run4() -> Run:
    folder = RESULTS / "run4"
    snaps = recorded(folder / "serve.trace.jsonl.gz")
    summary = json.loads((folder / "summary.json").read_text())
    raised, decisions = replay_with_policy(snaps, folder / "serve.toml")
    oom_t = summary["t0"] + summary["L_ended"]["at"]
    return raised, decisions, summary["t0"], oom_t


def test_the_recording_carries_the_agents_figures() -> None:
    """The live daemon recorded allocated and reserved memory for both runs, most ticks (the agent reports once a
    second, the daemon keeps a report for 5 s)."""
    snaps = recorded(RESULTS / "run4" / "serve.trace.jsonl.gz")
    pids = {t.pid for s in snaps for t in s.torch}
    assert {R, L} <= pids
    with_r = [s for s in snaps if any(p.pid == R for p in s.processes)]
    assert sum(1 for s in with_r if any(t.pid == R for t in s.torch)) >= 0.9 * len(with_r)


def test_the_healthy_run_s_climbs_of_cache_are_not_forecast(run4: Run) -> None:
    """With its agent's figures, R's climbs (its first from its load included, during which its first validation
    raised its tensors' peak by 1.1 GiB once) are PyTorch's cache: no forecast, no leak claim, nothing the policy acts
    on. Without them (`ec87d4d`, or the figures stripped) its first climb is forecast critical and R asked to save."""
    raised, decisions, _t0, _oom = run4
    about_r = _about(R, raised)
    assert not [f for f in about_r if f.kind in {FindingKind.OOM_FORECAST, FindingKind.GROWTH}]
    assert not [f for f, _reason, _done in decisions if f.culprit and f.culprit.pid == R]


def test_without_the_agent_the_same_climb_is_forecast() -> None:
    """The same recording with the agents' figures stripped: R's first climb is forecast (tentative), as NVML alone
    allows; the figures, and nothing else, made the difference."""
    folder = RESULTS / "run4"
    snaps = [dataclasses.replace(s, torch=()) for s in recorded(folder / "serve.trace.jsonl.gz")]
    raised, _decisions = replay_with_policy(snaps, folder / "serve.toml")
    forecasts = [f for f in _about(R, raised) if f.kind == FindingKind.OOM_FORECAST]
    assert forecasts
    assert all(f.tentative is not None for f in forecasts)


def test_the_leak_beneath_the_cache_is_still_forecast(run4: Run) -> None:
    """L's tensors' peak rises with its leak, so the agent vouches for nothing: its climb is forecast critical more
    than a minute and a half before its real OOM, and the post-mortem names it."""
    raised, _decisions, _t0, oom_t = run4
    ahead = [f for f in _about(L, raised) if f.kind == FindingKind.OOM_FORECAST]
    assert ahead
    assert oom_t - ahead[0].t >= 90.0
    assert any(f.kind == FindingKind.PROBABLE_OOM for f in _about(L, raised))


def test_the_live_daemons_said_so() -> None:
    """Run 3, live (this rule, first version): nothing about R; `ec87d4d` beside it forecast R's first climb and asked
    it to save. Both runs: R never signalled to end, L forecast ahead of its OOM, R exit 0, L exit 3."""
    run3 = json.loads((RESULTS / "run3" / "summary.json").read_text())
    live, base = run3["serve"], run3["serve-base"]
    assert not [f for f in live["findings_raised"] if "(pid 558," in f["message"] and f["kind"] == "oom_forecast"]
    assert next(f["kind"] for f in base["findings_raised"] if "(pid 558," in f["message"]) == "oom_forecast"
    for summary in (run3, json.loads((RESULTS / "run4" / "summary.json").read_text())):
        assert summary["exit_codes"] == {"R": 0, "L": 3}
        assert not any(d["done"] for d in summary["serve"]["signal_decisions"])
