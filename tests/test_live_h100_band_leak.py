"""A live GPU run replayed: `band_gpu.py OUT --leak 60 --leak-from 190` on a lent H100
(benchmarks/results/band-leak-h100-2026-12-07).

A ballast leaving 24 GiB, a healthy trainer (pid 643), and a *sawer* (pid 666): 6 GiB of weights, then steps of
0.97 s, each taking 3 GiB and giving it back (`empty_cache()`), read once a second at a drifting phase. From 190 s
after its start it keeps 60 MB/s of tensors (60 MB x its step at every step) until a step's activations no longer fit:
a real OOM, 354 s after its start (it logged `oom` and exited 3). Both daemons watched in dry-run. This tree's own
(`serve.log`) raised a firm critical forecast 131 s before the OOM: "grows 76 MB/s; the card is full in ~2 min".
Its base's daemon did not start (`--base` named the package, not its parent); the base tree's replay of the same reads,
"grows 203 MB/s; the card is full in ~42 s", is in docs/detection.md.
"""

from __future__ import annotations

import itertools
import json
import re
from datetime import datetime
from pathlib import Path

from _recorded import recorded, replay_with_policy
from vramwatch.detectors.testing import GIB
from vramwatch.model import Snapshot

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "band-leak-h100-2026-12-07"
SAWER = 666
LEAK_BYTES_PER_SECOND = 60e6


def _log(name: str) -> list[dict[str, object]]:
    lines = (RUN / name).read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def _sawer_events() -> dict[str, float]:
    """The sawer's `start` and `oom` times (CLOCK_MONOTONIC, the recorder's clock too)."""
    return {str(e["event"]): float(e["t"]) for e in _log("sawer.log")}


def _held(snaps: list[Snapshot]) -> list[tuple[float, int]]:
    return [(s.t, p.used_bytes or 0) for s in snaps for p in s.processes if p.pid == SAWER]


def test_the_recording_holds_a_leak_beneath_a_band_to_a_real_oom() -> None:
    """The trace is what the test claims: the sawer fell back by more than 1.5 GiB from one read to the next eight
    times or more, its reads rose by 6 GiB or more in the minutes of its leak, it logged an OOM 354 s after its start,
    and the trace holds its exit status (3) at the tick it left NVML's list."""
    snaps = recorded(RUN / "band.raw.jsonl.gz")
    held = _held(snaps)
    events = _sawer_events()
    assert round(events["oom"] - events["start"]) == 354
    assert sum(1 for (_, a), (_, b) in itertools.pairwise(held) if a - b > 1.5 * GIB) >= 8
    leak_from = events["start"] + 190
    before = max(v for t, v in held if t < leak_from)
    assert max(v for _, v in held) - before >= 6 * GIB
    exits = [(e.exit_code, e.signal) for s in snaps for e in s.exits if e.pid == SAWER]
    assert exits == [(3, None)]


def test_the_leak_is_forecast_critical_minutes_ahead_at_about_its_own_rate() -> None:
    """Replayed through the detectors and the live run's policy (dry-run), the first critical forecast names the sawer,
    is firm, comes after its leak began and 100 s or more before its OOM, claims less than twice the leak's rate and an
    ETA between 40 % and all of the time that was left (the base tree replayed: 203 MB/s and ~42 s, 136 s ahead)."""
    snaps = recorded(RUN / "band.raw.jsonl.gz")
    events = _sawer_events()
    raised, _decisions = replay_with_policy(snaps, RUN / "serve.toml")
    forecasts = [f for f in raised if f.kind == "oom_forecast"]
    assert forecasts
    assert min(f.t for f in forecasts) >= events["start"] + 190
    critical = next(f for f in forecasts if f.severity.value == "critical")
    assert f"pid {SAWER}" in critical.message
    assert critical.tentative is None
    left = events["oom"] - critical.t
    assert left >= 100
    assert critical.numbers["rate_bytes_per_second"] < 2 * LEAK_BYTES_PER_SECOND
    assert critical.eta_seconds is not None
    assert 0.4 * left <= critical.eta_seconds <= left


def test_the_live_daemon_forecast_the_leak_as_the_replay_does() -> None:
    """The daemon watching live (its own reads, at other phases) raised its first critical forecast about the sawer,
    firm, after its leak began and 100 s or more before its OOM, at less than twice the leak's rate (76 MB/s)."""
    found = [e for e in _log("serve.log") if e.get("kind") == "oom_forecast" and e.get("severity") == "critical"]
    assert found
    first = found[0]
    assert f"pid {SAWER}" in str(first["message"])
    assert first["tentative"] is None
    rate = re.search(r"grows (\d+) MB/s", str(first["message"]))
    assert rate is not None
    assert int(rate.group(1)) * 1e6 < 2 * LEAK_BYTES_PER_SECOND
    # The log's times are UTC wall times; the sawer's are CLOCK_MONOTONIC: the ballast logged both at once.
    ready = next(e for e in _log("ballast.log") if e["event"] == "ready")
    offset = float(ready["wall"]) - float(ready["t"])
    at = datetime.fromisoformat(str(first["timestamp"]).replace("Z", "+00:00")).timestamp() - offset
    events = _sawer_events()
    assert at >= events["start"] + 190
    assert events["oom"] - at >= 100
