"""PyTorch Lightning: the `lightning` entry point or module, or LightningCLI's `--trainer.*` flags; best effort
from those flags. Under SLURM with `auto_requeue`, SIGUSR1 saves an HPC checkpoint and requeues the job."""

from __future__ import annotations

import signal
from collections.abc import Mapping
from pathlib import PurePath

from ...model import ProcessMeta
from .. import settings as s
from ..argv import Flags, Invocation, parse_flags, to_int
from ..extract import Builder, Context, precision, read_flag_table
from ._base import SaveNow, Trainer

ID = "lightning"


def recognizes(inv: Invocation, argv0: str, _ctx: Context, flags: Flags) -> bool:
    module = (inv.module or "").lower()
    first = PurePath(argv0).name.lower() if argv0 else ""
    if module.split(".")[0] in ("lightning", "pytorch_lightning") or first == "lightning":
        return True
    return any(k.startswith("trainer.") for k in flags)


#: `config_format` of a run configured by LightningCLI's flags: its changes are spelt as flags, not as Python.
CLI = "cli"


def read(inv: Invocation, _ctx: Context, b: Builder) -> None:
    """LightningCLI flags (`--trainer.precision bf16-mixed`, `--trainer.accumulate_grad_batches 4`)."""
    flags, _ = parse_flags(inv.args)
    given = next((k for k in flags if k.startswith(("trainer.", "data.", "model."))), None)
    if given is not None:
        b.set("config_format", CLI, s.FROM_FLAG, f"--{given}")
    read_flag_table(
        flags,
        b,
        (
            ("mixed_precision", ("trainer.precision",), precision),
            ("grad_accum", ("trainer.accumulate_grad_batches",), to_int),
            ("batch_size", ("data.batch_size", "data.init_args.batch_size"), to_int),
        ),
    )


def _under_slurm(meta: ProcessMeta, env: Mapping[str, str]) -> bool:
    return bool(env.get("SLURM_JOB_ID")) and any("lightning" in a.lower() for a in meta.cmdline or ())


SAVE_NOW = SaveNow(
    "lightning_slurm", "Lightning under SLURM (auto_requeue) on SIGUSR1 saves an HPC checkpoint and requeues",
    stops_run=True, detect=_under_slurm, signum=signal.SIGUSR1,
)  # fmt: skip
TRAINER = Trainer(ID, "PyTorch Lightning", 60, recognizes, read, save_now=SAVE_NOW)
