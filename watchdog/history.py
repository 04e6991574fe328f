"""Bounded memory of the last hour: the windows the detectors read.

Each series holds at most `capacity` points (t, value) in two append-only `array('d')`, 16 bytes a point,
plus its staircases (at most 8 bytes a point) and a dropped prefix of at most a quarter of the capacity until
the arrays are compacted: a series of one hour at 1 Hz costs at most 108 kB, so the daemon's memory has a
bound known in advance (`History.capacity_bytes`), and a short-lived process costs only what it lived.
Series exist per GPU (used and free bytes), per process identity and GPU, and per process tree and GPU (a
launcher's workers summed). A tree that has only ever been its root process (most trees) holds that process's
series, not a copy of it. A process that has exited keeps its series for `retain_seconds` (the crash/OOM
detectors look back at it), then its memory is returned.
"""

from __future__ import annotations

import math
import threading
from array import array
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass
from itertools import chain

from .model import ProcessExit, ProcessKey, ProcessMeta, ProcessSample, Snapshot, TorchStats

#: Agent samples kept per (pid, device): ten minutes at 1 Hz, what the fragmentation detector looks at.
TORCH_POINTS = 600

#: One float64 time, one float64 value, and at most one int64 in the series' two staircases (a point is in
#: both only while it is the newest), times 1.25 for the dropped prefix kept until the arrays are compacted.
POINT_BYTES = 30


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
    """The points of one series in time order, at most `capacity` of them; the oldest are dropped first.

    The points live in two append-only `array('d')`; the live ones are the last `len(self)`. Once the dropped
    prefix reaches a quarter of the capacity, the live points are copied into fresh arrays (amortised O(1) per
    point, memory at most 1.25x the capacity). Nothing ever writes over a point already stored: a `View` can
    keep a reference to the arrays and an index range instead of a copy, and stays true whatever is appended.

    Each series also carries the staircases of its suffix minima and maxima (the monotonic stacks of the
    points no later point undercuts, or exceeds): the least and the most a series held from any time to now
    are a bisection away instead of a scan of the window. The detectors ask exactly that, for every process at
    every tick (the floor since warm-up, "has it moved in ten minutes"), so the tick costs O(log n) per
    process rather than O(n).
    """

    __slots__ = ("_base", "_lo", "_maxs", "_mins", "_rebase_at", "_run", "_t", "_v", "appended", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._t = array("d")
        self._v = array("d")
        self._lo = 0  # array index of the oldest live point
        self._base = 0  # how many points were appended before the arrays' index 0
        self._rebase_at = max(16, capacity // 4)  # dropped points that make the arrays start afresh
        self.appended = 0  # every point ever appended: a View's stamp
        # Staircases as absolute point numbers (appended-count), oldest first. Their oldest steps may be points
        # already dropped: every lookup starts from a live point's number, and the steps, live or not, still
        # rise (fall) in value from the oldest to the newest, so those lookups skip them. They go when the arrays
        # start afresh, so that dropping a point reads nothing (it happens to every series at every tick once
        # the history is full).
        self._mins = array("q")
        self._maxs = array("q")
        # The point number where the newest run of equal values began: "has it held still since t" is one
        # comparison (a process between allocations: most of them, most ticks).
        self._run = 0

    def __len__(self) -> int:
        return len(self._t) - self._lo

    def append(self, t: float, value: float) -> None:
        v = self._v
        mins, maxs = self._mins, self._maxs
        if v and v[-1] == value:
            # The value held (most series, most ticks): the newest point ends both staircases, and every other
            # step of them is strictly below (above) it, so the new point only takes its place there.
            mins[-1] = maxs[-1] = self.appended
        else:
            base = self._base
            while mins and v[mins[-1] - base] >= value:
                mins.pop()
            while maxs and v[maxs[-1] - base] <= value:
                maxs.pop()
            self._run = self.appended
            mins.append(self.appended)
            maxs.append(self.appended)
        self._t.append(t)
        v.append(value)
        self.appended += 1
        if len(self._t) - self._lo > self.capacity:
            self._lo += 1  # the oldest point leaves
            if self._lo >= self._rebase_at:
                self._rebase()

    def _rebase(self) -> None:
        # Fresh arrays, never a shift in place: Views over the old ones stay valid.
        self._t, self._v = self._t[self._lo :], self._v[self._lo :]
        self._base += self._lo
        self._lo = 0
        self._mins, self._maxs = self._live_steps()

    def _live_steps(self) -> tuple[array[int], array[int]]:
        # The staircases without their steps older than the oldest live point.
        oldest = self._base + self._lo
        return self._mins[bisect_left(self._mins, oldest) :], self._maxs[bisect_left(self._maxs, oldest) :]

    def copy(self) -> Series:
        """An independent series holding the same points, which answers everything the same."""
        out = Series(self.capacity)
        out.appended, out._run = self.appended, self._run
        out._t, out._v, out._base = self._t[self._lo :], self._v[self._lo :], self._base + self._lo
        out._mins, out._maxs = self._live_steps()
        return out

    def arrays(self) -> tuple[array[float], array[float]]:
        """(times, values), oldest first, as new arrays."""
        return self._t[self._lo :], self._v[self._lo :]

    def storage(self) -> tuple[array[float], array[float], int, int]:
        """(times, values, first, end): the live points are `[first, end)` of the arrays, which nothing
        overwrites. For `View`, which reads them without copying."""
        return self._t, self._v, self._lo, len(self._t)

    def suffix_min(self, i: int) -> float:
        """The least value from array index `i` to the newest point (the floor since then)."""
        k = bisect_left(self._mins, i + self._base)
        return self._v[self._mins[k] - self._base]

    def last_below(self, x: float, i: int) -> int:
        """The array index of the newest point from array index `i` on whose value is below `x` (-1 when none).

        That point is a step of the suffix-minima staircase (no later point undercuts it), and the steps' values
        rise from the oldest to the newest: one bisection of the staircase finds it."""
        v, base = self._v, self._base
        k = bisect_left(self._mins, x, key=lambda p: v[p - base])  # the first step not below x
        if k == 0:
            return -1
        q = self._mins[k - 1] - base
        return q if q >= i else -1

    def held_since(self, points: int) -> bool:
        """True when every point appended after the first `points` holds the value of the last of them (and at
        least `points` were appended): what was concluded from those points still describes the series, apart
        from its newest times and whatever left the window."""
        return self._run < points <= self.appended

    def run_start(self) -> int:
        """The array index where the newest run of equal values began (below the live points when it began
        before them)."""
        return self._run - self._base

    def suffix_argmin(self, i: int) -> int:
        """The array index of the newest point holding the least value from array index `i` on."""
        k = bisect_left(self._mins, i + self._base)
        return self._mins[k] - self._base

    def suffix_max(self, i: int) -> float:
        """The largest value from array index `i` to the newest point."""
        k = bisect_left(self._maxs, i + self._base)
        return self._v[self._maxs[k] - self._base]

    def last(self) -> tuple[float, float] | None:
        if len(self._t) == self._lo:
            return None
        return self._t[-1], self._v[-1]

    def window(self, seconds: float | None = None) -> Window:
        """The points of the last `seconds` before the newest point (all of them when None), as tuples."""
        if len(self._t) == self._lo:
            return EMPTY
        i = self._lo if seconds is None else bisect_left(self._t, self._t[-1] - seconds, self._lo)
        return Window(tuple(self._t[i:]), tuple(self._v[i:]))


@dataclass(slots=True)
class Track:
    """The series of one process (or tree) on one GPU, with when it was first and last seen."""

    series: Series
    first_seen: float
    last_seen: float
    meta: ProcessMeta | None = None
    #: What a detector concluded from this series at its last look, kept so that it need not look again while the
    #: series holds its value (most series, most ticks). Only that detector reads it, and it is a cache: what it
    #: holds is what the points imply, checked against the series (`Series.held_since`) before any use.
    carried: object = None


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
        #: When each GPU was first read, not trimmed with the window: what was on it then was there before vramwatch.
        self.gpu_first: dict[str, float] = {}
        self.processes: dict[tuple[ProcessKey, str], Track] = {}
        self.trees: dict[tuple[ProcessKey, str], Track] = {}
        self.latest: Snapshot | None = None
        self.previous: Snapshot | None = None
        # (pid, device) -> recent (t, TorchStats) from in-process agents; bounded like every other series.
        self.torch: dict[tuple[int, int], deque[tuple[float, TorchStats]]] = {}
        # How processes that left ended, where the system could tell (kept as long as their tracks).
        self.exits: dict[ProcessKey, tuple[float, ProcessExit]] = {}
        #: Held by `add` while it changes any series. A thread other than the one that calls `add` (a scrape, the
        #: live page) holds it for the whole of any question it asks a `View` of these series: it then sees each
        #: series as it was before an append or after it, never in the middle of one (an append rewrites the
        #: newest steps of the staircases that a live view reads).
        self.lock = threading.Lock()

    def capacity_bytes(self, gpus: int) -> int:
        """Upper bound of the series memory for `gpus` GPUs: what `--history` costs, known in advance."""
        return POINT_BYTES * self.points * (2 * gpus + self.max_tracks)

    def add(self, snap: Snapshot) -> None:
        """Append one tick to every series it touches and drop tracks not seen for `retain_seconds`."""
        with self.lock:
            self._add(snap)

    def _add(self, snap: Snapshot) -> None:
        self.previous, self.latest = self.latest, snap
        for g in snap.gpus:
            if not g.up or g.used_bytes is None:
                continue  # a lost GPU leaves a gap, not a fake zero
            self._series(self.gpu_used, g.uuid).append(snap.t, g.used_bytes)
            self.gpu_first.setdefault(g.uuid, snap.t)
            if g.free_bytes is not None:
                self._series(self.gpu_free, g.uuid).append(snap.t, g.free_bytes)
            if g.total_bytes is not None:
                self.gpu_total[g.uuid] = g.total_bytes
        t = snap.t
        listed = [p for p in snap.processes if p.used_bytes is not None]
        roots, rest = self._lone_roots(listed)
        for p, track, tree in roots:
            # (`_touch`'s work on both tracks, without a call: most processes, every tick)
            track.last_seen = tree.last_seen = t
            track.meta = tree.meta = p.meta
            track.series.append(t, p.used_bytes or 0)
        self._add_processes(rest, t)
        for ex in snap.exits:
            self.exits[ex.key] = (snap.t, ex)
        for ts in snap.torch:
            ring = self.torch.get((ts.pid, ts.device))
            if ring is None:
                ring = self.torch[(ts.pid, ts.device)] = deque(maxlen=TORCH_POINTS)
            ring.append((snap.t, ts))
        self._prune(snap.t)

    def _lone_roots(
        self, listed: list[ProcessSample]
    ) -> tuple[list[tuple[ProcessSample, Track, Track]], list[ProcessSample]]:
        """Split a tick's processes (bytes known) into the trees that were, and still are, their root alone (their
        tree's track shares the root's series: one append and two timestamps), and the rest, in their order, for
        `_add_processes`. Nearly every process of a card is the first kind at nearly every tick.

        Whatever `_add_processes` would do to the first kind, this does: the same appends and stamps, in another
        order. Only an eviction could tell the orders apart (it drops the least recently stamped tracks, and
        `_add_processes` stamps processes before trees), so nothing is split off when the rest could make enough
        new tracks to reach `max_tracks`."""
        processes, trees = self.processes, self.trees
        roots: dict[tuple[ProcessKey, str], tuple[ProcessSample, Track, Track]] = {}
        rest: list[ProcessSample] = []
        twice = False
        for p in listed:
            key = p.key
            if key is p.tree_key:
                pk = (key, p.gpu_uuid)
                track = processes.get(pk)
                if track is not None:
                    tree = trees.get(pk)
                    if tree is not None and tree.series is track.series:
                        twice = twice or pk in roots
                        roots[pk] = (p, track, tree)
                        continue
            rest.append(p)
        if rest:
            # A worker's tree, or a process listed again in another's tree, is not its root alone.
            before = len(roots)
            for p in rest:
                roots.pop((p.key, p.gpu_uuid), None)
                roots.pop((p.tree_key, p.gpu_uuid), None)
            if len(roots) < before:
                rest = [p for p in listed if (p.key, p.gpu_uuid) not in roots]
        if twice or len(processes) + len(trees) + 2 * len(rest) > self.max_tracks:
            return [], listed
        return list(roots.values()), rest

    def _add_processes(self, listed: list[ProcessSample], t: float) -> None:
        """Append a tick's processes (bytes known) to their tracks and their trees' tracks."""
        processes, tracks = self.processes, self.trees
        # Most trees are one process that is its own root (a notebook, a server, a single-process trainer, an MPS
        # client). Such a tree's series is its root's own: one object, appended once. It shares that series only
        # while the tree has been its root alone since its track began: at the first tick when it is anything
        # else, it gets a copy of the points so far and goes its own way.
        trees: dict[tuple[ProcessKey, str], tuple[int, ProcessMeta, bool]] = {}  # total, last meta, root alone
        # Processes counted in another's tree: a tree of their own key that shares their series must split from it.
        foreign: list[tuple[ProcessKey, str]] = []
        for p in listed:
            used, key, tree = p.used_bytes or 0, p.key, p.tree_key
            tk = (tree, p.gpu_uuid)
            prev = trees.get(tk)
            trees[tk] = (prev[0] + used, p.meta, False) if prev else (used, p.meta, key is tree)
            if key is not tree:
                foreign.append((key, p.gpu_uuid))
        for fk in foreign:  # the same process listed twice, once in another's tree: its own tree is not it alone
            entry = trees.get(fk)
            if entry is not None and entry[2]:
                trees[fk] = (entry[0], entry[1], False)
        # The trees whose point this tick is their root's: their series, and how many points it had before.
        shared: dict[tuple[ProcessKey, str], tuple[Series, int]] = {}
        for tk in chain(trees, foreign):
            tr, root = tracks.get(tk), processes.get(tk)
            if tr is not None and root is not None and root.series is tr.series:
                entry = trees.get(tk)
                if entry is not None and entry[2]:
                    shared[tk] = (tr.series, tr.series.appended)
                else:
                    tr.series = tr.series.copy()
        for p in listed:
            pk = (p.key, p.gpu_uuid)
            track = processes.get(pk)
            if track is None:
                track = self._touch(processes, pk, t, p.meta)
            else:
                track.last_seen, track.meta = t, p.meta
            track.series.append(t, p.used_bytes or 0)
        for tk, (total, meta, alone) in trees.items():
            if alone:
                tr, was = tracks.get(tk), shared.get(tk)
                if was is not None and tr is not None and tr.series is was[0] and was[0].appended == was[1] + 1:
                    # The root's append above was this point (unless an eviction gave the root a new track).
                    tr.last_seen, tr.meta = t, meta
                    continue
                root = processes.get(tk) if tr is None and was is None else None
                if root is not None and len(root.series) == 1:  # both begin now, with the root's point
                    self._touch(tracks, tk, t, meta, root.series)
                    continue
            self._touch(tracks, tk, t, meta).series.append(t, total)

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
        self,
        table: dict[tuple[ProcessKey, str], Track],
        key: tuple[ProcessKey, str],
        t: float,
        meta: ProcessMeta,
        series: Series | None = None,
    ) -> Track:
        """The track of `key`, made (on `series`, else a new one) if there is none, seen at `t`."""
        tr = table.get(key)
        if tr is None:
            if len(self.processes) + len(self.trees) >= self.max_tracks:
                self._evict_one()
            tr = table[key] = Track(
                Series(self.points) if series is None else series, first_seen=t, last_seen=t, meta=meta
            )
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
