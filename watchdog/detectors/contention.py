"""Contention: another process arrives (or grows) on a GPU where a run was already working.

The contender is named (pid, name, user, memory) so a person sees who is on the card before the training run
fails. It belongs to another process tree than the run it concerns (workers of one `accelerate`/`torchrun`
launch share a tree and never contend), holds at least `contention_min_bytes`, gained within the last
`contention_hold_seconds` (new, or grown), and is reported when either:

- it **took the room**: at least `contention_room_fraction` (half) of what was free just before it arrived, or
  enough to leave less than `contention_max_free_fraction` of the card free (a newcomer that takes a little
  of a big card shares it; one that takes most of the room, or the last of it, contends for it); critical
  under `contention_critical_free_fraction`; or
- it belongs to **another user** (`contention_other_user`, on by default): reported from the tick it appears,
  before it has taken anything, because on a shared box that is the moment to know who it is. Turn it off
  where users share cards on purpose.

The run it concerns (the incumbent) holds at least `contention_incumbent_min_bytes`, was on the GPU for
`contention_incumbent_seconds` before the arrival, and is not a static holder: a process whose memory never
moved after its first `contention_static_after_seconds` (a ballast, a server that loaded once) has already
reserved all it uses, so a newcomer cannot take its room; a training run moves (warm-up, validation,
sampling). When vramwatch starts, no process has a "before", so
nothing already running is ever called a contender.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..history import History
from ..model import Finding, ProcessKey, ProcessMeta, ProcessSample, Severity
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
        seen = _Seen(p, p.used_bytes, ctx.free_bytes, track.first_seen, trees)
        found = _took_the_room(seen, view(track.series), history, ctx, config)
        if found is None:
            found = _another_user(seen, history, ctx, config)
        if found is not None:
            findings.append(found)
    return findings


@dataclass(frozen=True, slots=True)
class _Seen:
    """A candidate contender at this tick, with the GPU's free memory and the trees on it."""

    p: ProcessSample
    used: int
    free: int
    first_seen: float
    trees: dict[ProcessKey, tuple[int, ProcessMeta, int]]


def _took_the_room(
    seen: _Seen, series: View, history: History, ctx: GpuContext, config: DetectorConfig
) -> Finding | None:
    """It gained its memory recently, took a quarter of the room, and left the card nearly full."""
    p, free = seen.p, seen.free
    arrival = _gained_at(seen.first_seen, series, seen.used, ctx.now, config)
    if arrival is None:
        return None
    before = ctx.free.max_between(arrival - config.contention_before_seconds, arrival)
    if before is None:
        return None  # no "before": vramwatch was not watching yet
    total = ctx.total_bytes
    took_most = free <= (1 - config.contention_room_fraction) * before
    left_little = total is not None and free <= config.contention_max_free_fraction * total
    if before - free < config.contention_min_bytes or not (took_most or left_little):
        return None
    incumbents = _incumbents(seen.trees, p.tree_key, arrival=arrival, entrance=_entrance(seen, series, config),
                             history=history, ctx=ctx, config=config)  # fmt: skip
    if not incumbents:
        return None
    critical = total is not None and free < config.contention_critical_free_fraction * total
    message = (
        f"{fmt.process_label(p.meta, p.key)} took {fmt.gib(seen.used)} GiB on {fmt.gpu_label(ctx.gpu)} "
        f"where {_victim(incumbents[0])} runs; free fell from {fmt.gib(before)} to {fmt.gib(free)} GiB"
    )
    return _finding(
        seen,
        ctx,
        incumbent=incumbents[0],
        message=message,
        before=before,
        arrival=arrival,
        took_room=True,
        critical=critical,
    )


def _another_user(seen: _Seen, history: History, ctx: GpuContext, config: DetectorConfig) -> Finding | None:
    """Another user's process appeared (within the hold time) where a run was working."""
    p, first_seen = seen.p, seen.first_seen
    if not config.contention_other_user or p.meta.user is None:
        return None
    if first_seen < ctx.now - config.contention_hold_seconds:
        return None
    before = ctx.free.max_between(first_seen - config.contention_before_seconds, first_seen)
    if before is None:
        return None
    incumbents = _incumbents(
        seen.trees, p.tree_key, arrival=first_seen, entrance=first_seen, history=history, ctx=ctx, config=config
    )
    # Only runs that move: another user's process starting next to a static holder (a ballast, a server that
    # loaded once) takes nobody's room.
    strangers = [
        c for c in incumbents if c[1][1].user not in (None, p.meta.user) and not _holder(c[0], history, ctx, config)
    ]
    if not strangers:
        return None
    message = (
        f"{fmt.process_label(p.meta, p.key)} started using {fmt.gpu_label(ctx.gpu)} where {_victim(strangers[0])} "
        f"runs; it holds {fmt.gib(seen.used)} GiB, {fmt.gib(seen.free)} GiB free (was {fmt.gib(before)})"
    )
    return _finding(
        seen,
        ctx,
        incumbent=strangers[0],
        message=message,
        before=before,
        arrival=first_seen,
        took_room=False,
        critical=False,
    )


def _victim(incumbent: tuple[ProcessKey, tuple[int, ProcessMeta, int]]) -> str:
    key, (_held, meta, members) = incumbent
    return fmt.process_label(meta, key, tree=True, members=members)


def _finding(
    seen: _Seen,
    ctx: GpuContext,
    *,
    incumbent: tuple[ProcessKey, tuple[int, ProcessMeta, int]],
    message: str,
    before: float,
    arrival: float,
    took_room: bool,
    critical: bool,
) -> Finding:
    p = seen.p
    key, (held, meta, _members) = incumbent
    return Finding(
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
            "used_bytes": seen.used,
            "free_before_bytes": int(before),
            "free_bytes": seen.free,
            "arrival_t": arrival,
            "incumbent_pid": key.pid,
            "incumbent_bytes": held,
            "incumbent_user": meta.user,
            "took_room": took_room,
        },
    )


def _gained_at(first_seen: float, series: View, used: int, now: float, config: DetectorConfig) -> float | None:
    """When the process took (half of) the memory it gained within the hold time; None if it gained little.

    A new process gained everything it holds; its CUDA context comes first and its allocations maybe much
    later (a notebook that loads a model after a while): the arrival that matters is the allocation.
    """
    start = now - config.contention_hold_seconds
    baseline = 0.0 if first_seen >= start else series.value_at(start)
    if baseline is None or used - baseline < config.contention_min_bytes:
        return None
    half = baseline + (used - baseline) / 2
    recent = series.since(max(start, first_seen))
    return next((t for t, v in zip(recent.t, recent.v, strict=True) if v >= half), None)


def _incumbents(
    trees: dict[ProcessKey, tuple[int, ProcessMeta, int]],
    contender_tree: ProcessKey,
    *,
    arrival: float,
    entrance: float,
    history: History,
    ctx: GpuContext,
    config: DetectorConfig,
) -> list[tuple[ProcessKey, tuple[int, ProcessMeta, int]]]:
    """The other trees that were already there, holding enough, when the contender came in; runs first.

    "Came in" is the contender's entrance (when it first held `contention_incumbent_min_bytes`, past a bare
    CUDA context), not its latest growth: a trainer started a few seconds after a ballast and leaking later
    is a leak, not contention with the ballast.
    """
    candidates = []
    for key, entry in trees.items():
        if key == contender_tree or entry[0] < config.contention_incumbent_min_bytes:
            continue
        track = history.trees.get((key, ctx.uuid))
        settled = config.contention_incumbent_seconds
        if track is None or track.first_seen > min(arrival, entrance) - settled:
            continue  # not there before the newcomer came in: they started together, neither squeezes the other
        static = _static(view(track.series).since(track.first_seen + config.contention_static_after_seconds),
                         arrival, config)  # fmt: skip
        candidates.append((static, key, entry))
    # A run that moves is named before a static holder (a ballast, a server that loaded once) of any size.
    candidates.sort(key=lambda c: (c[0], -c[2][0]))
    return [(key, entry) for _static_holder, key, entry in candidates]


def _holder(key: ProcessKey, history: History, ctx: GpuContext, config: DetectorConfig) -> bool:
    """A static holder we saw arrive (see `_static`).

    One that was already there when vramwatch started may be a run on its plateau (its warm-up unseen), so
    it keeps the benefit of the doubt.
    """
    track = history.trees.get((key, ctx.uuid))
    if track is None or not len(ctx.used) or track.first_seen <= ctx.used.t[0] + 2.0:
        return False
    return _static(view(track.series).since(track.first_seen + config.contention_static_after_seconds), ctx.now, config)


def _entrance(seen: _Seen, series: View, config: DetectorConfig) -> float:
    """When the contender first held more than a bare CUDA context (`contention_incumbent_min_bytes`)."""
    return next(
        (t for t, v in zip(series.t, series.v, strict=True) if v >= config.contention_incumbent_min_bytes),
        seen.first_seen,
    )


def _static(settled: View, arrival: float, config: DetectorConfig) -> bool:
    """Flat from shortly after it appeared until the arrival: a holder, not a working run (see config)."""
    values = [v for t, v in zip(settled.t, settled.v, strict=True) if t <= arrival]
    return bool(values) and max(values) - min(values) <= config.noise_bytes
