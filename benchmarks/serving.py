"""`vramwatch serve` as its own process, for the benchmarks that measure a running daemon (`tick.py --daemon`,
`rss.py --serve`): started on a free port, waited for, scraped as Prometheus would, stopped."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

#: Prometheus's default scrape interval: a scrape is part of the daemon's real load.
SCRAPE_EVERY = 15


@contextmanager
def running_serve(python: str, *args: str, log_level: str = "info") -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`python -m vramwatch --log-level LOG_LEVEL serve ARGS` on a free port, past its start-up (first answer,
    then 5 s of ticks): (the process, its port). Its output goes to a file, never a pipe that nobody reads while
    measuring (a full one would block serve); it is shown if serve does not answer within 30 s."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    cmd = [python, "-m", "vramwatch", "--log-format", "json", "--log-level", log_level, "serve"]
    cmd += ["--listen", f"127.0.0.1:{port}", *args]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    scrape(port, timeout=1)
                    break
                except OSError as exc:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        log.seek(0)
                        raise SystemExit(f"serve did not answer: {log.read().decode(errors='replace')}") from exc
                    time.sleep(0.2)
            time.sleep(5)  # past start-up imports and the first ticks
            yield proc, port
        finally:
            proc.terminate()
            proc.wait(10)


def scrape(port: int, timeout: float = 5) -> bytes:
    """One GET of serve's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        body: bytes = r.read()
    return body


def each_second(port: int, seconds: float, read: Callable[[], T]) -> list[T]:
    """`read()` once a second for `seconds`, with a scrape every `SCRAPE_EVERY` seconds meanwhile."""
    samples: list[T] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if samples and len(samples) % SCRAPE_EVERY == 0:
            scrape(port)
        samples.append(read())
        time.sleep(1)
    return samples
