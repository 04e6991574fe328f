"""Growth findings: a process tree (or, when no tree explains it, a whole GPU) whose memory keeps rising.

This is the "leak" claim, so it asks for more evidence than the OOM forecast: the first `warmup_seconds` of a
process's life are ignored (model load, first steps, first validation), and growth must be sustained over a
window of at least `growth_min_horizon_seconds` (4 min by default), rising in each of its five parts. A run
whose warm-up steps come minutes apart has at most a few steps; a leak keeps stepping. A leak that steps
once per epoch is caught at the horizon where every part holds a step (epochs up to ~12 min with the
default one-hour history). A run sawing in the band it lived in is not claimed (`forecast.within_band`).

A tree that does not grow gets a stability verdict instead ("stable at 20.1 GiB for 12 min", stability.py).
Here too is what the advisor asks of growth: which processes leak (`leaking`) and which rise steadily
(`steady`), so that no other module judges growth by its own rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from ..history import History, Series, Track
from ..model import Finding, FindingKind, ProcessKey, ProcessMeta, Severity
from . import _format as fmt
from . import forecast
from ._context import GpuContext
from ._series import View
from ._settings import non_negative, setting, validate
from .base import Detector, Observation
from .config import DetectorConfig
from .forecast import eta_seconds
from .growth import NO_FITS, Fit, Profile, Rate, cannot_rise, profile
from .stability import Floor, card_line, floor, verdict

#: A process younger than this is still warming up as far as the leak advice is concerned.
LEAK_MIN_AGE_SECONDS = 120.0
#: ... and its steady rise must span at least this long to be called a leak before a growth finding is raised.
LEAK_MIN_WINDOW_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class LeakConfig:
    """When a tree's (or a card's) growth is claimed as a leak."""

    #: A leak is claimed only from windows at least this long.
    growth_min_horizon_seconds: float = setting(240.0, non_negative)
    growth_min_rate_bytes_per_second: float = setting(50_000.0, non_negative)
    #: A growth finding carries an ETA when the card would be full within this time.
    growth_eta_max_seconds: float = setting(86_400.0, non_negative)

    def __post_init__(self) -> None:
        validate(self)


def detect(ctx: GpuContext, own: LeakConfig) -> Iterator[Observation]:
    """Per tree: the leak claim (past warm-up, long horizons) or, failing that, a stability verdict; then the
    device's own growth finding when no tree explains it."""
    config, history, uuid = ctx.config, ctx.history, ctx.uuid
    card = card_line(ctx)
    explained = False  # a tree's growth explains the card's
    newest_start = None  # the latest first sighting among the trees with a track (the device's warm-up ends after)
    for tree in ctx.trees.values():
        track = history.trees.get((tree.key, uuid))
        if track is None:
            continue
        if newest_start is None or track.first_seen > newest_start:
            newest_start = track.first_seen
        points = track.series
        series = View.of(points)  # (a track holds a point at least)
        cutoff = track.first_seen + config.warmup_seconds
        # What the last look at this tree concluded holds while its series has held its value since (most trees,
        # most ticks): the leak claim's test cannot pass, and the verdict's floor stands (see `_Look`).
        look = track.carried
        since = None  # the points since warm-up, once asked for (the rise test, the profile)
        if not (isinstance(look, _Look) and look.holds(points, config)):
            look = None
            if points.held_since(points.appended - 1):
                # Its newest point held the value before it: look again, and keep the look. (One that moved at
                # this tick, a sawtooth's, will likely move at the next: a look kept would not be read.)
                since = series.since(cutoff)
                quiet = len(since) >= 3 and cannot_rise(since, config)
                look = track.carried = _Look(points, points.appended, config, quiet, floor(series, config))
        elif not look.quiet:
            # Quiet may have come since: the look was taken on a short series, or the floor rose as old points left.
            since = series.since(cutoff)
            if len(since) >= 3 and cannot_rise(since, config):
                look = track.carried = _Look(points, look.points, config, True, look.floor)
        if look is not None and look.quiet:
            grown = NO_FITS
        elif since is not None:  # (the profile of `series` from `cutoff` is the profile of these points)
            grown = profile(since, config, min_horizon=own.growth_min_horizon_seconds, report=False)
        else:
            grown = profile(series, config, start=cutoff, min_horizon=own.growth_min_horizon_seconds, report=False)
        best = grown.best(own.growth_min_horizon_seconds) if grown.fits else None  # most trees: none to rank
        refills = band = False
        if (
            best is not None
            and not _levels_off(grown, ctx)
            and not (refills := _refills(ctx, track))
            and not (band := forecast.within_band(ctx, series, best, forecast.DETECTOR.settings(config)))
        ):
            meta = tree.members[0].meta
            finding = growth_finding(ctx, best, own, key=tree.key, meta=meta, members=len(tree.members), series=series)
            if finding is not None:
                yield finding
                explained = True
                continue
        # A run refilling its cache at the card's end, or sawing in the band it lived in, explains the card's climb: no
        # growth of the card's own either.
        explained = explained or refills or band
        stable, at = verdict(ctx, tree, series, track.first_seen, card, carried=None if look is None else look.floor)
        if look is not None and at is not None and at is not look.floor:
            track.carried = _Look(points, look.points, config, look.quiet, at)
        if stable is not None:
            yield stable
    if not explained and ctx.used:
        first = ctx.used.first
        cutoff = (first if newest_start is None else max(first, newest_start)) + config.warmup_seconds
        grown = profile(ctx.used, config, start=cutoff, min_horizon=own.growth_min_horizon_seconds, report=False)
        best = grown.best()
        if (
            best is not None
            and not _levels_off(grown, ctx)
            # The card sawing in the band it lived in (one run's, where its pids are not visible) is no leak either.
            and not forecast.within_band(ctx, ctx.used, best, forecast.DETECTOR.settings(config))
        ):
            # The card is its own grower where no process's series is seen, as the forecast has it.
            device_growth = growth_finding(ctx, best, own, series=None if ctx.trees else ctx.used)
            if device_growth is not None:
                yield device_growth


@dataclass(frozen=True, slots=True)
class _Look:
    """What `detect` concluded from a tree's series (its first `points` points), kept on its track (`Track.carried`)
    for the ticks at which every point since holds the value of the last of them. `quiet`: the leak claim's test
    cannot pass on its points since warm-up (`growth.cannot_rise`, which stays true while the series holds). `floor`:
    the stability verdict's (`stability.Floor`, carried forward by its own rule).
    A look holds for one series object and one configuration: a tree that splits from its root gets a new series,
    and a reload a new configuration."""

    series: Series
    points: int
    config: DetectorConfig
    quiet: bool
    floor: Floor

    def holds(self, series: Series, config: DetectorConfig) -> bool:
        return self.series is series and self.config is config and series.held_since(self.points)


def _refills(ctx: GpuContext, track: Track) -> bool:
    """It just fell from the card's end, or its climb refills the cache it gave back there, where it lived on
    (ceiling.py): no leak, unless its troughs rise towards the ceiling within the longest window the growth tests look
    at (a slow leak beneath the cache is claimed about as early as it would be without one, a trough later at most)."""
    own = forecast.DETECTOR.settings(ctx.config)
    # A rise that rests on the newest trough alone is no claim yet either: the leak claim waits for the next.
    return forecast.ceiling_says(ctx, track, own, horizon_seconds=max(ctx.config.horizons_seconds)) is not None


def _levels_off(grown: Profile, ctx: GpuContext) -> bool:
    """Growth that is slowing towards a plateau that fits the card is not a leak."""
    if ctx.free_bytes is None:
        return False
    return grown.levels_off_within(ctx.free_bytes - ctx.config.oom_margin_bytes, ctx.config)


def growth_finding(
    ctx: GpuContext,
    fit: Fit,
    config: LeakConfig,
    *,
    key: ProcessKey | None = None,
    meta: ProcessMeta | None = None,
    members: int = 1,
    series: View | None = None,
) -> Finding | None:
    """A `growth` warning for a tree (`key` set, `series` its memory) or the GPU itself (no key), from a sustained
    fit. Its ETA counts the room as the forecast does (`forecast.room_bytes`: above the peak of a card that saws)."""
    rate = fit.rate()
    if rate.bytes_per_second < config.growth_min_rate_bytes_per_second:
        return None
    eta = None
    if ctx.free_bytes is not None:
        room = forecast.room_bytes(ctx, fit, rate, forecast.DETECTOR.settings(ctx.config), grower=series)
        eta = eta_seconds(room, rate, ctx.config)
    if eta is not None and eta > config.growth_eta_max_seconds:
        eta = None
    gpu = fmt.gpu_label(ctx.gpu)
    if key is None:
        subject = f"{gpu} grows {fmt.rate(rate.bytes_per_second)} and no single process explains it"
    else:
        who = fmt.process_label(meta, key, tree=True, members=members)
        subject = f"{who} grows {fmt.rate(rate.bytes_per_second)} on {gpu}"
    full = f"; the card is full in ~{fmt.duration(eta)}" if eta is not None else ""
    message = (
        f"{subject} (+{fmt.gib(fit.rise_bytes)} GiB in {fmt.duration(fit.span_seconds)}){full} "
        f"({fmt.gib(ctx.used_bytes)} of {fmt.gib(ctx.total_bytes)} GiB used)"
    )
    return Finding(
        kind=FindingKind.GROWTH,
        severity=Severity.WARNING,
        gpu_uuid=ctx.uuid,
        message=message,
        t=ctx.now,
        process=key,
        process_name=fmt.process_name(meta, tree=True),
        eta_seconds=None if eta is None else round(eta, 1),
        confidence=rate.confidence,
        numbers={
            "rate_bytes_per_second": round(rate.bytes_per_second, 1),
            "rise_bytes": int(fit.rise_bytes),
            "window_seconds": fit.span_seconds,
            "free_bytes": ctx.free_bytes,
            "used_bytes": ctx.used_bytes,
            "total_bytes": ctx.total_bytes,
            "pid": None if key is None else key.pid,
            "user": None if meta is None else meta.user,
        },
    )


def steady(process_growth: Mapping[tuple[ProcessKey, str], Rate]) -> frozenset[ProcessKey]:
    """Processes whose memory rises steadily right now (a warm-up that overshoots, or a leak: not yet told)."""
    return frozenset(key for (key, _gpu), r in process_growth.items() if r.sustained and r.bytes_per_second > 0)


def leaking(
    process_growth: Mapping[tuple[ProcessKey, str], Rate], history: History, active: Iterable[Finding]
) -> frozenset[ProcessKey]:
    """Processes whose growth is a leak: a growth finding is active, or their memory has risen steadily for
    `LEAK_MIN_WINDOW_SECONDS` or more past their first `LEAK_MIN_AGE_SECONDS` (a fast leak fills the card before
    the growth finding's longer windows can speak; a warm-up is younger, or not steady)."""
    keys = {f.process for f in active if f.kind == FindingKind.GROWTH and f.process is not None}
    for (key, gpu), r in process_growth.items():
        track = history.processes.get((key, gpu))
        old_enough = track is not None and track.last_seen - track.first_seen >= LEAK_MIN_AGE_SECONDS
        if r.sustained and r.bytes_per_second > 0 and r.window_seconds >= LEAK_MIN_WINDOW_SECONDS and old_enough:
            keys.add(key)
    return frozenset(keys)


DETECTOR = Detector(
    kind=FindingKind.GROWTH,
    defaults=LeakConfig(),
    # A leak claim waits a few ticks (one odd sample must not make one) and clears only after half a minute
    # without it: a leak that pauses for an epoch boundary is still a leak.
    raise_after=5,
    clear_after=30,
    per_gpu=detect,
    advice="growth",
)
