"""kohya-ss sd-scripts: recognised by its script names; `--config_file` TOML under the command line,
`--dataset_config` over both for resolution and batch size; no save-now signal, so a hint to save state.

Reading follows library/train_util.py: `--config_file` TOML sections are flattened and the command line
overrides them; the `--dataset_config` TOML/JSON (`[general]` < `[[datasets]]`) overrides `--resolution`
and `--train_batch_size` (docs/config_README-en.md). sd-scripts hands its own `--mixed_precision`
(default `no`) to `Accelerator`, so `accelerate launch --mixed_precision bf16` does not apply to it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

from ...model import ProcessMeta
from .. import settings as s
from ..argv import (
    Flags,
    Invocation,
    flag_switch,
    flag_text,
    parse_flags,
    set_flag,
    split_invocation,
    to_bool,
    to_int,
    to_interval,
    value_of,
)
from ..configcopy import ConfigEdit, ConfigTarget
from ..configfile import format_of
from ..extract import Builder, Context, family_of, launcher_precision, precision, resolution_pair, resolve_path
from ._base import ConfigCopy, Trainer

ID = "kohya"

_SCRIPTS = frozenset(
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
_PATTERN = re.compile(r"^(sdxl|sd3|flux|lumina|hunyuan_image|anima|chroma)_train\w*\.py$")


def recognizes(inv: Invocation, _argv0: str, _ctx: Context, _flags: Flags) -> bool:
    name = (inv.script_name or "").lower()
    return name in _SCRIPTS or bool(_PATTERN.match(name))


# The scripts that train the base model itself (a LoRA, a textual inversion or a ControlNet trains beside a frozen
# base): `--fp8_base` parses there and changes nothing (flux_train.py loads the model in the training dtype).
_FULL_FINETUNE = re.compile(r"^(train_db|fine_tune|[a-z0-9]+(_[a-z0-9]+)?_train)\.py$")

_KOHYA_NETWORK_FAMILIES = ("flux", "sd3", "lumina", "hunyuan", "anima")  # DiT scripts with blocks_to_swap
_KOHYA_TE_CACHE_FAMILIES = ("flux", "sd3", "sdxl", "lumina", "hunyuan", "anima")


def _flatten_kohya_config(data: Mapping[str, Any]) -> dict[str, Any]:
    # read_config_from_file: top-level scalars are kept, every section's keys are merged into one namespace.
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def read(inv: Invocation, ctx: Context, b: Builder) -> None:
    """sd-scripts: command line over `--config_file`, `--dataset_config` over both for resolution/batch."""
    flags, _ = parse_flags(inv.args)
    script = (inv.script_name or "").lower()
    family = family_of(script) or "sd"
    b.set("model_family", family, s.FROM_FLAG, f"script {inv.script_name}")
    b.set("full_finetune", bool(_FULL_FINETUNE.match(script)), s.FROM_FLAG, f"script {inv.script_name}")

    config: dict[str, Any] = {}
    config_name = None
    given = flag_text(flags, "config_file")
    if given and given[1]:
        text = given[1] if given[1].endswith(".toml") else given[1] + ".toml"
        path = resolve_path(text, ctx.cwd)
        if path is None:
            b.config_failed = True
            b.notes.append(f"settings unknown: --config_file {PurePath(text).name} is relative and the cwd is unknown")
        else:
            data = b.load(path, ctx.read_file, "toml")
            if data is not None:
                config = _flatten_kohya_config(data)
                config_name = str(path)

    def get(name: str, *, switch: bool = False) -> tuple[Any, str, str, str | None] | None:
        """(value, kind, detail, file) with the command line first, as argparse applies it; a `switch`
        (store_true) flag followed by a positional word is a bare switch."""
        if name in flags:
            value = flag_switch(flags, name) if switch else value_of(flags[name])
            return value, s.FROM_FLAG, f"--{name}", None
        if name in config:
            return config[name], s.FROM_CONFIG, f"{PurePath(config_name or '').name}: {name}", config_name
        return None

    def put(setting: str, name: str, convert: Callable[[Any], Any]) -> None:
        got = get(name)
        if got is not None:
            b.set(setting, convert(got[0]), got[1], got[2], got[3])

    put("batch_size", "train_batch_size", to_int)
    put("grad_accum", "gradient_accumulation_steps", to_int)
    put("resolution", "resolution", resolution_pair)
    put("mixed_precision", "mixed_precision", precision)
    got = get("gradient_checkpointing", switch=True)
    if got is not None:
        b.set("gradient_checkpointing", to_bool(got[0]), got[1], got[2], got[3])
    put("optimizer", "optimizer_type", lambda v: str(v) if v not in (None, "", True) else None)
    for name, optimizer in (("use_8bit_adam", "AdamW8bit"), ("use_lion_optimizer", "Lion")):
        got = get(name, switch=True)
        if got is not None and to_bool(got[0]):
            b.set("optimizer", optimizer, got[1], got[2], got[3])
    for name, attention in (("mem_eff_attn", "mem_eff"), ("sdpa", "sdpa"), ("xformers", "xformers")):
        got = get(name, switch=True)
        if got is not None and to_bool(got[0]):
            b.set("attention", attention, got[1], got[2], got[3])
    for name in ("fp8_base", "fp8_base_unet"):
        got = get(name, switch=True)
        if got is not None and to_bool(got[0]):
            b.set("fp8_base", True, got[1], got[2], got[3])
    put("blocks_to_swap", "blocks_to_swap", lambda v: 0 if v in (0, "0") else to_int(v))
    for name in ("cache_latents", "cache_latents_to_disk"):
        got = get(name, switch=True)
        if got is not None and to_bool(got[0]):
            b.set("cache_latents", True, got[1], got[2], got[3])
    for name in ("cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk"):
        got = get(name, switch=True)
        if got is not None and to_bool(got[0]):
            b.set("cache_text_encoder_outputs", True, got[1], got[2], got[3])
    put("network_dim", "network_dim", to_int)

    saves = [get(n) for n in ("save_every_n_steps", "save_every_n_epochs")]
    save_state = get("save_state")
    if save_state is not None and to_bool(save_state[0]) and any(g is not None and to_int(g[0]) for g in saves):
        b.set("resumable", True, save_state[1], "--save_state with --save_every_n_*", save_state[3])

    _read_schedule(get, b)

    dataset = get("dataset_config")
    if dataset is not None and isinstance(dataset[0], str) and dataset[0]:
        _kohya_dataset_config(dataset[0], ctx, b)

    # Defaults from library/train_util.py argparse definitions and get_optimizer().
    b.default("batch_size", 1, "sd-scripts --train_batch_size default")
    b.default("grad_accum", 1, "sd-scripts --gradient_accumulation_steps default")
    b.default("mixed_precision", "no", "sd-scripts --mixed_precision default")
    b.default("gradient_checkpointing", False, "sd-scripts --gradient_checkpointing is off unless given")
    b.default("optimizer", "AdamW", "sd-scripts get_optimizer(): AdamW when --optimizer_type is empty")
    b.default("fp8_base", False, "sd-scripts --fp8_base is off unless given")
    b.default("cache_latents", False, "sd-scripts --cache_latents is off unless given")
    b.default("resumable", False, "sd-scripts saves state only with --save_state")
    if family in _KOHYA_NETWORK_FAMILIES:
        b.default("blocks_to_swap", 0, "sd-scripts --blocks_to_swap is off unless given")
    unet_only = get("network_train_unet_only", switch=True)
    if family in _KOHYA_TE_CACHE_FAMILIES and (family != "sdxl" or (unet_only is not None and to_bool(unet_only[0]))):
        # SDXL's scripts refuse the cache while they train a text encoder (sdxl_train_network.py asserts
        # network_train_unet_only): there the cache is no change to suggest on its own, so it stays unknown.
        b.default("cache_text_encoder_outputs", False, "sd-scripts --cache_text_encoder_outputs is off unless given")
    if family in ("sd", "sdxl"):
        # U-Net scripts use plain attention unless --xformers/--sdpa/--mem_eff_attn; the DiT models call
        # SDPA on their own, so their attention is left unknown rather than guessed.
        b.default("attention", "none", "sd-scripts uses plain attention unless --sdpa/--xformers is given")

    on_launcher = launcher_precision(ctx)
    if on_launcher is not None and b.values.get("mixed_precision") not in (None, on_launcher[0]):
        b.notes.append(
            f"`{on_launcher[1]}` on the launcher does not apply: sd-scripts passes its own "
            f"--mixed_precision ({b.values['mixed_precision']}) to Accelerator"
        )


Got = tuple[Any, str, str, str | None]  # (value, kind, detail, file) as read() finds it


def _read_schedule(get: Callable[..., Got | None], b: Builder) -> None:
    """The run's length, sampling and saving, as library/train_util.py defines them (add_training_arguments,
    verify_training_args, sample_images_common) and train_network.py applies them.

    `--max_train_steps` (default 1600) is overridden by `--max_train_epochs` when that is given: the steps are
    then computed from the dataloader's length, so they stay unknown here. `--sample_every_n_epochs`
    overrides `--sample_every_n_steps` ("sample_every_n_steps は無視する"); a value of 0 or less disables either.
    `--sample_at_first` samples before the first step. `--save_every_n_steps` and `--save_every_n_epochs` both
    apply; `--save_n_epoch_ratio` replaces the epoch interval with one derived from the epoch count. After the
    training loop train_network.py always saves the final model (`save_model(..., force_sync_upload=True)`).
    """
    epochs = get("max_train_epochs")
    if epochs is not None:
        b.set("max_train_epochs", to_int(epochs[0]), epochs[1], epochs[2], epochs[3])
        if to_int(epochs[0]) is None:
            b.notes.append(f"run length unknown: {epochs[2]} is not a positive count")
    else:
        steps = get("max_train_steps")
        if steps is not None:
            b.set("max_train_steps", to_int(steps[0]), steps[1], steps[2], steps[3])
        b.default("max_train_steps", 1600, "sd-scripts --max_train_steps default")

    by_epoch = get("sample_every_n_epochs")
    every_epochs = None if by_epoch is None else to_interval(by_epoch[0])
    if by_epoch is not None:
        b.set("sample_every_n_epochs", every_epochs, by_epoch[1], by_epoch[2], by_epoch[3])
    if by_epoch is not None and every_epochs:
        detail = f"{by_epoch[2]} overrides sample_every_n_steps"
        b.set("sample_every_n_steps", 0, by_epoch[1], detail, by_epoch[3])
    else:
        by_step = get("sample_every_n_steps")
        if by_step is not None:
            b.set("sample_every_n_steps", to_interval(by_step[0]), by_step[1], by_step[2], by_step[3])
    first = get("sample_at_first", switch=True)
    if first is not None:
        b.set("sample_at_first", to_bool(first[0]), first[1], first[2], first[3])

    for name in ("save_every_n_steps", "save_every_n_epochs"):
        got = get(name)
        if got is not None:
            b.set(name, to_interval(got[0]), got[1], got[2], got[3])
    ratio = get("save_n_epoch_ratio")
    if ratio is not None and to_int(ratio[0]) is not None:
        b.forget("save_every_n_epochs", f"save_every_n_epochs unknown: {ratio[2]} derives it from the epoch count")
        b.values["save_every_n_epochs"] = None  # known to be set, by a rule that needs the dataset: block the default

    b.default("sample_every_n_steps", 0, "sd-scripts samples on steps only with --sample_every_n_steps")
    b.default("sample_every_n_epochs", 0, "sd-scripts samples on epochs only with --sample_every_n_epochs")
    b.default("sample_at_first", False, "sd-scripts --sample_at_first is off unless given")
    b.default("save_every_n_steps", 0, "sd-scripts saves on steps only with --save_every_n_steps")
    b.default("save_every_n_epochs", 0, "sd-scripts saves on epochs only with --save_every_n_epochs")
    b.default("save_at_end", True, "sd-scripts train_network.py saves the model after the last step")


def probe_argv(argv: Sequence[str], settings: s.TrainerSettings) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A kohya command line whose sampling comes before the first step (`--sample_at_first`), so that a short
    test run meets the sampling phase's memory peak; unchanged, with a note, when the run does not sample or
    already samples first. Adds the flag only: files are never edited."""
    args = tuple(str(a) for a in argv)
    inv = split_invocation(args)
    if inv.script is None:
        return args, ("no training script on the command line: nothing to add",)
    flags, _ = parse_flags(inv.args)
    if settings.sample_at_first or flag_switch(flags, "sample_at_first"):
        return args, ("already samples before the first step (--sample_at_first)",)
    intervals = [
        f"every {n} {unit}"
        for n, unit in ((settings.sample_every_n_steps, "steps"), (settings.sample_every_n_epochs, "epochs"))
        if n
    ]
    prompts = flag_text(flags, "sample_prompts")
    if not intervals and not (prompts and prompts[1]):
        return args, ("the run does not sample (no --sample_every_n_* and no --sample_prompts): nothing to add",)
    why = f"it samples {' and '.join(intervals)}" if intervals else "--sample_prompts is given"
    return (*args, "--sample_at_first"), (f"added --sample_at_first: {why}; a short run now samples at step 0",)


def _kohya_dataset_config(text: str, ctx: Context, b: Builder) -> None:
    path = resolve_path(text, ctx.cwd)
    data = None if path is None else b.load(path, ctx.read_file)
    if path is None or data is None:
        if path is None:
            b.config_failed = True
        for setting in ("resolution", "batch_size"):
            b.forget(setting, f"{setting} unknown: the --dataset_config file overrides it and could not be read")
        return
    general = data.get("general") if isinstance(data.get("general"), Mapping) else {}
    datasets = (
        [d for d in data.get("datasets", []) if isinstance(d, Mapping)]
        if isinstance(data.get("datasets"), list)
        else []
    )
    name = path.name
    for key, setting, convert in (("resolution", "resolution", resolution_pair), ("batch_size", "batch_size", to_int)):
        found: list[tuple[Any, str]] = []
        for ds in datasets or [{}]:
            if key in ds:
                found.append((convert(ds[key]), f"{name}: [[datasets]] {key}"))
            elif isinstance(general, Mapping) and key in general:
                found.append((convert(general[key]), f"{name}: [general] {key}"))
        values = [(v, d) for v, d in found if v is not None]
        if not values:
            continue
        if setting == "resolution":
            value, detail = max(values, key=lambda vd: vd[0][0] * vd[0][1])
        else:
            value, detail = max(values, key=lambda vd: vd[0])
        b.set(setting, value, s.FROM_DATASET_CONFIG, detail, str(path))


def config_target(argv: Sequence[str], _settings: s.TrainerSettings, edit: ConfigEdit, _cwd: str) -> ConfigTarget | str:
    """A change to the `--dataset_config` file (the one setting the command line cannot override): its copy is
    named by `--dataset_config` on the command line, which also wins over a `dataset_config` in `--config_file`.
    sd-scripts (library/config_util.py) reads the file as TOML or JSON by its suffix and takes the paths in it
    (`image_dir`, `metadata_file`, ...) as they are, relative to its working directory: a copy elsewhere, in the
    same format under the same name, reads the same."""
    if edit.variant != s.FROM_DATASET_CONFIG or not edit.file:
        return "not a change to the --dataset_config file"
    path = Path(edit.file)
    fmt = format_of(path)
    if fmt not in ("toml", "json"):
        return f"{path.name}: sd-scripts reads a dataset config as .toml or .json only"

    def run_on(copy: Path) -> tuple[tuple[str, ...], dict[str, str]]:
        return set_flag(argv, "--dataset_config", str(copy)), {}

    return ConfigTarget(path, fmt, run_on)


# `--config_file` needs no copy: the command line overrides it (read_config_from_file), so its changes are flags.
CONFIG_COPY = ConfigCopy(frozenset({f"{ID}@{s.FROM_DATASET_CONFIG}"}), config_target)


# The hint looks at whole argv paths of a live process (no recognition context), with the checkout's name.
_HINT_SCRIPTS = re.compile(
    r"(^|/)(sdxl_|flux_|sd3_|lumina_|hunyuan_image_)?(train_network|train_db|fine_tune|train|train_textual_inversion)\.py$"
)


def resumability_hint(meta: ProcessMeta) -> str | None:
    """For a kohya sd-scripts run that saves no resumable state: how to make the next one resumable."""
    args = meta.cmdline or ()
    if not any(_HINT_SCRIPTS.search(a.replace("\\", "/")) for a in args):
        return None
    if not any("sd-scripts" in a or "kohya" in a.lower() for a in (*args, meta.cwd or "")):
        return None
    if "--save_state" in args and any(a.startswith("--save_every_n_steps") for a in args):
        return None
    return (
        "kohya sd-scripts has no save-now signal: run it with --save_every_n_steps N --save_state so a crash "
        "loses at most N steps, and restart with --resume <output_dir>/<output_name>-step<N>-state"
    )


TRAINER = Trainer(
    ID,
    "kohya-ss sd-scripts",
    10,
    recognizes,
    read,
    resume_hint=resumability_hint,
    probe_argv=probe_argv,
    # train_util.py: samples go to <output_dir>/sample, models and states to <output_dir>; the command line
    # overrides --config_file, so the flag redirects a configured output_dir too.
    output_dir_flag="--output_dir",
    first_phase_switch="--sample_at_first",
    # train_network.py: after the optimizer step whose global_step is a multiple of it, save_model() as the final
    # save does (to --save_precision), plus the state with --save_state; the command line overrides --config_file.
    save_every_flag="--save_every_n_steps",
    config_copy=CONFIG_COPY,
)
