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

from ..history import History
from ..model import Finding, ProcessSample, Severity
from . import _format as fmt
from ._context import GpuContext
from ._series import view
from .config import DetectorConfig


def detect_stale(ctx: GpuContext, history: History, config: DetectorConfig) -> list[Finding]:
    if not ctx.visible:
        return []
    findings = []
    for p in ctx.processes:
        if p.used_bytes is None or p.used_bytes < config.stale_min_bytes:
            continue
        reason = _reason(p, ctx, history, config)
        if reason is None:
            continue
        why, code = reason
        findings.append(
            Finding(
                kind="stale_holder",
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


def _reason(p: ProcessSample, ctx: GpuContext, history: History, config: DetectorConfig) -> tuple[str, str] | None:
    meta = p.meta
    if meta.status is not None and meta.status in config.stale_statuses:
        return f"is {meta.status}", "status"
    if config.stale_orphans and meta.ppid == 1 and meta.root_pid not in (None, meta.pid, 1):
        return f"lost its launcher (pid {meta.root_pid}) and was adopted by init", "orphan"
    if config.stale_idle_seconds is not None:
        track = history.processes.get((p.key, ctx.uuid))
        if track is None or ctx.now - track.first_seen < config.stale_idle_seconds:
            return None
        recent = view(track.series).since(ctx.now - config.stale_idle_seconds)
        covered = len(recent) >= 2 and recent.now - recent.first >= config.min_coverage * config.stale_idle_seconds
        if covered and recent.max() - recent.min() <= config.noise_bytes:
            return f"has not changed its memory for {fmt.duration(config.stale_idle_seconds)}", "idle"
    return None
