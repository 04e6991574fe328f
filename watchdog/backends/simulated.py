"""A simulated GPU host: scripted training runs on fake cards, for demos, tests and the detection benchmark.

`vramwatch serve --simulate leak` shows what the daemon does when a trainer leaks, on a laptop without a GPU.
Each scenario is a small story (a trainer warms up, leaks, runs out of memory and is restarted) told with the
physics NVML actually shows:

* a PyTorch process appears as its CUDA context (~500 MiB) plus what its caching allocator has *reserved*;
  the allocator takes memory in segments (2 MiB for small tensors, 20 MiB for medium ones, larger requests
  rounded to 2 MiB) and keeps it, so NVML sees a ratchet: the sawtooth of *allocated* memory inside a
  training step is invisible, only its peak shows, as a plateau; warm-up (weights, first step, optimizer
  state, first validation, first sample images) rises in steps;
* library workspaces (cuBLAS, cuDNN) come and go: a few 2 MiB segments of noise on top;
* a process whose next allocation does not fit in the free memory dies (a real OOM): it is absent from the
  next reading;
* device used = the processes' memory + a constant driver overhead; free = total - used - reserved, with
  `reserved` the driver/firmware reservation NVML's memory v2 reports.

The world advances in fixed steps of `STEP_SECONDS` of simulated time, whatever the read cadence, with one
seeded `random.Random`: the reading at simulated time s is a function of (scenario, seed, s) only. Simulated
time is `clock.monotonic() - start`, so the same scenario runs in real time under the system clock and
fast-forwarded under `vramwatch.testing.FakeClock`.

Ground truth (who leaks, when who ran out of memory, when contention started) comes from the same
simulation: `SimulatedBackend.ground_truth()` for a running backend, `ground_truth(scenario)` for a whole
story. It is JSON-able; every `t` in it is seconds since the scenario started (`origin` holds the clock's
monotonic and wall time at that instant, so snapshot t = origin.monotonic + t):

    {"scenario", "description", "seed", "step_seconds", "elapsed_seconds", "origin": {"monotonic", "wall"},
     "gpus": [{"index", "uuid", "name", "total_bytes", "lost_t"}],
     "processes": [{"pid", "start_time" (wall, with pid the identity), "start_t", "gpu", "name", "user",
                    "role" (trainer, worker, inference, intruder, stale, restart, client),
                    "behaviour" (flat, warmup, idle, leak, stepwise_leak, plateau, growth, spike, stale, churn),
                    "status", "leak_bytes_per_second", "leak_from_t", "end_t", "end" (null, oom, gpu_lost)}],
     "events": [{"t", "kind" (start, contention, oom, gpu_lost), "pid", "start_time", "gpu",
                 "used_bytes" (oom: last listed figure), "demand_bytes" (oom: what it asked for)}]}
"""

from __future__ import annotations

import heapq
import math
import random
import shlex
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..clock import SystemClock
from ..errors import ConfigError
from ..model import GpuSample, ProcessMeta, ProcessUsage, Reading
from ..testing import FakeClock
from ..typing import Clock, ProcessInspector

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


def _round_up(nbytes: int, segment: int) -> int:
    return -(-nbytes // segment) * segment


@dataclass(slots=True, eq=False)
class _Gpu:
    index: int
    uuid: str
    name: str
    total_bytes: int
    reserved_bytes: int  # the driver/firmware reservation (NVML memory v2)
    overhead_bytes: int  # the driver's own use, counted in `used`
    proc_bytes: int = 0
    procs: dict[int, _Proc] = field(default_factory=dict)
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
class _Proc:
    pid: int
    gpu: _Gpu | None  # None: a launcher, known to the inspector but holding no GPU memory
    meta: ProcessMeta
    start_t: float
    demand: Demand | None
    context_bytes: int
    segment_bytes: int
    jitter: bool
    kinds: frozenset[str]
    record: dict[str, Any]  # its ground-truth entry, updated when it ends
    on_exit: Callable[[_World, _Proc, float], None] | None
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
        return _round_up(self.demand.peak(s - self.start_t), self.segment_bytes) if self.demand else self.reserved

    def usage(self) -> ProcessUsage:
        if self.usage_cache is None:
            uuid = self.gpu.uuid if self.gpu is not None else ""  # only GPU processes are ever listed
            self.usage_cache = ProcessUsage(uuid, self.pid, self.used, self.kinds)
        return self.usage_cache


class _World:
    """The simulated host: GPUs, processes (with launchers off-GPU), the event log and the seeded RNG."""

    def __init__(self, seed: int, wall0: float) -> None:
        self.seed = seed
        self.rng = random.Random(seed)  # noqa: S311 - simulation noise, not cryptography
        self.wall0 = wall0
        self.gpus: list[_Gpu] = []
        self.by_pid: dict[int, _Proc] = {}
        self.records: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.on_step: Callable[[_World, float], None] | None = None
        self.now = 0.0
        self._pids: set[int] = set()
        self._pending: list[tuple[float, int, _Proc]] = []
        self._seq = 0
        self._dynamic: dict[int, _Proc] = {}

    # -- building a scenario -------------------------------------------------------------------------

    def add_gpu(self, name: str, total_bytes: int, reserved_bytes: int) -> _Gpu:
        index = len(self.gpus)
        # UUIDs depend on the seed and index only: the same seed names the same cards in every scenario.
        r = random.Random(f"vramwatch-sim-gpu:{self.seed}:{index}")  # noqa: S311
        h = f"{r.getrandbits(128):032x}"
        uuid = f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        overhead = self.rng.randint(300, 600) * MiB
        gpu = _Gpu(index, uuid, name, total_bytes=total_bytes, reserved_bytes=reserved_bytes, overhead_bytes=overhead)
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
        parent: _Proc | None = None,
        ppid: int | None = None,
        status: str = "running",
        container_id: str | None = None,
        cwd: str | None = None,
        context_bytes: int = CONTEXT_BYTES,
        segment_bytes: int = LARGE_SEGMENT_BYTES,
        jitter: bool = True,
        kinds: frozenset[str] = _COMPUTE,
        on_exit: Callable[[_World, _Proc, float], None] | None = None,
    ) -> _Proc:
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
        proc = _Proc(
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

    def set_bytes(self, proc: _Proc, reserved: int, jitter: int) -> None:
        gpu = proc.gpu
        if gpu is None:  # launchers hold no GPU memory
            return
        gpu.proc_bytes += (reserved + jitter) - (proc.reserved + proc.jitter_bytes)
        proc.reserved, proc.jitter_bytes = reserved, jitter
        proc.usage_cache = None
        gpu.usages_cache = None

    def _start(self, proc: _Proc, s: float) -> None:
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

    def _evolve(self, proc: _Proc, s: float) -> None:
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

    def _lose(self, gpu: _Gpu, s: float) -> None:
        gpu.lost = True
        self.event(s, "gpu_lost", gpu=gpu.uuid)
        for proc in list(gpu.procs.values()):
            # Every CUDA call fails once the card is off the bus: the processes on it crash.
            self._end(proc, s, "gpu_lost")

    def _end(self, proc: _Proc, s: float, why: str, **fields: Any) -> None:
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


# -- scenarios ------------------------------------------------------------------------------------------

RTX_4090 = ("Simulated RTX 4090", 24 * GiB, 332 * MiB)
H100 = ("Simulated H100 80GB HBM3", 80 * GiB, 542 * MiB)


def _argv(line: str) -> tuple[str, ...]:
    return tuple(shlex.split(line))


# Command lines as the trainers' users type them (kohya sd-scripts flags), for the advisor and redaction.
_KOHYA_FLUX = _argv(
    "python flux_train_network.py --pretrained_model_name_or_path /models/flux1-dev-fp8.safetensors"
    " --ae /models/ae.safetensors --network_module networks.lora_flux --network_dim 16 --train_batch_size 4"
    " --mixed_precision bf16 --fp8_base --gradient_checkpointing --optimizer_type adamw8bit --learning_rate 1e-4"
    " --max_train_epochs 16 --sample_every_n_epochs 1"
)
_KOHYA_SDXL = _argv(
    "sdxl_train_network.py --pretrained_model_name_or_path /models/sd_xl_base_1.0.safetensors"
    " --network_module networks.lora --train_batch_size 2 --mixed_precision fp16 --gradient_checkpointing"
    " --max_token_length 225 --log_with wandb --wandb_api_key sim-not-a-real-key"
)

_CUSTOM = ("python", "train.py", "--config", "configs/lora.yaml", "--batch_size", "8")


def _flux_warmup(w: _World, at: float = 0.0) -> Demand:
    """Weights in chunks, the first step, the optimizer's state, first validation and first samples."""
    return Demand(
        steps=(
            (at + 3, w.vary(3 * GiB)),
            (at + 5, w.vary(3 * GiB)),
            (at + 7, w.vary(3 * GiB)),
            (at + 9, w.vary(2.3 * GiB)),
            (at + 15, w.vary(3.8 * GiB)),
            (at + 25, w.vary(0.9 * GiB)),
            (at + 120, w.vary(0.7 * GiB)),
        ),
        # Sample images every 5 minutes: the VAE decode's peak is reserved once, then reused.
        spikes=((at + 240, 300, 12, w.vary(1.6 * GiB)),),
    )


def _flat(w: _World, nbytes: float, *, at: float = 3.0) -> Demand:
    """Weights, then the first training step: ~70% of the final figure, then the rest."""
    return Demand(steps=((at, w.vary(0.7 * nbytes)), (at + 8, w.vary(0.3 * nbytes))))


def _steady(w: _World) -> None:
    for _ in range(2):
        w.add_gpu(*RTX_4090)
    launcher = w.spawn(
        gpu=None,
        start_t=0.0,
        name="accelerate",
        user="alice",
        cmdline=(
            "/usr/bin/python3",
            "/home/alice/.local/bin/accelerate",
            "launch",
            "--num_processes",
            "2",
            *_KOHYA_SDXL,
        ),
        cwd="/home/alice/sd-scripts",
    )
    for rank in range(2):
        w.spawn(
            gpu=rank,
            start_t=2.0 + rank * 0.5,
            name="python3",
            user="alice",
            cmdline=("/usr/bin/python3", "-u", *_KOHYA_SDXL),
            demand=Demand(
                steps=((4, w.vary(6.6 * GiB)), (10, w.vary(4.2 * GiB)), (70, w.vary(0.4 * GiB))),
            ),
            role="worker",
            parent=launcher,
            cwd="/home/alice/sd-scripts",
        )
    w.spawn(
        gpu=0,
        start_t=-600.0,
        name="python",
        user="bob",
        cmdline=("python", "train_lora.py", "--resolution", "512", "--train_batch_size", "8"),
        demand=_flat(w, 6 * GiB),
        cwd="/home/bob/lora",
    )
    w.spawn(
        gpu=1,
        start_t=-86_400.0,
        name="python3",
        user="root",
        cmdline=_argv("python3 -m uvicorn server:app --host 0.0.0.0 --port 8000"),
        demand=Demand(steps=((0, w.vary(6.5 * GiB)),)),
        role="inference",
        behaviour="idle",
        container_id=w.container_id(),
        jitter=False,
        cwd="/app",
    )


def _warmup(w: _World) -> None:
    w.add_gpu(*RTX_4090)
    w.spawn(
        gpu=0,
        start_t=1.0,
        name="python",
        user="alice",
        cmdline=_KOHYA_FLUX,
        demand=_flux_warmup(w),
        behaviour="warmup",
        cwd="/home/alice/sd-scripts",
    )


def _restart_fixed(delay: float, base: float) -> Callable[[_World, _Proc, float], None]:
    """After an OOM, the user restarts the run with the leak fixed; the OS hands out the same pid again."""

    def restart(w: _World, dead: _Proc, s: float) -> None:
        if dead.record["end"] != "oom" or dead.record["role"] != "trainer" or dead.gpu is None:
            return
        w.spawn(
            gpu=dead.gpu.index,
            start_t=s + delay,
            name=dead.meta.name or "python",
            user=dead.meta.user or "alice",
            cmdline=dead.meta.cmdline or _CUSTOM,
            demand=_flat(w, base),
            role="restart",
            pid=dead.pid,
            cwd=dead.meta.cwd,
        )

    return restart


def _leaker(w: _World, base: float, *, leak: float = 0.0, epoch: tuple[float, float] | None = None) -> Demand:
    flat = _flat(w, base)
    if epoch is not None:
        seconds, nbytes = epoch
        return Demand(steps=flat.steps, epoch_seconds=seconds, epoch_bytes=w.vary(nbytes), epoch_from=seconds)
    return Demand(steps=flat.steps, leak_bytes_per_second=float(w.vary(leak, 0.1)), leak_from=60.0)


def _leak_story(
    w: _World,
    base: float,
    *,
    leak: float = 0.0,
    epoch: tuple[float, float] | None = None,
    segment: int = SMALL_SEGMENT_BYTES,
    second_gpu: bool = False,
) -> None:
    w.add_gpu(*RTX_4090)
    if second_gpu:
        w.add_gpu(*RTX_4090)
        w.spawn(
            gpu=1,
            start_t=-3_600.0,
            name="python",
            user="carol",
            cmdline=("python", "finetune.py", "--model", "llama-3-8b", "--lora_r", "16"),
            demand=_flat(w, 14 * GiB),
            cwd="/home/carol/ft",
        )
    w.spawn(
        gpu=0,
        start_t=0.0,
        name="python",
        user="alice",
        cmdline=_CUSTOM,
        demand=_leaker(w, base, leak=leak, epoch=epoch),
        behaviour="stepwise_leak" if epoch else "leak",
        segment_bytes=segment,
        cwd="/home/alice/project",
        on_exit=_restart_fixed(30.0, base),
    )


def _contention(w: _World) -> None:
    gpu = w.add_gpu(*RTX_4090)
    w.add_gpu(*RTX_4090)
    base = w.vary(16 * GiB)
    w.spawn(
        gpu=0,
        start_t=-2.0,
        name="python",
        user="alice",
        cmdline=_KOHYA_FLUX,
        # A run in its first minutes (vramwatch saw it load), on its plateau; its first sample images (at
        # t=150 s) need 1.5 GiB more than training did. Only a young run's room can be taken: an old flat one,
        # or one never seen to move, already holds all it uses.
        demand=Demand(steps=((5, base),), spikes=((152, 300, 15, w.vary(1.5 * GiB)),)),
        cwd="/home/alice/sd-scripts",
    )
    # Another user's notebook loads a model into the room the trainer's sampling needs.
    room = gpu.total_bytes - gpu.reserved_bytes - gpu.overhead_bytes - (CONTEXT_BYTES + _round_up(base, MiB * 20))
    w.spawn(
        gpu=0,
        start_t=60.0,
        name="python3",
        user="bob",
        cmdline=("python3", "-m", "ipykernel_launcher", "-f", "/run/user/1001/jupyter/kernel-4f2a.json"),
        demand=Demand(ramp_bytes=room - CONTEXT_BYTES - 400 * MiB, ramp_seconds=40.0, ramp_from=2.0),
        role="intruder",
        behaviour="growth",
        cwd="/home/bob/notebooks",
    )
    w.spawn(
        gpu=1,
        start_t=-1_800.0,
        name="python",
        user="carol",
        cmdline=("python", "train_lora.py", "--resolution", "768"),
        demand=_flat(w, 9 * GiB),
        cwd="/home/carol/lora",
    )


def _plateau(w: _World) -> None:
    gpu = w.add_gpu(*RTX_4090)
    weights = w.vary(8 * GiB)
    goal = int(0.92 * gpu.total_bytes) - gpu.overhead_bytes - CONTEXT_BYTES - weights
    w.spawn(
        gpu=0,
        start_t=0.0,
        name="python",
        user="alice",
        cmdline=_KOHYA_FLUX,
        # Growth that slows down and stops short of the card (bucketed resolutions filling the cache).
        demand=Demand(steps=((3, weights),), saturate_bytes=goal, saturate_tau=150.0, saturate_from=10.0),
        behaviour="plateau",
        cwd="/home/alice/sd-scripts",
    )


def _spike_oom(w: _World) -> None:
    gpu = w.add_gpu(*RTX_4090)

    def retry(w: _World, dead: _Proc, s: float) -> None:
        if dead.record["role"] != "trainer":
            return
        argv = list(_KOHYA_FLUX)
        argv[argv.index("--train_batch_size") + 1] = "1"
        w.spawn(
            gpu=0,
            start_t=s + 25.0,
            name="python",
            user="alice",
            cmdline=argv,
            demand=_flat(w, 17 * GiB),
            role="restart",
            cwd="/home/alice/sd-scripts",
        )

    w.spawn(
        gpu=0,
        start_t=2.0,
        name="python",
        user="alice",
        cmdline=_KOHYA_FLUX,
        # Latents are cached on the CPU first; the first step asks for more than the card has.
        demand=Demand(steps=((20, gpu.total_bytes + w.vary(2 * GiB)),)),
        behaviour="spike",
        cwd="/home/alice/sd-scripts",
        on_exit=retry,
    )


def _stale(w: _World) -> None:
    for _ in range(2):
        w.add_gpu(*RTX_4090)
    for gpu, status in ((0, "stopped"), (1, "zombie")):
        w.spawn(
            gpu=gpu,
            start_t=-3 * 3_600.0 - gpu * 600,
            name="python",
            user="bob",
            cmdline=("python", "train_dreambooth.py", "--instance_prompt", "a photo of sks dog"),
            demand=Demand(steps=((0, w.vary(6 * GiB) - CONTEXT_BYTES),)),
            role="stale",
            behaviour="stale",
            ppid=1,  # its launcher is gone: re-parented to init
            status=status,
            jitter=False,
            cwd="/home/bob/dreambooth",
        )
    w.spawn(
        gpu=0,
        start_t=5.0,
        name="python",
        user="alice",
        cmdline=_CUSTOM,
        demand=_flat(w, 14 * GiB),
        cwd="/home/alice/project",
    )


def _lost_gpu(w: _World) -> None:
    for rank in range(2):
        w.add_gpu(*RTX_4090)
        w.spawn(
            gpu=rank,
            start_t=-300.0,
            name="python",
            user="alice",
            cmdline=_CUSTOM,
            demand=_flat(w, 12 * GiB),
            cwd="/home/alice/project",
        )
    w.lose_gpu(1, 30.0)


def _scale(w: _World, per_gpu: int = 512) -> None:
    clients: list[_Proc] = []
    users = [f"user{k:02d}" for k in range(16)]
    for index in range(8):
        w.add_gpu(*H100)
        for _ in range(per_gpu):
            proc = w.spawn(
                gpu=index,
                start_t=-w.rng.uniform(60.0, 86_400.0),
                name="python3",
                user=w.rng.choice(users),
                cmdline=("python3", "worker.py", "--shard", str(len(clients))),
                # MPS clients: the MPS server holds the context, each client only its own buffers.
                demand=Demand(steps=((0, w.rng.randint(5, 50) * SMALL_SEGMENT_BYTES),)),
                role="client",
                behaviour="churn",
                context_bytes=0,
                segment_bytes=SMALL_SEGMENT_BYTES,
                jitter=False,
                kinds=frozenset({"mps"}),
            )
            clients.append(proc)

    def churn(w: _World, _s: float) -> None:
        for _ in range(4):
            proc = clients[w.rng.randrange(len(clients))]
            grow = w.rng.random() < 0.5
            if not proc.alive or proc.gpu is None:
                continue
            new = proc.reserved + (SMALL_SEGMENT_BYTES if grow else -SMALL_SEGMENT_BYTES)
            if 10 * MiB <= new <= 100 * MiB and (not grow or proc.gpu.room() >= SMALL_SEGMENT_BYTES):
                w.set_bytes(proc, new, 0)

    w.on_step = churn


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named story: `build` populates a world; `horizon_seconds` is long enough to tell all of it."""

    name: str
    description: str
    horizon_seconds: float
    build: Callable[[_World], None]


SCENARIOS: Mapping[str, Scenario] = MappingProxyType(
    {
        s.name: s
        for s in (
            Scenario(
                "steady",
                "2 GPUs: an accelerate job's two workers warm up then stay flat, a second trainer, an idle server",
                600.0,
                _steady,
            ),
            Scenario(
                "warmup",
                "a Flux LoRA trainer rising in steps (weights, first step, validation, samples), then flat",
                900.0,
                _warmup,
            ),
            Scenario(
                "leak",
                "a trainer leaks ~20 MB/s until it runs out of memory; restarted (same pid) without the leak",
                900.0,
                lambda w: _leak_story(w, 12 * GiB, leak=20e6, second_gpu=True),
            ),
            Scenario(
                "contention",
                "a trainer at its plateau; at 60 s another user's notebook takes the room and the trainer OOMs",
                300.0,
                _contention,
            ),
            Scenario(
                "slow_leak",
                "a trainer leaking 3 MB/s: out of memory after tens of minutes",
                3_600.0,
                lambda w: _leak_story(w, 15 * GiB, leak=3e6),
            ),
            Scenario(
                "fast_leak",
                "a trainer leaking ~150 MB/s: out of memory within two minutes",
                300.0,
                lambda w: _leak_story(w, 10 * GiB, leak=150e6, segment=LARGE_SEGMENT_BYTES),
            ),
            Scenario(
                "stepwise_leak",
                "a trainer that keeps ~700 MiB more at each 90 s epoch until it runs out of memory",
                1_800.0,
                lambda w: _leak_story(w, 12 * GiB, epoch=(90.0, 700 * MiB), segment=LARGE_SEGMENT_BYTES),
            ),
            Scenario(
                "plateau",
                "a trainer whose growth slows and stops at ~92% of the card: never runs out of memory",
                1_200.0,
                _plateau,
            ),
            Scenario(
                "spike_oom",
                "a trainer OOMs at its first step (context only, then over the card); retried at batch size 1",
                240.0,
                _spike_oom,
            ),
            Scenario(
                "stale",
                "stopped and zombie processes of an earlier run (launcher dead) hold 6 GiB each",
                300.0,
                _stale,
            ),
            Scenario(
                "lost_gpu",
                "2 GPUs training; GPU 1 falls off the bus at 30 s (up=False)",
                120.0,
                _lost_gpu,
            ),
            Scenario(
                "scale",
                "8 GPUs x 512 MPS clients of 10-100 MiB each, for benchmarks",
                60.0,
                _scale,
            ),
            Scenario(
                "scale512",
                "8 GPUs with 512 MPS clients in all (64 each), for benchmarks",
                60.0,
                lambda w: _scale(w, per_gpu=64),
            ),
        )
    }
)


def scenario_names() -> tuple[str, ...]:
    """The scenario names in registry order (the CLI lists them with their descriptions)."""
    return tuple(SCENARIOS)


class _SimInspector:
    """What the simulated OS says about a pid: the latest process with that pid, or Nones once it died."""

    def __init__(self, world: _World) -> None:
        self._world = world

    def inspect(self, pid: int) -> ProcessMeta:
        return self._world.meta(pid)

    def pid_namespace_matches(self) -> bool:
        return True


class SimulatedBackend:
    """A Backend whose GPUs and processes come from a scenario; see the module docstring."""

    kind = "simulated"

    def __init__(self, scenario: str = "steady", *, seed: int = 0, clock: Clock | None = None) -> None:
        spec = SCENARIOS.get(scenario)
        if spec is None:
            raise ConfigError(f"unknown scenario {scenario!r}; choose one of: {', '.join(SCENARIOS)}")
        self.scenario = spec
        self.seed = seed
        self._clock: Clock = clock if clock is not None else SystemClock()
        self.started_at = self._clock.monotonic()
        self.wall_origin = self._clock.wall()
        self._world = _World(seed, self.wall_origin)
        spec.build(self._world)
        self._steps = 0
        self._world.step(0.0)
        self._inspector = _SimInspector(self._world)

    def elapsed(self) -> float:
        """Simulated seconds the world has been advanced to (a multiple of STEP_SECONDS)."""
        return self._steps * STEP_SECONDS

    def _advance(self) -> None:
        target = math.floor((self._clock.monotonic() - self.started_at) / STEP_SECONDS)
        while self._steps < target:
            self._steps += 1
            self._world.step(self._steps * STEP_SECONDS)

    def read(self) -> Reading:
        self._advance()
        gpus = tuple(g.sample() for g in self._world.gpus)
        procs: list[ProcessUsage] = []
        for g in self._world.gpus:
            if not g.lost:
                procs.extend(g.usages())
        return Reading(gpus=gpus, processes=tuple(procs))

    def inspector(self) -> ProcessInspector:
        return self._inspector

    def describe(self) -> dict[str, str]:
        return {
            "backend": self.kind,
            "scenario": self.scenario.name,
            "seed": str(self.seed),
            "host": socket.gethostname(),
            "driver_version": "simulated",
            "nvml_version": "simulated",
        }

    def close(self) -> None:
        """Nothing to release."""

    def events(self) -> list[dict[str, Any]]:
        """What happened so far (starts, OOMs, contention, lost GPUs), JSON-able, `t` in scenario seconds."""
        self._advance()
        return [dict(e) for e in self._world.events]

    def ground_truth(self) -> dict[str, Any]:
        """The story up to now as JSON-able data: GPUs, every GPU process's role and fate, and the events."""
        self._advance()
        w = self._world
        return {
            "scenario": self.scenario.name,
            "description": self.scenario.description,
            "seed": self.seed,
            "step_seconds": STEP_SECONDS,
            "elapsed_seconds": self.elapsed(),
            "origin": {"monotonic": self.started_at, "wall": self.wall_origin},
            "gpus": [
                {
                    "index": g.index,
                    "uuid": g.uuid,
                    "name": g.name,
                    "total_bytes": g.total_bytes,
                    "lost_t": g.lost_at if g.lost else None,
                }
                for g in w.gpus
            ],
            "processes": [dict(r) for r in w.records if r["start_t"] <= self.elapsed()],
            "events": [dict(e) for e in w.events],
        }


def ground_truth(scenario: str, *, seed: int = 0, horizon_seconds: float | None = None) -> dict[str, Any]:
    """Run `scenario` fast-forwarded to its horizon (or `horizon_seconds`) and return its ground truth.

    The clock is a fake one starting at monotonic 1000.0 and wall 1_700_001_000.0 (see `origin`): compare
    runs by `t` (scenario seconds), or map with `origin` when the clocks differ.
    """
    spec = SCENARIOS.get(scenario)
    if spec is None:
        raise ConfigError(f"unknown scenario {scenario!r}; choose one of: {', '.join(SCENARIOS)}")
    clock = FakeClock()
    backend = SimulatedBackend(scenario, seed=seed, clock=clock)
    clock.advance(spec.horizon_seconds if horizon_seconds is None else horizon_seconds)
    return backend.ground_truth()
