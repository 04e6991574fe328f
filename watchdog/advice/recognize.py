"""Recognising the trainer behind a process, and reading its settings.

Input is what the process inspector already knows: the process's argv, its cwd (relative config paths are
relative to it, not to the daemon), the command lines of its process tree (the `accelerate launch` or
`torchrun` root carries launcher options and, for spawned workers, the script's own arguments) and,
optionally, its environment. The environment is cut down to an allow-list before anything else looks at
it; no other variable is read or kept.

Detection asks each trainer module (`advice/trainers/`) in turn: by the training script's name and, where
names are generic (`train.py`, `run.py`), by the trainer's marks: its directory name, its config layout,
its environment variables. Anything unrecognised is `pytorch` (a Python script) or `unknown`, with
settings read best-effort from common flag names.

`recognize` never raises on bad input: a command line is data from another user's process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..environ import filter_env
from . import settings as s
from .argv import Invocation, parse_flags, split_invocation
from .configfile import ReadFile, read_text_file
from .extract import Builder, Context
from .settings import TrainerSettings
from .trainers import REGISTRY, by_id, pytorch

_LAUNCHERS = frozenset({"accelerate", "torchrun", "deepspeed"})


def detect(inv: Invocation, argv0: str, ctx: Context) -> str:
    """Which trainer this command line runs: the first of the registry, in its order, that recognises it;
    `pytorch` for an unrecognised Python script, `unknown` for anything else."""
    flags, _ = parse_flags(inv.args)
    for trainer in REGISTRY:
        if trainer.recognizes(inv, argv0, ctx, flags):
            return trainer.id
    return s.UNKNOWN


def _alloc(env: Mapping[str, str] | None, b: Builder) -> None:
    if env is None:
        return
    # PyTorch reads the newer device-generic name first; the CUDA one still works.
    for var in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"):
        if var in env:
            b.set("alloc_conf", env[var], s.FROM_ENV, var)
            b.values["alloc_conf_var"] = var
            return
    b.set("alloc_conf", "", s.FROM_ENV, "allocator variables unset")


def recognize(
    argv: Sequence[str],
    *,
    cwd: str | None = None,
    tree_argvs: Sequence[Sequence[str]] = (),
    env: Mapping[str, str] | None = None,
    read_file: ReadFile = read_text_file,
) -> TrainerSettings:
    """Identify the trainer running `argv` and read its memory-relevant settings; never raises on bad input.

    `tree_argvs` are the command lines of the process's tree (launcher first or last, order does not
    matter). `env` is filtered to PYTORCH_CUDA_ALLOC_CONF, PYTORCH_ALLOC_CONF, ACCELERATE_MIXED_PRECISION
    and SIMPLETUNER_*; None means the environment could not be read. `read_file` returns a config file's
    text or None; the default reads regular files up to 1 MiB.
    """
    safe_env = filter_env(env)
    all_argvs = [tuple(str(t) for t in argv)] + [tuple(str(t) for t in a) for a in tree_argvs]
    invocations = [(split_invocation(a), a[0] if a else "") for a in all_argvs]
    launchers = tuple(inv for inv, _ in invocations if inv.launcher in _LAUNCHERS)
    ctx = Context(cwd=cwd, read_file=read_file, env=safe_env or {}, launchers=launchers)

    chosen: tuple[Invocation, str] | None = None
    for inv, argv0 in invocations:
        trainer = detect(inv, argv0, ctx)
        if trainer not in (pytorch.ID, s.UNKNOWN):
            chosen = (inv, trainer)
            break
        if chosen is None and trainer == pytorch.ID:
            chosen = (inv, trainer)
    b = Builder()
    if chosen is None:
        _alloc(safe_env, b)
        return _freeze(s.UNKNOWN, invocations[0][0].script_name, b)
    inv, trainer = chosen
    by_id(trainer).read(inv, ctx, b)
    _alloc(safe_env, b)
    return _freeze(trainer, inv.script_name, b)


def _freeze(trainer: str, script: str | None, b: Builder) -> TrainerSettings:
    fields = {k: v for k, v in b.values.items() if k in TrainerSettings.__dataclass_fields__}
    return TrainerSettings(
        trainer=trainer,
        script=script,
        config_files=tuple(b.config_files),
        sources=tuple(b.sources),
        notes=tuple(dict.fromkeys(b.notes)),
        **fields,
    )
