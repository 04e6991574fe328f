"""Stability verdicts: "this run has plateaued" — an answer, not a problem, so not a Finding.

A tree is stable when it is past warm-up, does not grow, and its floor (the least it held from then on) has
stayed within `noise_bytes` of today's for at least `stable_min_seconds`. The verdict says for how long and
how much headroom the card has: the number a person tuning batch size wants.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..frozen import quick_init
from . import _format as fmt
from ._context import GpuContext, Tree
from ._series import View
from .base import Verdict
from .config import DetectorConfig

#: The floor "now" is the least of the last this many seconds, so that the teeth of a sawtooth do not count as
#: "just rose".
FLOOR_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Floor:
    """What a verdict is judged from at one tick: the time of the newest point holding the least value of the last
    `FLOOR_SECONDS` (the floor now), and of the newest point below that floor by more than `noise_bytes` (None:
    none). The plateau began after `below`."""

    low_at: float
    below: float | None

    def carried(self, series: View) -> Floor | None:
        """This floor at a later tick of the same series, given that every point since held the newest value then
        (`Series.held_since`); None when it must be looked up again.

        Held points are not below the floor, so the floor stays while a point holding it is still among the last
        `FLOOR_SECONDS` (a later point may only equal it), and `below` stays unless it left the window."""
        if self.low_at < series.now - FLOOR_SECONDS:
            return None
        if self.below is not None and self.below < series.first:
            return Floor(self.low_at, None)
        return self


def floor(series: View, config: DetectorConfig) -> Floor:
    """`series`' floor now (the view must not be empty): two staircase lookups while it is live."""
    low = series.newest_low_since(series.now - FLOOR_SECONDS)
    if low is None:  # never: the newest point is in it
        raise AssertionError("the newest point is among the last FLOOR_SECONDS")
    value, at = low
    return Floor(at, series.last_below(value - config.noise_bytes))


def flat_seconds(series: View, config: DetectorConfig, *, not_before: float, at: Floor | None = None) -> float:
    """How long the floor has stayed within `noise_bytes` of its current value (0 when it just rose). `at`: the
    series' `floor` at this tick, when known already (carried from an earlier tick).

    A run that has plateaued is flat over the whole window: without `at`, that is checked first, with one lookup
    of the series' carried run (the answer below gives the same). Otherwise the start of the plateau is bisected
    between `stable_min_seconds` and the whole window. The floor since a time t is below the plateau's level
    exactly when some point from t on is, so every probe of the bisection compares t with the newest such point
    (`Floor.below`) instead of looking the floor up again.
    """
    if len(series) < 3:
        return 0.0
    now = series.now
    longest = now - max(not_before, series.first)
    if longest <= 0:
        return 0.0
    if at is None:
        if series.holds_since(now - longest):
            # Held one value all along: the floor since then is that value, and the floor now is at most that.
            return longest
        at = floor(series, config)
    below = at.below
    if below is None or below < now - longest:
        return longest
    shortest = min(config.stable_min_seconds, longest)
    if below >= now - shortest:
        return 0.0
    good, bad = shortest, longest
    for _ in range(6):
        mid = (good + bad) / 2
        if below < now - mid:
            good = mid
        else:
            bad = mid
    return good


@quick_init
@dataclass(frozen=True, slots=True)
class Stable(Verdict):
    """`tree`'s floor has held its level for `stable_seconds`; `card`: how the sentence ends (`card_line`)."""

    tree: Tree
    stable_seconds: float
    card: str

    @property
    def text(self) -> str:
        """The sentence: "python (pid 4242, alice) stable at 20.1 GiB for 12 min; GPU 0 at 21.3 of 24.0 GiB, 2.7 GiB
        headroom"."""
        tree = self.tree
        who = fmt.process_label(tree.members[0].meta, tree.key, tree=True, members=len(tree.members))
        return f"{who} stable at {fmt.gib(tree.held_bytes)} GiB for {fmt.duration(self.stable_seconds)}; {self.card}"


def verdict(
    ctx: GpuContext, tree: Tree, series: View, first_seen: float, card: str, *, carried: Floor | None = None
) -> tuple[Stable | None, Floor | None]:
    """`tree`'s verdict (None: not stable), and the floor it was judged from (None: too young to judge), for the next
    tick to carry. `series`: the tree's, first seen at `first_seen`. `card`: `card_line(ctx)`, the same for every
    tree on the card at a tick (formatted once per card and tick). `carried`: the floor of an earlier tick, when
    every point since held the value of that tick."""
    config = ctx.config
    settled = first_seen + config.warmup_seconds
    if ctx.now - settled < config.stable_min_seconds:
        return None, None
    at = carried.carried(series) if carried is not None else None
    if at is None and len(series) >= 3:  # (a shorter series is not flat at all: nothing to look up)
        at = floor(series, config)
    flat = flat_seconds(series, config, not_before=settled, at=at)
    if flat < config.stable_min_seconds:
        return None, at
    return Stable(tree.key, ctx.uuid, tree, flat, card), at


def card_line(ctx: GpuContext) -> str:
    """ "GPU 0 at 21.3 of 24.0 GiB, 2.7 GiB headroom": how a verdict ends."""
    return (
        f"{fmt.gpu_label(ctx.gpu)} at {fmt.gib(ctx.used_bytes)} of {fmt.gib(ctx.total_bytes)} GiB, "
        f"{fmt.gib(ctx.free_bytes)} GiB headroom"
    )
