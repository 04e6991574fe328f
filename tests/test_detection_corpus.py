"""The real-GPU detection corpus (benchmarks/detection/traces): what vramwatch says on it, and what a policy does.

Each recorded trace has a truth file saying what really happened (a leak ran out, a newcomer squeezed a run,
runs ended normally). These tests replay every trace through the detectors, as the daemon does, and pin the
two promises of the trust issue: no false critical finding anywhere in the corpus, and, under the example
policy of docs/actions.md armed in dry-run, no process is ever (would be) signalled except ahead of a real
out-of-memory that the truth records.
"""

from __future__ import annotations

import gzip
import importlib.util
import itertools
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from _recorded import replaying_dispatcher
from vramwatch.config import tomllib
from vramwatch.detectors import DetectorConfig, FindingTracker, analyze
from vramwatch.history import History
from vramwatch.model import Snapshot

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT / "benchmarks" / "detection" / "traces"
# The corpus as a 24 GiB card (ballast taken out) and, for the multi-tenant recordings, as recorded (ballast in).
CASES = sorted(
    str(p.relative_to(TRACES)).removesuffix(".truth.json")
    for p in [*TRACES.glob("*.truth.json"), *TRACES.glob("raw/*.truth.json")]
)


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"vramwatch_corpus_{name}", ROOT / f"benchmarks/detection/{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def score() -> ModuleType:
    return _script("score")


@pytest.fixture(scope="module")
def resample() -> ModuleType:
    return _script("resample")


def example_policy(users: set[str]) -> dict[str, object]:
    """docs/actions.md's example [policy], armed in dry-run and naming every user of the trace as a target.

    Naming everyone is the strictest reading: any critical finding of an acted-on kind would reach someone.
    """
    text = (ROOT / "docs" / "actions.md").read_text()
    block = next(b for b in re.findall(r"```toml\n(.*?)```", text, re.S) if b.lstrip().startswith("[policy]"))
    policy = tomllib.loads(block)["policy"]
    policy.pop("hooks", None)  # no hook program here; hooks are not signals
    policy["dry_run"] = True
    policy["recheck"] = False  # a replay has no live GPU to re-read
    policy["targets"] = {"users": sorted(users)}
    policy.pop("kill", None)
    policy["actions"] = {k: [a for a in v if a != "kill"] for k, v in policy["actions"].items()}
    return policy


def _snapshots(score: ModuleType, name: str) -> list[Snapshot]:
    path = next(TRACES.glob(f"{name}.jsonl*"))
    return list(score._trace_snapshots(path))


def test_the_corpus_is_there() -> None:
    """The corpus holds the recorded scenarios, multi-tenant ones with and without the ballast, each with truth."""
    assert len([c for c in CASES if not c.startswith("raw/")]) >= 13
    assert len([c for c in CASES if c.startswith("raw/")]) >= 6


@pytest.mark.parametrize("name", CASES)
def test_no_false_critical_finding_and_no_mistaken_signal(score: ModuleType, name: str) -> None:
    """Replayed with the example policy in dry-run: every critical finding is true, and every would-be
    signal answers a real OOM the truth records."""
    _judge(score, name, _snapshots(score, name))


@pytest.mark.parametrize("every", [2, 5])
@pytest.mark.parametrize("name", CASES)
def test_a_longer_sampling_interval_raises_nothing_false_either(
    score: ModuleType, resample: ModuleType, tmp_path: Path, name: str, every: int
) -> None:
    """The same runs as a daemon sampling every 2 or 5 s sees them (`resample.py`): still no false critical
    finding and no mistaken signal (such a daemon warns later: docs/detection.md, "the sampling interval")."""
    src = next(TRACES.glob(f"{name}.jsonl*"))
    dst = tmp_path / "resampled.jsonl.gz"
    before, after = resample.resample(src, dst, every)
    assert after == -(-before // every)
    _judge(score, name, list(score._trace_snapshots(dst)))


def _judge(score: ModuleType, name: str, snaps: list[Snapshot]) -> None:
    """Replay `snaps` of the trace `name` through the detectors and the example policy (dry-run), and check both
    promises against its truth."""
    truth = score.Truth.from_dict(json.loads((TRACES / f"{name}.truth.json").read_text()))
    users = {p.meta.user for s in snaps for p in s.processes if p.meta.user}
    config = DetectorConfig()
    history, tracker = History(), FindingTracker(config)
    dispatcher = replaying_dispatcher(example_policy(users), snaps)
    signalled, false_critical = [], []
    for snap in snaps:
        history.add(snap)
        raised, cleared = tracker.update(analyze(history, config))
        for f in raised:
            event = score.Event.of(f)
            verdict = score.classify(event, truth)
            if f.severity.value == "critical" and verdict == "false":
                false_critical.append(f.message)
            for r in dispatcher.handle([f], [], frozenset(), snap.processes):
                # The policy chose a target and a save-now adapter: only the replayed pid being long gone (no
                # live process to pin) stops the dry-run there. That decision is what is judged.
                if r.action == "signal" and r.adapter is not None and "allow_stop" not in r.reason:
                    signalled.append((verdict, f.kind, f.message))
        dispatcher.handle([], cleared, frozenset(), snap.processes)
    dispatcher.close()
    assert false_critical == []
    assert [s for s in signalled if s[0] != "true"] == []
    if truth.healthy:
        assert signalled == []
    if any(e.kind == "oom" and e.gradual for e in truth.expectations()):
        assert signalled, "a leak ran out: the policy should have asked its run to save (dry-run)"


def test_resampling_keeps_every_kth_tick_and_carries_exits_to_the_next_kept_one(
    resample: ModuleType, tmp_path: Path
) -> None:
    """An exit seen on a dropped tick reaches the next kept tick (the daemon would learn of it then); the header's
    interval is multiplied."""
    ticks = [{"t": float(i), "gpus": [], "processes": []} for i in range(7)]
    ticks[3]["exits"] = [{"pid": 3}]
    ticks[4]["exits"] = [{"pid": 4}]
    src, dst = tmp_path / "in.jsonl.gz", tmp_path / "out.jsonl.gz"
    with gzip.open(src, "wt") as f:
        for line in ({"vramwatch_trace": 1, "interval_seconds": 1.0}, *ticks):
            f.write(json.dumps(line) + "\n")
    assert resample.resample(src, dst, 3) == (7, 3)
    with gzip.open(dst, "rt") as f:
        header, *kept = [json.loads(line) for line in f]
    assert header["interval_seconds"] == 3.0
    assert [k["t"] for k in kept] == [0.0, 3.0, 6.0]
    assert [k.get("exits") for k in kept] == [None, [{"pid": 3}], [{"pid": 4}]]


@pytest.mark.parametrize("every", [2.0, 5.0])
def test_the_simulators_healthy_runs_read_less_often_raise_nothing(score: ModuleType, every: float) -> None:
    """Runs that stay flat, warm up in steps or slow to a plateau, read every 2 or 5 s (`serve --interval`), raise
    no finding at all (seeds 0-2)."""
    raised = []
    for name, truth, snaps, interval in score.simulated_cases(sorted(score.SIMULATED_HEALTHY), [0, 1, 2], every):
        assert interval == every
        run = score.replay(name, truth, snaps, DetectorConfig(), interval)
        assert len(run.ticks) > 10
        assert {round(b - a, 6) for a, b in itertools.pairwise(run.ticks)} == {every}  # read every `every` s
        raised += [(name, e.kind, e.message) for e in run.ours]
    assert raised == []


def _hidden_run(score: ModuleType, name: str) -> Any:
    truth = score.Truth.from_dict(json.loads((TRACES / f"{name}.truth.json").read_text()))
    return score.replay(name, truth, score.hidden(_snapshots(score, name)), DetectorConfig(), 1.0)


@pytest.mark.parametrize("name", CASES)
def test_as_a_daemon_without_the_host_s_pids_no_false_critical_is_firm(score: ModuleType, name: str) -> None:
    """Replayed as a daemon in a container without the host's pids reads it (`score.py --hidden`: no process listed,
    the card judged alone), every false critical finding is tentative (on `c49f474` ten were firm)."""
    run = _hidden_run(score, name)
    false_firm = [
        e.message
        for e in run.ours
        if e.severity == "critical" and not e.tentative and score.classify(e, run.truth) == "false"
    ]
    assert false_firm == []


@pytest.mark.parametrize("name", ["real_busy_afternoon_2", "raw/real_busy_afternoon_2"])
def test_as_a_daemon_without_the_host_s_pids_the_leak_after_a_load_is_forecast(score: ModuleType, name: str) -> None:
    """Replayed with the pids hidden, the recorded busy afternoon's leak, which starts within the cooldown of a
    server's load forecast that cleared, is forecast critical a minute or more before its OOM (on `8af29d8`: 0.5 s)."""
    row, _targets = score.score(_hidden_run(score, name), 3)
    assert row["lead_critical_s"] is not None
    assert row["lead_critical_s"] >= 60
