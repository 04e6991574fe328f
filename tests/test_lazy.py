"""Values computed when first read: the mapping itself, and the per-process rates `analyze` reports that way."""

from __future__ import annotations

import pytest
from builders import GIB, make_snapshot
from hypothesis import given, settings
from hypothesis import strategies as st
from vramwatch.detectors import analysis as analysis_module
from vramwatch.detectors._series import View, view
from vramwatch.detectors.analysis import DEFAULT_CONFIG, analyze
from vramwatch.detectors.config import DetectorConfig
from vramwatch.detectors.growth import Rate, RatePlan, reported_rate
from vramwatch.history import History
from vramwatch.lazy import LazyMapping

MIB = 1 << 20


def test_a_value_is_computed_once_on_its_first_read_and_never_for_membership_or_length() -> None:
    """`in`, `len` and iteration compute nothing; a read computes its value once; an unknown key raises KeyError."""
    calls: list[int] = []

    def square(x: int) -> int:
        calls.append(x)
        return x * x

    m = LazyMapping({"a": 2, "b": 3}, square)
    assert ("a" in m, "z" in m, len(m), list(m)) == (True, False, 2, ["a", "b"])
    assert calls == []
    assert (m["b"], m["b"], m.get("b"), m.get("z")) == (9, 9, 9, None)
    assert calls == [3]
    assert dict(m.items()) == {"a": 4, "b": 9}
    assert calls == [3, 2]
    with pytest.raises(KeyError):
        m["z"]


def _history(series: dict[int, list[int]], ticks: int, window: float = 3600.0) -> History:
    h = History(window_seconds=window, interval_seconds=1.0)
    for t in range(ticks):
        h.add(make_snapshot(float(t), {pid: values[t % len(values)] for pid, values in series.items()}))
    return h


@settings(deadline=None, max_examples=40)
@given(
    st.dictionaries(
        st.integers(1, 6), st.lists(st.integers(100, 400).map(lambda m: m * MIB), min_size=1, max_size=40), min_size=1
    ),
    st.integers(3, 150),
    st.integers(1, 120),
)
def test_rates_read_after_later_ticks_are_those_of_their_tick(
    series: dict[int, list[int]], ticks: int, later: int
) -> None:
    """The process rates of a tick's analysis, read only after more ticks went into the history (past its window:
    old points dropped, the arrays compacted), are `reported_rate` of that tick's series to the bit, for exactly
    the processes that have one."""
    h = _history(series, ticks, window=40.0)
    result = analyze(h, DEFAULT_CONFIG)
    since = h.latest.t - DEFAULT_CONFIG.rate_report_seconds * 1.001  # type: ignore[union-attr]
    expected = {}
    for (key, uuid), track in h.processes.items():
        rate = reported_rate(view(track.series).since(since), DEFAULT_CONFIG)
        if rate is not None:
            expected[(key, uuid)] = rate
    for t in range(ticks, ticks + later):
        h.add(make_snapshot(float(t), {pid: (t * 7 + pid) % 5 * 64 * MIB + GIB for pid in series}))
    assert set(result.process_growth) == set(expected)
    assert dict(result.process_growth.items()) == expected


def test_a_tick_computes_only_the_rates_of_still_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tick computes still processes' rates only; a moving one's waits for a read (not `in`, `len`, iteration)."""
    computed: list[bool] = []
    real = analysis_module.process_rate

    def counting(points: View, config: DetectorConfig, plan: RatePlan) -> Rate:
        computed.append(points.still())
        return real(points, config, plan)

    h = _history({1: [300 * MIB, 500 * MIB], 2: [200 * MIB]}, 120)
    monkeypatch.setattr(analysis_module, "process_rate", counting)
    result = analyze(h, DEFAULT_CONFIG)
    assert len(result.process_growth) == 2
    keys = list(result.process_growth)
    assert all(k in result.process_growth for k in keys)  # membership reads no rate
    assert ("not a key", "GPU-x") not in result.process_growth
    assert computed == [True]
    rates = list(result.process_growth.values())
    assert computed == [True, False]
    assert all(r.window_seconds > 0 for r in rates)
