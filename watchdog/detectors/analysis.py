"""`analyze`: one pure pass from the history to everything the detectors conclude at its newest tick.

No clock, no I/O, no state: the same history always gives the same `Analysis`. What should be *notified*
(raise once, clear once) is decided afterwards by `FindingTracker` (lifecycle.py).

Per GPU that answered at the newest tick (a lost GPU is skipped; its series simply has a gap):
growth rate of the device and of each visible process, growth findings per process tree (or for the device
when no tree explains it), the time-to-OOM forecast, pressure, contention, probable OOM of processes that
just vanished, stale holders, and stability verdicts of trees that have plateaued.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ..history import History, Track
from ..model import Finding, GpuSample, ProcessKey, ProcessSample, Snapshot
from . import _format as fmt
from ._context import GpuContext
from ._series import view
from .config import DetectorConfig
from .contention import detect_contention
from .crash import detect_probable_oom
from .forecast import detect_oom_forecast
from .fragmentation import detect_fragmentation
from .growth import Profile, Rate, profile, retakes_without_rising
from .leak import growth_finding
from .pressure import detect_pressure
from .stability import verdict
from .stale import detect_stale

DEFAULT_CONFIG = DetectorConfig()


@dataclass(frozen=True, slots=True)
class Analysis:
    """What the detectors conclude at tick `t` (0.0 and empty when the history holds no tick yet).

    `findings` are the conditions true at this tick, before hysteresis. `oom_eta` holds (eta seconds,
    confidence) only for GPUs that grow sustainably. `verdicts` are informational ("stable at ...").
    """

    t: float
    findings: tuple[Finding, ...] = ()
    gpu_growth: Mapping[str, Rate] = field(default_factory=lambda: MappingProxyType({}))
    process_growth: Mapping[tuple[ProcessKey, str], Rate] = field(default_factory=lambda: MappingProxyType({}))
    oom_eta: Mapping[str, tuple[float, float]] = field(default_factory=lambda: MappingProxyType({}))
    verdicts: Mapping[tuple[ProcessKey, str], str] = field(default_factory=lambda: MappingProxyType({}))


def analyze(history: History, config: DetectorConfig = DEFAULT_CONFIG) -> Analysis:
    """Run every detector on `history` as of its newest snapshot."""
    snap = history.latest
    if snap is None:
        return Analysis(t=0.0)
    out = _Collector()
    vanished = _vanished(history, snap.t, config)
    for gpu in snap.gpus:
        if not gpu.up or gpu.used_bytes is None:
            continue
        ctx = _context(history, snap, gpu)
        _analyze_gpu(ctx, history, vanished.get(gpu.uuid, []), config, out)
    _fragmentation(history, snap, out)
    return Analysis(
        t=snap.t,
        findings=tuple(out.findings),
        gpu_growth=MappingProxyType(out.gpu_growth),
        process_growth=MappingProxyType(out.process_growth),
        oom_eta=MappingProxyType(out.oom_eta),
        verdicts=MappingProxyType(out.verdicts),
    )


@dataclass(slots=True)
class _Collector:
    findings: list[Finding] = field(default_factory=list)
    gpu_growth: dict[str, Rate] = field(default_factory=dict)
    process_growth: dict[tuple[ProcessKey, str], Rate] = field(default_factory=dict)
    oom_eta: dict[str, tuple[float, float]] = field(default_factory=dict)
    verdicts: dict[tuple[ProcessKey, str], str] = field(default_factory=dict)


@dataclass(slots=True)
class _Tree:
    key: ProcessKey
    members: list[ProcessSample]
    held_bytes: int = 0


def _fragmentation(history: History, snap: Snapshot, out: _Collector) -> None:
    """Agent data only: one fragmentation check per (pid, device) that reported this tick.

    What the process can use is its reserved memory plus the card's free memory (not the card's total: the
    other tenants' memory is not this process's to fragment).
    """
    by_pid = {(p.pid, p.gpu_uuid): p for p in snap.processes}
    for ts in snap.torch:
        gpu = snap.gpu(ts.gpu_uuid) if ts.gpu_uuid else None
        if gpu is None or gpu.free_bytes is None or ts.reserved_bytes is None:
            continue
        ring = history.torch.get((ts.pid, ts.device))
        if not ring:
            continue
        proc = by_pid.get((ts.pid, gpu.uuid))
        finding = detect_fragmentation(
            [s for _, s in ring],
            [t for t, _ in ring],
            ts.reserved_bytes + gpu.free_bytes,
            gpu_uuid=gpu.uuid,
            process=proc.key if proc else None,
            process_name=proc.meta.name if proc else None,
        )
        if finding is not None:
            out.findings.append(finding)


def _context(history: History, snap: Snapshot, gpu: GpuSample) -> GpuContext:
    total = gpu.total_bytes if gpu.total_bytes is not None else history.gpu_total.get(gpu.uuid)
    visible = snap.processes_visible
    return GpuContext(
        gpu=gpu,
        now=snap.t,
        total_bytes=total,
        used_bytes=gpu.used_bytes,
        free_bytes=gpu.free_bytes,
        used=view(history.gpu_used.get(gpu.uuid)),
        free=view(history.gpu_free.get(gpu.uuid)),
        processes=tuple(p for p in snap.processes_on(gpu.uuid) if p.used_bytes is not None) if visible else (),
        visible=visible,
    )


def _vanished(history: History, now: float, config: DetectorConfig) -> dict[str, list[tuple[ProcessKey, Track]]]:
    """Process tracks per GPU last seen before `now` but within `crash_hold_seconds`."""
    out: dict[str, list[tuple[ProcessKey, Track]]] = {}
    for (key, uuid), track in history.processes.items():
        if 0 < now - track.last_seen <= config.crash_hold_seconds:
            out.setdefault(uuid, []).append((key, track))
    return out


def _analyze_gpu(
    ctx: GpuContext,
    history: History,
    vanished: list[tuple[ProcessKey, Track]],
    config: DetectorConfig,
    out: _Collector,
) -> None:
    # Per process: the growth rate the metrics show, from the last `rate_report_seconds` only (the leak claim
    # below reads the tree's whole window).
    for p in ctx.processes:
        track = history.processes.get((p.key, ctx.uuid))
        if track is None:
            continue
        recent = view(track.series).since(ctx.now - config.rate_report_seconds * 1.001)
        rate = profile(recent, config).rate(config)
        if rate is not None:
            out.process_growth[(p.key, ctx.uuid)] = rate

    # Per tree: the leak claim (past warm-up, long horizons) or, failing that, a stability verdict.
    trees: dict[ProcessKey, _Tree] = {}
    for p in ctx.processes:
        tree = trees.setdefault(p.tree_key, _Tree(p.tree_key, []))
        tree.members.append(p)
        tree.held_bytes += p.used_bytes or 0
    tree_grows = False
    for tree in trees.values():
        track = history.trees.get((tree.key, ctx.uuid))
        if track is None:
            continue
        series = view(track.series)
        cutoff = track.first_seen + config.warmup_seconds
        grown = profile(series, config, start=cutoff, min_horizon=config.growth_min_horizon_seconds, report=False)
        best = grown.best(config.growth_min_horizon_seconds)
        meta = tree.members[0].meta
        members = len(tree.members)
        if best is not None and not _levels_off(grown, ctx, config):
            finding = growth_finding(ctx, best, config, key=tree.key, meta=meta, members=members)
            if finding is not None:
                out.findings.append(finding)
                tree_grows = True
                continue
        text = verdict(
            ctx,
            key=tree.key,
            meta=meta,
            members=members,
            held_bytes=tree.held_bytes,
            series=series,
            first_seen=track.first_seen,
            config=config,
        )
        if text is not None:
            out.verdicts[(tree.key, ctx.uuid)] = text

    # The device: its rate, the forecast, and a growth finding when no tree explains the growth.
    shortest = min(config.forecast_critical_min_horizon_seconds, config.forecast_min_horizon_seconds)
    device = profile(ctx.used, config, min_horizon=shortest)
    rate = device.rate(config, config.forecast_min_horizon_seconds)
    if rate is not None:
        out.gpu_growth[ctx.uuid] = rate
    warming = any(_warming(history.trees.get((key, ctx.uuid)), ctx.now, config) for key in trees)
    culprits = _sustained_growers(ctx, history, trees, device, config) if ctx.visible and trees else None
    if culprits == []:
        # The card rose, but no process on it rises steadily: runs arriving and warming up one after the other
        # (each a load, then flat or a sawtooth) add up to a slope that is nobody's leak.
        eta, finding = None, None
    else:
        grower = _label(culprits[0]) if culprits else _grower(ctx, trees, out)
        eta, finding = detect_oom_forecast(ctx, device, warming=warming, grower=grower, config=config)
    if eta is not None:
        out.oom_eta[ctx.uuid] = eta
    if finding is not None:
        out.findings.append(finding)
    if not tree_grows and ctx.used:
        starts = [tr.first_seen for key in trees if (tr := history.trees.get((key, ctx.uuid))) is not None]
        cutoff = max([ctx.used.first, *starts]) + config.warmup_seconds
        grown = profile(ctx.used, config, start=cutoff, min_horizon=config.growth_min_horizon_seconds, report=False)
        best = grown.best()
        if best is not None and not _levels_off(grown, ctx, config):
            device_growth = growth_finding(ctx, best, config)
            if device_growth is not None:
                out.findings.append(device_growth)

    finding = detect_pressure(ctx, culprit=lambda: _culprit(ctx, history, trees, out, config), config=config)
    if finding is not None:
        out.findings.append(finding)
    out.findings.extend(detect_contention(ctx, history, config))
    if vanished:  # most ticks nobody left: no exit table to build
        exits = {k: e for k, (_, e) in history.exits.items()}
        out.findings.extend(detect_probable_oom(ctx, vanished, config, exits=exits))
    out.findings.extend(detect_stale(ctx, history, config))


def _sustained_growers(
    ctx: GpuContext, history: History, trees: dict[ProcessKey, _Tree], device: Profile, config: DetectorConfig
) -> list[_Tree] | None:
    """The trees whose own memory rises steadily over the device forecast's horizons, fastest first; None when
    the device itself does not rise steadily (nothing to forecast: the per-tree fits are not spent).

    Only asked when the device itself has a sustained rise (rare), so its cost is off the common path. Each
    tree passes the forecast's own test, and a tree that frees and re-takes memory must raise its peaks.
    """
    shortest = min(config.forecast_critical_min_horizon_seconds, config.forecast_min_horizon_seconds)
    if device.best(shortest, config, max_share=config.forecast_max_subwindow_share) is None:
        return None
    found: list[tuple[float, _Tree]] = []
    for tree in trees.values():
        track = history.trees.get((tree.key, ctx.uuid))
        if track is None:
            continue
        series = view(track.series)
        best = profile(series, config, min_horizon=shortest, report=False).best(
            shortest, config, max_share=config.forecast_max_subwindow_share
        )
        if best is None or retakes_without_rising(series, best.xs[0], config):
            continue
        rate = best.current_bytes_per_second(config)
        if rate > 0:
            found.append((rate, tree))
    found.sort(key=lambda rt: -rt[0])
    return [tree for _, tree in found]


def _levels_off(grown: Profile, ctx: GpuContext, config: DetectorConfig) -> bool:
    """Growth that is slowing towards a plateau that fits the card is not a leak."""
    if ctx.free_bytes is None:
        return False
    return grown.levels_off_within(ctx.free_bytes - config.oom_margin_bytes, config)


def _warming(track: Track | None, now: float, config: DetectorConfig) -> bool:
    """Young and never flat for `settle_seconds` since it appeared: still loading, most likely."""
    if track is None or now - track.first_seen >= config.forecast_warmup_seconds:
        return False
    series = view(track.series)
    start = low = high = None
    for t, v in zip(series.t, series.v, strict=True):
        if start is None or low is None or high is None or max(high, v) - min(low, v) > config.noise_bytes:
            start, low, high = t, v, v
        else:
            low, high = min(low, v), max(high, v)
        if t - start >= config.settle_seconds:
            return False
    return True


def _label(tree: _Tree) -> str:
    """A tree with one process on this GPU is named after that process, not after whatever launched it
    (a shell script, `timeout`, a job runner): that is the name the user recognises in nvidia-smi."""
    if len(tree.members) == 1:
        only = tree.members[0]
        return fmt.process_label(only.meta, only.key)
    return fmt.process_label(tree.members[0].meta, tree.key, tree=True, members=len(tree.members))


def _culprit(
    ctx: GpuContext, history: History, trees: dict[ProcessKey, _Tree], out: _Collector, config: DetectorConfig
) -> str | None:
    """Who a pressure finding names: the tree filling the card, else the one that just took the most, else the
    largest holder.

    On a card shared with a big static holder (a server, a ballast) the largest holder is rarely the one to
    look at: the run that keeps taking memory is (a sustained rise), or the newcomer that took the last of it.
    """
    best: tuple[float, _Tree] | None = None
    for tree in trees.values():
        rates = [out.process_growth.get((p.key, ctx.uuid)) for p in tree.members]
        total = sum(r.bytes_per_second for r in rates if r is not None and r.sustained and r.bytes_per_second > 0)
        if total > 0 and (best is None or total > best[0]):
            best = (total, tree)
    if best is not None:
        return f"{_label(best[1])} is filling it ({fmt.gib(best[1].held_bytes)} GiB and growing)"
    took: tuple[float, _Tree] | None = None
    for tree in trees.values():
        track = history.trees.get((tree.key, ctx.uuid))
        if track is None:
            continue
        since = ctx.now - config.pressure_hold_seconds
        low = view(track.series).min_between(since, ctx.now + 1.0)
        gained = tree.held_bytes if low is None or track.first_seen > since else tree.held_bytes - low
        if gained >= config.min_rise_bytes and (took is None or gained > took[0]):
            took = (gained, tree)
    if took is not None:
        return (
            f"{_label(took[1])} took {fmt.gib(took[0])} GiB of it within {fmt.duration(config.pressure_hold_seconds)}"
        )
    largest = max(trees.values(), key=lambda tr: tr.held_bytes, default=None)
    return (
        None if largest is None else f"the largest holder is {_label(largest)} with {fmt.gib(largest.held_bytes)} GiB"
    )


def _grower(ctx: GpuContext, trees: dict[ProcessKey, _Tree], out: _Collector) -> str | None:
    """The tree growing fastest on this GPU right now (the sum of its processes' rates), if any grows.

    Called only to name the culprit of a device forecast, so a rate need not pass the sustained test.
    """
    best: tuple[float, _Tree] | None = None
    for tree in trees.values():
        rates = [out.process_growth.get((p.key, ctx.uuid)) for p in tree.members]
        total = sum(r.bytes_per_second for r in rates if r is not None and r.bytes_per_second > 0)
        if total > 0 and (best is None or total > best[0]):
            best = (total, tree)
    return None if best is None else _label(best[1])
