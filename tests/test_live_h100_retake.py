"""A live GPU run replayed: benchmarks/detection/retake_gpu.py on a lent H100
(benchmarks/results/retake-h100-2026-12-06).

A ballast leaving 24 GiB, a healthy trainer, and a run that took 11 GiB, gave all but 1 GiB back for 90 s and took
10 GiB back at ~450 MB/s, then ended normally: nothing ran out of memory. The live daemon raised nothing; the tree
before the rule for a run taking back what it gave back (`eaf3e36`, beside it in dry-run) raised a firm critical
forecast 14 s into the climb and would have ended the trainer.
"""

from __future__ import annotations

import json
from pathlib import Path

from _recorded import recorded
from vramwatch.detectors import DetectorConfig, FindingTracker, analyze
from vramwatch.detectors.forecast import ForecastConfig
from vramwatch.detectors.testing import GIB
from vramwatch.history import History
from vramwatch.model import Finding, Snapshot

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "retake-h100-2026-12-06"
RETAKER = 720


def _events(name: str, event: str) -> list[dict[str, object]]:
    out = []
    for line in (RUN / name).read_text().splitlines():
        if not line.startswith("{"):
            continue  # the daemon's plain banner lines
        record = json.loads(line)
        if record.get("event") == event:
            out.append(record)
    return out


def test_the_recording_holds_a_give_back_and_a_climb_back() -> None:
    """The trace is what the test claims: the retaker held 11 GiB, fell below 2 GiB, and climbed back by 9 GiB at
    a load's speed (more than 300 MB/s) to about what it held."""
    held = [
        (s.t, p.used_bytes or 0) for s in recorded(RUN / "retake.raw.jsonl.gz") for p in s.processes if p.pid == RETAKER
    ]
    top = max(v for _, v in held)
    loaded = next(t for t, v in held if v == top)
    gave_back = [t for t, v in held if t > loaded and v < 2 * GIB]
    assert top >= 11 * GIB
    assert gave_back
    back = next(t for t, v in held if t > gave_back[0] and v >= top - GIB)
    climb_began = max(t for t in gave_back if t < back)
    assert 9 * GIB / (back - climb_began) > 300e6


def _replayed(snaps: list[Snapshot], config: DetectorConfig) -> list[Finding]:
    history, tracker = History(), FindingTracker(config)
    raised: list[Finding] = []
    for snap in snaps:
        history.add(snap)
        raised += tracker.update(analyze(history, config))[0]
    return raised


def test_a_run_taking_back_what_it_gave_back_raised_nothing_live_nor_in_replay() -> None:
    """Replayed through the detectors and the tracker, the recording raises nothing, as the live daemon did not; nor
    does it replayed from the middle of the give-back (a daemon restarted then: the climb back, ~22 s, is shorter
    than `forecast_load_seconds`). With that wait off, the whole recording still raises nothing (the give-back was
    seen) while the replay from the middle of the give-back forecasts the climb, critical and tentative: the silence
    is the rules', not a forecast blind to the climb."""
    assert _events("serve.log", "finding") == []
    snaps = recorded(RUN / "retake.raw.jsonl.gz")
    # The retaker's events and the recording share the host's monotonic clock.
    gave_back = next(float(str(e["t"])) for e in _events("retaker.log", "gave_back"))
    late = [s for s in snaps if s.t >= gave_back + 30]
    assert _replayed(snaps, DetectorConfig()) == []
    assert _replayed(late, DetectorConfig()) == []
    no_wait = DetectorConfig(detectors={"oom_forecast": ForecastConfig(forecast_load_seconds=0.0)})
    assert _replayed(snaps, no_wait) == []
    seen = _replayed(late, no_wait)
    assert [(f.kind, f.severity.value, f.tentative is not None) for f in seen] == [("oom_forecast", "critical", True)]


def test_the_tree_before_the_rule_would_have_ended_the_trainer() -> None:
    """What the old tree logged in dry-run beside it: a firm critical forecast about the retaker and a SIGTERM for
    the trainer, so the run above is the rule's work, not a quiet card."""
    findings = _events("serve-base.log", "finding")
    assert [(f["kind"], f["severity"], f.get("tentative")) for f in findings] == [("oom_forecast", "critical", None)]
    assert f"(pid {RETAKER}, root)" in str(findings[0]["message"])
    actions = [a for a in _events("serve-base.log", "action") if a.get("action") == "signal"]
    assert actions
    assert all("would send SIGTERM" in str(a["reason"]) for a in actions)
