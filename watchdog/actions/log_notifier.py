"""The default destination of the `notify` action: one structured log line per raised or cleared finding.

Used when no webhook, Alertmanager or Apprise destination is configured, and for the `log` action. A log
line costs microseconds, so it is written on the caller's thread; it never raises.
"""

from __future__ import annotations

import structlog

from ..model import Finding, Severity


class LogNotifier:
    """Logs `finding_raised` (warning; error when critical) and `finding_cleared` (info)."""

    def __init__(self, logger: structlog.typing.FilteringBoundLogger | None = None) -> None:
        self._log = logger or structlog.get_logger("vramwatch.findings")

    def notify(self, finding: Finding, *, cleared: bool = False) -> None:
        try:
            fields: dict[str, object] = {
                "kind": finding.kind,
                "severity": finding.severity.value,
                "gpu_uuid": finding.gpu_uuid,
                "message": finding.message,
            }
            if finding.process is not None:
                fields["pid"] = finding.process.pid
                fields["process"] = finding.process_name
            if cleared:
                self._log.info("finding_cleared", **fields)
                return
            if finding.eta_seconds is not None:
                fields["eta_seconds"] = round(finding.eta_seconds, 1)
            if finding.advice:
                fields["advice"] = list(finding.advice)
            if finding.severity is Severity.CRITICAL:
                self._log.error("finding_raised", **fields)
            else:
                self._log.warning("finding_raised", **fields)
        except Exception:  # a broken log sink must not take the sampler down with it
            return
