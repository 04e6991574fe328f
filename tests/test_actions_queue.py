"""The bounded delivery queue: retries with capped jittered backoff, drop-oldest, counting, draining."""

from __future__ import annotations

import random
import threading
import time

import pytest
from conftest import wait_for
from hypothesis import given
from hypothesis import strategies as st
from vramwatch.actions.queue import DeliveryError, DeliveryQueue, backoff_delay


@pytest.fixture
def queues():
    made: list[DeliveryQueue] = []

    def make(**kwargs) -> DeliveryQueue:
        q = DeliveryQueue("test", **kwargs)
        made.append(q)
        return q

    yield make
    for q in made:
        q.close(1.0)


@given(
    attempt=st.integers(min_value=1, max_value=30),
    base=st.floats(min_value=0.0, max_value=10.0),
    cap=st.floats(min_value=0.0, max_value=120.0),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_backoff_is_exponential_capped_and_never_below_half(attempt: int, base: float, cap: float, seed: int) -> None:
    """Each wait lies in [c/2, c] for c = min(cap, base * 2^(attempt-1)): growing, bounded, never zero-spaced."""
    ceiling = min(cap, base * 2.0 ** (attempt - 1))
    delay = backoff_delay(attempt, base=base, cap=cap, rng=random.Random(seed))  # noqa: S311 - jitter under test
    assert ceiling / 2 - 1e-9 <= delay <= ceiling + 1e-9


def test_retry_after_raises_the_wait_but_not_past_the_cap(queues) -> None:
    """A receiver's Retry-After lengthens the backoff, capped at backoff_max_seconds."""
    q = queues(backoff_seconds=0.1, backoff_max_seconds=5.0, rng=random.Random(1))  # noqa: S311 - jitter under test
    assert q.backoff(1, retry_after=3.0) == 3.0
    assert q.backoff(1, retry_after=60.0) == 5.0


def test_retryable_failures_are_retried_until_success(queues) -> None:
    """Two retryable failures then success: one `sent`, no `failed`, three attempts."""
    q = queues(backoff_seconds=0.001, max_attempts=4)
    attempts: list[int] = []

    def job() -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise DeliveryError("HTTP 503", retryable=True)

    q.submit(job)
    assert wait_for(lambda: q.counts()["sent"] == 1)
    assert len(attempts) == 3
    assert q.counts()["failed"] == 0


def test_attempts_are_bounded_and_final_errors_not_retried(queues) -> None:
    """A retryable error stops after max_attempts; a final one after the first attempt; both count `failed`."""
    q = queues(backoff_seconds=0.001, max_attempts=3)
    tries = {"retryable": 0, "final": 0}

    def failing(kind: str):
        def job() -> None:
            tries[kind] += 1
            raise DeliveryError("no", retryable=kind == "retryable")

        return job

    q.submit(failing("retryable"))
    q.submit(failing("final"))
    assert wait_for(lambda: q.counts()["failed"] == 2)
    assert tries == {"retryable": 3, "final": 1}


def test_a_crashing_job_is_counted_and_the_worker_survives(queues) -> None:
    """An unexpected exception in a job counts as failed and the next job is still delivered."""
    q = queues()
    done = threading.Event()

    def crash() -> None:
        raise RuntimeError("bug")

    q.submit(crash)
    q.submit(done.set)
    assert done.wait(5)
    assert wait_for(lambda: dict(q.counts()) == {"sent": 1, "failed": 1, "dropped": 0})


def test_a_full_queue_drops_the_oldest_waiting_job(queues) -> None:
    """With the worker busy and the queue full, the oldest waiting job is dropped and counted; newer ones run."""
    q = queues(maxsize=2)
    release = threading.Event()
    started = threading.Event()
    ran: list[str] = []

    def blocker() -> None:
        started.set()
        release.wait(5)
        ran.append("blocker")

    q.submit(blocker)
    assert started.wait(5)
    for name in ("a", "b", "c", "d"):
        q.submit(lambda name=name: ran.append(name))
    assert q.counts()["dropped"] == 2
    release.set()
    assert wait_for(lambda: q.counts()["sent"] == 3)
    assert ran == ["blocker", "c", "d"]


def test_close_drains_then_refuses(queues) -> None:
    """close() delivers what is queued, then a submit is refused and counted as dropped."""
    q = queues()
    ran: list[int] = []
    for i in range(5):
        q.submit(lambda i=i: ran.append(i))
    q.close(5.0)
    assert ran == [0, 1, 2, 3, 4]
    assert q.submit(lambda: ran.append(99)) is False
    assert dict(q.counts()) == {"sent": 5, "failed": 0, "dropped": 1}


def test_close_gives_up_at_its_deadline_and_counts_the_rest_dropped(queues) -> None:
    """A worker stuck on a hanging delivery cannot hold close() past its timeout; the queued rest is dropped."""
    q = queues()
    release = threading.Event()
    started = threading.Event()

    def hang() -> None:
        started.set()
        release.wait(5)

    q.submit(hang)
    assert started.wait(5)
    q.submit(lambda: None)
    q.submit(lambda: None)
    t0 = time.monotonic()
    q.close(0.2)
    assert time.monotonic() - t0 < 1.0
    assert q.counts()["dropped"] == 2
    release.set()
