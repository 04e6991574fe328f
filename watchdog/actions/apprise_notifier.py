"""Notifications to the ~100 services Apprise knows (Discord, Telegram, ntfy, e-mail...), as an extra.

Apprise is optional (`pip install vramwatch-daemon[apprise]`): it is imported only when an Apprise
destination is configured, and its absence is a ConfigError that says what to install. Apprise's own
`notify()` is synchronous and may take seconds per service, so it runs on this notifier's delivery queue,
never on the sampler thread. Apprise URLs embed credentials: they are never logged.
"""

from __future__ import annotations

import importlib
import socket
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from ..errors import ConfigError
from ..model import Finding
from .payload import ProcessLookup, chat_text, process_fields
from .queue import DeliveryError, DeliveryQueue

log = structlog.get_logger("vramwatch.actions")

INSTALL_HINT = "pip install 'vramwatch-daemon[apprise]'"


def load_apprise() -> Any:
    try:
        return importlib.import_module("apprise")
    except ImportError as exc:
        raise ConfigError(
            f"[notify] apprise: the apprise package is not installed; install it with {INSTALL_HINT}"
        ) from exc


class AppriseNotifier:
    """Sends the chat text of each finding to every Apprise URL given."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        host: str | None = None,
        lookup: ProcessLookup | None = None,
        queue: DeliveryQueue | None = None,
    ) -> None:
        if isinstance(urls, str) or not urls or not all(isinstance(u, str) and u for u in urls):
            raise ConfigError("[notify] apprise urls: expected a non-empty list of Apprise URLs")
        apprise = load_apprise()
        self._apprise = apprise.Apprise()
        for index, url in enumerate(urls):
            if not self._apprise.add(url):
                raise ConfigError(f"[notify] apprise urls[{index}]: Apprise does not recognise this URL")
        self.host = host or socket.gethostname()
        self._lookup = lookup
        self.queue = queue or DeliveryQueue("apprise")

    def notify(self, finding: Finding, *, cleared: bool = False) -> None:
        try:
            meta = self._lookup(finding.process) if self._lookup and finding.process else None
            process = process_fields(finding, meta, include_cmdline=False)
            body = chat_text(finding, cleared=cleared, host=self.host, process=process)
            title = f"vramwatch {finding.kind} {'resolved' if cleared else finding.severity.value}"
            self.queue.submit(lambda: self._send(title, body), label="apprise")
        except Exception:
            log.exception("apprise_notify_failed", kind=finding.kind)

    def _send(self, title: str, body: str) -> None:
        if not self._apprise.notify(title=title, body=body):
            raise DeliveryError("apprise reported a failed delivery", retryable=True)

    def counts(self) -> Mapping[str, int]:
        return self.queue.counts()

    def close(self, timeout: float = 5.0) -> None:
        self.queue.close(timeout)
