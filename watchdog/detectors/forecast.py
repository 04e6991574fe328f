"""Time to OOM: when the card's memory keeps growing, how long until it is full, and how sure are we.

eta = (free - oom_margin) / growth rate, from the device's *sustained* growth (see growth.py): a single
step or warm-up never yields a forecast. The rate is the steepest sustained one: a fast leak (~150 MB/s
into 24 GiB) can leave 80-90 s from its start to the OOM, so a critical forecast (full within two minutes)
is trusted after 15 s of rise in every 3-s part of the window, a warning after 20 s.

Model loading and on-GPU quantisation look exactly like a fast leak for a minute or two. While the GPU is
*warming* (a process on it is younger than `forecast_warmup_seconds` and has not yet stayed flat for
`settle_seconds`), only a critical forecast (full within `forecast_critical_eta_seconds`, or less than
`forecast_critical_free_fraction` free) is raised. While the grower is young and warms, no window whose floor
starts at its first sample is used: such a window holds the run's whole life so far (the first ones are shorter
than their horizon), and a load followed by the first steps rises in every part of it. A load (with its first
steps) that lasts longer than `forecast_load_seconds` (30 s) at a rate that would fill the card within two minutes
is still forecast critical, tentative, until it stops (the known price of warning a fast leak a minute ahead), and
the message says the grower has not held still yet. A shorter climb is waited on: most loads are over by then.

A run that frees and re-takes memory (bucketed shapes with `empty_cache()`; a cache a failed cudaMalloc
flushed) is judged on its peaks, not its floor: while its peaks do not rise in every part of the window, its
troughs filling in during warm-up is no forecast (see `growth.retakes_without_rising`).

A run that is not young loads too: it gave memory back and takes it again (weights offloaded for sampling, a
model server between two models), or it sat at its bare CUDA context and loads a model. Up to what it held, with
room on the card, that is no grower; past it, or from a bare context, its critical forecast is tentative as a young
grower's is (`_climbing`).

A run that fell from the card's end and lived (PyTorch gave its cache back when a cudaMalloc failed, and retried) is
climbing back to a level it lived through as its cache refills: it is no grower while its troughs do not rise towards
the ceiling (`ceiling.riding`).

A run that saws in the band it lived in for minutes (`empty_cache()` every step, read at random phases) and stays
below that band's top, with room on the card for it, is no grower: what fills the card is its peaks, and its floor
rises through a window by chance (`within_band`, which the leak claim asks too). A card that saws and rises past its
band (a leak beneath the sawtooth) is forecast by its peaks: the room is what is left above the peak it saws up to,
and a window that rose less than the band is tall is held to the pace of its peaks, or to the growers' own rates when
the grower does not saw (`_by_peaks`): the card's floor's rise over such a window is mostly the phases its reads
caught.

A run whose agent reports its allocator's figures (`vramwatch run`) and says its climb is PyTorch's cache (its tensors
holding what they held) is forecast tentatively, saying so: PyTorch gives that cache back before a cudaMalloc fails,
but the agent's 1 Hz reads can miss a peak that grows, and a neighbour can run out first (`cache.caching`).

A run already on the card when vramwatch starts (a daemon restart) has a past vramwatch did not see: a load begun
just before, or a climb back to what it gave back minutes earlier, reads as an old run leaking from its plateau. For
the give-back test's look-back after vramwatch first saw it, it is judged as a young grower is (`_unseen_past`).

Growth that slows down geometrically (a cache filling up with bucketed resolutions) is projected to its
plateau; when that plateau fits in the card there is nothing to forecast. Growth that is linear until it
stops short of the card cannot be told from a leak before it stops: such a run is forecast, and the finding
clears once it has been flat for the exit ticks.
"""

from __future__ import annotations

import dataclasses
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..history import Track
from ..model import Finding, FindingKind, ProcessKey, Severity
from . import _format as fmt
from . import cache, ceiling
from ._context import GpuContext, Tree
from ._series import View, first_still, view
from ._settings import fraction, non_negative, setting, validate
from .base import Detector, Forecast, Observation, Quorum
from .config import BARE_CONTEXT_BYTES, DetectorConfig
from .growth import Fit, Peaks, Profile, Rate, band_top, peaks, profile, retakes_without_rising


@dataclass(frozen=True, slots=True)
class ForecastConfig:
    """When a forecast is raised, and how urgent it is (its sustained-rise test is shared: DetectorConfig)."""

    forecast_warning_eta_seconds: float = setting(600.0, non_negative)
    forecast_critical_eta_seconds: float = setting(120.0, non_negative)
    #: Critical as well when the card is growing and less than this share of it is free.
    forecast_critical_free_fraction: float = setting(0.05, fraction)
    #: While a process on the GPU is younger than this and has not yet settled (stayed flat for
    #: `settle_seconds`), the GPU is *warming*: model loading and quantisation look like a leak for a minute
    #: or two, so only critical forecasts are raised.
    forecast_warmup_seconds: float = setting(180.0, non_negative)
    settle_seconds: float = setting(15.0, non_negative)
    #: A load's climb (a young grower's first, or a run's that climbs again) is not forecast until it has lasted
    #: this long: loads from a slow disk or a network share and on-GPU conversions of 15-30 s are over by then. A
    #: leak that starts with its run is forecast this long after its climb began at the earliest; a run that young
    #: has little to save.
    forecast_load_seconds: float = setting(30.0, non_negative)

    def __post_init__(self) -> None:
        late = self.forecast_critical_eta_seconds > self.forecast_warning_eta_seconds
        validate(self, ["forecast_critical_eta_seconds must not exceed forecast_warning_eta_seconds"] if late else [])


def detect(ctx: GpuContext, own: ForecastConfig) -> Iterator[Observation]:
    """The GPU's time to OOM while it grows sustainably, and an `oom_forecast` finding when that is soon."""
    config, history = ctx.config, ctx.history
    steepest = _steepest(ctx.device, config)
    if steepest is None:
        # The card does not rise steadily (most ticks): nothing to forecast, so no culprit and no warm-up to judge.
        return
    warming = any(_warming(history.trees.get((key, ctx.uuid)), ctx.now, own, config) for key in ctx.trees)
    growers = _sustained_growers(ctx, own) if ctx.visible and ctx.trees else None
    if growers == []:
        # The card rose, but no process on it rises steadily: runs arriving and warming up one after the other
        # (each a load, then flat or a sawtooth) add up to a slope that is nobody's leak.
        return
    named = growers[0][0] if growers else _grower(ctx)
    grower = named.label if named is not None else None
    # While the named grower is young and warms, or climbs again as a load does after it gave memory back: when
    # that began, and what a critical forecast says of it.
    appeared, caveat, began, since = None, None, None, None
    track = history.trees.get((growers[0][0].key, ctx.uuid)) if growers else None
    # The grower's own series; without the processes' series (pids not visible, none listed), the card is the grower as
    # far as anyone knows, and what a tree's climb is asked is asked of the card's.
    series = view(track.series) if track is not None else ctx.used if growers is None else None
    if growers and track is not None:
        if warming and _warming(track, ctx.now, own, config):
            caveat = _young(ctx, growers[0][0], track, own)
            appeared = track.first_seen if caveat is not None else None
            began = None if caveat is None else _newest_low(view(track.series), config)
        climb = growers[0][1] if caveat is None else None
        if climb is not None and not climb.held_still:
            # A load's climb, as a young grower's: only a critical forecast is raised about it, and tentatively.
            appeared, caveat, warming, began = climb.began, climb.caveat(ctx.now), True, climb.began
        elif caveat is None and (unseen := _unseen_past(ctx, growers[0][0], track, own)) is not None:
            # Its past is unknown (a daemon restart): as a young grower's, from where its climb began.
            began = _newest_low(view(track.series), config)
            appeared, caveat, warming = began, unseen, True
        if caveat is None and growers[0][2] is not None:
            # It lived through the card's end, and its troughs rise on the newest alone: told, and tentative.
            caveat = _rose_caveat(growers[0][2])
        if caveat is None and cache.caching(ctx, growers[0][0], steepest.xs[0]):
            # Its agent says the climb is PyTorch's cache: told, and tentative (a policy asks the run to save and ends
            # nothing), not dropped: a peak that 1 Hz reads miss, or a neighbour starved of the room, can still OOM.
            caveat = CACHE_CAVEAT
    elif growers is None:
        if within_band(ctx, ctx.used, steepest, own):
            return  # the card saws in the band it lived in, with room for its top (as a tree that does is no grower)
        # No culprit tells this climb from the last one: when it began does (`Finding.since`), where it is young.
        since = _card_climb(ctx.used, ctx.now, own, config)
        if (unseen := _card_unseen(ctx, own)) is not None:
            # What the card held before vramwatch first read it is unknown, as a run's after a restart (`_unseen_past`).
            began = since if since is not None else _newest_low(ctx.used, config)
            appeared, caveat, warming = began, unseen, True
        elif since is not None:
            # A climb of minutes at most: a run's load that vramwatch cannot see arrive, or a leak; as a young run's.
            appeared, caveat, warming, began = since, _card_caveat(ctx, since), True, since
    eta, finding = detect_oom_forecast(
        ctx,
        ctx.device,
        warming=warming,
        grower=grower,
        culprit=None if named is None else named.key,
        own=own,
        appeared=appeared,
        caveat=caveat,
        sawing=series,
        growers_rate=sum(g[3] for g in growers) if growers else None,
        since=since,
    )
    if eta is not None:
        yield Forecast(ctx.uuid, *eta)
    # A load's climb shorter than most loads: its ETA is shown, nothing is raised yet (a leak's climb goes on). Its
    # length runs to its last rise: a load that stopped short of it is not raised while its windows still rise.
    if finding is not None and (began is None or _climbed(series, began, config) >= own.forecast_load_seconds):
        yield finding


#: What a critical forecast adds of a grower whose agent says its climb is PyTorch's cache (`cache.caching`).
CACHE_CAVEAT = (
    "its in-process agent says the climb is PyTorch's cache (its tensors hold what they held), which PyTorch gives "
    "back before a cudaMalloc fails; unless a peak its once-a-second reads miss is growing"
)


def eta_seconds(free_bytes: int, rate: Rate, config: DetectorConfig) -> float | None:
    """Seconds until free memory is down to `oom_margin_bytes` at `rate` (None when not growing)."""
    if not rate.sustained or rate.bytes_per_second <= 0:
        return None
    return max(0.0, free_bytes - config.oom_margin_bytes) / rate.bytes_per_second


def detect_oom_forecast(
    ctx: GpuContext,
    device: Profile,
    *,
    warming: bool,
    grower: str | None,
    own: ForecastConfig,
    culprit: ProcessKey | None = None,
    appeared: float | None = None,
    caveat: str | None = None,
    sawing: View | None = None,
    growers_rate: float | None = None,
    since: float | None = None,
) -> tuple[tuple[float, float] | None, Finding | None]:
    """The (eta, confidence) of this GPU when it grows, and an `oom_forecast` finding when it is soon.

    The sustained-rise test is the shared one (`ctx.config`); the thresholds are this detector's (`own`).
    `grower` names the fastest-growing tree and `culprit` is its key. `appeared`: when the named grower was first
    seen, while it is young and warms (it has never held still yet); `caveat`: what a critical forecast adds about
    it then. `sawing`: the named grower's own series (the card's, where no process's series is seen), whose band (if
    it saws in one) holds the card's rate to the pace of its peaks; `growers_rate`: the sum of the growers' own rates,
    which holds it on a card that saws when the grower does not (`_by_peaks`); `since`: when the card's climb began,
    where no culprit is named (`Finding.since`).
    """
    config = ctx.config
    # A window whose floor starts at (or before) the young grower's first sample holds its whole life so far, and
    # the first such windows are short (a window counts from `min_coverage` of its horizon): a load and its first
    # steps rise in every part of one, as a leak that started with the run would. The forecast waits for a window
    # whose floor starts after that sample, a full horizon of the grower's own rise: a few seconds more for a fast
    # leak's first forecast, and a load with its first steps must now rise for the whole window to pass.
    fits = device if appeared is None else Profile(tuple(f for f in device.fits if f.xs[0] > appeared))
    best = _steepest(fits, config)
    if best is None or ctx.free_bytes is None:
        return None, None
    if device.levels_off_within(ctx.free_bytes - config.oom_margin_bytes, config):
        return None, None  # slowing down towards a plateau that fits
    if retakes_without_rising(ctx.used, best.xs[0], config):
        return None, None  # a sawtooth whose troughs fill in: its peaks, what fills the card, do not rise
    # Sustained by the forecast's own test (a warm-up step allowed in the window).
    rate, free = _by_peaks(ctx, device, best, own, grower=sawing, growers_rate=growers_rate)
    eta = eta_seconds(free, rate, config)
    if eta is None:
        return None, None
    forecast = (eta, rate.confidence)
    # Under 5 % free is critical only while the forecast is within the warning horizon: a drift of a few
    # hundred kB/s on a full plateau (the card reads "full in 2 hours") is not an emergency, and on a card
    # shared with a big static holder 5 % of the card can be more than the run's whole headroom.
    low_free = (
        ctx.total_bytes is not None
        and free < own.forecast_critical_free_fraction * ctx.total_bytes
        and eta <= own.forecast_warning_eta_seconds
    )
    if eta <= own.forecast_critical_eta_seconds or low_free:
        severity = Severity.CRITICAL
    else:
        # A warning is not urgent: it waits for a window of `forecast_min_horizon_seconds`.
        steady = device.best(config.forecast_min_horizon_seconds, config, max_share=config.forecast_max_subwindow_share)
        if steady is None or warming:
            return forecast, None
        rate, free = _by_peaks(ctx, device, steady, own, grower=sawing, growers_rate=growers_rate)
        eta = eta_seconds(free, rate, config)
        if eta is None or eta > own.forecast_warning_eta_seconds:
            return forecast, None
        severity = Severity.WARNING
    when = "now" if eta < 1 else f"in ~{fmt.duration(eta)}"
    subject = grower if grower is not None else fmt.gpu_label(ctx.gpu)
    on = f" on {fmt.gpu_label(ctx.gpu)}" if grower is not None else ""
    message = (
        f"{subject} grows {fmt.rate(rate.bytes_per_second)}{on}; the card is full {when} "
        f"({fmt.gib(ctx.used_bytes)} of {fmt.gib(ctx.total_bytes)} GiB used)"
    )
    if caveat is not None:
        # Only a critical forecast reaches here while the grower warms (a warning waits for the card to settle).
        message += f"; {caveat}"
    finding = Finding(
        kind=FindingKind.OOM_FORECAST,
        severity=severity,
        gpu_uuid=ctx.uuid,
        message=message,
        t=ctx.now,
        eta_seconds=round(eta, 1),
        confidence=rate.confidence,
        numbers={
            "rate_bytes_per_second": round(rate.bytes_per_second, 1),
            "window_seconds": rate.window_seconds,
            "free_bytes": ctx.free_bytes,
            "used_bytes": ctx.used_bytes,
            "total_bytes": ctx.total_bytes,
            "grower": grower,
        },
        # The caveat's doubt, for whoever acts on the finding: nothing that could end a run is done while it holds.
        tentative=None if caveat is None else f"{subject}: {caveat}",
        culprit=culprit,
        since=since,
    )
    return forecast, finding


def _by_peaks(
    ctx: GpuContext, device: Profile, fit: Fit, own: ForecastConfig, *, grower: View | None, growers_rate: float | None
) -> tuple[Rate, int]:
    """The fit's current rate (sustained by the forecast's test) and the card's room (`room_bytes`). Of a card that
    saws in a band, a window that rose less than the card's band is tall rose mostly by the phases of its reads, and its
    rate is held, no lower than the card's floor over its longest window (an honest average, if late for a leak that
    just began):
    - when the named `grower` saws in a band itself, to the pace of the peaks: the card's or the grower's own,
      whichever rose faster (the card's, a sum of sawtooths at other phases, can read low; a short window's peaks are a
      few reads, and understate a leak that began within the window);
    - when it does not (a leak next to a neighbour that saws), to the growers' own rates (`growers_rate`), which no
      neighbour's phases reach.
    A card that does not saw, or that fell from its end in that time: the fit's rate."""
    rate = dataclasses.replace(fit.rate(ctx.config), sustained=True)
    band = _sawing(ctx, fit, own, grower)
    if band is None:
        return rate, _room(ctx, None, None, fit, rate)
    saw, mine = band
    if fit.rise_bytes < saw.height_bytes:
        longest = device.fits[-1].bytes_per_second if device.fits else 0.0
        if mine is not None:
            pace: float | None = max(saw.bytes_per_second, mine.bytes_per_second, longest)
        else:
            pace = None if growers_rate is None else max(saw.bytes_per_second, growers_rate, longest)
        if pace is not None and pace < rate.bytes_per_second:
            rate = dataclasses.replace(rate, bytes_per_second=pace)
    return rate, _room(ctx, saw, mine, fit, rate)


def room_bytes(ctx: GpuContext, fit: Fit, rate: Rate, own: ForecastConfig, *, grower: View | None) -> int:
    """The room left for a growth read by `fit` at `rate` before the card is full: its free memory, less, on a card
    that saws in a band (`growth.peaks`, over the look-back `within_band` takes) and did not fall from its end in that
    time, what its peak takes above the read's phase. A sawtooth runs out of memory at its peak, not at the phase a
    read caught. When the `grower` (its series) saws too, a peak read in the window is carried on at the rate to now:
    1 Hz reads aliased against its step can miss the next peaks for tens of seconds while a leak raises them. A card
    that fell from its end: its peaks are the card's end and cannot rise, what rises to the OOM is its troughs
    (`ceiling.riding`'s question), and the room is its free memory. The one rule of the room, for the forecast and
    the leak claim's ETA alike."""
    band = _sawing(ctx, fit, own, grower)
    return _room(ctx, None, None, fit, rate) if band is None else _room(ctx, *band, fit, rate)


def _sawing(ctx: GpuContext, fit: Fit, own: ForecastConfig, grower: View | None) -> tuple[Peaks, Peaks | None] | None:
    """The card's band and the grower's (None: it does not saw), when the card saws in one and did not fall from its
    end over the fit's window and its look-back; else None."""
    lookback = max(fit.span_seconds, own.forecast_warmup_seconds)
    saw = peaks(ctx.used, fit.xs[0], ctx.config, lookback_seconds=lookback)
    if saw is None or ceiling.falls(ctx, ctx.used, memory_seconds=ctx.now - fit.xs[0] + lookback):
        return None
    if grower is None or grower is ctx.used:  # (the card as its own grower, where no process's series is seen)
        return saw, None if grower is None else saw
    return saw, peaks(grower, fit.xs[0], ctx.config, lookback_seconds=lookback)


def _room(ctx: GpuContext, saw: Peaks | None, mine: Peaks | None, fit: Fit, rate: Rate) -> int:
    free = ctx.free_bytes if ctx.free_bytes is not None else 0
    if saw is None:
        return free
    since = ctx.now - saw.top_t if mine is not None and saw.top_t >= fit.xs[0] else 0.0
    return free - max(0, round(saw.top_bytes + rate.bytes_per_second * since - ctx.used.last_value))


def _steepest(device: Profile, config: DetectorConfig) -> Fit | None:
    """The device's steepest fit sustained by the forecast's own test (a warm-up step allowed), from its shortest
    horizon on: what a forecast is made of (None: the card does not rise steadily, nothing to forecast)."""
    shortest = min(config.forecast_critical_min_horizon_seconds, config.forecast_min_horizon_seconds)
    return device.best(shortest, config, max_share=config.forecast_max_subwindow_share)


def _sustained_growers(
    ctx: GpuContext, own: ForecastConfig
) -> list[tuple[Tree, _Climb | None, tuple[int, int] | None, float]] | None:
    """The trees whose own memory rises steadily over the device forecast's horizons, fastest first, each with its
    climb if it climbs again (`_climbing`), for a run riding the ceiling whose troughs rise on the newest alone,
    that rise (`ceiling.Ride.rose`), and its own current rate; None when the device itself does not rise steadily
    (nothing to forecast: the per-tree fits are not spent).

    Only asked when the device itself has a sustained rise (rare), so its cost is off the common path. Each
    tree passes the forecast's own test, and a tree that frees and re-takes memory must raise its peaks. A tree
    taking back what it gave back (`_climbing`), where the card still has room for all it held, is no grower:
    it is heading for a level the card held before, not for the card's end. Above that level, or once others
    have taken the room, it is.
    """
    config = ctx.config
    shortest = min(config.forecast_critical_min_horizon_seconds, config.forecast_min_horizon_seconds)
    if _steepest(ctx.device, config) is None:
        return None
    found: list[tuple[float, Tree, _Climb | None, tuple[int, int] | None]] = []
    for tree in ctx.trees.values():
        track = ctx.history.trees.get((tree.key, ctx.uuid))
        if track is None:
            continue
        series = view(track.series)
        best = profile(series, config, min_horizon=shortest, report=False).best(
            shortest, config, max_share=config.forecast_max_subwindow_share
        )
        if best is None or retakes_without_rising(series, best.xs[0], config):
            continue
        if within_band(ctx, series, best, own):
            continue  # a sawtooth whose window stays in the band it lived in, with room for its top
        ride = ceiling_says(ctx, track, own)
        if ride is not None and ride.level:
            continue  # it just fell from the card's end, or refills there the cache it gave back, troughs level
        climb = _climbing(track, ctx.now, own, config, from_start=_seen_from_start(ctx, tree, track, own))
        room = None if ctx.free_bytes is None else ctx.free_bytes - config.oom_margin_bytes
        held = None if climb is None or climb.held_still else climb.held_bytes
        if held is not None and room is not None and 0 <= held - series.last_value <= room:
            continue  # taking back what it held, and the card has room for it
        rate = best.current_bytes_per_second(config)
        if rate > 0:
            found.append((rate, tree, climb, None if ride is None else ride.rose))
    found.sort(key=lambda found_: -found_[0])
    return [(tree, climb, rose, rate) for rate, tree, climb, rose in found]


def within_band(ctx: GpuContext, series: View, fit: Fit, own: ForecastConfig) -> bool:
    """The run saws in a band it lived in for the minutes before its window (`fit`), has not risen above it
    (`growth.band_top`), and the card has room for it to go back to that band's top: no grower, though its floor rose
    in every part of the window (as it does by chance). The forecast and the leak claim ask this one question, so that
    one cannot call growth what the other calls a band. The look-back is the window's own length, and
    `forecast_warmup_seconds` at least: a band is known from minutes of reads, not from the few before a short
    window."""
    top = band_top(series, fit.xs[0], ctx.config, lookback_seconds=max(fit.span_seconds, own.forecast_warmup_seconds))
    if top is None or ctx.free_bytes is None:
        return False
    return top - series.last_value <= ctx.free_bytes - ctx.config.oom_margin_bytes


def ceiling_says(
    ctx: GpuContext, track: Track, own: ForecastConfig, *, horizon_seconds: float | None = None
) -> ceiling.Ride | None:
    """What the card's end says of a run's climb, None when nothing: it just fell from there and has not risen since
    (PyTorch gave its cache back: whatever its windows saw climb is over, `ceiling.giving_back`; a level ride), or it
    climbs back to the end it lived at (`rides_ceiling`, within `horizon_seconds`). The forecast and the leak claim
    ask this one question, each over its own horizon (the leak claim's is the longest), so that their rules cannot
    drift apart."""
    if ceiling.giving_back(ctx, view(track.series)):
        return ceiling.LEVEL
    return rides_ceiling(ctx, track, own, horizon_seconds=horizon_seconds)


def _rose_caveat(rose: tuple[int, int]) -> str:
    older, newer = rose
    return (
        f"it lived through the card's end before (PyTorch gave its cache back and went on), and its troughs rose once, "
        f"{fmt.gib(older)} to {fmt.gib(newer)} GiB: a leak beneath its cache, or a flush caught mid-step (the next "
        "trough tells)"
    )


def rides_ceiling(
    ctx: GpuContext,
    track: Track,
    own: ForecastConfig,
    *,
    horizon_seconds: float | None = None,
    free_bytes: int | None = None,
) -> ceiling.Ride | None:
    """The run climbs back to the card's end it lived at, refilling the cache PyTorch gave back there, and its troughs
    do not rise towards it within `horizon_seconds` (this detector's warning horizon unless given), or rise on the
    newest alone (`ceiling.Ride`); None when it does not: `ceiling.riding`, with what a warming run is by this
    detector's settings (`free_bytes`: as `ceiling.riding`)."""
    return ceiling.riding(
        ctx,
        track,
        horizon_seconds=own.forecast_warning_eta_seconds if horizon_seconds is None else horizon_seconds,
        warmup_seconds=own.forecast_warmup_seconds,
        settle_seconds=own.settle_seconds,
        free_bytes=free_bytes,
    )


def _warming(track: Track | None, now: float, own: ForecastConfig, config: DetectorConfig) -> bool:
    """Young and never flat for `settle_seconds` since it appeared: still loading, most likely."""
    if track is None or now - track.first_seen >= own.forecast_warmup_seconds:
        return False
    series = view(track.series)
    return first_still(series.t, series.v, own.settle_seconds, config.noise_bytes) is None


#: A give-back takes the run a quarter at least below the least it held in the two look-backs (six minutes) before
#: (weights offloaded, encoders freed, a model unloaded; not a sawtooth's trough, which comes back to where it was): a
#: run that leaks from a plateau it held longer than that, whatever it held before, is a leak and not hidden.
GIVE_BACK_SHARE = 0.25
GIVE_BACK_SECONDS_FACTOR = 2

#: Why a climb that may be a load is told tentatively: the end of every such caveat.
LOAD_OR_LEAK = "(a load rises like this until it stops; a leak does not)"


def _give_back_lookback(own: ForecastConfig) -> float:
    """The give-back test's look-back (six minutes by default): what vramwatch must have watched of a run, or of a card
    whose processes it cannot see, before it knows what was held before a climb."""
    return GIVE_BACK_SECONDS_FACTOR * own.forecast_warmup_seconds


@dataclass(frozen=True, slots=True)
class _Climb:
    """A run climbing again after it gave memory back: since when, from how low, and the most it held before."""

    began: float
    low_bytes: int
    #: The most it held before (None: only its CUDA context, a first load).
    held_bytes: int | None
    #: It held still on the way and rose again after (a leak that steps and holds): no load's climb, though still
    #: below what it held.
    held_still: bool

    def caveat(self, now: float) -> str:
        if self.held_bytes is None:
            before = f"it held only its CUDA context ({fmt.gib(self.low_bytes)} GiB) and began to climb"
        else:
            before = (
                f"it fell to {fmt.gib(self.low_bytes)} GiB from {fmt.gib(self.held_bytes)} and began to climb again"
            )
        return (
            f"{before} {fmt.duration(now - self.began)} ago, not holding still since (a load rises like this until it "
            "stops; a leak does not)"
        )


def _seen_from_start(ctx: GpuContext, tree: Tree, track: Track, own: ForecastConfig) -> bool:
    """vramwatch watched this tree from its start: it arrived while vramwatch read the card, or had started less than
    `settle_seconds` before vramwatch first read it (still importing, at most at its context). Else (a daemon restart,
    `attach` to a running job), and whenever its start time is unknown, vramwatch may have missed its load, or a give-
    back and the climb back from it, even in its first minutes (text encoders freed before the model loads)."""
    if ctx.saw_arrive(track.first_seen):
        return True
    if not _known_start(tree):
        return False
    return ctx.age_at(tree.members[0].meta, track.first_seen, track.first_seen) < own.settle_seconds


def _known_start(tree: Tree) -> bool:
    """The tree's start time is known (its launcher's or its own): not so for a process in another pid namespace."""
    meta = tree.members[0].meta
    return meta.root_start_time is not None or meta.start_time is not None


def _climbing(
    track: Track, now: float, own: ForecastConfig, config: DetectorConfig, *, from_start: bool = True
) -> _Climb | None:
    """How a grower that gave memory back climbs again, if that climb began less than `forecast_warmup_seconds`
    ago; else None.

    A run that has given memory back can take it again as a load does: a trainer that freed its text encoders
    (or offloaded its weights for sampling) and loads its model, a model server that unloaded one model and loads
    the next, a notebook that loads another. Up to what it held before, with room for that on the card, the card
    is not filling: the forecast names no such grower (`_sustained_growers`). Past it, until the climb stops, NVML
    cannot tell a load from a leak, so a critical forecast about it says so (tentative), as it does of a young
    grower; a climb that held still on the way and rose again (a leak that steps, then holds) is no load's. A climb
    from a bare CUDA context (`BARE_CONTEXT_BYTES`) is a first load however old the process (a model server that sat
    idle, then loads): tentative too, with nothing it held before (`_Climb.held_bytes` None).

    The climb began at the newest point holding the least value of the last `forecast_warmup_seconds`; the run
    came down to it and held it for `settle_seconds`, and in the `GIVE_BACK_SECONDS_FACTOR` x
    `forecast_warmup_seconds` before, it never went within a quarter of it (`GIVE_BACK_SHARE`, and
    `min_rise_bytes` at least). Not such a climb: one from where the run started (its first climb is the young
    grower's rule, `_warming`), one already under way before those seconds (lower still in the
    `forecast_warmup_seconds` before them: a leak rising for minutes, however it saws), a run that leaks from the
    plateau it held for minutes, a sawtooth's trough (slow or fast, it comes back to where it was), a dip of a few
    seconds, and a validation's peak (a leak after any of them is not hidden up to what the run held).

    `from_start`: vramwatch watched the run from its start (`_seen_from_start`), so its first climb is skipped. A run
    first seen already running has none to skip: what it held when vramwatch first saw it counts as held before.
    """
    series = view(track.series)
    cut = now - own.forecast_warmup_seconds
    since = cut - own.forecast_warmup_seconds
    start = track.first_seen
    if start >= since and from_start:
        # A young run's first climb starts from its bare context, the least it ever held: look only from where it
        # first held still, or a give-back to more than its context would hide behind that first climb.
        settled = first_still(series.t, series.v, own.settle_seconds, config.noise_bytes)
        if settled is None:
            return None
        cut, since, start = max(cut, settled), max(since, settled), settled
    recent = series.since(cut)
    if len(recent) < 3:
        return None
    low = recent.min()
    before = series.min_between(since, cut)
    if before is not None and before < low - config.noise_bytes:
        return None  # lower in the minutes before: it has been rising (or sawing upwards) for longer than that
    ts, vs = recent.t, recent.v
    i = max(k for k, v in enumerate(vs) if v <= low + config.noise_bytes)
    # A give-back: the run came down to this low and held it for `settle_seconds` (weights offloaded, a model
    # unloaded), or came down to its bare context (encoders freed before the model loads), after six minutes in
    # which it never went within a quarter of it. A sawtooth's troughs, slow or fast, come back to where they were;
    # a dip of a few seconds (a checkpoint's `empty_cache()`) is not held; a validation's peak lowers nothing. What
    # it may take back is all it held in those minutes. `earlier` runs through the low's newest point.
    earlier = series.between(max(start, ts[i] - _give_back_lookback(own)), ts[i] + 1e-9)
    ets, evs = earlier.t, earlier.v
    j = len(evs)
    while j > 0 and evs[j - 1] <= low + config.noise_bytes:
        j -= 1  # back to where it came down to the low
    came_down = ets[j] if j < len(ets) else ts[i]
    least = min(evs[:j]) if j else None
    gave_back = (
        least is not None
        and (ts[i] - came_down >= own.settle_seconds or _unseen_low(ts, vs, i) <= BARE_CONTEXT_BYTES)
        and least - low > max(config.min_rise_bytes, GIVE_BACK_SHARE * least)
    )
    held: float | None = max(evs[:j]) if gave_back else None
    if not gave_back and low > BARE_CONTEXT_BYTES:
        # It gave nothing back lately: a run that starts to leak from the plateau it has held for minutes is a leak
        # (a young run's first climb is judged by how young it is, `_warming`).
        return None
    # Else it gave back, or it held its bare context and began to load (`held` None): a first load, however old.
    if vs[-1] - vs[i] <= config.min_rise_bytes:
        return None
    # Held still on the way and rose again (a leak that steps, then holds, then steps): no load's climb. A climb that
    # holds still now has stopped, as a load does; what the longer windows still see of it is the same load.
    paused = first_still(ts[i:], vs[i:], own.settle_seconds, config.noise_bytes)
    stepped = paused is not None and vs[-1] - vs[bisect_left(ts, paused)] > config.min_rise_bytes
    return _Climb(began=ts[i], low_bytes=int(vs[i]), held_bytes=None if held is None else int(held), held_still=stepped)


def _unseen_low(ts: Sequence[float], vs: Sequence[float], i: int) -> float:
    """The least the run may have held between the sample before its low point `i` and that point: encoders freed
    and a model loaded at once leave the bare context for less than a second, and a daemon reading every 2 or 5 s
    sees the run already climbing. The climb's first slope, carried back over the gap before the low, bounds it."""
    if i == 0 or i + 1 >= len(vs):
        return vs[i]
    slope = (vs[i + 1] - vs[i]) / (ts[i + 1] - ts[i])
    return vs[i] - max(0.0, slope) * (ts[i] - ts[i - 1])


def _climbed(series: View | None, began: float, config: DetectorConfig) -> float:
    """Seconds from `began` to the grower's newest rise (a point above the one before by more than `noise_bytes`)."""
    if series is None:
        return 0.0
    climb = series.since(began)
    ts, vs = climb.t, climb.v
    last = next((ts[k] for k in range(len(vs) - 1, 0, -1) if vs[k] - vs[k - 1] > config.noise_bytes), began)
    return last - began


def _newest_low(series: View, config: DetectorConfig) -> float:
    """When a grower (its series) last held the least it held since vramwatch first saw it: where its climb began (a
    young run's bare context before it loaded; for a run first seen already running, where vramwatch first saw it
    climb)."""
    # Bytes are whole numbers: below least + noise + 1 is at most least + noise. A staircase lookup, not a scan.
    began = series.last_below(series.min() + config.noise_bytes + 1)
    return series.first if began is None else began


def _young(ctx: GpuContext, tree: Tree, track: Track, own: ForecastConfig) -> str | None:
    """What to tell of a warming grower known to be young, else None: NVML cannot tell a fast leak from a slow load
    (weights from a hard disk, on-GPU quantisation) until one of them stops, and the reader can.

    One first seen after the card's first sample appeared then. One seen at the first sample was there before
    vramwatch looked (a daemon restart, `attach` to a running job): its own start time says how old it is (an old
    one is judged by `_climbing`, and by `_unseen_past` for the give-back test's look-back after vramwatch first saw
    it).
    """
    if ctx.saw_arrive(track.first_seen):
        when = f"it appeared {fmt.duration(ctx.now - track.first_seen)} ago"
    else:
        if not _known_start(tree):
            return None  # not "it started N s ago": `_unseen_past` says what vramwatch knows of it
        age = ctx.age_at(tree.members[0].meta, ctx.now, track.first_seen)
        if age >= own.forecast_warmup_seconds:
            return None
        when = f"it started {fmt.duration(age)} ago"
    return f"{when} and has not held still yet {LOAD_OR_LEAK}"


def _unseen_past(ctx: GpuContext, tree: Tree, track: Track, own: ForecastConfig) -> str | None:
    """What to tell of a grower vramwatch did not see start and has watched for less than the give-back test's
    look-back (`GIVE_BACK_SECONDS_FACTOR` x `forecast_warmup_seconds`), else None.

    After a daemon restart (or `attach` to a running job) vramwatch does not know what such a run held before it
    looked: a load it began just before, or a climb back to what it gave back minutes earlier (weights offloaded for
    sampling, a server between two models), reads as an old run leaking from its plateau.
    """
    watched = ctx.now - track.first_seen
    if watched >= _give_back_lookback(own) or _seen_from_start(ctx, tree, track, own):
        return None
    return (
        f"vramwatch first saw it {fmt.duration(watched)} ago, already running, and has not seen enough of it to tell "
        f"a load from a leak {LOAD_OR_LEAK}"
    )


def _card_unseen(ctx: GpuContext, own: ForecastConfig) -> str | None:
    """What to tell of a card whose processes vramwatch cannot see and has read for less than the give-back test's
    look-back (as `_unseen_past` of a run), else None: its climb may be a load that began before vramwatch looked (a
    daemon restart) or since (a run starting, which it cannot see arrive), or the phases of a sawtooth not yet seen
    whole."""
    first = ctx.history.gpu_first.get(ctx.uuid)
    watched = 0.0 if first is None else ctx.now - first
    if watched >= _give_back_lookback(own):
        return None
    return (
        f"vramwatch first read this card {fmt.duration(watched)} ago and cannot see its processes: it has not seen "
        f"enough to tell a load from a leak {LOAD_OR_LEAK}"
    )


#: Where no process's series is seen, a card that held still this long was on a plateau: a climb from it is a run's
#: load or a leak. Shorter holds belong to the climb around them (a load that paused, or just ended; a leak between its
#: bursts), and a run that ends just before the next starts leaves a gap, not a plateau.
CARD_PLATEAU_SECONDS = 60.0


def _card_climb(used: View, now: float, own: ForecastConfig, config: DetectorConfig) -> float | None:
    """When the card's climb began, if it began less than `forecast_warmup_seconds` ago and rose by more than
    `min_rise_bytes` since; else None. It began at the least the card held since it last stood on a plateau (held still
    for `CARD_PLATEAU_SECONDS`); on a card that stood on none in those seconds (a neighbour saws, or it has been
    climbing), at the newest point holding their least, unless that is where those seconds begin (it has been rising
    for longer than that).

    Asked only where no process's series is seen: a run that starts on the card, or one that takes back what it gave
    back, is then the card's climb, and NVML cannot tell its load from a leak until it stops (`_climbing` asks the same
    of a run, with what it held before). So is a run that starts just after another has loaded (climbs less than a
    plateau apart are one), and a leak that steps or comes in bursts, told as tentatively for its first minutes."""
    cut = now - own.forecast_warmup_seconds
    recent = used.since(cut)
    if len(recent) < 3:
        return None
    ts, vs = recent.t, recent.v
    # The newest plateau: read from the newest point back, its newest point.
    held = first_still([-t for t in reversed(ts)], vs[::-1], CARD_PLATEAU_SECONDS, config.noise_bytes)
    if held is not None:
        since = bisect_left(ts, -held)
        low = min(vs[since:])
        i = max(k for k in range(since, len(vs)) if vs[k] <= low + config.noise_bytes)
    else:
        low = recent.min()
        i = max(k for k, v in enumerate(vs) if v <= low + config.noise_bytes)
        if ts[i] - cut < own.settle_seconds:
            return None  # its least is where those seconds begin: it has been rising for longer than that
    return ts[i] if vs[-1] - vs[i] > config.min_rise_bytes else None


def _card_caveat(ctx: GpuContext, began: float) -> str:
    return (
        f"the card began to climb {fmt.duration(ctx.now - began)} ago and vramwatch cannot see its processes: a run "
        "starting or taking memory back loads like this until it stops; a leak does not"
    )


def _grower(ctx: GpuContext) -> Tree | None:
    """The tree growing fastest on this GPU right now (the sum of its processes' rates), if any grows.

    Called only to name the culprit of a device forecast, so a rate need not pass the sustained test.
    """
    best: tuple[float, Tree] | None = None
    for tree in ctx.trees.values():
        rates = [ctx.process_growth.get(p.key) for p in tree.members]
        total = sum(r.bytes_per_second for r in rates if r is not None and r.bytes_per_second > 0)
        if total > 0 and (best is None or total > best[0]):
            best = (total, tree)
    return None if best is None else best[1]


DETECTOR = Detector(
    kind=FindingKind.OOM_FORECAST,
    defaults=ForecastConfig(),
    # Two ticks: a forecast is already the verdict of a robust fit, and a fast leak leaves a minute or so.
    raise_after=2,
    # A young grower's forecast (tentative) must outlast what one jump can make. A load, a pause, then the first
    # step's jump: the first window that starts after the grower appeared rises in every part as long as that jump
    # is in its newest part, one part of the shortest window (15 s / 5 = 3 s), and the part after it is flat. A leak
    # goes on rising, with gaps where a part rose a little less: seen on 4 of the last 6 ticks at 1 Hz (base.Quorum).
    # Measured: docs/detection.md, "A young grower's forecast must outlast one jump".
    tentative_quorum=Quorum(outlast_seconds=3.0),
    clear_after=30,
    per_gpu=detect,
    advice="oom_forecast",
)
