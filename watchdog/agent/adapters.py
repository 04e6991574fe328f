"""Trainer callbacks that save a checkpoint when the agent receives a memory-pressure notice.

A pressure notice (from the daemon or `vramwatch run`, see `core.on_pressure`) arrives in the agent
thread, at any moment. A checkpoint can only be written safely between steps, by the training loop's own
thread, so these callbacks only raise a flag there and act at the next batch/step end:

- `lightning_callback(...)`: a PyTorch Lightning `Callback` calling `trainer.save_checkpoint(path)`;
- `transformers_callback(...)`: a Hugging Face `TrainerCallback` setting `control.should_save = True`, so
  the Trainer writes its usual `checkpoint-<step>` folder (and honours `save_total_limit`).

With several processes (DDP, FSDP, DeepSpeed) saving is collective: every rank must decide the same thing
at the same step or they deadlock. The flag is therefore agreed on across ranks, any rank's notice
counting for all (Lightning's `strategy.reduce_boolean_decision`, or one all-reduce of a flag with
`torch.distributed`), every `sync_every` steps only, since each agreement is a small collective. A single
process checks its flag at every step, for free.

The frameworks are imported when a callback is built, never when this module is imported.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from . import core


def _on_pressure() -> Callable[[core.PressureCallback], Callable[[], None]]:
    # If the runner's sitecustomize had to load the agent by path, that copy is the one running.
    standalone = sys.modules.get("_vramwatch_agent")
    register = getattr(standalone, "on_pressure", None)
    return register if callable(register) else core.on_pressure


class PressureFlag:
    """Set from the agent thread, taken by the training loop; `take()` clears it."""

    def __init__(self, start_agent: bool = True) -> None:
        self._event = threading.Event()
        self.notices = 0
        self._unregister = _on_pressure()(self._notice)
        if start_agent and sys.modules.get("_vramwatch_agent") is None and core.current() is None:
            core.start()  # used without `vramwatch run`: report to the daemon

    def _notice(self, _notice: core.PressureNotice) -> None:
        self.notices += 1
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def take(self) -> bool:
        was = self._event.is_set()
        self._event.clear()
        return was

    def close(self) -> None:
        self._unregister()


def _import_lightning(module: str | None) -> ModuleType:
    if module is not None:
        return importlib.import_module(module)
    for name in ("lightning.pytorch", "pytorch_lightning"):  # the one the script already uses wins
        if name in sys.modules:
            return sys.modules[name]
    try:
        return importlib.import_module("lightning.pytorch")
    except ImportError:
        return importlib.import_module("pytorch_lightning")


def _any_rank(flag: bool) -> bool:
    """True on every rank when it is True on any (torch.distributed all-reduce); the flag itself alone."""
    dist: Any = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return flag
    torch: Any = sys.modules["torch"]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def lightning_callback(
    dirpath: str | Path = ".",
    filename: str = "vramwatch-pressure-step{step}.ckpt",
    *,
    module: str | None = None,
    sync_every: int = 10,
    start_agent: bool = True,
) -> Any:
    """A Lightning Callback that saves `dirpath/filename` (formatted with step and epoch) on pressure.

    `module` picks the Lightning namespace ("lightning.pytorch" or "pytorch_lightning") when both are
    installed and the wrong one would be guessed: the Callback must come from the Trainer's own package.
    """
    pl = _import_lightning(module)
    directory = Path(dirpath)

    class VramwatchPressureCheckpoint(pl.Callback):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.flag = PressureFlag(start_agent)
            self.saved: list[str] = []

        # The hooks keep the frameworks' signatures (Lightning passes `stage` by keyword).
        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:  # noqa: ARG002
            pending = self.flag.is_set()
            if getattr(trainer, "world_size", 1) > 1:
                if batch_idx % sync_every:
                    return
                pending = bool(trainer.strategy.reduce_boolean_decision(pending, all=False))
            if not pending:
                return
            self.flag.take()
            path = directory / filename.format(step=trainer.global_step, epoch=trainer.current_epoch)
            trainer.save_checkpoint(str(path))
            self.saved.append(str(path))
            if getattr(trainer, "is_global_zero", True):
                print(f"vramwatch: memory pressure: saved checkpoint {path}", file=sys.stderr, flush=True)

        def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:  # noqa: ARG002
            self.flag.close()

    return VramwatchPressureCheckpoint()


def transformers_callback(*, sync_every: int = 10, start_agent: bool = True) -> Any:
    """A transformers TrainerCallback that asks the Trainer to save at the next step end on pressure."""
    transformers = importlib.import_module("transformers")

    class VramwatchPressureSave(transformers.TrainerCallback):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.flag = PressureFlag(start_agent)
            self.requested = 0

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:  # noqa: ARG002
            pending = self.flag.is_set()
            if getattr(args, "world_size", 1) > 1:
                if state.global_step % sync_every:
                    return control
                pending = _any_rank(pending)
            if pending:
                self.flag.take()
                control.should_save = True
                self.requested += 1
            return control

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:  # noqa: ARG002
            self.flag.close()
            return control

    return VramwatchPressureSave()
