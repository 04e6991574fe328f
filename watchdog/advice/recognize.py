"""Recognising the trainer behind a process, and reading its settings.

Input is what the process inspector already knows: the process's argv, its cwd (relative config paths are
relative to it, not to the daemon), the command lines of its process tree (the `accelerate launch` or
`torchrun` root carries launcher options and, for spawned workers, the script's own arguments) and,
optionally, its environment. The environment is cut down to an allow-list before anything else looks at
it; no other variable is read or kept.

Detection is by the training script's name and, where names are generic (`train.py`, `run.py`), by the
trainer's marks: its directory name, its config layout, its environment variables. Anything unrecognised
is `pytorch` (a Python script) or `unknown`, with settings read best-effort from common flag names.

`recognize` never raises on bad input: a command line is data from another user's process.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import PurePath

from ..environ import filter_env
from . import settings as s
from .argv import Invocation, parse_flags, split_invocation
from .configfile import ReadFile, read_text_file
from .extract import READERS, Builder, Context, load_toolkit_config
from .settings import TrainerSettings

_KOHYA_SCRIPTS = frozenset(
    {
        "train_network.py",
        "train_db.py",
        "fine_tune.py",
        "train_textual_inversion.py",
        "train_textual_inversion_xti.py",
        "train_control_net.py",
        "train_leco.py",
    }
)
_KOHYA_PATTERN = re.compile(r"^(sdxl|sd3|flux|lumina|hunyuan_image|anima|chroma)_train\w*\.py$")
_DIFFUSERS_PATTERN = re.compile(
    r"^(train_(dreambooth|text_to_image|controlnet|instruct_pix2pix|lcm_distill|custom_diffusion|t2i_adapter"
    r"|unconditional|amused|cogvideox|sana|flux|sd3|hidream|lumina|qwen)\w*|textual_inversion\w*)\.py$"
)
_LAUNCHERS = frozenset({"accelerate", "torchrun", "deepspeed"})


def _path_mentions(inv: Invocation, cwd: str | None, *needles: str) -> bool:
    texts = [inv.script or "", cwd or ""]
    lowered = " ".join(texts).lower()
    return any(n in lowered for n in needles)


def detect(inv: Invocation, argv0: str, ctx: Context) -> str:
    """Which trainer this command line runs; `pytorch` for an unrecognised Python script."""
    name = (inv.script_name or "").lower()
    first = PurePath(argv0).name.lower() if argv0 else ""
    if first == "simpletuner" or (inv.module or "").startswith("simpletuner"):
        return s.SIMPLETUNER
    if name in _KOHYA_SCRIPTS or _KOHYA_PATTERN.match(name):
        return s.KOHYA
    if _DIFFUSERS_PATTERN.match(name):
        return s.DIFFUSERS
    flags, _ = parse_flags(inv.args)
    if name in ("train.py", "train.sh"):
        if "config-path" in flags or _path_mentions(inv, ctx.cwd, "onetrainer"):
            return s.ONETRAINER
        if _path_mentions(inv, ctx.cwd, "simpletuner") or any(k.startswith("SIMPLETUNER_") for k in ctx.env):
            return s.SIMPLETUNER
    if name == "run.py" and (
        _path_mentions(inv, ctx.cwd, "ai-toolkit", "ai_toolkit") or load_toolkit_config(inv, ctx)[1] is not None
    ):
        return s.AI_TOOLKIT
    module = (inv.module or "").lower()
    if module.split(".")[0] in ("lightning", "pytorch_lightning") or first == "lightning":
        return s.LIGHTNING
    if any(k.startswith("trainer.") for k in flags):
        return s.LIGHTNING
    if module.split(".")[0] in ("trl", "transformers") or "per_device_train_batch_size" in flags:
        return s.TRANSFORMERS
    if name.startswith("run_") and ("output_dir" in flags or "do_train" in flags):
        return s.TRANSFORMERS
    if inv.script is not None or inv.module is not None:
        return s.PYTORCH
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
        if trainer not in (s.PYTORCH, s.UNKNOWN):
            chosen = (inv, trainer)
            break
        if chosen is None and trainer == s.PYTORCH:
            chosen = (inv, trainer)
    b = Builder()
    if chosen is None:
        _alloc(safe_env, b)
        return _freeze(s.UNKNOWN, invocations[0][0].script_name, b)
    inv, trainer = chosen
    READERS[trainer](inv, ctx, b)
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
