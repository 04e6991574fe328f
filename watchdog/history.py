"""Bounded memory of the last hour: the windows the detectors read.

Each series is a fixed-capacity ring of (t, value) in two `array('d')`, 16 bytes a point: it grows as points
arrive, up to its capacity, then overwrites the oldest. A series of one hour at 1 Hz costs at most 57.6 kB, so
the daemon's memory has a bound known in advance (`History.capacity_bytes`), and a short-lived process costs
only what it lived. Series exist per GPU (used and free bytes), per process identity and GPU, and per
process tree and GPU (a launcher's workers summed). A process that has exited keeps its series for
`retain_seconds` (the crash/OOM detectors look back at it), then its memory is returned.
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from .model import ProcessExit, ProcessKey, ProcessMeta, Snapshot, TorchStats

#: Agent samples kept per (pid, device): ten minutes at 1 Hz, what the fragmentation detector looks at.
TORCH_POINTS = 600

POINT_BYTES = 16  # one float64 time + one float64 value


@dataclass(frozen=True, slots=True)
class Window:
    """A time-ordered view of one series: `t` monotonic seconds, `v` values (bytes), same length."""

    t: tuple[float, ...]
    v: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.t)

    @property
    def span_seconds(self) -> float:
        return self.t[-1] - self.t[0] if len(self.t) > 1 else 0.0

    def since(self, t0: float) -> Window:
        """The part of the window at or after `t0`."""
        i = next((k for k, tk in enumerate(self.t) if tk >= t0), len(self.t))
        return Window(self.t[i:], self.v[i:])


EMPTY = Window((), ())


class Series:
    """A ring buffer of (t, value) with a fixed capacity; the oldest point is overwritten first."""

    __slots__ = ("_head", "_size", "_t", "_v", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._t = array("d")
        self._v = array("d")
        self._head = 0  # index of the next write
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, t: float, value: float) -> None:
        if self._size < self.capacity:  # still filling: the arrays grow, oldest first
            self._t.append(t)
            self._v.append(value)
            self._size += 1
            self._head = self._size % self.capacity
            return
        self._t[self._head] = t
        self._v[self._head] = value
        self._head = (self._head + 1) % self.capacity

    def arrays(self) -> tuple[array[float], array[float]]:
        """(times, values), oldest first, as new arrays: the fast path the detectors read."""
        if self._size < self.capacity:
            return self._t[:], self._v[:]
        h = self._head
        return self._t[h:] + self._t[:h], self._v[h:] + self._v[:h]

    def _order(self) -> Iterator[int]:
        start = (self._head - self._size) % self.capacity
        return ((start + k) % self.capacity for k in range(self._size))

    def last(self) -> tuple[float, float] | None:
        if not self._size:
            return None
        i = (self._head - 1) % self.capacity
        return self._t[i], self._v[i]

    def window(self, seconds: float | None = None) -> Window:
        """The points of the last `seconds` before the newest point (all of them when None)."""
        if not self._size:
            return EMPTY
        idx = list(self._order())
        if seconds is not None:
            newest = self._t[idx[-1]]
            idx = [i for i in idx if self._t[i] >= newest - seconds]
        return Window(tuple(self._t[i] for i in idx), tuple(self._v[i] for i in idx))


@dataclass(slots=True)
class Track:
    """The series of one process (or tree) on one GPU, with when it was first and last seen."""

    series: Series
    first_seen: float
    last_seen: float
    meta: ProcessMeta | None = None


class History:
    """Per-GPU, per-process and per-tree series over the last `window_seconds`.

    Sizes are fixed at construction: capacity = window / interval points per series, at most
    `max_tracks` process and tree tracks (the least recently seen are evicted first).
    """

    def __init__(
        self,
        window_seconds: float = 3600.0,
        interval_seconds: float = 1.0,
        retain_seconds: float = 600.0,
        max_tracks: int = 10_000,
    ) -> None:
        self.points = max(2, math.ceil(window_seconds / interval_seconds) + 1)
        self.retain_seconds = retain_seconds
        self.max_tracks = max_tracks
        self.gpu_used: dict[str, Series] = {}
        self.gpu_free: dict[str, Series] = {}
        self.gpu_total: dict[str, int] = {}
        self.processes: dict[tuple[ProcessKey, str], Track] = {}
        self.trees: dict[tuple[ProcessKey, str], Track] = {}
        self.latest: Snapshot | None = None
        self.previous: Snapshot | None = None
        # (pid, device) -> recent (t, TorchStats) from in-process agents; bounded like every other series.
        self.torch: dict[tuple[int, int], deque[tuple[float, TorchStats]]] = {}
        # How processes that left ended, where the system could tell (kept as long as their tracks).
        self.exits: dict[ProcessKey, tuple[float, ProcessExit]] = {}

    def capacity_bytes(self, gpus: int) -> int:
        """Upper bound of the series memory for `gpus` GPUs: what `--history` costs, known in advance."""
        return POINT_BYTES * self.points * (2 * gpus + self.max_tracks)

    def add(self, snap: Snapshot) -> None:
        """Append one tick to every series it touches and drop tracks not seen for `retain_seconds`."""
        self.previous, self.latest = self.latest, snap
        for g in snap.gpus:
            if not g.up or g.used_bytes is None:
                continue  # a lost GPU leaves a gap, not a fake zero
            self._series(self.gpu_used, g.uuid).append(snap.t, g.used_bytes)
            if g.free_bytes is not None:
                self._series(self.gpu_free, g.uuid).append(snap.t, g.free_bytes)
            if g.total_bytes is not None:
                self.gpu_total[g.uuid] = g.total_bytes
        trees: dict[tuple[ProcessKey, str], tuple[int, ProcessMeta]] = {}
        for p in snap.processes:
            if p.used_bytes is None:
                continue
            self._touch(self.processes, (p.key, p.gpu_uuid), snap.t, p.meta).series.append(snap.t, p.used_bytes)
            tk = (p.tree_key, p.gpu_uuid)
            prev = trees.get(tk)
            trees[tk] = ((prev[0] if prev else 0) + p.used_bytes, p.meta)
        for tk, (total, meta) in trees.items():
            self._touch(self.trees, tk, snap.t, meta).series.append(snap.t, total)
        for ex in snap.exits:
            self.exits[ex.key] = (snap.t, ex)
        for ts in snap.torch:
            ring = self.torch.get((ts.pid, ts.device))
            if ring is None:
                ring = self.torch[(ts.pid, ts.device)] = deque(maxlen=TORCH_POINTS)
            ring.append((snap.t, ts))
        self._prune(snap.t)

    def gpu_window(self, uuid: str, seconds: float | None = None) -> Window:
        s = self.gpu_used.get(uuid)
        return s.window(seconds) if s else EMPTY

    def free_window(self, uuid: str, seconds: float | None = None) -> Window:
        s = self.gpu_free.get(uuid)
        return s.window(seconds) if s else EMPTY

    def process_window(self, key: ProcessKey, gpu_uuid: str, seconds: float | None = None) -> Window:
        tr = self.processes.get((key, gpu_uuid))
        return tr.series.window(seconds) if tr else EMPTY

    def tree_window(self, key: ProcessKey, gpu_uuid: str, seconds: float | None = None) -> Window:
        tr = self.trees.get((key, gpu_uuid))
        return tr.series.window(seconds) if tr else EMPTY

    def _series(self, table: dict[str, Series], uuid: str) -> Series:
        s = table.get(uuid)
        if s is None:
            s = table[uuid] = Series(self.points)
        return s

    def _touch(
        self, table: dict[tuple[ProcessKey, str], Track], key: tuple[ProcessKey, str], t: float, meta: ProcessMeta
    ) -> Track:
        tr = table.get(key)
        if tr is None:
            if len(self.processes) + len(self.trees) >= self.max_tracks:
                self._evict_one()
            tr = table[key] = Track(Series(self.points), first_seen=t, last_seen=t, meta=meta)
        tr.last_seen = t
        tr.meta = meta
        return tr

    def _evict_one(self) -> None:
        """Make room: drop the least recently seen tenth of the tracks at once, so that a box with more
        processes than `max_tracks` pays one sort per many arrivals rather than a scan per arrival."""
        candidates = [(tr.last_seen, 0, k) for k, tr in self.processes.items()]
        candidates += [(tr.last_seen, 1, k) for k, tr in self.trees.items()]
        candidates.sort(key=lambda c: c[0])
        for _, which, key in candidates[: max(1, len(candidates) // 10)]:
            (self.processes if which == 0 else self.trees).pop(key, None)

    def _prune(self, now: float) -> None:
        for table in (self.processes, self.trees):
            stale = [k for k, tr in table.items() if now - tr.last_seen > self.retain_seconds]
            for k in stale:
                del table[k]
        for key in [k for k, ring in self.torch.items() if now - ring[-1][0] > self.retain_seconds]:
            del self.torch[key]
        for pk in [k for k, (t, _) in self.exits.items() if now - t > self.retain_seconds]:
            del self.exits[pk]
