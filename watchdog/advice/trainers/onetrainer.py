"""OneTrainer: `scripts/train.py --config-path X.json` (modules/util/args/TrainArgs.py), one JSON TrainConfig;
asked to save by SIGINT, on which its CLI writes a backup and the final model, then exits."""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ...model import ProcessMeta
from .. import settings as s
from ..argv import Flags, Invocation, flag_text, parse_flags, set_flag, split_invocation, to_bool, to_int, to_interval
from ..configcopy import ConfigEdit, ConfigTarget
from ..configfile import lookup
from ..extract import Builder, Context, family_of, largest_resolution, path_mentions, precision, resolve_path
from ._base import ConfigCopy, SaveNow, Trainer

ID = "onetrainer"


def recognizes(inv: Invocation, _argv0: str, ctx: Context, flags: Flags) -> bool:
    name = (inv.script_name or "").lower()
    return name in ("train.py", "train.sh") and ("config-path" in flags or path_mentions(inv, ctx.cwd, "onetrainer"))


# modules/util/enum/AttentionMechanism.py: SDP, FLASH, SPLIT, FLASH_SPLIT, every one memory-efficient. DEFAULT and
# XFORMERS are gone from it: a config that still says them is read with the SDP default (BaseConfig.from_dict cannot
# set them), so they are SDP too. Telling such a run to set "SDP" would change nothing.
_ONETRAINER_ATTENTION = {
    "SDP": "sdpa",
    "SPLIT": "sdpa",
    "DEFAULT": "sdpa",
    "FLASH": "flash",
    "FLASH_SPLIT": "flash",
    "XFORMERS": "xformers",
}
# DataType.is_quantized() (FLOAT_8, INT_8, NFLOAT_4), GGUF, and the W8A8 / GGUF_A8 types of newer branches.
_QUANTIZED_DTYPES = frozenset(
    {"FLOAT_8", "NFLOAT_4", "INT_8", "GGUF", "FLOAT_W8A8", "INT_W8A8", "GGUF_A8_FLOAT", "GGUF_A8_INT"}
)


def read(inv: Invocation, ctx: Context, b: Builder) -> None:
    """OneTrainer: one JSON config (TrainConfig) given with --config-path."""
    flags, _ = parse_flags(inv.args)
    given = flag_text(flags, "config-path", "config_path")
    path = resolve_path(given[1], ctx.cwd) if given and given[1] else None
    data = None if path is None else b.load(path, ctx.read_file, "json")
    if data is None:
        if path is None:
            b.config_failed = True
            b.notes.append("settings unknown: no readable --config-path")
        return
    name = path.name if path is not None else "config"  # path is set whenever data is

    def put(setting: str, key: str, convert: Callable[[Any], Any]) -> None:
        value = lookup(data, key)
        if value is not None:
            b.set(setting, convert(value), s.FROM_CONFIG, f"{name}: {key}", str(path))

    put("batch_size", "batch_size", to_int)
    put("grad_accum", "gradient_accumulation_steps", to_int)
    part = _main_part(data)
    if part is not None:
        # A config of the per-part shape: each model part holds its own checkpointing and offload, and the
        # top-level keys are gone (they are migrated into the parts). Its changes are said for that part.
        b.values["config_format"] = part
        put("gradient_checkpointing", f"{part}.gradient_checkpointing", to_bool)
    else:
        # A bool in older configs, "ON"/"OFF"/"CPU_OFFLOADED" (GradientCheckpointingMethod) in newer ones.
        put(
            "gradient_checkpointing",
            "gradient_checkpointing",
            lambda v: to_bool(v) if not isinstance(v, str) or v.lower() in ("true", "false") else v.upper() != "OFF",
        )
    put("resolution", "resolution", lambda v: largest_resolution(str(v).split(",")))
    put("mixed_precision", "train_dtype", precision)
    # (A branch that splits it into `image_caching` and `text_caching` leaves it unknown here: no advice names a key
    # such a config no longer reads.)
    put("cache_latents", "latent_caching", to_bool)
    put("attention", "attention_mechanism", lambda v: _ONETRAINER_ATTENTION.get(str(v).upper()))
    optimizer = data.get("optimizer")
    optimizer_name = optimizer.get("optimizer") if isinstance(optimizer, Mapping) else optimizer
    if isinstance(optimizer_name, str):
        b.set("optimizer", optimizer_name, s.FROM_CONFIG, f"{name}: optimizer.optimizer", str(path))
    offload = "layer_offload_fraction" if part is None else f"{part}.offload_fraction"
    fraction = lookup(data, offload)
    if isinstance(fraction, int | float) and not isinstance(fraction, bool):
        b.set("layer_offload_fraction", float(fraction), s.FROM_CONFIG, f"{name}: {offload}", str(path))
    dtypes = [
        lookup(data, k) for k in ("weight_dtype", "transformer.weight_dtype", "unet.weight_dtype", "prior.weight_dtype")
    ]
    known = [str(d).upper() for d in dtypes if isinstance(d, str) and d.upper() != "NONE"]
    if known:
        b.set("fp8_base", any(d in _QUANTIZED_DTYPES for d in known), s.FROM_CONFIG, f"{name}: weight_dtype", str(path))
    model_type = data.get("model_type")
    b.set(
        "model_family",
        family_of(str(model_type)) if model_type else None,
        s.FROM_CONFIG,
        f"{name}: model_type",
        str(path),
    )
    if str(data.get("training_method", "")).upper() == "LORA":
        put("network_dim", "lora_rank", to_int)
        b.default("network_dim", 16, "OneTrainer lora_rank default")

    _read_schedule(data, name, str(path), b)

    # modules/util/config/TrainConfig.py default_values().
    b.default("batch_size", 1, "OneTrainer batch_size default")
    b.default("grad_accum", 1, "OneTrainer gradient_accumulation_steps default")
    b.default("gradient_checkpointing", True, "OneTrainer gradient_checkpointing default")
    if "image_caching" not in data:
        b.default("cache_latents", True, "OneTrainer latent_caching default")
    b.default("optimizer", "ADAMW", "OneTrainer optimizer default")
    b.default("mixed_precision", "fp16", "OneTrainer train_dtype default FLOAT_16")
    b.default("resolution", (512, 512), "OneTrainer resolution default")


#: The part that holds the trained network, by model family: a DiT's transformer, a U-Net, Stable Cascade's prior.
PARTS = ("transformer", "unet", "prior")


def _network_part(model_type: object) -> str:
    """The part of a ModelType that holds its denoising network (modules/util/enum/ModelType.py): the U-Net of
    Stable Diffusion 1.x/2.x/XL, the prior of Würstchen and Stable Cascade, a transformer otherwise (SD3, Flux, ...).
    A config without `model_type` is TrainConfig's default, STABLE_DIFFUSION_15."""
    name = str(model_type or "STABLE_DIFFUSION_15").upper()
    if name.startswith(("WUERSTCHEN", "STABLE_CASCADE")):
        return "prior"
    if name.startswith("STABLE_DIFFUSION") and not name.startswith("STABLE_DIFFUSION_3"):
        return "unet"
    return "transformer"


def _main_part(data: Mapping[str, Any]) -> str | None:
    """The network's part of a per-part config (newer OneTrainer's TrainModelPartConfig: `gradient_checkpointing`
    a bool, `offload_fraction`, `activation_offloading` in each part, none at the top level), or None for the older
    shape, whose top-level `gradient_checkpointing` and `layer_offload_fraction` apply to the whole model. A saved
    config holds every part (unet, prior and transformer alike), so the part is the model type's, not the first
    found."""
    if "gradient_checkpointing" in data or "layer_offload_fraction" in data:
        return None
    part = _network_part(data.get("model_type"))
    node = data.get(part)
    if isinstance(node, Mapping) and ("gradient_checkpointing" in node or "offload_fraction" in node):
        return part
    return None


def _read_schedule(data: Mapping[str, Any], name: str, file: str, b: Builder) -> None:
    """`epochs`, `sample_after` + `sample_after_unit` (+ `sample_skip_first`) and `save_every` +
    `save_every_unit`, with TrainConfig.default_values() (epochs 100; sample every 10 MINUTE, skip none; save
    every 0 NEVER) and modules/trainer/GenericTrainer.py's use of them through
    modules/util/TimedActionMixin.py: sampling uses `start_at_zero=True` (STEP: `global_step % n == 0`, EPOCH:
    at step 0 of every n-th epoch, so both sample before the first step unless `sample_skip_first` >= 1), saving
    `start_at_zero=False`. Only the STEP and EPOCH units (and NEVER, ALWAYS) are mapped; SECOND/MINUTE/HOUR
    schedules are by wall-clock time and stay unknown. The run ends after `epochs` epochs (no step limit).
    """

    def get(key: str, default: object) -> tuple[object, str, str, str | None]:
        if key in data and data[key] is not None:
            return data[key], s.FROM_CONFIG, f"{name}: {key}", file
        return default, s.FROM_DEFAULT, f"OneTrainer {key} default", None

    def record(setting: str, value: object, got: tuple[object, str, str, str | None]) -> None:
        if got[1] == s.FROM_DEFAULT:
            b.default(setting, value, got[2])
        else:
            b.set(setting, value, got[1], got[2], got[3])

    epochs = get("epochs", 100)
    record("max_train_epochs", to_int(epochs[0]), epochs)

    every, unit = get("sample_after", 10), get("sample_after_unit", "MINUTE")
    skip = get("sample_skip_first", 0)
    where = unit if unit[1] != s.FROM_DEFAULT else every
    steps, epochs_every = _per_unit(str(unit[0]).upper(), every[0])
    if steps is None and epochs_every is None:
        b.notes.append(f"sampling schedule unknown: OneTrainer samples every {every[0]} {unit[0]} (wall-clock time)")
    else:
        record("sample_every_n_steps", steps, where)
        record("sample_every_n_epochs", epochs_every, where)
        skipped = to_interval(skip[0])
        if skipped is not None:
            record("sample_at_first", bool(steps or epochs_every) and skipped == 0, skip if skipped else where)

    every, unit = get("save_every", 0), get("save_every_unit", "NEVER")
    where = unit if unit[1] != s.FROM_DEFAULT else every
    steps, epochs_every = _per_unit(str(unit[0]).upper(), every[0])
    if steps is None and epochs_every is None:
        b.notes.append(f"save schedule unknown: OneTrainer saves every {every[0]} {unit[0]} (wall-clock time)")
    else:
        record("save_every_n_steps", steps, where)
        record("save_every_n_epochs", epochs_every, where)


def _per_unit(unit: str, every: object) -> tuple[int | None, int | None]:
    """(every n steps, every n epochs) for a TimeUnit; (None, None) for wall-clock units and unreadable ones."""
    n = to_interval(every)
    if unit == "NEVER":
        return 0, 0
    if unit == "ALWAYS":
        return 1, 0
    if n is None:
        return None, None
    if unit == "STEP":
        return n, 0
    if unit == "EPOCH":
        return 0, n
    return None, None


def _runs_the_cli(meta: ProcessMeta, _env: Mapping[str, str]) -> bool:
    args = meta.cmdline or ()
    runs_cli = any(a.replace("\\", "/").endswith("scripts/train.py") for a in args)
    named = "onetrainer" in (meta.cwd or "").lower() or any("onetrainer" in a.lower() for a in args)
    return runs_cli and named


def config_target(argv: Sequence[str], settings: s.TrainerSettings, _edit: ConfigEdit, _cwd: str) -> ConfigTarget | str:
    """The JSON TrainConfig `--config-path` names; the copy's path replaces it there. OneTrainer opens the paths in
    it (`concept_file_name`, `workspace_dir`, `cache_dir`, the base model) as they are, relative to its working
    directory (its checkout), so a copy elsewhere reads the same."""
    flags, _ = parse_flags(split_invocation(argv).args)
    given = flag_text(flags, "config-path", "config_path")
    if given is None or not given[1] or not settings.config_files:
        return "no readable --config-path"
    path, flag = Path(settings.config_files[0]), f"--{given[0]}"

    def run_on(copy: Path) -> tuple[tuple[str, ...], dict[str, str]]:
        return set_flag(argv, flag, str(copy)), {}

    return ConfigTarget(path, "json", run_on)


SAVE_NOW = SaveNow(
    "onetrainer", "OneTrainer's CLI on SIGINT writes a backup and the final model (backup_before_save), then exits",
    stops_run=True, detect=_runs_the_cli, signum=signal.SIGINT,
)  # fmt: skip
TRAINER = Trainer(
    ID,
    "OneTrainer",
    30,
    recognizes,
    read,
    save_now=SAVE_NOW,
    config_copy=ConfigCopy(frozenset({ID, *(f"{ID}@{part}" for part in PARTS)}), config_target),
)
