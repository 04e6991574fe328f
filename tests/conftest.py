"""Helpers shared by the test modules: waiting on background threads, and child processes to signal.

`wait_for` is imported (`from conftest import wait_for`); `spawn` is a fixture.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

Spawn = Callable[..., subprocess.Popen[str]]


def wait_for(predicate: Callable[[], object], timeout: float = 5.0, *, interval: float = 0.01) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass; returns its last answer, so a test asserts it.

    For work another thread or process finishes (a queue drained, a hook run); polling keeps the fast case
    fast and the slow machine green.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def terminate(proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float = 10.0) -> None:
    """Stop a server the test started: SIGTERM (its graceful path), then SIGKILL if it does not exit in time."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start `python -S -c code *args` children that print "ready" once set up; killed at the end of the test."""
    children: list[subprocess.Popen[str]] = []

    def start(code: str, *args: str) -> subprocess.Popen[str]:
        child = subprocess.Popen(
            [sys.executable, "-S", "-c", code, *args], stdout=subprocess.PIPE, text=True, bufsize=1
        )
        children.append(child)
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        return child

    yield start
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait(5)
        if child.stdout:
            child.stdout.close()
