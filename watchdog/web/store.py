"""The page's memory: per GPU, the last hour of used, total and per-process memory on one time axis.

The detectors' `History` keeps one ring per series, each with its own times. A stacked chart needs every
process's value at every tick of its GPU, with a gap where a process was absent, so the page keeps its own
columns: one ring of ticks per GPU, one `array('d')` column per process (NaN where it was absent), 8 bytes a
point. A process column is dropped once its last value has left the window, and a GPU holds at most
`MAX_PROCESS_COLUMNS` of them (later arrivals share one "other processes" column), so the memory has a bound
known in advance: that of one hour of 1 Hz points for a few dozen series per GPU.

Each tick gets a sequence number; a page asks for the points after the last one it has (`since`), so a page
open for an hour fetches each point once. Beside the series the store keeps the findings raised (with their
advice, as raised), and the processes that left each GPU (the post-mortem), each in a bounded log.

Command lines, working directories and environments are never copied in: only pid, name and user.
"""

from __future__ import annotations

import dataclasses
import math
from array import array
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..model import Finding, ProcessExit, ProcessKey, ProcessSample, Snapshot

#: Per GPU: enough for every process of a shared workstation; an MPS host's hundreds of clients share one column.
MAX_PROCESS_COLUMNS = 24
#: Per GPU: processes whose in-process agent reports allocator figures (allocated and reserved columns each).
MAX_TORCH_COLUMNS = 8
#: The key of the column that sums the processes beyond MAX_PROCESS_COLUMNS.
OTHER = "other"
#: Findings and departures remembered for the page (the report keeps all of a trace's).
MAX_EVENTS = 500


@dataclass(frozen=True, slots=True)
class ProcessLabel:
    """How a process is named on the page: never its command line."""

    key: str  # "pid@start_time": the identity, as pids are reused
    pid: int | None
    name: str | None
    user: str | None

    @staticmethod
    def of(p: ProcessSample) -> ProcessLabel:
        return ProcessLabel(str(p.key), p.pid, p.meta.name, p.meta.user)


OTHER_LABEL = ProcessLabel(OTHER, None, "other processes", None)


@dataclass(frozen=True, slots=True)
class FindingEvent:
    """A finding as it was raised (with its advice), when, and when it was cleared."""

    finding: Finding
    raised_wall: float
    cleared_wall: float | None = None


@dataclass(frozen=True, slots=True)
class Departure:
    """A process that left a GPU: how long it was there, its peak and last memory, and how it ended if known."""

    gpu_uuid: str
    key: ProcessKey
    label: ProcessLabel
    wall: float  # the first tick it was no longer listed
    first_wall: float
    peak_bytes: int
    last_bytes: int
    exit: ProcessExit | None = None


@dataclass(slots=True)
class _Presence:
    """A process currently on a GPU, as far as the post-mortem needs it."""

    label: ProcessLabel
    first_wall: float
    peak_bytes: int
    last_bytes: int


class Columns:
    """Columns of floats aligned on one ring of ticks: a column per series, NaN where it had no value."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(2, capacity)
        self.size = 0
        self._head = 0  # where the next tick goes once the ring is full
        self.columns: dict[str, array[float]] = {}
        self._last: dict[str, int] = {}  # column -> tick count when it last had a value
        self._count = 0

    def append(self, values: Mapping[str, float]) -> bool:
        """Add one tick; True when columns were dropped (their last value left the window)."""
        ticks = self.size if self.size < self.capacity else self.capacity
        for key in values:
            if key not in self.columns:
                self.columns[key] = array("d", [math.nan]) * ticks
        if self.size < self.capacity:
            for key, col in self.columns.items():
                col.append(values.get(key, math.nan))
            self.size += 1
        else:
            for key, col in self.columns.items():
                col[self._head] = values.get(key, math.nan)
            self._head = (self._head + 1) % self.capacity
        self._count += 1
        for key in values:
            self._last[key] = self._count
        # A column whose last value has left the window holds only NaN: drop it (a process gone an hour ago).
        gone = [k for k, n in self._last.items() if self._count - n >= self.size]
        for key in gone:
            del self.columns[key], self._last[key]
        return bool(gone)

    def ordered(self, key: str, start: int = 0) -> list[float]:
        """The column oldest first, from the `start`-th oldest tick."""
        col = self.columns[key]
        seq = col if self.size < self.capacity else col[self._head :] + col[: self._head]
        return list(seq[start:])


class GpuTrack:
    """One GPU's columns (`seq`, `t` wall seconds, `used`, `total`, then a column per process) and labels."""

    def __init__(self, capacity: int) -> None:
        self.columns = Columns(capacity)
        self.labels: dict[str, ProcessLabel] = {}
        self._column: dict[tuple[int, float | None], str] = {}  # (pid, start time) -> its column (or OTHER)
        self.torch: dict[str, ProcessLabel] = {}  # pid -> label, for the "alloc:PID" and "resv:PID" columns

    def add(self, seq: int, snap: Snapshot, uuid: str, processes: Iterable[ProcessSample]) -> None:
        """One tick of this GPU; `processes` are the snapshot's processes on it."""
        g = snap.gpu(uuid)
        # A lost GPU leaves a gap (NaN), not a fake zero; its columns stay, so the chart keeps its axis.
        values: dict[str, float] = {"seq": float(seq), "t": snap.wall_time, "used": math.nan, "total": math.nan}
        if g is not None and g.up and g.used_bytes is not None:
            values["used"] = float(g.used_bytes)
            if g.total_bytes is not None:
                values["total"] = float(g.total_bytes)
        for p in processes:
            if p.used_bytes is None:
                continue
            m = p.meta
            # The column of an identity, looked up by (pid, start) without formatting a key at every tick.
            key = self._column.get((m.pid, m.start_time))
            if key is None:
                key = str(p.key)
                if len(self.labels) - (OTHER in self.labels) >= MAX_PROCESS_COLUMNS:
                    key = OTHER
                    self.labels.setdefault(OTHER, OTHER_LABEL)
                else:
                    self.labels[key] = ProcessLabel.of(p)
                self._column[(m.pid, m.start_time)] = key
            values[key] = values.get(key, 0.0) + p.used_bytes
        if snap.torch:
            self._add_torch(snap, uuid, values)
        if self.columns.append(values):  # some columns left the window: forget their labels
            cols = self.columns.columns
            self.labels = {k: v for k, v in self.labels.items() if k in cols}
            self._column = {ident: k for ident, k in self._column.items() if k in cols}
            self.torch = {k: v for k, v in self.torch.items() if f"alloc:{k}" in cols or f"resv:{k}" in cols}

    def _add_torch(self, snap: Snapshot, uuid: str, values: dict[str, float]) -> None:
        names = {p.pid: p.meta.name for p in snap.processes}
        users = {p.pid: p.meta.user for p in snap.processes}
        for ts in snap.torch:
            if (ts.gpu_uuid or uuid_of(snap, ts.device)) != uuid:
                continue
            pid = str(ts.pid)
            if pid not in self.torch:
                if len(self.torch) >= MAX_TORCH_COLUMNS:
                    continue
                self.torch[pid] = ProcessLabel(pid, ts.pid, names.get(ts.pid), users.get(ts.pid))
            if ts.allocated_bytes is not None:
                values[f"alloc:{pid}"] = float(ts.allocated_bytes)
            if ts.reserved_bytes is not None:
                values[f"resv:{pid}"] = float(ts.reserved_bytes)

    def first_after(self, since: int) -> int:
        """Index (oldest first) of the first tick whose sequence number is above `since`."""
        return bisect_right(self.columns.ordered("seq"), since)

    @property
    def oldest_seq(self) -> int | None:
        seqs = self.columns.ordered("seq") if self.columns.size else []
        return int(seqs[0]) if seqs else None


def uuid_of(snap: Snapshot, device: int) -> str | None:
    """The agent names a CUDA device index; without its NVML uuid, the GPU of the same index."""
    return next((g.uuid for g in snap.gpus if g.index == device), None)


class PageStore:
    """Everything the page shows beyond the latest tick: series, findings raised, processes that left."""

    def __init__(self, window_seconds: float, interval_seconds: float, *, max_events: int = MAX_EVENTS) -> None:
        self.window_seconds = window_seconds
        self.capacity = max(2, math.ceil(window_seconds / interval_seconds) + 1)
        self.seq = 0
        self.gpus: dict[str, GpuTrack] = {}
        self.index: dict[str, int] = {}  # uuid -> NVML index, for labels
        self.events: deque[FindingEvent] = deque(maxlen=max_events)
        self.departures: deque[Departure] = deque(maxlen=max_events)
        self._present: dict[tuple[int, float | None, str], _Presence] = {}
        self.latest: Snapshot | None = None

    def add(self, snap: Snapshot) -> None:
        """Fold one tick in: a point on every GPU's columns, departures of processes no longer listed."""
        self.seq += 1
        self.latest = snap
        # One pass over the processes for all GPUs, not one per GPU (8 GPUs x 512 processes is 4,096, not 32,768).
        on: dict[str, list[ProcessSample]] = {}
        for p in snap.processes:
            on.setdefault(p.gpu_uuid, []).append(p)
        for g in snap.gpus:
            self.index[g.uuid] = g.index
            track = self.gpus.get(g.uuid)
            if track is None:
                track = self.gpus[g.uuid] = GpuTrack(self.capacity)
            track.add(self.seq, snap, g.uuid, on.get(g.uuid, ()))
        self._follow_processes(snap)

    def _follow_processes(self, snap: Snapshot) -> None:
        seen: set[tuple[int, float | None, str]] = set()
        for p in snap.processes:
            k = (p.meta.pid, p.meta.start_time, p.gpu_uuid)  # the identity, without building a ProcessKey a tick
            seen.add(k)
            used = p.used_bytes or 0
            pres = self._present.get(k)
            if pres is None:
                self._present[k] = _Presence(ProcessLabel.of(p), snap.wall_time, used, used)
            else:
                pres.peak_bytes = max(pres.peak_bytes, used)
                pres.last_bytes = used
        if len(seen) == len(self._present):
            return  # nobody left (every present process was seen, and every seen one is present now)
        exits = {ex.key: ex for ex in snap.exits}
        for k in [k for k in self._present if k not in seen]:
            pres = self._present.pop(k)
            key = ProcessKey(k[0], k[1])
            self.departures.append(
                Departure(
                    gpu_uuid=k[2],
                    key=key,
                    label=pres.label,
                    wall=snap.wall_time,
                    first_wall=pres.first_wall,
                    peak_bytes=pres.peak_bytes,
                    last_bytes=pres.last_bytes,
                    exit=exits.get(key),
                )
            )

    def note(self, raised: Iterable[Finding], cleared: Iterable[Finding], wall: float) -> None:
        """Log the findings raised at this tick (as raised: with their advice) and mark the cleared ones."""
        for f in raised:
            self.events.append(FindingEvent(f, wall))
        for f in cleared:
            for i in range(len(self.events) - 1, -1, -1):
                ev = self.events[i]
                if ev.finding.subject == f.subject and ev.cleared_wall is None:
                    self.events[i] = dataclasses.replace(ev, cleared_wall=wall)
                    break

    def advice_for(self, f: Finding) -> tuple[str, ...]:
        """The advice given when `f`'s subject was last raised (the tracker's active copy carries none)."""
        if f.advice:
            return f.advice
        for ev in reversed(self.events):
            if ev.finding.subject == f.subject:
                return ev.finding.advice
        return ()


__all__ = ["OTHER", "Departure", "FindingEvent", "GpuTrack", "PageStore", "ProcessLabel"]
