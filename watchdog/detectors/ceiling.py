"""A run that lived through a full card: PyTorch gives its cache back at the card's end, and goes on.

When a cudaMalloc fails, PyTorch's caching allocator frees every cached block it is not using and retries
(`num_alloc_retries`); when the retry succeeds, the run goes on. A run whose cache keeps growing (a sequence-length
warm-up, bucketed resolutions, fragmentation) therefore climbs to the card's end, falls by all it had cached, climbs
again as its cache refills, and falls again: a sawtooth at the ceiling that does not run out of memory (DeepSpeed
and Lightning log it as "allocator cache flushes"). Each climb looks like a leak heading for the card's end, and it
is heading there: it has been there before, and lived.

What such a run needs is what it falls to (its trough), not what it climbs to (its cache). A leak beneath the cache
raises the troughs until they reach the ceiling; a cache that refills does not. So a run *rides the ceiling* when:

- it fell from a card with at most `ceiling_free_bytes` free, by more than `min_rise_bytes` (over one read or
  several in a row), within `CEILING_MEMORY_SECONDS`, and lived (it is still on the card);
- it holds no more than it could hold when it fell (what it held and what was free then): it is climbing back to
  the ceiling it lived at;
- its climb since its newest fall has lasted no more than twice its longest cycle (between two falls; for its first,
  from when it appeared): a cache refills about as fast as it did, and a climb that goes on far longer is something
  else (a leak that began once the cache stopped falling);
- its troughs do not rise towards the ceiling: the least it held since its newest fall, against the least it held
  after its oldest remembered fall and the highest trough since (the faster of the two rates), less
  `min_rise_bytes`, what a read a tick after the bottom adds and how much troughs showed they vary without a trend
  (the most one came in below the one before it, or stood above the straight line from the oldest to the newest: a
  leak's do not fall back, and rise at least as fast at the end as before), would not reach all it can hold now (what
  it holds and what is free) within the caller's horizon (the forecast's warning horizon; for the leak claim, the
  longest window the growth tests look at);
- a rise that rests on the newest trough alone (the troughs before it, by themselves, did not rise fast enough to get
  there: the first comparison, two falls; or the first trough above a level) is weak evidence: how far troughs vary by
  chance is not known well enough yet. Such a run rides, with the rise noted (`Ride.rose`): the forecast names it
  tentatively (a policy asks it to save and ends nothing), the leak claim waits for the next trough to say it again;
- with one fall only, troughs cannot be compared yet (what it held before it fell was cache too): it rides only if
  it was still warming when it fell (younger than the forecast's warm-up, never still for its settle time), a climb
  from its load to the card's end. A run that had settled may have climbed as a leak does, and is judged as any run
  until it falls again.

The forecast and the leak claim ask `riding` through `forecast.ceiling_says` (which also lets be a run that has just
fallen, `giving_back`), the post-mortem through `forecast.rides_ceiling` (docs/detection.md, "A cache that refills at
the card's end lived there").
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from ..history import Track
from ._context import GpuContext
from ._series import View, first_still, view

#: How far back a fall from a full card is remembered: a cache that takes longer than this to fill the card again is
#: judged as any climb is.
CEILING_MEMORY_SECONDS = 1800.0


@dataclass(frozen=True, slots=True)
class Ride:
    """A run rides the ceiling (`riding`). `rose`: its troughs rise, but the rise rests on the newest alone (the first
    comparison, or the first above a level), (the one before it, the newest) in bytes: a leak beneath its cache or a
    flush caught mid-step, not told apart yet; None when they do not rise (its climbs refill a cache, no grower's)."""

    rose: tuple[int, int] | None = None

    @property
    def level(self) -> bool:
        return self.rose is None


#: A ride whose troughs do not rise.
LEVEL = Ride()


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


def falls(ctx: GpuContext, series: View, memory_seconds: float = CEILING_MEMORY_SECONDS) -> list[Fall]:
    """The run's falls from a full card within `memory_seconds`, newest first: from a point with at most
    `ceiling_free_bytes` free on the card, the run's next point lower by more than `min_rise_bytes`. A fall read over
    several points in a row (PyTorch's flush seen half done) is one fall, from the first of them."""
    config = ctx.config
    recent = series.since(ctx.now - memory_seconds)
    if not len(recent):
        return []
    # The card was never full in that time (every free read there, and the one the oldest point reads, above the
    # ceiling): no fall can be from a full card. Two C-level looks instead of one per drop (a sawtooth drops at every
    # read).
    before = ctx.free.value_at(recent.t[0])
    after = ctx.free.since(recent.t[0])
    if (before is None or before > config.ceiling_free_bytes) and (
        not len(after) or after.min() > config.ceiling_free_bytes
    ):
        return []
    ts, vs = recent.t, recent.v
    out: list[Fall] = []
    for k in range(len(vs) - 2, -1, -1):
        if vs[k] - vs[k + 1] > config.min_rise_bytes:
            free = ctx.free.value_at(ts[k])
            if free is not None and free <= config.ceiling_free_bytes:
                if out and out[-1].t == ts[k + 1]:
                    out.pop()  # the same fall, one read earlier
                out.append(Fall(ts[k], int(vs[k]), int(free)))
    return out


def riding(
    ctx: GpuContext,
    track: Track,
    *,
    horizon_seconds: float,
    warmup_seconds: float,
    settle_seconds: float,
    free_bytes: int | None = None,
) -> Ride | None:
    """How the run rides the ceiling, None when it does not (see the module's docstring). `horizon_seconds`:
    troughs that would reach the ceiling within this are a leak beneath the cache; `warmup_seconds`, `settle_seconds`:
    what a warming run is (the forecast's: younger than the one, never still for the other). `free_bytes`: the card's
    free memory with the run as it is last seen (the newest read's unless given: a vanished run's is the read before
    it left)."""
    free_now = ctx.free_bytes if free_bytes is None else free_bytes
    series = view(track.series)
    if len(series) < 3 or free_now is None:
        return None
    found = falls(ctx, series)
    if found and _falling(series, found[0]):
        found = found[1:]  # the newest fall is under way (read half done): judged by the ones before it
    if not found:
        return None
    newest = found[0]
    now_held = series.last_value
    if now_held > newest.ceiling_bytes + ctx.config.noise_bytes:
        return None  # above the ceiling it lived at (others made room): growing past it, judged as any run is
    starts = [f.t for f in reversed(found)]
    cycle = max([b - a for a, b in itertools.pairwise(starts)] or [starts[0] - track.first_seen])
    if series.now - newest.t > 2 * cycle:
        return None  # climbing far longer than its cache ever took to refill
    after = _trough(series.since(newest.t + 1e-9))
    if after is None:
        return None
    trough, low_at, high_by = after
    if len(found) < 2:
        # One fall: its troughs cannot be compared yet. A run still warming when it fell climbed from its load to the
        # card's end filling its cache; one that had settled, or was older, may have climbed as a leak does (a leak
        # that steps), and is judged as any run until it falls again.
        first = series.before(newest.t)
        warming = newest.t - track.first_seen < warmup_seconds
        settled = first_still(first.t, first.v, settle_seconds, ctx.config.noise_bytes) is not None
        return LEVEL if warming and not settled else None
    lows = [*_troughs(series, found), (trough, low_at)]
    # The troughs may reach all it can hold now (what it holds and what is free) within the horizon: a leak beneath
    # the cache. A read comes up to a tick after the bottom: the newest trough can read high by that tick's climb.
    left = now_held + free_now - ctx.config.oom_margin_bytes - trough
    slack = high_by + ctx.config.min_rise_bytes
    rate = _rate(lows, slack)
    if rate <= 0 or left / rate > horizon_seconds:
        return LEVEL
    # Did the troughs before the newest already rise, by themselves, fast enough to get there? Not when the newest is
    # the first compared (two falls), or the first above a level: the rise then rests on one trough, and how far
    # troughs vary without a trend is not known well enough yet. A leak's next trough says it again; chance seldom
    # does. Asked of every fall the history holds (a cache that takes 15 minutes or more to refill leaves only two in
    # the half hour remembered), and only here: a run whose troughs rise, rarely.
    before = _troughs(series, [f for f in falls(ctx, series, math.inf) if f.t <= newest.t])
    rate = _rate(before, slack)
    if rate <= 0 or left / rate > horizon_seconds:
        return Ride(rose=(int(before[-1][0] if before else trough), int(trough)))
    return None


def _troughs(series: View, found: list[Fall]) -> list[tuple[float, float]]:
    """(the least the run held between each two of its falls `found` (newest first), when), oldest first."""
    return [
        low for older, later in itertools.pairwise(reversed(found)) if (low := _trough_between(series, older, later))
    ]


def _rate(lows: list[tuple[float, float]], slack: float) -> float:
    """How fast troughs ((value, when), oldest first) rise, less `slack` and how much they vary without a trend
    (`_jitter`), in bytes a second (0 or less: they do not; so with fewer than two).

    The newest is set against the oldest (a long span: what one trough reads high or low, how much of a step was live
    when the cache went back, weighs little) and against the highest before it (a leak that began late: the newest
    stands above every one before it; noise seldom does, and by little)."""
    if len(lows) < 2:
        return 0.0
    (trough, low_at), earlier = lows[-1], lows[:-1]
    tolerance = slack + _jitter(lows)
    return max(
        (trough - low0 - tolerance) / max(1.0, low_at - t0)
        for low0, t0 in (earlier[0], max(earlier, key=lambda low: low[0]))
    )


def giving_back(ctx: GpuContext, series: View) -> bool:
    """The run fell from the card's end and has not risen since (PyTorch gave its cache back, this tick or the last
    few): whatever it climbed before, nothing of it climbs now."""
    previous = series.previous_value
    if previous is not None and series.last_value > previous:
        return False  # rising at this read (most growers, most ticks): not at a low since any fall, no scan needed
    found = falls(ctx, series)
    return bool(found) and _falling(series, found[0])


def _jitter(lows: list[tuple[float, float]]) -> float:
    """How much troughs ((value, when), oldest first) vary without a trend (how much of a step was live when the
    cache went back), by what they show of it: the most one came in below the one before it, or stood above the
    straight line from the oldest to the newest. A leak's troughs do not fall back, and rise at least as fast at the
    end as before (steady, or begun late: those before lie on or below that line)."""
    (v0, t0), (vn, tn) = lows[0], lows[-1]
    slope = (vn - v0) / max(1.0, tn - t0)
    above = (v - v0 - slope * (t - t0) for v, t in lows[1:-1])
    back = (a - b for (a, _), (b, _) in itertools.pairwise(lows))
    return max(0.0, *above, *back)


def _trough_between(series: View, older: Fall, later: Fall) -> tuple[float, float] | None:
    """(the least the run held after `older` and up to `later`, when it last held it)."""
    found = _trough(series.between(older.t + 1e-9, later.t + 1e-9))
    return None if found is None else found[:2]


def _falling(series: View, fall: Fall) -> bool:
    """The run has not risen since it fell (its newest point is the least since): the fall may not be over."""
    after = series.since(fall.t + 1e-9)
    return not len(after) or after.last_value <= after.min()


def _trough(after: View) -> tuple[float, float, float] | None:
    """(the least the run held in `after`, when it last held it, how much the next point rose), None when `after` is
    empty."""
    if not len(after):
        return None
    vs = after.v
    low = after.min()
    j = max(k for k, v in enumerate(vs) if v <= low)
    return low, after.t[j], max(0.0, vs[j + 1] - vs[j]) if j + 1 < len(vs) else 0.0
