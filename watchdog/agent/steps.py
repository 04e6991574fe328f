"""Optimizer steps, counted in the training thread, each with its memory peak.

Why: a run that fits now can die at its first sample images, its first checkpoint save, or at step 2,400
from a slow leak. Seen from outside (NVML, or the agent's 1 Hz samples) a step is invisible; counted here,
each interval between two optimizer steps carries PyTorch's own peak, so the host can tell training steps
from the recurring phases between them and forecast in steps rather than only in seconds.

How: PyTorch calls the global hooks of `torch.optim.optimizer.register_optimizer_step_post_hook` after every
`Optimizer.step()` of every optimizer (8-bit ones included: bitsandbytes' optimizers are `Optimizer`
subclasses), whenever the optimizer was created: the hook is global, read at each step, so an optimizer
made before the agent registered it is counted too. The agent registers it at its first beat after
`import torch` (before CUDA is up), once per process: registering again replaces the hook (`probe.py`).
At each counted step the hook reads the allocator's peaks since the last step and resets them
(`torch.cuda.reset_peak_memory_stats`).

What counts as a training step (the rule): one step of the *primary* optimizer, the first one to step that is
still alive. Other optimizers stepping in the same iteration (a text encoder's, a GAN's discriminator) add no
step. The primary is held by a weak reference, never by id() (an id is reused after garbage collection): when
it is collected (a trainer that rebuilds its optimizer on resume), the next optimizer to step takes over and
the numbering goes on.

What the hook sees, and so where numbering can drift from the trainer's:
- a step the GradScaler skips (inf/nan gradients under fp16) never calls `optimizer.step()`, so no hook
  runs: it is not counted, and its interval is merged into the next counted step's (the peaks were not
  reset). Trainers that count such an iteration anyway (kohya's `global_step` rises on every sync) run
  ahead of these numbers by the skipped steps, a handful while the scale calibrates at the start. (An
  optimizer that handles the scaling itself, `_step_supports_amp_scaling` such as fused Adam, is always
  stepped by the scaler and so always counted: its numbers stay the trainer's.)
- a step whose peaks cannot be read (CUDA not initialised yet, a torch without the counters) is counted all
  the same; the next entry with peaks covers it (`first_step < last_step`), since its peak spans both.

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
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from . import protocol

#: Entries kept between two drains; beyond it neighbours are merged (a 1 Hz drain of steps of 1 ms each).
MAX_PENDING = 4 * protocol.MAX_STEP_ENTRIES


class StepProbe(Protocol):
    """What the step counter needs from torch (implemented by `probe.RealTorchProbe`)."""

    def cuda_initialized(self) -> bool:
        """True once the process initialised CUDA: only then may `current_device` be asked (it would init it)."""

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


class _Primary:
    """The primary optimizer, held weakly: it must not keep an optimizer (and its GPU state) alive."""

    __slots__ = ("_ident", "_ref")

    def __init__(self, optimizer: object) -> None:
        self._ref: weakref.ref[object] | None
        try:
            self._ref = weakref.ref(optimizer)
        except TypeError:  # a class without __weakref__: its id stands in, at the risk of reuse
            self._ref = None
        self._ident = id(optimizer)

    def alive(self) -> bool:
        return self._ref is None or self._ref() is not None

    def is_(self, optimizer: object) -> bool:
        if self._ref is None:
            return id(optimizer) == self._ident
        return self._ref() is optimizer


class StepCounter:
    """The hook's state: counts steps of the primary optimizer and keeps entries until the agent thread drains them."""

    def __init__(self, probe: StepProbe, clock: Callable[[], float] = time.monotonic) -> None:
        self._probe = probe
        self._clock = clock
        self._lock = threading.Lock()
        self._primary: _Primary | None = None
        self._device: int | None = None
        self._step = 0
        self._reported = 0  # the last step an entry covers: the next entry starts after it
        self._last_end: float | None = None
        self._pending: list[list[float]] = []
        self.errors = 0
        self.first_error: str | None = None  # repr of the first exception the hook swallowed
        self.disabled = False  # set when its agent stops: a hook left registered then does nothing
        self.started = clock()

    @property
    def steps(self) -> int:
        return self._step

    def _counts(self, optimizer: object) -> bool:
        """Whether this optimizer's step is a training step: it is the primary, or the primary is gone."""
        primary = self._primary
        if primary is None or not primary.alive():
            self._primary = _Primary(optimizer)
            return True
        return primary.is_(optimizer)

    def on_step(self, optimizer: object) -> None:
        """The body of the global post-step hook (training thread): never raises."""
        if self.disabled:
            return
        try:
            if not self._counts(optimizer):
                return
            # Counted before anything can fail, so that the numbers stay the trainer's.
            self._step += 1
            device = self._device
            if device is None and self._probe.cuda_initialized():
                device = self._device = self._probe.current_device()
            peaks = self._probe.take_step_peaks(device) if device is not None else None
            if peaks is None:
                return  # the next entry with peaks covers this step: nothing was reset
            now = self._clock()
            start = self._last_end if self._last_end is not None else self.started
            self._last_end = now
            entry: list[float] = [self._reported + 1, self._step, now, max(0.0, now - start), *peaks]
            self._reported = self._step
            with self._lock:
                self._pending.append(entry)
                if len(self._pending) > MAX_PENDING:
                    self._pending = merge(self._pending, MAX_PENDING // 2)
        except Exception as exc:
            self.errors += 1
            if self.first_error is None:
                self.first_error = repr(exc)

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
