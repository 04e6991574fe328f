"""Replaying a recorded trace as if it were a live GPU: the backend behind `vramwatch replay` and `serve --replay`.

Each `read()` returns the next recorded tick, stamped with its recorded time `t`, and carries the process
metadata recorded with it, so attribution does not look up pids that belong to another machine and another
time. After the last tick `read()` raises `EOFError`, or, with `loop=True`, starts again with time shifted
forward (monotonic `t`, wall time and process start times alike: each pass looks like a new run, never like
the same processes going back in time).

The backend does not sleep. Batch replay (`vramwatch replay`) reads as fast as it can; a live-paced replay
(`serve --replay`) sleeps between reads by the difference of `next_t()` and the `t` it last read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator
from pathlib import Path
from typing import Any

from ..model import ProcessMeta, Reading
from ..trace import OnError, PathLike, iter_ticks, read_header
from ..typing import ProcessInspector


class _RecordedInspector:
    """The metadata a trace recorded: the latest seen for each pid; Nones for a pid it never described."""

    def __init__(self) -> None:
        self.table: dict[int, ProcessMeta] = {}
        self.visible = True

    def inspect(self, pid: int) -> ProcessMeta:
        return self.table.get(pid, ProcessMeta(pid=pid, start_time=None))

    def pid_namespace_matches(self) -> bool:
        # As recorded: a trace made where host pids were not visible replays with processes withheld.
        return self.visible


def _shift_meta(m: ProcessMeta, seconds: float) -> ProcessMeta:
    return dataclasses.replace(
        m,
        start_time=None if m.start_time is None else m.start_time + seconds,
        root_start_time=None if m.root_start_time is None else m.root_start_time + seconds,
    )


class ReplayBackend:
    """A Backend reading a trace file (plain or gzip); see the module docstring."""

    kind = "replay"

    def __init__(self, path: PathLike, *, on_error: OnError | None = None, loop: bool = False) -> None:
        self.path = Path(path)
        self.header: dict[str, Any] = read_header(self.path)  # TraceError now, not at the first read
        self.loop = loop
        self._on_error = on_error
        self._inspector = _RecordedInspector()
        self._ticks: Generator[tuple[Reading, bool], None, None] | None = iter_ticks(self.path, on_error)
        self._peeked: tuple[Reading, bool] | None = None
        self._shift = 0.0  # seconds added to every time of the current pass
        self._first_t: float | None = None
        self._last_t: float | None = None
        self._pass_ticks = 0
        self.ticks_read = 0

    @property
    def interval_seconds(self) -> float | None:
        """The interval the trace was recorded at, when its header says so."""
        value = self.header.get("interval_seconds")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            return None
        return float(value)

    def _pull(self) -> tuple[Reading, bool] | None:
        """The next tick of the file, starting a new pass when looping; None at the end."""
        if self._ticks is None:
            return None
        item = next(self._ticks, None)
        if item is None and self.loop and self._pass_ticks > 0:
            self._restart()
            item = next(self._ticks, None)
        if item is None:
            self._ticks = None
            return None
        self._pass_ticks += 1
        if self._first_t is None:
            self._first_t = item[0].t
        self._last_t = item[0].t
        return self._shifted(item) if self._shift else item

    def _restart(self) -> None:
        first = self._first_t if self._first_t is not None else 0.0
        last = self._last_t if self._last_t is not None else first
        # The next pass starts one interval after this one ended, so time keeps moving forward.
        self._shift += (last - first) + (self.interval_seconds or 1.0)
        self._first_t = self._last_t = None
        self._pass_ticks = 0
        # Errors were reported on the first pass; the same lines are skipped silently after that.
        self._ticks = iter_ticks(self.path, None)

    def _shifted(self, item: tuple[Reading, bool]) -> tuple[Reading, bool]:
        reading, visible = item
        shift = self._shift
        return (
            dataclasses.replace(
                reading,
                t=None if reading.t is None else reading.t + shift,
                wall_time=None if reading.wall_time is None else reading.wall_time + shift,
                meta=tuple(_shift_meta(m, shift) for m in reading.meta),
            ),
            visible,
        )

    def next_t(self) -> float | None:
        """The `t` of the tick the next `read()` returns, without consuming it; None when there is none."""
        if self._peeked is None:
            self._peeked = self._pull()
        return None if self._peeked is None else self._peeked[0].t

    def read(self) -> Reading:
        item = self._peeked if self._peeked is not None else self._pull()
        self._peeked = None
        if item is None:
            raise EOFError(f"end of trace {self.path}")
        reading, visible = item
        self._inspector.visible = visible
        for m in reading.meta:
            self._inspector.table[m.pid] = m
        self.ticks_read += 1
        return reading

    def inspector(self) -> ProcessInspector:
        return self._inspector

    def describe(self) -> dict[str, str]:
        """The header's scalar fields as strings (the GPU list is left out) plus `source`: the file. The header's
        `backend` (what the trace was recorded from) is `recorded_backend` here: a header that says `nvml` must not
        make a replay look like a live card (`typing.described` names it `replay`)."""
        out = {
            key: str(value).lower() if isinstance(value, bool) else str(value)
            for key, value in self.header.items()
            if isinstance(value, (str, int, float, bool))
        }
        recorded = out.pop("backend", None)
        if recorded is not None:
            out["recorded_backend"] = recorded
        out["source"] = str(self.path)
        return out

    def close(self) -> None:
        ticks, self._ticks = self._ticks, None
        self._peeked = None
        if ticks is not None:
            ticks.close()
