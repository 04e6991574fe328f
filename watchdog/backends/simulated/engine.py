"""The simulation's physics: fake cards and PyTorch-like processes on them, advanced in fixed steps.

A `World` holds the GPUs and processes a scenario (`scenarios.py`) creates with `spawn`; `step(s)` moves it to
simulated second s. What NVML would show follows from the allocator's behaviour (see the package docstring).
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...model import GpuSample, ProcessMeta, ProcessUsage

MiB = 1 << 20
GiB = 1 << 30
STEP_SECONDS = 0.25
CONTEXT_BYTES = 500 * MiB
SMALL_SEGMENT_BYTES = 2 * MiB
LARGE_SEGMENT_BYTES = 20 * MiB
# Transient workspaces: on average one every ~20 s per process, lasting ~3 s.
_JITTER_ON = 1 / 80
_JITTER_OFF = 1 / 12
_GPU_LOST = "GPU is lost (simulated Xid 79: fallen off the bus)"
_COMPUTE = frozenset({"compute"})


@dataclass(frozen=True, slots=True)
class Demand:
    """The peak memory a process's allocator wants at process-local time u (seconds), context excluded.

    The parts add up: warm-up steps, a steady leak, a step per epoch, a saturating rise, a linear ramp, and
    transient spikes (sampling, validation) that the caching allocator keeps once it has reserved them.
    """

    steps: tuple[tuple[float, int], ...] = ()  # (u, bytes added from u on)
    leak_bytes_per_second: float = 0.0
    leak_from: float = 0.0
    epoch_seconds: float = 0.0
    epoch_bytes: int = 0
    epoch_from: float = 0.0
    saturate_bytes: int = 0
    saturate_tau: float = 1.0
    saturate_from: float = 0.0
    ramp_bytes: int = 0
    ramp_seconds: float = 1.0
    ramp_from: float = 0.0
    spikes: tuple[tuple[float, float, float, int], ...] = ()  # (first u, period or 0, duration, bytes)

    def peak(self, u: float) -> int:
        total = 0
        for at, nbytes in self.steps:
            if u >= at:
                total += nbytes
        if self.leak_bytes_per_second and u > self.leak_from:
            total += int((u - self.leak_from) * self.leak_bytes_per_second)
        if self.epoch_seconds and u >= self.epoch_from:
            total += (int((u - self.epoch_from) // self.epoch_seconds) + 1) * self.epoch_bytes
        if self.saturate_bytes and u > self.saturate_from:
            total += int(self.saturate_bytes * -math.expm1(-(u - self.saturate_from) / self.saturate_tau))
        if self.ramp_bytes and u > self.ramp_from:
            total += int(self.ramp_bytes * min(1.0, (u - self.ramp_from) / self.ramp_seconds))
        for first, period, duration, nbytes in self.spikes:
            if u >= first and ((u - first) % period if period else u - first) < duration:
                total += nbytes
        return total

    def settles_at(self) -> float:
        """Process-local time after which the reserved ratchet cannot move any more (inf: never)."""
        if self.leak_bytes_per_second or self.epoch_seconds:
            return math.inf
        ends = [at for at, _ in self.steps]
        if self.saturate_bytes:
            # exp(-25) of the largest card is below one byte: the rounded figure no longer moves.
            ends.append(self.saturate_from + 25 * self.saturate_tau)
        if self.ramp_bytes:
            ends.append(self.ramp_from + self.ramp_seconds)
        # Spikes repeat at the same size: once the first one is reserved, the rest reuse the cache.
        ends += [first + duration for first, _, duration, _ in self.spikes]
        return max(ends, default=0.0)


def round_up(nbytes: int, segment: int) -> int:
    return -(-nbytes // segment) * segment


@dataclass(slots=True, eq=False)
class Gpu:
    index: int
    uuid: str
    name: str
    total_bytes: int
    reserved_bytes: int  # the driver/firmware reservation (NVML memory v2)
    overhead_bytes: int  # the driver's own use, counted in `used`
    proc_bytes: int = 0
    procs: dict[int, Proc] = field(default_factory=dict)
    lost_at: float | None = None
    lost: bool = False
    usages_cache: tuple[ProcessUsage, ...] | None = None

    @property
    def pci_bus_id(self) -> str:
        return f"00000000:{self.index + 1:02X}:00.0"

    def room(self) -> int:
        """Bytes a process could still allocate here."""
        return self.total_bytes - self.reserved_bytes - self.overhead_bytes - self.proc_bytes

    def usages(self) -> tuple[ProcessUsage, ...]:
        if self.usages_cache is None:
            self.usages_cache = tuple(p.usage() for p in self.procs.values())
        return self.usages_cache

    def sample(self) -> GpuSample:
        if self.lost:
            return GpuSample(
                self.index,
                self.uuid,
                self.name,
                None,
                None,
                None,
                pci_bus_id=self.pci_bus_id,
                up=False,
                error=_GPU_LOST,
            )
        used = self.overhead_bytes + self.proc_bytes
        return GpuSample(
            index=self.index,
            uuid=self.uuid,
            name=self.name,
            total_bytes=self.total_bytes,
            used_bytes=used,
            free_bytes=self.total_bytes - used - self.reserved_bytes,
            reserved_bytes=self.reserved_bytes,
            pci_bus_id=self.pci_bus_id,
        )


@dataclass(slots=True, eq=False)
class Proc:
    pid: int
    gpu: Gpu | None  # None: a launcher, known to the inspector but holding no GPU memory
    meta: ProcessMeta
    start_t: float
    demand: Demand | None
    context_bytes: int
    segment_bytes: int
    jitter: bool
    kinds: frozenset[str]
    record: dict[str, Any]  # its ground-truth entry, updated when it ends
    on_exit: Callable[[World, Proc, float], None] | None
    reserved: int = 0
    jitter_bytes: int = 0
    alive: bool = False
    usage_cache: ProcessUsage | None = None

    @property
    def settle_u(self) -> float:
        return self.demand.settles_at() if self.demand is not None else 0.0

    @property
    def used(self) -> int:
        return self.context_bytes + self.reserved + self.jitter_bytes

    def target(self, s: float) -> int:
        return round_up(self.demand.peak(s - self.start_t), self.segment_bytes) if self.demand else self.reserved

    def usage(self) -> ProcessUsage:
        if self.usage_cache is None:
            uuid = self.gpu.uuid if self.gpu is not None else ""  # only GPU processes are ever listed
            self.usage_cache = ProcessUsage(uuid, self.pid, self.used, self.kinds)
        return self.usage_cache


class World:
    """The simulated host: GPUs, processes (with launchers off-GPU), the event log and the seeded RNG."""

    def __init__(self, seed: int, wall0: float) -> None:
        self.seed = seed
        self.rng = random.Random(seed)  # noqa: S311 - simulation noise, not cryptography
        self.wall0 = wall0
        self.gpus: list[Gpu] = []
        self.by_pid: dict[int, Proc] = {}
        self.records: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.on_step: Callable[[World, float], None] | None = None
        self.now = 0.0
        self._pids: set[int] = set()
        self._pending: list[tuple[float, int, Proc]] = []
        self._seq = 0
        self._dynamic: dict[int, Proc] = {}

    # -- building a scenario -------------------------------------------------------------------------

    def add_gpu(self, name: str, total_bytes: int, reserved_bytes: int) -> Gpu:
        index = len(self.gpus)
        # UUIDs depend on the seed and index only: the same seed names the same cards in every scenario.
        r = random.Random(f"vramwatch-sim-gpu:{self.seed}:{index}")  # noqa: S311
        h = f"{r.getrandbits(128):032x}"
        uuid = f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        overhead = self.rng.randint(300, 600) * MiB
        gpu = Gpu(index, uuid, name, total_bytes=total_bytes, reserved_bytes=reserved_bytes, overhead_bytes=overhead)
        self.gpus.append(gpu)
        return gpu

    def vary(self, nbytes: float, spread: float = 0.05) -> int:
        """`nbytes` give or take `spread`, so seeds differ in sizes and rates as real runs do."""
        return int(nbytes * self.rng.uniform(1 - spread, 1 + spread))

    def new_pid(self, near: int | None = None) -> int:
        pid = near + 1 if near is not None else self.rng.randint(2_000, 400_000)
        while pid in self._pids:
            pid = pid + 1 if near is not None else self.rng.randint(2_000, 400_000)
        self._pids.add(pid)
        return pid

    def container_id(self) -> str:
        return f"{self.rng.getrandbits(256):064x}"

    def spawn(
        self,
        *,
        gpu: int | None,
        start_t: float,
        name: str,
        user: str,
        cmdline: Sequence[str],
        demand: Demand | None = None,
        role: str = "trainer",
        behaviour: str = "flat",
        pid: int | None = None,
        parent: Proc | None = None,
        ppid: int | None = None,
        status: str = "running",
        container_id: str | None = None,
        cwd: str | None = None,
        context_bytes: int = CONTEXT_BYTES,
        segment_bytes: int = LARGE_SEGMENT_BYTES,
        jitter: bool = True,
        kinds: frozenset[str] = _COMPUTE,
        on_exit: Callable[[World, Proc, float], None] | None = None,
    ) -> Proc:
        """Schedule a process to start at scenario time `start_t` (negative: it was already running)."""
        if pid is None:
            pid = self.new_pid(parent.pid if parent is not None else None)
        else:
            self._pids.add(pid)
        start_time = self.wall0 + start_t
        if parent is not None:
            root_pid, root_name, root_start = parent.pid, parent.meta.name, parent.meta.start_time
            ppid = parent.pid
        else:
            root_pid, root_name, root_start = pid, name, start_time
            if ppid is None:
                ppid = self.new_pid()  # the user's shell, which the inspector does not know
        meta = ProcessMeta(
            pid=pid,
            start_time=start_time,
            name=name,
            user=user,
            ppid=ppid,
            root_pid=root_pid,
            root_name=root_name,
            root_start_time=root_start,
            container_id=container_id,
            cmdline=tuple(cmdline),
            status=status,
            cwd=cwd,
        )
        target = None if gpu is None else self.gpus[gpu]
        record: dict[str, Any] = {}
        if target is not None:
            leak = None
            leak_from = None
            if demand is not None and demand.leak_bytes_per_second:
                leak, leak_from = demand.leak_bytes_per_second, start_t + demand.leak_from
            elif demand is not None and demand.epoch_seconds:
                leak, leak_from = demand.epoch_bytes / demand.epoch_seconds, start_t + demand.epoch_from
            record = {
                "pid": pid,
                "start_time": start_time,
                "start_t": start_t,
                "gpu": target.uuid,
                "name": name,
                "user": user,
                "role": role,
                "behaviour": behaviour,
                "status": status,
                "leak_bytes_per_second": leak,
                "leak_from_t": leak_from,
                "end_t": None,
                "end": None,
            }
            self.records.append(record)
        proc = Proc(
            pid=pid,
            gpu=target,
            meta=meta,
            start_t=start_t,
            demand=demand,
            context_bytes=context_bytes,
            segment_bytes=segment_bytes,
            jitter=jitter,
            kinds=kinds,
            record=record,
            on_exit=on_exit,
        )
        heapq.heappush(self._pending, (start_t, self._seq, proc))
        self._seq += 1
        return proc

    def lose_gpu(self, index: int, at: float) -> None:
        self.gpus[index].lost_at = at

    def event(self, t: float, kind: str, **fields: Any) -> None:
        self.events.append({"t": t, "kind": kind, **fields})

    # -- running it --------------------------------------------------------------------------------

    def step(self, s: float) -> None:
        """Move the world to simulated time `s` (one step after the previous one)."""
        self.now = s
        while self._pending and self._pending[0][0] <= s:
            self._start(heapq.heappop(self._pending)[2], s)
        for gpu in self.gpus:
            if gpu.lost_at is not None and not gpu.lost and s >= gpu.lost_at:
                self._lose(gpu, s)
        for proc in list(self._dynamic.values()):
            self._evolve(proc, s)
        if self.on_step is not None:
            self.on_step(self, s)

    def set_bytes(self, proc: Proc, reserved: int, jitter: int) -> None:
        gpu = proc.gpu
        if gpu is None:  # launchers hold no GPU memory
            return
        gpu.proc_bytes += (reserved + jitter) - (proc.reserved + proc.jitter_bytes)
        proc.reserved, proc.jitter_bytes = reserved, jitter
        proc.usage_cache = None
        gpu.usages_cache = None

    def _start(self, proc: Proc, s: float) -> None:
        self.by_pid[proc.pid] = proc
        proc.alive = True
        gpu = proc.gpu
        if gpu is None:
            return
        if proc.start_t >= 0:
            self.event(proc.start_t, "start", pid=proc.pid, start_time=proc.meta.start_time, gpu=gpu.uuid)
            if proc.record["role"] == "intruder":
                # Contention starts when the room is gone, not when the intruder's bare context appears: a
                # notebook that loads over 40 s has taken half of what it takes halfway through its ramp.
                d = proc.demand
                taken = proc.start_t + (d.ramp_from + d.ramp_seconds / 2 if d is not None and d.ramp_bytes else 0.0)
                self.event(taken, "contention", pid=proc.pid, start_time=proc.meta.start_time, gpu=gpu.uuid)
        if gpu.lost:
            self._end(proc, s, "gpu_lost")
            return
        target = proc.target(s)
        if proc.context_bytes + target > gpu.room():
            # Context creation or the first allocation fails: the process dies before it is ever listed.
            self._end(proc, s, "oom", demand_bytes=proc.context_bytes + target)
            return
        gpu.procs[proc.pid] = proc
        gpu.proc_bytes += proc.context_bytes
        self.set_bytes(proc, target, 0)
        if proc.jitter or s - proc.start_t < proc.settle_u:
            self._dynamic[proc.pid] = proc

    def _evolve(self, proc: Proc, s: float) -> None:
        gpu = proc.gpu
        if gpu is None:
            return
        target = proc.target(s)
        if target > proc.reserved:
            if target - proc.reserved > gpu.room():
                self._end(proc, s, "oom", demand_bytes=proc.context_bytes + target)
                return
            self.set_bytes(proc, target, proc.jitter_bytes)
        if proc.jitter:
            # One draw per step whatever happens, so the RNG stream does not depend on memory state.
            r = self.rng.random()
            if proc.jitter_bytes == 0 and r < _JITTER_ON:
                size = SMALL_SEGMENT_BYTES * (1 + int(r / _JITTER_ON * 8))
                if size <= gpu.room():
                    self.set_bytes(proc, proc.reserved, size)
            elif proc.jitter_bytes and r < _JITTER_OFF:
                self.set_bytes(proc, proc.reserved, 0)
        elif s - proc.start_t >= proc.settle_u:
            del self._dynamic[proc.pid]

    def _lose(self, gpu: Gpu, s: float) -> None:
        gpu.lost = True
        self.event(s, "gpu_lost", gpu=gpu.uuid)
        for proc in list(gpu.procs.values()):
            # Every CUDA call fails once the card is off the bus: the processes on it crash.
            self._end(proc, s, "gpu_lost")

    def _end(self, proc: Proc, s: float, why: str, **fields: Any) -> None:
        gpu = proc.gpu
        if gpu is None:
            return
        listed = gpu.procs.pop(proc.pid, None) is not None
        if listed:
            gpu.proc_bytes -= proc.used
            gpu.usages_cache = None
        self._dynamic.pop(proc.pid, None)
        proc.alive = False
        proc.record["end_t"] = s
        proc.record["end"] = why
        if why == "oom":
            # used_bytes: the last figure NVML listed for it (None: it died before it was ever listed).
            used = proc.used if listed else None
            self.event(s, "oom", pid=proc.pid, start_time=proc.meta.start_time, gpu=gpu.uuid, used_bytes=used, **fields)
        if proc.on_exit is not None:
            proc.on_exit(self, proc, s)

    def meta(self, pid: int) -> ProcessMeta:
        proc = self.by_pid.get(pid)
        if proc is None or not proc.alive:
            return ProcessMeta(pid=pid, start_time=None)
        return proc.meta
