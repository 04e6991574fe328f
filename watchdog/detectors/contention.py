"""Contention: another process arrives (or grows) on a GPU where a run was already working, and takes its room.

The contender is named (pid, name, user, memory) from the tick its memory is visible, so a person sees who
took the card before the training run fails. It must:

- belong to another process tree than the run it hurts (workers of one `accelerate`/`torchrun` launch share a
  tree and never contend with each other);
- hold at least `contention_min_bytes`, gained within the last `contention_hold_seconds` (new, or grown);
- have taken at least `contention_room_fraction` of the room that was free just before it arrived, and left
  less than `contention_max_free_fraction` of the card free (two runs that both fit are sharing a card, not
  contending for it: a second user's job on a big card is not a problem until the card is nearly full).

The run it hurts (the incumbent) holds at least `contention_incumbent_min_bytes` and was on the GPU for
`contention_incumbent_seconds` before the arrival. When vramwatch starts, no process has a "before", so
nothing already running is ever called a contender.
"""

from __future__ import annotations

from ..history import History
from ..model import Finding, ProcessKey, ProcessMeta, Severity
from . import _format as fmt
from ._context import GpuContext
from ._series import View, view
from .config import DetectorConfig


def detect_contention(ctx: GpuContext, history: History, config: DetectorConfig) -> list[Finding]:
    if not ctx.visible or ctx.free_bytes is None:
        return []
    trees: dict[ProcessKey, tuple[int, ProcessMeta, int]] = {}
    for p in ctx.processes:
        held, _, members = trees.get(p.tree_key, (0, p.meta, 0))
        trees[p.tree_key] = (held + (p.used_bytes or 0), p.meta, members + 1)
    findings: list[Finding] = []
    for p in ctx.processes:
        if p.used_bytes is None or p.used_bytes < config.contention_min_bytes:
            continue
        track = history.processes.get((p.key, ctx.uuid))
        if track is None:
            continue
        arrival = _arrival(track.first_seen, view(track.series), p.used_bytes, ctx.now, config)
        if arrival is None:
            continue
        before = ctx.free.max_between(arrival - config.contention_before_seconds, arrival)
        if before is None:
            continue  # no "before": vramwatch was not watching yet
        taken = before - ctx.free_bytes
        if taken < config.contention_min_bytes or ctx.free_bytes > (1 - config.contention_room_fraction) * before:
            continue
        if ctx.total_bytes is not None and ctx.free_bytes > config.contention_max_free_fraction * ctx.total_bytes:
            continue  # both fit: sharing, not contention
        incumbent = _incumbent(trees, p.tree_key, arrival=arrival, history=history, ctx=ctx, config=config)
        if incumbent is None:
            continue
        key, (held, meta, members) = incumbent
        critical = (
            ctx.total_bytes is not None and ctx.free_bytes < config.contention_critical_free_fraction * ctx.total_bytes
        )
        victim = fmt.process_label(meta, key, tree=True, members=members)
        findings.append(
            Finding(
                kind="contention",
                severity=Severity.CRITICAL if critical else Severity.WARNING,
                gpu_uuid=ctx.uuid,
                message=(
                    f"{fmt.process_label(p.meta, p.key)} took {fmt.gib(p.used_bytes)} GiB on "
                    f"{fmt.gpu_label(ctx.gpu)} where {victim} runs; free fell from {fmt.gib(before)} to "
                    f"{fmt.gib(ctx.free_bytes)} GiB"
                ),
                t=ctx.now,
                process=p.key,
                process_name=p.meta.name,
                numbers={
                    "pid": p.pid,
                    "user": p.meta.user,
                    "used_bytes": p.used_bytes,
                    "free_before_bytes": int(before),
                    "free_bytes": ctx.free_bytes,
                    "arrival_t": arrival,
                    "incumbent_pid": key.pid,
                    "incumbent_bytes": held,
                },
            )
        )
    return findings


def _arrival(first_seen: float, series: View, used: int, now: float, config: DetectorConfig) -> float | None:
    """When the process took its memory: its first tick if recent, else when it grew by the minimum."""
    start = now - config.contention_hold_seconds
    if first_seen >= start:
        return first_seen
    baseline = series.value_at(start)
    if baseline is None or used - baseline < config.contention_min_bytes:
        return None
    recent = series.since(start)
    target = baseline + config.contention_min_bytes
    return next((t for t, v in zip(recent.t, recent.v, strict=True) if v >= target), None)


def _incumbent(
    trees: dict[ProcessKey, tuple[int, ProcessMeta, int]],
    contender_tree: ProcessKey,
    *,
    arrival: float,
    history: History,
    ctx: GpuContext,
    config: DetectorConfig,
) -> tuple[ProcessKey, tuple[int, ProcessMeta, int]] | None:
    """The largest other tree that was already there, holding enough, when the contender arrived."""
    candidates = []
    for key, entry in trees.items():
        if key == contender_tree or entry[0] < config.contention_incumbent_min_bytes:
            continue
        track = history.trees.get((key, ctx.uuid))
        if track is not None and track.first_seen <= arrival - config.contention_incumbent_seconds:
            candidates.append((key, entry))
    return max(candidates, key=lambda c: c[1][0], default=None)
