"""Delivery off the sampler thread: a bounded queue drained by one worker thread, with bounded retries.

A notifier's `notify` runs on the 1 Hz sampler thread and must return at once, whatever the receiver does.
So it only builds the request and `submit`s a job here; one worker thread per queue performs it. A job
raises `DeliveryError` to say it failed, and whether trying again could help (a 503 or a refused
connection may heal; a 400 will not). Retries wait an exponential backoff with jitter (so a fleet of
daemons does not hammer a receiver that comes back in step), capped, and stop after `max_attempts`.

When the receiver is dead and events keep coming, the queue fills. It then drops the *oldest* event, not
the new one: the newest event describes the present (a finding's `resolved` supersedes its `firing`), and
dropping new events would keep a dead receiver's backlog forever stale. Every outcome is counted by result
(`sent`, `failed`, `dropped`): the exporter serves the sum as `vramwatch_notifications_total{result}`.

`close(timeout)` stops accepting, lets the worker drain what it can until the deadline and counts the
rest as dropped; the worker is a daemon thread, so a receiver hanging at exit cannot hold the process.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from types import MappingProxyType

import structlog

log = structlog.get_logger("vramwatch.actions")

Job = Callable[[], None]
RESULTS = ("sent", "failed", "dropped")


class DeliveryError(Exception):
    """A delivery attempt failed; `retryable` says whether another attempt could succeed.

    `retry_after` is the receiver's own hint (HTTP `Retry-After`), in seconds, when it gave one.
    """

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


def backoff_delay(
    attempt: int, *, base: float, cap: float, rng: random.Random, retry_after: float | None = None
) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): exponential from `base`, capped at
    `cap`, with "equal jitter" (half fixed, half random, so retries never collapse to zero delay); at least
    the receiver's `retry_after`, within the cap."""
    ceiling = min(cap, base * 2.0 ** (attempt - 1))
    delay = ceiling / 2 + rng.uniform(0, ceiling / 2)
    if retry_after is not None and retry_after > delay:
        delay = min(retry_after, cap)
    return delay


class DeliveryQueue:
    """A bounded FIFO of jobs and the one thread that performs them, with retries and outcome counters."""

    def __init__(
        self,
        name: str,
        *,
        maxsize: int = 256,
        max_attempts: int = 4,
        backoff_seconds: float = 1.0,
        backoff_max_seconds: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if backoff_seconds < 0 or backoff_max_seconds < 0:
            raise ValueError("backoff must be >= 0")
        self.name = name
        self.maxsize = maxsize
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._jobs: deque[tuple[str, Job]] = deque()
        self._cond = threading.Condition()
        self._counts = dict.fromkeys(RESULTS, 0)
        self._closing = False
        self._deadline: float | None = None
        self._abandon = threading.Event()  # set when close() gave up waiting: cut backoff sleeps short
        self._thread = threading.Thread(target=self._run, name=f"vramwatch-{name}", daemon=True)
        self._thread.start()

    def submit(self, job: Job, *, label: str = "") -> bool:
        """Queue `job`; never blocks on delivery. False when the queue is closed (the job is counted dropped).

        `label` names the destination in logs; it must not contain secrets (give a host, not a URL).
        """
        with self._cond:
            if self._closing:
                self._counts["dropped"] += 1
                return False
            if len(self._jobs) >= self.maxsize:
                old_label, _ = self._jobs.popleft()
                self._counts["dropped"] += 1
                log.warning("notification_dropped", queue=self.name, destination=old_label, reason="queue full")
            self._jobs.append((label, job))
            self._cond.notify()
        return True

    def counts(self) -> Mapping[str, int]:
        """Outcomes so far by result (`sent`, `failed`, `dropped`); a snapshot, safe from any thread."""
        with self._cond:
            return MappingProxyType(dict(self._counts))

    def pending(self) -> int:
        """Jobs waiting (not counting the one being delivered)."""
        with self._cond:
            return len(self._jobs)

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting jobs, deliver what can be delivered within `timeout` seconds, drop the rest."""
        with self._cond:
            if not self._closing:
                self._closing = True
                self._deadline = time.monotonic() + max(0.0, timeout)
                self._cond.notify_all()
        self._thread.join(max(0.0, timeout))
        with self._cond:
            left = len(self._jobs)
            self._jobs.clear()
            self._counts["dropped"] += left
        self._abandon.set()
        if left:
            log.warning("notifications_dropped_at_close", queue=self.name, dropped=left)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closing:
                    self._cond.wait()
                if not self._jobs:
                    return
                label, job = self._jobs.popleft()
            self._deliver(label, job)

    def _count(self, result: str) -> None:
        with self._cond:
            self._counts[result] += 1

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        return backoff_delay(
            attempt, base=self.backoff_seconds, cap=self.backoff_max_seconds, rng=self._rng, retry_after=retry_after
        )

    def _deliver(self, label: str, job: Job) -> None:
        for attempt in range(1, self.max_attempts + 1):
            try:
                job()
            except DeliveryError as exc:
                if not exc.retryable or attempt == self.max_attempts:
                    self._count("failed")
                    log.warning(
                        "notification_failed", queue=self.name, destination=label, attempts=attempt, error=str(exc)
                    )
                    return
                delay = self.backoff(attempt, exc.retry_after)
                with self._cond:
                    deadline = self._deadline
                if deadline is not None and time.monotonic() + delay > deadline:
                    self._count("failed")
                    log.warning("notification_failed", queue=self.name, destination=label, error="shutting down")
                    return
                log.info("notification_retry", queue=self.name, destination=label, attempt=attempt, delay=delay)
                if self._abandon.wait(delay):
                    self._count("failed")
                    return
            except Exception:  # a bug in one job must not kill the worker and silence every later alert
                self._count("failed")
                log.exception("notification_job_crashed", queue=self.name, destination=label)
                return
            else:
                self._count("sent")
                return
