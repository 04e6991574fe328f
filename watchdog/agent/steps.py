"""Optimizer steps, counted in the training thread, each with its memory peak.

Why: a run that fits now can die at its first sample images, its first checkpoint save, or at step 2,400
from a slow leak. Seen from outside (NVML, or the agent's 1 Hz samples) a step is invisible; counted here,
each interval between two optimizer steps carries PyTorch's own peak, so the host can tell training steps
from the recurring phases between them and forecast in steps rather than only in seconds.

How: PyTorch calls the global hooks of `torch.optim.optimizer.register_optimizer_step_post_hook` after every
`Optimizer.step()` of every optimizer (8-bit ones included: bitsandbytes' optimizers are `Optimizer`
subclasses). At each step of the first optimizer to step (a run with a second optimizer, e.g. for a text
encoder, is counted once per iteration) the hook reads the allocator's peaks since the last step and
resets them (`torch.cuda.reset_peak_memory_stats`).

Side effect, said plainly: the trainer's own `torch.cuda.max_memory_allocated()` then reads the peak since
the last optimizer step, not since the start. That is why steps are counted only when asked
(`VRAMWATCH_AGENT_STEPS=1`, which `vramwatch run` and `vramwatch probe` set).

Cost: one read of the allocator's counters (`memory_stats_as_nested_dict`, a copy under its mutex) and one
reset per step, in the training thread: tens of microseconds against steps of tenths of seconds or more.
The hook only appends to a list; the agent thread drains it once a second. The hook never raises into the
trainer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from . import protocol

#: Entries kept between two drains; beyond it neighbours are merged (a 1 Hz drain of steps of 1 ms each).
MAX_PENDING = 4 * protocol.MAX_STEP_ENTRIES


class StepProbe(Protocol):
    """What the step counter needs from torch (implemented by `probe.RealTorchProbe`)."""

    def current_device(self) -> int | None: ...

    def take_step_peaks(self, device: int) -> tuple[int, int, int, int, int] | None:
        """(peak allocated, peak reserved, allocated, reserved, inactive split) since the last call; resets peaks."""


def merge(entries: list[list[float]], limit: int) -> list[list[float]]:
    """At most `limit` entries: neighbours merged into ranges whose peaks are the largest of the range."""
    if len(entries) <= limit:
        return entries
    size = -(-len(entries) // limit)
    merged: list[list[float]] = []
    for i in range(0, len(entries), size):
        group = entries[i : i + size]
        first, last = group[0], group[-1]
        merged.append(
            [
                first[0],
                last[1],
                last[2],
                sum(e[3] for e in group),
                max(e[4] for e in group),
                max(e[5] for e in group),
                last[6],
                last[7],
                last[8],
            ]
        )
    return merged


class StepCounter:
    """The hook's state: counts steps of one optimizer and keeps entries until the agent thread drains them."""

    def __init__(self, probe: StepProbe, clock: Callable[[], float] = time.monotonic) -> None:
        self._probe = probe
        self._clock = clock
        self._lock = threading.Lock()
        self._optimizer: int | None = None  # id() of the optimizer whose steps are counted
        self._device: int | None = None
        self._step = 0
        self._last_end: float | None = None
        self._pending: list[list[float]] = []
        self.errors = 0
        self.started = clock()

    @property
    def steps(self) -> int:
        return self._step

    def on_step(self, optimizer: object) -> None:
        """The body of the global post-step hook (training thread): never raises."""
        try:
            if self._optimizer is None:
                self._optimizer = id(optimizer)
            elif id(optimizer) != self._optimizer:
                return
            device = self._device
            if device is None:
                device = self._device = self._probe.current_device()
                if device is None:
                    return
            peaks = self._probe.take_step_peaks(device)
            now = self._clock()
            if peaks is None:
                return
            self._step += 1
            start = self._last_end if self._last_end is not None else self.started
            self._last_end = now
            entry: list[float] = [self._step, self._step, now, max(0.0, now - start), *peaks]
            with self._lock:
                self._pending.append(entry)
                if len(self._pending) > MAX_PENDING:
                    self._pending = merge(self._pending, MAX_PENDING // 2)
        except Exception:
            self.errors += 1

    def drain(self) -> tuple[int | None, list[list[float]]]:
        """(device, entries) since the last drain, merged to fit one message (agent thread)."""
        with self._lock:
            pending, self._pending = self._pending, []
        return self._device, merge(pending, protocol.MAX_STEP_ENTRIES)


def message(counter: StepCounter, *, pid: int, t: float) -> dict[str, Any] | None:
    """The `steps` message for what the counter holds now, or None when no step ended since the last one."""
    device, entries = counter.drain()
    if device is None or not entries:
        return None
    return protocol.steps_message(pid=pid, t=t, device=device, entries=entries)
