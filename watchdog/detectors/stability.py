"""Stability verdicts: "this run has plateaued" — an answer, not a problem, so not a Finding.

A tree is stable when it is past warm-up, does not grow, and its floor (the least it held from then on) has
stayed within `noise_bytes` of today's for at least `stable_min_seconds`. The verdict says for how long and
how much headroom the card has: the number a person tuning batch size wants.
"""

from __future__ import annotations

from functools import lru_cache

from ..model import GpuSample, ProcessKey, ProcessMeta
from . import _format as fmt
from ._context import GpuContext
from ._series import View
from .config import DetectorConfig


def flat_seconds(series: View, config: DetectorConfig, *, not_before: float) -> float:
    """How long the floor has stayed within `noise_bytes` of its current value (0 when it just rose).

    A run that has plateaued is flat over the whole window: that is checked first, with one lookup in the
    series' staircase of suffix minima. Otherwise the start of the plateau is bisected between
    `stable_min_seconds` and the whole window.
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
    level = _floor_since(series, now - 30.0)
    floor_ok = level - config.noise_bytes
    if _floor_since(series, now - longest) >= floor_ok:
        return longest
    shortest = min(config.stable_min_seconds, longest)
    if _floor_since(series, now - shortest) < floor_ok:
        return 0.0
    good, bad = shortest, longest
    for _ in range(6):
        mid = (good + bad) / 2
        if _floor_since(series, now - mid) >= floor_ok:
            good = mid
        else:
            bad = mid
    return good


def _floor_since(series: View, t0: float) -> float:
    low = series.min_between(t0, series.now + 1.0)
    return float("inf") if low is None else low


def verdict(
    ctx: GpuContext,
    *,
    key: ProcessKey,
    meta: ProcessMeta | None,
    members: int,
    held_bytes: int,
    series: View,
    first_seen: float,
    config: DetectorConfig,
) -> str | None:
    """ "python (pid 4242, alice) stable at 20.1 GiB for 12 min; GPU 0 at 21.3 of 24.0 GiB, 2.7 GiB headroom"."""
    settled = first_seen + config.warmup_seconds
    if ctx.now - settled < config.stable_min_seconds:
        return None
    flat = flat_seconds(series, config, not_before=settled)
    if flat < config.stable_min_seconds:
        return None
    return (
        f"{fmt.process_label(meta, key, tree=True, members=members)} stable at {fmt.gib(held_bytes)} GiB for "
        f"{fmt.duration(flat)}; {_card(ctx.gpu, ctx.used_bytes, ctx.total_bytes, ctx.free_bytes)}"
    )


@lru_cache(maxsize=64)
def _card(gpu: GpuSample, used_bytes: int | None, total_bytes: int | None, free_bytes: int | None) -> str:
    """ "GPU 0 at 21.3 of 24.0 GiB, 2.7 GiB headroom": the same for every tree on a card at a tick, so formatted
    once per card and tick rather than once per tree (keyed on the figures it shows)."""
    return (
        f"{fmt.gpu_label(gpu)} at {fmt.gib(used_bytes)} of {fmt.gib(total_bytes)} GiB, "
        f"{fmt.gib(free_bytes)} GiB headroom"
    )
