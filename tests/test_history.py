"""History: bounded ring buffers per GPU, process identity and tree."""

from __future__ import annotations

from builders import GIB, UUID0, make_snapshot
from hypothesis import given
from hypothesis import strategies as st
from vramwatch.history import History, Series
from vramwatch.model import ProcessKey


def test_series_keeps_the_newest_points_in_order() -> None:
    """A full ring overwrites its oldest points and still returns time order."""
    s = Series(4)
    for i in range(10):
        s.append(float(i), float(i * 10))
    w = s.window()
    assert w.t == (6.0, 7.0, 8.0, 9.0)
    assert w.v == (60.0, 70.0, 80.0, 90.0)


def test_series_window_seconds_cuts_before_the_newest_point() -> None:
    """window(seconds) keeps points no older than `seconds` before the newest one."""
    s = Series(100)
    for i in range(10):
        s.append(float(i), 1.0)
    assert s.window(3).t == (6.0, 7.0, 8.0, 9.0)


@given(st.lists(st.integers(0, 80 * GIB), min_size=1, max_size=300), st.integers(2, 64))
def test_series_holds_at_most_capacity(values: list[int], capacity: int) -> None:
    """Whatever is appended, a series never holds more than its capacity and ends with the last value."""
    s = Series(capacity)
    for i, v in enumerate(values):
        s.append(float(i), float(v))
    assert len(s) == min(len(values), capacity)
    assert s.window().v[-1] == float(values[-1])


def test_reused_pid_gets_its_own_series() -> None:
    """A pid reused with a new start time is a new identity: the old run's history is not merged into it."""
    h = History(window_seconds=100)
    h.add(make_snapshot(0, {42: 5 * GIB}, starts={42: 1.0}))
    h.add(make_snapshot(1, {42: 1 * GIB}, starts={42: 2.0}))
    old = h.process_window(ProcessKey(42, 1.0), UUID0)
    new = h.process_window(ProcessKey(42, 2.0), UUID0)
    assert old.v == (5.0 * GIB,)
    assert new.v == (1.0 * GIB,)


def test_exited_process_is_forgotten_after_retain_seconds() -> None:
    """Tracks of processes not seen for retain_seconds are dropped, returning their memory."""
    h = History(window_seconds=100, retain_seconds=10)
    h.add(make_snapshot(0, {1: GIB, 2: GIB}))
    for t in range(1, 13):
        h.add(make_snapshot(t, {1: GIB}))
    keys = {k.pid for k, _ in h.processes}
    assert keys == {1}


def test_unknown_process_memory_is_not_recorded_as_zero() -> None:
    """A process with used_bytes None leaves no point: unknown is not 0."""
    h = History()
    h.add(make_snapshot(0, {7: None}))
    assert len(h.process_window(ProcessKey(7, 107.0), UUID0)) == 0


def test_tracks_are_bounded_by_max_tracks() -> None:
    """More processes than max_tracks evicts the least recently seen instead of growing without bound."""
    h = History(window_seconds=10, max_tracks=8)
    for t in range(20):
        h.add(make_snapshot(t, {100 + t: GIB}))
    assert len(h.processes) + len(h.trees) <= 8


def test_capacity_bytes_is_what_the_rings_allocate() -> None:
    """The advertised bound equals 16 bytes per point for every series that can exist."""
    h = History(window_seconds=3600, interval_seconds=1.0, max_tracks=100)
    assert h.points == 3601
    assert h.capacity_bytes(gpus=2) == 16 * 3601 * (4 + 100)
