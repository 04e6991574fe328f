"""The agent's only door into PyTorch, behind a Protocol so the thread can be tested with a fake.

`RealTorchProbe` finds torch in `sys.modules` and nowhere else: it never imports torch (a process that did
not import it must not pay for it) and never initialises CUDA (that would create a context of several
hundred MiB on a GPU the process may not use). Every call degrades to None/False on an old or unusual
torch (another allocator backend, ROCm, a CPU-only build) instead of raising into the agent thread.

The PyTorch calls used, all public except the two the memory-snapshot docs name:
- `torch.cuda.is_initialized()`, `device_count()`, `get_device_properties(d)` (total memory, uuid);
- `torch.cuda.memory_stats_as_nested_dict(d)`: the caching allocator's counters. It takes the
  allocator's mutex for a copy of the stats, so it briefly contends with allocations in the training
  thread; the agent calls it once a second;
- `torch.cuda.mem_get_info(d)`: cudaMemGetInfo, only on devices the allocator already uses;
- `torch._C._cuda_attach_out_of_memory_observer(fn)`: fn(device, alloc_bytes, capacity_bytes, free_bytes),
  called by the allocator after releasing its lock and before raising OutOfMemoryError; it registers
  with the per-device allocators that exist, so it must run after CUDA is initialised;
- `torch.cuda.memory._record_memory_history(max_entries=...)` and `_dump_snapshot(path)`: the pickle
  that https://pytorch.org/memory_viz opens ("Understanding CUDA Memory Usage");
- step counting (`steps.py`, only when asked): `torch.optim.optimizer.register_optimizer_step_post_hook`
  (public since PyTorch 2.0), `torch.cuda.current_device()` and `reset_peak_memory_stats(d)`.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Mapping
from typing import Any, Protocol

OomObserver = Callable[[int, int, int, int], None]

# The handle of this process's step hook: one per process, whichever agent (or probe) registered it, so that an
# agent started again after `stop()` (or in a forked child) replaces the hook instead of adding a second one
# that would reset the peaks under the first and count each step twice.
_STEP_HOOK_HANDLE: Any = None


class TorchProbe(Protocol):
    """What the agent needs from torch; every method is safe to call from the agent thread."""

    def cuda_initialized(self) -> bool:
        """True once the process itself has initialised CUDA (never initialises it)."""

    def torch_version(self) -> str | None: ...

    def device_count(self) -> int: ...

    def memory_stats(self, device: int) -> Mapping[str, Any]:
        """The allocator's counters for `device` (nested or flat dict; empty when unavailable)."""

    def device_identity(self, device: int) -> tuple[str | None, int | None]:
        """(CUDA uuid without prefix, total bytes) of `device`; Nones when torch will not say."""

    def mem_get_info(self, device: int) -> tuple[int, int] | None:
        """(free, total) bytes on `device` as CUDA reports them."""

    def attach_oom_observer(self, observer: OomObserver) -> bool: ...

    def record_history(self, max_entries: int) -> bool: ...

    def dump_snapshot(self, path: str) -> bool: ...

    def empty_cache(self) -> bool: ...

    def register_step_hook(self, hook: Callable[[object], None]) -> bool:
        """Call `hook(optimizer)` after every optimizer step of the process, replacing a hook registered
        before (one per process); False when torch cannot (not imported yet, or too old)."""

    def current_device(self) -> int | None: ...

    def take_step_peaks(self, device: int) -> tuple[int, int, int, int, int] | None:
        """(peak allocated, peak reserved, allocated, reserved, inactive split) bytes since the last call, after
        which the peaks are reset."""


class RealTorchProbe:
    """The probe over the torch this process already imported."""

    def __init__(self) -> None:
        self._identity: dict[int, tuple[str | None, int | None]] = {}

    @staticmethod
    def _cuda() -> Any:
        # torch/cuda/__init__.py is imported by torch/__init__.py; reading it from sys.modules avoids
        # torch's module __getattr__, which lazily imports submodules.
        return sys.modules.get("torch.cuda")

    def cuda_initialized(self) -> bool:
        cuda = self._cuda()
        fn = getattr(cuda, "is_initialized", None)
        if fn is None:
            return False
        try:
            return bool(fn())
        except Exception:
            return False

    def torch_version(self) -> str | None:
        torch = sys.modules.get("torch")
        version = getattr(torch, "__version__", None)
        return str(version) if version is not None else None

    def device_count(self) -> int:
        try:
            return int(self._cuda().device_count())
        except Exception:
            return 0

    def memory_stats(self, device: int) -> Mapping[str, Any]:
        cuda = self._cuda()
        try:
            nested = getattr(cuda, "memory_stats_as_nested_dict", None)
            if nested is not None:
                result: Mapping[str, Any] = nested(device)
            else:
                result = cuda.memory_stats(device)
        except Exception:
            return {}
        return result if isinstance(result, Mapping) else {}

    def device_identity(self, device: int) -> tuple[str | None, int | None]:
        cached = self._identity.get(device)
        if cached is not None:
            return cached
        try:
            props = self._cuda().get_device_properties(device)
        except Exception:
            return (None, None)
        uuid = getattr(props, "uuid", None)
        total = getattr(props, "total_memory", None)
        identity = (str(uuid) if uuid is not None else None, int(total) if isinstance(total, int) else None)
        self._identity[device] = identity
        return identity

    def mem_get_info(self, device: int) -> tuple[int, int] | None:
        try:
            free, total = self._cuda().mem_get_info(device)
            return int(free), int(total)
        except Exception:
            return None

    def attach_oom_observer(self, observer: OomObserver) -> bool:
        c = getattr(sys.modules.get("torch"), "_C", None)
        attach = getattr(c, "_cuda_attach_out_of_memory_observer", None)
        if attach is None:
            return False
        try:
            attach(observer)
        except Exception:
            return False
        return True

    def record_history(self, max_entries: int) -> bool:
        memory = sys.modules.get("torch.cuda.memory")
        record = getattr(memory, "_record_memory_history", None)
        if record is None:
            return False
        # Python stacks only: C++ frames make each allocation slower and the snapshot much larger.
        attempts: tuple[Callable[[], object], ...] = (
            lambda: record(enabled="all", stacks="python", max_entries=max_entries),
            lambda: record(max_entries=max_entries),
            lambda: record(True, trace_alloc_max_entries=max_entries),  # torch 2.0
        )
        for attempt in attempts:
            try:
                attempt()
            except TypeError:
                continue
            except Exception:
                return False
            return True
        return False

    def dump_snapshot(self, path: str) -> bool:
        memory = sys.modules.get("torch.cuda.memory")
        dump = getattr(memory, "_dump_snapshot", None)
        if dump is None:
            return False
        try:
            dump(path)
        except Exception:
            return False
        return True

    def empty_cache(self) -> bool:
        try:
            self._cuda().empty_cache()
        except Exception:
            return False
        return True

    def register_step_hook(self, hook: Callable[[object], None]) -> bool:
        optimizer = sys.modules.get("torch.optim.optimizer")
        register = getattr(optimizer, "register_optimizer_step_post_hook", None)
        if register is None:
            return False

        def post_hook(opt: object, _args: object, _kwargs: object) -> None:
            hook(opt)

        global _STEP_HOOK_HANDLE  # one step hook per process, by design
        try:
            handle = register(post_hook)
        except Exception:
            return False
        previous, _STEP_HOOK_HANDLE = _STEP_HOOK_HANDLE, handle
        remove = getattr(previous, "remove", None)
        if remove is not None:
            with contextlib.suppress(Exception):
                remove()
        return True

    def current_device(self) -> int | None:
        try:
            return int(self._cuda().current_device())
        except Exception:
            return None

    def take_step_peaks(self, device: int) -> tuple[int, int, int, int, int] | None:
        cuda = self._cuda()
        stats = self.memory_stats(device)
        figures = []
        for name, kind in (
            ("allocated_bytes", "peak"),
            ("reserved_bytes", "peak"),
            ("allocated_bytes", "current"),
            ("reserved_bytes", "current"),
            ("inactive_split_bytes", "current"),
        ):
            node = stats.get(name) if isinstance(stats, Mapping) else None
            node = node.get("all") if isinstance(node, Mapping) else None
            value = node.get(kind) if isinstance(node, Mapping) else None
            if isinstance(value, bool) or not isinstance(value, int):
                return None
            figures.append(value)
        try:
            cuda.reset_peak_memory_stats(device)
        except Exception:
            return None
        return figures[0], figures[1], figures[2], figures[3], figures[4]
