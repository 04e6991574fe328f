"""A generic JSON webhook, signed if asked, that Slack and Mattermost incoming webhooks also accept.

The body is one JSON object: `status` (`firing`/`resolved`), `host`, the `finding` (kind, severity, gpu,
eta_seconds, message, numbers, t, wall_time), the `process` (pid, start_time, name, user, container; the
command line only when `include_cmdline`, and then redacted), the `advice` lines, and a `text` field with
the same in a few human lines, which is all a Slack or Mattermost incoming webhook reads.

With `hmac_secret`, each attempt carries `X-Vramwatch-Timestamp` (epoch seconds at sending) and
`X-Vramwatch-Signature: sha256=<hex>`, the HMAC-SHA256 of `<timestamp>.<body>` (the timestamp, a dot,
then the exact body bytes). Signing the timestamp with the body is what makes it useful against replay:
a receiver that rejects timestamps older than a few minutes cannot be fed a captured request later.
`X-Vramwatch-Delivery` is a random id, the same on every retry of one event, for de-duplication.
See `verify_signature` and docs/actions.md for the receiver's side.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import uuid
from collections.abc import Mapping

import structlog

from .._version import __version__
from ..clock import SystemClock
from ..model import Finding
from ..typing import Clock
from .payload import ProcessLookup, chat_text, finding_fields, process_fields, wall_of
from .queue import DeliveryQueue
from .transport import check_url, post, redact_url

log = structlog.get_logger("vramwatch.actions")

SIGNATURE_HEADER = "X-Vramwatch-Signature"
TIMESTAMP_HEADER = "X-Vramwatch-Timestamp"
DELIVERY_HEADER = "X-Vramwatch-Delivery"


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The `X-Vramwatch-Signature` value for `body` sent at `timestamp`."""
    digest = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(
    secret: bytes, timestamp: str, body: bytes, signature: str, *, now: float, tolerance_seconds: float = 300.0
) -> bool:
    """A receiver's check: the signature matches and the timestamp is within `tolerance_seconds` of `now`."""
    try:
        sent = float(timestamp)
    except ValueError:
        return False
    if abs(now - sent) > tolerance_seconds:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


class WebhookNotifier:
    """POSTs each raised or cleared finding as JSON; delivery happens on its own queue's worker thread."""

    def __init__(
        self,
        url: str,
        *,
        hmac_secret: bytes | str | None = None,
        include_cmdline: bool = False,
        timeout: float = 5.0,
        host: str | None = None,
        lookup: ProcessLookup | None = None,
        clock: Clock | None = None,
        headers: Mapping[str, str] | None = None,
        queue: DeliveryQueue | None = None,
    ) -> None:
        self.url = check_url(url, key="webhook url")
        self.destination = redact_url(url)
        self._secret = hmac_secret.encode() if isinstance(hmac_secret, str) else hmac_secret
        self.include_cmdline = include_cmdline
        self.timeout = timeout
        self.host = host or socket.gethostname()
        self._lookup = lookup
        self._clock: Clock = clock or SystemClock()
        self._headers = dict(headers or {})
        self.queue = queue or DeliveryQueue(f"webhook {self.destination}")

    def payload(self, finding: Finding, *, cleared: bool) -> dict[str, object]:
        """The JSON object that is POSTed (before serialisation)."""
        meta = self._lookup(finding.process) if self._lookup and finding.process else None
        process = process_fields(finding, meta, include_cmdline=self.include_cmdline)
        wall = wall_of(finding.t, monotonic_now=self._clock.monotonic(), wall_now=self._clock.wall())
        return {
            "version": 1,
            "status": "resolved" if cleared else "firing",
            "host": self.host,
            "finding": finding_fields(finding, wall_time=wall),
            "process": process,
            "advice": list(finding.advice),
            "text": chat_text(finding, cleared=cleared, host=self.host, process=process),
        }

    def notify(self, finding: Finding, *, cleared: bool = False) -> None:
        try:
            body = json.dumps(self.payload(finding, cleared=cleared), separators=(",", ":"), allow_nan=False)
            delivery = uuid.uuid4().hex
            self.queue.submit(lambda: self._post(body.encode(), delivery), label=self.destination)
        except Exception:  # never let a rendering bug reach the sampler
            log.exception("webhook_notify_failed", destination=self.destination, kind=finding.kind)

    def _post(self, body: bytes, delivery: str) -> None:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"vramwatch/{__version__}",
            DELIVERY_HEADER: delivery,
            **self._headers,
        }
        if self._secret is not None:
            timestamp = str(int(self._clock.wall()))
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = sign(self._secret, timestamp, body)
        post(self.url, body, headers, self.timeout)

    def counts(self) -> Mapping[str, int]:
        return self.queue.counts()

    def close(self, timeout: float = 5.0) -> None:
        self.queue.close(timeout)
