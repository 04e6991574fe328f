"""transformers Trainer: `trl`/`transformers` modules, `run_*.py` examples or TrainingArguments flags; best
effort from those flags. With `enable_jit_checkpoint=True`, SIGTERM saves a checkpoint and stops."""

from __future__ import annotations

import signal
from collections.abc import Mapping, Sequence

from ...model import ProcessMeta
from .. import settings as s
from ..argv import Flags, Invocation, flag_switch, parse_flags, to_bool, to_int
from ..extract import Builder, Context, read_flag_table
from ._base import SaveNow, Trainer

ID = "transformers"


def recognizes(inv: Invocation, _argv0: str, _ctx: Context, flags: Flags) -> bool:
    module = (inv.module or "").lower()
    if module.split(".")[0] in ("trl", "transformers") or "per_device_train_batch_size" in flags:
        return True
    return (inv.script_name or "").lower().startswith("run_") and ("output_dir" in flags or "do_train" in flags)


def read(inv: Invocation, _ctx: Context, b: Builder) -> None:
    """HF TrainingArguments flags (`--per_device_train_batch_size`, `--bf16`, `--optim`, ...)."""
    flags, _ = parse_flags(inv.args)
    read_flag_table(
        flags,
        b,
        (
            ("batch_size", ("per_device_train_batch_size",), to_int),
            ("grad_accum", ("gradient_accumulation_steps",), to_int),
            ("gradient_checkpointing", ("gradient_checkpointing",), to_bool),
            ("optimizer", ("optim",), str),
        ),
    )
    for name, value in (("bf16", "bf16"), ("fp16", "fp16")):
        if flag_switch(flags, name):
            b.set("mixed_precision", value, s.FROM_FLAG, f"--{name}")


def _truthy_flag(args: Sequence[str], flag: str) -> bool:
    """`--flag`, `--flag=true` or `--flag true` (HfArgumentParser's bool forms) present, not negated."""
    for i, arg in enumerate(args):
        if arg == flag:
            nxt = args[i + 1].lower() if i + 1 < len(args) else ""
            return nxt not in ("false", "0", "no")
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1].lower() not in ("false", "0", "no")
    return False


def _jit_checkpoint(meta: ProcessMeta, _env: Mapping[str, str]) -> bool:
    return _truthy_flag(meta.cmdline or (), "--enable_jit_checkpoint")


SAVE_NOW = SaveNow(
    "transformers_jit", "transformers Trainer (enable_jit_checkpoint) on SIGTERM saves a checkpoint and stops",
    stops_run=True, detect=_jit_checkpoint, signum=signal.SIGTERM,
)  # fmt: skip
TRAINER = Trainer(ID, "transformers Trainer", 70, recognizes, read, save_now=SAVE_NOW)
