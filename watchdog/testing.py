"""Fakes for tests (ours and users'): a clock you advance by hand and a notifier that records.

Shipped in the package, as structlog ships `structlog.testing`, so plugin authors test against the same
fakes we do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .model import Finding, ProcessExit, ProcessMeta, Reading


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


@dataclass
class StaticInspector:
    """A ProcessInspector over a fixed table of ProcessMeta; unknown pids come back with only their pid."""

    table: dict[int, ProcessMeta] = field(default_factory=dict)
    visible: bool = True
    exits: dict[int, ProcessExit] = field(default_factory=dict)  # pid -> how it ended (as a zombie shows it)

    def inspect(self, pid: int) -> ProcessMeta:
        return self.table.get(pid, ProcessMeta(pid=pid, start_time=None))

    def exit_status(self, pid: int, start_time: float | None) -> ProcessExit | None:
        found = self.exits.get(pid)
        return found if found is not None and found.start_time == start_time else None

    def pid_namespace_matches(self) -> bool:
        return self.visible


@dataclass
class ScriptedBackend:
    """A Backend that returns the readings it was given, one per read, then repeats the last one.

    An entry that is an exception instance is raised instead, to script a lost library mid-run.
    """

    readings: list[Reading | Exception]
    meta: dict[int, ProcessMeta] = field(default_factory=dict)
    exits: dict[int, ProcessExit] = field(default_factory=dict)
    kind: str = "simulated"
    reads: int = 0
    closed: bool = False

    def read(self) -> Reading:
        item = self.readings[min(self.reads, len(self.readings) - 1)]
        self.reads += 1
        if isinstance(item, Exception):
            raise item
        return item

    def inspector(self) -> StaticInspector:
        return StaticInspector(self.meta, exits=self.exits)

    def describe(self) -> dict[str, str]:
        return {"backend": self.kind, "driver_version": "test", "nvml_version": "test", "host": "test"}

    def close(self) -> None:
        self.closed = True
