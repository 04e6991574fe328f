"""Fast, read-only access to a history series as two chronological arrays, and lookups on them.

`Series.window()` builds Python tuples point by point (about 1 ms for an hour at 1 Hz); the detectors read
every series at every tick, so they slice the ring's arrays instead (a few microseconds, done in C). The
arrays are copies: nothing here can change the history.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass

from ..history import Series


@dataclass(frozen=True, slots=True)
class View:
    """A series in time order: `t` monotonic seconds, `v` values (bytes)."""

    t: array[float]
    v: array[float]

    def __len__(self) -> int:
        return len(self.t)

    @property
    def now(self) -> float:
        return self.t[-1]

    def before(self, t_end: float) -> View:
        """The points at or before `t_end` (the series as it was then)."""
        i = bisect_right(self.t, t_end)
        return View(self.t[:i], self.v[:i])

    def since(self, t0: float) -> View:
        i = bisect_left(self.t, t0)
        return View(self.t[i:], self.v[i:])

    def value_at(self, t: float) -> float | None:
        """The last value at or before `t` (None when the series starts later)."""
        i = bisect_right(self.t, t)
        return self.v[i - 1] if i else None

    def max_between(self, t0: float, t1: float) -> float | None:
        """The largest value with t0 <= t < t1 (None when no point lies there)."""
        i, j = bisect_left(self.t, t0), bisect_left(self.t, t1)
        return max(self.v[i:j]) if j > i else None

    def min_between(self, t0: float, t1: float) -> float | None:
        i, j = bisect_left(self.t, t0), bisect_left(self.t, t1)
        return min(self.v[i:j]) if j > i else None


EMPTY_VIEW = View(array("d"), array("d"))


def view(series: Series | None) -> View:
    """The whole series as arrays, oldest first.

    `Series.arrays()` copies the ring in two slices, far cheaper than building tuples point by point.
    """
    if series is None or len(series) == 0:
        return EMPTY_VIEW
    return View(*series.arrays())
