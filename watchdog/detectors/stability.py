"""Stability verdicts: "this run has plateaued" — an answer, not a problem, so not a Finding.

A tree is stable when it is past warm-up, does not grow, and its floor (the least it held from then on) has
stayed within `noise_bytes` of today's for at least `stable_min_seconds`. The verdict says for how long and
how much headroom the card has: the number a person tuning batch size wants.
"""

from __future__ import annotations

from ..model import ProcessKey, ProcessMeta
from . import _format as fmt
from ._context import GpuContext
from ._series import View
from .config import DetectorConfig


def flat_seconds(series: View, config: DetectorConfig, *, not_before: float) -> float:
    """How long the floor has stayed within `noise_bytes` of its current value (0 when it just rose).

    A run that has plateaued is flat over the whole window: that is checked first, with one lookup in the
    series' staircase of suffix minima. Otherwise the start of the plateau is bisected between
    `stable_min_seconds` and the whole window. The floor since a time t is below the plateau's level exactly
    when some point from t on is, so every probe of the bisection compares t with the newest such point (one
    staircase bisection for them all) instead of looking the floor up again.
    """
    if len(series) < 3:
        return 0.0
    now = series.now
    longest = now - max(not_before, series.first)
    if longest <= 0:
        return 0.0
    if series.holds_since(now - longest):
        # Held one value all along (carried by the series, one comparison): the floor since then is that value,
        # and the floor now (below) is at most that value.
        return longest
    # The floor now: the least of the last 30 s, so the teeth of a sawtooth do not count as "just rose".
    low = series.min_between(now - 30.0, now + 1.0)
    if low is None:  # never: the newest point is in it
        return 0.0
    below = series.last_below(low - config.noise_bytes)
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


def verdict(
    ctx: GpuContext,
    *,
    card: str,
    key: ProcessKey,
    meta: ProcessMeta | None,
    members: int,
    held_bytes: int,
    series: View,
    first_seen: float,
    config: DetectorConfig,
) -> str | None:
    """ "python (pid 4242, alice) stable at 20.1 GiB for 12 min; GPU 0 at 21.3 of 24.0 GiB, 2.7 GiB headroom".
    `card`: `card_line(ctx)`, the same for every tree on the card at a tick (formatted once per card and tick)."""
    settled = first_seen + config.warmup_seconds
    if ctx.now - settled < config.stable_min_seconds:
        return None
    flat = flat_seconds(series, config, not_before=settled)
    if flat < config.stable_min_seconds:
        return None
    return (
        f"{fmt.process_label(meta, key, tree=True, members=members)} stable at {fmt.gib(held_bytes)} GiB for "
        f"{fmt.duration(flat)}; {card}"
    )


def card_line(ctx: GpuContext) -> str:
    """ "GPU 0 at 21.3 of 24.0 GiB, 2.7 GiB headroom": how a verdict ends."""
    return (
        f"{fmt.gpu_label(ctx.gpu)} at {fmt.gib(ctx.used_bytes)} of {fmt.gib(ctx.total_bytes)} GiB, "
        f"{fmt.gib(ctx.free_bytes)} GiB headroom"
    )
