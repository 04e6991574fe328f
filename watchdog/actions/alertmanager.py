"""Findings as Prometheus Alertmanager alerts, through its v2 API (`POST /api/v2/alerts`).

The body is a JSON list of `postableAlert` objects as defined in Alertmanager's
api/v2/openapi.yaml (prometheus/alertmanager): `labels` (required, a string map; `alertname` required),
`annotations` (a string map), `startsAt` and `endsAt` (RFC 3339), `generatorURL` (optional URI).

Labels identify an alert, so they hold only what is stable while a finding lasts: `alertname`
(`Vramwatch` + the kind in CamelCase, e.g. `VramwatchOomForecast`), `severity`, `instance` (the host),
`uuid` and `gpu` (the GPU's UUID and, when the detector recorded it, index), `pid`, `process`, `user`,
`kind`. Changing figures go in annotations (`summary`, `description`, `advice`, `eta_seconds`), which
Alertmanager overwrites with the latest it received.

Alertmanager expects clients to re-send active alerts (the Prometheus "Sending alerts" page: "Clients are
expected to continuously re-send alerts as long as they are still active (usually on the order of 30
seconds to 3 minutes)"); an alert that is not re-sent is resolved when its `endsAt` passes, or, without an
`endsAt`, after the Alertmanager's `resolve_timeout`. vramwatch does what Prometheus does: each firing alert
is sent with `endsAt = now + 4 x resend_seconds`, and the notifier remembers the alerts it has fired and
re-sends them all every `resend_seconds` (`tick()`, which the dispatcher calls each tick; or
`resend_active()` directly). So an alert stays up while the finding lasts, and if the daemon dies its
alerts resolve by themselves a few minutes later. A cleared finding is sent once with `endsAt = now`.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import structlog

from .._version import __version__
from ..clock import SystemClock
from ..errors import ConfigError
from ..model import Finding
from ..typing import Clock
from .payload import ProcessLookup, alertname, clean_numbers, format_duration, gpu_index, rfc3339, wall_of
from .queue import DeliveryQueue
from .transport import check_url, post, redact_url

log = structlog.get_logger("vramwatch.actions")

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_ENDS_AT_FACTOR = 4  # as Prometheus: an alert outlives four missed re-sends, not one


def check_label_names(labels: Mapping[str, str]) -> None:
    """ConfigError unless every name is a valid Prometheus label name."""
    for name in labels:
        if not _LABEL_NAME.fullmatch(name):
            raise ConfigError(f"alertmanager labels: {name!r} is not a valid label name")


@dataclass(frozen=True, slots=True)
class _Active:
    finding: Finding
    starts_at: float  # wall time, fixed at the first send so re-sends do not move it


class AlertmanagerNotifier:
    """Posts findings to Alertmanager and keeps re-sending the ones still firing."""

    def __init__(
        self,
        base_url: str,
        *,
        resend_seconds: float = 60.0,
        timeout: float = 5.0,
        host: str | None = None,
        lookup: ProcessLookup | None = None,
        clock: Clock | None = None,
        generator_url: str | None = None,
        extra_labels: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        queue: DeliveryQueue | None = None,
    ) -> None:
        check_url(base_url, key="alertmanager url")
        if resend_seconds <= 0:
            raise ConfigError(f"alertmanager resend_seconds: expected a number > 0, got {resend_seconds!r}")
        check_label_names(extra_labels or {})
        self.alerts_url = base_url.rstrip("/") + "/api/v2/alerts"
        self.destination = redact_url(base_url)
        self.resend_seconds = resend_seconds
        self.timeout = timeout
        self.host = host or socket.gethostname()
        self._lookup = lookup
        self._clock: Clock = clock or SystemClock()
        self.generator_url = generator_url
        self._extra_labels = dict(extra_labels or {})
        self._headers = dict(headers or {})
        self.queue = queue or DeliveryQueue(f"alertmanager {self.destination}")
        self._lock = threading.Lock()
        self._active: dict[tuple[str, str | None, object], _Active] = {}
        self._last_send: float | None = None

    def labels(self, finding: Finding) -> dict[str, str]:
        """The identifying labels of the alert for `finding` (only non-empty values: Alertmanager drops empty)."""
        labels = {
            **self._extra_labels,
            "alertname": alertname(finding.kind),
            "severity": finding.severity.value,
            "instance": self.host,
            "kind": finding.kind,
        }
        if finding.gpu_uuid:
            labels["uuid"] = finding.gpu_uuid
        index = gpu_index(finding)
        if index is not None:
            labels["gpu"] = str(index)
        if finding.process is not None:
            labels["pid"] = str(finding.process.pid)
            meta = self._lookup(finding.process) if self._lookup else None
            if meta is not None and meta.start_time == finding.process.start_time and meta.user:
                labels["user"] = meta.user
            name = finding.process_name or (meta.name if meta is not None else None)
            if name:
                labels["process"] = name
        return labels

    def annotations(self, finding: Finding) -> dict[str, str]:
        notes = {"summary": finding.message}
        details = [finding.message]
        if finding.eta_seconds is not None:
            notes["eta_seconds"] = f"{finding.eta_seconds:.0f}"
            details.append(f"Full in about {format_duration(finding.eta_seconds)}.")
        numbers = ", ".join(f"{k}={v}" for k, v in clean_numbers(finding.numbers).items() if v is not None)
        if numbers:
            details.append(numbers)
        notes["description"] = "\n".join(details)
        if finding.advice:
            notes["advice"] = "\n".join(finding.advice)
        if finding.tentative is not None:
            # An annotation, not a label: the confirmed finding is the same alert, and its annotations replace these.
            notes["tentative"] = finding.tentative
        return notes

    def alert(self, finding: Finding, *, starts_at: float, ends_at: float) -> dict[str, object]:
        """One `postableAlert`."""
        body: dict[str, object] = {
            "labels": self.labels(finding),
            "annotations": self.annotations(finding),
            "startsAt": rfc3339(starts_at),
            "endsAt": rfc3339(ends_at),
        }
        if self.generator_url:
            body["generatorURL"] = self.generator_url
        return body

    def notify(self, finding: Finding, *, cleared: bool = False) -> None:
        try:
            now = self._clock.wall()
            ended: list[dict[str, object]] = []
            with self._lock:
                if cleared:
                    entry = self._active.pop(finding.subject, None)
                    starts = entry.starts_at if entry else self._wall_of(finding.t, now)
                    alert = self.alert(finding, starts_at=min(starts, now), ends_at=now)
                else:
                    ended, starts = self._take(finding, now)
                    alert = self.alert(finding, starts_at=starts, ends_at=self._firing_end(now))
            self._submit([*ended, alert])
        except Exception:
            log.exception("alertmanager_notify_failed", destination=self.destination, kind=finding.kind)

    def tick(self) -> None:
        """Re-send every active alert if `resend_seconds` passed since the last send; cheap otherwise."""
        try:
            now = self._clock.monotonic()
            with self._lock:
                due = bool(self._active) and (self._last_send is None or now - self._last_send >= self.resend_seconds)
            if due:
                self.resend_active()
        except Exception:
            log.exception("alertmanager_resend_failed", destination=self.destination)

    def resend_active(self, findings: Iterable[Finding] | None = None) -> None:
        """Re-send the given findings (default: every one fired and not yet cleared) as firing, in one POST."""
        now = self._clock.wall()
        ended: list[dict[str, object]] = []
        with self._lock:
            if findings is not None:
                for finding in findings:
                    gone, _ = self._take(finding, now)
                    ended += gone
            alerts = ended + [
                self.alert(a.finding, starts_at=a.starts_at, ends_at=self._firing_end(now))
                for a in self._active.values()
            ]
        if alerts:
            self._submit(alerts)

    def _take(self, finding: Finding, now: float) -> tuple[list[dict[str, object]], float]:
        """Make `finding` its subject's firing alert (under the lock). Returns the alert it replaces, ended now, when
        that one's labels differ (a warning that became critical, another process named: Alertmanager tells alerts
        apart by their labels, so the old one would otherwise fire on until its `endsAt`), and the new alert's start."""
        entry = self._active.get(finding.subject)
        ended: list[dict[str, object]] = []
        if entry is None:
            starts = self._wall_of(finding.t, now)
        elif self.labels(entry.finding) != self.labels(finding):
            ended.append(self.alert(entry.finding, starts_at=min(entry.starts_at, now), ends_at=now))
            starts = now
        else:
            starts = entry.starts_at
        self._active[finding.subject] = _Active(finding, starts)
        return ended, starts

    def active_count(self) -> int:
        with self._lock:
            return len(self._active)

    def _wall_of(self, t: float, wall_now: float) -> float:
        return wall_of(t, monotonic_now=self._clock.monotonic(), wall_now=wall_now)

    def _firing_end(self, wall_now: float) -> float:
        return wall_now + _ENDS_AT_FACTOR * self.resend_seconds

    def _submit(self, alerts: list[dict[str, object]]) -> None:
        with self._lock:
            self._last_send = self._clock.monotonic()
        body = json.dumps(alerts, separators=(",", ":"), allow_nan=False).encode()
        self.queue.submit(lambda: self._post(body), label=self.destination)

    def _post(self, body: bytes) -> None:
        headers = {"Content-Type": "application/json", "User-Agent": f"vramwatch/{__version__}", **self._headers}
        post(self.alerts_url, body, headers, self.timeout)

    def counts(self) -> Mapping[str, int]:
        return self.queue.counts()

    def close(self, timeout: float = 5.0) -> None:
        self.queue.close(timeout)
