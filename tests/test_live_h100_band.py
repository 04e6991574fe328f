"""A live GPU run replayed: benchmarks/detection/band_gpu.py on a lent H100 (benchmarks/results/band-h100-2026-12-06).

A ballast leaving 24 GiB, a healthy trainer (pid 1016), and a *sawer* (pid 1038): 6 GiB of weights, then steps of
0.97 s, each taking 3 GiB and giving it back (`empty_cache()`). Read once a second, the phase drifts against the
reads: they climb through the band for about 20 s and fall back, again and again. It ended normally: nothing ran out
of memory and nothing leaked. The tree before the band rule (`21c625c`, beside it in dry-run) raised a firm critical
forecast about the sawer at 199 s ("grows 134 MB/s; the card is full in ~80 s") and would have ended the trainer.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from _recorded import recorded, replay_with_policy
from vramwatch.detectors.testing import GIB
from vramwatch.model import Snapshot

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "band-h100-2026-12-06"
SAWER, TRAINER = 1038, 1016


def _held(snaps: list[Snapshot], pid: int) -> list[tuple[float, int]]:
    return [(s.t, p.used_bytes or 0) for s in snaps for p in s.processes if p.pid == pid]


def _events(name: str, event: str) -> list[dict[str, object]]:
    lines = (RUN / name).read_text().splitlines()
    return [r for r in (json.loads(line) for line in lines if line.startswith("{")) if r.get("event") == event]


def test_the_recording_holds_a_band_that_climbs_and_falls() -> None:
    """The trace is what the test claims: the sawer read within 6.5-9.7 GiB for over four minutes, falling by more
    than 1.5 GiB from one read to the next eight times or more, and climbing by 2 GiB or more through its band over
    15 s or more, read after read."""
    held = _held(recorded(RUN / "band.raw.jsonl.gz"), SAWER)
    values = [v for _, v in held]
    assert min(values) >= 6.5 * GIB
    assert max(values) <= 9.7 * GIB
    assert held[-1][0] - held[0][0] >= 240
    assert sum(1 for (_, a), (_, b) in itertools.pairwise(held) if a - b > 1.5 * GIB) >= 8
    climbs, start = [], held[0]
    for previous, point in itertools.pairwise(held):
        if point[1] < previous[1]:
            climbs.append((previous[0] - start[0], previous[1] - start[1]))
            start = point
    assert any(seconds >= 15 and rise >= 2 * GIB for seconds, rise in climbs)


def test_the_band_raises_nothing_in_replay_where_the_tree_before_would_have_ended_the_trainer() -> None:
    """Replayed through the detectors, the tracker and the live run's policy (dry-run), the recording raises nothing
    and signals no one; the daemon of the tree before the band rule, watching live, raised a firm critical forecast
    naming the sawer and would have sent SIGTERM to the trainer."""
    raised, decisions = replay_with_policy(recorded(RUN / "band.raw.jsonl.gz"), RUN / "serve-base.toml")
    assert raised == []
    assert decisions == []
    before = _events("serve-base.log", "finding")
    assert [(f["kind"], f["severity"], f["tentative"]) for f in before] == [("oom_forecast", "critical", None)]
    assert f"pid {SAWER}" in str(before[0]["message"])
    acted = _events("serve-base.log", "action")
    assert [(a["action"], a["pid"], a["signal"], a["dry_run"]) for a in acted] == [("signal", TRAINER, "SIGTERM", True)]


def test_the_sawer_s_normal_end_is_in_the_trace() -> None:
    """The sawer, reaped by its parent within a second of its end, left the GPU with its exit status (0) in the trace,
    at the tick it left NVML's list."""
    snaps = recorded(RUN / "band.raw.jsonl.gz")
    last = max(t for t, _ in _held(snaps, SAWER))
    exits = [(s.t, e.exit_code, e.signal) for s in snaps for e in s.exits if e.pid == SAWER]
    assert len(exits) == 1
    left, code, signal = exits[0]
    assert (code, signal) == (0, None)
    assert 0 < left - last <= 1.5
