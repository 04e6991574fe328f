"""Per-trainer readers: from a parsed command line and the config files it names, to normalised settings.

One function per trainer, each following that trainer's own precedence, as read from its source:

* kohya sd-scripts (library/train_util.py): `--config_file` TOML sections are flattened and the command line
  overrides them; the `--dataset_config` TOML/JSON (`[general]` < `[[datasets]]`) overrides `--resolution`
  and `--train_batch_size` (docs/config_README-en.md). sd-scripts hands its own `--mixed_precision`
  (default `no`) to `Accelerator`, so `accelerate launch --mixed_precision bf16` does not apply to it.
* diffusers examples: plain argparse flags; `--mixed_precision` falls back to the accelerate launcher.
* ai-toolkit (toolkit/config.py): `run.py <name>` looks in `<toolkit>/config/<name>[.yaml|.yml|.json]`, then
  at the path itself; settings live under `config.process[0]`.
* OneTrainer: `scripts/train.py --config-path X.json` (modules/util/args/TrainArgs.py).
* SimpleTuner (helpers/configuration/loader.py): `config/[<env>/]config.{json,toml,env}` relative to the
  working directory, backend chosen by `SIMPLETUNER_CONFIG_BACKEND`; JSON keys may keep their `--`.
* transformers / Lightning / plain PyTorch: best effort from common flag names, no defaults.

Defaults are applied only where the trainer's source fixes them and no config file that could override
them failed to load.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from . import settings as s
from .argv import Flags, Invocation, flag_switch, flag_text, parse_flags, to_bool, to_int, value_of
from .configfile import ReadFile, load_mapping, lookup


@dataclass
class Builder:
    """Mutable accumulator for one recognition; frozen into TrainerSettings at the end."""

    values: dict[str, Any] = field(default_factory=dict)
    sources: list[s.SettingSource] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    config_files: list[str] = field(default_factory=list)
    config_failed: bool = False

    def set(self, setting: str, value: object, kind: str, detail: str, file: str | None = None) -> None:
        """Record a value read from somewhere; None (unreadable) leaves the setting as it was."""
        if value is None:
            return
        self.values[setting] = value
        self.sources.append(s.SettingSource(setting, kind, detail, file))

    def forget(self, setting: str, why: str) -> None:
        """Mark a setting unknown again: a source that would override it could not be read."""
        self.values.pop(setting, None)
        self.sources = [src for src in self.sources if src.setting != setting]
        self.notes.append(why)

    def default(self, setting: str, value: object, detail: str) -> None:
        """Fill in the trainer's own default, unless something set it or a config that might has failed."""
        if setting in self.values or self.config_failed or value is None:
            return
        self.values[setting] = value
        self.sources.append(s.SettingSource(setting, s.FROM_DEFAULT, detail))

    def load(self, path: Path, read_file: ReadFile, fmt: str | None = None) -> dict[str, Any] | None:
        """Load a config file, remembering it; a failure is a note and blocks defaults."""
        data, why = load_mapping(path, read_file, fmt)
        if data is None:
            self.config_failed = True
            self.notes.append(f"settings unknown: {why}")
            return None
        self.config_files.append(str(path))
        return data


@dataclass(frozen=True, slots=True)
class Context:
    """What every reader may use besides the command line."""

    cwd: str | None
    read_file: ReadFile
    env: Mapping[str, str]  # already filtered to the allow-list
    launchers: tuple[Invocation, ...]  # accelerate / torchrun command lines in the process tree


# --- value normalisation -------------------------------------------------------------------------------

_PRECISION = {
    "no": "no",
    "none": "no",
    "fp32": "no",
    "float32": "no",
    "float": "no",
    "float_32": "no",
    "tfloat_32": "no",
    "32": "no",
    "32-true": "no",
    "fp16": "fp16",
    "float16": "fp16",
    "float_16": "fp16",
    "half": "fp16",
    "16": "fp16",
    "16-mixed": "fp16",
    "16-true": "fp16",
    "fp16-mixed": "fp16",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "bfloat_16": "bf16",
    "bf16-mixed": "bf16",
    "bf16-true": "bf16",
}


def precision(value: object) -> str | None:
    """Normalise a precision name (`bf16`, `BFLOAT_16`, `bf16-mixed`, `float32`) to no / fp16 / bf16."""
    if value is None:
        return None
    return _PRECISION.get(str(value).strip().strip("'\"").lower())


def resolution_pair(value: object) -> tuple[int, int] | None:
    """kohya/SimpleTuner style: 1024, "1024", "1024,768", "1024x768" or [1024, 768] -> (w, h)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return (value, value) if value > 0 else None
    if isinstance(value, list | tuple):
        sides = [to_int(v) for v in value]
        if len(sides) == 1 and sides[0]:
            return (sides[0], sides[0])
        if len(sides) == 2 and sides[0] and sides[1]:
            return (sides[0], sides[1])
        return None
    if isinstance(value, str):
        parts = [p for p in re.split(r"[,x\s]+", value.strip().lower()) if p]
        return resolution_pair([to_int(p) for p in parts]) if parts else None
    return None


def largest_resolution(values: Sequence[object]) -> tuple[int, int] | None:
    """Several training resolutions (multi-resolution datasets): the one with the most pixels."""
    pairs = [p for p in (resolution_pair(v) for v in values) if p is not None]
    return max(pairs, key=lambda p: p[0] * p[1]) if pairs else None


def family_of(text: str | None) -> str | None:
    """Model family from a script, model name or model type: flux, sd3, sdxl, ..."""
    if not text:
        return None
    lowered = text.lower()
    for needle, family in (
        ("flux", "flux"),
        ("chroma", "flux"),
        ("sd3", "sd3"),
        ("stable_diffusion_3", "sd3"),
        ("sdxl", "sdxl"),
        ("stable_diffusion_xl", "sdxl"),
        ("lumina", "lumina"),
        ("hunyuan", "hunyuan"),
        ("qwen", "qwen_image"),
        ("wan", "wan"),
    ):
        if needle in lowered:
            return family
    return None


def resolve_path(text: str, cwd: str | None, base: Path | None = None) -> Path | None:
    """An absolute path for `text`, relative to `base` or the process's cwd; None if that is unknown."""
    path = Path(text)
    if path.is_absolute():
        return path
    if base is not None:
        return base / path
    return None if cwd is None else Path(cwd) / path


def _script_dir(inv: Invocation, cwd: str | None) -> Path | None:
    if inv.script is None:
        return None
    path = resolve_path(inv.script, cwd)
    return None if path is None else path.parent


# --- kohya sd-scripts ----------------------------------------------------------------------------------

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


def kohya(inv: Invocation, ctx: Context, b: Builder) -> None:
    """sd-scripts: command line over `--config_file`, `--dataset_config` over both for resolution/batch."""
    flags, _ = parse_flags(inv.args)
    script = (inv.script_name or "").lower()
    family = family_of(script) or "sd"
    b.set("model_family", family, s.FROM_FLAG, f"script {inv.script_name}")

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
    if family in _KOHYA_TE_CACHE_FAMILIES:
        b.default("cache_text_encoder_outputs", False, "sd-scripts --cache_text_encoder_outputs is off unless given")
    if family in ("sd", "sdxl"):
        # U-Net scripts use plain attention unless --xformers/--sdpa/--mem_eff_attn; the DiT models call
        # SDPA on their own, so their attention is left unknown rather than guessed.
        b.default("attention", "none", "sd-scripts uses plain attention unless --sdpa/--xformers is given")

    launcher_precision = _launcher_precision(ctx)
    if launcher_precision is not None and b.values.get("mixed_precision") not in (None, launcher_precision[0]):
        b.notes.append(
            f"`{launcher_precision[1]}` on the launcher does not apply: sd-scripts passes its own "
            f"--mixed_precision ({b.values['mixed_precision']}) to Accelerator"
        )


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


def _launcher_precision(ctx: Context) -> tuple[str, str] | None:
    """`--mixed_precision X` given to accelerate launch anywhere in the tree: (normalised, as written)."""
    for launcher in ctx.launchers:
        if launcher.launcher != "accelerate":
            continue
        flags, _ = parse_flags(launcher.launcher_args)
        got = flag_text(flags, "mixed_precision")
        if got and precision(got[1]):
            return precision(got[1]) or "no", f"accelerate launch --mixed_precision {got[1]}"
    return None


# --- diffusers examples --------------------------------------------------------------------------------

# Defaults read from the scripts' parse_args(); only scripts checked against their source are listed.
_DIFFUSERS_DEFAULTS: dict[str, dict[str, Any]] = {
    "train_dreambooth_lora_flux.py": {"batch_size": 4, "resolution": (512, 512), "cache_latents": False},
}


def diffusers(inv: Invocation, ctx: Context, b: Builder) -> None:
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
        launcher = _launcher_precision(ctx)
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


# --- ai-toolkit ----------------------------------------------------------------------------------------

_TOOLKIT_EXTENSIONS = (".json", ".jsonc", ".yaml", ".yml")


def find_toolkit_config(inv: Invocation, ctx: Context) -> list[Path]:
    """Candidate paths for `run.py <name>`, in ai-toolkit's own lookup order."""
    _, positionals = parse_flags(inv.args)
    if not positionals:
        return []
    name = positionals[0]
    candidates: list[Path] = []
    root = _script_dir(inv, ctx.cwd)
    if root is not None:
        base = root / "config" / name
        candidates.append(base)
        candidates.extend(Path(str(base) + ext) for ext in _TOOLKIT_EXTENSIONS)
    direct = resolve_path(name, ctx.cwd)
    if direct is not None:
        candidates.append(direct)
    return candidates


def load_toolkit_config(inv: Invocation, ctx: Context) -> tuple[Path | None, dict[str, Any] | None, str | None]:
    """(path, job config, None) for the first candidate with ai-toolkit's `config` key; else why not."""
    why = None
    for path in find_toolkit_config(inv, ctx):
        if path.suffix.lower() not in _TOOLKIT_EXTENSIONS or ctx.read_file(path) is None:
            continue
        data, why = load_mapping(path, ctx.read_file)
        if data is not None and "config" in data:
            return path, data, None
        why = why or f"{path.name}: no 'config' section"
    return None, None, why


def ai_toolkit(inv: Invocation, ctx: Context, b: Builder) -> None:
    """ai-toolkit: `config.process[0]` holds `train`, `model`, `network` and `datasets`."""
    path, data, why = load_toolkit_config(inv, ctx)
    if path is None or data is None:
        b.config_failed = True
        b.notes.append(f"settings unknown: {why or 'no readable ai-toolkit config named on the command line'}")
        return
    b.config_files.append(str(path))
    process = lookup(data, "config.process")
    job = process[0] if isinstance(process, list) and process and isinstance(process[0], Mapping) else None
    if job is None:
        b.config_failed = True
        b.notes.append(f"settings unknown: {path.name} has no config.process[0]")
        return
    name = path.name

    def put(setting: str, key: str, convert: Callable[[Any], Any]) -> None:
        value = lookup(job, key)
        if value is not None:
            b.set(setting, convert(value), s.FROM_CONFIG, f"{name}: {key}", str(path))

    put("batch_size", "train.batch_size", to_int)
    put("grad_accum", "train.gradient_accumulation_steps", to_int)
    put("gradient_checkpointing", "train.gradient_checkpointing", to_bool)
    put("optimizer", "train.optimizer", str)
    put("mixed_precision", "train.dtype", precision)
    put("fp8_base", "model.quantize", to_bool)
    put("network_dim", "network.linear", to_int)
    put("network_dim", "network.rank", to_int)
    if to_bool(lookup(job, "train.xformers")):
        b.set("attention", "xformers", s.FROM_CONFIG, f"{name}: train.xformers", str(path))
    if to_bool(lookup(job, "train.sdp")):
        b.set("attention", "sdpa", s.FROM_CONFIG, f"{name}: train.sdp", str(path))
    model_name = lookup(job, "model.name_or_path")
    family = (
        "flux" if to_bool(lookup(job, "model.is_flux")) else family_of(str(lookup(job, "model.arch") or model_name))
    )
    b.set("model_family", family, s.FROM_CONFIG, f"{name}: model", str(path))

    datasets = [d for d in (job.get("datasets") or []) if isinstance(d, Mapping)]
    if datasets:
        sizes: list[object] = []
        for ds in datasets:
            res = ds.get("resolution", 512)  # DatasetConfig default
            sizes.extend(res if isinstance(res, list) else [res])
        b.set("resolution", largest_resolution(sizes), s.FROM_CONFIG, f"{name}: datasets[].resolution", str(path))
        cached = [bool(to_bool(ds.get("cache_latents")) or to_bool(ds.get("cache_latents_to_disk"))) for ds in datasets]
        b.set("cache_latents", all(cached), s.FROM_CONFIG, f"{name}: datasets[].cache_latents_to_disk", str(path))

    # toolkit/config_modules.py TrainConfig / NetworkConfig defaults.
    b.default("batch_size", 1, "ai-toolkit train.batch_size default")
    b.default("gradient_checkpointing", True, "ai-toolkit train.gradient_checkpointing default")
    b.default("optimizer", "adamw", "ai-toolkit train.optimizer default")
    b.default("mixed_precision", "no", "ai-toolkit train.dtype default fp32")


# --- OneTrainer ----------------------------------------------------------------------------------------

_ONETRAINER_ATTENTION = {"SDP": "sdpa", "XFORMERS": "xformers", "FLASH": "flash", "DEFAULT": "none"}
_QUANTIZED_DTYPES = frozenset({"FLOAT_8", "NFLOAT_4", "INT_8", "GGUF"})


def onetrainer(inv: Invocation, ctx: Context, b: Builder) -> None:
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
    # A bool in older configs, "ON"/"OFF"/"CPU_OFFLOADED" (GradientCheckpointingMethod) in newer ones.
    put(
        "gradient_checkpointing",
        "gradient_checkpointing",
        lambda v: to_bool(v) if not isinstance(v, str) or v.lower() in ("true", "false") else v.upper() != "OFF",
    )
    put("resolution", "resolution", lambda v: largest_resolution(str(v).split(",")))
    put("mixed_precision", "train_dtype", precision)
    put("cache_latents", "latent_caching", to_bool)
    put("attention", "attention_mechanism", lambda v: _ONETRAINER_ATTENTION.get(str(v).upper()))
    optimizer = data.get("optimizer")
    optimizer_name = optimizer.get("optimizer") if isinstance(optimizer, Mapping) else optimizer
    if isinstance(optimizer_name, str):
        b.set("optimizer", optimizer_name, s.FROM_CONFIG, f"{name}: optimizer.optimizer", str(path))
    fraction = lookup(data, "layer_offload_fraction")
    if isinstance(fraction, int | float) and not isinstance(fraction, bool):
        b.set("layer_offload_fraction", float(fraction), s.FROM_CONFIG, f"{name}: layer_offload_fraction", str(path))
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

    # modules/util/config/TrainConfig.py default_values().
    b.default("batch_size", 1, "OneTrainer batch_size default")
    b.default("grad_accum", 1, "OneTrainer gradient_accumulation_steps default")
    b.default("gradient_checkpointing", True, "OneTrainer gradient_checkpointing default")
    b.default("cache_latents", True, "OneTrainer latent_caching default")
    b.default("optimizer", "ADAMW", "OneTrainer optimizer default")
    b.default("mixed_precision", "fp16", "OneTrainer train_dtype default FLOAT_16")
    b.default("resolution", (512, 512), "OneTrainer resolution default")


# --- SimpleTuner ---------------------------------------------------------------------------------------

# helpers/configuration/env_file.py env_to_args_map, the entries the advisor reads.
_SIMPLETUNER_ENV = {
    "TRAIN_BATCH_SIZE": "train_batch_size",
    "GRADIENT_ACCUMULATION_STEPS": "gradient_accumulation_steps",
    "USE_GRADIENT_CHECKPOINTING": "gradient_checkpointing",
    "RESOLUTION": "resolution",
    "MIXED_PRECISION": "mixed_precision",
    "OPTIMIZER": "optimizer",
    "BASE_MODEL_PRECISION": "base_model_precision",
    "MODEL_FAMILY": "model_family",
    "USE_XFORMERS": "enable_xformers_memory_efficient_attention",
    "CHECKPOINTING_STEPS": "checkpointing_steps",
}
_SIMPLETUNER_FILES = (("json", "config.json"), ("toml", "config.toml"), ("env", "config.env"))


def _simpletuner_config(ctx: Context, b: Builder) -> tuple[str, Path, dict[str, Any]] | None:
    if ctx.cwd is None:
        return None
    env_name = ctx.env.get("SIMPLETUNER_ENVIRONMENT") or ctx.env.get("SIMPLETUNER_ENV")
    folder = Path(ctx.cwd) / "config"
    if env_name and env_name != "default":
        folder = folder / env_name
    backend = (ctx.env.get("SIMPLETUNER_CONFIG_BACKEND") or "").lower()
    choices = [c for c in _SIMPLETUNER_FILES if not backend or c[0] == backend]
    for fmt, filename in choices:
        path = folder / filename
        if ctx.read_file(path) is None:
            continue
        data = b.load(path, ctx.read_file, fmt)
        if data is None:
            return None
        return fmt, path, data
    return None


def simpletuner(inv: Invocation, ctx: Context, b: Builder) -> None:
    """SimpleTuner: `config/[<env>/]config.{json,toml,env}` under the working directory, or CLI flags."""
    found = _simpletuner_config(ctx, b)
    options: dict[str, Any]
    if found is not None:
        fmt, path, data = found
        b.set("config_format", fmt, s.FROM_CONFIG, path.name, str(path))
        if fmt == "env":
            options = {_SIMPLETUNER_ENV[k]: v for k, v in data.items() if k in _SIMPLETUNER_ENV}
            extra, _ = parse_flags(str(data.get("TRAINER_EXTRA_ARGS", "")).split())
            options.update({k: value_of(v) for k, v in extra.items()})
        else:
            # json_file.normalize_args: the leading "--" is optional.
            options = {str(k).lstrip("-"): v for k, v in data.items()}
        kind, file, name = s.FROM_CONFIG, str(path), path.name
    else:
        flags, _ = parse_flags(inv.args)
        if not flags:
            b.config_failed = True
            b.notes.append("settings unknown: no SimpleTuner config/config.{json,toml,env} found under the process cwd")
            return
        options = {k: value_of(v) for k, v in flags.items()}
        b.values["config_format"] = "cmd"
        kind, file, name = s.FROM_FLAG, None, "command line"

    def put(setting: str, key: str, convert: Callable[[Any], Any]) -> None:
        if key in options:
            b.set(setting, convert(options[key]), kind, f"{name}: {key}", file)

    put("batch_size", "train_batch_size", to_int)
    put("grad_accum", "gradient_accumulation_steps", to_int)
    put("gradient_checkpointing", "gradient_checkpointing", to_bool)
    put("resolution", "resolution", resolution_pair)
    put("mixed_precision", "mixed_precision", precision)
    put("optimizer", "optimizer", str)
    put("network_dim", "lora_rank", to_int)
    put("model_family", "model_family", lambda v: family_of(str(v)) or str(v).lower())
    put("fp8_base", "base_model_precision", lambda v: str(v).lower() not in ("no_change", "none", ""))
    put("resumable", "checkpointing_steps", lambda v: to_int(v) is not None)
    if to_bool(options.get("enable_xformers_memory_efficient_attention")):
        b.set("attention", "xformers", kind, f"{name}: enable_xformers_memory_efficient_attention", file)
    put("attention", "attention_mechanism", lambda v: {"diffusers": "sdpa", "xformers": "xformers"}.get(str(v).lower()))


# --- transformers, Lightning, plain PyTorch (best effort, no defaults) ----------------------------------


def _generic(flags: Flags, b: Builder, table: Sequence[tuple[str, tuple[str, ...], Callable[[str], Any]]]) -> None:
    for setting, names, convert in table:
        got = flag_text(flags, *names)
        if got is not None:
            value = convert(got[1]) if got[1] != "" else convert("true")
            b.set(setting, value, s.FROM_FLAG, f"--{got[0]}")


def transformers(inv: Invocation, _ctx: Context, b: Builder) -> None:
    """HF TrainingArguments flags (`--per_device_train_batch_size`, `--bf16`, `--optim`, ...)."""
    flags, _ = parse_flags(inv.args)
    _generic(
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


def lightning(inv: Invocation, _ctx: Context, b: Builder) -> None:
    """LightningCLI flags (`--trainer.precision bf16-mixed`, `--trainer.accumulate_grad_batches 4`)."""
    flags, _ = parse_flags(inv.args)
    _generic(
        flags,
        b,
        (
            ("mixed_precision", ("trainer.precision",), precision),
            ("grad_accum", ("trainer.accumulate_grad_batches",), to_int),
            ("batch_size", ("data.batch_size", "data.init_args.batch_size"), to_int),
        ),
    )


def pytorch(inv: Invocation, _ctx: Context, b: Builder) -> None:
    """A custom script: the flag names most training scripts use."""
    flags, _ = parse_flags(inv.args)
    _generic(
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


READERS: dict[str, Callable[[Invocation, Context, Builder], None]] = {
    s.KOHYA: kohya,
    s.DIFFUSERS: diffusers,
    s.AI_TOOLKIT: ai_toolkit,
    s.ONETRAINER: onetrainer,
    s.SIMPLETUNER: simpletuner,
    s.TRANSFORMERS: transformers,
    s.LIGHTNING: lightning,
    s.PYTORCH: pytorch,
}
