"""The sampler: one tick = read the backend, attribute the pids, append to history.

The loop runs on monotonic deadlines (start + k * interval), so it does not drift by the tick's own cost. A tick
that overruns its slot is counted and the loop resumes at the next future deadline: ticks are skipped, never
stacked, so a slow driver call cannot build a backlog that then fires in a burst.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import structlog

from .errors import BackendUnavailable
from .history import History
from .model import ProcessExit, ProcessKey, ProcessMeta, ProcessSample, Reading, Snapshot, TorchStats
from .typing import Backend, Clock, ProcessInspector

log = structlog.get_logger("vramwatch.sampler")

#: How long after a process left the GPUs its end is still looked for: it leaves NVML's list when its CUDA
#: context goes, and a Python trainer then finalises (and its parent reaps it) within a second or two.
EXIT_WAIT_SECONDS = 5.0

#: Histogram buckets for the tick duration, in seconds: a healthy tick is sub-millisecond on one GPU.
TICK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def snapshot_from_reading(
    reading: Reading,
    inspector: ProcessInspector,
    *,
    t: float | None = None,
    wall: float | None = None,
    visible: bool = True,
) -> Snapshot:
    """Join a backend reading with process metadata into a Snapshot.

    Recorded readings carry their own metadata (`reading.meta`) and time; live ones are looked up through the
    inspector and stamped with `t`/`wall`. When pids are not visible (foreign pid namespace) nothing is looked
    up: the host pid is all we truthfully know.
    """
    recorded = {m.pid: m for m in reading.meta}
    looked_up: dict[int, ProcessMeta] = {}  # a process on several GPUs is looked up once, and reads alike on each
    processes = []
    for usage in reading.processes:
        if not visible:
            meta = ProcessMeta(pid=usage.pid, start_time=None)
        else:
            meta = recorded.get(usage.pid) or looked_up.get(usage.pid) or inspector.inspect(usage.pid)
            looked_up[usage.pid] = meta
        processes.append(ProcessSample(usage.gpu_uuid, usage.used_bytes, meta, usage.kinds))
    return Snapshot(
        t=reading.t if reading.t is not None else (t if t is not None else 0.0),
        wall_time=reading.wall_time if reading.wall_time is not None else (wall if wall is not None else 0.0),
        gpus=reading.gpus,
        processes=tuple(processes),
        processes_visible=visible,
        torch=reading.torch,
        exits=reading.exits,
    )


@dataclass
class TickStats:
    """The sampler's own health, exported as vramwatch_sampler_* metrics."""

    ticks: int = 0
    overruns: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    #: Ticks at which each detector raised (kind -> count): its conclusions were missing, the others' stood.
    detector_failures: dict[str, int] = field(default_factory=dict)
    bucket_counts: list[int] = field(default_factory=lambda: [0] * len(TICK_BUCKETS))
    duration_sum: float = 0.0
    last_tick_wall: float | None = None
    last_tick_monotonic: float | None = None
    up: bool = False

    def observe(self, seconds: float) -> None:
        self.duration_sum += seconds
        for i, le in enumerate(TICK_BUCKETS):
            if seconds <= le:
                self.bucket_counts[i] += 1
                break

    def count_error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


class Sampler:
    """Turns backend readings into snapshots in history; `tick()` never raises for a bad reading."""

    def __init__(
        self,
        backend: Backend,
        history: History,
        clock: Clock,
        torch_source: Callable[[], tuple[TorchStats, ...]] | None = None,
    ) -> None:
        self.backend = backend
        # In-process allocator figures from agents (`vramwatch run`), merged into live readings.
        self.torch_source = torch_source
        self.history = history
        self.clock = clock
        self.inspector = backend.inspector()
        self.visible = self.inspector.pid_namespace_matches()
        self.stats = TickStats()
        # Processes that left the GPUs and whose end is not known yet -> when they left (see `_exits`).
        self._ending: dict[ProcessKey, float] = {}
        if not self.visible:
            log.warning(
                "processes_not_visible",
                # Measured (benchmarks/detection/pidns_probe.py, driver 580): NVML lists no process to a caller in
                # another pid namespace; older drivers listed host pids, which name nothing (or another) in here.
                reason="running in a container without the host pid namespace: NVML lists no process here (older "
                "drivers: host pids, which name nothing here)",
                fix="run with hostPID: true (Kubernetes) or --pid=host (docker)",
            )

    def tick(self) -> Snapshot | None:
        """Read, attribute, record. Returns None when the backend could not be read at all."""
        started = self.clock.monotonic()
        try:
            reading = self.backend.read()
        except BackendUnavailable as exc:
            self.stats.up = False
            self.stats.count_error("library")
            log.error("backend_unavailable", error=str(exc))
            return None
        if self.torch_source is not None and not reading.torch:
            reading = replace(reading, torch=self.torch_source())
        snap = snapshot_from_reading(reading, self.inspector, t=started, wall=self.clock.wall(), visible=self.visible)
        if self.visible and not snap.exits:
            exits = self._exits(snap)
            if exits:  # a process left, and the system says how (rare): only then a new snapshot
                snap = replace(snap, exits=exits)
        for g in snap.gpus:
            if not g.up:
                self.stats.count_error("gpu_lost")
        forget = getattr(self.inspector, "forget_except", None)
        if forget is not None:
            live = {p.pid for p in snap.processes}
            forget(live | {key.pid for key in self._ending} if self._ending else live)
        self.history.add(snap)
        self.stats.up = True
        self.stats.ticks += 1
        self.stats.last_tick_wall = snap.wall_time
        self.stats.last_tick_monotonic = self.clock.monotonic()
        self.stats.observe(self.stats.last_tick_monotonic - started)
        return snap

    def _exits(self, snap: Snapshot) -> tuple[ProcessExit, ...]:
        """How the processes that left the GPUs lately ended, where the system says: asked at each tick for
        `EXIT_WAIT_SECONDS` after one left, since a process leaves NVML's list when its CUDA context goes, and
        may take a while to exit after that (Python's finalisation, a checkpoint written on the way out)."""
        exit_status = getattr(self.inspector, "exit_status", None)
        previous = self.history.latest
        if exit_status is None or previous is None:
            return ()
        now = {p.key for p in snap.processes}
        for key in {p.key for p in previous.processes} - now:
            self._ending.setdefault(key, snap.t)
        found = []
        for key, left in list(self._ending.items()):
            ended = None if key in now else exit_status(key.pid, key.start_time)
            if ended is not None or key in now or snap.t - left >= EXIT_WAIT_SECONDS:
                del self._ending[key]
            if ended is not None:
                found.append(ended)
        return tuple(found)


def run_every(
    interval: float,
    step: Callable[[], None],
    clock: Clock,
    stop: threading.Event,
    *,
    on_overrun: Callable[[int], None] | None = None,
    wait: Callable[[float], bool] | None = None,
) -> None:
    """Call `step` at start + k * interval until `stop` is set; skipped slots are reported, never replayed.

    `wait(seconds)` returns True when stopped early; by default it waits on `stop`, so SIGTERM ends the
    loop within one wake-up rather than one interval.
    """
    waiter = wait or stop.wait
    start = clock.monotonic()
    k = 0
    while not stop.is_set():
        step()
        k += 1
        now = clock.monotonic()
        deadline = start + k * interval
        if now > deadline:
            skipped = math.floor((now - deadline) / interval) + 1
            k += skipped
            if on_overrun is not None:
                on_overrun(skipped)
            deadline = start + k * interval
        if waiter(max(0.0, deadline - now)):
            return
