"""One module per trainer: how it is recognised, how its settings are read, and how it is asked to save now.

Each module here declares `TRAINER = Trainer(id, name, order, recognizes, read, save_now=..., resume_hint=...,
probe_argv=...)` (see `_base.Trainer`); this package finds them all, so adding a trainer is one module here plus
its spelling of each change in `advice/rules.toml` (`[rule.syntax]` keys are trainer ids). The advisor asks them in
`order` (`recognize.detect`); the action layer turns their `save_now` into adapters (`actions.adapters`).
"""

from __future__ import annotations

import importlib
import pkgutil

from ..settings import UNKNOWN
from ._base import ConfigCopy, ProbeArgv, SaveNow, Trainer


def _discover() -> tuple[Trainer, ...]:
    found: list[Trainer] = []
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            found.append(importlib.import_module(f"{__name__}.{info.name}").TRAINER)
    return tuple(sorted(found, key=lambda t: t.order))


#: Every trainer, in recognition order.
REGISTRY: tuple[Trainer, ...] = _discover()
#: Every trainer id the rules may name, and `unknown` (a process nobody recognised).
TRAINER_IDS: tuple[str, ...] = (*(t.id for t in REGISTRY), UNKNOWN)
#: How people call each trainer.
TRAINER_NAMES: dict[str, str] = {**{t.id: t.name for t in REGISTRY}, UNKNOWN: "unrecognised process"}


def by_id(trainer_id: str) -> Trainer:
    """The trainer with this id; KeyError for `unknown` or a trainer that does not exist."""
    for trainer in REGISTRY:
        if trainer.id == trainer_id:
            return trainer
    raise KeyError(trainer_id)


__all__ = ["REGISTRY", "TRAINER_IDS", "TRAINER_NAMES", "ConfigCopy", "ProbeArgv", "SaveNow", "Trainer", "by_id"]
