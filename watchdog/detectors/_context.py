"""What every per-GPU detector needs at one tick, gathered once by `analyze`."""

from __future__ import annotations

from dataclasses import dataclass

from ..model import GpuSample, ProcessSample
from ._series import View


@dataclass(frozen=True, slots=True)
class GpuContext:
    """One GPU that answered at the newest tick, with its series and its visible processes."""

    gpu: GpuSample
    now: float
    total_bytes: int | None
    used_bytes: int | None
    free_bytes: int | None
    used: View
    free: View
    processes: tuple[ProcessSample, ...]  # empty when pids are not visible
    visible: bool

    @property
    def uuid(self) -> str:
        return self.gpu.uuid
