"""Is a run's climb PyTorch's cache? Its agent's own figures say so (`vramwatch run`, or the agent imported).

NVML sees a PyTorch process as its CUDA context plus what the caching allocator reserved; the agent also reports what
its tensors hold (allocated). A run whose cache keeps growing (sequence-length warm-up, bucketed shapes, blocks split
into pieces) climbs in NVML's eyes as a leak does, to the card's end. There, when a cudaMalloc fails, PyTorch frees
every cached block it is not using and retries (ceiling.py): a climb of cache is no OOM on its way. What runs out is
what the tensors need at their peak, and that is what a leak raises.

So a tree is *caching* over a window when, for every process of it on this GPU whose memory rose there by more than
`min_rise_bytes`, the agent reported all along that window (from its first tenth on, until a few seconds ago, three
reports at least in each third) and:

- the most its tensors were seen to hold does not rise steadily: not by more than `min_rise_bytes` over the window,
  or not in each of its thirds (what a step needs is its peak, and 1 Hz samples fall anywhere in a step: the most
  seen since the run appeared is the peak's best estimate. A leak or a peak that grows raises it all along; a
  validation or a first sampling phase raises it once, and the cache it climbs on is given back all the same);
- its reserved memory rose by 80 % at least of what NVML saw it rise (the climb is the allocator's, not another
  library's: cuBLAS workspaces, NCCL buffers or a second allocator are not given back; a report lags NVML's read by
  up to a second or two).

Without the agent, or with a gap in its reports, nothing is concluded: the run is judged by NVML alone, as before.
A leak beneath the cache (tensors kept alive) and a peak that grows (a longer sequence needs more) raise the tensors'
peak, so they stay growers. Pure: reads the history, no clock, no I/O.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left
from collections.abc import Sequence

from ..model import TorchStats
from ._context import GpuContext, Tree
from ._series import view

#: The agent's reports must reach back to the window's first tenth, and to this many seconds before the newest tick
#: (the daemon takes an agent's report up to 5 s old; an agent that went quiet vouches for nothing).
COVER_SHARE = 0.1
STALE_SECONDS = 5.0
#: Reserved memory must have risen by this share of NVML's rise at least: a report lags NVML's read by up to a second
#: or two, which at 400 MB/s is more than `min_rise_bytes`.
ALLOCATOR_SHARE = 0.8
#: At least this many reports in each third of the window.
MIN_POINTS = 3


def caching(ctx: GpuContext, tree: Tree, since: float) -> bool:
    """True when the agent says the tree's climb on this GPU since `since` is its PyTorch cache (see the module)."""
    now, config = ctx.now, ctx.config
    if now - since <= 0:
        return False
    climbed = False
    for p in tree.members:
        track = ctx.history.processes.get((p.key, ctx.uuid))
        if track is None:
            return False
        nvml = view(track.series).since(since)
        if len(nvml) < 2:
            return False
        nvml_rise = _rise(nvml.t, nvml.v, since, now)
        if nvml_rise <= config.min_rise_bytes:
            continue  # this member did not climb: nothing to explain
        points = _reports(ctx, p.pid, track.first_seen, since)
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
        if min(first - start, len(a) - last) < MIN_POINTS:
            return False
        if _steady(a, start, first, last, min_rise=config.min_rise_bytes, noise=config.noise_bytes):
            return False  # the tensors' peak rises steadily: a leak, or a peak that grows
        # (Both rises over the same span: from the agent's first report in the window.)
        same = nvml.since(ts[start])
        if _rise(ts[start:], r[start:], ts[start], now) < ALLOCATOR_SHARE * _rise(same.t, same.v, ts[start], now):
            return False  # not the allocator's climb
        climbed = True
    return climbed


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


def _steady(allocated: Sequence[float], start: int, first: int, last: int, *, min_rise: float, noise: float) -> bool:
    """The most seen so far rose by more than `min_rise` from the window's start (`start`), and by more than `noise` in
    each third of it (`first`, `last`: where the second and the third begin)."""
    marks = [max(allocated[: max(1, start)]), max(allocated[:first]), max(allocated[:last]), max(allocated)]
    if marks[-1] - marks[0] <= min_rise:
        return False
    return all(b - a > noise for a, b in itertools.pairwise(marks))


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
