"""Will this run fit to the end? What a run's optimizer steps say about its future, in steps.

The agent (`agent/steps.py`) reports every optimizer step with PyTorch's peak since the step before, so the
interval ending at step k+1 holds whatever the trainer did after step k: kohya samples images and saves
after the optimizer step whose number is a multiple of `--sample_every_n_steps` / `--save_every_n_steps`.
Three things then decide whether the run reaches its last step:

- the **training steps' peak**: the largest step seen (the biggest aspect-ratio bucket included);
- **recurring phases** whose peak stands above it: sample images, saves, validation. Where the trainer's
  configuration announces them (`Schedule`) their steps are known in advance; otherwise a peak that recurs
  at a regular interval is learned as one (`peak`); irregular outliers are counted as training steps;
- **growth per step**: the slope of what stays allocated after each step (a leak keeps tensors alive from
  one step to the next; activations and caching do not stay), fitted after warm-up with Theil-Sen so that
  one phase's step-up cannot tilt it.

The forecast projects each phase's and the steps' peaks forward by the growth and compares them with the
process's **capacity**: what it can allocate now (its reserved memory plus the card's free memory). A need
within the fragmentation margin of the capacity counts as not fitting: the caching allocator needs that room
to find blocks of the right sizes. The margin guards against what has not happened yet: a need no larger than
a peak the run has already executed (and no larger than the capacity) fits without it. All figures are
allocated bytes (what tensors need); reserved peaks stay high after any large phase, since the allocator keeps
the blocks, so they cannot tell phases apart.

A phase run before the first step (kohya's `--sample_at_first`) shares its interval with the start-up (loading,
the allocator's first allocations): the agent cannot reset the peak between the two, so that figure is only
an upper bound of the phase's own, replaced by the first occurrence measured after a training step.

A save asked for on demand (the pressure notice's checkpoint) needs memory of its own too, grown by the same
growth: `last_save` gives the last step after which one still fits, from the save the run has measured (none
measured: unknown). With a leak it can stop fitting well before the training steps run out.

Pure functions of step records: no clock, no I/O.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from .detectors.growth import theil_sen
from .model import StepRecord
from .units import MIB, size


def median(values: Iterable[float]) -> float:
    """`statistics.median`, imported on first use: statistics brings decimal and fractions (about 0.5 MB), which a
    months-long daemon needs only once an agent reports steps (docs/benchmarks.md, resident memory)."""
    import statistics

    return statistics.median(values)


SAMPLE = "sample"
SAVE = "save"
PEAK = "peak"  # a recurring peak that no setting names
#: Each named phase's interval, as the `Schedule` item (and `Schedule.spelling` key) that holds it.
PHASE_INTERVALS: dict[str, str] = {SAMPLE: "sample_every", SAVE: "save_every"}

#: A need this close to the capacity does not fit (the larger of the two).
MARGIN_BYTES = 256 * MIB
MARGIN_SHARE = 0.03
#: A record's peak counts as a phase's when it stands this far above the median step (the larger of the two).
PHASE_MIN_EXTRA_BYTES = 256 * MIB
PHASE_MIN_EXTRA_SHARE = 0.10
#: Growth that would add less than this over the records fitted is noise or caching, not a trend.
GROWTH_MIN_RISE_BYTES = 32 * MIB
#: The share of records treated as warm-up (optimizer state, cuDNN workspaces, bucket ramps) before fitting.
WARMUP_SHARE = 0.2
#: Theil-Sen is quadratic: fit at most this many records, evenly spaced.
FIT_POINTS = 120


@dataclass(frozen=True, slots=True)
class Schedule:
    """What the trainer's configuration says of the run's future, in optimizer steps; None where unknown.

    `spelling` names each known item as the trainer spells it ("--max_train_steps 3000"), for messages.
    """

    max_steps: int | None = None
    sample_every: int | None = None
    sample_at_first: bool = False
    save_every: int | None = None
    spelling: tuple[tuple[str, str], ...] = ()
    # The trainer saves once more after its last step (kohya's train_network.py always does, whatever
    # --save_every_n_steps says): with a known end, that save is forecast at `max_steps`.
    save_at_end: bool = False
    # A probe's own interval for a save it brought into its test run (`--save_every_n_steps K` added to the
    # command for a save the run as given makes only after its last step, or beyond reach): the test run's
    # records are tagged with it (`phases_after`), while everything the forecast reads (`every`, `max_steps`,
    # `save_at_end`) stays the run's own, so the save measured after step K stands for the run's saves at
    # their real steps.
    probe_save_every: int | None = None

    def spelled(self, item: str) -> str | None:
        """How the configuration states `item` (max_steps, sample_every, save_every), if it was read."""
        return dict(self.spelling).get(item)

    def every(self, phase: str) -> int | None:
        """The configured interval of a named phase."""
        item = PHASE_INTERVALS.get(phase)
        value = getattr(self, item) if item is not None else None
        return value if isinstance(value, int) else None

    def spelled_every(self, phase: str) -> str | None:
        """How the configuration states a named phase's interval ("--sample_every_n_steps 100"), if read."""
        item = PHASE_INTERVALS.get(phase)
        return self.spelled(item) if item is not None else None

    def test_every(self, phase: str) -> int | None:
        """The interval at which a probe's test run meets a named phase: the probe's own for a save it brought
        forward (`probe_save_every`), else the run's."""
        return self.probe_save_every if phase == SAVE and self.probe_save_every else self.every(phase)

    def first_save(self) -> int | None:
        """The step after which the run first saves: its save interval when the run reaches it, else its last
        step when the trainer saves after it (`save_at_end`); None when neither is known."""
        every = self.every(SAVE)
        if every is not None and (self.max_steps is None or every <= self.max_steps):
            return every
        return self.max_steps if self.save_at_end else None

    def only_at_end(self, phase: str) -> bool:
        """Whether the phase is announced only after the run's last step (a save at the end, none on an
        interval): no test run short of the whole run can measure it."""
        return phase == SAVE and self.save_at_end and self.max_steps is not None and not self.every(SAVE)

    def phases_after(self, step: int) -> frozenset[str]:
        """The named phases the trainer runs after optimizer step `step` (0: before the first step), in the run
        as it runs: a probe's test run saves on its own interval (`probe_save_every`, which replaced the run's on
        its command line); a trainer that saves after its last step saves after `max_steps` too."""
        names = set()
        if step == 0:
            if self.sample_at_first:
                names.add(SAMPLE)
            return frozenset(names)
        for name in PHASE_INTERVALS:
            every = self.test_every(name)
            if every and step % every == 0:
                names.add(name)
        if self.save_at_end and step == self.max_steps:
            names.add(SAVE)
        return frozenset(names)


@dataclass(frozen=True, slots=True)
class Phase:
    """A recurring phase between two optimizer steps, as measured."""

    name: str  # SAMPLE, SAVE or PEAK
    seen_after: tuple[int, ...]  # the steps it ran after (0: before the first)
    period: int | None  # steps between two occurrences, when known
    period_source: str | None  # the setting that gives it ("--sample_every_n_steps 250") or "learned"
    peak_allocated_bytes: int  # the largest seen
    peak_after: int  # the step after which that largest one ran
    seconds: float  # how long its interval took, at most
    # The peak comes only from the first interval, which also holds the start-up (loading, the allocator's
    # first allocations): the phase itself needed at most this much, maybe less.
    peak_is_upper_bound: bool = False
    # The other named phases that ran in the interval of that peak (kohya samples and saves after the same step
    # when both intervals divide it): the peak is the pair's, and this phase alone needs at most as much.
    peak_shared_with: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StepProfile:
    """One process's steps so far: the training steps' peak, the phases, the growth."""

    step: int  # the last step counted
    step_peak_allocated_bytes: int  # the training steps' largest peak
    step_peak_at: int  # the step it was measured at
    growth_bytes_per_step: float  # 0 when nothing stays behind from step to step
    # With growth: what the allocator holds beyond the tensors now, and its own growth a step (fragmentation
    # a leak causes); both 0 without growth, where that slack is reusable cache and the margin covers it.
    slack_bytes: int
    slack_growth_bytes_per_step: float
    step_seconds: float | None  # median duration of a training step
    phases: tuple[Phase, ...]
    unmeasured: tuple[str, ...]  # phases the schedule announces that no record holds yet
    # The largest peak of any record (start-up, phases and steps alike): this much was allocated, so a need up
    # to it fits without the fragmentation margin. 0 (unknown) keeps the margin on every need.
    executed_peak_allocated_bytes: int = 0


class Outcome(str, Enum):
    """How a forecast ends; its value is what `--json` prints."""

    FITS = "fits"
    PHASE = "phase"  # runs out in a recurring phase
    GROWTH = "growth"  # runs out at a training step, from growth per step
    # Runs out at the next training step with no growth needed: the steps' own peak is above what the process
    # can use now (something else took memory since the peak ran).
    STEP = "step"


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether the run fits to its end (or, with no known end, for as long as the forecast looks)."""

    outcome: Outcome
    step: int | None  # where it runs out (a phase: the step it runs after); for FITS: the last step looked at
    phase: str | None  # the phase it runs out in
    needed_bytes: int  # what it needs there; for FITS, the most it needs up to `step`
    capacity_bytes: int
    margin_bytes: int
    end_step: int | None  # the run's last step, when the configuration says it
    unmeasured: tuple[str, ...]
    # PHASE only: the failing phase was measured only together with the start-up (`Phase.peak_is_upper_bound`),
    # so it may run out there, not that it will.
    upper_bound: bool = False

    @property
    def spare_bytes(self) -> int:
        return self.capacity_bytes - self.needed_bytes


def margin(capacity_bytes: int) -> int:
    """The room the caching allocator needs beyond the peak: within it, a need does not fit."""
    return max(MARGIN_BYTES, int(MARGIN_SHARE * capacity_bytes))


def _tags(record: StepRecord, schedule: Schedule) -> frozenset[str]:
    """The named phases that ran inside a record's interval: after each step before its last one."""
    names: set[str] = set()
    for after in range(record.first_step - 1, record.last_step):
        names |= schedule.phases_after(after)
    return frozenset(names)


def _slope(records: Sequence[StepRecord], value: Callable[[StepRecord], int]) -> float:
    """Bytes per step of `value`, fitted past warm-up; 0 when it is not a trend (or falls)."""
    fit = list(records[int(len(records) * WARMUP_SHARE) :])
    if len(fit) < 8:
        return 0.0
    if len(fit) > FIT_POINTS:
        stride = len(fit) / FIT_POINTS
        fit = [fit[int(i * stride)] for i in range(FIT_POINTS - 1)] + [fit[-1]]
    xs = [float(r.last_step) for r in fit]
    slope = theil_sen(xs, [float(value(r)) for r in fit])
    if slope <= 0 or slope * (xs[-1] - xs[0]) < GROWTH_MIN_RISE_BYTES:
        return 0.0
    return slope


def _slack(r: StepRecord) -> int:
    """The allocator's split free pieces after a step: fragmentation. Whole cached segments (activations, a
    phase's blocks) are reusable by the next peak and are not counted."""
    return r.inactive_split_bytes


def _learned_period(steps: Sequence[int]) -> int | None:
    """The interval of peaks that recur regularly (within one step: merged records blur a step), or None."""
    if len(steps) < 2:
        return None
    gaps = [b - a for a, b in itertools.pairwise(steps)]
    period = round(median(gaps))
    if period < 2 or any(abs(g - period) > 1 for g in gaps):
        return None
    return period


def profile(records: Sequence[StepRecord], schedule: Schedule | None = None) -> StepProfile | None:
    """The profile of one process's steps (records in step order); None with fewer than 3 records."""
    schedule = schedule or Schedule()
    records = sorted(records, key=lambda r: r.last_step)
    if len(records) < 3:
        return None
    tagged: dict[str, list[StepRecord]] = {}
    plain: list[StepRecord] = []
    for r in records:
        tags = _tags(r, schedule)
        for name in tags:
            tagged.setdefault(name, []).append(r)
        if not tags:
            plain.append(r)
    # The first interval also holds the start-up (loading, first allocations): not a training step.
    training = [r for r in plain if r.first_step > 1] or plain
    base = median(r.peak_allocated_bytes for r in training)
    threshold = base + max(PHASE_MIN_EXTRA_BYTES, PHASE_MIN_EXTRA_SHARE * base)
    outliers = [r for r in training if r.peak_allocated_bytes > threshold]
    period = _learned_period([r.last_step - 1 for r in outliers])
    if period is not None:
        tagged[PEAK] = outliers
        training = [r for r in training if r.peak_allocated_bytes <= threshold]
    phases = []
    for name, seen in sorted(tagged.items()):
        alone = [r for r in seen if _tags(r, schedule) == {name}] or seen
        # The first interval's peak is the start-up's as much as the phase's (a sample brought before step 1
        # runs right after loading, and the agent cannot reset the peak between the two): a later occurrence,
        # measured alone, is the phase's own figure; the first one is only an upper bound.
        exact = [r for r in alone if r.first_step > 1]
        top = max(exact or alone, key=lambda r: r.peak_allocated_bytes)
        every = schedule.every(name)
        phases.append(
            Phase(
                name=name,
                seen_after=tuple(r.last_step - 1 for r in seen),
                period=every if every else period if name == PEAK else None,
                period_source=(schedule.spelled_every(name) if every else None)
                or ("learned" if name == PEAK else None),
                peak_allocated_bytes=top.peak_allocated_bytes,
                peak_after=top.last_step - 1,
                seconds=max(r.seconds for r in seen),
                peak_is_upper_bound=top.first_step <= 1,
                peak_shared_with=tuple(sorted(_tags(top, schedule) - {name})),
            )
        )
    announced = {n for n in PHASE_INTERVALS if schedule.every(n)} | ({SAMPLE} if schedule.sample_at_first else set())
    if schedule.save_at_end and schedule.max_steps is not None:
        announced.add(SAVE)
    top_step = max(training, key=lambda r: r.peak_allocated_bytes)
    durations = [r.seconds / r.count for r in training if r.first_step > 1]
    growth = _slope(training, lambda r: r.allocated_bytes)
    # A leak's blocks pin the allocator's segments: the unusable share of the cache grows with it (measured on
    # an H200: +3.9 MiB a step beside a 20 MiB-a-step leak, 1.45 GiB at its OOM). Fitted only when something
    # leaks and only after the last phase, whose cached blocks are reusable, not a trend.
    last_phase = max((r.last_step for rs in tagged.values() for r in rs), default=0)
    settled = [r for r in training if r.last_step > last_phase]
    slack_growth = _slope(settled if len(settled) >= 8 else training, _slack) if growth > 0 else 0.0
    return StepProfile(
        step=records[-1].last_step,
        step_peak_allocated_bytes=top_step.peak_allocated_bytes,
        step_peak_at=top_step.last_step,
        growth_bytes_per_step=growth,
        slack_bytes=_slack(training[-1]) if growth > 0 else 0,
        slack_growth_bytes_per_step=slack_growth,
        step_seconds=median(durations) if durations else None,
        phases=tuple(phases),
        unmeasured=tuple(sorted(announced - tagged.keys())),
        executed_peak_allocated_bytes=max(r.peak_allocated_bytes for r in records),
    )


def _occurrences(phase: Phase, now: int, until: int, *, at_end: bool = False) -> list[int]:
    """The steps after which `phase` runs next, from `now` up to `until` (at most 10,000 of them, plus `until`
    itself when `at_end`: a save after the last step).

    `now` is included: the phase after the last step counted runs in the interval no record holds yet.
    """
    found: list[int] = []
    if phase.period is not None:
        every = phase.period
        if phase.name == PEAK:
            last = max(phase.seen_after)
            first = last + every * max(1, math.ceil((now - last) / every))
        else:
            first = every * max(1, math.ceil(now / every))
        found = list(range(first, until + 1, every))[:10_000]
    if at_end and until >= now and until not in found:
        found.append(until)
    return found


def _limit(prof: StepProfile, capacity_bytes: int) -> int:
    """The most a need may be and fit: the capacity less the margin, or up to the largest peak already executed
    (that much was allocated: the margin guards against a fragmentation the run has not met)."""
    return max(capacity_bytes - margin(capacity_bytes), min(prof.executed_peak_allocated_bytes, capacity_bytes))


def _need(prof: StepProfile, peak: int, measured_at: int, k: int) -> int:
    """A peak measured at one step, as it will be at step k: its own growth, plus the allocator's slack."""
    return (
        peak
        + int(prof.growth_bytes_per_step * max(0, k - measured_at))
        + prof.slack_bytes
        + int(prof.slack_growth_bytes_per_step * max(0, k - prof.step))
    )


def _end(prof: StepProfile, schedule: Schedule, horizon_steps: int) -> int:
    """The last step forecast: the run's last one, or `horizon_steps` ahead when no end is known."""
    end = schedule.max_steps if schedule.max_steps is not None else prof.step + horizon_steps
    return max(end, prof.step)


def forecast(prof: StepProfile, schedule: Schedule, capacity_bytes: int, *, horizon_steps: int = 100_000) -> Verdict:
    """Project each phase and the training steps to the run's end and compare with what the process can use.

    The end is `schedule.max_steps`; with none known, the forecast looks `horizon_steps` ahead. A phase at
    step k needs its measured peak plus the growth since it was measured; so does a training step. A need
    fits within the capacity less the margin, or, without the margin, up to the largest peak already
    executed (that much was allocated: the margin guards against a fragmentation the run has not met).
    """
    room = margin(capacity_bytes)
    limit = _limit(prof, capacity_bytes)
    g, gs, now = prof.growth_bytes_per_step, prof.slack_growth_bytes_per_step, prof.step
    end = _end(prof, schedule, horizon_steps)

    def need(peak: int, measured_at: int, k: int) -> int:
        return _need(prof, peak, measured_at, k)

    failures: list[tuple[int, int, str | None, int, Outcome]] = []  # (step, order, phase, need, outcome)
    peak, peak_at = prof.step_peak_allocated_bytes, prof.step_peak_at
    most = need(peak, peak_at, end)
    if most > limit:
        if need(peak, peak_at, now + 1) > limit or g + gs <= 0:
            at = now + 1
        else:  # the first step k where the line crosses the limit
            at = math.ceil((limit - peak - prof.slack_bytes + g * peak_at + gs * now) / (g + gs))
            at = max(at, now + 1)
            while need(peak, peak_at, at) <= limit:  # int() rounding of the line
                at += 1
        # Growth is the cause only when the steps' peak, as measured, fits: a flat need above the limit
        # (the capacity shrank under the run) runs out at the next step whatever the growth.
        flat = peak + prof.slack_bytes > limit
        failures.append((at, 1, None, need(peak, peak_at, at), Outcome.STEP if flat else Outcome.GROWTH))
    end_save = schedule.save_at_end and schedule.max_steps is not None
    for phase in prof.phases:
        for k in _occurrences(phase, now, end, at_end=end_save and phase.name == SAVE):
            phase_need = need(phase.peak_allocated_bytes, phase.peak_after, k)
            most = max(most, phase_need)
            if phase_need > limit:
                failures.append((k, 0, phase.name, phase_need, Outcome.PHASE))
                break
    if failures:
        at, _, name, needed, outcome = min(failures)
        bound = any(p.peak_is_upper_bound for p in prof.phases if p.name == name)
        return Verdict(
            outcome, at, name, needed, capacity_bytes, room, schedule.max_steps, prof.unmeasured, upper_bound=bound
        )
    return Verdict(Outcome.FITS, end, None, most, capacity_bytes, room, schedule.max_steps, prof.unmeasured)


@dataclass(frozen=True, slots=True)
class SaveFit:
    """Until which step a checkpoint save still fits: what a pressure notice asks the trainer for must not run
    out of memory itself. From the save phase measured in the run: a save asked for is taken to cost what the
    trainer's own saves cost."""

    # The last step after which a save fits, from the last step counted on: at most the run's end, and before
    # the step the run runs out at (the last step counted, when the run runs out in the interval under way).
    # None: a save after the last step counted already needs more than the run can use.
    last_step: int | None
    needed_bytes: int  # a save's need after the last step counted
    extra_bytes: int  # a save's need beyond a training step's at the same point of the run (below 0: less)
    measured_after: int  # the step after which the save's figure was measured
    # The figure was measured only with the start-up (`Phase.peak_is_upper_bound`) or in the interval of other
    # phases (`Phase.peak_shared_with`): see `upper_bound`.
    with_start_up: bool = False
    shared_with: tuple[str, ...] = ()

    @property
    def fits(self) -> bool:
        """Whether a save after the last step counted fits."""
        return self.last_step is not None

    @property
    def upper_bound(self) -> bool:
        """Whether a save alone needs at most the figure: `last_step` is then a lower bound, and a save that does
        not fit by it *may* still fit."""
        return self.with_start_up or bool(self.shared_with)


def last_save(
    prof: StepProfile, schedule: Schedule, capacity_bytes: int, *, horizon_steps: int = 100_000
) -> SaveFit | None:
    """The last step after which a checkpoint save still fits; None when no save has been measured.

    A save after step k needs its measured peak plus the growth since, as `forecast` projects a phase, and fits
    under the same limit. With growth that need crosses the limit at some step, before the training steps do
    when a save needs more than a step. Without a save measured there is no honest figure (a save converts or
    gathers the state in ways the steps do not show): None, never a guess.
    """
    save = next((p for p in prof.phases if p.name == SAVE), None)
    if save is None:
        return None
    limit, now = _limit(prof, capacity_bytes), prof.step
    verdict = forecast(prof, schedule, capacity_bytes, horizon_steps=horizon_steps)
    if verdict.outcome is Outcome.FITS or verdict.step is None:
        last = _end(prof, schedule, horizon_steps)
    else:  # a save must come before the step the run runs out at: the run dies there
        last = max(now, verdict.step - 1)

    def need(k: int) -> int:
        return _need(prof, save.peak_allocated_bytes, save.peak_after, k)

    fits: int | None = None
    if need(now) <= limit:
        low, high = now, last  # need(low) fits; the need only grows with k: the last k that fits
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if need(mid) <= limit else (low, mid - 1)
        fits = low
    return SaveFit(
        last_step=fits,
        needed_bytes=need(now),
        extra_bytes=need(now) - _need(prof, prof.step_peak_allocated_bytes, prof.step_peak_at, now + 1),
        measured_after=save.peak_after,
        with_start_up=save.peak_is_upper_bound,
        shared_with=save.peak_shared_with,
    )


def describe(verdict: Verdict, prof: StepProfile, schedule: Schedule) -> str:
    """The verdict in one sentence, with the figures that make it."""
    cap = f"{size(verdict.capacity_bytes)} this run can use"
    growth = (
        f"grows {size(prof.growth_bytes_per_step)} a step; "
        if prof.growth_bytes_per_step > 0
        else "no growth per step; "
    )
    if verdict.outcome is Outcome.FITS:
        end = verdict.step
        where = (
            f"to step {end:,} ({schedule.spelled('max_steps')})"
            if schedule.max_steps is not None and schedule.spelled("max_steps")
            else f"to step {end:,}"
        )
        text = (
            f"fits {where} with {size(verdict.spare_bytes)} to spare: {growth}"
            f"needs at most {size(verdict.needed_bytes)} of {cap}"
        )
    elif verdict.outcome is Outcome.PHASE:
        phase = next(p for p in prof.phases if p.name == verdict.phase)
        source = f", {phase.period_source}" if phase.period_source else ""
        at_end = " (the save at the end)" if verdict.step == schedule.max_steps and phase.name == SAVE else ""
        if verdict.upper_bound:
            text = (
                f"may run out at {phase_words(phase.name)} after step {verdict.step:,}{at_end}{source}: it needs "
                f"at most {size(verdict.needed_bytes)} of {cap} ({growth}the phase was measured only before "
                f"step 1, with the start-up: at most {size(phase.peak_allocated_bytes)}; "
                f"training steps at {size(prof.step_peak_allocated_bytes)})"
            )
        else:
            text = (
                f"will run out at {phase_words(phase.name)} after step {verdict.step:,}{at_end}{source}: it needs "
                f"{size(verdict.needed_bytes)} of {cap} ({growth}the phase peaked at "
                f"{size(phase.peak_allocated_bytes)} after step {phase.peak_after:,}, training steps at "
                f"{size(prof.step_peak_allocated_bytes)})"
            )
    elif verdict.outcome is Outcome.STEP:
        text = (
            f"will run out at step {verdict.step:,}: a training step needs {size(verdict.needed_bytes)}, more than "
            f"{cap} now ({growth}the steps peaked at {size(prof.step_peak_allocated_bytes)} at step "
            f"{prof.step_peak_at:,}: something else took memory since)"
        )
    else:
        text = (
            f"will run out at step {verdict.step:,}: {growth}a training step then needs {size(verdict.needed_bytes)} "
            f"of {cap}"
        )
        if schedule.max_steps is not None:
            text += f"; the run ends at step {schedule.max_steps:,}"
    if verdict.unmeasured:
        text += "; not measured yet: " + ", ".join(
            phase_words(n) + (" (only after the last step)" if schedule.only_at_end(n) else "")
            for n in verdict.unmeasured
        )
    return text


def phase_words(name: str) -> str:
    """A phase as a sentence names it: "sampling", "saving", "sampling or saving" (both after one step)."""
    words = {SAMPLE: "sampling", SAVE: "saving", PEAK: "a recurring peak"}
    return " or ".join(words.get(part, part) for part in name.split("+"))
