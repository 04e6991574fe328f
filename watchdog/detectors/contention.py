"""Contention: another process arrives (or grows) on a GPU where a run was already working.

The contender is named (pid, name, user, memory) so a person sees who is on the card before the training run
fails. It belongs to another process tree than the run it concerns (workers of one `accelerate`/`torchrun`
launch share a tree and never contend), holds at least `contention_min_bytes`, gained within the last
`contention_hold_seconds` (new, or grown), and is reported when either:

- it **took the room**: at least `contention_room_fraction` of what was free just before it arrived, leaving
  less than `contention_max_free_fraction` of the card free (two runs that both fit share a card; they do not
  contend for it until it is nearly full); critical under `contention_critical_free_fraction`; or
- it belongs to **another user** (`contention_other_user`, on by default): reported from the tick it appears,
  before it has taken anything, because on a shared box that is the moment to know who it is. Turn it off
  where users share cards on purpose.

The run it concerns (the incumbent) holds at least `contention_incumbent_min_bytes` and was on the GPU for
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
        incumbents = _incumbents(trees, p.tree_key, arrival=arrival, history=history, ctx=ctx, config=config)
        if not incumbents:
            continue
        total = ctx.total_bytes
        took_room = (
            taken >= config.contention_min_bytes
            and ctx.free_bytes <= (1 - config.contention_room_fraction) * before
            # Both fit: sharing a card, not contending for it.
            and (total is None or ctx.free_bytes <= config.contention_max_free_fraction * total)
        )
        strangers = [c for c in incumbents if p.meta.user is not None and c[1][1].user not in (None, p.meta.user)]
        if took_room:
            key, (held, meta, members) = incumbents[0]
        elif config.contention_other_user and strangers:
            key, (held, meta, members) = strangers[0]
        else:
            continue
        critical = took_room and total is not None and ctx.free_bytes < config.contention_critical_free_fraction * total
        victim = fmt.process_label(meta, key, tree=True, members=members)
        who = fmt.process_label(p.meta, p.key)
        gpu = fmt.gpu_label(ctx.gpu)
        if took_room:
            message = (
                f"{who} took {fmt.gib(p.used_bytes)} GiB on {gpu} where {victim} runs; free fell from "
                f"{fmt.gib(before)} to {fmt.gib(ctx.free_bytes)} GiB"
            )
        else:
            message = (
                f"{who} started using {gpu} where {victim} runs; it holds {fmt.gib(p.used_bytes)} GiB, "
                f"{fmt.gib(ctx.free_bytes)} GiB free (was {fmt.gib(before)})"
            )
        findings.append(
            Finding(
                kind="contention",
                severity=Severity.CRITICAL if critical else Severity.WARNING,
                gpu_uuid=ctx.uuid,
                message=message,
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
                    "incumbent_user": meta.user,
                    "took_room": took_room,
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


def _incumbents(
    trees: dict[ProcessKey, tuple[int, ProcessMeta, int]],
    contender_tree: ProcessKey,
    *,
    arrival: float,
    history: History,
    ctx: GpuContext,
    config: DetectorConfig,
) -> list[tuple[ProcessKey, tuple[int, ProcessMeta, int]]]:
    """The other trees that were already there, holding enough, when the contender arrived; largest first."""
    candidates = []
    for key, entry in trees.items():
        if key == contender_tree or entry[0] < config.contention_incumbent_min_bytes:
            continue
        track = history.trees.get((key, ctx.uuid))
        if track is not None and track.first_seen <= arrival - config.contention_incumbent_seconds:
            candidates.append((key, entry))
    return sorted(candidates, key=lambda c: -c[1][0])
