"""What the growth detector carries forward on a tree's track (`leak._Look`) changes nothing it concludes."""

from __future__ import annotations

from typing import Any

import pytest
from builders import GIB, UUID0, gpu
from hypothesis import given, settings
from hypothesis import strategies as st
from vramwatch.detectors import stability
from vramwatch.detectors.analysis import Analysis, analyze
from vramwatch.detectors.config import DetectorConfig
from vramwatch.detectors.leak import LeakConfig, _Look
from vramwatch.history import History
from vramwatch.model import ProcessMeta, ProcessSample, Snapshot

MIB = 1 << 20
# Short horizons and a short warm-up, so that a few hundred ticks reach verdicts, leak claims and dropped points.
CONFIG = DetectorConfig(
    warmup_seconds=5.0,
    stable_min_seconds=10.0,
    horizons_seconds=(5.0, 10.0, 20.0, 40.0, 80.0),
    noise_bytes=8 * MIB,
    min_rise_bytes=64 * MIB,
    detectors={"growth": LeakConfig(growth_min_horizon_seconds=20.0, growth_min_rate_bytes_per_second=1.0)},
)

# One process's memory: segments of (kind, ticks, a sawtooth's period, MiB).
_segments = st.lists(
    st.tuples(
        st.sampled_from(["hold", "step", "saw", "leak", "blip"]),
        st.integers(1, 60),
        st.integers(2, 5),
        st.integers(0, 200),
    ),
    min_size=1,
    max_size=6,
)


def _values(segments: list[tuple[str, int, int, int]], ticks: int) -> list[int]:
    out: list[int] = []
    floor = 2 * GIB
    while len(out) < ticks:
        for kind, count, period, mib in segments:
            for i in range(count):
                if kind == "leak":
                    floor += mib * MIB // 8
                value = floor
                if kind == "saw" and i % period == 0:
                    value = floor + mib * MIB
                elif kind == "blip" and i == count // 2:
                    value = max(0, floor - mib * MIB)  # one low read: a floor that the last 30 s remember
                out.append(value)
            if kind == "step":
                floor += mib * MIB
    return out[:ticks]


def _fingerprint(a: Analysis) -> tuple[Any, ...]:
    findings = tuple((f.kind, f.severity, f.message, tuple(sorted(f.numbers.items()))) for f in a.findings)
    return findings, dict(a.verdicts), dict(a.oom_eta)


@settings(max_examples=120, deadline=None)
@given(
    programs=st.lists(_segments, min_size=1, max_size=4),
    ticks=st.integers(20, 260),
    capacity=st.integers(30, 200),
    join_at=st.integers(0, 300),
    gap=st.sampled_from([1.0, 0.7, 1.3]),
)
def test_carried_looks_conclude_what_fresh_looks_do(
    programs: list[list[tuple[str, int, int, int]]], ticks: int, capacity: int, join_at: int, gap: float
) -> None:
    """At every tick, the analysis with the looks carried from earlier ticks equals one that looks afresh: holds,
    steps, sawtooths, leaks, one low read, points leaving the window, and a worker joining a lone root's tree."""
    values = [_values(p, ticks) for p in programs]
    history = History(window_seconds=capacity - 1)
    for n in range(ticks):
        t = 1000.0 + n * gap
        procs = []
        for pid, series in enumerate(values, start=1):
            # The last process becomes a worker of the first at `join_at`: their tree splits from the root's series.
            if pid == len(values) > 1 and n >= join_at:
                meta = ProcessMeta(pid=pid, start_time=10.0 * pid, root_pid=1, root_start_time=10.0)
            else:
                meta = ProcessMeta(pid=pid, start_time=10.0 * pid)
            procs.append(ProcessSample(UUID0, series[n], meta))
        used = sum(p.used_bytes or 0 for p in procs) + 300 * MIB
        history.add(Snapshot(t=t, wall_time=1.7e9 + t, gpus=(gpu(used=used, total=80 * GIB),), processes=tuple(procs)))
        carried = analyze(history, CONFIG)
        kept = {key: track.carried for key, track in history.trees.items()}
        for track in history.trees.values():
            track.carried = None
        fresh = analyze(history, CONFIG)
        for key, track in history.trees.items():
            track.carried = kept[key]
        assert _fingerprint(carried) == _fingerprint(fresh), f"tick {n}"


def test_a_held_tree_is_judged_from_its_carried_look() -> None:
    """A tree whose memory holds is not looked at afresh: the look of its second tick is carried (the leak test
    skipped once the series is long enough to tell), and its verdict goes on counting."""
    history = History(window_seconds=600)
    meta = ProcessMeta(pid=7, start_time=1.0, name="trainer")
    looks = []
    for n in range(40):
        t = 100.0 + n
        proc = ProcessSample(UUID0, 4 * GIB, meta)
        history.add(Snapshot(t=t, wall_time=1.7e9 + t, gpus=(gpu(used=5 * GIB),), processes=(proc,)))
        analysis = analyze(history, CONFIG)
        looks.append(next(iter(history.trees.values())).carried)
    last = looks[-1]
    assert isinstance(last, _Look)
    assert last.quiet
    assert last.points == 2  # the look of the second tick, carried
    assert "stable at 4.0 GiB for 34 s" in analysis.verdicts[meta.key, UUID0]


def test_a_verdicts_sentence_is_written_when_read_and_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """`analyze` writes no verdict's sentence (nearly every tree has one at every tick on a card of long runs): it
    is written on its first read, and later reads give the same string."""
    written: list[str] = []
    sentence = stability.Stable.text

    def counting(self: stability.Stable) -> str:
        written.append(sentence.fget(self))
        return written[-1]

    monkeypatch.setattr(stability.Stable, "text", property(counting))
    history = History(window_seconds=600)
    metas = [ProcessMeta(pid=7 + k, start_time=1.0, name="trainer") for k in range(3)]
    for n in range(40):
        t = 100.0 + n
        procs = tuple(ProcessSample(UUID0, (4 + k) * GIB, m) for k, m in enumerate(metas))
        history.add(Snapshot(t=t, wall_time=1.7e9 + t, gpus=(gpu(used=16 * GIB),), processes=procs))
        analysis = analyze(history, CONFIG)
    assert set(analysis.verdicts) == {(m.key, UUID0) for m in metas}
    assert written == []
    text = analysis.verdicts[metas[1].key, UUID0]
    assert text.startswith("trainer (pid 8) stable at 5.0 GiB for ")
    assert analysis.verdicts[metas[1].key, UUID0] is text
    assert written == [text]
