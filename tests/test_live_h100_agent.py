"""Runs that fill the card with their cache, under the in-process agent, live: benchmarks/detection/ceiling_gpu.py
--agent on a lent H100 (benchmarks/results/ceiling-agent-h100-2026-12-06). The recording carries the agents' figures;
these replays pin that the final rule (detectors/cache.py, which tempers a forecast and never removes one) changes
nothing about a young healthy run and a leak beneath its cache.

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


def test_the_healthy_run_is_never_ended(run4: Run) -> None:
    """R's first climb (young, from its load) is forecast tentatively, as without the agent; nothing about R is firm,
    and the policy only ever asks it to save (waits for a confirmation that never comes)."""
    raised, decisions, _t0, _oom = run4
    forecasts = [f for f in _about(R, raised) if f.kind == FindingKind.OOM_FORECAST]
    assert all(f.tentative is not None for f in forecasts)
    assert all("waits" in reason for f, reason, _done in decisions if f.culprit and f.culprit.pid == R)


def test_the_agents_figures_change_nothing_for_a_young_run_and_a_leak() -> None:
    """The same recording with the agents' figures stripped raises the same findings about R and L, at the same
    severities: R is young (its youth already makes its forecast tentative) and L's tensors rise with its leak (the
    agent vouches for nothing), so here the figures change nothing; tests/test_cache_agent.py shows a settled run's
    climb of cache tempered from firm to tentative."""
    folder = RESULTS / "run4"
    snaps = recorded(folder / "serve.trace.jsonl.gz")
    stripped = [dataclasses.replace(s, torch=()) for s in snaps]
    kinds = {FindingKind.OOM_FORECAST, FindingKind.GROWTH, FindingKind.PROBABLE_OOM}

    def said(raised: list[Finding]) -> list[tuple[str, str, bool, int]]:
        return [
            (f.kind, f.severity.value, f.tentative is None, pid)
            for pid in (R, L)
            for f in _about(pid, raised)
            if f.kind in kinds
        ]

    with_figures = said(replay_with_policy(snaps, folder / "serve.toml")[0])
    assert with_figures == said(replay_with_policy(stripped, folder / "serve.toml")[0])
    assert any(k == FindingKind.OOM_FORECAST and pid == R for k, _s, _f, pid in with_figures)


def test_the_leak_beneath_the_cache_is_still_forecast(run4: Run) -> None:
    """L's tensors' peak rises with its leak, so the agent vouches for nothing: its climb is forecast critical more
    than a minute and a half before its real OOM, and the post-mortem names it."""
    raised, _decisions, _t0, oom_t = run4
    ahead = [f for f in _about(L, raised) if f.kind == FindingKind.OOM_FORECAST]
    assert ahead
    assert oom_t - ahead[0].t >= 90.0
    assert any(f.kind == FindingKind.PROBABLE_OOM for f in _about(L, raised))


def test_the_live_daemons_said_so() -> None:
    """Run 3, live: the rule's first version (which dropped a caching grower instead of tempering its forecast) said
    nothing about R; `ec87d4d` beside it forecast R's first climb and asked it to save. Both runs: nobody was
    signalled to end, R exit 0, L exit 3."""
    run3 = json.loads((RESULTS / "run3" / "summary.json").read_text())
    live, base = run3["serve"], run3["serve-base"]
    assert not [f for f in live["findings_raised"] if "(pid 558," in f["message"] and f["kind"] == "oom_forecast"]
    assert next(f["kind"] for f in base["findings_raised"] if "(pid 558," in f["message"]) == "oom_forecast"
    for summary in (run3, json.loads((RESULTS / "run4" / "summary.json").read_text())):
        assert summary["exit_codes"] == {"R": 0, "L": 3}
        assert not any(d["done"] for d in summary["serve"]["signal_decisions"])
