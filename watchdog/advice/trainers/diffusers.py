"""diffusers example scripts: recognised by their script names; plain argparse flags, mixed precision
falling back to the accelerate launcher's (then `ACCELERATE_MIXED_PRECISION`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .. import settings as s
from ..argv import Flags, Invocation, flag_switch, flag_text, parse_flags, to_int
from ..extract import Builder, Context, family_of, launcher_precision, precision, resolution_pair
from ._base import Trainer

ID = "diffusers"

_PATTERN = re.compile(
    r"^(train_(dreambooth|text_to_image|controlnet|instruct_pix2pix|lcm_distill|custom_diffusion|t2i_adapter"
    r"|unconditional|amused|cogvideox|sana|flux|sd3|hidream|lumina|qwen)\w*|textual_inversion\w*)\.py$"
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


TRAINER = Trainer(ID, "diffusers example script", 20, recognizes, read)
