"""Robust growth rate of one memory series: is it *leaking*, and how fast?

NVML shows a PyTorch process as its CUDA context plus what the caching allocator has reserved. Reserved
memory rises in steps (2 MiB and 20 MiB segments, bigger ones for big tensors), rarely falls, and is flat
once a run has warmed up. So the estimator works on the **floor** of the series: at a time t, the least the
process held at any point from t to now (a suffix minimum). The floor ignores spikes and the teeth of a
sawtooth, and only rises when memory was taken and never given back.

One window (a *horizon*) is cut into `subwindows` equal parts. Growth is **sustained** only when the floor
rose in every part, by a meaningful share of the total and by no more than `max_subwindow_share` in any one
of them, and the newest part rising at least `min_recent_share` of the window's mean rate: warm-up is a few
bumps (first step, first validation, first sample images) and fails this test; a leak keeps rising in all
parts, a cache that fills up slows down. Horizons from 30 s to an hour are tried, so a leak that steps once per epoch
is caught at the horizon where every part holds a step. The rate is the Theil-Sen slope (median of pairwise
slopes) of the floor sampled `buckets` times across the window: robust to a step or an outlier.

Cost: one pass of C-level `min()` over the series plus O(horizons x buckets) Python work, and one
O(buckets^2) Theil-Sen per reported rate. A lone sample below `outlier_fraction` of both its neighbours is
a bad read and ignored by the floor; the troughs of a sawtooth are kept (they are what the floor follows).
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from itertools import accumulate, combinations, pairwise

from ._series import View
from .config import DetectorConfig


@dataclass(frozen=True, slots=True)
class Rate:
    """A growth rate with how much to trust it.

    `confidence` is in [0, 1]: how evenly and continuously the floor rose across the window. `sustained` is
    True only when growth passed the sub-window test (a leak-like rise, not warm-up).
    """

    bytes_per_second: float
    confidence: float
    window_seconds: float
    points: int
    sustained: bool = False


@dataclass(frozen=True, slots=True)
class Fit:
    """The growth test of one horizon."""

    horizon_seconds: float
    span_seconds: float
    points: int
    rise_bytes: float
    sustained: bool
    confidence: float
    xs: tuple[float, ...]  # sample times of the floor
    ys: tuple[float, ...]  # floor values (non-decreasing)
    parts: tuple[float, ...]  # the rise of each sub-window, oldest first
    rising: bool = False  # every part rose, none by more than `max_subwindow_share`: sustained but for recency
    top_share: float = 1.0  # the largest part's share of the rise
    continuous: bool = False  # every part rose and the newest kept pace: sustained but for `top_share`

    def sustained_under(self, max_share: float) -> bool:
        """Sustained with another limit on the largest part's share (forecasts accept a warm-up step)."""
        return self.continuous and self.top_share <= max_share

    @property
    def bytes_per_second(self) -> float:
        """Theil-Sen slope of the whole window: the average leak rate."""
        return theil_sen(self.xs, self.ys)

    def current_bytes_per_second(self, config: DetectorConfig) -> float:
        """The rate now, for a forecast: the lesser of the whole window's slope and its newest two parts'.

        A window that starts in warm-up (a young process that loads, steps, then leaks) averages the load
        into the whole slope, and a warm-up step among the newest parts inflates theirs: a step can only
        inflate a slope, so the lesser of the two is the leak's.
        """
        k = 2 * config.buckets_per_subwindow + 1
        return min(theil_sen(self.xs, self.ys), theil_sen(self.xs[-k:], self.ys[-k:]))

    def rate(self, config: DetectorConfig | None = None) -> Rate:
        """The fit as a Rate: the current slope when `config` is given, else the whole window's."""
        slope = self.bytes_per_second if config is None else self.current_bytes_per_second(config)
        return Rate(slope, self.confidence, self.span_seconds, self.points, self.sustained)

    def remaining_if_saturating(self, config: DetectorConfig) -> float | None:
        """The rise still to come if this growth is slowing geometrically towards a plateau, else None.

        Saturating means every part rose no faster than the one before (within `saturation_tolerance` and
        `noise_bytes`) and the last
        at most `saturation_slowdown` of the first's rate: a leak rises evenly, a cache filling up slows
        down. The rate is taken to decay exponentially; the remaining rise is the integral of that decay.
        """
        b = config.buckets_per_subwindow
        edges = [(self.xs[s * b], self.xs[min((s + 1) * b, len(self.xs) - 1)]) for s in range(len(self.parts))]
        if len(edges) < 3 or any(x1 <= x0 for x0, x1 in edges):
            return None
        rates = [p / (x1 - x0) for p, (x0, x1) in zip(self.parts, edges, strict=True)]
        if rates[0] <= 0 or rates[-1] <= 0:
            return None
        # Segment rounding makes equal rises differ by tens of MiB: a part may exceed the one before a little.
        slack = 1.0 + config.saturation_tolerance
        if any(
            r1 > r0 * slack + config.noise_bytes / (e[1] - e[0])
            for (r0, r1), e in zip(pairwise(rates), edges[1:], strict=False)
        ):
            return None
        if rates[-1] > config.saturation_slowdown * rates[0]:
            return None
        first_mid, last_mid = (edges[0][0] + edges[0][1]) / 2, (edges[-1][0] + edges[-1][1]) / 2
        tau = (last_mid - first_mid) / math.log(rates[0] / rates[-1])
        rate_at_end = rates[-1] * math.exp(-(edges[-1][1] - last_mid) / tau)
        return rate_at_end * tau


@dataclass(frozen=True, slots=True)
class Profile:
    """The fits of one series, shortest horizon first (only the reported one when growth is impossible)."""

    fits: tuple[Fit, ...]

    def best(
        self, min_horizon: float = 0.0, config: DetectorConfig | None = None, *, max_share: float | None = None
    ) -> Fit | None:
        """The sustained fit of the steepest rise among horizons >= `min_horizon` (None if none is).

        Steepest by the current slope when `config` is given (forecasts), else by the mean rise rate. With
        `max_share`, "sustained" allows the largest part that share of the rise.
        """
        sustained = [
            f
            for f in self.fits
            if (f.sustained if max_share is None else f.sustained_under(max_share)) and f.horizon_seconds >= min_horizon
        ]
        if not sustained:
            return None
        if config is not None:
            return max(sustained, key=lambda f: (f.current_bytes_per_second(config), -f.horizon_seconds))
        return max(
            sustained, key=lambda f: (f.rise_bytes / f.span_seconds if f.span_seconds else 0.0, -f.horizon_seconds)
        )

    def rate(self, config: DetectorConfig, min_horizon: float = 0.0) -> Rate | None:
        """The rate now: the steepest sustained fit's current slope, else the fit nearest `rate_report_seconds`."""
        best = self.best(min_horizon, config)
        if best is not None:
            return best.rate(config)
        horizons = [f.horizon_seconds for f in self.fits if f.horizon_seconds >= min_horizon]
        chosen = _report_choice(horizons, config.rate_report_seconds)
        return next((f.rate() for f in self.fits if f.horizon_seconds == chosen), None)

    def restrict(self, min_horizon: float) -> Profile:
        return Profile(tuple(f for f in self.fits if f.horizon_seconds >= min_horizon))

    def longest_sustained(self, min_horizon: float = 0.0) -> Fit | None:
        return next((f for f in reversed(self.fits) if f.sustained and f.horizon_seconds >= min_horizon), None)

    def levels_off_within(self, room_bytes: float, config: DetectorConfig, min_horizon: float = 0.0) -> bool:
        """True when the growth is slowing down towards a plateau less than `room_bytes` above today.

        Judged on the longest window that rose in every part with no part dominating (the most evidence,
        the least rounding noise; a warm-up step followed by a leak is not a slowdown): a cache filling up
        with bucketed resolutions slows down and stops, a leak does not.
        """
        longest = next((f for f in reversed(self.fits) if f.rising and f.horizon_seconds >= min_horizon), None)
        remaining = None if longest is None else longest.remaining_if_saturating(config)
        return remaining is not None and remaining < room_bytes


#: The profile of a series that cannot be growing, or is too short to tell (most series, most ticks): one shared
#: value rather than a new one per call.
NO_FITS = Profile(())


def _report_choice(horizons: Sequence[float], report_seconds: float) -> float | None:
    """The horizon whose rate is shown when nothing grows: the longest not beyond `report_seconds`
    (`rate_report_seconds`)."""
    if not horizons:
        return None
    within = [h for h in horizons if h <= report_seconds]
    return within[-1] if within else horizons[0]


def theil_sen(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Median of the slopes of all pairs with distinct x: a line fit that one step or outlier cannot tilt."""
    n = len(xs)
    if n and min(ys) == max(ys):
        return 0.0  # a flat floor (most series, most ticks): every slope is zero, no need to sort them
    slopes = sorted([(ys[j] - ys[i]) / (xs[j] - xs[i]) for i, j in _pairs(n) if xs[j] > xs[i]])
    if not slopes:
        return 0.0
    mid = len(slopes) // 2
    return slopes[mid] if len(slopes) % 2 else (slopes[mid - 1] + slopes[mid]) / 2


@lru_cache(maxsize=64)
def _pairs(n: int) -> tuple[tuple[int, int], ...]:
    """Every (i, j) with i < j < n, in the order of the nested loops (fits have a handful of sizes)."""
    return tuple(combinations(range(n), 2))


def _suffix_floors(v: array[float], indexes: Iterable[int], config: DetectorConfig) -> dict[int, tuple[float, int]]:
    """floor(i) = (the least of v[i:], ignoring bad reads, and where it is) for each index asked.

    One right-to-left sweep: each segment between two asked indexes is scanned once by C-level `min()`. The
    position matters for the slope: a sawtooth's floor sits at a trough, not at the window's grid point.
    """
    floors: dict[int, tuple[float, int]] = {}
    right = len(v)
    floor = (float("inf"), len(v) - 1)
    for i in sorted(set(indexes), reverse=True):
        if i < right:
            here = _segment_floor(v, i, right, config.outlier_fraction)
            floor = here if here[0] <= floor[0] else floor
            right = i
        floors[i] = floor
    return floors


def _segment_floor(v: array[float], i: int, j: int, outlier_fraction: float) -> tuple[float, int]:
    seg = v[i:j]
    low = min(seg)
    k = i + seg.index(low)
    # The common case first, without building lists (this runs ~11 times per fit, for every moving series):
    # a neighbour the point is not far below makes it a trough, not a bad read.
    n = len(v)
    if (k > 0 and low >= outlier_fraction * v[k - 1]) or (k + 1 < n and low >= outlier_fraction * v[k + 1]):
        return low, k
    neighbours = [x for x in (k - 1, k + 1) if 0 <= x < n]
    if neighbours and all(low < outlier_fraction * v[x] for x in neighbours):
        # A lone sample far below both neighbours is a bad read, not a trough (a sawtooth's troughs are real
        # and kept): take the next lowest point, or the lower neighbour when the segment is that one point.
        rest = [(min(v[a:b]), a, b) for a, b in ((i, k), (k + 1, j)) if b > a]
        if rest:
            value, a, b = min(rest)
            return value, a + v[a:b].index(value)
        x = min(neighbours, key=lambda n: v[n])
        return v[x], x
    return low, k


def profile(
    view: View, config: DetectorConfig, *, start: float | None = None, min_horizon: float = 0.0, report: bool = True
) -> Profile:
    """Test every horizon of `config` (>= `min_horizon`) on the points of `view` at or after `start`.

    With `report=False` a series that cannot be growing gets no fit at all (callers that only want findings
    skip the reported rate's cost).
    """
    if start is not None:
        view = view.since(start)
    if len(view) < 3:
        return NO_FITS
    if not report and cannot_rise(view, config):
        # The test below over the whole view, before the windows are even listed.
        return NO_FITS
    now = view.now
    windows = _windows(view, config, min_horizon)
    if not windows:
        return NO_FITS
    # Most series do not grow: when even the whole window cannot rise by `min_rise_bytes`, no horizon can be
    # sustained, and only the reported rate is computed (the floor never exceeds the newest samples). Both
    # figures come from the series' staircases: no scan of the window.
    if view.tail_max(2) - view.since(windows[-1][1]).min() < config.min_rise_bytes:
        if not report:
            return NO_FITS
        chosen = _report_choice([h for h, _ in windows], config.rate_report_seconds)
        windows = tuple(w for w in windows if w[0] == chosen)
        h, a = windows[0]
        flat = view.since(a)
        if len(flat) >= 2 and flat.min() == flat.max():
            # One value over the whole window (a process between allocations: the common case): that value is
            # the floor at every grid point, and each floor sits at its grid point. Same fit, no scan.
            t = flat.t
            idx = _grid(t, a, now, config)
            return Profile(
                (_fit(h, now - a, len(t) - idx[0], [t[i] for i in idx], [flat.min()] * len(idx), config=config),)
            )
    if not report and all(_cannot_rise_in_every_part(view, a, config) for _, a in windows):
        return NO_FITS
    return Profile(_fits(view, windows, config))


def cannot_rise(view: View, config: DetectorConfig) -> bool:
    """True when no window of `view` can rise by `min_rise_bytes` (never, without a minimum rise): it held one value
    (most series, every tick), or its newest points are within `min_rise_bytes` of its floor (the floor of any
    window never exceeds them). Once true of a series' points from some time on, it stays true while the series
    holds its newest value: held points raise neither its newest points nor its floor's distance to them, and
    points that leave the window can only raise the floor."""
    return config.min_rise_bytes > 0 and (view.still() or view.tail_max(2) - view.min() < config.min_rise_bytes)


def _fits(view: View, windows: Sequence[tuple[float, float]], config: DetectorConfig) -> tuple[Fit, ...]:
    """The fit of each window (horizon, start of its points) on the floor of `view`: one right-to-left sweep
    finds the floors at every window's grid points."""
    t, v, now = view.t, view.v, view.now
    grids = [(h, now - a, _grid(t, a, now, config)) for h, a in windows]
    floors = _suffix_floors(v, (i for _, _, idx in grids for i in idx), config)
    return tuple(
        _fit(h, span, len(t) - idx[0], [t[floors[i][1]] for i in idx], [floors[i][0] for i in idx], config=config)
        for h, span, idx in grids
    )


def _windows(view: View, config: DetectorConfig, min_horizon: float) -> tuple[tuple[float, float], ...]:
    """(horizon, start of its points) for each horizon >= `min_horizon` that the view covers enough, shortest
    first, up to the first that reaches back to the view's oldest point (longer ones would see the same)."""
    return _windows_between(view.now, view.first, min_horizon, config.horizons_seconds, config.min_coverage)


@lru_cache(maxsize=256)
def _windows_between(
    now: float, first: float, min_horizon: float, horizons: tuple[float, ...], coverage: float
) -> tuple[tuple[float, float], ...]:
    # Cached: every process seen at every tick has the same newest and oldest times in its views, so one tick
    # lists the windows once per kind of view instead of twice per process.
    windows: list[tuple[float, float]] = []
    for h in horizons:
        if h < min_horizon:
            continue
        a = max(now - h, first)
        if now - a < coverage * h:
            break
        windows.append((h, a))
        if a == first:
            break
    return tuple(windows)


@lru_cache(maxsize=256)
def _report_windows(
    span: tuple[float, float], min_horizon: float, shown: float, settings: tuple[tuple[float, ...], float, float]
) -> tuple[tuple[tuple[float, float], ...], tuple[float, float], tuple[float, float] | None]:
    """For `reported_rate`: the windows of a view whose oldest and newest times are `span` from `min_horizon` on,
    the one `profile` reports among them all ((horizon, start); unset when there are none), and the one
    `Profile.rate` shows from `shown` on (None when none is that long). `settings`: the horizons, the coverage and
    `rate_report_seconds`. Cached like the windows: one tick asks the same for every process."""
    (first, now), (horizons, coverage, report_seconds) = span, settings
    windows = _windows_between(now, first, min_horizon, horizons, coverage)
    if not windows:
        return windows, (0.0, 0.0), None
    every = _report_choice([h for h, _ in windows], report_seconds)
    reported = next(w for w in windows if w[0] == every)
    if every is not None and every >= shown:
        # Also the choice among the windows from `shown` on (it is one of them, and no later one is within
        # `report_seconds`, or none is and it is the first): always so when both horizons are the same.
        return windows, reported, reported
    shown_choice = _report_choice([h for h, _ in windows if h >= shown], report_seconds)
    return windows, reported, next((w for w in windows if w[0] == shown_choice), None)


#: What `reported_rate` needs of a view besides its points: every window it covers, the one `profile` reports, and
#: the one shown (`_report_windows`).
RatePlan = tuple[tuple[tuple[float, float], ...], tuple[float, float], tuple[float, float] | None]


def _report_plan(view: View, config: DetectorConfig, min_horizon: float, shown: float) -> RatePlan | None:
    """`_report_windows` for `view`: None when the view is too short or covers no window (no rate at all)."""
    if len(view) < 3:
        return None
    plan = _report_windows(
        (view.first, view.now),
        min_horizon,
        shown,
        (config.horizons_seconds, config.min_coverage, config.rate_report_seconds),
    )
    return plan if plan[0] else None


def process_rate_plan(view: View, config: DetectorConfig) -> RatePlan | None:
    """A process's plan (both horizons 0): None exactly when `reported_rate(view, config)` is None (the view is too
    short or covers no window; every window is shown). It depends only on the view's length and its oldest and
    newest times: `analysis` computes it once per tick for all the processes seen since the same time."""
    return _report_plan(view, config, 0.0, 0.0)


def process_rate(view: View, config: DetectorConfig, plan: RatePlan) -> Rate:
    """`reported_rate(view, config)` to the bit, given `process_rate_plan(view, config)` (not None)."""
    rate = _planned_rate(view, config, plan, 0.0, 0.0)
    if rate is None:  # never: with both horizons 0, `profile` reports a window and every window is shown
        raise AssertionError("a process's plan gives a rate")
    return rate


def reported_rate(
    view: View, config: DetectorConfig, min_horizon: float = 0.0, shown_from: float | None = None
) -> Rate | None:
    """The rate the metrics show for a series: `profile(view, config, min_horizon=min_horizon).rate(config,
    shown_from)` (`shown_from` defaults to `min_horizon`), the same figure to the bit, without building a fit
    when the reported window held one value (most processes, most ticks: every scrape asks for every process's
    rate) or when its floor is provably level while no other window can be sustained (a sawtooth, a
    card whose processes free and re-take). Such a fit's slope is 0 and its confidence 0: no part rose.

    The device's rate is profiled from the forecast's shortest horizon and shown from its warning one, hence
    the two horizons."""
    shown = min_horizon if shown_from is None else shown_from
    plan = _report_plan(view, config, min_horizon, shown)
    return None if plan is None else _planned_rate(view, config, plan, min_horizon, shown)


def _planned_rate(view: View, config: DetectorConfig, plan: RatePlan, min_horizon: float, shown: float) -> Rate | None:
    windows, every, reported = plan
    # When even the whole window cannot rise by `min_rise_bytes`, `profile` fits only the window it would
    # report among all of its horizons (`every`): none at all when that one is shorter than `shown`.
    still = view.still()  # the whole view held one value (most series): one comparison, not four lookups
    only_reported = config.min_rise_bytes > 0 and (
        still or view.tail_max(2) - view.since(windows[-1][1]).min() < config.min_rise_bytes
    )
    if only_reported:
        h, a = every
        if h < shown:
            return None
        flat = view.since(a)
        if len(flat) >= 2 and (still or flat.min() == flat.max()):
            return Rate(0.0, 0.0, view.now - a, len(flat), False)
    if reported is None:
        return None
    chosen, a = reported
    # A series that moves without growing (a sawtooth, a process that frees and re-takes): when no other
    # window shown can be sustained and the floor is level over the reported one, that fit is the flat floor's,
    # whose slope and confidence are 0 wherever its points sit. When `profile` fits only the reported window
    # (`only_reported`; that window is then `every`, at least `shown`), the other windows do not matter and are
    # not tested.
    if (
        config.min_rise_bytes > 0
        and _floor_level(view, a, config)
        and (
            only_reported
            or all(h == chosen or _cannot_rise_in_every_part(view, w, config) for h, w in windows if h >= shown)
        )
    ):
        return Rate(0.0, 0.0, view.now - a, len(view.since(a)), False)
    if only_reported:
        # `profile` would fit this one window (at least `shown`): `Profile.rate` shows its current slope if it is
        # sustained, else its whole slope. A memory series' fit never is (its floor rises by less than the whole
        # view can, under `min_rise_bytes`), but the rule is `Profile.rate`'s, so it is kept for any series.
        fit = _fits(view, (every,), config)[0]
        return fit.rate(config if fit.sustained else None)
    return profile(view, config, min_horizon=min_horizon).rate(config, shown)


def _kept(value: float, before: float | None, after: float | None, outlier_fraction: float) -> bool:
    """True when a point of `value` between `before` and `after` (None: no neighbour there) is no lone bad read
    by `_segment_floor`'s rule. A floor from before a kept point of a window's least value on is exactly that
    value, however the sweep cuts the series into segments."""
    if before is None and after is None:
        return True
    return (before is not None and value >= outlier_fraction * before) or (
        after is not None and value >= outlier_fraction * after
    )


def _cannot_rise_in_every_part(view: View, a: float, config: DetectorConfig) -> bool:
    """True when the floor of the window from `a` to now provably rose less than `noise_bytes` in one of its
    sub-windows, so that no fit of it is sustained, rising or continuous (each needs every part to rise by
    `need` >= `noise_bytes`), from the series' staircase and without the grid's sweep.

    A floor ignores lone bad reads, so at a grid point it is at least the least value from there on, and exactly
    that value when a point holding it is no bad read (`_kept`): a part's rise is then at most the difference
    of the two least values. Every part is tried but the last, whose end `_grid` places apart.
    """
    kept = partial(_kept, outlier_fraction=config.outlier_fraction)
    step = (view.now - a) / config.buckets
    b = config.buckets_per_subwindow
    start = view.low_since(a, kept)  # `_grid`'s own arithmetic, so that the points are the fit's
    for s in range(1, config.subwindows):
        end = view.low_since(a + s * b * step, kept)
        if start is None or end is None:
            return False
        if end[1] and end[0] - start[0] < config.noise_bytes:
            return True
        start = end
    return False


def _floor_level(view: View, a: float, config: DetectorConfig) -> bool:
    """True when the floor of the window from `a` to now provably holds one value at every point of its grid:
    the least value of the window is also the least of its final half bucket, at a point that is no bad read."""
    kept = partial(_kept, outlier_fraction=config.outlier_fraction)
    now = view.now
    step = (now - a) / config.buckets
    start = view.low_since(a, kept)
    end = view.low_since(max(a + (config.buckets - 1) * step, now - step / 2), kept)
    return start is not None and end is not None and end[1] and end[0] == start[0]


def _grid(t: array[float], a: float, now: float, config: DetectorConfig) -> list[int]:
    """Indexes into `t` of the `buckets` grid points of the window `[a, now]`, and of "now": the floor of the
    final half bucket, robust to one odd newest sample."""
    k = config.buckets
    step = (now - a) / k
    idx = [bisect_left(t, a + j * step) for j in range(k)]
    idx.append(max(idx[-1], min(len(t) - 1, bisect_left(t, now - step / 2))))
    return idx


def _fit(h: float, span: float, points: int, xs: list[float], ys: list[float], *, config: DetectorConfig) -> Fit:
    """The growth test of one horizon on its floor, sampled at times `xs` with values `ys` (non-decreasing)."""
    rise = ys[-1] - ys[0]
    b = config.buckets_per_subwindow
    parts = [ys[(s + 1) * b] - ys[s * b] for s in range(config.subwindows)]
    need = max(float(config.noise_bytes), config.min_subwindow_share * rise)
    rising = sum(1 for p in parts if p >= need)
    top_share = max(parts) / rise if rise > 0 else 1.0
    steps = [ys[j + 1] - ys[j] for j in range(len(ys) - 1)]
    fine = sum(1 for s in steps if s > config.noise_bytes) / len(steps)
    m = config.subwindows
    evenness = min(1.0, max(0.0, 1.0 - (top_share - 1.0 / m) / (1.0 - 1.0 / m)))
    confidence = (rising / m) * (0.5 * evenness + 0.5 * fine)
    if rise < config.min_rise_bytes:
        confidence *= max(0.0, rise) / config.min_rise_bytes
    # The steps must keep coming: the newest part rises at a fair share of the window's mean rate.
    dt_last, dt_all = xs[-1] - xs[-1 - b], xs[-1] - xs[0]
    recent = dt_last > 0 and dt_all > 0 and parts[-1] / dt_last >= config.min_recent_share * rise / dt_all
    # For a forecast the newest part keeps pace with the others but the largest (a warm-up step, a load).
    others = sorted(parts)[:-1]
    dt_part = dt_all / m if dt_all > 0 else 0.0
    keeps_pace = (
        dt_last > 0
        and dt_part > 0
        and parts[-1] / dt_last >= config.min_recent_share * (sum(others) / len(others) / dt_part)
    )
    continuous = rise >= config.min_rise_bytes and rising == m and keeps_pace
    every_part = rise >= config.min_rise_bytes and rising == m and top_share <= config.max_subwindow_share
    return Fit(
        h,
        span,
        points,
        rise,
        every_part and recent,
        round(confidence, 4),
        tuple(xs),
        tuple(ys),
        tuple(parts),
        rising=every_part,
        top_share=top_share,
        continuous=continuous,
    )


def retakes_without_rising(view: View, start: float, config: DetectorConfig) -> bool:
    """True when the series frees and re-takes memory in [start, now] while its peaks do not keep rising.

    The floor of a run that frees and re-takes memory (bucketed shapes with `empty_cache()`, a cache that a
    failed cudaMalloc flushed) rises whenever its troughs fill in, which is warm-up, not the card filling: what
    fills the card is the peaks. Such a window counts as growth only if its ceiling (the running maximum) rose
    by more than `noise_bytes` in every sub-window, the newest included. A series that never drops by more
    than `min_rise_bytes` (and a quarter of its rise) below its running maximum is judged on its floor alone.
    """
    w = view.since(start)
    if len(w) < 3:
        return False
    ceiling = list(accumulate(w.v, max))
    drop = max(c - v for c, v in zip(ceiling, w.v, strict=True))
    if drop < max(float(config.min_rise_bytes), 0.25 * (ceiling[-1] - w.v[0])):
        return False
    m = config.subwindows
    t0, span = w.t[0], w.t[-1] - w.t[0]
    if span <= 0:
        return True
    edges = [bisect_left(w.t, t0 + span * s / m) for s in range(1, m)] + [len(w) - 1]
    tops = [ceiling[0]] + [ceiling[min(i, len(w) - 1)] for i in edges]
    return any(b - a <= config.noise_bytes for a, b in pairwise(tops))


#: Falls that make a band of a run's readings in a look-back: a sawtooth read at random phases, or a step period close
#: to the sampling interval (its phase drifts: slow ramps through the band, then a fall), falls back every few
#: seconds; a validation's spike, a leak's climb or steps, a plateau, do not, or once.
BAND_FALLS = 3


@dataclass(frozen=True, slots=True)
class Peaks:
    """How a sawing series' peaks moved over a window (`peaks`)."""

    #: How fast its peaks rose above its band's top in the window (0 when they did not).
    bytes_per_second: float
    #: The peak it saws up to now (its band's top, or the most it held since, if more): what reaches the card's end
    #: first.
    top_bytes: float
    #: When it was last at that peak.
    top_t: float
    #: The band's height: its top less the least it held in the look-back (with what a leak beneath it added there).
    height_bytes: float


def band_top(view: View, start: float, config: DetectorConfig, *, lookback_seconds: float) -> float | None:
    """The top of the band the series sawed in during the `lookback_seconds` before `start`, when from `start` on it
    never rose above it by `min_rise_bytes`; else None (no band there, or the series left it).

    A band: the series fell by more than `min_rise_bytes` below the highest it had held since its last such fall at
    least `BAND_FALLS` times; its top is the most it held. A run that lives in one takes nothing it had not held while
    it stays in it: what fills the card is a peak above the band, and a leak's readings pass it within seconds (the
    band rises with it). Yet its floor, a suffix minimum, rises at the end of any window (the fewer points are left,
    the higher their least), and by chance (or by the drift of a step's phase against the reads) troughs and peaks
    both rise through every part of a window: an hour of a healthy 3 GiB band read at random phases holds such
    windows, read as a leak of 100 MB/s or more, and a long one as a slow leak. A single higher peak (a validation) is
    no band; one inside a band raises its top, and a leak beneath the band is not growth until it passes that peak or
    the peak leaves the look-back. A run that came down below its band's lows and has not been back to its top since (it
    left the band, and climbs from below) is not in it; if it saws since (the look-back opened on a validation's spike
    above its sawtooth), the band it saws in since is its band.
    """
    band = _band(view, start, config, lookback_seconds)
    window = view.since(start)
    if band is None or (len(window) and window.max() > band.top_bytes + config.min_rise_bytes):
        return None
    return band.top_bytes


def _band(view: View, start: float, config: DetectorConfig, lookback_seconds: float) -> Peaks | None:
    """The band the series sawed in during the `lookback_seconds` before `start` (it fell `BAND_FALLS` times or more
    there), when it still lives in it, as the peaks it saws up to before `start` (rising at 0 above its own top); else
    None. What `band_top` and `peaks` call a band."""
    before = view.between(start - lookback_seconds, start)
    if len(before) <= BAND_FALLS or not _saws(before.v, config):
        return None
    top = before.max()
    # It still lives in the band: since it was last near the top before the window, it has not gone below the least it
    # held while it visited the top. A run that left a band downwards (an evaluation after training near the card's
    # end) and climbs from below it is not in it, however its old top still fits. "Near" is a quarter of the band's
    # height: a ramp's peaks and troughs vary by a few hundred MiB from one to the next.
    both = view.since(start - lookback_seconds).v
    slack = max(float(config.min_rise_bytes), (top - min(both)) / 4)
    vs = before.v
    last_top = next(i for i in range(len(vs) - 1, -1, -1) if vs[i] >= top - slack)  # from the newest: most are near
    since = both[last_top + 1 :]
    if not since or min(since) >= min(both[: last_top + 1]) - slack:
        newest = next(i for i in range(len(vs) - 1, -1, -1) if vs[i] == top)
        return Peaks(0.0, top, before.t[newest], top - before.min())
    # It left that band downwards (or that top was a validation's spike above the sawtooth it went back to): its band
    # is the one it saws in since, if it does. A run that came down and climbs from there has none.
    if last_top + 1 >= len(before):
        return None
    return _band(view, start, config, start - before.t[last_top + 1])


def _saws(values: Sequence[float], config: DetectorConfig) -> bool:
    """The values fell by more than `min_rise_bytes` below the highest since their last such fall `BAND_FALLS` times."""
    falls, high = 0, values[0] if len(values) else 0.0
    for v in values:
        if v < high - config.min_rise_bytes:
            falls, high = falls + 1, v
            if falls >= BAND_FALLS:
                return True
        elif v > high:
            high = v
    return False


def peaks(view: View, start: float, config: DetectorConfig, *, lookback_seconds: float) -> Peaks | None:
    """For a series that saws in a band (`_band`, over the `lookback_seconds` before `start`): how fast its peaks rose
    above the band's top from `start` on, the top it saws up to now, and the band's height; None when it does not live
    in a band, or holds too few reads.

    What fills the card is a sawtooth's peaks. Its floor in a window shorter than the band is tall rises at whatever
    the phases of its reads make of it: a 5 MB/s leak beneath a 3 GiB sawtooth reads as 150-200 MB/s over 15 s by
    chance ("full in ~80 s" half an hour early). Its peaks cannot: the band's top is a peak it reached (minutes of
    reads, every phase), and the window's most cannot pass it by more than the leak (or a new load) added. Divided by
    the window's length, the rise understates a leak that began within the window (by the part of it before), so it
    bounds only a rate that is mostly chance (`forecast`: a window that rose less than the band is tall).
    """
    band = _band(view, start, config, lookback_seconds)
    window = view.since(start)
    if band is None or len(window) < 2 or window.t[-1] <= start:
        return None
    most = window.max()
    if most <= band.top_bytes:
        return band
    vs = window.v
    newest = next(i for i in range(len(vs) - 1, -1, -1) if vs[i] == most)
    rate = (most - band.top_bytes) / (window.t[-1] - start)
    return Peaks(rate, most, window.t[newest], band.height_bytes)
