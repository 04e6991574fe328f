"""Probable OOM: a process vanished from a GPU, and its *own* memory says it ran into the card's ceiling.

NVML does not say why a process left, and a normal end of training makes it vanish just the same, often on a
full card (a plateau at 95 % is a well-tuned run) or right after someone else took the room. The card's state
alone is therefore no evidence. What a process that died of out-of-memory leaves behind in its own series:

- **a leak that ran out**: its own memory was still growing steadily (a sustained rise by the growth test,
  over at least `forecast_critical_min_horizon_seconds`) and, at that rate, the card's free memory at its
  last sight was gone within `crash_eta_seconds`;
- **a rise into the ceiling**: its own memory rose by at least `min_rise_bytes` within `crash_rise_seconds`,
  its last sight was the peak of that rise (since its low: it may have fallen from the card's end before, when
  PyTorch gave its cache back and retried), and the card had at most `ceiling_free_bytes` free then.

Either is a critical `probable_oom`, and so is a process that the system saw end with a failure (an unreaped
zombie's exit status or signal, or a reaped process's where the kernel keeps it) on a card with no room left, or
right after its own memory fell by `min_rise_bytes` (PyTorch's allocator gives its whole cache back when a
cudaMalloc fails, then retries once before raising the OOM); one seen to exit with status 0 never is. A process
whose own memory was flat or that left room behind it, with no exit status seen, ended for another reason as far as
NVML can tell: nothing is raised. A request that did not fit at all (a 10 GiB sample-image batch on a card with
4 GiB free) leaves no trace in NVML but the cache it gives back; with no exit status to go with it, only the
in-process agent of `vramwatch run` sees it, as a certain `oom`. The finding holds for `crash_hold_seconds` after the
process vanished and carries its last known numbers. A GPU that stopped answering is skipped: its processes vanish
for another reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from ..history import Track
from ..model import Finding, FindingKind, ProcessExit, ProcessKey, Severity
from . import _format as fmt
from . import forecast
from ._context import GpuContext
from ._series import view
from ._settings import non_negative, setting, validate
from .base import Detector
from .config import MIB, DetectorConfig
from .forecast import eta_seconds
from .growth import profile


@dataclass(frozen=True, slots=True)
class CrashConfig:
    """What a vanished process's own series must show to be called an out-of-memory crash."""

    #: A vanished process whose own memory was still growing steadily and, at that rate, would have used the
    #: card's last free memory within this many seconds of its last sight ran out of it ...
    crash_eta_seconds: float = setting(15.0, non_negative)
    #: ... or whose own memory rose by `min_rise_bytes` within `crash_rise_seconds`, up to its last sight, leaving the
    #: card at its ceiling (at most `ceiling_free_bytes` free).
    crash_rise_seconds: float = setting(60.0, non_negative)
    #: Reported for this long after the process vanished.
    crash_hold_seconds: float = setting(30.0, non_negative)
    crash_min_bytes: int = setting(256 * MIB, non_negative)

    def __post_init__(self) -> None:
        validate(self)


def detect(ctx: GpuContext, own: CrashConfig) -> list[Finding]:
    """Probable OOMs of the processes that left this GPU within `crash_hold_seconds`."""
    vanished = [(key, track) for key, track in ctx.departed if ctx.now - track.last_seen <= own.crash_hold_seconds]
    if not vanished:  # most ticks nobody left: no exit table to build
        return []
    exits = {k: e for k, (_, e) in ctx.history.exits.items()}
    return detect_probable_oom(ctx, vanished, own, exits=exits)


def detect_probable_oom(
    ctx: GpuContext,
    vanished: list[tuple[ProcessKey, Track]],
    config: CrashConfig,
    *,
    exits: Mapping[ProcessKey, ProcessExit] | None = None,
) -> list[Finding]:
    """One critical `probable_oom` per process that vanished from this GPU with its own memory in the ceiling.

    `exits` holds how processes ended where the system could tell (attribution.py's `exit_status`): a clean exit is
    never an OOM; a failed one on a card with no room left is one even when the series shows no rise.
    """
    if not ctx.visible:
        return []
    findings = []
    for key, track in vanished:
        last = track.series.last()
        ended = (exits or {}).get(key)
        if last is None or last[1] < config.crash_min_bytes or (ended is not None and ended.clean):
            continue
        t_last, held = last
        free_then = ctx.free.value_at(t_last)
        used_then = ctx.used.value_at(t_last)
        if free_then is None or used_then is None:
            continue
        why = _evidence(ctx, track, held=held, free_then=int(free_then), crash=config)
        if why is None and ended is not None:
            why = _failed_exit(track, ended, held=held, free_then=int(free_then), crash=config, config=ctx.config)
        if why is None:
            continue
        findings.append(
            Finding(
                kind=FindingKind.PROBABLE_OOM,
                severity=Severity.CRITICAL,
                gpu_uuid=ctx.uuid,
                message=(
                    f"{fmt.process_label(track.meta, key)} disappeared from {fmt.gpu_label(ctx.gpu)} {why} "
                    f"({fmt.gib(used_then)} of {fmt.gib(ctx.total_bytes)} GiB used, {fmt.gib(free_then)} GiB free): "
                    f"probable out-of-memory crash; it held {fmt.gib(held)} GiB"
                ),
                t=ctx.now,
                process=key,
                process_name=None if track.meta is None else track.meta.name,
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


def _evidence(ctx: GpuContext, track: Track, *, held: float, free_then: int, crash: CrashConfig) -> str | None:
    """Why this process's own series says it ran out of memory, or None when it does not."""
    config = ctx.config
    own = view(track.series)
    t_last = own.now
    grown = profile(own, config, min_horizon=config.forecast_critical_min_horizon_seconds, report=False)
    best = grown.best(
        config.forecast_critical_min_horizon_seconds, config, max_share=config.forecast_max_subwindow_share
    )
    if best is not None:
        rate = dataclasses.replace(best.rate(config), sustained=True)  # by the forecast's own test, as forecast.py
        eta = eta_seconds(free_then, rate, config)
        # A run refilling the cache it gave back at the card's end, where it lived on, does not die of the climb:
        # PyTorch gives the cache back again and retries (one that ended normally mid-climb, its exit status unseen).
        if eta is not None and eta <= crash.crash_eta_seconds and not _refilling(ctx, track, free_then):
            return f"while still growing {fmt.rate(rate.bytes_per_second)} into the last of the card"
    lowest = own.newest_low_since(t_last - crash.crash_rise_seconds)
    # The most it held since its low, not in the whole window: a run that fell from the card's end before (PyTorch gave
    # its cache back and retried) and climbed back rose into the ceiling again, a little below where it fell from.
    low, top = (None, None) if lowest is None else (lowest[0], own.max_between(lowest[1], t_last + 1e-6))
    ceiling = config.ceiling_free_bytes
    if (
        low is not None
        and top is not None
        and held - low >= config.min_rise_bytes
        and held >= top - config.noise_bytes
        and free_then <= ceiling
    ):
        return f"right after its own memory rose by {fmt.gib(held - low)} GiB to the card's limit"
    return None


def _refilling(ctx: GpuContext, track: Track, free_then: int) -> bool:
    """Riding the ceiling as it was last seen (the card's free memory then, not with what it left behind)."""
    ride = forecast.rides_ceiling(ctx, track, forecast.DETECTOR.settings(ctx.config), free_bytes=free_then)
    return ride is not None and ride.level  # troughs that rose, even once, are no sign it would have lived


def _failed_exit(
    track: Track, ended: ProcessExit, *, held: float, free_then: int, crash: CrashConfig, config: DetectorConfig
) -> str | None:
    """A failing exit status is an OOM's when the card had no room left, or when the process's own memory fell
    just before it ended: PyTorch's allocator frees its whole cache when a cudaMalloc fails, then retries."""
    status = f"signal {ended.signal}" if ended.signal else f"exit status {ended.exit_code}"
    if free_then <= config.ceiling_free_bytes:
        return f"with {status} while the card had no room left"
    own = view(track.series)
    top = own.max_between(own.now - crash.crash_rise_seconds, own.now + 1e-6)
    if top is not None and held <= top - config.min_rise_bytes:
        return (
            f"with {status} right after its memory fell from {fmt.gib(top)} GiB "
            f"(a failed allocation makes PyTorch give its cache back)"
        )
    return None


DETECTOR = Detector(
    kind=FindingKind.PROBABLE_OOM,
    defaults=CrashConfig(),
    # A post-mortem: raised on the tick it is seen, and held for `crash_hold_seconds` by the detector itself.
    raise_after=1,
    clear_after=1,
    per_gpu=detect,
    advice="probable_oom",
)
