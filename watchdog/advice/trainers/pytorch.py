"""A plain PyTorch script: any Python script or module no other trainer recognised (so it is asked last);
the flag names most training scripts use, best effort."""

from __future__ import annotations

from .. import settings as s
from ..argv import Flags, Invocation, flag_switch, parse_flags, to_bool, to_int
from ..extract import Builder, Context, precision, read_flag_table, resolution_pair
from ._base import Trainer

ID = "pytorch"


def recognizes(inv: Invocation, _argv0: str, _ctx: Context, _flags: Flags) -> bool:
    return inv.script is not None or inv.module is not None


def read(inv: Invocation, _ctx: Context, b: Builder) -> None:
    """A custom script: the flag names most training scripts use."""
    flags, _ = parse_flags(inv.args)
    read_flag_table(
        flags,
        b,
        (
            ("batch_size", ("batch_size", "batch-size", "train_batch_size", "bs"), to_int),
            ("grad_accum", ("gradient_accumulation_steps", "grad_accum", "accumulation_steps", "accum_iter"), to_int),
            (
                "gradient_checkpointing",
                ("gradient_checkpointing", "grad_checkpoint", "activation_checkpointing"),
                to_bool,
            ),
            ("mixed_precision", ("mixed_precision", "precision"), precision),
            ("resolution", ("resolution", "image_size", "img_size"), resolution_pair),
            ("optimizer", ("optimizer", "optim"), str),
        ),
    )
    for name, value in (("bf16", "bf16"), ("fp16", "fp16"), ("amp", "fp16")):
        if flag_switch(flags, name):
            b.set("mixed_precision", value, s.FROM_FLAG, f"--{name}")


TRAINER = Trainer(ID, "PyTorch script", 1000, recognizes, read)
