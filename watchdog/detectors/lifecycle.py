"""Raise once, clear once: the only stateful part of detection, kept in one explicit object.

`analyze` says which conditions hold at a tick. `FindingTracker` turns that into events:

- a subject (kind, GPU, process) is **raised** after its condition held for its detector's `raise_after`
  consecutive ticks, and **cleared** after it was absent for its `clear_after` consecutive ticks (each
  overridable per kind by `enter_ticks` / `exit_ticks` in `[detectors]`, see registry.py);
- a kind whose detector declares no `clear_after` is an **event** (the agent's `oom`): each of its findings
  is raised as it comes, and nothing is kept or cleared;
- after a clear, the same subject is not raised again within `cooldown_seconds` unless it comes back at a
  higher severity;
- **escalation**: an active warning whose condition is critical for `enter_ticks` ticks is raised again,
  with severity critical (a notifier sees a second event, which is the point: it got worse). Never held
  back by the cooldown the first time;
- **de-escalation** is silent: after `exit_ticks` ticks at warning the active finding becomes a warning
  again; re-escalating within `cooldown_seconds` of the last critical raise is silent too, so a forecast
  hovering around the critical ETA notifies once.

While a finding is active its latest version (message, numbers) replaces the stored one silently.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..model import Finding, ProcessKey, Severity
from .analysis import Analysis
from .config import DetectorConfig
from .registry import clear_after, raise_after

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


class FindingTracker:
    """Enter/exit hysteresis, cooldown and escalation over successive `Analysis` results."""

    def __init__(self, config: DetectorConfig) -> None:
        self.config = config
        self.states: dict[Subject, SubjectState] = {}

    def update(self, analysis: Analysis) -> tuple[list[Finding], list[Finding]]:
        """Fold one tick in; return the findings (raised, cleared) at this tick."""
        now = analysis.t
        seen: dict[Subject, Finding] = {}
        events: list[Finding] = []
        for f in analysis.findings:
            if clear_after(self.config, f.kind) is None:
                events.append(f)  # it happened, once: no hysteresis, nothing to clear
                continue
            other = seen.get(f.subject)
            if other is None or _RANK[f.severity] > _RANK[other.severity]:
                seen[f.subject] = f
        raised: list[Finding] = []
        cleared: list[Finding] = []
        for subject, finding in seen.items():
            state = self.states.setdefault(subject, SubjectState())
            event = self._present(state, finding, now)
            if event is not None:
                raised.append(event)
        for subject, state in list(self.states.items()):
            if subject in seen:
                continue
            state.present = state.critical = state.calmer = 0
            if state.active is not None:
                state.absent += 1
                if state.absent >= self._clear_after(subject[0]):
                    cleared.append(dataclasses.replace(state.active, t=now))
                    state.cleared_at, state.cleared_severity = now, state.active.severity
                    state.active, state.absent = None, 0
            elif not self._cooling(state, now):
                del self.states[subject]  # nothing to remember: keeps the tracker's memory bounded
        return raised + events, cleared

    def active(self) -> list[Finding]:
        """The findings raised and not yet cleared, oldest subject first."""
        return [s.active for s in self.states.values() if s.active is not None]

    def _present(self, state: SubjectState, finding: Finding, now: float) -> Finding | None:
        state.present += 1
        state.absent = 0
        state.critical = state.critical + 1 if finding.severity is Severity.CRITICAL else 0
        enter = raise_after(self.config, finding.kind)
        active = state.active
        if active is None:
            if state.present < enter:
                return None
            if self._cooling(state, now) and (
                state.cleared_severity is not None and _RANK[finding.severity] <= _RANK[state.cleared_severity]
            ):
                return None
            state.active = finding
            if finding.severity is Severity.CRITICAL:
                state.last_critical_raise = now
            return finding
        if active.severity is Severity.WARNING and finding.severity is Severity.CRITICAL:
            if state.critical < enter:
                state.active = dataclasses.replace(finding, severity=Severity.WARNING)
                return None
            state.active = finding
            recent = (
                state.last_critical_raise is not None and now - state.last_critical_raise < self.config.cooldown_seconds
            )
            if recent:
                return None
            state.last_critical_raise = now
            return finding
        if active.severity is Severity.CRITICAL and finding.severity is Severity.WARNING:
            state.calmer += 1
            if state.calmer >= self._clear_after(finding.kind):
                state.active, state.calmer = finding, 0
            return None
        state.calmer = 0
        state.active = finding
        return None

    def _clear_after(self, kind: str) -> int:
        # Only conditions have a state to clear; events never get here (see `update`).
        return clear_after(self.config, kind) or self.config.default_exit_ticks

    def _cooling(self, state: SubjectState, now: float) -> bool:
        return state.cleared_at is not None and now - state.cleared_at < self.config.cooldown_seconds
