"""`analyze`: one pure pass from the history to everything the detectors conclude at its newest tick.

No clock, no I/O, no state: the same history (and the same agent reports) always give the same `Analysis`.
What should be *notified* (raise once, clear once) is decided afterwards by `FindingTracker` (lifecycle.py).
The one thing a detector writes is a cache: what it concluded from a series, kept on the series' track for the
ticks at which the series holds its value (`Track.carried`, `leak._Look`). It is checked against the series
before any use, so that the answer is the one a fresh look gives.

The pass gathers what several detectors read once (`_context.py`): per GPU that answered at the newest tick
(a lost GPU is skipped; its series simply has a gap), the growth rate of each visible process, the process
trees, the device's growth profile, and the processes that left it. Then every registered detector
(registry.py) runs: the per-GPU ones for each GPU in turn, then the per-tick ones.

A detector that raises loses only its own conclusions, for that GPU at that tick (`Analysis.failed`): the others'
findings stand, and the tracker neither raises nor clears what the failed one had concluded (a tick it could not
judge is no evidence either way). Before, one detector's bug on an odd series dropped the whole tick for all.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType
from typing import Any, TypeVar

from ..history import History, Track
from ..lazy import LazyMapping
from ..model import Finding, GpuSample, OomEvent, ProcessKey, ProcessSample, Snapshot
from ._context import GpuContext, Tick, Tree
from ._series import View, view
from .base import Observation, Verdict
from .config import DetectorConfig
from .growth import Rate, RatePlan, process_rate, process_rate_plan, profile, reported_rate
from .registry import detectors, settings

DEFAULT_CONFIG = DetectorConfig()
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Failure:
    """A detector that raised at a tick: on one GPU (`gpu_uuid`), or for the whole tick (None: a per-tick one, which
    may speak of any GPU). `error` is the exception's one line; `detail` its traceback, for the log."""

    kind: str
    gpu_uuid: str | None
    error: str
    detail: str


@dataclass(frozen=True, slots=True)
class Analysis:
    """What the detectors conclude at tick `t` (0.0 and empty when the history holds no tick yet).

    `findings` are the conditions true at this tick, before hysteresis. `oom_eta` holds (eta seconds,
    confidence) only for GPUs that grow sustainably. `verdicts` are informational ("stable at ..."), each
    sentence written when first read.
    `process_growth` lists its keys at once and computes each rate when first read (the same rate whenever it is
    read, from whichever thread): the metrics read them per scrape, not per tick.
    """

    t: float
    findings: tuple[Finding, ...] = ()
    gpu_growth: Mapping[str, Rate] = field(default_factory=lambda: MappingProxyType({}))
    process_growth: Mapping[tuple[ProcessKey, str], Rate] = field(default_factory=lambda: MappingProxyType({}))
    oom_eta: Mapping[str, tuple[float, float]] = field(default_factory=lambda: MappingProxyType({}))
    verdicts: Mapping[tuple[ProcessKey, str], str] = field(default_factory=lambda: MappingProxyType({}))
    #: The detectors that raised at this tick (none, nearly always): their conclusions are missing, not negative.
    failed: tuple[Failure, ...] = ()


def analyze(history: History, config: DetectorConfig = DEFAULT_CONFIG, *, ooms: Iterable[OomEvent] = ()) -> Analysis:
    """Run every detector on `history` as of its newest snapshot; `ooms`: what agents reported since the last."""
    snap = history.latest
    if snap is None:
        return Analysis(t=0.0)
    departed = _departed(history, snap.t)
    every = detectors()
    failed: list[Failure] = []
    gpus: list[GpuContext] = []
    for gpu in snap.gpus:
        if not gpu.up or gpu.used_bytes is None:
            continue
        try:
            gpus.append(_context(history, snap, gpu, config, departed.get(gpu.uuid, ())))
        except Exception as exc:
            # What the per-GPU detectors read of this GPU could not be gathered: none of them judged it. (The per-tick
            # ones still run, on the GPUs that have a context.)
            failed.extend(_failure(d.kind, gpu.uuid, exc) for d in every if d.per_gpu is not None)
    tick = Tick(history=history, snapshot=snap, config=config, gpus=tuple(gpus), ooms=tuple(ooms))
    found: list[Observation] = []
    for ctx in gpus:
        for d in every:
            if d.per_gpu is not None:
                _run(d.kind, ctx.uuid, d.per_gpu, ctx, settings(config, d), found=found, failed=failed)
    for d in every:
        if d.per_tick is not None:
            _run(d.kind, None, d.per_tick, tick, settings(config, d), found=found, failed=failed)
    findings: list[Finding] = []
    etas: dict[str, tuple[float, float]] = {}
    verdicts: dict[tuple[ProcessKey, str], Verdict] = {}
    for o in found:  # (one pass: on a card of long runs nearly every tree has a verdict at every tick)
        if isinstance(o, Verdict):
            verdicts[o.key, o.gpu_uuid] = o
        elif isinstance(o, Finding):
            findings.append(o)
        else:
            etas[o.gpu_uuid] = (o.eta_seconds, o.confidence)
    return Analysis(
        t=snap.t,
        findings=tuple(findings),
        gpu_growth=MappingProxyType({ctx.uuid: ctx.device_rate for ctx in gpus if ctx.device_rate is not None}),
        process_growth=_PerGpu({ctx.uuid: ctx.process_growth for ctx in gpus}),
        oom_eta=MappingProxyType(etas),
        verdicts=LazyMapping(verdicts, _said),
        failed=tuple(failed),
    )


def _run(
    kind: str,
    gpu_uuid: str | None,
    detect: Callable[[T, Any], Iterable[Observation]],
    subject: T,
    own: object,
    *,
    found: list[Observation],
    failed: list[Failure],
) -> None:
    """One detector on one GPU (or the tick): all it concludes, or, when it raises, nothing of it and a `Failure`
    (what it yielded before raising is dropped with the rest: half a conclusion is not one)."""
    before = len(found)
    try:
        found.extend(detect(subject, own))
    except Exception as exc:
        del found[before:]
        failed.append(_failure(kind, gpu_uuid, exc))


def _failure(kind: str, gpu_uuid: str | None, exc: Exception) -> Failure:
    line = f"{type(exc).__name__}: {exc}"
    return Failure(kind, gpu_uuid, line, "".join(traceback.format_exception(exc)))


def _context(
    history: History,
    snap: Snapshot,
    gpu: GpuSample,
    config: DetectorConfig,
    departed: tuple[tuple[ProcessKey, Track], ...],
) -> GpuContext:
    """One GPU's context, with what several detectors read computed once."""
    total = gpu.total_bytes if gpu.total_bytes is not None else history.gpu_total.get(gpu.uuid)
    visible = snap.processes_visible
    processes = tuple(p for p in snap.processes_on(gpu.uuid) if p.used_bytes is not None) if visible else ()
    used = view(history.gpu_used.get(gpu.uuid))
    now = snap.t
    # Per process: the growth rate the metrics show, from the last `rate_report_seconds` only (the leak claim
    # reads the tree's whole window). Which processes have one is known now. A view that held one value has its
    # rate at the cost of a lookup, so it is computed now; any other is computed when first read: by a scrape or
    # the live page (once per read, not per tick), or by a detector that words a finding.
    rates: dict[ProcessKey, Rate | tuple[View, RatePlan]] = {}
    # Each tree's first process, and the others of the trees that have more (most trees are one process).
    firsts: dict[ProcessKey, ProcessSample] = {}
    others: dict[ProcessKey, list[ProcessSample]] = {}
    tracks, uuid = history.processes, gpu.uuid
    since = now - config.rate_report_seconds * 1.001
    # The plan depends only on a view's length (at least 3 here) and its oldest and newest times.
    plans: dict[tuple[float, float], RatePlan | None] = {}
    for p in processes:
        if firsts.setdefault(p.tree_key, p) is not p:
            others.setdefault(p.tree_key, []).append(p)
        track = tracks.get((p.key, uuid))
        if track is None:
            continue
        points = View.of(track.series, since)  # (a track holds a point at least)
        if len(points) < 3:
            continue
        span = (points.first, points.now)
        try:
            plan = plans[span]
        except KeyError:
            plan = plans[span] = process_rate_plan(points, config)
        if plan is None:
            continue
        if config.min_rise_bytes > 0 and points.still():  # (without a minimum rise, a still view's rate is a fit)
            rates[p.key] = process_rate(points, config, plan)
        else:
            # A scrape reads the rate from its own thread, maybe while the next tick appends to the series: under
            # the history's lock, from the staircases while no point was appended since, else from the points.
            rates[p.key] = (points, plan)
    process_growth = LazyMapping(rates, partial(_process_rate, config=config, lock=history.lock))
    trees = {key: Tree(key, (p,), p.used_bytes or 0) for key, p in firsts.items()}
    for key, ps in others.items():
        every = (firsts[key], *ps)
        trees[key] = Tree(key, every, sum([p.used_bytes or 0 for p in every]))
    # The device: its profile down to the forecast's shortest horizon, and the rate the metrics show. Only the
    # forecast reads the profile, and only its sustained and rising fits: a card that cannot be growing (most
    # ticks) gets none, and its rate, the reported window's, comes from the series' staircases.
    shortest = min(config.forecast_critical_min_horizon_seconds, config.forecast_min_horizon_seconds)
    device = profile(used, config, min_horizon=shortest, report=False)
    if device.fits:
        device_rate = device.rate(config, config.forecast_min_horizon_seconds)
    else:
        device_rate = reported_rate(used, config, shortest, config.forecast_min_horizon_seconds)
    return GpuContext(
        gpu=gpu,
        now=now,
        total_bytes=total,
        used_bytes=gpu.used_bytes,
        free_bytes=gpu.free_bytes,
        used=used,
        free=view(history.gpu_free.get(gpu.uuid)),
        processes=processes,
        visible=visible,
        history=history,
        config=config,
        process_growth=process_growth,
        trees=MappingProxyType(trees),
        device=device,
        device_rate=device_rate,
        departed=departed,
    )


def _said(verdict: Verdict) -> str:
    return verdict.text


def _process_rate(
    entry: Rate | tuple[View, RatePlan], config: DetectorConfig, lock: AbstractContextManager[object]
) -> Rate:
    if isinstance(entry, Rate):
        return entry
    points, plan = entry
    with lock:
        return process_rate(points, config, plan)


class _PerGpu(Mapping[tuple[ProcessKey, str], Rate]):
    """Every card's process rates under (process, card uuid): the cards' own mappings, read through rather than
    copied into a new table at each tick (no rate is computed until it is read)."""

    __slots__ = ("_cards",)

    def __init__(self, cards: Mapping[str, Mapping[ProcessKey, Rate]]) -> None:
        self._cards = cards

    def __getitem__(self, item: tuple[ProcessKey, str]) -> Rate:
        if not isinstance(item, tuple) or len(item) != 2:
            raise KeyError(item)
        key, uuid = item
        return self._cards[uuid][key]

    def __contains__(self, item: object) -> bool:
        # Mapping's own would read the value, and so compute the rate.
        if not isinstance(item, tuple) or len(item) != 2:
            return False
        rates = self._cards.get(item[1])
        return rates is not None and item[0] in rates

    def __iter__(self) -> Iterator[tuple[ProcessKey, str]]:
        for uuid, rates in self._cards.items():
            for key in rates:
                yield key, uuid

    def __len__(self) -> int:
        return sum(len(rates) for rates in self._cards.values())

    def __repr__(self) -> str:
        return f"_PerGpu({len(self._cards)} cards, {len(self)} processes)"


def _departed(history: History, now: float) -> dict[str, tuple[tuple[ProcessKey, Track], ...]]:
    """Process tracks per GPU last seen before `now` (one pass over the history for all GPUs)."""
    out: dict[str, list[tuple[ProcessKey, Track]]] = {}
    for (key, uuid), track in history.processes.items():
        if now - track.last_seen > 0:
            out.setdefault(uuid, []).append((key, track))
    return {uuid: tuple(tracks) for uuid, tracks in out.items()}
