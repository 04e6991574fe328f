"""A `vramwatch record` trace read as snapshots, the way benchmarks/detection/score.py reads the corpus."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vramwatch.actions import ActionDispatcher, parse_policy
from vramwatch.config import tomllib
from vramwatch.detectors import DetectorConfig, FindingTracker, analyze
from vramwatch.history import History
from vramwatch.model import Finding, Snapshot
from vramwatch.testing import StaticInspector

#: Every finding raised, and each signal decision on it: (finding, the decision's reason, whether it was done).
Decided = tuple[list[Finding], list[tuple[Finding, str, bool]]]

ROOT = Path(__file__).resolve().parents[1]


def recorded(path: Path) -> list[Snapshot]:
    """The trace's ticks as snapshots (score.py's own reader, so that tests replay what the benchmarks score)."""
    spec = importlib.util.spec_from_file_location("vramwatch_recorded_score", ROOT / "benchmarks/detection/score.py")
    assert spec is not None
    assert spec.loader is not None
    score = sys.modules.get(spec.name)
    if score is None:
        score = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = score  # its dataclasses look their module up by name
        spec.loader.exec_module(score)
    return list(score._trace_snapshots(path))


def replaying_dispatcher(policy: Mapping[str, Any], snaps: list[Snapshot]) -> ActionDispatcher:
    """An ActionDispatcher for `policy` over a recording: the processes' identities (pid, start time, metadata) are
    the recording's, and no environment is read (the replayed pids are long gone, or someone else's now)."""
    metas = {p.pid: p.meta for s in snaps for p in s.processes}
    return ActionDispatcher(
        parse_policy(policy),
        (),
        inspector=StaticInspector(metas),
        start_time_of=lambda pid: metas[pid].start_time if pid in metas else None,
        environ_of=lambda _pid: {},
        default_log=False,
    )


def replay_with_policy(snaps: list[Snapshot], config_path: Path) -> Decided:
    """The recording through the detectors, the tracker and the `[policy]` of a live run's config (`config_path`),
    in dry-run with no re-check: every finding raised, and every signal decision made on it."""
    policy = tomllib.loads(config_path.read_text())["policy"]
    policy.update(dry_run=True, recheck=False)
    dispatcher = replaying_dispatcher(policy, snaps)
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
