"""Raise once, clear once: the only stateful part of detection, kept in one explicit object.

`analyze` says which conditions hold at a tick. `FindingTracker` turns that into events:

- a subject (kind, GPU, process) is **raised** after its condition held for its detector's `raise_after`
  consecutive ticks, and **cleared** after it was absent for its `clear_after` consecutive ticks (each
  overridable per kind by `enter_ticks` / `exit_ticks` in `[detectors]`, see registry.py). A *tentative*
  finding (one that says why it may be wrong) of a detector that declares a `tentative_quorum` is raised once
  seen on that many of the last ticks, at its severity, instead: a doubt must outlast what explains it away;
- a kind whose detector declares no `clear_after` is an **event** (the agent's `oom`): each of its findings
  is raised as it comes, and nothing is kept or cleared;
- after a clear, the same subject is not raised again within `cooldown_seconds` unless it comes back at a
  higher severity, or blaming another culprit (`Finding.culprit`: a card-wide forecast about another grower is
  another claim; a load's forecast that cleared must not mute the leak that starts a minute later), or about a
  climb that began after the clear (`Finding.since`: the same where the pids are hidden and the card is the grower);
- **another culprit**: an active finding that blames a culprit not yet raised in this activation, for as many
  consecutive ticks as a raise needs (a tentative one: its quorum's `seen`), is raised again, naming it (once per
  culprit per activation, so two growers taking turns as the fastest notify once each);
- **escalation**: an active warning whose condition is critical for `enter_ticks` ticks is raised again,
  with severity critical (a notifier sees a second event, which is the point: it got worse). Never held
  back by the cooldown the first time;
- **de-escalation** is silent: after `exit_ticks` ticks at warning the active finding becomes a warning
  again; re-escalating within `cooldown_seconds` of the last critical raise is silent too (unless it blames
  another culprit), so a forecast hovering around the critical ETA notifies once;
- **confirmation**: an active *tentative* finding (`Finding.tentative`: a forecast on a run that may still be
  loading) seen firm at the same severity for `enter_ticks` ticks is raised again, firm. It is news (the doubt
  the first message told of is gone), and a policy's actions that could end a run wait for it. Each severity is
  raised firm at most once per activation, so a culprit that changes between a young and an old run does not
  notify at every change; a firm finding back within the cooldown of a tentative one that cleared is raised.

While a finding is active its latest version (message, numbers) replaces the stored one silently.

A subject whose detector raised at this tick (`Analysis.failed`, on its GPU or for the whole tick) is **held**: the
tick counts neither for it nor against it. Its active finding is not cleared, nothing is raised about it, and its
counters wait for a tick its detector could judge. A bug is no evidence that a leak stopped, nor that it began. A hold
lasts as many ticks as the kind's clear ticks at most: a detector that keeps failing then lets its findings clear
after as many more, as gone.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass, field

from ..model import Finding, ProcessKey, Severity
from .analysis import Analysis
from .config import DetectorConfig
from .registry import clear_after, raise_after, tentative_quorum

Subject = tuple[str, str | None, ProcessKey | None]

_RANK = {Severity.WARNING: 0, Severity.CRITICAL: 1}


@dataclass(slots=True)
class SubjectState:
    """Counters of one subject: how long its condition has held (or not), and what was last raised."""

    present: int = 0  # consecutive ticks the condition held
    critical: int = 0  # consecutive ticks it held at critical
    calmer: int = 0  # consecutive ticks an active critical was seen only at warning
    absent: int = 0  # consecutive ticks an active finding was not seen
    active: Finding | None = None
    last_critical_raise: float | None = None
    cleared_at: float | None = None
    cleared_severity: Severity | None = None
    cleared_culprit: ProcessKey | None = None
    firm: int = 0  # consecutive ticks the condition was seen firm (not tentative)
    firm_rank: int = -1  # the highest severity raised firm since the subject was raised (-1: none yet), kept
    # through its cooldown
    # The ticks it was seen (bit 0: this tick), and seen critical, as far back as its tentative quorum looks (no
    # bits at all for a kind without one); a subject is forgotten only once these are empty too.
    seen_bits: int = 0
    critical_bits: int = 0
    culprit: ProcessKey | None = None  # the culprit of the latest tick, and for how many consecutive ticks
    culprit_run: int = 0
    culprits: set[ProcessKey] = field(default_factory=set)  # those raised since the subject was raised
    held: int = 0  # consecutive ticks its detector failed on it (held, up to its clear ticks)


class FindingTracker:
    """Enter/exit hysteresis, cooldown and escalation over successive `Analysis` results."""

    def __init__(self, config: DetectorConfig) -> None:
        self.config = config
        self.states: dict[Subject, SubjectState] = {}
        # The sampling interval, as the ticks show it (a quorum is a time; a daemon may read every 2 or 5 s): the
        # median of the last few gaps, so that a late tick does not change it. 1 s until two ticks came.
        self._last_t: float | None = None
        self._gaps: deque[float] = deque(maxlen=9)
        self.interval_seconds = 1.0

    def update(self, analysis: Analysis) -> tuple[list[Finding], list[Finding]]:
        """Fold one tick in; return the findings (raised, cleared) at this tick."""
        now = analysis.t
        if self._last_t is not None and now > self._last_t:
            self._gaps.append(now - self._last_t)
            # The median by hand: `serve` does not load `statistics` (its resident memory, tests/test_daemon.py).
            self.interval_seconds = sorted(self._gaps)[len(self._gaps) // 2]
        self._last_t = now
        seen: dict[Subject, Finding] = {}
        events: list[Finding] = []
        for f in analysis.findings:
            if clear_after(self.config, f.kind) is None:
                events.append(f)  # it happened, once: no hysteresis, nothing to clear
                continue
            other = seen.get(f.subject)
            if other is None or _RANK[f.severity] > _RANK[other.severity]:
                seen[f.subject] = f
        unjudged = {(f.kind, f.gpu_uuid) for f in analysis.failed}
        raised: list[Finding] = []
        cleared: list[Finding] = []
        for subject, finding in seen.items():
            state = self.states.setdefault(subject, SubjectState())
            self._remember(state, subject[0], seen=True, critical=finding.severity is Severity.CRITICAL)
            event = self._present(state, finding, now)
            if event is not None:
                raised.append(event)
        for subject, state in list(self.states.items()):
            if subject in seen:
                state.held = 0
                continue
            if unjudged and {(subject[0], subject[1]), (subject[0], None)} & unjudged:
                # Held for as long as it would take to clear; a detector that keeps failing then lets its findings
                # clear as gone (a process that left, or a condition over): a bug must not keep an alert up for ever.
                if state.held < self._clear_after(subject[0]):
                    state.held += 1
                    continue
            else:
                state.held = 0
            state.present = state.critical = state.calmer = state.firm = 0
            self._remember(state, subject[0], seen=False, critical=False)
            if state.active is not None:
                state.absent += 1
                if state.absent >= self._clear_after(subject[0]):
                    cleared.append(dataclasses.replace(state.active, t=now))
                    state.cleared_at, state.cleared_severity = now, state.active.severity
                    state.cleared_culprit = state.active.culprit
                    state.active, state.absent = None, 0
            elif not self._cooling(state, now) and not state.seen_bits:
                del self.states[subject]  # nothing to remember: keeps the tracker's memory bounded
        return raised + events, cleared

    def active(self) -> list[Finding]:
        """The findings raised and not yet cleared, oldest subject first."""
        return [s.active for s in self.states.values() if s.active is not None]

    def _present(self, state: SubjectState, finding: Finding, now: float) -> Finding | None:
        state.present += 1
        state.absent = 0
        state.critical = state.critical + 1 if finding.severity is Severity.CRITICAL else 0
        state.firm = state.firm + 1 if finding.tentative is None else 0
        state.culprit_run = state.culprit_run + 1 if finding.culprit == state.culprit else 1
        state.culprit = finding.culprit
        enter = raise_after(self.config, finding.kind)
        active = state.active
        if active is None:
            if not self._held(state, finding, state.present, enter):
                return None
            if not self._cooling(state, now) or _another_claim(state, finding):
                state.firm_rank = -1  # a new activation: nothing of it was raised firm yet, nor any culprit
                state.culprits.clear()
            elif (
                state.cleared_severity is not None
                and _RANK[finding.severity] <= _RANK[state.cleared_severity]
                and not self._confirms(state, finding)
            ):
                # Back within the cooldown, no worse: silent, unless it is firm where the last one never was.
                return None
            return self._raise(state, finding, now)
        if active.severity is Severity.WARNING and finding.severity is Severity.CRITICAL:
            if not self._held(state, finding, state.critical, enter):
                state.active = dataclasses.replace(finding, severity=Severity.WARNING)
                return None
            state.active = finding
            # Within the cooldown of the last critical raise, a re-escalation is silent: unless that raise was
            # tentative and this one is firm (what a policy waited for), or this one blames another culprit.
            recent = (
                state.last_critical_raise is not None and now - state.last_critical_raise < self.config.cooldown_seconds
            )
            if recent and not self._confirms(state, finding) and not self._new_culprit(state, finding, enter):
                return None
            return self._raise(state, finding, now)
        if active.severity is Severity.CRITICAL and finding.severity is Severity.WARNING:
            state.calmer += 1
            if state.calmer >= self._clear_after(finding.kind):
                state.active, state.calmer = finding, 0
            return None
        state.calmer = 0
        if self._new_culprit(state, finding, enter):
            return self._raise(state, finding, now)
        # Confirmation: firm for `enter` ticks at a severity that was only ever raised tentative.
        if state.firm >= enter and self._confirms(state, finding):
            return self._raise(state, finding, now)
        state.active = finding
        return None

    def _quorum(self, kind: str) -> tuple[int, int] | None:
        return tentative_quorum(self.config, kind, self.interval_seconds)

    def _remember(self, state: SubjectState, kind: str, *, seen: bool, critical: bool) -> None:
        quorum = self._quorum(kind)
        if quorum is None:
            return
        mask = (1 << quorum[1]) - 1
        state.seen_bits = ((state.seen_bits << 1) | seen) & mask
        state.critical_bits = ((state.critical_bits << 1) | critical) & mask

    def _held(self, state: SubjectState, finding: Finding, consecutive: int, enter: int) -> bool:
        """True when `finding` held long enough to be raised at its severity: `enter` consecutive ticks, or, when it
        is tentative and its kind has a quorum, that quorum of the last ticks (a brief gap does not start it over,
        and a short burst, however dense, is not enough)."""
        quorum = self._quorum(finding.kind) if finding.tentative is not None else None
        if quorum is None:
            return consecutive >= enter
        bits = state.critical_bits if finding.severity is Severity.CRITICAL else state.seen_bits
        return bits.bit_count() >= quorum[0]

    def _new_culprit(self, state: SubjectState, finding: Finding, enter: int) -> bool:
        """True when an active finding has blamed a culprit it never raised for long enough to raise it."""
        if finding.culprit is None or finding.culprit in state.culprits:
            return False
        quorum = self._quorum(finding.kind) if finding.tentative is not None else None
        return state.culprit_run >= max(enter, quorum[0] if quorum is not None else 0)

    @staticmethod
    def _confirms(state: SubjectState, finding: Finding) -> bool:
        """True when `finding` is firm at a severity not yet raised firm since the subject was raised."""
        return finding.tentative is None and _RANK[finding.severity] > state.firm_rank

    @staticmethod
    def _raise(state: SubjectState, finding: Finding, now: float) -> Finding:
        state.active = finding
        if finding.severity is Severity.CRITICAL:
            state.last_critical_raise = now
        if finding.tentative is None:
            state.firm_rank = max(state.firm_rank, _RANK[finding.severity])
        if finding.culprit is not None:
            state.culprits.add(finding.culprit)
        return finding

    def _clear_after(self, kind: str) -> int:
        # Only conditions have a state to clear; events never get here (see `update`).
        return clear_after(self.config, kind) or self.config.default_exit_ticks

    def _cooling(self, state: SubjectState, now: float) -> bool:
        return state.cleared_at is not None and now - state.cleared_at < self.config.cooldown_seconds


def _another_claim(state: SubjectState, finding: Finding) -> bool:
    """True when `finding`, back within the cooldown, is not the cleared one returning: it blames another culprit, or
    what it claims began after the cleared one was gone (where the pids are hidden, a load's forecast that cleared must
    not mute the leak that starts a minute later any more than where they are seen).

    Gone means cleared, not last seen: a climb that begins while the last claim is up continues it (that alert stays
    up, its message following the new climb). Counting from when it was last seen was tried: every refill of a cache
    right after its fall from the card's end was then another claim (docs/detection.md)."""
    if finding.culprit is not None and finding.culprit != state.cleared_culprit:
        return True
    return finding.since is not None and state.cleared_at is not None and finding.since > state.cleared_at
