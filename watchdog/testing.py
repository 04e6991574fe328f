"""Fakes for tests (ours and users'): a clock you advance by hand and a notifier that records.

Shipped in the package, as structlog ships `structlog.testing`, so plugin authors test against the same
fakes we do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .model import Finding


@dataclass
class FakeClock:
    """A clock that moves only when told: `sleep` advances it, so a 1 Hz loop runs at full speed in tests."""

    now: float = 1000.0
    wall_offset: float = 1_700_000_000.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.wall_offset + self.now

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class RecordingNotifier:
    """Keeps every (finding, cleared) it is given, in order."""

    events: list[tuple[Finding, bool]] = field(default_factory=list)

    def notify(self, finding: Finding, *, cleared: bool = False) -> None:
        self.events.append((finding, cleared))
