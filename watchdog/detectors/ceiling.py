"""A run that lived through a full card: PyTorch gives its cache back at the card's end, and goes on.

When a cudaMalloc fails, PyTorch's caching allocator frees every cached block it is not using and retries
(`num_alloc_retries`); when the retry succeeds, the run goes on. A run whose cache keeps growing (a sequence-length
warm-up, bucketed resolutions, fragmentation) therefore climbs to the card's end, falls by all it had cached, climbs
again as its cache refills, and falls again: a sawtooth at the ceiling that does not run out of memory (DeepSpeed
and Lightning log it as "allocator cache flushes"). Each climb looks like a leak heading for the card's end, and it
is heading there: it has been there before, and lived.

What such a run needs is what it falls to (its trough), not what it climbs to (its cache). A leak beneath the cache
raises the troughs until they reach the ceiling; a cache that refills does not. So a run *rides the ceiling* when:

- it fell from a card with less than `ceiling_free_bytes` free, by more than `min_rise_bytes`, within
  `CEILING_MEMORY_SECONDS`, and lived (it is still on the card);
- it now holds no more than it could hold when it fell (what it held and what was free then): it is climbing back
  to the ceiling it lived at;
- its troughs do not rise towards the ceiling: from its earliest known trough (the least it held past its warm-up
  and before its oldest remembered fall, else the least it held after that fall) to the least it held since its
  newest fall, less `min_rise_bytes` and what a 1-Hz read a tick late adds, the troughs would not reach all it can
  hold now (what it holds and what is free) within the caller's horizon (the forecast's warning horizon; for the
  leak claim, the longest window the growth tests look at).

With no trough before to compare (a young run whose first climb reached the card's end, a run first seen climbing),
it rides: its first climb was forecast as any climb is, and from NVML a leak beneath a cache cannot be told from the
cache. The forecast and the leak claim both ask `riding` (docs/detection.md, "A cache that refills at the card's
end").
"""

from __future__ import annotations

from dataclasses import dataclass

from ..history import Track
from ._context import GpuContext
from ._series import View, first_still, view

#: How far back a fall from a full card is remembered: a cache that takes longer than this to fill the card again is
#: judged as any climb is.
CEILING_MEMORY_SECONDS = 1800.0


@dataclass(frozen=True, slots=True)
class Fall:
    """The run fell from a full card at `t` (its last point there), from `level_bytes`, `free_bytes` being free."""

    t: float
    level_bytes: int
    free_bytes: int

    @property
    def ceiling_bytes(self) -> int:
        """The most it could have held then: what it held and what was free."""
        return self.level_bytes + self.free_bytes


@dataclass(frozen=True, slots=True)
class Ride:
    """A run riding the ceiling: its newest fall, the least it held since, and its earliest known trough (None:
    none is known)."""

    fall: Fall
    trough_bytes: int
    first_trough_bytes: int | None


def falls(ctx: GpuContext, series: View) -> list[Fall]:
    """The run's falls from a full card within `CEILING_MEMORY_SECONDS`, newest first: a point with less than
    `ceiling_free_bytes` free on the card, and the run's next point lower by more than `min_rise_bytes`."""
    config = ctx.config
    recent = series.since(ctx.now - CEILING_MEMORY_SECONDS)
    ts, vs = recent.t, recent.v
    out = []
    for k in range(len(vs) - 2, -1, -1):
        if vs[k] - vs[k + 1] > config.min_rise_bytes:
            free = ctx.free.value_at(ts[k])
            if free is not None and free <= config.ceiling_free_bytes:
                out.append(Fall(ts[k], int(vs[k]), int(free)))
    return out


def riding(
    ctx: GpuContext, track: Track, *, horizon_seconds: float, warmup_seconds: float, settle_seconds: float
) -> Ride | None:
    """The run's ride at the ceiling when it is riding it (see the module's docstring), else None. `horizon_seconds`:
    troughs that would reach the ceiling within this are a leak beneath the cache; `warmup_seconds`, `settle_seconds`:
    what a warming run is (the forecast's: younger than the one, never still for the other)."""
    series = view(track.series)
    if len(series) < 3 or ctx.free_bytes is None:
        return None
    found = falls(ctx, series)
    if not found:
        return None
    newest = found[0]
    now_held = series.last_value
    if now_held > newest.ceiling_bytes + ctx.config.noise_bytes:
        return None  # above the ceiling it lived at (others made room): growing past it, judged as any run is
    trough, low_at, high_by = _trough(series.since(newest.t + 1e-9))
    if len(found) < 2:
        # One fall: its troughs cannot be compared yet (what it held before it fell was cache too). A run still warming
        # when it fell (younger than `forecast_warmup_seconds`, never still for `settle_seconds`) climbed from its load
        # to the card's end filling its cache; one that had settled, or was older, may have climbed as a leak does
        # (a leak that steps), and is judged as any run until it falls again.
        first = series.before(newest.t)
        warming = newest.t - track.first_seen < warmup_seconds
        if not warming or first_still(first.t, first.v, settle_seconds, ctx.config.noise_bytes) is not None:
            return None
        return Ride(newest, int(trough), None)
    earliest = series.between(found[-1].t + 1e-9, found[-2].t)
    low0, t0, _ = _trough(earliest)
    ride = Ride(newest, int(trough), int(low0))
    # Over the longest span remembered, so that what one trough reads high or low (how much of a step was live when
    # the cache went back) weighs little; a trough read a tick after the bottom is high by that tick's climb.
    rise = trough - low0 - high_by - ctx.config.min_rise_bytes
    if rise <= 0:
        return ride
    room = now_held + ctx.free_bytes - ctx.config.oom_margin_bytes - trough
    return ride if room / (rise / max(1.0, low_at - t0)) > horizon_seconds else None


def _trough(after: View) -> tuple[float, float, float]:
    """(the least the run held since a fall, when it last held it, how much the next point rose): a 1-Hz read comes
    up to a tick after the bottom, so a trough can read high by that much."""
    vs = after.v
    low = min(vs)
    j = max(k for k, v in enumerate(vs) if v <= low)
    return low, after.t[j], max(0.0, vs[j + 1] - vs[j]) if j + 1 < len(vs) else 0.0
