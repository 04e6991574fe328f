"""SimpleTuner: its `simpletuner` entry point, or a `train.py` in its checkout or with `SIMPLETUNER_*` set;
`config/[<env>/]config.{json,toml,env}` under the working directory (helpers/configuration/loader.py, backend
chosen by `SIMPLETUNER_CONFIG_BACKEND`; JSON keys may keep their `--`), or its flags. Asked to save through
its signal file: it checkpoints at the next step when `manual_checkpoint` there grows, and goes on.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

from ...model import ProcessMeta
from .. import settings as s
from ..argv import Flags, Invocation, parse_flags, to_bool, to_int, to_interval, value_of
from ..configcopy import ConfigEdit, ConfigTarget, Value
from ..extract import Builder, Context, family_of, path_mentions, precision, resolution_pair, resolve_path
from ._base import ConfigCopy, SaveNow, Trainer

ID = "simpletuner"
SIGNAL_FILE = "SIMPLETUNER_ACCELERATE_SIGNAL_FILE"  # the JSON file its train.py polls
COUNTER = "manual_checkpoint"  # the key in it that asks for a checkpoint when it grows


def recognizes(inv: Invocation, argv0: str, ctx: Context, _flags: Flags) -> bool:
    first = PurePath(argv0).name.lower() if argv0 else ""
    if first == "simpletuner" or (inv.module or "").startswith("simpletuner"):
        return True
    if (inv.script_name or "").lower() not in ("train.py", "train.sh"):
        return False
    return path_mentions(inv, ctx.cwd, "simpletuner") or any(k.startswith("SIMPLETUNER_") for k in ctx.env)


# helpers/configuration/env_file.py env_to_args_map, the entries the advisor reads.
_SIMPLETUNER_ENV = {
    "TRAIN_BATCH_SIZE": "train_batch_size",
    "GRADIENT_ACCUMULATION_STEPS": "gradient_accumulation_steps",
    "USE_GRADIENT_CHECKPOINTING": "gradient_checkpointing",
    "RESOLUTION": "resolution",
    "RESOLUTION_TYPE": "resolution_type",
    "DATALOADER_CONFIG": "data_backend_config",
    "MIXED_PRECISION": "mixed_precision",
    "OPTIMIZER": "optimizer",
    "BASE_MODEL_PRECISION": "base_model_precision",
    "MODEL_FAMILY": "model_family",
    "USE_XFORMERS": "enable_xformers_memory_efficient_attention",
    "CHECKPOINTING_STEPS": "checkpointing_steps",
    "MAX_NUM_STEPS": "max_train_steps",
    "NUM_EPOCHS": "num_train_epochs",
    "VALIDATION_STEPS": "validation_steps",
    "VALIDATION_STEP_INTERVAL": "validation_step_interval",
    "CHECKPOINT_STEP_INTERVAL": "checkpoint_step_interval",
}
_SIMPLETUNER_FILES = (("json", "config.json"), ("toml", "config.toml"), ("env", "config.env"))


def _config_folder(ctx: Context) -> Path | None:
    """`config/[<env>/]` under the working directory: where SimpleTuner looks for its config and, when
    `data_backend_config` is not given, for `multidatabackend.json` (StateTracker's config path)."""
    if ctx.cwd is None:
        return None
    env_name = ctx.env.get("SIMPLETUNER_ENVIRONMENT") or ctx.env.get("SIMPLETUNER_ENV")
    folder = Path(ctx.cwd) / "config"
    return folder / env_name if env_name and env_name != "default" else folder


def _simpletuner_config(ctx: Context, b: Builder) -> tuple[str, Path, dict[str, Any]] | None:
    folder = _config_folder(ctx)
    if folder is None:
        return None
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


def read(inv: Invocation, ctx: Context, b: Builder) -> None:
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
    if _counts_pixels(options.get("resolution_type")):
        put("resolution", "resolution", resolution_pair)
    _dataset_resolution(options, ctx, b)
    put("mixed_precision", "mixed_precision", precision)
    put("optimizer", "optimizer", str)
    put("network_dim", "lora_rank", to_int)
    put("model_family", "model_family", lambda v: family_of(str(v)) or str(v).lower())
    put("fp8_base", "base_model_precision", _quantized)
    # Newer SimpleTuner names the intervals `checkpoint_step_interval` and `validation_step_interval` (the older names
    # stay as aliases): a config written by its UI carries the new ones.
    saves = "checkpoint_step_interval" if "checkpoint_step_interval" in options else "checkpointing_steps"
    samples = "validation_step_interval" if "validation_step_interval" in options else "validation_steps"
    put("resumable", saves, lambda v: to_int(v) is not None)
    if to_bool(options.get("enable_xformers_memory_efficient_attention")):
        b.set("attention", "xformers", kind, f"{name}: enable_xformers_memory_efficient_attention", file)
    put("attention", "attention_mechanism", lambda v: {"diffusers": "sdpa", "xformers": "xformers"}.get(str(v).lower()))

    # The schedule. helpers/configuration/cmd_args.py: `--max_train_steps` "overrides num_train_epochs";
    # the trainer computes the steps from `--num_train_epochs` only when max_train_steps is unset or 0.
    # `--validation_steps` and `--checkpointing_steps` are step intervals. Their argparse defaults differ between
    # SimpleTuner versions, so none is assumed here.
    steps = to_int(options.get("max_train_steps"))
    if steps is not None:
        put("max_train_steps", "max_train_steps", to_int)
    else:
        put("max_train_epochs", "num_train_epochs", to_int)
    put("sample_every_n_steps", samples, to_interval)
    put("save_every_n_steps", saves, to_interval)


def _quantized(precision: object) -> bool:
    """`base_model_precision` stores the base in fewer bits than bf16 (`int8-quanto`, `nf4-bnb`, `fp8-torchao`):
    not `no_change`, nor a 16-bit preset (`int16-sdnq`, `fp16-sdnq`), which saves nothing over bf16."""
    name = str(precision).lower()
    return name not in ("no_change", "none", "") and "16" not in name


#: The datasets that train on images (helpers/data_backend/config/image.py: `dataset_type` defaults to "image";
#: conditioning and eval sets follow the training images, text and image embeds are caches).
_TRAINING_DATASETS = frozenset({"image", "video"})


def _counts_pixels(resolution_type: object) -> bool:
    """A resolution in pixels: "pixel" (the shorter edge), "pixel_area" (the edge of a square of that area), or
    unset. "area" counts megapixels (1.0), which is no side length."""
    return resolution_type is None or str(resolution_type).lower() in ("pixel", "pixel_area")


def _dataset_resolution(options: Mapping[str, Any], ctx: Context, b: Builder) -> None:
    """The dataloader config (`data_backend_config`; by default `multidatabackend.json` beside the config file, or in
    `config/` for a run configured by flags alone, as SimpleTuner's `configuration/cmd_args.py` defaults it): each
    dataset's own `resolution` and `resolution_type` win over the main config's (image.py `from_dict`:
    `backend_dict.get("resolution", args.resolution)`), and most set them. The run trains at the largest of its
    enabled image and video datasets'; unknown when the file cannot be read, when a dataset counts in megapixels,
    or when one falls back to a main-config resolution that is not known. Telling `--resolution 512` to a run
    whose datasets say 1024 would change nothing."""
    named = options.get(_BACKEND_CONFIG)
    if isinstance(named, str) and named:
        path = resolve_path(named, ctx.cwd)
    else:
        folder = _config_folder(ctx)  # (where the config file was found, when one was)
        path = None if folder is None else folder / "multidatabackend.json"
    datasets = None if path is None else _datasets(path, ctx)
    if path is None or datasets is None:
        where = path.name if path is not None else "the dataloader config (data_backend_config)"
        b.forget("resolution", f"resolution unknown: {where} sets it per dataset and could not be read")
        return
    b.config_files.append(str(path))
    main = b.values.get("resolution")
    own: tuple[int, tuple[int, int], str] | None = None  # (area, resolution, id): the largest a dataset sets itself
    inherited = 0  # the area of the main config's resolution, where a dataset falls back to it
    for ds in datasets:
        if str(ds.get("dataset_type", "image")).lower() not in _TRAINING_DATASETS:
            continue
        if ds.get("disabled") or ds.get("disable"):  # SimpleTuner's own test (factory.py): any true value
            continue
        kind = ds.get("resolution_type", options.get("resolution_type"))
        value = resolution_pair(ds.get("resolution")) if "resolution" in ds else main
        if not _counts_pixels(kind) or not isinstance(value, tuple):
            b.forget("resolution", f"resolution unknown: dataset {ds.get('id', '?')!s:.40} in {path.name} does not "
                     "give it in pixels")  # fmt: skip
            return
        area = value[0] * value[1]
        if "resolution" not in ds:
            inherited = max(inherited, area)
        elif own is None or area > own[0]:
            own = (area, value, str(ds.get("id", "?"))[:40])
    # The change goes where the largest resolution is set: in the datasets unless the main config's alone is larger
    # than all of theirs (on a tie, lowering the main config's would leave a dataset's own at the peak).
    if own is not None and own[0] >= inherited:
        b.set("resolution", own[1], s.FROM_DATASET_CONFIG, f"{path.name}: dataset {own[2]} resolution", str(path))


def _datasets(path: Path, ctx: Context) -> list[Mapping[str, Any]] | None:
    """The datasets of a dataloader config (a JSON list), or None when it cannot be read or is not one. Nothing of
    it but a dataset's id is ever quoted (not even a parse error's text): it may hold a bucket's credentials."""
    text = ctx.read_file(path)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError):
        return None
    return [d for d in data if isinstance(d, Mapping)] if isinstance(data, list) else None


ENVIRONMENT = "SIMPLETUNER_ENVIRONMENT"  # loader.py: wins over SIMPLETUNER_ENV and ENV
_BACKEND_CONFIG = "data_backend_config"


def config_target(argv: Sequence[str], settings: s.TrainerSettings, edit: ConfigEdit, cwd: str) -> ConfigTarget | str:
    """`config/[<env>/]config.{json,toml}` under the working directory. SimpleTuner finds its config only as
    `config/<env>/config.<backend>` (helpers/configuration/{json,toml}_file.py), so the copy goes in a new hidden
    directory beside the original, named to it by SIMPLETUNER_ENVIRONMENT.

    That directory is also SimpleTuner's config path (loader.py `StateTracker.set_config_path`), where it looks
    for `multidatabackend.json` when `data_backend_config` is not given: the copy then names the original's
    explicitly. Paths in the config are otherwise relative to the working directory, which does not change.
    """
    if edit.variant not in ("json", "toml") or settings.config_format != edit.variant or not settings.config_files:
        return f"no config/config.{edit.variant} was read"
    if any(w == "--env" or w.startswith(("env=", "--env=")) for w in argv):
        return "the command names its environment (env=...), which would win over the copy's"
    path, base = Path(settings.config_files[0]), Path(cwd) / "config"
    if not path.parent.is_relative_to(base):
        return f"{path.name} is not under config/ in the working directory"
    backend_config = str(PurePath("config", *path.parent.relative_to(base).parts, "multidatabackend.json"))

    def run_on(copy: Path) -> tuple[tuple[str, ...], dict[str, str]]:
        return tuple(argv), {ENVIRONMENT: str(copy.parent.relative_to(base))}

    def adjust(doc: dict[str, Any]) -> tuple[tuple[str, Value], ...]:
        if _BACKEND_CONFIG in doc or f"--{_BACKEND_CONFIG}" in doc:
            return ()
        doc[_BACKEND_CONFIG] = backend_config
        return ((_BACKEND_CONFIG, backend_config),)

    return ConfigTarget(path, edit.variant, run_on, spellings=("", "--"), beside=True, adjust=adjust)


CONFIG_COPY = ConfigCopy(
    frozenset({f"{ID}@json", f"{ID}@toml"}),
    config_target,
    # env_file.py reads config.env's lines itself (`+=` appends, `${...}` values are dropped): not rewritten.
    not_copied=(
        (f"{ID}@env", "config.env is not rewritten (its `+=` and `${...}` lines are SimpleTuner's own shell dialect)"),
        (f"{ID}@dataset_config", "the dataloader config is not rewritten: set each image dataset's resolution there"),
    ),
)


def _has_signal_file(_meta: ProcessMeta, env: Mapping[str, str]) -> bool:
    return bool(env.get(SIGNAL_FILE))


SAVE_NOW = SaveNow(
    "simpletuner", "SimpleTuner checkpoints at its next step when manual_checkpoint in its signal file grows",
    stops_run=False, detect=_has_signal_file, signal_file_env=SIGNAL_FILE, counter=COUNTER,
)  # fmt: skip
TRAINER = Trainer(ID, "SimpleTuner", 40, recognizes, read, save_now=SAVE_NOW, config_copy=CONFIG_COPY)
