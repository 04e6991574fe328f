"""What every workload script shares: JSON-line events on stdout, the top-level OOM handler, waiting to be stopped.

Each event is one line `{"event": ..., "t": time.monotonic(), "wall": time.time(), "pid": ..., ...}`. On Linux
`time.monotonic()` is CLOCK_MONOTONIC, the same clock in every process of the host, so a driver script can
compare a workload's "oom" time with the watchdog's forecast directly. A real `torch.cuda.OutOfMemoryError`
is caught at the top, reported with the allocator's own figures, and the process exits with OOM_EXIT (3).
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import sys
import time
from collections.abc import Callable
from typing import Any

GIB = 1 << 30
MIB = 1 << 20
OOM_EXIT = 3

_STATS = {
    "allocated_bytes": "allocated_bytes.all.current",
    "allocated_peak_bytes": "allocated_bytes.all.peak",
    "reserved_bytes": "reserved_bytes.all.current",
    "reserved_peak_bytes": "reserved_bytes.all.peak",
    "active_bytes": "active_bytes.all.current",
    "inactive_split_bytes": "inactive_split_bytes.all.current",
    "requested_bytes": "requested_bytes.all.current",
    "segments": "segment.all.current",
    "num_alloc_retries": "num_alloc_retries",
    "num_ooms": "num_ooms",
    "num_device_alloc": "num_device_alloc",
    "num_device_free": "num_device_free",
}
_TRIED = re.compile(r"Tried to allocate ([0-9.]+) (GiB|MiB|KiB|B)")
_UNITS = {"GiB": GIB, "MiB": MIB, "KiB": 1024, "B": 1}


class Stop(BaseException):
    """Raised by the SIGTERM handler: a requested stop, not an error."""


def emit(event: str, **fields: Any) -> None:
    record = {"event": event, "t": time.monotonic(), "wall": time.time(), "pid": os.getpid(), **fields}
    sys.stdout.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")
    sys.stdout.flush()


def memory_summary(torch: Any, device: int | None = None) -> dict[str, Any]:
    """The caching allocator's figures (torch.cuda.memory_stats) plus the driver's free/total."""
    stats = torch.cuda.memory_stats(device)
    out: dict[str, Any] = {name: stats.get(key) for name, key in _STATS.items()}
    try:
        free, total = torch.cuda.mem_get_info(device)
    except RuntimeError:  # a broken context after an error: the allocator figures still stand
        free = total = None
    out["free_bytes"] = free
    out["total_bytes"] = total
    return out


def alloc_conf() -> dict[str, str | None]:
    """The allocator settings the run honours (torch reads them from the environment at the first allocation)."""
    return {name: os.environ.get(name) for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")}


def tried_to_allocate(message: str) -> int | None:
    m = _TRIED.search(message)
    return int(float(m.group(1)) * _UNITS[m.group(2)]) if m else None


def wait_until_stopped() -> str:
    """Block until stdin reaches EOF (when it is a pipe: the driver closed it) or SIGTERM / Ctrl-C arrives."""
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError):
        mode = 0
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISREG(mode):
        while sys.stdin.readline():
            pass
        return "stdin_closed"
    while True:  # a terminal or /dev/null: only a signal ends the wait
        time.sleep(3600)


def run(main: Callable[[], int], torch: Any, device: int | None = None) -> None:
    """Run `main`, report how it ended as an event, and exit: 0 done or stopped, 3 on a CUDA OOM, 130 on Ctrl-C."""

    def on_term(_signum: int, _frame: object) -> None:
        raise Stop

    signal.signal(signal.SIGTERM, on_term)
    try:
        code = main()
    except torch.cuda.OutOfMemoryError as exc:
        message = str(exc)
        emit(
            "oom",
            error=message,
            tried_to_allocate_bytes=tried_to_allocate(message),
            memory=memory_summary(torch, device),
        )
        emit("exit", code=OOM_EXIT, reason="oom")
        sys.exit(OOM_EXIT)
    except Stop:
        emit("exit", code=0, reason="sigterm")
        sys.exit(0)
    except KeyboardInterrupt:
        emit("exit", code=130, reason="interrupted")
        sys.exit(130)
    emit("exit", code=code, reason="done")
    sys.exit(code)


def pace(started: float, step_seconds: float) -> None:
    """Sleep out the rest of a step so that steps start every `step_seconds` (never sleeps when behind)."""
    left = step_seconds - (time.monotonic() - started)
    if left > 0:
        time.sleep(left)
