"""The real clock; tests use `vramwatch.testing.FakeClock` instead."""

from __future__ import annotations

import time


class SystemClock:
    """`time.monotonic` for deadlines, `time.time` for display: the OS's clocks behind the Clock protocol."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)
