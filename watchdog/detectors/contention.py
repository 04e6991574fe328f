"""Contention: a newcomer on a GPU leaves a run that was already working less room than it needs.

A finding names the newcomer (pid, name, user, memory) so a person sees who is on the card before the run
fails. The physics decides who can be squeezed:

- **A holder whose memory does not move cannot be squeezed.** The caching allocator keeps what a run has
  reserved; a model server that loaded once, a notebook, a ballast, or a run on its plateau already holds
  all it uses, so a newcomer takes nobody's room from it. An incumbent is *moving* when its memory varied by
  more than `noise_bytes` in the `contention_static_seconds` before the newcomer came in.
- **A moving run needs the room of its own recent peaks.** A run that frees and re-takes memory (bucketed
  shapes, `empty_cache()`, validation that comes and goes) needs `peak - now` free to take its next peak,
  whatever the card's size. A newcomer that leaves less than that is named, **critical**: the run's next
  peak cannot fit.
- **A young run has not shown its needs yet.** A run younger than `contention_young_seconds` when the
  newcomer came in (loading, first steps, first validation), flat for a few seconds or not, may still need
  more; one that appeared at its full size and never moved (a ballast) is a static holder all the same. A newcomer
  that takes at least `contention_room_fraction` of the room that was free *and* leaves less than
  `contention_young_headroom` of what the young run holds is named, as a warning: what the run needs next
  is unknown, and the room it could have grown into is gone.

Only a newcomer is ever named, and on its arrival: another process tree than the incumbent (workers of one
`accelerate`/`torchrun` launch never contend) that came in (first held more than a bare CUDA context) at
least `contention_incumbent_seconds` after the incumbent appeared (two runs that start together squeeze
nobody), holds at least `contention_min_bytes`, and is judged for `contention_arrival_seconds` after it came
in. What it takes later is growth, judged by the growth and forecast detectors (a run that leaks next to
another is a leak, not a newcomer), and what others take later is theirs. When vramwatch starts, nothing has
a "before", so nothing already running is called a contender. Card-size fractions are deliberately not used:
on a card shared with a big static holder, 10 % of the card can be more than the whole room of a run.

`contention_other_user` (off by default) also names another user's process from the tick it appears next
to a moving run, before it took anything: useful where users must not share cards, noise where they do.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..history import History
from ..model import Finding, FindingKind, ProcessKey, ProcessMeta, ProcessSample, Severity
from . import _format as fmt
from ._context import GpuContext
from ._series import View, view
from ._settings import non_negative, setting, share, validate
from .base import Detector
from .config import BARE_CONTEXT_BYTES, MIB


@dataclass(frozen=True, slots=True)
class ContentionConfig:
    """Who counts as a newcomer, and which runs it can squeeze."""

    #: A newcomer must have taken at least this much (from the card's free memory, and in its own growth).
    contention_min_bytes: int = setting(256 * MIB, non_negative)
    #: The run it squeezes holds at least this much and was on the GPU this long before the newcomer came in.
    contention_incumbent_min_bytes: int = setting(BARE_CONTEXT_BYTES, non_negative)
    contention_incumbent_seconds: float = setting(10.0, non_negative)
    #: An incumbent whose memory did not move (beyond `noise_bytes`) in this many seconds before the newcomer
    #: came in is a static holder (a server that loaded once, a notebook, a run on its plateau): the caching
    #: allocator already holds what it uses, so nobody can take "its" room.
    contention_static_seconds: float = setting(60.0, non_negative)
    #: A moving run needs its own recent peak (over this many seconds) minus what it holds now: a newcomer that
    #: leaves less free is named, critical (the run's next peak cannot fit).
    contention_need_seconds: float = setting(300.0, non_negative)
    #: A run younger than this (by its start time) has not shown what it needs yet (flat or not): a newcomer
    #: that takes at least `contention_room_fraction` of the free room and leaves less than
    #: `contention_young_headroom` x what the young run holds is named (warning).
    contention_young_seconds: float = setting(120.0, non_negative)
    contention_room_fraction: float = setting(0.5, share)
    contention_young_headroom: float = setting(0.5, share)
    #: A newcomer is judged for this long after it came in (first held `contention_incumbent_min_bytes`): what
    #: it takes later is growth, and what others take later is theirs.
    contention_arrival_seconds: float = setting(60.0, non_negative)
    #: Also name another user's process from the tick it appears next to a moving run, before it took anything.
    #: Off by default: where users share cards on purpose it names every normal arrival.
    contention_other_user: bool = False

    def __post_init__(self) -> None:
        validate(self)


def detect_contention(ctx: GpuContext, config: ContentionConfig) -> list[Finding]:
    history = ctx.history
    if not ctx.visible or ctx.free_bytes is None:
        return []
    trees: dict[ProcessKey, _Tree] | None = None
    findings: list[Finding] = []
    for p in ctx.processes:
        if p.used_bytes is None or p.used_bytes < config.contention_min_bytes:
            continue
        track = history.processes.get((p.key, ctx.uuid))
        if track is None:
            continue
        series = view(track.series)
        # Both rules judge a newcomer on its arrival: a process that came in long ago (nearly all of them, every
        # tick) is told by a lookup or two, before the card's trees are even listed.
        entrance = _arriving(track.first_seen, series, ctx, config)
        if entrance is None:
            continue
        if trees is None:
            trees = _trees(ctx.processes)
        seen = _Seen(p, p.used_bytes, ctx.free_bytes, track.first_seen, entrance, trees)
        found = _took_the_room(seen, series, history, ctx, config)
        if found is None:
            found = _another_user(seen, history, ctx, config)
        if found is not None:
            findings.append(found)
    return findings


def _trees(processes: tuple[ProcessSample, ...]) -> dict[ProcessKey, _Tree]:
    """The process trees on the card, in the order their first process appears."""
    trees: dict[ProcessKey, _Tree] = {}
    for p in processes:
        tree = trees.get(p.tree_key)
        held = (p.used_bytes or 0) + (tree.held if tree else 0)
        trees[p.tree_key] = _Tree(p.tree_key, held, p.meta, (tree.members if tree else 0) + 1)
    return trees


@dataclass(frozen=True, slots=True)
class _Tree:
    """A process tree on this GPU at this tick: what it holds, who it is, how many processes."""

    key: ProcessKey
    held: int
    meta: ProcessMeta
    members: int


@dataclass(frozen=True, slots=True)
class _Seen:
    """A newcomer at this tick, with when it came in, the GPU's free memory and the trees on it."""

    p: ProcessSample
    used: int
    free: int
    first_seen: float
    entrance: float  # when it came in (`_arriving`)
    trees: dict[ProcessKey, _Tree]


@dataclass(frozen=True, slots=True)
class _Incumbent:
    """A run that was there before the newcomer and could be squeezed, with the room it has shown it needs."""

    tree: _Tree
    age_seconds: float  # how old it was when the newcomer came in
    need_bytes: int  # its recent peak minus what it holds now


def _took_the_room(
    seen: _Seen, series: View, history: History, ctx: GpuContext, config: ContentionConfig
) -> Finding | None:
    """On its arrival, it left a moving run less room than that run needs, or took most of a young run's."""
    entrance = seen.entrance
    # What trees that came in after it took is theirs: count it as free, as it was when this one arrived.
    later = sum(
        tree.held
        for key, tree in seen.trees.items()
        if key != seen.p.tree_key
        and (track := history.trees.get((key, ctx.uuid))) is not None
        and track.first_seen > entrance
    )
    free = seen.free + later
    before = free + seen.used  # the room it found: what was free then plus what it took
    recent = series.since(entrance - config.contention_arrival_seconds)
    arrival = next((t for t, v in zip(recent.t, recent.v, strict=True) if v >= seen.used / 2), entrance)
    for inc in _incumbents(seen, entrance, history, ctx, config):
        squeezed = free < inc.need_bytes
        young = (
            inc.age_seconds < config.contention_young_seconds
            and free <= (1 - config.contention_room_fraction) * before
            and free < config.contention_young_headroom * inc.tree.held
        )
        if not (squeezed or young):
            continue
        if squeezed:
            why = f"it needs {fmt.gib(inc.need_bytes)} GiB more at its peaks"
        else:
            why = f"it started {fmt.duration(inc.age_seconds)} before and has not shown all it needs yet"
        message = (
            f"{fmt.process_label(seen.p.meta, seen.p.key)} took {fmt.gib(seen.used)} GiB on {fmt.gpu_label(ctx.gpu)} "
            f"where {_victim(inc.tree)} runs; free fell from {fmt.gib(before)} to {fmt.gib(free)} GiB ({why})"
        )
        return _finding(seen, ctx, inc, message=message, before=before, arrival=arrival, critical=squeezed)
    return None


def _another_user(seen: _Seen, history: History, ctx: GpuContext, config: ContentionConfig) -> Finding | None:
    """Another user's process arrived where a moving or young run was working (opt-in)."""
    p = seen.p
    if not config.contention_other_user or p.meta.user is None:
        return None
    entrance = seen.entrance
    before = seen.free + seen.used
    strangers = [
        inc
        for inc in _incumbents(seen, entrance, history, ctx, config)
        if inc.tree.meta.user not in (None, p.meta.user)
    ]
    if not strangers:
        return None
    message = (
        f"{fmt.process_label(p.meta, p.key)} started using {fmt.gpu_label(ctx.gpu)} where {_victim(strangers[0].tree)} "
        f"runs; it holds {fmt.gib(seen.used)} GiB, {fmt.gib(seen.free)} GiB free (was {fmt.gib(before)})"
    )
    return _finding(seen, ctx, strangers[0], message=message, before=before, arrival=seen.first_seen, critical=False)


def _arriving(first_seen: float, series: View, ctx: GpuContext, config: ContentionConfig) -> float | None:
    """When the newcomer came in (first held more than a bare CUDA context, `contention_incumbent_min_bytes`),
    if that was within `contention_arrival_seconds` and vramwatch watched the card before it came; else None.

    A newcomer is judged on its arrival: what it takes later is growth (the growth and forecast detectors'),
    and what others take later is theirs. Runs on every process at every tick, so it looks only at the
    arrival window; a process that came in long ago is told by a lookup or two, without a scan of its past.
    """
    if not ctx.saw_arrive(first_seen):
        return None  # no "before": vramwatch was not watching yet
    cut = ctx.now - config.contention_arrival_seconds
    least = config.contention_incumbent_min_bytes
    if series.since(first_seen).max() < least:
        return first_seen if first_seen >= cut else None  # never held more than a bare context
    past = series.between(first_seen, cut)
    # Its last point before the window is usually enough to tell (a long-running process): no scan of its past.
    if len(past) and (past.last_value >= least or past.max() >= least):
        return None  # it came in before the window
    recent = series.since(cut)
    entrance = next(
        (t for t, v in zip(recent.t, recent.v, strict=True) if v >= least),
        first_seen,
    )
    return entrance if entrance >= cut else None


def _victim(tree: _Tree) -> str:
    return fmt.process_label(tree.meta, tree.key, tree=True, members=tree.members)


def _finding(
    seen: _Seen, ctx: GpuContext, inc: _Incumbent, *, message: str, before: float, arrival: float, critical: bool
) -> Finding:
    p = seen.p
    return Finding(
        kind=FindingKind.CONTENTION,
        severity=Severity.CRITICAL if critical else Severity.WARNING,
        gpu_uuid=ctx.uuid,
        message=message,
        t=ctx.now,
        process=p.key,
        process_name=p.meta.name,
        at_risk=inc.tree.key,
        numbers={
            "pid": p.pid,
            "user": p.meta.user,
            "used_bytes": seen.used,
            "free_before_bytes": int(before),
            "free_bytes": seen.free,
            "arrival_t": arrival,
            "incumbent_pid": inc.tree.key.pid,
            "incumbent_bytes": inc.tree.held,
            "incumbent_user": inc.tree.meta.user,
            "incumbent_need_bytes": inc.need_bytes,
        },
    )


def _incumbents(
    seen: _Seen, entrance: float, history: History, ctx: GpuContext, config: ContentionConfig
) -> list[_Incumbent]:
    """The other trees that were there before the newcomer came in, hold enough, and could be squeezed.

    A tree never seen to move is static, whatever its age; one younger than `contention_young_seconds` is
    young (its needs are unknown, even if flat for a few seconds); an older one that did not move in the
    `contention_static_seconds` before the newcomer came in is static. Static trees are left out. Neediest
    first.
    """
    out = []
    for key, tree in seen.trees.items():
        if key == seen.p.tree_key or tree.held < config.contention_incumbent_min_bytes:
            continue
        track = history.trees.get((key, ctx.uuid))
        if track is None or track.first_seen > entrance - config.contention_incumbent_seconds:
            continue  # not there before the newcomer came in: they started together, neither squeezes the other
        series = view(track.series)
        seen_before = series.before(entrance)
        if len(seen_before) < 2 or seen_before.max() - seen_before.min() <= ctx.config.noise_bytes:
            continue  # never seen to move (a ballast, a server loaded before we watched): it holds all it uses
        age = ctx.age_at(tree.meta, entrance, track.first_seen)
        lookback = seen_before.since(entrance - config.contention_static_seconds)
        flat = len(lookback) < 2 or lookback.max() - lookback.min() <= ctx.config.noise_bytes
        if flat and age >= config.contention_young_seconds:
            continue  # static: it already holds all it uses
        peak = series.max_between(entrance - config.contention_need_seconds, ctx.now + 1.0)
        need = 0 if peak is None else max(0, int(peak) - tree.held)
        out.append(_Incumbent(tree, age, need))
    out.sort(key=lambda inc: (-inc.need_bytes, -inc.tree.held))
    return out


DETECTOR = Detector(
    kind=FindingKind.CONTENTION,
    defaults=ContentionConfig(),
    raise_after=1,  # an event: a newcomer is named on the tick it is seen
    clear_after=10,
    per_gpu=detect_contention,
    advice="contention",
)
