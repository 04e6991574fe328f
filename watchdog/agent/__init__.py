"""The in-process PyTorch agent: allocator figures from inside the trainer, where NVML cannot see.

Two ways in:
- `vramwatch run -- <command>` loads it into every Python process the command starts (through the
  `sitecustomize` in `_site/`), with nothing to change in the training script;
- `import vramwatch.agent; vramwatch.agent.start()` in a script, which then reports to the daemon's socket.

`on_pressure(callback)` registers a function run (in the agent thread) when the daemon or the runner says
memory is about to run out; `adapters` has ready-made Lightning and transformers callbacks that save a
checkpoint then. This package imports only the standard library: it must load inside any trainer's
interpreter, even where the rest of vramwatch is not installed (see `_site/sitecustomize.py`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from . import protocol

if TYPE_CHECKING:
    from .core import Agent, AgentConfig, PressureNotice, current, on_pressure, start, stop

__all__ = ["Agent", "AgentConfig", "PressureNotice", "current", "on_pressure", "start", "stop"]


def __getattr__(name: str) -> object:
    # The daemon reads the socket's messages (`protocol`) through this package and never runs the agent: the
    # agent's own modules load on first use, in a trainer or a script that starts it (docs/benchmarks.md,
    # resident memory).
    if name in __all__:
        from . import core

        return getattr(core, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _start_from_sitecustomize(*, torch_importing: bool = False) -> None:
    """Called by `_site/sitecustomize.py` (when `import torch` begins): start where the runner asked."""
    if os.environ.get(protocol.ENV_AGENT, "") in {"1", "true", "yes", "on"}:
        from .core import start

        start(torch_importing=torch_importing)
