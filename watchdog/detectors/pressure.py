"""Memory pressure: the card has almost no room left, growing or not.

The threshold is min(`pressure_free_fraction` x total, `pressure_free_bytes`): 3 % of a 24 GiB card
(0.7 GiB), never more than 2 GiB on an 80 GiB card. A healthy plateau at 92 % stays well clear of it; a run
tuned to fill the card to 98 % is warned, on purpose: one sample-image step more and it fails. Pressure is
only ever a warning: a full card that does not grow is a fact, not an emergency. Critical is reserved for a
card that is full *and* growing (see forecast.py).

Value hysteresis is computed from the free-memory history, so the detector stays a pure function: once
free fell under the threshold within `pressure_hold_seconds`, the condition holds until free exceeds the
threshold times `pressure_exit_factor`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..model import Finding, FindingKind, Severity
from . import _format as fmt
from ._context import GpuContext, Tree
from ._series import view
from ._settings import fraction, non_negative, setting, validate
from .base import Detector, Observation
from .config import GIB


@dataclass(frozen=True, slots=True)
class PressureConfig:
    """When free memory is too low, and when it is back."""

    #: Warning when free < min(fraction x total, bytes): 3 % of a 24 GiB card, at most 1 GiB on big cards.
    pressure_free_fraction: float = setting(0.03, fraction)
    pressure_free_bytes: int = setting(1 * GIB, non_negative)
    #: Once under the threshold within `pressure_hold_seconds`, the condition holds until free exceeds
    #: threshold x this factor (value hysteresis, computed from history, so still a pure function).
    pressure_exit_factor: float = setting(1.5, lambda v: None if v >= 1.0 else "must be >= 1")
    pressure_hold_seconds: float = setting(60.0, non_negative)

    def __post_init__(self) -> None:
        validate(self)


def detect(ctx: GpuContext, own: PressureConfig) -> Iterator[Observation]:
    finding = detect_pressure(ctx, culprit=lambda: _culprit(ctx, own), config=own)
    if finding is not None:
        yield finding


def pressure_threshold(total_bytes: int, config: PressureConfig) -> float:
    return min(config.pressure_free_fraction * total_bytes, float(config.pressure_free_bytes))


def detect_pressure(ctx: GpuContext, *, culprit: Callable[[], str | None], config: PressureConfig) -> Finding | None:
    """A `pressure` warning while free memory is under the threshold (with hysteresis).

    `culprit` gives the clause naming who to look at (the tree filling the card, else the newcomer, else the
    largest holder); it is asked only when the finding is made, off the common path of a tick.
    """
    if ctx.free_bytes is None or not ctx.total_bytes:
        return None
    threshold = pressure_threshold(ctx.total_bytes, config)
    if ctx.free_bytes >= threshold * config.pressure_exit_factor:
        return None
    if ctx.free_bytes >= threshold:
        recent_low = ctx.free.min_between(ctx.now - config.pressure_hold_seconds, ctx.now + 1.0)
        if recent_low is None or recent_low >= threshold:
            return None
    share = ctx.free_bytes / ctx.total_bytes
    who = culprit()
    holder = f"; {who}" if who else ""
    return Finding(
        kind=FindingKind.PRESSURE,
        severity=Severity.WARNING,
        gpu_uuid=ctx.uuid,
        message=(
            f"{fmt.gpu_label(ctx.gpu)} has {fmt.gib(ctx.free_bytes)} of {fmt.gib(ctx.total_bytes)} GiB free "
            f"({share:.1%}){holder}"
        ),
        t=ctx.now,
        numbers={
            "free_bytes": ctx.free_bytes,
            "total_bytes": ctx.total_bytes,
            "used_bytes": ctx.used_bytes,
            "threshold_bytes": int(threshold),
            "culprit": who,
        },
    )


def _culprit(ctx: GpuContext, own: PressureConfig) -> str | None:
    """Who a pressure finding names: the tree filling the card, else the one that just took the most, else the
    largest holder.

    On a card shared with a big static holder (a server, a ballast) the largest holder is rarely the one to
    look at: the run that keeps taking memory is (a sustained rise), or the newcomer that took the last of it.
    """
    best: tuple[float, Tree] | None = None
    for tree in ctx.trees.values():
        rates = [ctx.process_growth.get(p.key) for p in tree.members]
        total = sum(r.bytes_per_second for r in rates if r is not None and r.sustained and r.bytes_per_second > 0)
        if total > 0 and (best is None or total > best[0]):
            best = (total, tree)
    if best is not None:
        return f"{best[1].label} is filling it ({fmt.gib(best[1].held_bytes)} GiB and growing)"
    took: tuple[float, Tree] | None = None
    for tree in ctx.trees.values():
        track = ctx.history.trees.get((tree.key, ctx.uuid))
        if track is None:
            continue
        since = ctx.now - own.pressure_hold_seconds
        low = view(track.series).min_between(since, ctx.now + 1.0)
        gained = tree.held_bytes if low is None or track.first_seen > since else tree.held_bytes - low
        if gained >= ctx.config.min_rise_bytes and (took is None or gained > took[0]):
            took = (gained, tree)
    if took is not None:
        return f"{took[1].label} took {fmt.gib(took[0])} GiB of it within {fmt.duration(own.pressure_hold_seconds)}"
    largest = max(ctx.trees.values(), key=lambda tr: tr.held_bytes, default=None)
    return None if largest is None else f"the largest holder is {largest.label} with {fmt.gib(largest.held_bytes)} GiB"


DETECTOR = Detector(
    kind=FindingKind.PRESSURE,
    defaults=PressureConfig(),
    raise_after=3,  # a single low sample (a step's peak) is not pressure
    clear_after=10,
    per_gpu=detect,
    advice="pressure",
)
