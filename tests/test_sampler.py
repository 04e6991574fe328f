"""Sampler: readings become snapshots in history, on monotonic deadlines that never stack."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from builders import GIB, UUID0, gpu
from vramwatch.attribution import PsutilInspector
from vramwatch.errors import BackendUnavailable
from vramwatch.history import History
from vramwatch.model import ProcessExit, ProcessMeta, ProcessUsage, Reading
from vramwatch.sampler import Sampler, run_every, snapshot_from_reading
from vramwatch.testing import FakeClock, ScriptedBackend, StaticInspector


def _reading(used: int) -> Reading:
    return Reading(gpus=(gpu(used=used + GIB),), processes=(ProcessUsage(UUID0, 4242, used),))


def test_tick_attributes_pids_and_records_history() -> None:
    """A tick joins NVML's pid with the inspector's identity and appends it to history at the clock's time."""
    clock = FakeClock(now=50.0)
    meta = {4242: ProcessMeta(4242, 123.0, name="train.py", user="alice")}
    backend = ScriptedBackend([_reading(2 * GIB)], meta=meta)
    history = History()
    snap = Sampler(backend, history, clock).tick()
    assert snap is not None
    assert snap.t == 50.0
    assert snap.processes[0].meta.user == "alice"
    assert history.gpu_window(UUID0).v == (3.0 * GIB,)


def test_library_failure_is_counted_not_raised() -> None:
    """A backend that raises BackendUnavailable yields no snapshot, an error count, and up=False."""
    backend = ScriptedBackend([BackendUnavailable("gone")])
    s = Sampler(backend, History(), FakeClock())
    assert s.tick() is None
    assert s.stats.errors == {"library": 1}
    assert s.stats.up is False


def test_invisible_pids_are_not_looked_up() -> None:
    """In a foreign pid namespace the host pid is kept but no name or user is invented for it."""
    insp = StaticInspector({4242: ProcessMeta(4242, 1.0, name="WRONG")}, visible=False)
    snap = snapshot_from_reading(_reading(GIB), insp, t=1.0, wall=2.0, visible=False)
    assert snap.processes_visible is False
    assert snap.processes[0].meta.name is None
    assert snap.processes[0].used_bytes == GIB


def test_recorded_metadata_and_time_win_over_live_lookups() -> None:
    """A replayed reading keeps its recorded time and process metadata."""
    r = Reading(
        gpus=(gpu(used=GIB),),
        processes=(ProcessUsage(UUID0, 7, GIB),),
        t=12.5,
        wall_time=99.0,
        meta=(ProcessMeta(7, 5.0, name="recorded"),),
    )
    snap = snapshot_from_reading(r, StaticInspector(), t=1.0, wall=2.0)
    assert (snap.t, snap.wall_time, snap.processes[0].meta.name) == (12.5, 99.0, "recorded")


class CountingInspector(StaticInspector):
    """The static table, counting the lookups of each pid."""

    def __init__(self, table: dict[int, ProcessMeta]) -> None:
        super().__init__(table)
        self.lookups: dict[int, int] = {}

    def inspect(self, pid: int) -> ProcessMeta:
        self.lookups[pid] = self.lookups.get(pid, 0) + 1
        return super().inspect(pid)


def test_a_process_on_several_gpus_is_looked_up_once_a_tick() -> None:
    """A pid listed on two GPUs is inspected once per reading, and both entries carry the same identity."""
    insp = CountingInspector({7: ProcessMeta(7, 5.0, name="model-parallel")})
    r = Reading(
        gpus=(gpu(used=GIB), gpu(index=1, uuid="GPU-1", used=GIB)),
        processes=(ProcessUsage(UUID0, 7, GIB), ProcessUsage("GPU-1", 7, GIB), ProcessUsage(UUID0, 8, GIB)),
    )
    snap = snapshot_from_reading(r, insp, t=1.0, wall=2.0)
    assert insp.lookups == {7: 1, 8: 1}
    assert snap.processes[0].meta is snap.processes[1].meta


def test_run_every_keeps_deadlines_without_drift() -> None:
    """Steps run at start + k*interval even though each step itself takes time."""
    clock, stop, times = FakeClock(now=0.0), threading.Event(), []

    def step() -> None:
        times.append(clock.now)
        clock.advance(0.3)  # the tick's own cost must not push later ticks back
        if len(times) == 5:
            stop.set()

    run_every(1.0, step, clock, stop, wait=lambda s: (clock.sleep(s), stop.is_set())[1])
    assert times == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_run_every_skips_overrun_slots_instead_of_stacking() -> None:
    """A step that takes 2.5 intervals is reported and the next step waits for the next future slot."""
    clock, stop, times, overruns = FakeClock(now=0.0), threading.Event(), [], []

    def step() -> None:
        times.append(clock.now)
        clock.advance(2.5 if len(times) == 2 else 0.1)
        if len(times) == 4:
            stop.set()

    run_every(1.0, step, clock, stop, on_overrun=overruns.append, wait=lambda s: (clock.sleep(s), stop.is_set())[1])
    assert times == [0.0, 1.0, 4.0, 5.0]
    assert overruns == [2]


def test_stop_event_ends_the_loop_during_the_wait() -> None:
    """Setting stop wakes the loop immediately rather than after the interval."""
    stop = threading.Event()
    calls = []
    timer = threading.Timer(0.05, stop.set)
    timer.start()
    from vramwatch.clock import SystemClock

    t0 = time.monotonic()
    run_every(30.0, lambda: calls.append(1), SystemClock(), stop)
    assert calls == [1]
    assert time.monotonic() - t0 < 1.0, "the wait must end when stop is set, not after the 30 s interval"


def test_a_process_that_left_as_a_zombie_leaves_its_exit_status() -> None:
    """When a pid leaves NVML's list and the system still shows how it ended, the tick records it."""
    meta = {4242: ProcessMeta(4242, 123.0, name="train.py")}
    gone = Reading(gpus=(gpu(used=GIB),), processes=())
    exits = {4242: ProcessExit(4242, 123.0, 0)}
    backend = ScriptedBackend([_reading(2 * GIB), gone], meta=meta, exits=exits)
    history = History()
    sampler = Sampler(backend, history, FakeClock(now=50.0))
    assert sampler.tick() is not None
    snap = sampler.tick()
    assert snap is not None
    assert snap.exits == (ProcessExit(4242, 123.0, 0),)
    assert history.exits[ProcessExit(4242, 123.0, 0).key][1].clean


def test_a_process_still_exiting_when_it_left_the_gpu_is_asked_again_until_it_ends() -> None:
    """A process leaves NVML's list when its CUDA context goes, then takes a while to exit (Python's finalisation):
    how it ended is asked at each tick for EXIT_WAIT_SECONDS after it left and recorded when it comes; a process
    whose end never shows is no longer asked after that."""
    from vramwatch.sampler import EXIT_WAIT_SECONDS

    meta = {4242: ProcessMeta(4242, 123.0, name="train.py"), 4343: ProcessMeta(4343, 124.0, name="notebook")}
    held = (ProcessUsage(UUID0, 4242, 2 * GIB), ProcessUsage(UUID0, 4343, GIB))
    both = Reading(gpus=(gpu(used=3 * GIB),), processes=held)
    gone = Reading(gpus=(gpu(used=0),), processes=())
    backend = ScriptedBackend([both, gone], meta=meta)
    clock = FakeClock(now=50.0)
    sampler = Sampler(backend, History(), clock)
    asked: list[int] = []
    inspector = sampler.inspector
    assert isinstance(inspector, StaticInspector)
    answer = inspector.exit_status

    def asking(pid: int, start: float | None) -> ProcessExit | None:
        asked.append(pid)
        return answer(pid, start)

    inspector.exit_status = asking  # type: ignore[method-assign]
    assert sampler.tick() is not None
    exits = []
    for k in range(1, 9):
        clock.advance(1.0)
        if k == 3:  # 4242's parent reaps it two ticks after it left the GPU
            inspector.exits[4242] = ProcessExit(4242, 123.0, 3)
        snap = sampler.tick()
        assert snap is not None
        exits += snap.exits
    assert exits == [ProcessExit(4242, 123.0, 3)]
    assert asked.count(4242) == 3  # asked until it came
    assert asked.count(4343) == EXIT_WAIT_SECONDS + 1  # asked at each tick for five seconds, then no more


def test_a_real_process_reaped_a_while_after_it_left_the_gpu_leaves_its_exit_code() -> None:
    """With the real inspector: a process that leaves NVML's list, goes on a moment (its CUDA context gone, Python
    finalising), then exits 3 and is reaped at once by its parent is recorded with exit code 3 (Linux 6.15+)."""
    child, on_gpu, left = _exiting_child()
    clock = FakeClock(now=50.0)
    sampler = Sampler(ScriptedBackend([on_gpu, left]), History(), clock)
    sampler.inspector = PsutilInspector()
    try:
        first = sampler.tick()
        assert first is not None
        started = first.processes[0].meta.start_time
        clock.advance(1.0)
        assert sampler.tick().exits == ()  # type: ignore[union-attr]  # left the GPU, still running
        assert child.stdin is not None
        child.stdin.close()
        assert child.wait(10) == 3  # reaped: no zombie left to read
        clock.advance(1.0)
        snap = sampler.tick()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert snap is not None
    assert snap.exits == (ProcessExit(child.pid, started, 3),)


def test_a_real_process_reaped_while_nvml_still_lists_it_keeps_its_identity_and_ends_once() -> None:
    """With the real inspector: a process reaped at once while NVML still lists it for a tick (its context torn
    down as it exits) keeps its identity (pid and start time) at that tick, and is recorded once, exit code 3, when
    it leaves the list: not as one process leaving and another, of no start time, arriving and leaving."""
    child, on_gpu, left = _exiting_child()
    clock = FakeClock(now=50.0)
    sampler = Sampler(ScriptedBackend([on_gpu, on_gpu, left, left]), History(), clock)
    sampler.inspector = PsutilInspector()
    snaps = []
    try:
        for k in range(4):
            if k == 1:
                assert child.stdin is not None
                child.stdin.close()
                assert child.wait(10) == 3  # reaped before NVML's next list
            snap = sampler.tick()
            assert snap is not None
            snaps.append(snap)
            clock.advance(1.0)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    started = snaps[0].processes[0].meta.start_time
    assert started is not None
    assert [(p.meta.start_time, p.meta.status) for p in snaps[1].processes] == [(started, "gone")]
    assert [e for snap in snaps for e in snap.exits] == [ProcessExit(child.pid, started, 3)]


def _exiting_child() -> tuple[subprocess.Popen[bytes], Reading, Reading]:
    """A real child that exits 3 once its stdin closes, and NVML's readings with it on the GPU and after it left;
    skipped where the kernel keeps no reaped process's exit status (PIDFD_INFO_EXIT, Linux 6.15+)."""
    from kernel_probe import reaped_exit_supported

    if not reaped_exit_supported():
        pytest.skip("this kernel does not keep a reaped process's exit status (PIDFD_INFO_EXIT, Linux 6.15+)")
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.readline(); raise SystemExit(3)"], stdin=subprocess.PIPE
    )
    on_gpu = Reading(gpus=(gpu(used=2 * GIB),), processes=(ProcessUsage(UUID0, child.pid, GIB),))
    return child, on_gpu, Reading(gpus=(gpu(used=GIB),), processes=())
