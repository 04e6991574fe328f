"""Snapshot builders shared by tests: state memory tables, not dataclass boilerplate."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from vramwatch.model import GpuSample, ProcessMeta, ProcessSample, Snapshot

GIB = 1024**3
UUID0 = "GPU-00000000-0000-0000-0000-000000000000"
UUID1 = "GPU-11111111-1111-1111-1111-111111111111"


def gpu(index: int = 0, *, used: int, total: int = 24 * GIB, uuid: str | None = None, up: bool = True) -> GpuSample:
    """A GPU sample whose free memory is what is not used."""
    return GpuSample(
        index=index,
        uuid=uuid or (UUID0 if index == 0 else UUID1),
        name="Test RTX 4090",
        total_bytes=total if up else None,
        used_bytes=used if up else None,
        free_bytes=total - used if up else None,
        up=up,
    )


def make_snapshot(
    t: float,
    procs: Mapping[int, int | None],
    *,
    gpu_used: int | None = None,
    starts: Mapping[int, float] | None = None,
    total: int = 24 * GIB,
    overhead: int = 300 * 1024**2,
) -> Snapshot:
    """One GPU at time t with {pid: used bytes}; device used = processes + driver overhead unless given."""
    starts = starts or {}
    known = sum(v for v in procs.values() if v is not None)
    g = gpu(used=gpu_used if gpu_used is not None else known + overhead, total=total)
    ps = tuple(
        ProcessSample(g.uuid, used, ProcessMeta(pid=pid, start_time=starts.get(pid, 100.0 + pid), name=f"p{pid}"))
        for pid, used in procs.items()
    )
    return Snapshot(t=t, wall_time=1.7e9 + t, gpus=(g,), processes=ps)


def record_simulated(path: Path, scenario: str, seconds: int, *, seed: int = 0) -> Path:
    """A trace of `seconds` ticks of a simulated scenario, written at full speed (a FakeClock, 1 s a tick)."""
    from vramwatch.backends.simulated import SimulatedBackend
    from vramwatch.history import History
    from vramwatch.sampler import Sampler
    from vramwatch.testing import FakeClock
    from vramwatch.trace import open_trace_writer

    clock = FakeClock()
    backend = SimulatedBackend(scenario, seed=seed, clock=clock)
    sampler = Sampler(backend, History(window_seconds=60), clock)
    with open_trace_writer(path, backend, 1.0) as writer:
        for _ in range(seconds):
            snap = sampler.tick()
            if snap is not None:
                writer.write(snap)
            clock.advance(1.0)
    return path
