"""What the detectors read at one tick, gathered once by `analyze` and shared by every detector.

`Tick` is the whole tick (the history, its newest snapshot, the agents' OOM reports); `GpuContext` is one GPU
that answered, with what several detectors need computed once: each visible process's growth rate, the
process trees on the card, and the device's growth profile. Detectors only read these values; they stay pure
functions of the history window.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..frozen import quick_init
from ..history import History, Track
from ..model import GpuSample, OomEvent, ProcessKey, ProcessMeta, ProcessSample, Snapshot
from . import _format as fmt
from ._series import View
from .config import DetectorConfig
from .growth import Profile, Rate


@quick_init
@dataclass(frozen=True, slots=True)
class Tree:
    """A process tree on one GPU at this tick: its launcher's identity, its processes there and what they hold."""

    key: ProcessKey
    members: tuple[ProcessSample, ...]
    held_bytes: int

    @property
    def label(self) -> str:
        """A tree with one process on this GPU is named after that process, not after whatever launched it
        (a shell script, `timeout`, a job runner): that is the name the user recognises in nvidia-smi."""
        if len(self.members) == 1:
            only = self.members[0]
            return fmt.process_label(only.meta, only.key)
        return fmt.process_label(self.members[0].meta, self.key, tree=True, members=len(self.members))


@dataclass(frozen=True, slots=True)
class GpuContext:
    """One GPU that answered at the newest tick, with its series, its visible processes and shared results."""

    gpu: GpuSample
    now: float
    total_bytes: int | None
    used_bytes: int | None
    free_bytes: int | None
    used: View
    free: View
    processes: tuple[ProcessSample, ...]  # empty when pids are not visible
    visible: bool
    history: History
    config: DetectorConfig  # the shared settings; a detector's own come as its second argument
    #: The growth rate of each visible process over the last `rate_report_seconds` (the metrics show it), each
    #: computed when first read.
    process_growth: Mapping[ProcessKey, Rate]
    #: The process trees on this GPU, in the order their first process appears.
    trees: Mapping[ProcessKey, Tree]
    #: The device's growth profile down to the forecast's shortest horizon (no fits at all when it provably
    #: cannot be growing: only its sustained and rising fits are read), and its rate (None: not measurable).
    device: Profile
    device_rate: Rate | None
    #: Processes last seen on this GPU before this tick, with their tracks (probable OOM reads them).
    departed: tuple[tuple[ProcessKey, Track], ...]

    @property
    def uuid(self) -> str:
        return self.gpu.uuid

    def saw_arrive(self, first_seen: float) -> bool:
        """vramwatch was reading this GPU before a track first seen at `first_seen` began: it saw it arrive. What was
        on the card at vramwatch's first read of it was there before (a daemon restart, `attach` to a running job)."""
        since = self.history.gpu_first.get(self.uuid)
        return since is not None and first_seen > since

    def age_at(self, meta: ProcessMeta, t: float, first_seen: float) -> float:
        """How old a tree (`meta`: its first process's) was at monotonic `t`: from its launcher's start time, else
        its own, else from when it was first seen (`first_seen`).

        Its own age, not how long vramwatch has watched it: after a daemon restart a server that loaded an hour
        ago is not young.
        """
        started = meta.root_start_time if meta.root_start_time is not None else meta.start_time
        latest = self.history.latest
        if started is None or latest is None:
            return t - first_seen
        return latest.wall_time - (self.now - t) - started


@dataclass(frozen=True, slots=True)
class Tick:
    """The whole tick: the history, its newest snapshot, every GPU that answered, and what agents reported."""

    history: History
    snapshot: Snapshot
    config: DetectorConfig
    gpus: tuple[GpuContext, ...]
    #: Out-of-memory reports the in-process agents sent since the previous tick (none without agents).
    ooms: tuple[OomEvent, ...] = ()

    @property
    def now(self) -> float:
        return self.snapshot.t
