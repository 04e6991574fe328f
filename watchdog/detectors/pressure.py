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

from collections.abc import Callable

from ..model import Finding, Severity
from . import _format as fmt
from ._context import GpuContext
from .config import DetectorConfig


def pressure_threshold(total_bytes: int, config: DetectorConfig) -> float:
    return min(config.pressure_free_fraction * total_bytes, float(config.pressure_free_bytes))


def detect_pressure(ctx: GpuContext, *, culprit: Callable[[], str | None], config: DetectorConfig) -> Finding | None:
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
        kind="pressure",
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
