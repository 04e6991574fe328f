"""Growth findings: a process tree (or, when no tree explains it, a whole GPU) whose memory keeps rising.

This is the "leak" claim, so it asks for more evidence than the OOM forecast: the first `warmup_seconds` of a
process's life are ignored (model load, first steps, first validation), and growth must be sustained over a
window of at least `growth_min_horizon_seconds` (4 min by default), rising in each of its five parts. A run
whose warm-up steps come minutes apart has at most a few steps; a leak keeps stepping. A leak that steps
once per epoch is caught at the horizon where every part holds a step (epochs up to ~12 min with the
default one-hour history).
"""

from __future__ import annotations

from ..model import Finding, ProcessKey, ProcessMeta, Severity
from . import _format as fmt
from ._context import GpuContext
from .config import DetectorConfig
from .forecast import eta_seconds
from .growth import Fit


def growth_finding(
    ctx: GpuContext,
    fit: Fit,
    config: DetectorConfig,
    *,
    key: ProcessKey | None = None,
    meta: ProcessMeta | None = None,
    members: int = 1,
) -> Finding | None:
    """A `growth` warning for a tree (`key` set) or the GPU itself (no key), from a sustained fit."""
    rate = fit.rate()
    if rate.bytes_per_second < config.growth_min_rate_bytes_per_second:
        return None
    eta = eta_seconds(ctx.free_bytes, rate, config) if ctx.free_bytes is not None else None
    if eta is not None and eta > config.growth_eta_max_seconds:
        eta = None
    gpu = fmt.gpu_label(ctx.gpu)
    if key is None:
        subject = f"{gpu} grows {fmt.rate(rate.bytes_per_second)} and no single process explains it"
    else:
        who = fmt.process_label(meta, key, tree=True, members=members)
        subject = f"{who} grows {fmt.rate(rate.bytes_per_second)} on {gpu}"
    full = f"; the card is full in ~{fmt.duration(eta)}" if eta is not None else ""
    message = (
        f"{subject} (+{fmt.gib(fit.rise_bytes)} GiB in {fmt.duration(fit.span_seconds)}){full} "
        f"({fmt.gib(ctx.used_bytes)} of {fmt.gib(ctx.total_bytes)} GiB used)"
    )
    return Finding(
        kind="growth",
        severity=Severity.WARNING,
        gpu_uuid=ctx.uuid,
        message=message,
        t=ctx.now,
        process=key,
        process_name=fmt.process_name(meta, tree=True),
        eta_seconds=None if eta is None else round(eta, 1),
        confidence=rate.confidence,
        numbers={
            "rate_bytes_per_second": round(rate.bytes_per_second, 1),
            "rise_bytes": int(fit.rise_bytes),
            "window_seconds": fit.span_seconds,
            "free_bytes": ctx.free_bytes,
            "used_bytes": ctx.used_bytes,
            "total_bytes": ctx.total_bytes,
            "pid": None if key is None else key.pid,
            "user": None if meta is None else meta.user,
        },
    )
