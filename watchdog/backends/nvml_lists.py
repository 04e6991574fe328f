"""NVML's process lists at the driver's own cost: one call per list, and lists that answered empty read less often.

Each call of a process list costs the driver time for every process on the card, whatever the list returns: on an
H200 with 64 small CUDA processes, the compute list took 1.9 ms, the (empty) graphics list 0.96 ms and the (empty)
MPS list 0.65 ms a call, against 0.01 ms for the memory figures (`benchmarks/tick_parts.py`,
`benchmarks/results/tick-parts-h200-2026-12-04/`). Two things follow.

- pynvml's functions ask twice: once with no array, for the count, then again to fill an array of twice that
  size. NVML's reference offers the count query as one way and asks callers to allocate room for processes that
  start meanwhile; when the array is too small it answers NVML_ERROR_INSUFFICIENT_SIZE and sets the count it
  needs. `OneCall` keeps its array between ticks, sized for twice the last count, so a tick pays one call, and a
  second only when the list outgrew the array. It serves the `_v2` and `_v3` entry points, whose array holds
  nvml.h's `nvmlProcessInfo_v2_t` (the unversioned one's older struct stays with pynvml).
- On a headless training box the graphics and MPS lists are empty nearly always. `ListCadence` reads a list that
  answered empty again at the first change of the compute list's pids (a new CUDA process may be an MPS server,
  or also draw), and otherwise every `EMPTY_LIST_EVERY` ticks; a list with processes is read at every tick. The
  cost: a process that appears in one of those lists only, while the compute list holds still, is attributed up
  to `EMPTY_LIST_EVERY - 1` ticks late (the card's own memory figures are read at every tick regardless).

No pynvml here: the backend hands over the library's function pointer and its error type.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any, NamedTuple

# nvmlReturn_t values (nvml.h): part of NVML's ABI.
_SUCCESS = 0
_INSUFFICIENT_SIZE = 7

#: An empty graphics or MPS list is read at least this often (ticks), and at every change of the compute list.
EMPTY_LIST_EVERY = 5

#: The array's least room, in entries: a card seldom holds more, so the first tick rarely needs a second call.
_MIN_ROOM = 16


class ProcessInfo(ctypes.Structure):
    """nvml.h's `nvmlProcessInfo_v2_t` (also `nvmlProcessInfo_t`), the entry of the `_v2` and `_v3` lists."""

    _fields_ = (
        ("pid", ctypes.c_uint),
        ("usedGpuMemory", ctypes.c_ulonglong),
        ("gpuInstanceId", ctypes.c_uint),
        ("computeInstanceId", ctypes.c_uint),
    )


class Entry(NamedTuple):
    """One entry of a list, copied out of the array (which the next call writes over)."""

    pid: int
    usedGpuMemory: int
    gpuInstanceId: int
    computeInstanceId: int


class OneCall:
    """A `_v2`/`_v3` process list of NVML read with one driver call (see the module docstring)."""

    __slots__ = ("_array", "_count", "_error", "_fn", "_room")

    def __init__(self, fn: Callable[..., int], error: Callable[[int], BaseException]) -> None:
        self._fn = fn
        self._error = error
        self._count = ctypes.c_uint(0)
        self._room = 0
        self._array: Any = None
        self._grow(_MIN_ROOM)

    def _grow(self, room: int) -> None:
        self._room = room
        self._array = (ProcessInfo * room)()

    def __call__(self, handle: Any) -> list[Entry]:
        count, array = self._count, self._array
        for _ in range(3):  # processes may keep starting between a too-small answer and the next call
            count.value = self._room
            ret = self._fn(handle, ctypes.byref(count), array)
            if ret == _SUCCESS:
                n = count.value
                if 2 * n + 5 > self._room:
                    self._grow(2 * n + 5)  # room for the next tick's newcomers
                return [Entry(p.pid, p.usedGpuMemory, p.gpuInstanceId, p.computeInstanceId) for p in array[:n]]
            if ret != _INSUFFICIENT_SIZE:
                raise self._error(ret)
            self._grow(2 * count.value + 5)
            array = self._array
        raise self._error(_INSUFFICIENT_SIZE)


def one_call(nvml: Any, name: str, error: Callable[[int], BaseException]) -> OneCall | None:
    """`name` (a `_v2` or `_v3` process list) as a `OneCall`, or None where that cannot be had (an unversioned
    name, a pynvml without `_nvmlGetFunctionPointer`, a library without the function): pynvml's own call then."""
    if not name.endswith(("_v2", "_v3")):
        return None
    pointer = getattr(nvml, "_nvmlGetFunctionPointer", None)
    if pointer is None:
        return None
    try:
        fn = pointer(name)
    except Exception:  # FunctionNotFound, or the library unloaded meanwhile: pynvml's call keeps working or failing
        return None
    return OneCall(fn, error)


class ListCadence:
    """Which process lists a device reads at this tick: the compute list always, the others while they hold
    processes, at the first change of the compute list's pids, and every `EMPTY_LIST_EVERY` ticks."""

    __slots__ = ("_compute", "_idle")

    def __init__(self) -> None:
        self._compute: frozenset[int] = frozenset()
        self._idle: dict[str, int] = {}  # list -> ticks since it answered empty (absent: it held processes)

    def compute_read(self, pids: frozenset[int]) -> bool:
        """Note the compute list's pids; True when they changed since the last tick."""
        changed = pids != self._compute
        self._compute = pids
        return changed

    def due(self, kind: str, compute_changed: bool) -> bool:
        """Whether `kind` is read at this tick; asked once a tick per list, so a list skipped counts one more idle
        tick."""
        idle = self._idle.get(kind)
        if idle is None or compute_changed or idle + 1 >= EMPTY_LIST_EVERY:
            return True
        self._idle[kind] = idle + 1
        return False

    def answered(self, kind: str, empty: bool) -> None:
        """Note what a list read at this tick answered: empty starts its idle count, processes end it."""
        if empty:
            self._idle[kind] = 0
        else:
            self._idle.pop(kind, None)
