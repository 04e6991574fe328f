"""Properties of the model: attribution always adds up, and identities survive pid reuse."""

from __future__ import annotations

from builders import GIB, UUID0, gpu
from hypothesis import given
from hypothesis import strategies as st
from vramwatch.history import History
from vramwatch.model import ProcessKey, ProcessMeta, ProcessSample, Snapshot

usage = st.one_of(st.none(), st.integers(0, 8 * GIB))


@given(st.dictionaries(st.integers(1, 4_000_000), usage, max_size=40), st.integers(0, 80 * GIB))
def test_processes_plus_unattributed_add_up_to_used(procs: dict[int, int | None], used: int) -> None:
    """Known process memory + unattributed == device used whenever processes fit; never negative otherwise."""
    g = gpu(used=used, total=max(used, 80 * GIB))
    snap = Snapshot(
        t=0.0,
        wall_time=0.0,
        gpus=(g,),
        processes=tuple(ProcessSample(UUID0, b, ProcessMeta(pid, 1.0)) for pid, b in procs.items()),
    )
    known = sum(b for b in procs.values() if b is not None)
    unattributed = snap.unattributed_bytes(UUID0)
    assert unattributed is not None
    assert unattributed >= 0
    if known <= used:
        assert known + unattributed == used


@given(st.lists(st.tuples(st.floats(1.0, 1e9, allow_nan=False), st.integers(0, 8 * GIB)), min_size=1, max_size=20))
def test_a_reused_pid_never_shares_history_with_its_predecessor(runs: list[tuple[float, int]]) -> None:
    """However often pid 42 is reused, each (pid, start time) keeps exactly its own samples."""
    h = History(window_seconds=1000)
    expected: dict[float, list[float]] = {}
    for t, (start, used) in enumerate(runs):
        snap = Snapshot(
            t=float(t),
            wall_time=0.0,
            gpus=(gpu(used=used + GIB, total=used + 2 * GIB),),
            processes=(ProcessSample(UUID0, used, ProcessMeta(42, start)),),
        )
        h.add(snap)
        expected.setdefault(start, []).append(float(used))
    for start, values in expected.items():
        assert list(h.process_window(ProcessKey(42, start), UUID0).v) == values
