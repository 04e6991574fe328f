"""A process's optimizer steps, kept in bounded memory, and the figures that `run`, `serve` and `attach` show.

A trainer reports every optimizer step; a long run has hundreds of thousands. `StepHistory` keeps what the
forecast (`steps.profile`) reads from them, in at most `max_records` records:

- the last `recent` records as reported (the steady step peak and the slack are read from the latest ones);
- every record that carries a phase: one the schedule announces (sampling, a save) or one whose peak stands
  above the training steps' median as `steps.profile` counts it (a recurring peak no setting names, whose
  period is learned from the gaps between them, so they are never merged);
- older training steps merged pairwise into records of several steps (a `StepRecord` already covers a run of
  merged steps: the agent merges too). A merged record keeps the highest peak and what stayed allocated after
  its last step, so the training steps' peak survives and the growth fit still spans the whole run: a slow
  leak is a trend over the run, not over its last few thousand steps.

When merging cannot make room (a run made mostly of phases), the oldest records go.

Pure: no clock, no I/O. One writer at a time (callers hold their own lock).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .model import StepRecord
from .steps import (
    PHASE_MIN_EXTRA_BYTES,
    PHASE_MIN_EXTRA_SHARE,
    SAVE,
    Outcome,
    Schedule,
    StepProfile,
    Verdict,
    describe,
    forecast,
    median,
    profile,
)

#: Bounds of one process's history: `vramwatch run` watches one run; the daemon many (it passes less).
MAX_RECORDS = 4096
RECENT_RECORDS = 2048


def _phase_tags(record: StepRecord, schedule: Schedule) -> bool:
    """Whether an announced phase ran inside the record's interval (after each step before its last one)."""
    return any(schedule.phases_after(after) for after in range(record.first_step - 1, record.last_step))


def _merge(a: StepRecord, b: StepRecord) -> StepRecord:
    """Two adjacent records as one covering both: the highest peaks, what stayed after the later one."""
    return StepRecord(
        pid=b.pid,
        device=b.device,
        first_step=a.first_step,
        last_step=b.last_step,
        t=b.t,
        seconds=a.seconds + b.seconds,
        peak_allocated_bytes=max(a.peak_allocated_bytes, b.peak_allocated_bytes),
        peak_reserved_bytes=max(a.peak_reserved_bytes, b.peak_reserved_bytes),
        allocated_bytes=b.allocated_bytes,
        reserved_bytes=b.reserved_bytes,
        inactive_split_bytes=b.inactive_split_bytes,
    )


class StepHistory:
    """One process's step records on one device, in step order, in at most `max_records` records."""

    __slots__ = ("_records", "granularity", "max_records", "recent", "schedule", "updates")

    def __init__(
        self, schedule: Schedule | None = None, *, max_records: int = MAX_RECORDS, recent: int = RECENT_RECORDS
    ) -> None:
        if not 0 < recent < max_records:
            raise ValueError(f"recent ({recent}) must be positive and under max_records ({max_records})")
        self.schedule = schedule or Schedule()
        self.max_records = max_records
        self.recent = recent
        self.updates = 0  # records added so far: lets a caller redo a forecast only when something is new
        self.granularity = 1  # at most this many training steps in one merged older record
        # Each record with whether an announced phase ran in it, decided once as it arrives (a merged record
        # spans thousands of steps: asking the schedule again at each pass would cost as many calls).
        self._records: list[tuple[StepRecord, bool]] = []

    def __len__(self) -> int:
        return len(self._records)

    @property
    def records(self) -> tuple[StepRecord, ...]:
        """What is kept: older training steps merged, the recent ones as reported, every phase."""
        return tuple(r for r, _ in self._records)

    def for_profile(self) -> tuple[StepRecord, ...]:
        """The records to profile: the recent training steps merged like the older ones.

        `steps.profile` counts records, not steps (its warm-up is the first fifth of the records, its fit
        samples them evenly): records of even length make those counts shares of the run, as without a bound.
        """
        if self.granularity == 1:
            return self.records
        return tuple(r for r, _ in self._merge_pass(self._records, self.granularity))

    @property
    def last_step(self) -> int | None:
        return self._records[-1][0].last_step if self._records else None

    def extend(self, records: Sequence[StepRecord]) -> None:
        """Add reported records (a report's are in step order; a late one is put in its place)."""
        for r in records:
            entry = (r, _phase_tags(r, self.schedule))
            if self._records and r.last_step <= self._records[-1][0].last_step:
                if any(k.last_step == r.last_step for k, _ in self._records[-self.recent :]):
                    continue  # sent twice (a retried datagram): count it once
                self._records.append(entry)
                self._records.sort(key=lambda e: e[0].last_step)
            else:
                self._records.append(entry)
            self.updates += 1
        if len(self._records) > self.max_records:
            self._compact()

    def _compact(self) -> None:
        """Merge older training steps into records of `granularity` steps (doubled as the run goes on) until a
        quarter of the room is free again; drop the oldest if phases alone fill it.

        Compacting to below the bound (not just to it) keeps the cost amortised: a pass is linear, and the
        next one is due only after `max_records / 4` more records.
        """
        target = self.max_records - self.max_records // 4
        recent = min(self.recent, target // 2)
        steps = self._records[-1][0].last_step
        while len(self._records) > target and self.granularity < steps:
            old, new = self._records[:-recent], self._records[-recent:]
            merged = self._merge_pass(old, self.granularity)
            self._records = merged + new
            if len(self._records) > target:
                self.granularity *= 2
        if len(self._records) > target:
            del self._records[: len(self._records) - target]

    def _merge_pass(self, entries: list[tuple[StepRecord, bool]], granularity: int) -> list[tuple[StepRecord, bool]]:
        """Adjacent training steps merged into records of at most `granularity` steps; phases, peaks that stand
        out and the start-up stay apart."""
        training = [r.peak_allocated_bytes for r, tagged in self._records if r.first_step > 1 and not tagged]
        if not training or granularity < 2:
            return entries
        # steps.profile's own rule for "a phase's peak", so a peak it would learn a period from stays whole.
        base = median(training)
        threshold = base + max(PHASE_MIN_EXTRA_BYTES, PHASE_MIN_EXTRA_SHARE * base)
        out: list[tuple[StepRecord, bool]] = []
        held: StepRecord | None = None
        for r, tagged in entries:
            if tagged or r.first_step <= 1 or r.peak_allocated_bytes > threshold:
                if held is not None:
                    out.append((held, False))
                    held = None
                out.append((r, tagged))
            elif held is None:
                held = r
            elif held.last_step + 1 == r.first_step and held.count + r.count <= granularity:
                held = _merge(held, r)  # two untagged intervals make an untagged one
            else:
                out.append((held, False))
                held = r
        if held is not None:
            out.append((held, False))
        return out


@dataclass(frozen=True, slots=True)
class StepFigures:
    """What one process's steps say, as `serve` exports it and `attach` shows it."""

    pid: int
    device: int
    step: int  # the last optimizer step counted
    step_peak_allocated_bytes: int  # the training steps' peak (phases apart)
    step_peak_reserved_bytes: int | None  # what the allocator held at that step
    growth_bytes_per_step: float
    outcome: Outcome | None  # None: no capacity known yet, no forecast
    fail_step: int | None  # where it runs out, when it does
    phase: str | None  # the phase it runs out in
    message: str | None  # `steps.describe`'s sentence
    gpu_uuid: str | None = None

    def as_dict(self) -> dict[str, object]:
        """The JSON object of `/status.json` and `attach --json` (no command line: nothing secret)."""
        return {
            "pid": self.pid,
            "device": self.device,
            "gpu_uuid": self.gpu_uuid,
            "step": self.step,
            "step_peak_allocated_bytes": self.step_peak_allocated_bytes,
            "step_peak_reserved_bytes": self.step_peak_reserved_bytes,
            "growth_bytes_per_step": self.growth_bytes_per_step,
            "outcome": self.outcome.value if self.outcome is not None else None,
            "fail_step": self.fail_step,
            "phase": self.phase,
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> StepFigures | None:
        """The figures from `as_dict`'s object (a daemon's `/status.json`); None when it is not one."""
        pid, device, step, peak = (_int(doc, k) for k in ("pid", "device", "step", "step_peak_allocated_bytes"))
        growth, outcome = doc.get("growth_bytes_per_step"), doc.get("outcome")
        if pid is None or device is None or step is None or peak is None:
            return None
        try:
            verdict = Outcome(outcome) if isinstance(outcome, str) else None
        except ValueError:  # an outcome a newer daemon knows: no verdict rather than a wrong one
            verdict = None
        return cls(
            pid=pid,
            device=device,
            step=step,
            step_peak_allocated_bytes=peak,
            step_peak_reserved_bytes=_int(doc, "step_peak_reserved_bytes"),
            growth_bytes_per_step=float(growth) if isinstance(growth, int | float) else 0.0,
            outcome=verdict,
            fail_step=_int(doc, "fail_step"),
            phase=_text(doc, "phase"),
            message=_text(doc, "message"),
            gpu_uuid=_text(doc, "gpu_uuid"),
        )

    @property
    def fails(self) -> bool:
        return self.outcome is not None and self.outcome is not Outcome.FITS and self.fail_step is not None


def _int(doc: Mapping[str, Any], key: str) -> int | None:
    value = doc.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    return value if isinstance(value, str) else None


def step_figures(
    history: StepHistory, capacity_bytes: int | None, *, gpu_uuid: str | None = None
) -> tuple[StepFigures, StepProfile, Verdict | None] | None:
    """Profile and (with a capacity) forecast one history; None with too few steps to say anything."""
    records = history.for_profile()
    prof = profile(records, history.schedule)
    if prof is None:
        return None
    verdict = forecast(prof, history.schedule, capacity_bytes) if capacity_bytes else None
    at_peak = next((r for r in reversed(records) if r.last_step == prof.step_peak_at), None)
    figures = StepFigures(
        pid=records[-1].pid,
        device=records[-1].device,
        step=prof.step,
        step_peak_allocated_bytes=prof.step_peak_allocated_bytes,
        step_peak_reserved_bytes=at_peak.peak_reserved_bytes if at_peak is not None else None,
        growth_bytes_per_step=prof.growth_bytes_per_step,
        outcome=verdict.outcome if verdict is not None else None,
        fail_step=verdict.step if verdict is not None and verdict.outcome is not Outcome.FITS else None,
        phase=verdict.phase if verdict is not None else None,
        message=describe(verdict, prof, history.schedule) if verdict is not None else None,
        gpu_uuid=gpu_uuid,
    )
    return figures, prof, verdict


def worst(figures: Sequence[StepFigures]) -> StepFigures | None:
    """The figures that run out first (then those of the highest peak); None for none."""
    if not figures:
        return None
    return min(figures, key=lambda f: (f.fail_step if f.fails and f.fail_step is not None else 1 << 62,
                                       -f.step_peak_allocated_bytes))  # fmt: skip


def is_save(phase: str | None) -> bool:
    """Whether a phase is (or includes) a save: a pressure notice asks for one, which would be what runs out."""
    return phase is not None and SAVE in phase.split("+")
