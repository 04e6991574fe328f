"""Properties of the model: attribution always adds up, and identities survive pid reuse."""

from __future__ import annotations

import dataclasses

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


@given(st.integers(0, 1 << 22), st.one_of(st.none(), st.floats(0, 2e9)))
def test_a_process_key_hashes_and_compares_by_pid_and_start_time_only(pid: int, start: float | None) -> None:
    """The hash a key carries is its fields' hash; equality, repr, copies and replace() see only the fields."""
    import copy
    from dataclasses import replace

    key = ProcessKey(pid, start)
    twin = ProcessKey(pid, start)
    assert key == twin
    assert hash(key) == hash(twin) == hash((pid, start))
    assert repr(key) == f"ProcessKey(pid={pid!r}, start_time={start!r})"
    clone = copy.deepcopy(key)
    assert clone == key
    assert hash(clone) == hash(key)
    other = replace(key, pid=pid + 1)
    assert hash(other) == hash((pid + 1, start))
    assert other != key


@given(st.lists(st.tuples(st.integers(1, 50), st.sampled_from(["GPU-a", "GPU-b", "GPU-c"])), max_size=30))
def test_a_cards_processes_are_the_snapshots_on_that_card_in_order(entries: list[tuple[int, str]]) -> None:
    """processes_on(uuid) is the snapshot's processes on that card, in the snapshot's order, and none elsewhere."""
    snap = Snapshot(
        t=0.0,
        wall_time=0.0,
        gpus=(gpu(used=GIB),),
        processes=tuple(ProcessSample(uuid, GIB, ProcessMeta(pid, 1.0)) for pid, uuid in entries),
    )
    for uuid in ("GPU-a", "GPU-b", "GPU-c", "GPU-none"):
        assert snap.processes_on(uuid) == tuple(p for p in snap.processes if p.gpu_uuid == uuid)
    fewer = dataclasses.replace(snap, processes=snap.processes[1:])  # (regrouped, not copied)
    assert fewer.processes_on("GPU-a") == tuple(p for p in snap.processes[1:] if p.gpu_uuid == "GPU-a")
