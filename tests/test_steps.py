"""The step model: training steps' peak, recurring phases, growth per step, and the forecast to the run's end."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vramwatch.model import StepRecord
from vramwatch.steps import (
    PEAK,
    SAMPLE,
    SAVE,
    Outcome,
    Schedule,
    StepProfile,
    describe,
    forecast,
    last_save,
    margin,
    profile,
)
from vramwatch.units import GIB, MIB

Peak = Callable[[int], int]


def run(steps: int, peak: Peak, *, after: Callable[[int], int] | None = None, seconds: float = 1.0) -> list[StepRecord]:
    """One record per step: `peak(k)` is step k's interval peak, `after(k)` what stays allocated."""
    stays = after or (lambda k: 4 * GIB)
    return [
        StepRecord(
            pid=1,
            device=0,
            first_step=k,
            last_step=k,
            t=float(k),
            seconds=seconds,
            peak_allocated_bytes=peak(k),
            peak_reserved_bytes=peak(k) + 512 * MIB,
            allocated_bytes=stays(k),
            reserved_bytes=peak(k) + 512 * MIB,
        )
        for k in range(1, steps + 1)
    ]


def flat(k: int) -> int:
    return 10 * GIB


def sampling_every(n: int, extra: int) -> Peak:
    """Training steps at 10 GiB; the interval after each multiple of n holds a sampling phase `extra` higher."""
    return lambda k: 10 * GIB + (extra if k > 1 and (k - 1) % n == 0 else 0)


def test_flat_run_fits_with_its_margin() -> None:
    """A run whose steps all peak at 10 GiB fits a 20 GiB capacity to its last step, with the spare stated."""
    prof = profile(run(200, flat), Schedule(max_steps=3000))
    assert prof is not None
    assert prof.growth_bytes_per_step == 0
    assert prof.phases == ()
    verdict = forecast(prof, Schedule(max_steps=3000), 20 * GIB)
    assert verdict.outcome is Outcome.FITS
    assert verdict.step == 3000
    assert verdict.spare_bytes == 10 * GIB


def test_too_few_records_give_no_profile() -> None:
    """Two steps say nothing about a run: no profile rather than a guess."""
    assert profile(run(2, flat)) is None


@pytest.mark.parametrize(
    ("capacity", "outcome", "step"),
    [
        (20 * GIB, Outcome.FITS, 3000),  # the sampling phase (13 GiB) fits
        (12 * GIB, Outcome.PHASE, 500),  # steps fit, the next sampling (after step 500) does not
        # The steps themselves (10 GiB, flat) no longer fit: the next step runs out, and not from growth.
        (9 * GIB, Outcome.STEP, 261),
    ],
)
def test_scheduled_sampling_phase(capacity: int, outcome: Outcome, step: int) -> None:
    """A phase the schedule announces is found at its steps and forecast at its next occurrence."""
    schedule = Schedule(max_steps=3000, sample_every=250, spelling=(("sample_every", "--sample_every_n_steps 250"),))
    prof = profile(run(200, flat) + run(260, sampling_every(250, 3 * GIB))[200:], schedule)
    assert prof is not None
    (phase,) = prof.phases
    assert phase.name == SAMPLE
    assert phase.seen_after == (250,)
    assert phase.peak_allocated_bytes == 13 * GIB
    assert phase.period == 250
    assert phase.period_source == "--sample_every_n_steps 250"
    verdict = forecast(prof, schedule, capacity)
    assert (verdict.outcome, verdict.step) == (outcome, step)


def test_sampling_at_first_is_measured_before_step_one() -> None:
    """With sampling before the first step, the first interval is the sampling phase's measure."""
    schedule = Schedule(max_steps=2000, sample_every=500, sample_at_first=True)
    records = run(100, lambda k: 14 * GIB if k == 1 else 10 * GIB)
    prof = profile(records, schedule)
    assert prof is not None
    assert prof.unmeasured == ()
    assert prof.phases[0].name == SAMPLE
    assert prof.phases[0].peak_allocated_bytes == 14 * GIB
    assert prof.phases[0].peak_is_upper_bound
    verdict = forecast(prof, schedule, 13 * GIB)
    assert verdict.outcome is Outcome.PHASE
    assert verdict.step == 500
    assert verdict.phase == SAMPLE
    assert verdict.upper_bound
    assert "may run out at sampling after step 500" in describe(verdict, prof, schedule)


def test_a_later_sampling_replaces_the_start_up_upper_bound() -> None:
    """Once a sampling after a training step is measured, it is the phase's figure, not step 0's with the loading."""
    schedule = Schedule(max_steps=2000, sample_every=100, sample_at_first=True)
    records = run(150, lambda k: 16 * GIB if k == 1 else 13 * GIB if k == 101 else 10 * GIB)
    prof = profile(records, schedule)
    assert prof is not None
    (phase,) = prof.phases
    assert phase.seen_after == (0, 100)
    assert (phase.peak_allocated_bytes, phase.peak_after, phase.peak_is_upper_bound) == (13 * GIB, 100, False)


def test_announced_phase_not_reached_is_unmeasured() -> None:
    """A save the schedule announces beyond the records is named as not measured, never assumed to fit."""
    schedule = Schedule(max_steps=3000, save_every=1000)
    prof = profile(run(200, flat), schedule)
    assert prof is not None
    assert prof.unmeasured == (SAVE,)
    verdict = forecast(prof, schedule, 20 * GIB)
    assert verdict.outcome is Outcome.FITS
    assert verdict.unmeasured == (SAVE,)
    assert "not measured yet: saving" in describe(verdict, prof, schedule)


def test_regular_peaks_without_a_schedule_are_learned() -> None:
    """Peaks recurring every 50 steps that no setting names become a learned phase with that period."""
    prof = profile(run(230, sampling_every(50, 4 * GIB)))
    assert prof is not None
    (phase,) = prof.phases
    assert (phase.name, phase.period, phase.period_source) == (PEAK, 50, "learned")
    assert prof.step_peak_allocated_bytes == 10 * GIB
    verdict = forecast(prof, Schedule(max_steps=1000), 13 * GIB)
    assert verdict.outcome is Outcome.PHASE
    assert verdict.step == 250


def test_irregular_buckets_count_as_training_steps() -> None:
    """Buckets of different sizes at irregular steps are training steps: their largest is the step peak."""
    sizes = [8, 12, 9, 8, 10, 12, 8, 9, 11, 8, 8, 12, 9, 10, 8, 11, 9, 12, 8, 8, 13, 9]
    prof = profile(run(200, lambda k: sizes[(k * 7) % len(sizes)] * GIB))
    assert prof is not None
    assert prof.phases == ()
    assert prof.step_peak_allocated_bytes == 13 * GIB


def test_growth_per_step_names_the_step_it_runs_out() -> None:
    """A leak of 2 MiB a step, fitted past warm-up, runs out at the step where the peak crosses the limit."""
    leak = 2 * MIB
    prof = profile(run(200, lambda k: 10 * GIB + leak * k, after=lambda k: 4 * GIB + leak * k))
    assert prof is not None
    assert prof.growth_bytes_per_step == pytest.approx(leak)
    capacity = 16 * GIB
    verdict = forecast(prof, Schedule(max_steps=5000), capacity)
    limit = capacity - margin(capacity)
    assert verdict.outcome is Outcome.GROWTH
    assert verdict.step is not None
    assert 10 * GIB + leak * (verdict.step - 1) <= limit < 10 * GIB + leak * verdict.step
    assert "grows 2.0 MiB a step" in describe(verdict, prof, Schedule(max_steps=5000))


def test_warm_up_growth_is_not_a_leak() -> None:
    """What stays allocated rising over the first steps (optimizer state, workspaces) and then flat is no growth."""
    prof = profile(run(200, flat, after=lambda k: 4 * GIB + min(k, 30) * 20 * MIB))
    assert prof is not None
    assert prof.growth_bytes_per_step == 0


def test_merged_records_are_tagged_by_every_step_they_cover() -> None:
    """A record merging steps 241-260 holds the sampling after step 250."""
    schedule = Schedule(sample_every=250)
    records = run(240, flat)
    records.append(
        StepRecord(1, 0, 241, 260, 260.0, 20.0, 13 * GIB, 14 * GIB, 4 * GIB, 14 * GIB),
    )
    prof = profile(records, schedule)
    assert prof is not None
    assert prof.phases[0].name == SAMPLE
    assert prof.phases[0].seen_after == (259,)


@settings(max_examples=60, deadline=None)
@given(
    base=st.integers(1, 20).map(lambda g: g * GIB),
    leak=st.integers(0, 8).map(lambda m: m * MIB),
    capacity=st.integers(2, 40).map(lambda g: g * GIB),
    steps=st.integers(10, 300),
)
def test_forecast_is_consistent(base: int, leak: int, capacity: int, steps: int) -> None:
    """FITS never needs more than the limit; a failure step lies after the last step counted; more room never hurts."""
    records = run(steps, lambda k: base + leak * k, after=lambda k: GIB + leak * k)
    schedule = Schedule(max_steps=steps + 5000)
    prof = profile(records, schedule)
    assert prof is not None
    verdict = forecast(prof, schedule, capacity)
    if verdict.outcome is Outcome.FITS:
        executed = min(prof.executed_peak_allocated_bytes, capacity)
        assert verdict.needed_bytes <= max(capacity - margin(capacity), executed)
    else:
        assert verdict.step is not None
        assert verdict.step > prof.step
        roomier = forecast(prof, schedule, capacity + 8 * GIB)
        assert roomier.outcome is Outcome.FITS or (roomier.step or 0) >= verdict.step


def test_a_leak_that_fragments_runs_out_before_its_measured_oom() -> None:
    """The H200 leak (benchmarks/results/probe-h200-2026-12-03): 20 MiB a step, split pieces growing ~4 MiB a
    step; it died at step 375. Counting the fragmentation the forecast lands before that, not 40 steps after."""
    capacity = 24_986_000_000  # 23.27 GiB: the run's reserved + free under the ballast
    leak, split = 20 * MIB, 4 * MIB
    records = [
        StepRecord(
            pid=1,
            device=0,
            first_step=k,
            last_step=k,
            t=float(k),
            seconds=0.05,
            peak_allocated_bytes=int(14.5 * GIB) + leak * k,
            peak_reserved_bytes=int(14.6 * GIB) + (leak + split) * k,
            allocated_bytes=int(14.3 * GIB) + leak * k,
            reserved_bytes=int(14.6 * GIB) + (leak + split) * k,
            inactive_split_bytes=30 * MIB + split * k,
        )
        for k in range(1, 73)
    ]
    prof = profile(records, Schedule(max_steps=3000))
    assert prof is not None
    assert prof.slack_growth_bytes_per_step == pytest.approx(split)
    verdict = forecast(prof, Schedule(max_steps=3000), capacity)
    assert verdict.outcome is Outcome.GROWTH
    assert verdict.step is not None
    assert 320 <= verdict.step < 375


@pytest.mark.parametrize(
    ("spare", "outcome"),
    [
        (0, Outcome.FITS),  # the sampling's 13 GiB, exactly: it ran, within this capacity
        (100 * MIB, Outcome.FITS),  # inside the margin, but already executed: it fits
        (-1, Outcome.PHASE),  # one byte short of what the sampling took: it cannot run again
    ],
)
def test_a_peak_already_executed_needs_no_margin(spare: int, outcome: Outcome) -> None:
    """A need no larger than a peak the run has executed fits without the margin; above the capacity it does not."""
    schedule = Schedule(max_steps=3000, sample_every=250)
    prof = profile(run(260, sampling_every(250, 3 * GIB)), schedule)
    assert prof is not None
    assert prof.executed_peak_allocated_bytes == 13 * GIB
    verdict = forecast(prof, schedule, 13 * GIB + spare)
    assert verdict.outcome is outcome


@settings(max_examples=60, deadline=None)
@given(base=st.integers(1, 20).map(lambda g: g * GIB), extra=st.integers(0, 4096).map(lambda m: m * MIB))
def test_a_flat_run_fits_any_capacity_it_has_already_used(base: int, extra: int) -> None:
    """Without growth, a run whose capacity holds its largest executed peak fits to its end, margin or not."""
    schedule = Schedule(max_steps=3000, sample_every=50)
    prof = profile(run(120, lambda k: base + (extra if k > 1 and (k - 1) % 50 == 0 else 0)), schedule)
    assert prof is not None
    assert prof.growth_bytes_per_step == 0
    verdict = forecast(prof, schedule, prof.executed_peak_allocated_bytes)
    assert verdict.outcome is Outcome.FITS


def test_a_flat_overflow_is_not_growth() -> None:
    """Steps that no longer fit with no growth at all run out at the next step as STEP, never as GROWTH."""
    prof = profile(run(100, flat), Schedule(max_steps=1000))
    assert prof is not None
    verdict = forecast(prof, Schedule(max_steps=1000), 8 * GIB)
    assert (verdict.outcome, verdict.step) == (Outcome.STEP, 101)
    assert "something else took memory since" in describe(verdict, prof, Schedule(max_steps=1000))


def test_a_leak_is_growth_even_when_the_next_step_runs_out() -> None:
    """A step peak that fitted when measured and no longer does only by the growth since is GROWTH."""
    leak = 8 * MIB
    prof = profile(run(200, lambda k: 10 * GIB + leak * k, after=lambda k: 4 * GIB + leak * k))
    assert prof is not None
    assert prof.step_peak_at == 200
    capacity = 10 * GIB + leak * 200 + margin(12 * GIB)  # the peak at step 200 fits; step 201 does not
    verdict = forecast(prof, Schedule(max_steps=5000), capacity)
    assert (verdict.outcome, verdict.step) == (Outcome.GROWTH, 201)


def test_a_phase_due_at_the_current_step_is_forecast() -> None:
    """The sampling after the last step counted has not run yet: it is the next one forecast, not one period on."""
    leak = 2 * MIB
    schedule = Schedule(max_steps=1000, sample_every=100)
    prof = profile(
        run(200, lambda k: sampling_every(100, 3 * GIB)(k) + leak * k, after=lambda k: 4 * GIB + leak * k), schedule
    )
    assert prof is not None
    assert prof.step == 200
    (phase,) = prof.phases
    assert (phase.peak_allocated_bytes, phase.peak_after) == (13 * GIB + leak * 101, 100)
    # The sampling after step 100 fits; 100 steps of growth later (after step 200) it does not.
    capacity = 13 * GIB + leak * 101 + margin(14 * GIB) + 50 * leak
    verdict = forecast(prof, schedule, capacity)
    assert (verdict.outcome, verdict.step, verdict.phase) == (Outcome.PHASE, 200, SAMPLE)


@pytest.mark.parametrize(
    ("save_at_end", "outcome", "step"),
    [
        (False, Outcome.FITS, 1000),  # saves after 300, 600, 900 only: the last one fits
        (True, Outcome.PHASE, 1000),  # the save after the last step needs 100 steps more growth: it does not
    ],
)
def test_the_save_at_the_end_is_forecast(save_at_end: bool, outcome: Outcome, step: int) -> None:
    """A trainer that saves after its last step (kohya) has that save forecast at `max_steps`."""
    leak = 2 * MIB
    schedule = Schedule(max_steps=1000, save_every=300, save_at_end=save_at_end)
    prof = profile(
        run(320, lambda k: sampling_every(300, 4 * GIB)(k) + leak * k, after=lambda k: 4 * GIB + leak * k), schedule
    )
    assert prof is not None
    (phase,) = prof.phases
    assert (phase.name, phase.peak_after) == (SAVE, 300)
    capacity = phase.peak_allocated_bytes + leak * 650 + margin(16 * GIB)  # room for the save after step 900
    verdict = forecast(prof, schedule, capacity)
    assert (verdict.outcome, verdict.step) == (outcome, step)
    if save_at_end:
        assert "saving after step 1,000 (the save at the end)" in describe(verdict, prof, schedule)


def test_the_save_at_the_end_unmeasured_is_named() -> None:
    """A save at the end with no save measured before it is named as not measured, never assumed to fit."""
    schedule = Schedule(max_steps=1000, save_at_end=True)
    prof = profile(run(100, flat), schedule)
    assert prof is not None
    assert prof.unmeasured == (SAVE,)


def saved_profile(extra: int, *, leak: int = 2 * MIB, also_sample: bool = False) -> tuple[StepProfile, Schedule]:
    """320 steps at 10 GiB plus `leak` a step; the save after step 300 peaks `extra` above them (with a sampling
    in the same interval when `also_sample`); 1,000 steps, a save every 300."""
    schedule = Schedule(max_steps=1000, save_every=300, sample_every=300 if also_sample else None)
    records = run(320, lambda k: sampling_every(300, extra)(k) + leak * k, after=lambda k: 4 * GIB + leak * k)
    prof = profile(records, schedule)
    assert prof is not None
    return prof, schedule


@pytest.mark.parametrize(
    ("extra", "capacity", "last_step", "outcome", "fail_step"),
    [
        # The save (14 GiB + 2 MiB a step) fits to the run's last step.
        (4 * GIB, 20 * GIB, 1000, Outcome.FITS, 1000),
        # The save needs 4 GiB more than a step: it stops fitting after step 777, the run runs out only in the
        # save after step 900 (the save after 600 fits): a save asked for after step 777 would itself run out.
        (4 * GIB, 16 * GIB, 777, Outcome.PHASE, 900),
        # Another process took the room: a save no longer fits after the last step counted (320).
        (4 * GIB, 15 * GIB, None, Outcome.PHASE, 600),
        # The training steps run out (step 513) before the next save; a save already does not fit now.
        (4 * GIB, 11 * GIB, None, Outcome.GROWTH, 513),
        # A save needing less than a step fits until the step before the run runs out, not beyond.
        (-GIB, 12 * GIB, 839, Outcome.GROWTH, 840),
        (-GIB, 11 * GIB, 343, Outcome.GROWTH, 344),
    ],
)
def test_last_save_step(extra: int, capacity: int, last_step: int | None, outcome: Outcome, fail_step: int) -> None:
    """The last step after which a save fits: its measured peak grown by the growth, under the forecast's limit,
    and never at or after the step the run runs out at."""
    prof, schedule = saved_profile(extra)
    verdict = forecast(prof, schedule, capacity)
    assert (verdict.outcome, verdict.step) == (outcome, fail_step)
    fit = last_save(prof, schedule, capacity)
    assert fit is not None
    assert (fit.last_step, fit.fits) == (last_step, last_step is not None)
    assert fit.extra_bytes == extra  # beyond a training step at the same point of the run
    assert (fit.measured_after, fit.upper_bound) == (300, False)


def test_last_save_step_is_where_the_saves_need_crosses_the_limit() -> None:
    """At the last save step the save's need fits the limit; one step later it does not (2 MiB a step more)."""
    prof, schedule = saved_profile(4 * GIB)
    capacity = 16 * GIB
    fit = last_save(prof, schedule, capacity)
    assert fit is not None
    assert fit.last_step == 777
    limit = capacity - margin(capacity)
    need_after = fit.needed_bytes + 2 * MIB * (fit.last_step - prof.step)  # 2 MiB a step since step 320
    assert need_after <= limit < need_after + 2 * MIB


def test_no_save_measured_means_no_save_cost() -> None:
    """Without a save in the records (announced and not reached, or none announced) the save's cost is unknown."""
    for schedule in (Schedule(max_steps=3000, save_every=1000), Schedule(max_steps=3000)):
        prof = profile(run(200, flat), schedule)
        assert prof is not None
        assert last_save(prof, schedule, 20 * GIB) is None


def test_a_save_measured_with_a_sampling_is_an_upper_bound() -> None:
    """A save seen only in the interval of a sampling (both after step 300) is the pair's peak: a bound."""
    prof, schedule = saved_profile(4 * GIB, also_sample=True)
    save = next(p for p in prof.phases if p.name == SAVE)
    assert save.peak_shared_with == (SAMPLE,)
    fit = last_save(prof, schedule, 16 * GIB)
    assert fit is not None
    assert fit.upper_bound


def test_a_save_measured_with_the_start_up_is_an_upper_bound() -> None:
    """A save seen only in the first record, merged with the start-up, needed at most its peak."""
    schedule = Schedule(max_steps=1000, save_every=50)
    first = StepRecord(1, 0, 1, 51, 51.0, 51.0, 14 * GIB, 15 * GIB, 4 * GIB, 15 * GIB)  # steps 1-51: the save after 50
    prof = profile([first, *run(100, flat)[51:]], schedule)
    assert prof is not None
    fit = last_save(prof, schedule, 20 * GIB)
    assert fit is not None
    assert fit.upper_bound


@settings(max_examples=80, deadline=None)
@given(
    extra=st.integers(-4, 8).map(lambda g: g * GIB // 2),
    leak=st.integers(0, 8).map(lambda m: m * MIB),
    capacity=st.integers(8, 40).map(lambda g: g * GIB),
    more=st.integers(0, 8).map(lambda g: g * GIB),
)
def test_last_save_step_is_consistent(extra: int, leak: int, capacity: int, more: int) -> None:
    """The last save step lies between the last step counted and the run's end, never at or after the step the
    run runs out at (unless that is the next one), and more room never brings it earlier."""
    prof, schedule = saved_profile(extra, leak=leak)
    fit = last_save(prof, schedule, capacity)
    assert fit is not None
    verdict = forecast(prof, schedule, capacity)
    if fit.last_step is not None:
        assert prof.step <= fit.last_step <= 1000
        if verdict.outcome is not Outcome.FITS:
            assert verdict.step is not None
            assert fit.last_step < verdict.step or fit.last_step == prof.step
    roomier = last_save(prof, schedule, capacity + more)
    assert roomier is not None
    if fit.last_step is not None:
        assert roomier.last_step is not None
        assert roomier.last_step >= fit.last_step
