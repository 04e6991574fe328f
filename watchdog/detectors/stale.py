"""Stale holders: processes that keep GPU memory but can no longer be using it.

Reported (warning) when a process holding at least `stale_min_bytes`:

- is a zombie, stopped (Ctrl-Z, SIGSTOP), being traced or dead: its memory is freed only when it is reaped
  or resumed;
- is an orphan: it was started by a launcher (its tree root is another pid) and now has pid 1 as parent,
  the launcher is gone — the classic torchrun worker left behind after a crash;
- (off by default) has not moved by more than `noise_bytes` for `stale_idle_seconds`. Memory alone cannot
  tell an idle notebook from a healthy training run or an inference server, which are flat for hours, so
  this is opt-in, for shared boxes that want it, with a long threshold.

The status and parent come from the process metadata at this tick: attribution must refresh `status` and
`ppid` while keeping the tree root found when the process was first seen.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..model import Finding, FindingKind, ProcessSample, Severity
from . import _format as fmt
from ._context import GpuContext
from ._series import view
from ._settings import non_negative, positive_or_none, setting, validate
from .base import Detector
from .config import MIB

#: The process statuses psutil reports (its `STATUS_*` constants; a test keeps the two in step). A misspelt one in
#: `stale_statuses` would never match.
STATUSES = frozenset({
    "running", "sleeping", "disk-sleep", "stopped", "tracing-stop", "zombie", "dead", "waking", "idle", "locked",
    "waiting", "parked",
})  # fmt: skip


@dataclass(frozen=True, slots=True)
class StaleConfig:
    """Which leftover processes are worth naming."""

    stale_min_bytes: int = setting(256 * MIB, non_negative)
    stale_statuses: frozenset[str] = frozenset({"zombie", "stopped", "tracing-stop", "dead"})
    #: Report workers whose launcher is gone (reparented to pid 1).
    stale_orphans: bool = True
    #: Report a process whose memory has not moved by a byte-noise for this long. Off by default: a healthy
    #: training run or an inference server is flat for hours, and memory alone cannot tell idle from busy.
    stale_idle_seconds: float | None = setting(None, positive_or_none)

    def __post_init__(self) -> None:
        # A config file gives a list; keep the value immutable.
        object.__setattr__(self, "stale_statuses", frozenset(self.stale_statuses))
        unknown = sorted(self.stale_statuses - STATUSES)
        validate(
            self,
            [f"stale_statuses: unknown status {unknown[0]!r} (known: {', '.join(sorted(STATUSES))})"]
            if unknown
            else [],
        )


def detect_stale(ctx: GpuContext, config: StaleConfig) -> list[Finding]:
    if not ctx.visible:
        return []
    findings = []
    for p in ctx.processes:
        if p.used_bytes is None or p.used_bytes < config.stale_min_bytes:
            continue
        reason = _reason(p, ctx, config)
        if reason is None:
            continue
        why, code = reason
        findings.append(
            Finding(
                kind=FindingKind.STALE_HOLDER,
                severity=Severity.WARNING,
                gpu_uuid=ctx.uuid,
                message=(
                    f"{fmt.process_label(p.meta, p.key)} {why} and still holds {fmt.gib(p.used_bytes)} GiB "
                    f"on {fmt.gpu_label(ctx.gpu)}"
                ),
                t=ctx.now,
                process=p.key,
                process_name=p.meta.name,
                numbers={
                    "pid": p.pid,
                    "user": p.meta.user,
                    "used_bytes": p.used_bytes,
                    "reason": code,
                    "status": p.meta.status,
                    "ppid": p.meta.ppid,
                },
            )
        )
    return findings


def _reason(p: ProcessSample, ctx: GpuContext, config: StaleConfig) -> tuple[str, str] | None:
    meta = p.meta
    if meta.status is not None and meta.status in config.stale_statuses:
        return f"is {meta.status}", "status"
    if config.stale_orphans and meta.ppid == 1 and meta.root_pid not in (None, meta.pid, 1):
        return f"lost its launcher (pid {meta.root_pid}) and was adopted by init", "orphan"
    if config.stale_idle_seconds is not None:
        track = ctx.history.processes.get((p.key, ctx.uuid))
        if track is None or ctx.now - track.first_seen < config.stale_idle_seconds:
            return None
        recent = view(track.series).since(ctx.now - config.stale_idle_seconds)
        shared = ctx.config
        covered = len(recent) >= 2 and recent.now - recent.first >= shared.min_coverage * config.stale_idle_seconds
        if covered and recent.max() - recent.min() <= shared.noise_bytes:
            return f"has not changed its memory for {fmt.duration(config.stale_idle_seconds)}", "idle"
    return None


DETECTOR = Detector(
    kind=FindingKind.STALE_HOLDER,
    defaults=StaleConfig(),
    raise_after=5,  # a process caught mid-exit (a zombie for a tick) is not a leftover
    clear_after=10,
    per_gpu=detect_stale,
    advice="stale_holder",
)
