"""Read-only access to a history series as two chronological arrays, and lookups on them.

The detectors read every series at every tick, mostly to ask "the least (or most) it held since t". A `View`
of a history `Series` copies nothing: it keeps the series' append-only arrays and an index range, answers
those questions from the series' suffix staircases in O(log n) while no point was appended since it was
made, and copies its points into `t` and `v` only when a detector walks them (a fit, a young run's warm-up).
A `View(t, v)` over plain arrays (tests, ad-hoc series) answers the same questions by scanning.
A view asked from a thread other than the one that appends (a scrape reading a rate) is asked under
`History.lock`, so that it never sees an append half done.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence

from ..history import Series

#: How many points before the newest one holding a series' least value `View.low_since` looks at.
LOW_TRIES = 16


class View:
    """A series in time order: `t` monotonic seconds, `v` values (bytes). Never changes once made."""

    __slots__ = ("_copy", "_end", "_i", "_j", "_series", "_stamp", "_ta", "_va")

    def __init__(self, t: array[float], v: array[float]) -> None:
        self._ta, self._va = t, v
        self._i, self._j = 0, len(t)
        self._series: Series | None = None
        self._stamp = 0
        self._end = len(t)
        self._copy: tuple[array[float], array[float]] | None = (t, v)

    @classmethod
    def of(cls, series: Series, since: float | None = None) -> View:
        """The whole series (its points at or after `since`), without copying it."""
        t, v, first, end = series.storage()
        if since is not None:
            first = bisect_left(t, since, first, end)
        out = cls.__new__(cls)
        out._ta, out._va, out._i, out._j, out._end = t, v, first, end, end
        out._series, out._stamp, out._copy = series, series.appended, None
        return out

    def _sub(self, i: int, j: int) -> View:
        if i == self._i and j == self._j:
            return self
        out = View.__new__(View)
        out._ta, out._va, out._i, out._j, out._end = self._ta, self._va, i, j, self._end
        out._series, out._stamp, out._copy = self._series, self._stamp, None
        return out

    def _copied(self) -> tuple[array[float], array[float]]:
        if self._copy is None:
            self._copy = (self._ta[self._i : self._j], self._va[self._i : self._j])
        return self._copy

    @property
    def t(self) -> array[float]:
        return self._copied()[0]

    @property
    def v(self) -> array[float]:
        return self._copied()[1]

    def __len__(self) -> int:
        return self._j - self._i

    @property
    def now(self) -> float:
        """The time of the newest point (the view must not be empty)."""
        return self._ta[self._j - 1]

    @property
    def first(self) -> float:
        """The time of the oldest point (the view must not be empty)."""
        return self._ta[self._i]

    @property
    def last_value(self) -> float:
        return self._va[self._j - 1]

    @property
    def previous_value(self) -> float | None:
        """The value before the newest (None with fewer than two points)."""
        return self._va[self._j - 2] if self._j - self._i >= 2 else None

    def before(self, t_end: float) -> View:
        """The points at or before `t_end` (the series as it was then)."""
        return self._sub(self._i, bisect_right(self._ta, t_end, self._i, self._j))

    def since(self, t0: float) -> View:
        return self._sub(bisect_left(self._ta, t0, self._i, self._j), self._j)

    def between(self, t0: float, t1: float) -> View:
        """The points with t0 <= t < t1."""
        return self._sub(bisect_left(self._ta, t0, self._i, self._j), bisect_left(self._ta, t1, self._i, self._j))

    def value_at(self, t: float) -> float | None:
        """The last value at or before `t` (None when the series starts later)."""
        k = bisect_right(self._ta, t, self._i, self._j)
        return self._va[k - 1] if k > self._i else None

    def min(self) -> float:
        """The least value (the view must not be empty)."""
        return self._lowest(self._i, self._j)

    def max(self) -> float:
        """The largest value (the view must not be empty)."""
        return self._highest(self._i, self._j)

    def tail_max(self, k: int) -> float:
        """The largest of the newest `k` values."""
        return max(self._va[max(self._i, self._j - k) : self._j])

    def max_between(self, t0: float, t1: float) -> float | None:
        """The largest value with t0 <= t < t1 (None when no point lies there)."""
        i, j = bisect_left(self._ta, t0, self._i, self._j), bisect_left(self._ta, t1, self._i, self._j)
        return self._highest(i, j) if j > i else None

    def min_between(self, t0: float, t1: float) -> float | None:
        i, j = bisect_left(self._ta, t0, self._i, self._j), bisect_left(self._ta, t1, self._i, self._j)
        return self._lowest(i, j) if j > i else None

    def still(self) -> bool:
        """True when every point of the view holds one value. An empty view is still."""
        return self._holds_from(self._i)

    def holds_since(self, t0: float) -> bool:
        """True when every point at or after `t0` holds the newest value."""
        return self._holds_from(bisect_left(self._ta, t0, self._i, self._j))

    def _holds_from(self, i: int) -> bool:
        # The series' carried run while the view is live (one comparison), else a scan of the points.
        j = self._j
        s = self._live(j)
        if s is not None:
            return s.run_start() <= i
        return i >= j or min(self._va[i:j]) == max(self._va[i:j])

    def last_below(self, x: float) -> float | None:
        """The time of the newest point whose value is below `x` (None when none is): every point after it holds
        at least `x`. A staircase bisection while the view is live, else a scan from the newest point."""
        i, j = self._i, self._j
        s = self._live(j)
        if s is not None:
            q = s.last_below(x, i)
        else:
            va = self._va
            q = next((k for k in range(j - 1, i - 1, -1) if va[k] < x), -1)
        return self._ta[q] if q >= 0 else None

    def low_since(
        self, t0: float, kept: Callable[[float, float | None, float | None], bool]
    ) -> tuple[float, bool] | None:
        """The least value at or after `t0`, and whether `kept(value, before, after)` holds for one of the points
        holding it (a neighbour None where the view ends): the newest such point, else up to `LOW_TRIES` points
        before it. None when no point lies there. A staircase lookup while the view is live, else a scan."""
        i, j = bisect_left(self._ta, t0, self._i, self._j), self._j
        if i >= j:
            return None
        va = self._va
        k = self._newest_lowest(i, j)
        low = va[k]
        # A sawtooth holds its least value at every trough, and the newest may lie between two high teeth.
        for q in range(k, max(i, k - LOW_TRIES) - 1, -1):
            if va[q] == low and kept(low, va[q - 1] if q > self._i else None, va[q + 1] if q + 1 < j else None):
                return low, True
        return low, False

    def newest_low_since(self, t0: float) -> tuple[float, float] | None:
        """The least value at or after `t0` and the time of the newest point holding it (None when no point lies
        there). A staircase lookup while the view is live, else a scan."""
        i, j = bisect_left(self._ta, t0, self._i, self._j), self._j
        if i >= j:
            return None
        k = self._newest_lowest(i, j)
        return self._va[k], self._ta[k]

    def _newest_lowest(self, i: int, j: int) -> int:
        # The index of the newest point holding the least value of [i, j), j the view's end.
        s = self._live(j)
        if s is not None:
            return s.suffix_argmin(i)
        seg = self._va[i:j]
        return j - 1 - seg[::-1].index(min(seg))

    def _live(self, j: int) -> Series | None:
        # The staircases describe the series as it is now: they answer a range ending at the newest point, and
        # only while nothing was appended since this view was made.
        s = self._series
        return s if s is not None and j == self._end and s.appended == self._stamp else None

    def _lowest(self, i: int, j: int) -> float:
        s = self._live(j)
        return s.suffix_min(i) if s is not None else min(self._va[i:j])

    def _highest(self, i: int, j: int) -> float:
        s = self._live(j)
        return s.suffix_max(i) if s is not None else max(self._va[i:j])


EMPTY_VIEW = View(array("d"), array("d"))


def first_still(ts: Sequence[float], vs: Sequence[float], settle_seconds: float, noise_bytes: float) -> float | None:
    """When the first stretch of `settle_seconds` whose points stay within `noise_bytes` of each other begins
    (None: the points never hold still that long)."""
    start = low = high = None
    for t, v in zip(ts, vs, strict=True):
        if start is None or low is None or high is None or max(high, v) - min(low, v) > noise_bytes:
            start, low, high = t, v, v
        else:
            low, high = min(low, v), max(high, v)
        if t - start >= settle_seconds:
            return start
    return None


def view(series: Series | None, since: float | None = None) -> View:
    """The whole series (its points at or after `since`), oldest first, without copying it."""
    if series is None or len(series) == 0:
        return EMPTY_VIEW
    return View.of(series, since)
