"""Time to OOM: when the card's memory keeps growing, how long until it is full, and how sure are we.

eta = (free - oom_margin) / growth rate, from the device's *sustained* growth (see growth.py): a single
step or warm-up never yields a forecast. The rate is the steepest sustained one: a fast leak (~150 MB/s
into 24 GiB) can leave 80-90 s from its start to the OOM, so a critical forecast (full within two minutes)
is trusted after 15 s of rise in every 3-s part of the window, a warning after 20 s.

Model loading and on-GPU quantisation look exactly like a fast leak for a minute or two. While the GPU is
*warming* (a process on it is younger than `forecast_warmup_seconds` and has not yet stayed flat for
`settle_seconds`), only a critical forecast (full within `forecast_critical_eta_seconds`, or less than
`forecast_critical_free_fraction` free) is raised. A load that lasts longer than ~15 s at a rate that
would fill the card within two minutes is therefore forecast critical until it stops (the known price of
warning a fast leak a minute ahead; raise `forecast_critical_min_horizon_seconds` to trade).

A run that frees and re-takes memory (bucketed shapes with `empty_cache()`; a cache a failed cudaMalloc
flushed) is judged on its peaks, not its floor: while its peaks do not rise in every part of the window, its
troughs filling in during warm-up is no forecast (see `growth.retakes_without_rising`).

Growth that slows down geometrically (a cache filling up with bucketed resolutions) is projected to its
plateau; when that plateau fits in the card there is nothing to forecast. Growth that is linear until it
stops short of the card cannot be told from a leak before it stops: such a run is forecast, and the finding
clears once it has been flat for the exit ticks.
"""

from __future__ import annotations

import dataclasses

from ..model import Finding, Severity
from . import _format as fmt
from ._context import GpuContext
from .config import DetectorConfig
from .growth import Profile, Rate, retakes_without_rising


def eta_seconds(free_bytes: int, rate: Rate, config: DetectorConfig) -> float | None:
    """Seconds until free memory is down to `oom_margin_bytes` at `rate` (None when not growing)."""
    if not rate.sustained or rate.bytes_per_second <= 0:
        return None
    return max(0.0, free_bytes - config.oom_margin_bytes) / rate.bytes_per_second


def detect_oom_forecast(
    ctx: GpuContext, device: Profile, *, warming: bool, grower: str | None, config: DetectorConfig
) -> tuple[tuple[float, float] | None, Finding | None]:
    """The (eta, confidence) of this GPU when it grows, and an `oom_forecast` finding when it is soon."""
    shortest = min(config.forecast_critical_min_horizon_seconds, config.forecast_min_horizon_seconds)
    best = device.best(shortest, config, max_share=config.forecast_max_subwindow_share)
    if best is None or ctx.free_bytes is None:
        return None, None
    if device.levels_off_within(ctx.free_bytes - config.oom_margin_bytes, config):
        return None, None  # slowing down towards a plateau that fits
    if retakes_without_rising(ctx.used, best.xs[0], config):
        return None, None  # a sawtooth whose troughs fill in: its peaks, what fills the card, do not rise
    # Sustained by the forecast's own test (a warm-up step allowed in the window).
    rate = dataclasses.replace(best.rate(config), sustained=True)
    eta = eta_seconds(ctx.free_bytes, rate, config)
    if eta is None:
        return None, None
    forecast = (eta, rate.confidence)
    # Under 5 % free is critical only while the forecast is within the warning horizon: a drift of a few
    # hundred kB/s on a full plateau (the card reads "full in 2 hours") is not an emergency, and on a card
    # shared with a big static holder 5 % of the card can be more than the run's whole headroom.
    low_free = (
        ctx.total_bytes is not None
        and ctx.free_bytes < config.forecast_critical_free_fraction * ctx.total_bytes
        and eta <= config.forecast_warning_eta_seconds
    )
    if eta <= config.forecast_critical_eta_seconds or low_free:
        severity = Severity.CRITICAL
    else:
        # A warning is not urgent: it waits for a window of `forecast_min_horizon_seconds`.
        steady = device.best(config.forecast_min_horizon_seconds, config, max_share=config.forecast_max_subwindow_share)
        if steady is None or warming:
            return forecast, None
        rate = dataclasses.replace(steady.rate(config), sustained=True)
        eta = eta_seconds(ctx.free_bytes, rate, config)
        if eta is None or eta > config.forecast_warning_eta_seconds:
            return forecast, None
        severity = Severity.WARNING
    when = "now" if eta < 1 else f"in ~{fmt.duration(eta)}"
    subject = grower if grower is not None else fmt.gpu_label(ctx.gpu)
    on = f" on {fmt.gpu_label(ctx.gpu)}" if grower is not None else ""
    message = (
        f"{subject} grows {fmt.rate(rate.bytes_per_second)}{on}; the card is full {when} "
        f"({fmt.gib(ctx.used_bytes)} of {fmt.gib(ctx.total_bytes)} GiB used)"
    )
    finding = Finding(
        kind="oom_forecast",
        severity=severity,
        gpu_uuid=ctx.uuid,
        message=message,
        t=ctx.now,
        eta_seconds=round(eta, 1),
        confidence=rate.confidence,
        numbers={
            "rate_bytes_per_second": round(rate.bytes_per_second, 1),
            "window_seconds": rate.window_seconds,
            "free_bytes": ctx.free_bytes,
            "used_bytes": ctx.used_bytes,
            "total_bytes": ctx.total_bytes,
            "grower": grower,
        },
    )
    return forecast, finding
