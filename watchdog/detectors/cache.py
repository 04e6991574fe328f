"""Is a run's climb PyTorch's cache? Its agent's own figures say so (`vramwatch run`, or the agent imported).

NVML sees a PyTorch process as its CUDA context plus what the caching allocator reserved; the agent also reports what
its tensors hold (allocated). A run whose cache keeps growing (sequence-length warm-up, bucketed shapes, blocks split
into pieces) climbs in NVML's eyes as a leak does, to the card's end. There, when a cudaMalloc fails, PyTorch frees
every cached block it is not using and retries (ceiling.py): a climb of cache is no OOM on its way. What runs out is
what the tensors need at their peak, and that is what a leak raises.

So a tree is *caching* over a window when, for every process of it on this GPU whose memory rose there by more than
`min_rise_bytes` (and those that rose less, together, by no more than that), the agent reported all along that window
(from its first tenth on, until 5 s ago at most, three reports at least in each third) and:

- the least its tensors held did not rise by more than `min_rise_bytes` from the window's first third to its last
  (tensors kept alive, a leak, raise it whatever the peaks do);
- the most they were seen to hold does not rise steadily (by more than `min_rise_bytes` in all, rising in each
  third), either over the run's past (the most seen since it appeared, the peak's best estimate) or within the
  window (the most of each third): a peak that grows does; a validation or a first sampling phase raises it once,
  and the cache it climbs on is given back all the same;
- its reserved memory rose by as much as NVML saw it rise, less what two seconds of that climb add (a report lags
  NVML's read) or `min_rise_bytes`: the climb is the allocator's, not another library's (cuBLAS workspaces, NCCL
  buffers or a second allocator are not given back).

What the forecast makes of it (forecast.py): the critical forecast stays, tentative, and says so. A policy asks the run
to save and ends nothing. It is not dropped: the agent reads allocated once a second, mostly between steps on a
GPU-bound trainer, and can miss a peak that grows; and a cache that fills the card starves a neighbour, which PyTorch
does not flush for. Without the agent, or with a gap in its reports, nothing is concluded. Pure: reads the history,
no clock, no I/O.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left
from collections.abc import Sequence

from ..model import TorchStats
from ._context import GpuContext, Tree
from ._series import View, view
from .config import DetectorConfig

#: The agent's reports must reach back to the window's first tenth, and to this many seconds before the newest tick
#: (the daemon takes an agent's report up to 5 s old; an agent that went quiet vouches for nothing).
COVER_SHARE = 0.1
STALE_SECONDS = 5.0
#: How far a report can lag NVML's read (the agent reports once a second, the daemon keeps its newest).
LAG_SECONDS = 2.0
#: At least this many reports in each third of the window.
MIN_POINTS = 3


def caching(ctx: GpuContext, tree: Tree, since: float) -> bool:
    """True when the agent says the tree's climb on this GPU since `since` is its PyTorch cache (see the module)."""
    now, config = ctx.now, ctx.config
    if now - since <= 0:
        return False
    climbed = False
    unexplained = 0.0  # what the members that rose less than `min_rise_bytes` each rose, together
    for p in tree.members:
        track = ctx.history.processes.get((p.key, ctx.uuid))
        if track is None:
            return False
        nvml = view(track.series).since(since)
        if len(nvml) < 2:
            return False
        rise = _rise(nvml.t, nvml.v, since, now)
        if rise <= config.min_rise_bytes:
            unexplained += max(0.0, rise)
            continue
        if not _cache_of(ctx, p.pid, track.first_seen, nvml, since):
            return False
        climbed = True
    # Six workers each rising a little are a climb too, and the agent vouched for none of it.
    return climbed and unexplained <= config.min_rise_bytes


def _cache_of(ctx: GpuContext, pid: int, first_seen: float, nvml: View, since: float) -> bool:
    """The agent's reports of one process say its climb (`nvml`, from `since`) is its allocator's cache."""
    now, config = ctx.now, ctx.config
    points = _reports(ctx, pid, first_seen, since)
    if points is None:
        return False
    ts = [t for t, _ in points]
    allocated = [s.allocated_bytes for _, s in points]
    reserved = [s.reserved_bytes for _, s in points]
    if any(a is None for a in allocated) or any(r is None for r in reserved):
        return False
    a = [float(v) for v in allocated if v is not None]
    r = [float(v) for v in reserved if v is not None]
    start = bisect_left(ts, since)
    first, last = _thirds(ts, since, now)
    if min(first - start, last - first, len(a) - last) < MIN_POINTS:
        return False
    thirds = (a[start:first], a[first:last], a[last:])
    if min(thirds[2]) - min(thirds[0]) > config.min_rise_bytes:
        return False  # the tensors' floor rose: tensors kept alive (a leak), whatever the peaks did
    # The most seen since the run appeared, at the window's start and at the end of each third; and the most of each
    # third, from the window's first report (a peak growing beneath an old, higher one: a long-gone validation's).
    seen = [max(a[: max(1, start)]), max(a[:first]), max(a[:last]), max(a)]
    within = [a[start], *(max(part) for part in thirds)]
    if _steady(seen, config) or _steady(within, config):
        return False  # the tensors' peak rises steadily, over the run's past or within the window: it needs more
    # Both rises over the same span, from the agent's first report in the window; a report lags NVML's read by up to
    # `LAG_SECONDS`, which at 400 MB/s is more than `min_rise_bytes`.
    same = nvml.since(ts[start])
    climb = _rise(same.t, same.v, ts[start], now)
    lag = max(config.min_rise_bytes, climb / max(1.0, now - ts[start]) * LAG_SECONDS)
    return _rise(ts[start:], r[start:], ts[start], now) >= climb - lag  # else not the allocator's climb


def _reports(ctx: GpuContext, pid: int, first_seen: float, since: float) -> list[tuple[float, TorchStats]] | None:
    """The agent's reports of `pid` on this GPU since the process was first seen, when they cover the window from
    `since` (else None)."""
    points: list[tuple[float, TorchStats]] | None = None
    for (owner, _device), ring in ctx.history.torch.items():
        if owner != pid or not ring or ring[-1][1].gpu_uuid != ctx.uuid:
            continue
        # (A pid reused by a new process appends to the old ring: only the points since this one was first seen.)
        points = [(t, s) for t, s in ring if t >= first_seen]
        break
    if not points:
        return None
    begun = next((t for t, _ in points if t >= since), None)
    if begun is None or begun > since + COVER_SHARE * (ctx.now - since) or points[-1][0] < ctx.now - STALE_SECONDS:
        return None
    return points


def _steady(marks: Sequence[float], config: DetectorConfig) -> bool:
    """The marks (a value at the window's start, then one per third) rose by more than `min_rise_bytes` in all, and
    by more than `noise_bytes` in each third: what a leak or a growing need does, and a validation's one jump does
    not."""
    if marks[-1] - marks[0] <= config.min_rise_bytes:
        return False
    return all(b - a > config.noise_bytes for a, b in itertools.pairwise(marks))


def _thirds(ts: Sequence[float], since: float, now: float) -> tuple[int, int]:
    """Indices that end the window's first third and begin its last third."""
    span = now - since
    return bisect_left(ts, since + span / 3), bisect_left(ts, now - span / 3)


def _rise(ts: Sequence[float], vs: Sequence[float], since: float, now: float) -> float:
    """How much the series rose over the window: the most of its last third less the least of its first."""
    first, last = _thirds(ts, since, now)
    if first == 0 or last >= len(vs):
        return vs[-1] - vs[0]
    return max(vs[last:]) - min(vs[:first])
