"""The robust growth rate: floors, sub-window test, Theil-Sen, saturation; table-driven plus properties."""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vramwatch.detectors._series import View, view
from vramwatch.detectors.config import DetectorConfig
from vramwatch.detectors.growth import (
    _cannot_rise_in_every_part,
    _floor_level,
    _windows,
    band_top,
    peaks,
    profile,
    reported_rate,
    theil_sen,
)
from vramwatch.history import Series

GIB = 1 << 30
MIB = 1 << 20
CONFIG = DetectorConfig()


def series(fn: Callable[[float], float], seconds: float, step: float = 1.0, t0: float = 0.0) -> View:
    n = int(seconds / step) + 1
    ts = [t0 + k * step for k in range(n)]
    return View(array("d", ts), array("d", [float(fn(t - t0)) for t in ts]))


PROFILES: dict[str, tuple[Callable[[float], float], float, float | None]] = {
    # name: (bytes at t, seconds, expected sustained rate in bytes/s or None for "not growing")
    "flat": (lambda t: 10 * GIB, 1800, None),
    "linear 150 MB/s": (lambda t: 4 * GIB + 150e6 * t, 120, 150e6),
    "linear 3 MB/s": (lambda t: 10 * GIB + 3e6 * t, 1800, 3e6),
    "one step": (lambda t: 10 * GIB + (t > 600) * 2 * GIB, 1800, None),
    "warm-up steps then flat": (
        lambda t: 8 * GIB + (t > 20) * 3 * GIB + (t > 300) * GIB + (t > 600) * 1.5 * GIB,
        1800,
        None,
    ),
    "sawtooth, flat troughs": (lambda t: 12 * GIB + (t % 7) * 300 * MIB, 1200, None),
    "spike every 5 min": (lambda t: 12 * GIB + ((t % 300) < 10) * 2 * GIB, 1800, None),
    "epoch leak 500 MB / 300 s": (lambda t: 8 * GIB + (t // 300) * 500e6, 3600, 500e6 / 300),
    "sawtooth with rising troughs": (lambda t: 8 * GIB + (t % 10) * 100 * MIB + 1e6 * t, 1800, 1e6),
}


@pytest.mark.parametrize("name", list(PROFILES))
def test_profile_table(name: str) -> None:
    """Each memory shape yields sustained growth at its true rate, or none at all."""
    fn, seconds, expected = PROFILES[name]
    best = profile(series(fn, seconds), CONFIG).best()
    if expected is None:
        assert best is None
    else:
        assert best is not None
        assert best.rate().bytes_per_second == pytest.approx(expected, rel=0.25)
        assert best.rate().confidence > 0.5


def test_single_sample_dips_and_spikes_are_ignored() -> None:
    """A flat series with one bad low read and one spike has no growth and a zero rate."""
    base = series(lambda t: 10 * GIB, 1200)
    v = array("d", base.v)
    v[400] = 1 * GIB  # a bad read
    v[900] = 20 * GIB  # a spike
    prof = profile(View(base.t, v), CONFIG)
    rate = prof.rate(CONFIG)
    assert prof.best() is None
    assert rate is not None
    assert rate.bytes_per_second == 0.0


def test_newest_bad_read_does_not_hide_a_leak() -> None:
    """A leak whose newest sample is a bad low read is still reported as growing."""
    leak = series(lambda t: 8 * GIB + 20e6 * t, 600)
    v = array("d", leak.v)
    v[-1] = 0.0
    best = profile(View(leak.t, v), CONFIG).best()
    assert best is not None
    assert best.rate().bytes_per_second == pytest.approx(20e6, rel=0.1)


def test_too_little_history_gives_no_rate() -> None:
    """Fewer points than the shortest window covers: no rate at all, rather than a guess."""
    assert profile(series(lambda t: 8 * GIB + 1e8 * t, 5), CONFIG).rate(CONFIG) is None


def test_a_gap_in_a_window_blocks_sustained_growth_there() -> None:
    """A window with a sub-window of no data (GPU down) cannot claim continuous growth."""
    full = series(lambda t: 8 * GIB + 150e6 * t, 60)
    keep = [k for k, t in enumerate(full.t) if not 30 <= t < 40]
    gappy = View(array("d", [full.t[k] for k in keep]), array("d", [full.v[k] for k in keep]))
    fits = {f.horizon_seconds: f for f in profile(gappy, CONFIG).fits}
    assert not fits[30.0].sustained
    assert fits[15.0].sustained  # the points after the gap still show the leak


def test_saturating_growth_projects_its_plateau() -> None:
    """Growth that slows geometrically predicts the rest of its rise; a linear leak predicts none."""
    tau, goal = 150.0, 10 * GIB
    saturating = profile(series(lambda t: 8 * GIB + goal * (1 - math.exp(-t / tau)), 400), CONFIG)
    fit = saturating.longest_sustained()
    assert fit is not None
    remaining = fit.remaining_if_saturating(CONFIG)
    assert remaining == pytest.approx(goal * math.exp(-400 / tau), rel=0.2)
    linear = profile(series(lambda t: 8 * GIB + 20e6 * t, 400), CONFIG).longest_sustained()
    assert linear is not None
    assert linear.remaining_if_saturating(CONFIG) is None


@pytest.mark.parametrize(
    ("xs", "ys", "slope"),
    [
        ((0, 1, 2, 3), (0, 2, 4, 6), 2.0),
        ((0, 1, 2, 3, 4), (0, 1, 2, 100, 4), 1.0),  # one outlier cannot tilt it
        ((0, 0, 0), (1, 2, 3), 0.0),  # no distinct x
        ((5,), (1,), 0.0),
    ],
)
def test_theil_sen(xs: tuple[float, ...], ys: tuple[float, ...], slope: float) -> None:
    """Theil-Sen is the median pairwise slope, robust to one outlier, zero without distinct times."""
    assert theil_sen(xs, ys) == pytest.approx(slope)


ticks = st.lists(st.floats(0.6, 1.4), min_size=40, max_size=400)


@settings(max_examples=40, deadline=None)
@given(level=st.integers(0, 80 * GIB), gaps=ticks)
def test_constant_memory_never_grows(level: int, gaps: list[float]) -> None:
    """Constant memory, whatever its level and however irregular the ticks, never shows growth."""
    t = array("d", [0.0])
    for g in gaps:
        t.append(t[-1] + g)
    prof = profile(View(t, array("d", [float(level)] * len(t))), CONFIG)
    assert prof.best() is None
    rate = prof.rate(CONFIG)
    assert rate is None or rate.bytes_per_second == 0.0


shapes = st.lists(st.tuples(st.floats(0.6, 1.4), st.integers(-64 * MIB, 512 * MIB)), min_size=40, max_size=300)


def _walk(steps: list[tuple[float, int]]) -> View:
    """A random walk of memory on irregular ticks (as the daemon's are: ~1 s, never exactly)."""
    t, v = array("d"), array("d")
    now, level = 0.0, 8.0 * GIB
    for gap, step in steps:
        now += gap
        level = max(0.0, level + step)
        t.append(now)
        v.append(level)
    return View(t, v)


@settings(max_examples=40, deadline=None)
@given(steps=shapes, offset=st.integers(-4 * GIB, 40 * GIB))
def test_adding_a_constant_does_not_change_the_rate(steps: list[tuple[float, int]], offset: int) -> None:
    """Another process's constant memory underneath changes neither the rate nor whether it is sustained."""
    a = _walk(steps)
    b = View(a.t, array("d", [x + offset for x in a.v]))
    ra, rb = profile(a, CONFIG).rate(CONFIG), profile(b, CONFIG).rate(CONFIG)
    assert (ra is None) == (rb is None)
    if ra is not None and rb is not None:
        assert rb.bytes_per_second == pytest.approx(ra.bytes_per_second, abs=1.0)
        assert rb.sustained == ra.sustained


@settings(max_examples=40, deadline=None)
@given(steps=shapes, shift=st.floats(-1e5, 1e6))
def test_rate_is_invariant_to_time_shifts(steps: list[tuple[float, int]], shift: float) -> None:
    """Where the monotonic clock started does not matter: shifted times give the same rate."""
    a = _walk(steps)
    b = View(array("d", [t + shift for t in a.t]), a.v)
    ra, rb = profile(a, CONFIG).rate(CONFIG), profile(b, CONFIG).rate(CONFIG)
    assert (ra is None) == (rb is None)
    if ra is not None and rb is not None:
        assert rb.bytes_per_second == pytest.approx(ra.bytes_per_second, rel=1e-6, abs=1.0)
        assert rb.sustained == ra.sustained


# Flat stretches, then moves: most of the daemon's processes hold one value for minutes between allocations.
plateaus = st.lists(
    st.tuples(st.integers(1, 400), st.sampled_from([0, 0, 0, 2 * MIB, -2 * MIB, 512 * MIB])), min_size=1, max_size=6
)


def _plateaus_view(parts: list[tuple[int, int]], gaps: float) -> tuple[View, float]:
    """A series of `parts` (points, then a step of the level) sampled every `gaps` s, from 8 GiB; and its end."""
    t, v = array("d"), array("d")
    now, level = 0.0, 8.0 * GIB
    for count, step in parts:
        level = max(0.0, level + step)
        for _ in range(count):
            now += gaps
            t.append(now)
            v.append(level)
    return View(t, v), now


@settings(max_examples=80, deadline=None)
@given(parts=plateaus, gaps=st.floats(0.6, 1.4))
def test_reported_rate_is_the_profiles_rate_to_the_bit(parts: list[tuple[int, int]], gaps: float) -> None:
    """`reported_rate` (the metrics' per-process rate, with its flat shortcut) equals `profile(...).rate(...)`
    exactly, flat windows and moving ones alike."""
    view, now = _plateaus_view(parts, gaps)
    for since in (0.0, now - CONFIG.rate_report_seconds * 1.001):
        window = view.since(since)
        assert reported_rate(window, CONFIG) == profile(window, CONFIG).rate(CONFIG)


# Memory as the daemon sees it at scale: flat holds, sawtooths (frees and re-takes every few ticks, whose troughs
# may sit below half their peaks and so look like bad reads), lone bad reads, leaks and warm-up steps, appended
# to a history `Series` so that the detectors' staircase lookups are exercised as they are in the daemon.
moves = st.lists(
    st.tuples(
        st.sampled_from(["flat", "saw", "bad read", "leak", "step"]),
        st.integers(1, 300),  # ticks
        st.integers(2, 7),  # a sawtooth's period
        st.integers(0, 1024),  # MiB: a tooth's height, a leak's rise per tick (/ 64), a step
    ),
    min_size=1,
    max_size=6,
)


def _history_series(parts: list[tuple[str, int, int, int]], capacity: int, gap: float) -> tuple[Series, float]:
    s = Series(capacity)
    now, floor = 0.0, 2.0 * GIB
    for kind, count, period, mib in parts:
        for i in range(count):
            now += gap
            if kind == "leak":
                floor += mib * MIB / 64
            value = floor
            if kind == "saw" and i % period:
                value = floor + (256 + (mib + 37 * i) % 1024) * MIB
            elif kind == "bad read" and i == count // 2:
                value = floor * 0.3
            s.append(now, value)
        if kind == "step":
            floor += mib * MIB
    return s, now


@settings(max_examples=150, deadline=None)
@given(parts=moves, capacity=st.integers(60, 1500), gap=st.floats(0.6, 1.4))
def test_shortcuts_on_moving_series_give_the_full_results(
    parts: list[tuple[str, int, int, int]], capacity: int, gap: float
) -> None:
    """On sawtooths, bad reads, leaks and steps, `reported_rate` equals the full profile's rate to the bit, and a
    profile without the reported rate finds the same sustained fits as the full one (it only skips windows
    that provably cannot be sustained)."""
    s, now = _history_series(parts, capacity, gap)
    live = view(s)
    for since in (None, now - CONFIG.rate_report_seconds * 1.001, now - 200.0):
        for w in (live, View(*s.arrays())):
            window = w if since is None else w.since(since)
            assert reported_rate(window, CONFIG) == profile(window, CONFIG).rate(CONFIG)
            for h in (0.0, CONFIG.forecast_critical_min_horizon_seconds, 240.0):
                full = profile(window, CONFIG, min_horizon=h)
                quick = profile(window, CONFIG, min_horizon=h, report=False)
                assert quick.best(h) == full.best(h)
                assert quick.best(h, CONFIG) == full.best(h, CONFIG)
                share = CONFIG.forecast_max_subwindow_share
                assert quick.best(h, CONFIG, max_share=share) == full.best(h, CONFIG, max_share=share)


@settings(max_examples=150, deadline=None)
@given(
    parts=moves,
    capacity=st.integers(60, 1500),
    gap=st.floats(0.6, 1.4),
    horizons=st.sampled_from([(15.0, 20.0), (0.0, 20.0), (20.0, 15.0), (240.0, 240.0), (0.0, 960.0), (30.0, 3600.0)]),
)
def test_reported_rate_from_other_horizons_is_the_profiles_rate(
    parts: list[tuple[str, int, int, int]], capacity: int, gap: float, horizons: tuple[float, float]
) -> None:
    """`reported_rate(view, config, m, shown)` equals `profile(view, config, min_horizon=m).rate(config, shown)` to
    the bit (the device's rate is profiled from 15 s and shown from 20 s)."""
    s, now = _history_series(parts, capacity, gap)
    m, shown = horizons
    for since in (None, now - 200.0):
        for w in (view(s), View(*s.arrays())):
            window = w if since is None else w.since(since)
            assert reported_rate(window, CONFIG, m, shown) == profile(window, CONFIG, min_horizon=m).rate(CONFIG, shown)


@settings(max_examples=60, deadline=None)
@given(parts=plateaus, gaps=st.floats(0.6, 1.4), rate_report=st.sampled_from([10.0, 15.0, 600.0]))
def test_reported_rate_of_a_short_report_window_shown_from_longer_ones(
    parts: list[tuple[int, int]], gaps: float, rate_report: float
) -> None:
    """When the window `profile` would report is shorter than the shown horizon, both give no rate (None)."""
    config = DetectorConfig(rate_report_seconds=rate_report)
    window, _ = _plateaus_view(parts, gaps)
    assert reported_rate(window, config, 15.0, 20.0) == profile(window, config, min_horizon=15.0).rate(config, 20.0)


@settings(max_examples=150, deadline=None)
@given(parts=moves, capacity=st.integers(60, 1500), gap=st.floats(0.6, 1.4))
def test_staircase_bounds_of_a_window_hold_for_its_fit(
    parts: list[tuple[str, int, int, int]], capacity: int, gap: float
) -> None:
    """When the staircase says a window cannot rise in every part, its fit neither rises nor is sustained or
    continuous; when it says the floor is level, the fit's floor holds one value (the two lemmas the shortcuts
    stand on, checked against the sweep itself)."""
    s, _ = _history_series(parts, capacity, gap)
    live = view(s)
    if len(live) < 3:
        return
    starts = dict(_windows(live, CONFIG, 0.0))
    for fit in profile(live, CONFIG).fits:
        a = starts[fit.horizon_seconds]
        if _cannot_rise_in_every_part(live, a, CONFIG):
            assert not fit.rising
            assert not fit.sustained
            assert not fit.continuous
        if _floor_level(live, a, CONFIG):
            assert min(fit.ys) == max(fit.ys)


def _probed_flat_seconds(series: View, config: DetectorConfig, not_before: float) -> float:
    """The verdict's flat time as first written: every probe of the bisection looks the floor up again."""

    def floor_since(t0: float) -> float:
        low = series.min_between(t0, series.now + 1.0)
        return float("inf") if low is None else low

    if len(series) < 3:
        return 0.0
    now = series.now
    longest = now - max(not_before, series.first)
    if longest <= 0:
        return 0.0
    floor_ok = floor_since(now - 30.0) - config.noise_bytes
    if floor_since(now - longest) >= floor_ok:
        return longest
    shortest = min(config.stable_min_seconds, longest)
    if floor_since(now - shortest) < floor_ok:
        return 0.0
    good, bad = shortest, longest
    for _ in range(6):
        mid = (good + bad) / 2
        if floor_since(now - mid) >= floor_ok:
            good = mid
        else:
            bad = mid
    return good


@settings(max_examples=150, deadline=None)
@given(
    parts=moves,
    capacity=st.integers(60, 1500),
    gap=st.floats(0.6, 1.4),
    not_before=st.floats(-100.0, 2000.0),
    stable_min=st.sampled_from([10.0, 60.0, 300.0]),  # shorter than the default: more series reach the bisection
)
def test_flat_seconds_from_the_newest_point_below_the_level_is_the_probed_bisections(
    parts: list[tuple[str, int, int, int]], capacity: int, gap: float, not_before: float, stable_min: float
) -> None:
    """The flat time from the newest point below the level equals the probe-by-probe bisection's, to the bit."""
    from unittest import mock

    from vramwatch.detectors.stability import flat_seconds

    config = DetectorConfig(stable_min_seconds=stable_min)
    s, _ = _history_series(parts, capacity, gap)
    live = view(s)
    expected = _probed_flat_seconds(live, config, not_before)
    assert flat_seconds(live, config, not_before=not_before) == expected
    assert flat_seconds(View(*s.arrays()), config, not_before=not_before) == expected
    with mock.patch.object(View, "holds_since", return_value=False):
        assert flat_seconds(live, config, not_before=not_before) == expected


@settings(max_examples=100, deadline=None)
@given(parts=moves, capacity=st.integers(60, 1500), gap=st.floats(0.6, 1.4))
def test_the_cards_context_is_the_full_profiles(
    parts: list[tuple[str, int, int, int]], capacity: int, gap: float
) -> None:
    """A card's context (profiled without the reported rate) gives the forecast the same sustained and rising fits,
    and the metrics the same rate, as the full profile of its memory."""
    from builders import make_snapshot
    from vramwatch.detectors.analysis import _context
    from vramwatch.history import History

    s, _ = _history_series(parts, capacity, gap)
    history = History(window_seconds=capacity)
    t, v = s.arrays()
    for at, used in zip(t, v, strict=True):
        history.add(make_snapshot(at, {}, gpu_used=int(used), total=1 << 50))
    snap = history.latest
    assert snap is not None
    ctx = _context(history, snap, snap.gpus[0], CONFIG, ())
    shortest = min(CONFIG.forecast_critical_min_horizon_seconds, CONFIG.forecast_min_horizon_seconds)
    full = profile(ctx.used, CONFIG, min_horizon=shortest)
    assert ctx.device_rate == full.rate(CONFIG, CONFIG.forecast_min_horizon_seconds)
    share = CONFIG.forecast_max_subwindow_share
    for h in (shortest, CONFIG.forecast_min_horizon_seconds):
        assert ctx.device.best(h, CONFIG, max_share=share) == full.best(h, CONFIG, max_share=share)
    room = 1 << 40
    assert ctx.device.levels_off_within(room, CONFIG) == full.levels_off_within(room, CONFIG)


@pytest.mark.parametrize(("step_at", "sloped"), [(150.0, True), (280.0, False)])
def test_a_small_step_is_reported_as_the_one_windows_slope(step_at: float, sloped: bool) -> None:
    """A floor that rose once by less than `min_rise_bytes` gets the reported window's own fit, to the bit: a
    Theil-Sen slope when the step is mid-window, 0 when most pairs of grid points lie before it."""
    window = series(lambda t: 200 * MIB + (t >= step_at) * 8 * MIB, 300)
    rate = reported_rate(window, CONFIG)
    assert rate is not None
    assert rate == profile(window, CONFIG).rate(CONFIG)
    assert (rate.bytes_per_second > 0) == sloped
    assert not rate.sustained


def test_the_one_fit_path_keeps_profile_rates_rule_for_a_sustained_fit() -> None:
    """On a series no GPU reports (negative values, a bad read below the view's least), the one-fit path still
    shows what `profile(...).rate(...)` shows, here a sustained fit's current slope."""
    config = DetectorConfig(min_rise_bytes=500, noise_bytes=0)
    t = [float(x) for x in range(10, 41)] + [float(x) for x in range(47, 101)]

    def value(x: float) -> float:
        if x < 39:
            return -100.0
        if x in (39.0, 40.0):
            return -900.0 if x == 39.0 else -600.0
        return -600.0 + (x - 47) * 10.0 if x <= 80 else -270.0 + (x - 80) * 7.0

    window = View(array("d", t), array("d", [value(x) for x in t]))
    rate = reported_rate(window, config)
    assert rate is not None
    assert rate.sustained
    assert rate == profile(window, config).rate(config)


def _band(t: float) -> float:
    """A 3 GiB band below 8.5 GiB read at a phase that walks (a step period against the reads): up 0.5 GiB a read for
    six reads, then a fall to the bottom."""
    return 8.5 * GIB - 3 * GIB + (int(t) % 7) * 0.5 * GIB


BANDS: dict[str, tuple[Callable[[float], float], float | None]] = {
    # name: (bytes at t over 300 s, the band's top the window from 240 s is judged by, or None: no band)
    "a sawtooth, the window inside it": (_band, 8.5 * GIB),
    "a sawtooth, the window ramps within it": (
        lambda t: _band(t) if t < 240 else 6 * GIB + (t - 240) * 40e6,
        8.5 * GIB,
    ),
    "a plateau": (lambda t: 8 * GIB, None),
    "a plateau, one validation spike before": (lambda t: 8 * GIB + (100 <= t < 120) * 2 * GIB, None),
    # the look-back (from 60 s) opens on the spike, and the run went back below it: its band is the one it saws in since
    "a validation spike above the sawtooth, then the sawtooth": (
        lambda t: 14 * GIB if 50 <= t < 70 else _band(t),
        8.5 * GIB,
    ),
    "a staircase leak": (lambda t: 8 * GIB + (t // 30) * 256 * MIB, None),
    "a sawtooth, the window passes its top": (lambda t: _band(t) + (t >= 240) * 512 * MIB, None),
    "a sawtooth with a leak beneath it": (lambda t: _band(t) + t * 10e6, None),
    "a sawtooth, then down below it and climbing": (
        lambda t: _band(t) if t < 200 else 4 * GIB + (t - 200) * 40e6,
        None,
    ),
}


@pytest.mark.parametrize("name", list(BANDS))
def test_band_top(name: str) -> None:
    """A window is judged by the top of the band its series sawed in before it, only if it sawed (falls by more than
    min_rise_bytes, three or more) and the window stays within min_rise_bytes of that top."""
    fn, expected = BANDS[name]
    assert band_top(series(fn, 300), 240.0, CONFIG, lookback_seconds=180.0) == expected


PEAKS: dict[str, tuple[Callable[[float], float], tuple[float, float, float] | None]] = {
    # name: (bytes at t over 300 s, (its peaks' rate in MB/s, the top it saws up to, the band's height in GiB) from
    # 240 s, or None)
    "a sawtooth, the window inside it": (_band, (0.0, 8.5, 3.0)),
    "a sawtooth, the window ramps within it": (
        lambda t: _band(t) if t < 240 else 6 * GIB + (t - 240) * 40e6,
        (0.0, 8.5, 3.0),
    ),
    "a plateau": (lambda t: 8 * GIB, None),
    "a staircase leak": (lambda t: 8 * GIB + (t // 30) * 256 * MIB, None),
    "a validation spike above the sawtooth, then the sawtooth": (
        lambda t: 14 * GIB if 50 <= t < 70 else _band(t),
        (0.0, 8.5, 3.0),
    ),
    # 0.5 GiB above its top from 240 s on, over the window's 60 s
    "a sawtooth, the window passes its top": (lambda t: _band(t) + (t >= 240) * 512 * MIB, (8.9, 9.0, 3.0)),
    # its most at 300 s less its most at 237 s (3.00 - 2.37 GB of leak), over the window's 60 s: about the leak's
    # 10 MB/s; the look-back's least is at 63 s, so the leak adds 1.74 GB to its height
    "a sawtooth with a leak beneath it": (
        lambda t: _band(t) + t * 10e6,
        (10.5, (8.5 * GIB + 3.0e9) / GIB, (3 * GIB + 1.74e9) / GIB),
    ),
    "a sawtooth, then down below it and climbing": (
        lambda t: _band(t) if t < 200 else 4 * GIB + (t - 200) * 40e6,
        None,
    ),
}


@pytest.mark.parametrize("name", list(PEAKS))
def test_peaks(name: str) -> None:
    """A series that saws in a band it still lives in has peaks: how fast they rose above the band's top in the window
    (0 within it), the top it saws up to, the band's height; none for a plateau, a staircase, a run that left it."""
    fn, expected = PEAKS[name]
    found = peaks(series(fn, 300), 240.0, CONFIG, lookback_seconds=180.0)
    if expected is None:
        assert found is None
        return
    assert found is not None
    got = (round(found.bytes_per_second / 1e6, 1), found.top_bytes / GIB, found.height_bytes / GIB)
    assert got == pytest.approx(expected, abs=0.05)


def test_a_band_needs_enough_points_before_the_window() -> None:
    """A look-back holding fewer points than the falls a band needs says nothing, whatever the window holds."""
    assert band_top(series(_band, 300), 3.0, CONFIG, lookback_seconds=180.0) is None
