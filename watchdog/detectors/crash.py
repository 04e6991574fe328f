"""Probable OOM: a process vanished from a GPU that was full, or filling up, when it was last seen.

NVML does not say why a process left. A normal end of training also makes it vanish, so the evidence is the
card around the process's last tick: free under `crash_free_fraction` of the card *and* the card had just
risen by `min_rise_bytes` within `crash_rise_seconds` (a spike that did not fit), or the card was growing
sustainably and forecast to be full within `forecast_warning_eta_seconds` (a leak that ran out). A run that
ends quietly on a flat plateau, however full, is not reported. The finding holds for `crash_hold_seconds`
after the process vanished and carries its last known numbers. A GPU that stopped answering is skipped: its
processes vanish for another reason.
"""

from __future__ import annotations

from ..history import Track
from ..model import Finding, ProcessKey, Severity
from . import _format as fmt
from ._context import GpuContext
from .config import DetectorConfig
from .forecast import eta_seconds
from .growth import profile


def detect_probable_oom(
    ctx: GpuContext, vanished: list[tuple[ProcessKey, Track]], config: DetectorConfig
) -> list[Finding]:
    """One critical `probable_oom` per process that vanished from this GPU under memory pressure."""
    if not ctx.visible:
        return []
    findings = []
    for key, track in vanished:
        last = track.series.last()
        if last is None or last[1] < config.crash_min_bytes:
            continue
        t_last, held = last
        free_then = ctx.free.value_at(t_last)
        used_then = ctx.used.value_at(t_last)
        if free_then is None or used_then is None:
            continue
        low = ctx.used.min_between(t_last - config.crash_rise_seconds, t_last + 1e-6)
        rose = low is not None and used_then - low >= config.min_rise_bytes
        near_full = ctx.total_bytes is not None and free_then <= config.crash_free_fraction * ctx.total_bytes
        rate = profile(ctx.used.before(t_last), config, min_horizon=config.forecast_min_horizon_seconds).rate(
            config, config.forecast_min_horizon_seconds
        )
        eta = eta_seconds(int(free_then), rate, config) if rate is not None else None
        filling = eta is not None and eta <= config.forecast_warning_eta_seconds
        if not ((near_full and rose) or filling):
            continue
        why = f"growing {fmt.rate(rate.bytes_per_second)}" if filling and rate is not None else "after a rise"
        findings.append(
            Finding(
                kind="probable_oom",
                severity=Severity.CRITICAL,
                gpu_uuid=ctx.uuid,
                message=(
                    f"{fmt.process_label(track.meta, key)} disappeared from {fmt.gpu_label(ctx.gpu)} while the card "
                    f"was nearly full ({fmt.gib(used_then)} of {fmt.gib(ctx.total_bytes)} GiB used, {why}): "
                    f"probable out-of-memory crash; it held {fmt.gib(held)} GiB"
                ),
                t=ctx.now,
                process=key,
                process_name=None if track.meta is None else track.meta.name,
                confidence=rate.confidence if filling and rate is not None else None,
                numbers={
                    "pid": key.pid,
                    "user": None if track.meta is None else track.meta.user,
                    "last_seen_t": t_last,
                    "held_bytes": int(held),
                    "used_bytes": int(used_then),
                    "free_bytes": int(free_then),
                    "total_bytes": ctx.total_bytes,
                },
            )
        )
    return findings
