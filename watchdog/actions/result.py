"""What the action layer did about a finding, or why it did nothing: one value per decision, for the log.

The dispatcher never raises; instead every decision it takes (a notification queued, a signal sent, a
signal withheld because the target installs no handler, a kill skipped because the process was reused)
comes back as an `ActionResult`, and the daemon logs them. `done` is False for every refusal, and in
dry-run mode for what *would* have been done (then `dry_run` is True and `reason` says what).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..model import ProcessKey


@dataclass(frozen=True, slots=True)
class ActionResult:
    """One decision: `action` is log, notify, signal, save_now, hook, kill or error."""

    action: str
    done: bool
    reason: str
    process: ProcessKey | None = None
    kind: str | None = None  # the finding's kind, so a log line reads on its own
    signal: str | None = None  # e.g. "SIGUSR1", when a signal was (or would have been) sent
    adapter: str | None = None  # the save-now adapter that was chosen
    dry_run: bool = False

    def log_fields(self) -> dict[str, object]:
        """Flat, JSON-friendly fields for a structlog event (absent values left out)."""
        fields: dict[str, object] = {"action": self.action, "done": self.done, "reason": self.reason}
        if self.process is not None:
            fields["pid"] = self.process.pid
            fields["start_time"] = self.process.start_time
        for name in ("kind", "signal", "adapter"):
            value = getattr(self, name)
            if value is not None:
                fields[name] = value
        if self.dry_run:
            fields["dry_run"] = True
        return fields
