"""The real clock; tests use `vramwatch.testing.FakeClock` instead."""

from __future__ import annotations

import time

from .typing import Clock


class SystemClock:
    """`time.monotonic` for deadlines, `time.time` for display: the OS's clocks behind the Clock protocol."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class ScaledClock:
    """Time running `factor` times faster than `base`'s, for `serve --simulate SCENARIO --speed N`.

    The simulator, the detectors' windows and the wall-clock stamps all read this one clock, so a story that
    takes ten minutes plays out, consistently, in thirty seconds (a demo; the browser tests). Only simulated
    and replayed cards may be sped up: a real GPU runs at its own pace.
    """

    def __init__(self, factor: float, base: Clock | None = None) -> None:
        self.factor = factor
        self._base = base or SystemClock()
        self._m0 = self._base.monotonic()
        self._w0 = self._base.wall()

    def monotonic(self) -> float:
        return self._m0 + (self._base.monotonic() - self._m0) * self.factor

    def wall(self) -> float:
        return self._w0 + (self._base.monotonic() - self._m0) * self.factor

    def sleep(self, seconds: float) -> None:
        self._base.sleep(seconds / self.factor)
