"""Builders of synthetic histories for detector tests (ours and plugin authors'): no GPU needed.

A scenario is a table of ticks, each `(t, {pid: bytes})` for one card, or `(t, {gpu_uuid: {pid: bytes}})`
for several. `snapshot` turns one row into a `Snapshot` (device used = driver overhead + the processes,
free = total - used), `replay` feeds rows through `History`, `analyze` and `FindingTracker` and records every
raised and cleared finding, as the daemon would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ..history import History
from ..model import Finding, GpuSample, ProcessMeta, ProcessSample, Snapshot, TorchStats
from .analysis import Analysis, analyze
from .config import DetectorConfig
from .lifecycle import FindingTracker

GIB = 1 << 30
MIB = 1 << 20
WALL0 = 1_700_000_000.0

Usage = Mapping[int, int]
#: What an in-process agent reports at a tick, per pid on the first card: (allocated, reserved) bytes.
Allocator = Callable[[float], Mapping[int, tuple[int, int]]]
Row = tuple[float, Usage | Mapping[str, Usage]]


@dataclass(frozen=True, slots=True)
class Card:
    """A simulated GPU: its identity, size, and what the driver itself uses."""

    uuid: str = "GPU-0"
    index: int = 0
    total_bytes: int = 24 * GIB
    overhead_bytes: int = 300 * MIB
    name: str = "NVIDIA GeForce RTX 4090"


def meta(
    pid: int,
    *,
    name: str = "python",
    user: str = "alice",
    start_time: float | None = None,
    root_pid: int | None = None,
    root_start_time: float | None = None,
    root_name: str | None = None,
    ppid: int | None = None,
    status: str | None = "running",
) -> ProcessMeta:
    """Process metadata; unless given, the process started an hour before the scenario's t = 0 (give another
    start time for a young process, or for pid reuse)."""
    started = WALL0 - 3600.0 if start_time is None else start_time
    return ProcessMeta(
        pid=pid,
        start_time=started,
        name=name,
        user=user,
        ppid=ppid,
        root_pid=root_pid if root_pid is not None else pid,
        root_name=root_name if root_name is not None else name,
        root_start_time=root_start_time if root_start_time is not None else started,
        status=status,
    )


@dataclass(frozen=True, slots=True)
class Rig:
    """The cards and the processes' metadata of a scenario."""

    cards: tuple[Card, ...] = (Card(),)
    metas: Mapping[int, ProcessMeta] = field(default_factory=dict)
    down: Callable[[float, str], bool] = lambda t, uuid: False  # noqa: ARG005
    #: The agents' reports (`vramwatch run`), for the processes on the first card that have one.
    agents: Allocator | None = None
    #: False: the daemon cannot see the host's pids (a container without the host pid namespace): no process is listed.
    visible: bool = True

    def meta_of(self, pid: int) -> ProcessMeta:
        return self.metas.get(pid) or meta(pid)

    def snapshot(self, t: float, usage: Usage | Mapping[str, Usage], *, visible: bool | None = None) -> Snapshot:
        visible = self.visible if visible is None else visible
        per_gpu = _per_gpu(usage, self.cards)
        gpus: list[GpuSample] = []
        processes: list[ProcessSample] = []
        for card in self.cards:
            table = per_gpu.get(card.uuid, {})
            if self.down(t, card.uuid):
                gpus.append(GpuSample(card.index, card.uuid, card.name, None, None, None, up=False, error="GpuIsLost"))
                continue
            used = min(card.total_bytes, card.overhead_bytes + sum(table.values()))
            gpus.append(GpuSample(card.index, card.uuid, card.name, card.total_bytes, used, card.total_bytes - used))
            processes += [ProcessSample(card.uuid, b, self.meta_of(pid)) for pid, b in table.items()]
        torch: tuple[TorchStats, ...] = ()
        if self.agents is not None:
            card = self.cards[0]
            torch = tuple(
                TorchStats(pid, card.index, allocated_bytes=a, reserved_bytes=r, gpu_uuid=card.uuid)
                for pid, (a, r) in self.agents(t).items()
            )
        return Snapshot(
            t, WALL0 + t, tuple(gpus), tuple(processes) if visible else (), processes_visible=visible, torch=torch
        )


def _per_gpu(usage: Usage | Mapping[str, Usage], cards: tuple[Card, ...]) -> Mapping[str, Usage]:
    if all(isinstance(k, str) for k in usage):
        return usage  # type: ignore[return-value]
    return {cards[0].uuid: usage}  # type: ignore[dict-item]


def snapshot(t: float, usage: Usage | Mapping[str, Usage], rig: Rig | None = None) -> Snapshot:
    """One row of a scenario as a Snapshot."""
    return (rig or Rig()).snapshot(t, usage)


@dataclass(slots=True)
class Replay:
    """Everything a replay produced: the events in order, the last analysis, the history and tracker."""

    history: History
    tracker: FindingTracker
    raised: list[Finding] = field(default_factory=list)
    cleared: list[Finding] = field(default_factory=list)
    last: Analysis | None = None

    def first(self, kind: str | None = None, *, critical: bool = False) -> Finding | None:
        """The first raised finding (of `kind`, and critical if asked)."""
        return next(
            (
                f
                for f in self.raised
                if (kind is None or f.kind == kind) and (not critical or f.severity.value == "critical")
            ),
            None,
        )


def replay(
    rows: Iterable[Row],
    rig: Rig | None = None,
    config: DetectorConfig | None = None,
    *,
    interval_seconds: float = 1.0,
    window_seconds: float = 3600.0,
    stop: Callable[[Analysis], bool] | None = None,
) -> Replay:
    """Feed `rows` through History, analyze and FindingTracker, as the daemon's loop does."""
    rig = rig or Rig()
    config = config or DetectorConfig()
    result = Replay(History(window_seconds, interval_seconds), FindingTracker(config))
    for t, usage in rows:
        result.history.add(rig.snapshot(t, usage))
        analysis = analyze(result.history, config)
        raised, cleared = result.tracker.update(analysis)
        result.raised += raised
        result.cleared += cleared
        result.last = analysis
        if stop is not None and stop(analysis):
            break
    return result


def ticks(start: float, end: float, step: float = 1.0) -> list[float]:
    """Tick times from `start` to `end` (inclusive), `step` apart."""
    n = int((end - start) / step + 1e-9)
    return [start + k * step for k in range(n + 1)]
