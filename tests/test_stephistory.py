"""A process's steps in bounded memory: what the forecast reads from them survives the bound."""

from __future__ import annotations

import random

import pytest
from vramwatch.model import StepRecord
from vramwatch.stephistory import StepFigures, StepHistory, step_figures, worst
from vramwatch.steps import Outcome, Schedule, profile

MIB = 1 << 20
GIB = 1 << 30


def run(steps: int, *, leak: int = 0, noise: int = 0, peaks: dict[int, int] | None = None) -> list[StepRecord]:
    """One record a step: `leak` bytes a step stay allocated; `peaks` sets a step's peak."""
    rng = random.Random(0)  # noqa: S311 - reproducible noise, not secrets
    out = []
    for k in range(1, steps + 1):
        kept = 4 * GIB + leak * k + rng.randint(-noise, noise)
        peak = (peaks or {}).get(k, kept + 4 * GIB)
        out.append(StepRecord(7, 0, k, k, float(k), 0.5, peak, peak + GIB, kept, kept + GIB))
    return out


def fill(history: StepHistory, records: list[StepRecord], batch: int = 50) -> None:
    for i in range(0, len(records), batch):
        history.extend(records[i : i + batch])


def test_history_stays_under_its_bound():
    """However long the run, the history holds at most `max_records` records and ends at the last step."""
    history = StepHistory(max_records=512, recent=128)
    fill(history, run(50_000))
    assert len(history) <= 512
    assert history.last_step == 50_000
    assert len(history.records[-128:]) == 128
    assert all(r.count == 1 for r in history.records[-128:])


def test_a_slow_leak_is_still_fitted_over_the_whole_run():
    """Old steps are merged, not dropped: a leak too slow to show in the last steps is still measured."""
    records = run(20_000, leak=8 * 1024, noise=4 * MIB)
    history = StepHistory(max_records=1024, recent=512)
    fill(history, records)
    full = profile(records)
    kept = profile(history.for_profile())
    recent_only = profile(records[-512:])
    assert full is not None
    assert kept is not None
    assert recent_only is not None
    assert recent_only.growth_bytes_per_step == 0  # the last steps alone cannot see it
    assert kept.growth_bytes_per_step == pytest.approx(full.growth_bytes_per_step, rel=0.2)
    assert kept.growth_bytes_per_step == pytest.approx(8 * 1024, rel=0.2)


def test_phases_and_the_step_peak_survive_merging():
    """Announced phases, a peak that recurs with no setting, and the largest training step are all kept."""
    peaks = dict.fromkeys(range(501, 20000, 500), 14 * GIB)  # sampling after every 500th step (announced)
    peaks |= dict.fromkeys(range(751, 20000, 1000), 12 * GIB)  # validation every 1,000 (learned)
    peaks[3_333] = 8 * GIB + 200 * MIB  # the biggest bucket: a training step, not a phase
    records = run(20_000, peaks=peaks)
    schedule = Schedule(sample_every=500)
    history = StepHistory(schedule, max_records=1024, recent=256)
    fill(history, records)
    prof = profile(history.for_profile(), schedule)
    assert prof is not None
    names = {p.name: p for p in prof.phases}
    assert names["peak"].period == 1_000
    assert len(names["sample"].seen_after) == 39
    assert names["sample"].peak_allocated_bytes == 14 * GIB
    assert prof.step_peak_allocated_bytes == 8 * GIB + 200 * MIB


def test_a_retried_report_counts_once():
    """The same step sent twice (a retried datagram) is kept once."""
    history = StepHistory()
    records = run(10)
    history.extend(records)
    history.extend(records[-3:])
    assert len(history) == 10


def test_figures_round_trip_through_json():
    """The figures the daemon publishes read back as the same figures (attach reads them from the daemon)."""
    history = StepHistory(Schedule(max_steps=100_000))
    fill(history, run(600, leak=4 * MIB))
    made = step_figures(history, 20 * GIB, gpu_uuid="GPU-1")
    assert made is not None
    figures = made[0]
    assert figures.fails
    assert figures.outcome is Outcome.GROWTH
    assert StepFigures.from_dict(figures.as_dict()) == figures
    assert StepFigures.from_dict({"pid": "x"}) is None


def test_worst_is_the_one_that_runs_out_first():
    """Of several processes' figures, the one that runs out soonest is the worst; one that fits never is."""
    fits = StepFigures(1, 0, 10, 8 * GIB, None, 0.0, Outcome.FITS, None, None, "fits")
    late = StepFigures(2, 0, 10, 8 * GIB, None, 1.0, Outcome.GROWTH, 900, None, "late")
    soon = StepFigures(3, 0, 10, 8 * GIB, None, 1.0, Outcome.PHASE, 200, "sample", "soon")
    assert worst([fits, late, soon]) == soon
    assert worst([fits]) == fits
    assert worst([]) is None
