"""Whole detector pipeline (History -> analyze -> FindingTracker) on synthetic runs with known outcomes."""

from __future__ import annotations

import dataclasses
import math
import random
from array import array
from collections.abc import Callable, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vramwatch.detectors import DetectorConfig, FindingTracker, analyze
from vramwatch.detectors._series import View
from vramwatch.detectors.forecast import ForecastConfig, _card_climb
from vramwatch.detectors.testing import GIB, MIB, WALL0, Card, Replay, Rig, meta, replay, ticks
from vramwatch.history import History
from vramwatch.model import ProcessExit, ProcessMeta, Severity

CARD = 24 * GIB
OVERHEAD = Card().overhead_bytes
Profile = Callable[[float], Mapping[int, int]]


def run(fn: Profile, seconds: float, *, step: float = 1.0, rig: Rig | None = None, until_full: bool = True) -> Replay:
    """Replay `fn` every `step` seconds; a single-card run stops at its OOM (the process's next tick)."""
    rows = []
    for t in ticks(0.0, seconds, step):
        usage = fn(t)
        if until_full and OVERHEAD + sum(usage.values()) >= CARD - 64 * MIB:
            break
        rows.append((t, usage))
    return replay(rows, rig, interval_seconds=step)


def oom_time(fn: Profile, seconds: float, step: float = 1.0) -> float:
    return next(t for t in ticks(0.0, seconds, step) if OVERHEAD + sum(fn(t).values()) >= CARD - 64 * MIB)


def warmup(t: float, *, bumps: tuple[tuple[float, int], ...] = ((300, GIB), (600, 3 * GIB // 2))) -> int:
    """Weights in 8 s, first step (activations, grads, optimizer state), then validation/sampling bumps."""
    held = 500 * MIB + int(min(t / 8, 1) * 9.5 * GIB)
    held += (t >= 15) * 3 * GIB + (t >= 17) * GIB + (t >= 19) * 3 * GIB // 2
    return held + sum(size for at, size in bumps if t >= at)


def healthy(t: float) -> dict[int, int]:
    return {4242: warmup(t)}


def sawtooth(t: float) -> dict[int, int]:
    return {4242: 12 * GIB + int(t % 7) * 300 * MIB}


def fast_leak(t: float) -> dict[int, int]:
    # ~2 min from start to OOM: 4 GiB of weights, the first step, then 150 MB/s from t = 20 s.
    held = 500 * MIB + int(min(t / 8, 1) * 4 * GIB) + (t >= 15) * 2 * GIB
    return {4242: held + int(max(0.0, t - 20) * 150e6)}


def trainer_leak(t: float) -> dict[int, int]:
    """benchmarks/workloads/trainer.py --mode fast_leak: the leak starts at the first step, among warm-up bumps."""
    held = 500 * MIB + int(min(t / 1.25, 1) * 9.6 * GIB) + (t >= 12.5) * 1.9 * GIB + (t >= 25) * 1.2 * GIB
    return {4242: int(held + t * 150e6)}


def trainer_staircase(t: float) -> dict[int, int]:
    """trainer.py --mode stepwise_leak --sample-every 40: 1.2 GiB of sample images kept every 10 s."""
    return {4242: 500 * MIB + int(min(t / 1.25, 1) * 9.6 * GIB) + int(t // 10) * 6 * GIB // 5}


def slow_leak(t: float) -> dict[int, int]:
    return {4242: warmup(t) + int(max(0.0, t - 120) * 3e6)}


def stepwise_leak(t: float) -> dict[int, int]:
    return {4242: 12 * GIB + int(max(0.0, t - 120) // 90) * 700 * MIB}


def plateau_92(t: float) -> dict[int, int]:
    return {4242: int(min(t / 10, 1) * (0.92 * CARD - OVERHEAD))}


def spike_at_step_1(t: float) -> dict[int, int]:
    # The first step's peak is reserved by the caching allocator and kept: a one-off jump to 88 %, then flat.
    return {4242: 10 * GIB if t < 20 else 21 * GIB}


HEALTHY: dict[str, tuple[Profile, float, float]] = {
    "warm-up with validation and sampling bumps, then flat": (healthy, 1800, 2.0),
    "sawtooth": (sawtooth, 1200, 1.0),
    "plateau at 92 %": (plateau_92, 3600, 5.0),
    "spike at step 1": (spike_at_step_1, 900, 1.0),
}


@pytest.mark.parametrize("name", list(HEALTHY))
def test_healthy_runs_raise_nothing(name: str) -> None:
    """Warm-up bumps, a sawtooth, a 92 % plateau and a first-step spike raise no finding at all."""
    fn, seconds, step = HEALTHY[name]
    result = run(fn, seconds, step=step)
    assert result.raised == []
    assert result.last is not None
    assert not result.last.oom_eta


def test_a_healthy_run_gets_a_stability_verdict() -> None:
    """Once flat past warm-up, the run is called stable with its size, duration and headroom."""
    result = run(healthy, 1800, step=2.0)
    assert result.last is not None
    (text,) = result.last.verdicts.values()
    assert "stable at 18.0 GiB for 20 min" in text
    assert "GiB headroom" in text


@pytest.mark.parametrize(
    ("fn", "seconds", "step", "warning_lead", "critical_lead"),
    [
        pytest.param(fast_leak, 600, 1.0, 60, 20, id="fast leak 150 MB/s"),
        # A leak from the run's first step climbs from its bare context: a load's climb, not raised before it has
        # lasted `forecast_load_seconds`, whatever the process's age. These runs die 75 s and 120 s after they start.
        pytest.param(trainer_leak, 600, 1.0, 40, 20, id="fast leak from the first step, among warm-up bumps"),
        pytest.param(trainer_staircase, 600, 1.0, 55, 20, id="staircase of 1.2 GiB every 10 s from the start"),
        pytest.param(slow_leak, 6000, 5.0, 300, 20, id="slow leak 3 MB/s"),
        pytest.param(stepwise_leak, 4000, 5.0, 300, 20, id="stepwise leak 700 MiB / 90 s"),
    ],
)
def test_leaks_are_warned_ahead_of_the_oom(
    fn: Profile, seconds: float, step: float, warning_lead: float, critical_lead: float
) -> None:
    """Every gradual leak is warned and then called critical well before the card is full, the same for a run vramwatch
    saw start as for one it first saw already running, an hour old (a daemon restart)."""
    oom = oom_time(fn, seconds, step)
    result = run(fn, seconds, step=step)
    young = run(fn, seconds, step=step, rig=YOUNG)
    assert [(f.t, f.severity, f.tentative is None) for f in young.raised] == [
        (f.t, f.severity, f.tentative is None) for f in result.raised
    ]
    first, critical = result.first(), result.first(critical=True)
    assert first is not None
    assert critical is not None
    assert oom - first.t >= warning_lead
    assert oom - critical.t >= critical_lead


def test_fast_leak_forecast_names_the_process_and_the_eta() -> None:
    """The fast leak's forecast carries an ETA close to the truth and a human message."""
    oom = oom_time(fast_leak, 600)
    result = run(fast_leak, 600)
    finding = result.first("oom_forecast")
    assert finding is not None
    assert finding.eta_seconds is not None
    assert finding.eta_seconds == pytest.approx(oom - finding.t, rel=0.3)
    assert finding.message.startswith("python (pid 4242, alice) grows 15")
    assert "MB/s on GPU 0; the card is full in ~" in finding.message
    assert "of 24.0 GiB used)" in finding.message


def slow_load(t: float) -> dict[int, int]:
    """Weights read from a hard disk: 150 MB/s for 100 s (14 GiB), then flat. NVML reads it as a fast leak."""
    return {4242: 500 * MIB + int(min(t, 100.0) * 150e6)}


def late_leak(t: float) -> dict[int, int]:
    """Loaded in 8 s and flat for 30 s (its first steps at 15-19 s), then leaking 150 MB/s."""
    return {4242: warmup(t, bumps=()) + int(max(0.0, t - 50) * 150e6)}


#: When a new run appears on a card that vramwatch already watches.
ARRIVES = 10.0


def load_then_first_batches(t: float) -> dict[int, int]:
    """A new run: weights at 1 GiB/s for 8 s, then the optimizer's state and the first batches, each longer sequence
    taking more (the caching allocator keeps the largest), then flat: its whole life so far fills one 15-s window."""
    u = t - ARRIVES
    if u < 0:
        return {}
    held = 500 * MIB + int(min(max(u - 2, 0) / 8, 1) * 8 * GIB)
    first = ((10, GIB + 614 * MIB), (11, 1781 * MIB), (12, 1140 * MIB))
    return {4242: held + sum(size for at, size in first if u >= at)}


def test_a_load_and_its_first_batches_in_one_window_are_no_forecast() -> None:
    """No forecast window whose floor starts at the young grower's first sample: its load and first batches pass."""
    assert run(load_then_first_batches, 300).raised == []


@settings(max_examples=15, deadline=None)
@given(
    load_seconds=st.floats(3, 8),
    weights=st.integers(2 * GIB, 10 * GIB),
    first_steps=st.lists(st.tuples(st.floats(0, 4), st.integers(64 * MIB, 2 * GIB)), min_size=1, max_size=4),
)
def test_a_load_then_its_first_steps_never_raise(
    load_seconds: float, weights: int, first_steps: list[tuple[float, int]]
) -> None:
    """A new run's load of up to 8 s, then up to four allocations within 4 s of its end (the first steps), then
    flat: nothing."""

    def fn(t: float) -> dict[int, int]:
        u = t - ARRIVES
        if u < 0:
            return {}
        held = 500 * MIB + int(min(max(u - 2, 0) / load_seconds, 1) * weights)
        return {4242: held + sum(size for at, size in first_steps if u >= 2 + load_seconds + at)}

    assert run(fn, 300).raised == []


#: A run started at t = 0 (the default metadata has every process started an hour before the scenario).
YOUNG = Rig(metas={4242: meta(4242, start_time=WALL0)})


def aged(started: float | None) -> ProcessMeta:
    """pid 4242 started at wall time `started`, or of unknown start time (None: a process in another pid namespace)."""
    if started is None:
        return dataclasses.replace(meta(4242), start_time=None, root_start_time=None)
    return meta(4242, start_time=started)


def test_a_critical_forecast_on_a_young_grower_says_a_load_reads_the_same() -> None:
    """A grower that never held still yet is forecast critical, and the message says a load rises the same way."""
    finding = run(slow_load, 300, rig=YOUNG).first("oom_forecast", critical=True)
    assert finding is not None
    assert f"; it started {finding.t:.0f} s ago and has not held still yet" in finding.message
    assert finding.message.endswith("(a load rises like this until it stops; a leak does not)")
    assert finding.tentative is not None
    assert finding.tentative.startswith("python (pid 4242, alice): it started ")
    assert finding.message.endswith(finding.tentative.split(": ", 1)[1])


def young_load(gib: float, seconds: float, at: float = 10.0) -> Profile:
    """A run that sat at its CUDA context (0.5 GiB) and, from `at`, loads `gib` GiB evenly over `seconds`."""
    return lambda t: {4242: 500 * MIB + int(min(max(t - at, 0.0) / seconds, 1.0) * gib * GIB)}


@pytest.mark.parametrize(
    ("gib", "seconds", "forecast"),
    [(14, 15, False), (14, 25, False), (20, 29, False), (14, 45, True), (20, 60, True)],
)
def test_a_load_climbing_for_less_than_thirty_seconds_is_waited_on(gib: float, seconds: float, forecast: bool) -> None:
    """A young run loads at a rate that would fill the 24 GiB card within two minutes: a climb shorter than
    `forecast_load_seconds` (30 s) raises nothing, a longer one a tentative forecast once it has lasted 30 s."""
    raised = run(young_load(gib, seconds), 300, rig=YOUNG, until_full=False).raised
    assert [f.kind for f in raised] == (["oom_forecast"] if forecast else [])
    if forecast:
        assert raised[0].tentative is not None
        assert 30 <= raised[0].t - 10 <= seconds


@settings(max_examples=25, deadline=None)
@given(
    gib=st.floats(1, 21),
    # Read every second, a climb's length is known to within two ticks.
    seconds=st.floats(1, ForecastConfig().forecast_load_seconds - 2),
    at=st.floats(0, 100),
    fresh=st.booleans(),
)
def test_no_load_shorter_than_thirty_seconds_is_ever_forecast(
    gib: float, seconds: float, at: float, fresh: bool
) -> None:
    """Whatever it loads that fits, however fast, however long the run waited first at its context (young, or a
    server up for an hour that vramwatch first saw at its context, a daemon restart before the load included), a
    load's climb shorter than `forecast_load_seconds` raises nothing."""
    assert run(young_load(gib, seconds, at), at + 200, rig=YOUNG if fresh else None, until_full=False).raised == []


@pytest.mark.parametrize("at", [1.0, 5.0, 14.0])
@pytest.mark.parametrize(("seconds", "forecast"), [(25, False), (45, True)])
def test_an_old_server_loading_right_after_a_restart_is_a_load(at: float, seconds: float, forecast: bool) -> None:
    """A server up for an hour, at its CUDA context when vramwatch starts, loads 14 GiB `at` s later (before it could
    be seen to hold still): a 25-s load raises nothing, a 45-s one only a tentative forecast that says it is a load
    from its bare context (it was forecast firm, as an old run leaking)."""
    raised = run(young_load(14, seconds, at), at + 200, until_full=False).raised
    assert [f.kind for f in raised] == (["oom_forecast"] if forecast else [])
    if forecast:
        assert raised[0].tentative is not None
        assert "it held only its CUDA context (0.5 GiB) and began to climb" in raised[0].message
        assert 30 <= raised[0].t - at <= seconds


def test_a_young_fast_leak_is_forecast_thirty_seconds_into_its_climb() -> None:
    """A run that loads 2 GiB and leaks 150 MB/s from its first step: forecast critical (tentative) once its climb
    has lasted `forecast_load_seconds`, well before it runs out (the price of the wait: ~15 s of lead)."""

    def leak(t: float) -> dict[int, int]:
        return {4242: 500 * MIB + int(min(t / 3, 1) * 2 * GIB) + int(max(t - 3, 0) * 150e6)}

    oom = oom_time(leak, 600)
    first = run(leak, 600, rig=YOUNG).first("oom_forecast", critical=True)
    assert first is not None
    assert first.tentative is not None
    assert ForecastConfig().forecast_load_seconds <= first.t <= ForecastConfig().forecast_load_seconds + 10
    assert oom - first.t >= 60


def test_a_young_leak_is_raised_again_firm_once_it_is_no_longer_young() -> None:
    """A young run that leaks without ever holding still: its tentative critical forecast is raised again, firm,
    once it is older than forecast_warmup_seconds, before it runs out."""

    def leak(t: float) -> dict[int, int]:
        return {} if t < 10 else {4242: 500 * MIB + int(min(t - 10, 5) * 0.8 * GIB) + int(max(t - 15, 0) * 80e6)}

    oom = oom_time(leak, 900)
    raised = [f for f in run(leak, 900).raised if f.kind == "oom_forecast"]
    assert [(f.severity.value, f.tentative is not None) for f in raised] == [("critical", True), ("critical", False)]
    first, firm = raised
    assert "appeared" in first.message
    assert firm.message.endswith("of 24.0 GiB used)")
    assert 10 + ForecastConfig().forecast_warmup_seconds <= firm.t < oom


def load_then_leak(
    t: float, leak_at: float = 110.0, load_seconds: float = 25.0, load_rate: float = 450e6
) -> dict[int, int]:
    """The live GPU run of benchmarks/detection/hold_gpu.py (2026-12-06, H100), on a 24 GiB card: a trainer holding 5
    GiB, a slow load (11 GiB at 450 MB/s from t = 30 over 25 s, held, gone at t = 97), then at `leak_at` a run that
    loads 2.6 GiB, holds for 9 s and leaks 60 MB/s until it runs out."""
    usage = {4242: 5 * GIB}
    if 30 <= t < 97:
        usage[5151] = 500 * MIB + int(min(t - 30, load_seconds) * load_rate)
    if t >= leak_at:
        usage[6161] = (800 * MIB if t < leak_at + 2 else int(2.6 * GIB)) + int(max(0.0, t - leak_at - 11) * 60e6)
    return usage


@pytest.mark.parametrize("leak_at", [110.0, 60.0])
def test_a_load_forecast_does_not_mute_the_leak_after_it(leak_at: float) -> None:
    """A card-wide forecast blaming another grower is raised, whether the load's forecast has cleared (it is within
    the cooldown) or is still active: the leak that starts after a slow load is not silenced (it was, live, until
    the leaker was 3 minutes old: 10 s before its OOM). The load climbs 40 s here (the live one's 25 s climb is
    not forecast at all since `forecast_load_seconds`)."""

    def fn(t: float) -> dict[int, int]:
        return load_then_leak(t, leak_at, load_seconds=40.0, load_rate=300e6)

    oom = oom_time(fn, 900)
    raised = [f for f in run(fn, 900).raised if f.kind == "oom_forecast"]
    culprits = [(f.culprit.pid if f.culprit else None, f.tentative is not None) for f in raised]
    assert culprits[:2] == [(5151, True), (6161, True)]
    load, leak = raised[:2]
    assert leak.severity is Severity.CRITICAL
    assert leak.t - load.t < DetectorConfig().cooldown_seconds
    assert oom - leak.t >= 60


def test_a_grower_seen_to_arrive_is_said_to_have_appeared_then() -> None:
    """One first seen after the card's first sample appeared then on the card, whatever its start time."""
    finding = run(lambda t: {} if t < 10 else slow_load(t - 10), 300).first("oom_forecast", critical=True)
    assert finding is not None
    assert f"; it appeared {finding.t - 10:.0f} s ago and has not held still yet" in finding.message


@pytest.mark.parametrize("known", [True, False])
def test_a_leak_already_running_when_vramwatch_starts_is_forecast_with_what_vramwatch_has_not_seen(
    known: bool,
) -> None:
    """An old process (or one of unknown start time) already leaking at vramwatch's first sample (a daemon restart)
    is forecast critical in time, tentative: vramwatch did not see what it held before it looked, so it does not
    call it a load or a leak yet, nor say when it started."""
    fn = lambda t: {4242: 9 * GIB + int(t * 150e6)}  # noqa: E731 - one profile, read twice
    finding = run(fn, 300, rig=Rig(metas={4242: aged(WALL0 - 3600 if known else None)})).first(
        "oom_forecast", critical=True
    )
    assert finding is not None
    assert oom_time(fn, 300) - finding.t >= 20
    assert "; vramwatch first saw it " in finding.message
    assert "ago, already running, and has not seen enough of it to tell a load from a leak" in finding.message
    assert "it started" not in finding.message
    assert finding.tentative is not None


def test_a_leak_after_a_restart_is_tentative_until_watched_six_minutes_then_firm() -> None:
    """A run that vramwatch did not see start and that leaks 320 s after vramwatch's first sample: forecast critical,
    tentative, once its climb has lasted 30 s, then raised again firm as soon as vramwatch has watched it for the
    give-back test's look-back (2 x `forecast_warmup_seconds`), both well before its OOM."""

    def fn(t: float) -> dict[int, int]:
        return {4242: 9 * GIB + int(max(0.0, t - 320) * 150e6)}

    look_back = 2 * ForecastConfig().forecast_warmup_seconds
    criticals = [f for f in run(fn, 900).raised if f.kind == "oom_forecast" and f.severity is Severity.CRITICAL]
    assert [f.tentative is not None for f in criticals] == [True, False]
    tentative, firm = criticals
    assert 350 <= tentative.t < look_back
    assert "vramwatch first saw it" in tentative.message
    assert look_back <= firm.t <= look_back + 5
    assert firm.message.endswith("of 24.0 GiB used)")
    assert oom_time(fn, 900) - firm.t >= 60


def test_a_short_history_window_does_not_forget_that_vramwatch_saw_a_run_arrive() -> None:
    """With a 2-minute history window, a run that arrived on the card at t = 100 s while vramwatch watched (after ten
    minutes on the CPU) and leaks from its plateau at 300 s is forecast firm, as one vramwatch saw arrive, not as one
    already running before it: the card's first sample is long out of the window, but vramwatch's first read of the
    card is kept."""

    def fn(t: float) -> dict[int, int]:
        return {} if t < 100 else {4242: 9 * GIB + int(max(0.0, t - 300) * 150e6)}

    rows = [(t, fn(t)) for t in ticks(0.0, 420.0)]
    rig = Rig(metas={4242: meta(4242, start_time=WALL0 - 500)})
    finding = replay(rows, rig, window_seconds=120.0).first("oom_forecast", critical=True)
    assert finding is not None
    assert finding.tentative is None
    assert "vramwatch first saw it" not in finding.message


def test_a_leak_after_the_run_held_still_is_forecast_without_that_caveat() -> None:
    """A young run that held still before it started to leak is no load: its critical forecast carries no caveat."""
    oom = oom_time(late_leak, 900)
    finding = run(late_leak, 900, rig=YOUNG).first("oom_forecast", critical=True)
    assert finding is not None
    assert oom - finding.t >= 20
    assert finding.message.endswith("of 24.0 GiB used)")


def taken_back(
    t: float, *, held: float = 18, low: float = 2, climb: float = 30, to: float | None = None, saw: float = 0
) -> int:
    """A run on its plateau (`held` GiB, the default metadata: an hour old) that gives memory back at t = 300 (its
    weights offloaded for sampling, a server between two models), holds `low` GiB for 90 s, then takes it back over
    `climb` s, up to `to` GiB (`held` by default): the load of a run that is not young."""
    top = held if to is None else to
    if t < 300:
        gib = held
    elif t < 390:
        gib = low
    elif t < 390 + climb:
        gib = low + (top - low) * (t - 390) / climb
    else:
        gib = top
    wobble = saw * ((int(t) * 7919) % 10) / 10 if not 300 <= t < 390 + climb else 0.0
    return int((gib - wobble) * GIB)


@pytest.mark.parametrize(("climb", "saw"), [(15, 0), (30, 0), (60, 0), (30, 2)])
def test_a_run_taking_back_what_it_gave_back_is_no_forecast(climb: float, saw: float) -> None:
    """A run that is not young climbs back at load speed to what it held, and the card has room for it: nothing
    is raised (before 2026-12-06: a firm critical "full in ~25 s" 14 s into the climb)."""
    result = run(lambda t: {4242: taken_back(t, climb=climb, saw=saw)}, 900)
    assert result.raised == []
    # The same climb by a run that never held more (a 2 GiB plateau, then up to 18) is forecast: the silence above
    # is the give-back's, not a forecast that cannot see the climb.
    control = run(lambda t: {4242: taken_back(t, held=2, low=2, climb=climb, to=18, saw=saw)}, 900)
    assert control.first("oom_forecast", critical=True) is not None


@settings(max_examples=40, deadline=None)
@given(
    restart=st.floats(200, 440),
    # Its age when vramwatch starts (None: unknown, as for a process in another pid namespace).
    age=st.sampled_from([None, 20.0, 60.0, 170.0, 3600.0]),
    held=st.sampled_from([8, 14, 18]),
    to_context=st.booleans(),
    climb=st.floats(5, 60),
    more=st.sampled_from([0, 2]),
    saw=st.sampled_from([0, 2]),
    server=st.booleans(),
)
def test_a_daemon_restart_at_any_moment_of_a_load_never_raises_a_firm_critical(
    *, restart: float, age: float | None, held: int, to_context: bool, climb: float, more: int, saw: int, server: bool
) -> None:
    """vramwatch (re)started at any moment around a run's load, before it, mid give-back or mid-climb (a run giving
    memory back and taking it again, up to 2 GiB more; or a server idle at its context that loads a model at 300 s),
    whatever the run's age then, known or not: a load is never judged as a run leaking, so nothing that could end a
    run is raised."""
    low = 0.5 if to_context else 0.3 * held

    def fn(t: float) -> dict[int, int]:
        if server:
            return young_load(held, climb, at=300.0)(t)
        return {4242: taken_back(t, held=held, low=low, climb=climb, to=held + more, saw=saw)}

    rig = Rig(metas={4242: aged(None if age is None else WALL0 + restart - age)})
    rows = [(t, fn(t)) for t in ticks(restart, 900.0)]
    raised = replay(rows, rig).raised
    assert [f for f in raised if f.severity is Severity.CRITICAL and f.tentative is None] == []


@pytest.mark.parametrize(("restart", "age"), [(303.0, 170.0), (303.0, 60.0), (290.0, None), (303.0, None)])
def test_a_young_run_or_one_of_unknown_age_seen_after_a_restart_is_not_judged_old(
    restart: float, age: float | None
) -> None:
    """A run that vramwatch first sees already running, young (170 s, 60 s) or of unknown start time, gave memory back
    before or around the restart and takes it back at 390 s: no firm critical (it was one, at 404 s)."""
    rig = Rig(metas={4242: aged(None if age is None else WALL0 + restart - age)})
    low = 0.3 * 18
    rows = [(t, {4242: taken_back(t, held=18, low=low, climb=40)}) for t in ticks(restart, 900.0)]
    raised = replay(rows, rig).raised
    assert [f for f in raised if f.severity is Severity.CRITICAL and f.tentative is None] == []


def test_a_run_whose_room_was_taken_while_it_gave_it_back_is_forecast_tentatively() -> None:
    """Another run took the room while it was low: its climb back is forecast critical, tentative, before the OOM
    (and the newcomer that squeezed it is named)."""

    def fn(t: float) -> dict[int, int]:
        return {4242: taken_back(t, climb=60), **({5151: 6 * GIB} if t >= 330 else {})}

    rig = Rig(metas={5151: meta(5151, user="bob", start_time=WALL0 + 325)})
    result = run(fn, 900, rig=rig)
    forecast = result.first("oom_forecast", critical=True)
    assert forecast is not None
    assert forecast.tentative is not None
    assert "it fell to 2.0 GiB from 18.0 and began to climb again" in forecast.message
    assert forecast.t < oom_time(fn, 900)
    squeezed = result.first("contention", critical=True)
    assert squeezed is not None
    assert squeezed.process is not None
    assert squeezed.process.pid == 5151


def test_a_run_climbing_past_what_it_held_is_forecast_tentatively() -> None:
    """A server that held 6 GiB loads a 20 GiB model after unloading: past its old level the forecast is critical
    and tentative, since a load and a leak rise alike until one stops."""
    result = run(lambda t: {4242: taken_back(t, held=6, low=1, climb=50, to=20)}, 900, until_full=False)
    forecast = result.first("oom_forecast", critical=True)
    assert forecast is not None
    assert forecast.tentative is not None
    assert forecast.tentative.endswith("(a load rises like this until it stops; a leak does not)")
    assert [f for f in result.raised if f.kind == "oom_forecast" and f.tentative is None] == []


def test_a_run_that_leaks_from_its_plateau_is_forecast_firm() -> None:
    """A run that never gave memory back and starts leaking on its plateau is no load: its forecast is firm."""

    def fn(t: float) -> dict[int, int]:
        return {4242: 12 * GIB + int(max(0.0, t - 600) * 80e6)}

    forecast = run(fn, 900).first("oom_forecast", critical=True)
    assert forecast is not None
    assert forecast.tentative is None


def test_a_leak_after_a_run_took_back_its_memory_is_raised_firm_before_the_oom() -> None:
    """A run takes back what it gave back and goes on growing 60 MB/s: tentative while its climb is young, then
    firm (the low point has left the three-minute look back), before it runs out."""

    def fn(t: float) -> dict[int, int]:
        return {4242: taken_back(t, held=10, low=2, climb=30) + int(max(0.0, t - 420) * 60e6)}

    raised = [f for f in run(fn, 1200).raised if f.kind == "oom_forecast" and f.severity is Severity.CRITICAL]
    assert raised
    firm = [f for f in raised if f.tentative is None]
    assert firm
    assert firm[0].t < oom_time(fn, 1200)


@pytest.mark.parametrize(("model", "seconds", "quiet"), [(6, 30, True), (12, 30, True), (12, 50, False)])
def test_a_two_stage_start_is_never_forecast_firm(model: int, seconds: float, quiet: bool) -> None:
    """A young run loads text encoders (9.5 GiB), holds them 30 s, frees them and loads its model from disk: over
    30 s it raises nothing (a load's climb that short is waited on, whatever the model's size), over 50 s a big one
    at most a tentative forecast (before 2026-12-06 both sizes were firm criticals, the young run having held still;
    then the 12 GiB one over 30 s was tentative)."""

    def fn(t: float) -> dict[int, int]:
        if t < 10:
            return {4242: 500 * MIB + int(min(t / 5, 1) * 9.5 * GIB)}
        if t < 40:
            return {4242: 500 * MIB + int(9.5 * GIB)}
        if t < 42:
            return {4242: 500 * MIB}
        return {4242: 500 * MIB + int(min((t - 42) / seconds, 1) * model * GIB)}

    raised = run(fn, 300, rig=YOUNG, until_full=False).raised
    assert [f for f in raised if f.tentative is None] == []
    assert (raised == []) is quiet


# Read every 5 s, the climb is over before its tentative forecast could be raised (30 s, then the quorum).
@pytest.mark.parametrize(("step", "forecast"), [(1.0, True), (2.0, True), (5.0, False)])
def test_a_give_back_shorter_than_a_tick_is_still_seen(step: float, forecast: bool) -> None:
    """Text encoders freed and the model loaded at once (the bare context held for under a second, the second busy
    afternoon's F): read every 2 or 5 s, the run is first seen already climbing, yet its climb is a load's, waited
    on while it is short and tentative after, never a firm forecast (it was, at 2 s, before 2026-12-06)."""

    def fn(t: float) -> dict[int, int]:
        if t < 5:
            return {4242: 500 * MIB}
        if t < 60.2:
            return {4242: 500 * MIB + int(min((t - 5) / 3, 1) * 4.1 * GIB)}
        return {4242: 500 * MIB + int(min((t - 60.2) / 40, 1) * 14 * GIB)}

    raised = run(fn, 400, step=step, rig=YOUNG, until_full=False).raised
    # A 40-s climb that would fill the card in under a minute: tentative, once it has lasted 30 s.
    assert [(f.kind, f.tentative is not None) for f in raised] == ([("oom_forecast", True)] if forecast else [])
    assert all(f.t - 60.2 >= ForecastConfig().forecast_load_seconds for f in raised)


@pytest.mark.parametrize(
    "before",
    [
        pytest.param(lambda t: 14 * GIB if 500 <= t < 520 else 12 * GIB, id="a validation peak a minute before"),
        pytest.param(lambda t: 20 * GIB if t < 100 else 12 * GIB, id="more, ten minutes before"),
    ],
)
def test_a_leak_from_a_plateau_is_not_hidden_by_what_the_run_held_before(before: Callable[[float], int]) -> None:
    """A run that leaks 60 MB/s from its 12 GiB plateau is forecast as early, and as firmly, as one that never held
    more: a short peak (+2 GiB) is no give-back, and a give-back ten minutes before the leak is not this climb's."""

    def plain(t: float) -> dict[int, int]:
        return {4242: 12 * GIB + int(max(0.0, t - 580) * 60e6)}

    def after(t: float) -> dict[int, int]:
        return {4242: before(t) + int(max(0.0, t - 580) * 60e6)}

    expected = run(plain, 1200).first("oom_forecast", critical=True)
    got = run(after, 1200).first("oom_forecast", critical=True)
    assert expected is not None
    assert got is not None
    assert (got.t, got.tentative) == (expected.t, None)


def test_a_leak_in_a_run_that_frees_its_activations_every_step_is_not_hidden() -> None:
    """A run sawing 5 <-> 9 GiB (empty_cache() every step) starts leaking 60 MB/s after ten minutes: a sawtooth's
    trough is no give-back, so the leak is warned four minutes ahead, as before 2026-12-06 (with the peaks taken for
    what it held, 81 s ahead)."""

    def usage(t: float) -> dict[int, int]:
        return {4242: int(max(0.0, t - 600) * 60e6) + (9 * GIB if int(t) % 2 else 5 * GIB)}

    first = run(usage, 3000).first("oom_forecast")
    assert first is not None
    assert oom_time(usage, 3000) - first.t >= 240


def _stepping_after_offload(t: float) -> dict[int, int]:
    """Offloaded 16 -> 4 GiB at 300 s, then 1.2 GiB steps every 20 s from 330 s (60 MB/s), holding between."""
    if t < 300:
        return {4242: 16 * GIB}
    return {4242: 4 * GIB + (int(((t - 330) // 20 + 1) * 20 * 60e6) if t >= 330 else 0)}


def _slow_sawtooth_leak(t: float) -> dict[int, int]:
    """30-s phases of 12 and 8 GiB (rollouts, then training, empty_cache() between), leaking 100 MB/s from 600 s."""
    return {4242: (12 * GIB if (t % 60) < 30 else 8 * GIB) + int(max(0.0, t - 600) * 100e6)}


def _dip_then_leak(t: float) -> dict[int, int]:
    """A 12 GiB plateau dips to 8 GiB for 5 s at 585 s (a checkpoint's empty_cache()), leaks 100 MB/s from 600 s."""
    return {4242: (8 * GIB if 585 <= t < 590 else 12 * GIB) + int(max(0.0, t - 600) * 100e6)}


@pytest.mark.parametrize(
    ("fn", "first_by", "firm_by"),
    [
        pytest.param(_stepping_after_offload, 427, 555, id="a leak that steps, after an offload"),
        pytest.param(_slow_sawtooth_leak, 613, 613, id="a slow sawtooth that leaks"),
        pytest.param(_dip_then_leak, 614, 614, id="a leak right after a short dip"),
    ],
)
def test_leaks_that_look_like_a_give_back_are_forecast_as_before(fn: Profile, first_by: float, firm_by: float) -> None:
    """Shapes a review found hidden or softened by the give-back rule's first versions (a stepping leak below
    what the run held, a slow sawtooth's troughs, a dip of seconds taken for give-backs): each is forecast, and
    firm, at the tick it was before the rule (eaf3e36)."""
    raised = [f for f in run(fn, 3000).raised if f.kind == "oom_forecast"]
    firm = next(f.t for f in raised if f.severity is Severity.CRITICAL and f.tentative is None)
    assert raised[0].t <= first_by
    assert firm <= firm_by < oom_time(fn, 3000)


@pytest.mark.parametrize("mb_per_s", [150, 400])
def test_a_model_server_idle_at_its_context_loads_tentatively(mb_per_s: int) -> None:
    """A server up for an hour that sat at its bare CUDA context and loads a 12 GiB model from disk next to a
    trainer: its critical forecast says it held only its context and is tentative, never firm (before 2026-12-06:
    a firm critical, and a policy could end the trainer)."""

    def fn(t: float) -> dict[int, int]:
        return {4242: 500 * MIB + int(min(12 * GIB, max(0.0, t - 900) * mb_per_s * 1e6)), 5151: 8 * GIB}

    raised = [f for f in run(fn, 1200).raised if f.kind == "oom_forecast"]
    assert raised
    assert all(f.tentative is not None for f in raised)
    assert "it held only its CUDA context (0.5 GiB) and began to climb" in raised[0].message


@settings(max_examples=25, deadline=None)
@given(
    held=st.integers(4, 20),
    low=st.floats(0.0, 0.7),
    climb=st.floats(3, 90),
    saw=st.sampled_from([0.0, 1.0, 2.0]),
    other=st.sampled_from([0, 2]),
)
def test_taking_back_what_fits_never_raises(held: int, low: float, climb: float, saw: float, other: int) -> None:
    """Whatever its size, how low it went and how fast it climbs back, a run taking back no more than it held,
    with room for it on the card (next to a static holder or not), raises nothing."""
    if held + other > 22:
        return
    saw = min(saw, held / 2)

    def fn(t: float) -> dict[int, int]:
        # It gives back more than its sawtooth moves: a low inside that range is no giving back.
        usage = {4242: taken_back(t, held=held, low=low * (held - saw), climb=climb, saw=saw)}
        return {**usage, 5151: other * GIB} if other else usage

    assert run(fn, 700).raised == []


def test_slow_leak_is_claimed_as_growth_long_before_the_forecast() -> None:
    """A slow leak is called a growth (a leak) early, with the process and its rate."""
    result = run(slow_leak, 6000, step=5.0)
    growth = result.first("growth")
    assert growth is not None
    assert growth.process is not None
    assert growth.process.pid == 4242
    assert growth.numbers["rate_bytes_per_second"] == pytest.approx(3e6, rel=0.2)
    assert growth.t < 900


def test_probable_oom_reported_when_a_leaking_process_vanishes() -> None:
    """The process that vanishes from a card that was filling up is reported as a probable OOM."""
    oom = oom_time(fast_leak, 600)
    rows = [(t, fast_leak(t)) for t in ticks(0.0, oom - 1)] + [(t, {}) for t in ticks(oom, oom + 5)]
    result = replay(rows)
    crash = result.first("probable_oom")
    assert crash is not None
    assert crash.severity is Severity.CRITICAL
    assert crash.t == oom
    assert "disappeared from GPU 0" in crash.message


def test_a_quiet_exit_on_a_plateau_is_not_an_oom() -> None:
    """A run that ends on a flat plateau, even a full one, is not called an OOM."""
    rows = [(t, plateau_92(t)) for t in ticks(0.0, 900)] + [(t, {}) for t in ticks(901, 960)]
    assert replay(rows).raised == []


def contention(t: float) -> dict[int, int]:
    """A sawtooth trainer (bucketed shapes, `empty_cache()`: 12-18 GiB) and, from t = 600, a 7 GiB newcomer."""
    usage = {4242: 12 * GIB + (int(t) % 3) * 3 * GIB}
    if t >= 600:
        usage[777] = int(min(1.0, (t - 599) / 10) * 7 * GIB)
    return usage


def test_contention_names_the_newcomer_within_three_ticks() -> None:
    """A newcomer that leaves a moving run less than its peaks need is named (pid, name, user) within 3 ticks."""
    rig = Rig(metas={4242: meta(4242, name="train.py"), 777: meta(777, name="jupyter", user="bob")})
    result = run(contention, 700, rig=rig, until_full=False)
    finding = result.first("contention")
    assert finding is not None
    assert finding.process is not None
    assert finding.process.pid == 777
    assert finding.t <= 600 + 10 + 3
    assert finding.severity is Severity.CRITICAL
    assert finding.message.startswith("jupyter (pid 777, bob)")
    assert finding.numbers["user"] == "bob"
    assert finding.numbers["incumbent_need_bytes"] >= 3 * GIB
    assert finding.at_risk == rig.meta_of(4242).tree_key  # the squeezed run: whom a policy asks to save


def test_a_newcomer_that_leaves_a_moving_run_its_room_is_not_contention() -> None:
    """A second run that fits beside a sawtooth's peaks is sharing the card, whoever owns it."""
    rig = Rig(metas={4242: meta(4242), 777: meta(777, user="bob")})
    small = run(lambda t: {4242: 8 * GIB + (int(t) % 3) * 2 * GIB, **({777: 4 * GIB} if t >= 600 else {})}, 700,
                rig=rig, until_full=False)  # fmt: skip
    assert small.first("contention") is None


@pytest.mark.parametrize("user", ["alice", "bob"])
def test_a_run_on_its_plateau_cannot_be_squeezed(user: str) -> None:
    """A flat incumbent already holds all it uses: a newcomer taking the rest is pressure, not contention."""
    rig = Rig(metas={4242: meta(4242, name="train.py"), 777: meta(777, name="jupyter", user=user)})
    result = run(lambda t: {4242: 18 * GIB, **({777: 5 * GIB} if t >= 600 else {})}, 700, rig=rig, until_full=False)
    assert result.first("contention") is None
    assert [f.kind for f in result.raised] == ["pressure"]


def test_a_young_run_that_loses_most_of_its_room_is_named() -> None:
    """A server arriving 16 s after a run loaded, taking 82 % of the free room, is named within 3 ticks."""

    def usage(t: float) -> dict[int, int]:
        out = {4242: int(min(1.0, t / 8) * 9 * GIB)}
        if t >= 24:
            out[555] = int(0.82 * (24 * GIB - OVERHEAD - 9 * GIB))
        return out

    rig = Rig(metas={4242: meta(4242, name="train.py", start_time=WALL0), 555: meta(555, name="server", user="bob")})
    result = run(usage, 120, rig=rig, until_full=False)
    finding = result.first("contention")
    assert finding is not None
    assert finding.process is not None
    assert finding.process.pid == 555
    assert finding.t <= 24 + 3
    assert finding.severity is Severity.WARNING


def test_a_new_run_next_to_a_static_holder_is_not_contention() -> None:
    """A server that loaded once and stays flat cannot be squeezed, whoever arrives next to it."""

    def usage(t: float) -> dict[int, int]:
        out = {555: int(min(1.0, t / 4) * 6 * GIB)}
        if t >= 100:
            out[4242] = int(min(1.0, (t - 100) / 10) * 9 * GIB) + (t >= 115) * 2 * GIB
        return out

    rig = Rig(metas={4242: meta(4242, name="train.py"), 555: meta(555, name="server", user="bob")})
    assert run(usage, 400, rig=rig, until_full=False).raised == []


def test_a_zombie_holding_memory_is_a_stale_holder() -> None:
    """A zombie process that still holds VRAM is reported as a stale holder."""
    rig = Rig(metas={4242: meta(4242, status="zombie"), 5000: meta(5000)})
    result = run(lambda t: {4242: 2 * GIB, 5000: 10 * GIB}, 60, rig=rig)
    (finding,) = result.raised
    assert finding.kind == "stale_holder"
    assert finding.process is not None
    assert finding.process.pid == 4242
    assert "is zombie and still holds 2.0 GiB" in finding.message


def test_an_orphaned_worker_is_a_stale_holder() -> None:
    """A worker whose launcher died (now a child of init) is reported as a stale holder."""
    worker = meta(4243, ppid=1, root_pid=4200, root_start_time=1.0, root_name="torchrun")
    result = run(lambda t: {4243: 4 * GIB}, 30, rig=Rig(metas={4243: worker}))
    assert [f.kind for f in result.raised] == ["stale_holder"]
    assert "lost its launcher (pid 4200)" in result.raised[0].message


def test_pid_reuse_starts_a_new_identity() -> None:
    """A new process reusing a pid is not the old one grown: no growth, two separate rates."""
    history = History()
    old, new = meta(4242, start_time=1000.0), meta(4242, start_time=2000.0)
    for t in ticks(0.0, 900):
        usage: dict[int, int] = {} if 300 <= t < 305 else {4242: 8 * GIB if t < 300 else 20 * GIB}
        history.add(Rig(metas={4242: old if t < 300 else new}).snapshot(t, usage))
    analysis = analyze(history)
    assert analysis.findings == ()
    (key, _gpu), rate = next(iter(analysis.process_growth.items()))
    assert key.start_time == 2000.0
    assert rate.bytes_per_second == 0.0


def test_a_lost_gpu_is_skipped_and_the_other_still_watched() -> None:
    """A GPU that falls off the bus raises nothing; a leak on the other GPU is still found."""
    cards = (Card("GPU-0", 0), Card("GPU-1", 1))
    rig = Rig(cards=cards, down=lambda t, uuid: uuid == "GPU-1" and t >= 300)
    result = run(
        lambda t: {"GPU-0": {1: int(8 * GIB + max(0.0, t - 150) * 3e6)}, "GPU-1": {2: 12 * GIB}},
        1200,
        rig=rig,
        until_full=False,
    )
    assert {(f.kind, f.gpu_uuid) for f in result.raised} == {("growth", "GPU-0")}
    assert result.last is not None
    assert "GPU-1" not in result.last.gpu_growth


HIDDEN = Rig(metas={555: meta(555, start_time=WALL0 - 3600.0), 4242: meta(4242)}, visible=False)


CARD_CLIMBS: dict[str, tuple[Callable[[float], float], float | None]] = {
    # name: (the card's used bytes at t, read once a second up to 600 s; when its climb began, or None)
    "a plateau, then a load from 560 s": (lambda t: 8 * GIB + max(0.0, t - 560) * 200e6, 560.0),
    "two loads, the second from 560 s": (
        lambda t: 8 * GIB + (t >= 500) * 4 * GIB + max(0.0, t - 560) * 200e6,
        560.0,
    ),
    "rising for the whole three minutes": (lambda t: 8 * GIB + t * 20e6, None),
    "a plateau, then less than min_rise_bytes": (lambda t: 8 * GIB + max(0.0, t - 590) * 10e6, None),
    "a neighbour sawing, a load from its trough at 574 s": (
        lambda t: 8 * GIB + (int(t) % 7) * 0.5 * GIB + max(0.0, t - 574) * 300e6,
        574.0,
    ),
    "held still now": (lambda t: 8 * GIB + min(max(0.0, t - 500), 40.0) * 100e6, None),
}


@pytest.mark.parametrize("name", list(CARD_CLIMBS))
def test_card_climb(name: str) -> None:
    """Where no process is seen, the card's climb began where it last held still, or at its newest least when it never
    did (not where the three minutes begin), if it rose by more than min_rise_bytes since."""
    fn, expected = CARD_CLIMBS[name]
    ts = [float(t) for t in range(601)]
    used = View(array("d", ts), array("d", [float(math.ceil(fn(t))) for t in ts]))
    assert _card_climb(used, 600.0, ForecastConfig(), DetectorConfig()) == expected


def _next_to_a_server(t: float) -> dict[int, int]:
    """An old 8 GiB server; a run that starts at 600 s and loads 13.5 GiB in 20 s (the card then 1.9 GiB from full)."""
    if t < 600:
        return {555: 8 * GIB}
    u = t - 600
    return {555: 8 * GIB, 4242: int(500 * MIB + min(1.0, u / 12) * 9 * GIB + (u >= 16) * 3 * GIB + (u >= 18) * GIB)}


def _server_loads(t: float) -> dict[int, int]:
    """A model server idle at 1 GiB that loads 21 GiB at 250 MB/s from 600 s (for 90 s), then serves."""
    return {555: int(GIB + min(21 * GIB, max(0.0, t - 600) * 250e6))}


def _handover(t: float) -> dict[int, int]:
    """A run holding 20 GiB ends at 1200 s; the next starts 5 s later and loads 21 GiB at 250 MB/s."""
    if t < 1200:
        return {555: 20 * GIB}
    return {} if t < 1205 else {4242: int(min(21 * GIB, 300 * MIB + (t - 1205) * 250e6))}


@pytest.mark.parametrize(
    ("usage", "seconds", "raised_before"),
    [
        (_next_to_a_server, 1200, '"GPU 0 grows 805 MB/s; the card is full in ~8 s", firm, 13 s into the load'),
        # Found by a review: tentative while it climbed, firm once it held still (its windows still held the climb).
        (_server_loads, 900, '"grows 199 MB/s; full in ~8 s", firm, at 707 s, 17 s after the load'),
        (_handover, 1500, '"full in ~86 s", firm, 13 s into the load (the climb measured from the plateau before)'),
    ],
)
def test_a_load_on_a_card_whose_pids_are_hidden_is_no_firm_leak(
    usage: Profile, seconds: float, raised_before: str
) -> None:
    """Pids hidden, a run's load next to a server, a server's own load, a run starting right after another ended: at
    most a tentative critical forecast (NVML cannot tell a load from a leak until it stops), never a firm finding
    (`raised_before` 2026-12-07)."""
    raised = run(usage, seconds, rig=HIDDEN, until_full=False).raised
    assert [(f.kind, f.severity.value) for f in raised if f.tentative is None] == []


def test_a_fast_leak_on_a_card_whose_pids_are_hidden_is_forecast_a_minute_ahead() -> None:
    """Pids hidden, a run on its 10 GiB plateau for ten minutes that leaks 150 MB/s is forecast critical a minute or
    more before its OOM, tentatively (NVML cannot tell its climb from a run's load while it lasts three minutes), and
    a 20 MB/s one firm, two minutes ahead."""
    fast = run(lambda t: {4242: 10 * GIB + int(max(0.0, t - 600) * 150e6)}, 3000, rig=HIDDEN)
    crit = fast.first("oom_forecast", critical=True)
    assert crit is not None
    assert crit.tentative is not None
    assert oom_time(lambda t: {4242: 10 * GIB + int(max(0.0, t - 600) * 150e6)}, 3000) - crit.t >= 60

    def slow(t: float) -> dict[int, int]:
        return {4242: 10 * GIB + int(max(0.0, t - 600) * 20e6)}

    crit = run(slow, 3000, rig=HIDDEN).first("oom_forecast", critical=True)
    assert crit is not None
    assert crit.tentative is None
    assert oom_time(slow, 3000) - crit.t >= 120


def test_a_leak_in_bursts_on_a_card_whose_pids_are_hidden_is_forecast_minutes_ahead() -> None:
    """Pids hidden, a run on its 8 GiB plateau that leaks 200 MB/s for 20 s of every minute is forecast critical two
    minutes or more before its OOM (its bursts, less than a plateau apart, are one climb), firm a minute or more before
    it (a review found the first critical 28 s ahead: each burst a new load, none lasting 30 s)."""

    def usage(t: float) -> dict[int, int]:
        bursts = max(0.0, t - 600)
        return {4242: 8 * GIB + int((bursts // 60 * 20 + min(bursts % 60, 20.0)) * 200e6)}

    result = run(usage, 3000, rig=HIDDEN)
    oom = oom_time(usage, 3000)
    crit = result.first("oom_forecast", critical=True)
    assert crit is not None
    assert oom - crit.t >= 120
    firm = next((f for f in result.raised if f.kind == "oom_forecast" and f.tentative is None), None)
    assert firm is not None
    assert oom - firm.t >= 40


def test_hidden_pids_still_give_device_findings() -> None:
    """Without visible pids (a container), a leak is still found on the device, with no process named."""
    rows = [(t, slow_leak(t)) for t in ticks(0.0, 1500, 5.0)]
    rig = Rig()
    history, config = History(3600, 5.0), DetectorConfig()
    kinds = set()
    for t, usage in rows:
        history.add(rig.snapshot(t, usage, visible=False))
        kinds |= {(f.kind, f.process) for f in analyze(history, config).findings}
    assert ("growth", None) in kinds


@settings(max_examples=12, deadline=None)
@given(
    base=st.integers(2, 12),
    start=st.floats(30, 300),
    rate=st.floats(20e6, 200e6),
    factor=st.floats(1.0, 4.0),
)
def test_a_steeper_leak_is_never_warned_later(base: int, start: float, rate: float, factor: float) -> None:
    """The same run leaking faster gets its first finding no later (and none is ever missed)."""

    def leak(r: float) -> Profile:
        return lambda t: {4242: base * GIB + int(max(0.0, t - start) * r)}

    def first_finding(r: float) -> float:
        # Watched from its start (not a daemon restart: a run vramwatch did not see start waits as a young one does).
        found = run(leak(r), 3000, step=2.0, rig=YOUNG).first()
        assert found is not None
        return found.t

    assert first_finding(rate * factor) <= first_finding(rate)


@settings(max_examples=15, deadline=None)
@given(
    bumps=st.lists(st.tuples(st.floats(20, 900), st.integers(64 * MIB, 2 * GIB)), max_size=3),
    load_seconds=st.floats(1, 10),
    weights=st.integers(2 * GIB, 10 * GIB),
)
def test_warm_up_then_flat_never_raises(bumps: list[tuple[float, int]], load_seconds: float, weights: int) -> None:
    """A load, up to three bumps placed anywhere (first step, validation, samples), then flat: no finding."""

    def fn(t: float) -> dict[int, int]:
        held = 500 * MIB + int(min(t / load_seconds, 1) * weights)
        return {4242: held + sum(size for at, size in bumps if t >= at)}

    assert run(fn, 1500, step=3.0).raised == []


def test_rates_are_reported_for_metrics() -> None:
    """analyze exposes per-GPU and per-process rates, and an ETA only while the card grows."""
    result = run(fast_leak, 75)
    assert result.last is not None
    rate = result.last.gpu_growth["GPU-0"]
    assert rate.sustained
    assert rate.bytes_per_second == pytest.approx(150e6, rel=0.1)
    eta, confidence = result.last.oom_eta["GPU-0"]
    assert 0 < eta < 120
    assert 0.5 < confidence <= 1.0
    assert math.isclose(result.last.t, 75.0)


BALLAST = 777


def _ballast_card() -> Rig:
    """An 80 GB card with a ballast leaving 24 GiB, as the GPU recordings are made (the card is not rebased)."""
    return Rig(
        cards=(Card(total_bytes=80 * GIB),),
        metas={BALLAST: meta(BALLAST, name="ballast.py"), 4242: meta(4242, name="train.py"),
               5151: meta(5151, name="notebook", user="alice")},
    )  # fmt: skip


def _with_ballast(fn: Callable[[float], dict[int, int]]) -> Callable[[float], dict[int, int]]:
    return lambda t: {BALLAST: 56 * GIB, **fn(t)}


def test_a_leak_next_to_a_static_ballast_is_not_contention() -> None:
    """A trainer started just after a ballast and leaking later is a leak: the ballast is no run it squeezes."""

    def leak(t: float) -> dict[int, int]:
        if t < 4:
            return {}
        return {4242: int(min(12 * GIB, (t - 4) * GIB)) + int(max(0.0, t - 60) * 150e6)}

    rows = [(t, _with_ballast(leak)(t)) for t in ticks(0.0, 150.0)]
    result = replay(rows, _ballast_card())
    assert result.first("contention") is None
    assert result.first("oom_forecast") is not None


def test_a_contender_next_to_a_ballast_names_the_run_not_the_ballast() -> None:
    """When a newcomer squeezes a sawtooth trainer on a ballasted card, the victim named is the trainer."""

    def usage(t: float) -> dict[int, int]:
        out = {4242: int(min(16 * GIB, (t + 1) * GIB))} if t < 60 else {4242: 12 * GIB + (int(t) % 3) * 2 * GIB}
        if t >= 200:
            out[5151] = int(min(1.0, (t - 199) / 5) * 9 * GIB)
        return out

    rows = [(t, _with_ballast(usage)(t)) for t in ticks(0.0, 260.0)]
    finding = replay(rows, _ballast_card()).first("contention")
    assert finding is not None
    assert finding.process is not None
    assert finding.process.pid == 5151
    assert finding.numbers["incumbent_pid"] == 4242


def test_a_plateau_with_a_slow_drift_on_a_ballasted_card_is_not_critical() -> None:
    """Under 5% of a big card free but full only in hours: no critical forecast (the run's headroom is fine)."""

    def plateau(t: float) -> dict[int, int]:
        if t < 4:
            return {}
        warm = int(min(22 * GIB, (t - 4) * 2 * GIB))
        return {4242: warm + int(max(0.0, t - 30) * 0.2e6)}  # 0.2 MB/s of drift once warm

    rows = [(t, _with_ballast(plateau)(t)) for t in ticks(0.0, 1200.0)]
    result = replay(rows, _ballast_card())
    assert [f for f in result.raised if f.kind == "oom_forecast"] == []


# --- regressions from real multi-tenant cards (issue "Trust on shared cards") ------------------------------


def test_a_run_ending_normally_on_a_card_an_intruder_filled_is_no_oom() -> None:
    """A flat run that ends after a newcomer filled the card left normally: no probable_oom."""

    def usage(t: float) -> dict[int, int]:
        out = {4242: int(min(1.0, t / 10) * 20 * GIB)} if t < 300 else {}
        if t >= 200:
            out[555] = 3 * GIB + 256 * MIB  # the card is nearly full from here on
        return out

    rig = Rig(metas={4242: meta(4242, name="train.py"), 555: meta(555, name="server", user="bob")})
    result = run(usage, 330, rig=rig, until_full=False)
    assert result.first("probable_oom") is None


def test_a_run_ending_in_its_own_validation_spike_with_room_left_is_no_oom() -> None:
    """Its own memory rose at the end, but the card still had room: the run ended, it did not run out."""

    def usage(t: float) -> dict[int, int]:
        if t >= 120:
            return {}
        return {4242: int(min(1.0, t / 10) * 14 * GIB) + (t >= 116) * 3 * GIB}

    assert run(usage, 150, until_full=False).first("probable_oom") is None


def test_a_rise_into_the_ceiling_then_vanishing_is_a_probable_oom() -> None:
    """Its own memory jumped to the card's limit, then it was gone: a spike that did not fit."""

    def usage(t: float) -> dict[int, int]:
        if t >= 120:
            return {}
        return {4242: int(min(1.0, t / 10) * 14 * GIB) + (t >= 117) * int(9.5 * GIB)}

    crash = run(usage, 150, until_full=False).first("probable_oom")
    assert crash is not None
    assert "rose by 9.5 GiB" in crash.message


@pytest.mark.parametrize(("code", "signal", "raised"), [(0, None, False), (1, None, True), (None, 9, True)])
def test_an_exit_status_seen_on_a_zombie_decides(code: int | None, signal: int | None, raised: bool) -> None:
    """Exit 0 seen on the zombie is a normal end; a failure or a kill on a full card is a probable OOM."""
    rig = Rig()
    history, config = History(), DetectorConfig()
    tracker, found = FindingTracker(config), []
    for t in ticks(0.0, 110.0):
        usage = {4242: 23 * GIB + 400 * MIB} if t < 100 else {}  # flat on a full card (0.3 GiB free), then gone
        snap = rig.snapshot(t, usage)
        if t == 100.0:
            snap = dataclasses.replace(snap, exits=(ProcessExit(4242, meta(4242).start_time, code, signal),))
        history.add(snap)
        found += tracker.update(analyze(history, config))[0]
    assert [f.kind for f in found if f.kind == "probable_oom"] == (["probable_oom"] if raised else [])


def test_a_sawtooth_filling_its_troughs_gets_no_forecast() -> None:
    """Bucketed shapes with empty_cache(): troughs rise 2 -> 7 GiB while the peaks stay at 11 GiB: no forecast.

    Without the peaks' test this raised a critical "full in ~54 s" at t = 14 s, as on the real sawtooth run.
    """

    def usage(t: float) -> dict[int, int]:
        if t < 3:
            return {4242: int(t / 3 * 2 * GIB)}
        trough = int((2 + 5 * min(1.0, (t - 3) / 20)) * GIB)
        return {4242: 11 * GIB if t % 3 == 1 else trough}

    result = run(usage, 180, until_full=False)
    assert result.first("oom_forecast") is None
    assert result.first("growth") is None


def test_a_leaking_sawtooth_is_still_forecast() -> None:
    """Peaks and troughs both rising 150 MB/s (a leak under empty_cache()): forecast critical before the OOM."""

    def usage(t: float) -> dict[int, int]:
        leak = int(max(0.0, t - 10) * 150e6)
        return {4242: leak + (9 * GIB if int(t) % 2 else 5 * GIB)}

    result = run(usage, 300)
    crit = result.first("oom_forecast", critical=True)
    assert crit is not None
    assert oom_time(usage, 300) - crit.t >= 20


def sawing_band(peak: int, amplitude: int, seed: int, *, leak: float = 0.0, leak_from: float = 0.0) -> Profile:
    """An old run at `peak` that falls back by up to `amplitude` at every step (`empty_cache()`), read once a second at
    a random phase of steps shorter than a second, in 2 MiB segments; with `leak` (bytes a second from `leak_from`),
    its whole band rises."""
    rng = random.Random(seed)  # noqa: S311 - a test's draws, not secrets
    drawn: dict[float, int] = {}

    def usage(t: float) -> dict[int, int]:
        if t not in drawn:  # draws in tick order, once per tick, whoever asks
            held = peak - amplitude * rng.random() + leak * max(0.0, t - leak_from)
            drawn[t] = math.ceil(held / (2 * MIB)) * 2 * MIB
        return {4242: drawn[t]}

    return usage


OLD = Rig(metas={4242: meta(4242, start_time=WALL0 - 3600.0)})


@pytest.mark.parametrize(
    ("seed", "seconds", "visible", "raised_before"),
    [
        # Its floor and peaks rose through every part of 900-915 s, within the band: "grows 167 MB/s, full in ~2 min".
        (1, 920, True, "a firm critical forecast at 915 s"),
        # Its floors rose 0.1 GiB in four minutes by chance: "grows 0.7 MB/s (+0.1 GiB in 4 min)", a leak claim.
        (2, 1520, True, "a growth warning at 1,513 s"),
        # The same, its pids hidden: "GPU 0 grows 0.7 MB/s and no single process explains it", until 2026-12-07.
        (2, 1520, False, "a growth warning about the card at 1,513 s"),
    ],
)
def test_a_run_sawing_in_the_band_it_lived_in_is_no_grower(
    seed: int, seconds: float, visible: bool, raised_before: str
) -> None:
    """A healthy old run sawing by 3 GiB below an 8.5 GiB peak, read at random phases, raises nothing, its pids visible
    or not (`raised_before` this rule: warmups.py's sawtooth model, the draws that found it)."""
    rig = dataclasses.replace(OLD, visible=visible)
    result = run(sawing_band(520 * MIB + 8 * GIB, 3 * GIB, seed), seconds, rig=rig, until_full=False)
    assert result.raised == []


@given(
    peak=st.integers(6, 20).map(lambda g: g * GIB),
    amplitude=st.sampled_from([GIB // 2, GIB, 2 * GIB, 3 * GIB]),
    seed=st.integers(0, 2**16),
    visible=st.booleans(),
)
@settings(max_examples=6, deadline=None)
def test_no_sawing_band_is_claimed_or_forecast(peak: int, amplitude: int, seed: int, visible: bool) -> None:
    """An old run sawing in a fixed band at random phases, with room above its peak, raises no finding in 20 min, its
    pids visible or not."""
    result = run(
        sawing_band(peak, amplitude, seed), 1200, rig=dataclasses.replace(OLD, visible=visible), until_full=False
    )
    assert [f.message for f in result.raised] == []


@pytest.mark.parametrize("validation", [False, True])
def test_a_leak_beneath_a_sawtooth_is_forecast_as_it_passes_its_band(validation: bool) -> None:
    """A 100 MB/s leak beneath a 3 GiB sawtooth is forecast critical over a minute before its OOM, as before the band
    rule, also when a validation took the run 2 GiB above its band just before (its top, as the rule reads it)."""
    band = sawing_band(12 * GIB, 3 * GIB, 0, leak=100e6, leak_from=600.0)

    def usage(t: float) -> dict[int, int]:
        return {4242: 14 * GIB} if validation and 580 <= t < 600 else band(t)

    result = run(usage, 1200, rig=OLD)
    crit = result.first("oom_forecast", critical=True)
    assert crit is not None
    assert crit.t > 600
    assert oom_time(usage, 1200) - crit.t >= 60


def test_a_leak_from_below_a_band_the_run_left_is_forecast_as_before() -> None:
    """A run that sawed by 3 GiB below 23 GiB, came down to 14 GiB (an evaluation after training) and leaks 100 MB/s
    from there is forecast critical 90 s before its OOM, as before the band rule: it left the band (5 s in review)."""
    band = sawing_band(23 * GIB, 3 * GIB, 0)

    def usage(t: float) -> dict[int, int]:
        return band(t) if t < 900 else {4242: 14 * GIB + int((t - 900) * 100e6)}

    result = run(usage, 1200, rig=OLD)
    crit = result.first("oom_forecast", critical=True)
    assert crit is not None
    assert oom_time(usage, 1200) - crit.t >= 80


@pytest.mark.parametrize("visible", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_a_slow_leak_beneath_a_sawtooth_is_forecast_at_its_own_rate(seed: int, visible: bool) -> None:
    """A 5 MB/s leak beneath a 3 GiB sawtooth read at random phases is forecast at about its own rate, critical within
    ten minutes of its OOM and a minute ahead at least, also where the pids are not visible (seed 1, before the peaks
    bound: "grows 172 MB/s", a firm critical half an hour early; hidden, before the card was its own grower: "grows
    163 MB/s")."""
    usage = sawing_band(14 * GIB, 3 * GIB, seed, leak=5e6, leak_from=600.0)
    result = run(usage, 4000, rig=dataclasses.replace(OLD, visible=visible))
    oom = oom_time(usage, 4000)
    forecasts = [f for f in result.raised if f.kind == "oom_forecast"]
    assert [f.numbers["rate_bytes_per_second"] for f in forecasts if f.numbers["rate_bytes_per_second"] > 15e6] == []
    crit = result.first("oom_forecast", critical=True)
    assert crit is not None
    assert crit.tentative is None
    assert 60 <= oom - crit.t <= 600


@pytest.mark.parametrize("seed", [0, 1])
def test_a_slow_leak_claim_beneath_a_sawtooth_counts_the_room_above_its_peak(seed: int) -> None:
    """The leak claim of a 5 MB/s leak beneath a 3 GiB sawtooth says the card is full within 15 % of the time that was
    left, as the forecast counts the room: above the peak (from the read's phase, "~44 min" where 32 were left)."""
    usage = sawing_band(14 * GIB, 3 * GIB, seed, leak=5e6, leak_from=600.0)
    result = run(usage, 3000, rig=OLD)
    claim = result.first("growth")
    assert claim is not None
    assert claim.eta_seconds is not None
    left = oom_time(usage, 3000) - claim.t
    assert 0.85 * left <= claim.eta_seconds <= 1.15 * left


@pytest.mark.parametrize("seed", [0, 1])
def test_a_leak_next_to_a_sawing_neighbour_is_forecast_at_its_own_rate(seed: int) -> None:
    """A 5 MB/s leak that does not saw, next to a run sawing by 3 GiB (read at random phases), is forecast at its own
    rate, not at what the neighbour's phases add to the card's floor: critical within ten minutes of its OOM and a
    minute ahead at least (a review found "grows 94 MB/s", "173 MB/s" on `f04e94a`: a firm critical half an hour
    early)."""
    band = sawing_band(8 * GIB, 3 * GIB, seed)

    def usage(t: float) -> dict[int, int]:
        return {4242: band(t)[4242], 5151: 4 * GIB + math.ceil(5e6 * max(0.0, t - 600) / (2 * MIB)) * 2 * MIB}

    rig = Rig(metas={4242: meta(4242, start_time=WALL0 - 3600.0), 5151: meta(5151, start_time=WALL0 - 3600.0)})
    result = run(usage, 4000, rig=rig)
    oom = oom_time(usage, 4000)
    crit = result.first("oom_forecast", critical=True)
    assert crit is not None
    assert crit.numbers["rate_bytes_per_second"] < 3 * 5e6
    assert 60 <= oom - crit.t <= 600


def test_a_leak_beneath_a_sawtooth_whose_peaks_the_reads_miss_is_forecast_by_its_true_peak() -> None:
    """A 50 MB/s leak beneath a 3 GiB sawtooth of half-second steps (read once a second, the phase walks and misses
    the peaks for tens of seconds) after a validation is forecast critical, firm, at less than twice its rate, 100 s or
    more before its true peak no longer fits and not later than its ETA says (`f04e94a`: 273 s ahead, "grows
    125 MB/s; full in ~2 min")."""
    rng = random.Random(1)  # noqa: S311 - a test's draws, not secrets
    edge, period, peak = -rng.uniform(0.0, 0.5), 0.5, 8 * GIB
    drawn: dict[float, int] = {}

    def usage(t: float) -> dict[int, int]:
        nonlocal edge, period
        if t not in drawn:  # draws in tick order, once per tick, whoever asks
            while edge + period <= t:
                edge, period = edge + period, 0.5 * rng.uniform(0.9, 1.1)
            held = peak - 3 * GIB * (1.0 - (t - edge) / period) + 50e6 * max(0.0, t - 600)
            drawn[t] = 10 * GIB if 580 <= t < 600 else math.ceil(held / (2 * MIB)) * 2 * MIB
        return {4242: drawn[t]}

    oom = next(t for t in ticks(600.0, 1200.0) if OVERHEAD + peak + 50e6 * (t - 600) >= CARD - 64 * MIB)
    crit = run(usage, 1200, rig=OLD).first("oom_forecast", critical=True)
    assert crit is not None
    assert crit.tentative is None
    assert crit.numbers["rate_bytes_per_second"] < 2 * 50e6
    assert oom - crit.t >= 100
    assert crit.eta_seconds is not None
    assert crit.eta_seconds <= 1.2 * (oom - crit.t)


def test_pressure_names_the_run_filling_the_card_not_the_static_holder() -> None:
    """Next to a big static holder, pressure names the leaking run, and the leak is never contention."""

    def leak(t: float) -> dict[int, int]:
        out = {5151: 12 * GIB}
        if t >= 30:
            out[4242] = int(min(4 * GIB, (t - 30) * GIB)) + int(max(0.0, t - 60) * 40e6)
        return out

    rig = Rig(metas={5151: meta(5151, name="server", user="bob"), 4242: meta(4242, name="train.py")})
    result = run(leak, 600, rig=rig)
    pressure = result.first("pressure")
    assert pressure is not None
    assert "train.py (pid 4242" in pressure.message
    assert "filling it" in pressure.message
    assert result.first("contention") is None


def test_a_leak_that_came_in_next_to_a_moving_run_is_a_leak_not_a_newcomer() -> None:
    """A run that fitted on arrival and then leaks into a sawtooth's room is growth, not contention."""

    def usage(t: float) -> dict[int, int]:
        out = {4242: 6 * GIB + (int(t) % 2) * 3 * GIB}
        if t >= 200:
            out[777] = int(min(2 * GIB, (t - 200) * GIB)) + int(max(0.0, t - 210) * 60e6)
        return out

    rig = Rig(metas={4242: meta(4242, name="train.py"), 777: meta(777, name="leaky.py", user="bob")})
    result = run(usage, 600, rig=rig)
    assert result.first("contention") is None
    assert result.first("oom_forecast") is not None


def test_after_a_restart_an_old_server_is_not_a_young_run() -> None:
    """Right after vramwatch starts, a server that loaded an hour ago is old: a newcomer next to it is no contention."""

    def usage(t: float) -> dict[int, int]:
        return {555: 12 * GIB, **({4242: int(min(1.0, (t - 30) / 5) * 9 * GIB)} if t >= 30 else {})}

    rig = Rig(
        metas={555: meta(555, name="server", user="bob"), 4242: meta(4242, name="train.py", start_time=WALL0 + 30)}
    )
    assert run(usage, 200, rig=rig, until_full=False).first("contention") is None


@pytest.mark.parametrize(("code", "raised"), [(3, True), (0, False), (None, False)])
def test_a_failed_exit_right_after_the_cache_was_given_back_is_a_probable_oom(code: int | None, raised: bool) -> None:
    """A sample batch that never fit leaves only the cache PyTorch gives back before raising; with a failing
    exit status seen, that is an OOM even on a card with room left (real H200 trace: exit 3, 1.69 -> 1.22 GiB)."""
    rig = Rig()
    ended = None if code is None else ProcessExit(4242, meta(4242).start_time, code)
    history, config = History(), DetectorConfig()
    tracker, found = FindingTracker(config), []
    for t in ticks(0.0, 70.0):
        usage = {4242: 2 * GIB if t < 59 else 1536 * MIB} if t < 60 else {}
        snap = rig.snapshot(t, usage)
        if t == 60.0 and ended is not None:
            snap = dataclasses.replace(snap, exits=(ended,))
        history.add(snap)
        found += tracker.update(analyze(history, config))[0]
    assert [f.kind for f in found] == (["probable_oom"] if raised else [])


@settings(max_examples=25, deadline=None)
@given(
    holder=st.integers(1, 16),
    newcomer=st.integers(1, 12),
    at=st.floats(30, 400),
    old=st.booleans(),
)
def test_a_flat_holder_is_never_squeezed(holder: int, newcomer: int, at: float, old: bool) -> None:
    """Whatever the sizes and timing, a holder that loaded once and stays flat is never critically squeezed,
    and is named at all only while it is young (under 2 minutes old: its needs are not known yet)."""
    card = 24 * GIB - OVERHEAD

    def usage(t: float) -> dict[int, int]:
        out = {555: int(min(1.0, t / 3) * holder * GIB)}
        if t >= at:
            out[4242] = min(card - out[555], int(min(1.0, (t - at) / 5) * newcomer * GIB))
        return out

    start = WALL0 - 3600.0 if old else WALL0
    rig = Rig(metas={555: meta(555, name="server", user="bob", start_time=start),
                     4242: meta(4242, name="train.py", start_time=WALL0 + at)})  # fmt: skip
    found = run(usage, at + 90, rig=rig, step=2.0, until_full=False).first("contention")
    assert found is None or (not old and found.severity is Severity.WARNING)


@settings(max_examples=25, deadline=None)
@given(held=st.integers(1, 23), rise=st.integers(0, 4), end=st.floats(30, 300))
def test_a_clean_exit_is_never_a_probable_oom(held: int, rise: int, end: float) -> None:
    """Whatever the run's last moments looked like, an exit status of 0 seen on its zombie is never an OOM."""
    history, config = History(), DetectorConfig()
    tracker, found = FindingTracker(config), []
    rig = Rig()
    for t in ticks(0.0, end + 10):
        top = min(24 * GIB - OVERHEAD, held * GIB + (t > end - 5) * rise * GIB)
        snap = rig.snapshot(t, {4242: top} if t < end else {})
        if t >= end and not snap.processes and not found and t - end < 1:
            snap = dataclasses.replace(snap, exits=(ProcessExit(4242, meta(4242).start_time, 0),))
        history.add(snap)
        found += [f for f in tracker.update(analyze(history, config))[0] if f.kind == "probable_oom"]
    assert found == []


def test_a_leak_after_a_load_on_a_card_whose_pids_are_hidden_is_not_muted_by_the_load() -> None:
    """Pids hidden, a server's load (tentative critical, then cleared once it holds still) does not mute the leak that
    starts two minutes later within the cooldown: the leak's climb began after the load's forecast cleared, so it is
    another claim, forecast critical a minute before its OOM (before 2026-12-07 (c): never raised, the OOM silent)."""

    def usage(t: float) -> dict[int, int]:
        load = min(max(0.0, t - 400), 50.0) * 160e6  # 8 GB over 50 s from 400 s, then held
        return {555: 8 * GIB + int(load), 4242: 512 * MIB + int(max(0.0, t - 570) * 60e6)}

    result = run(usage, 1200, rig=HIDDEN)
    forecasts = [f for f in result.raised if f.kind == "oom_forecast"]
    assert forecasts
    assert forecasts[0].t < 470  # the load's, while it climbed
    leak = [f for f in forecasts if f.t > 570]
    assert leak, "the leak's forecast was muted by the load's"
    assert leak[0].severity.value == "critical"
    assert oom_time(usage, 1200) - leak[0].t >= 60


def test_a_leak_that_starts_while_a_load_s_forecast_is_up_keeps_it_up_and_tells_of_the_leak() -> None:
    """Pids hidden, read every 5 s: a leak that starts 110 s after a load, while the load's forecast has not cleared
    yet (its 30 clear ticks take 150 s), continues that forecast: raised once, never cleared, and at the last read
    before the OOM it is critical and tells the leak's rate (60 MB/s), not the load's (160 MB/s)."""

    def usage(t: float) -> dict[int, int]:
        load = min(max(0.0, t - 400), 50.0) * 160e6
        return {555: 8 * GIB + int(load), 4242: 512 * MIB + int(max(0.0, t - 560) * 60e6)}

    result = run(usage, 1200, step=5.0, rig=HIDDEN)
    assert [f.kind for f in result.raised if f.kind == "oom_forecast"] == ["oom_forecast"]
    assert [f for f in result.cleared if f.kind == "oom_forecast"] == []
    (up,) = [f for f in result.tracker.active() if f.kind == "oom_forecast"]
    assert up.severity.value == "critical"
    assert 40e6 <= float(up.numbers["rate_bytes_per_second"] or 0) <= 90e6
