"""The OOM post-mortem: what the caching allocator held at the instant it gave up.

PyTorch's OOM message says "X is reserved by PyTorch but unallocated"; that figure, together with the
inactive split bytes, tells fragmentation (memory cached in pieces too small for the request, cured by
`PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`) from genuine exhaustion (the tensors fill the card).
The allocator calls its OOM observers after dropping its lock and before raising, so reading the stats
there sees the state of the failed request, before unwinding frees anything. The observer runs in the
thread that allocated, with the GIL held: it must be quick unless a snapshot was asked for, and it must
never raise (an exception would replace the OutOfMemoryError the trainer expects).

With a snapshot directory, allocation history is recorded once CUDA is up and each OOM (at most
`max_snapshots` per process, since cuDNN and user code retry after an OOM) dumps a pickle for
https://pytorch.org/memory_viz. Recording costs a few microseconds per allocation and
host memory per entry; `max_entries` bounds it.

Observers only register with allocators that already exist, so `arm()` runs after CUDA initialisation;
an OOM in the first second after it, or with an allocator backend that has no observers, is still
reported from the `num_ooms` counter at the next sample (`observed: false`, state of that later moment).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from . import protocol
from .probe import TorchProbe

Send = Callable[[dict[str, Any]], None]


class OomRecorder:
    """Attaches the OOM observer and turns each OOM into an `oom` message (and, optionally, a snapshot)."""

    def __init__(
        self,
        probe: TorchProbe,
        send: Send,
        *,
        pid: int,
        snapshot_dir: str | None = None,
        max_snapshots: int = 3,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe = probe
        self._send = send
        self._pid = pid
        self._snapshot_dir = snapshot_dir
        self._max_snapshots = max_snapshots
        self._max_entries = max_entries
        self._clock = clock
        self.observer_attached = False
        self.history_recording = False
        self.snapshots: list[str] = []
        self.observed_by_device: dict[int, int] = {}
        self.errors = 0
        self.disabled = False  # a stopped agent's observer stays attached (torch cannot detach it): no-op

    def arm(self) -> None:
        """Attach the observer and start history recording; call once, after CUDA is initialised."""
        if self._snapshot_dir:
            self.history_recording = self._probe.record_history(self._max_entries)
        self.observer_attached = self._probe.attach_oom_observer(self.observe)

    def observe(self, device: int, alloc: int, capacity: int, device_free: int) -> None:
        """The allocator's callback: (device, bytes asked for, total or allowed bytes, bytes CUDA has free)."""
        if self.disabled:
            return
        try:
            device = int(device)
            self.observed_by_device[device] = self.observed_by_device.get(device, 0) + 1
            snapshot = self._dump_snapshot(device)
            self._send(
                protocol.oom_message(
                    pid=self._pid,
                    t=self._clock(),
                    torch_version=self._probe.torch_version(),
                    device=device,
                    alloc_bytes=int(alloc),
                    capacity_bytes=int(capacity),
                    device_free_bytes=int(device_free),
                    stats=self._probe.memory_stats(device),
                    snapshot=snapshot,
                    observed=True,
                )
            )
        except Exception:
            self.errors += 1

    def late(self, device: int, stats: Mapping[str, Any]) -> None:
        """An OOM seen only as `num_ooms` rising between two samples (no observer, or not yet attached)."""
        if self.disabled:
            return
        try:
            info = self._probe.mem_get_info(device)
            self._send(
                protocol.oom_message(
                    pid=self._pid,
                    t=self._clock(),
                    torch_version=self._probe.torch_version(),
                    device=device,
                    alloc_bytes=None,
                    capacity_bytes=info[1] if info else None,
                    device_free_bytes=info[0] if info else None,
                    stats=stats,
                    snapshot=self._dump_snapshot(device),
                    observed=False,
                )
            )
        except Exception:
            self.errors += 1

    def _dump_snapshot(self, device: int) -> str | None:
        if not self._snapshot_dir or not self.history_recording or len(self.snapshots) >= self._max_snapshots:
            return None
        directory = Path(self._snapshot_dir)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            self.errors += 1
            return None
        path = directory / f"oom-{self._pid}-{len(self.snapshots) + 1}-cuda{device}.pickle"
        if not self._probe.dump_snapshot(os.fspath(path)):
            self.errors += 1
            return None
        self.snapshots.append(os.fspath(path))
        return os.fspath(path)
