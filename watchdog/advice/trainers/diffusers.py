"""diffusers example scripts: recognised by their script names; plain argparse flags, mixed precision
falling back to the accelerate launcher's (then `ACCELERATE_MIXED_PRECISION`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .. import settings as s
from ..argv import Flags, Invocation, flag_switch, flag_text, parse_flags, to_int, to_interval
from ..extract import Builder, Context, family_of, launcher_precision, precision, resolution_pair
from ._base import Trainer

ID = "diffusers"

# Not train_unconditional.py: its parse_args() has neither --gradient_checkpointing nor --use_8bit_adam, which every
# script named here is told (argparse would refuse them), so it is advised as a plain PyTorch script.
_PATTERN = re.compile(
    r"^(train_(dreambooth|text_to_image|controlnet|instruct_pix2pix|lcm_distill|custom_diffusion|t2i_adapter"
    r"|amused|cogvideox|sana|flux|sd3|hidream|lumina|qwen)\w*|textual_inversion\w*)\.py$"
)


def recognizes(inv: Invocation, _argv0: str, _ctx: Context, _flags: Flags) -> bool:
    return bool(_PATTERN.match((inv.script_name or "").lower()))


# Defaults read from the scripts' parse_args(); only scripts checked against their source are listed.
_DIFFUSERS_DEFAULTS: dict[str, dict[str, Any]] = {
    "train_dreambooth_lora_flux.py": {"batch_size": 4, "resolution": (512, 512), "cache_latents": False},
}


def read(inv: Invocation, ctx: Context, b: Builder) -> None:
    """diffusers example scripts: argparse flags, mixed precision falling back to accelerate's."""
    flags, _ = parse_flags(inv.args)
    script = (inv.script_name or "").lower()
    b.set("model_family", family_of(script), s.FROM_FLAG, f"script {inv.script_name}")

    def put(setting: str, name: str, convert: Callable[[Any], Any]) -> None:
        got = flag_text(flags, name)
        if got is not None:
            b.set(setting, convert(got[1]), s.FROM_FLAG, f"--{name}")

    put("batch_size", "train_batch_size", to_int)
    put("grad_accum", "gradient_accumulation_steps", to_int)
    put("resolution", "resolution", resolution_pair)
    put("mixed_precision", "mixed_precision", precision)
    put("network_dim", "rank", to_int)
    put("optimizer", "optimizer", lambda v: v or None)
    for name, setting, value in (
        ("gradient_checkpointing", "gradient_checkpointing", True),
        ("cache_latents", "cache_latents", True),
        ("enable_xformers_memory_efficient_attention", "attention", "xformers"),
    ):
        if flag_switch(flags, name):
            b.set(setting, value, s.FROM_FLAG, f"--{name}")
    if flag_switch(flags, "use_8bit_adam"):
        b.set("optimizer", "AdamW8bit", s.FROM_FLAG, "--use_8bit_adam")

    if "mixed_precision" not in b.values:
        launcher = launcher_precision(ctx)
        if launcher is not None:
            b.set("mixed_precision", launcher[0], s.FROM_LAUNCHER, launcher[1])
        elif precision(ctx.env.get("ACCELERATE_MIXED_PRECISION")):
            b.set(
                "mixed_precision",
                precision(ctx.env["ACCELERATE_MIXED_PRECISION"]),
                s.FROM_ENV,
                "ACCELERATE_MIXED_PRECISION",
            )
        # Otherwise accelerate's config file decides, which vramwatch does not read: unknown.

    for setting, value in _DIFFUSERS_DEFAULTS.get(script, {}).items():
        b.default(setting, value, f"{script} default")
    b.default("grad_accum", 1, "diffusers --gradient_accumulation_steps default")
    b.default("gradient_checkpointing", False, "diffusers --gradient_checkpointing is off unless given")
    b.default("optimizer", "AdamW", "diffusers examples use torch AdamW unless --use_8bit_adam/--optimizer")
    b.default("attention", "sdpa", "diffusers uses PyTorch SDPA attention processors on PyTorch 2")
    if "lora" in script:
        b.default("network_dim", 4, "diffusers --rank default")
    _read_schedule(flags, script, b)


# The schedule's defaults and rules, read from examples/dreambooth/train_dreambooth_lora_flux.py (parse_args
# and the training loop): `--num_train_epochs` 1, overridden by `--max_train_steps` when given;
# `--checkpointing_steps` 500 (`global_step % checkpointing_steps == 0`, steps only); validation runs at the end
# of an epoch when `epoch % --validation_epochs == 0` (default 50, so after the first epoch too) and only with
# `--validation_prompt`, never before the first step. Other scripts: their flags, no defaults.
_SCHEDULE_DEFAULTS: dict[str, dict[str, int]] = {
    "train_dreambooth_lora_flux.py": {"num_train_epochs": 1, "checkpointing_steps": 500, "validation_epochs": 50},
}


def _read_schedule(flags: Flags, script: str, b: Builder) -> None:
    defaults = _SCHEDULE_DEFAULTS.get(script)
    steps = flag_text(flags, "max_train_steps")
    if steps is not None:
        b.set("max_train_steps", to_int(steps[1]), s.FROM_FLAG, "--max_train_steps (overrides --num_train_epochs)")
    if "max_train_steps" not in b.values:
        epochs = flag_text(flags, "num_train_epochs")
        if epochs is not None:
            b.set("max_train_epochs", to_int(epochs[1]), s.FROM_FLAG, "--num_train_epochs")
        elif defaults and steps is None:
            b.default("max_train_epochs", defaults["num_train_epochs"], f"{script} --num_train_epochs default")

    saves = flag_text(flags, "checkpointing_steps")
    if saves is not None:
        b.set("save_every_n_steps", to_interval(saves[1]), s.FROM_FLAG, "--checkpointing_steps")
    prompt = flag_text(flags, "validation_prompt")
    validation = flag_text(flags, "validation_epochs")
    if validation is not None and prompt is not None:
        b.set("sample_every_n_epochs", to_interval(validation[1]), s.FROM_FLAG, "--validation_epochs")
    if defaults is None:
        return
    b.default("save_every_n_steps", defaults["checkpointing_steps"], f"{script} --checkpointing_steps default")
    b.default("save_every_n_epochs", 0, f"{script} checkpoints on steps only")
    b.default("sample_every_n_steps", 0, f"{script} validates at the end of an epoch, not on steps")
    b.default("sample_at_first", False, f"{script} validates at the end of an epoch, never before the first step")
    if prompt is None:
        b.default("sample_every_n_epochs", 0, f"{script} validates only with --validation_prompt")
    else:
        b.default("sample_every_n_epochs", defaults["validation_epochs"], f"{script} --validation_epochs default")


# The examples write checkpoints, validation images and (by default, `--logging_dir logs`) logs under
# `--output_dir`. Their periodic save is `accelerator.save_state` after the optimizer step whose global_step is a
# multiple of `--checkpointing_steps` (under `sync_gradients`, steps only): a test run's save at another
# interval is the same save. Their end of training (the LoRA weights, a final validation) is another thing,
# not announced (`save_at_end` unset), so it is never brought forward.
TRAINER = Trainer(
    ID,
    "diffusers example script",
    20,
    recognizes,
    read,
    output_dir_flag="--output_dir",
    save_every_flag="--checkpointing_steps",
)
