"""ostris ai-toolkit: `run.py <name>` in an ai-toolkit checkout, or whose argument is an ai-toolkit job config.

toolkit/config.py: `run.py <name>` looks in `<toolkit>/config/<name>[.yaml|.yml|.json]`, then at the path
itself; settings live under `config.process[0]`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import settings as s
from ..argv import Flags, Invocation, parse_flags, script_start, to_bool, to_int, to_interval
from ..configcopy import ConfigEdit, ConfigTarget
from ..configfile import format_of, load_mapping, lookup
from ..extract import (
    Builder,
    Context,
    family_of,
    largest_resolution,
    path_mentions,
    precision,
    resolve_path,
    script_dir,
)
from ._base import ConfigCopy, Trainer

ID = "ai-toolkit"
#: ai-toolkit's other spelling of the accumulation (`train.gradient_accumulation`), as a rules.toml variant.
ACCUMULATION_KEY = "gradient_accumulation"


def recognizes(inv: Invocation, _argv0: str, ctx: Context, _flags: Flags) -> bool:
    if (inv.script_name or "").lower() != "run.py":
        return False
    return path_mentions(inv, ctx.cwd, "ai-toolkit", "ai_toolkit") or load_toolkit_config(inv, ctx)[1] is not None


_TOOLKIT_EXTENSIONS = (".json", ".jsonc", ".yaml", ".yml")


def find_toolkit_config(inv: Invocation, ctx: Context) -> list[Path]:
    """Candidate paths for `run.py <name>`, in ai-toolkit's own lookup order."""
    _, positionals = parse_flags(inv.args)
    if not positionals:
        return []
    name = positionals[0]
    candidates: list[Path] = []
    root = script_dir(inv, ctx.cwd)
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


def read(inv: Invocation, ctx: Context, b: Builder) -> None:
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
    if lookup(job, "train.gradient_accumulation") is not None:
        # TrainConfig refuses gradient_accumulation and gradient_accumulation_steps together: a change to this
        # config's accumulation is written under the key it already uses (the variant of the rules' spelling).
        put("grad_accum", "train.gradient_accumulation", to_int)
        b.set("config_format", ACCUMULATION_KEY, s.FROM_CONFIG, f"{name}: train.{ACCUMULATION_KEY}", str(path))
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

    _read_schedule(job, path, b)

    # toolkit/config_modules.py TrainConfig / NetworkConfig defaults.
    b.default("batch_size", 1, "ai-toolkit train.batch_size default")
    b.default("gradient_checkpointing", True, "ai-toolkit train.gradient_checkpointing default")
    b.default("optimizer", "adamw", "ai-toolkit train.optimizer default")
    b.default("mixed_precision", "no", "ai-toolkit train.dtype default fp32")


def _read_schedule(job: Mapping[str, Any], path: Path, b: Builder) -> None:
    """`train.steps`, `sample.*` and `save.save_every` of config.process[0], with toolkit/config_modules.py's
    defaults (TrainConfig `steps` 1000, `skip_first_sample`/`force_first_sample`/`disable_sampling` False;
    SampleConfig `sample_every` 100, `width`/`height` 512; SaveConfig `save_every` 1000) and
    jobs/process/BaseSDTrainProcess.py's use of them: a baseline sample before training unless
    `skip_first_sample` or `disable_sampling` (or a resumed run, unless `force_first_sample`), then a sample
    and a save whenever `step % every == 0` (0 turns either off). ai-toolkit counts only steps, never epochs.
    """
    name, file = path.name, str(path)

    def put(setting: str, key: str, convert: Callable[[Any], Any]) -> None:
        value = lookup(job, key)
        if value is not None:
            b.set(setting, convert(value), s.FROM_CONFIG, f"{name}: {key}", file)

    put("max_train_steps", "train.steps", to_int)
    put("save_every_n_steps", "save.save_every", to_interval)
    if to_bool(lookup(job, "train.disable_sampling")):
        detail = f"{name}: train.disable_sampling"
        b.set("sample_every_n_steps", 0, s.FROM_CONFIG, detail, file)
        b.set("sample_at_first", False, s.FROM_CONFIG, detail, file)
    elif isinstance(job.get("sample"), Mapping):
        put("sample_every_n_steps", "sample.sample_every", to_interval)
        b.default("sample_every_n_steps", 100, "ai-toolkit sample.sample_every default")
        # `skip_first_sample` is tested first: it wins over `force_first_sample`, which only matters on resume.
        if to_bool(lookup(job, "train.skip_first_sample")):
            put("sample_at_first", "train.skip_first_sample", lambda v: not to_bool(v))
        elif to_bool(lookup(job, "train.force_first_sample")):
            put("sample_at_first", "train.force_first_sample", to_bool)
        else:
            b.default("sample_at_first", True, "ai-toolkit samples before training unless train.skip_first_sample")
        b.set("sample_resolution", _sample_resolution(job["sample"]), s.FROM_CONFIG, f"{name}: sample", file)
    else:
        # Without a sample section ai-toolkit still runs its sampling hooks with no prompts; what that costs
        # was not checked, so the sampling schedule stays unknown.
        b.notes.append(f"sampling schedule unknown: {name} has no sample section")
    b.default("max_train_steps", 1000, "ai-toolkit train.steps default")
    b.default("save_every_n_steps", 1000, "ai-toolkit save.save_every default")
    b.default("sample_every_n_epochs", 0, "ai-toolkit schedules by steps only")
    b.default("save_every_n_epochs", 0, "ai-toolkit schedules by steps only")


def _sample_resolution(sample: Mapping[str, Any]) -> tuple[int, int] | None:
    """The largest sample image: `sample.width/height` (512 each by default), which `samples[]` items may
    override one by one (SampleItem)."""
    width, height = to_int(sample.get("width", 512)), to_int(sample.get("height", 512))
    sizes = [(width, height)]
    items = sample.get("samples")
    for item in items if isinstance(items, list) else []:
        if isinstance(item, Mapping):
            sizes.append((to_int(item.get("width", width)), to_int(item.get("height", height))))
    known = [(w, h) for w, h in sizes if w is not None and h is not None]
    return max(known, key=lambda wh: wh[0] * wh[1]) if known else None


def config_target(argv: Sequence[str], settings: s.TrainerSettings, _edit: ConfigEdit, _cwd: str) -> ConfigTarget | str:
    """The job config `run.py <name>` names (its first positional word), the rules' keys under `config.process[0]`.

    The copy's absolute path replaces that word: toolkit/config.py `get_config` tries `<toolkit>/config/<word>`,
    which for an absolute path is the path itself. ai-toolkit takes the paths in the config (`datasets[].folder_path`,
    `training_folder`) as they are, relative to its working directory, so a copy elsewhere reads the same; the
    job's name is `config.name`, not the file's. It replaces `${VAR}` in the text with the environment before
    parsing: the copy is parsed after the same replacement (so it holds those values).
    """
    if not settings.config_files:
        return "no readable ai-toolkit config named on the command line"
    path = Path(settings.config_files[0])
    fmt = format_of(path)
    if fmt not in ("yaml", "json"):
        return f"{path.name}: not a YAML or JSON file"
    words = tuple(str(w) for w in argv)
    start = script_start(words)
    if start >= len(words) or words[start].startswith("-"):
        return "the config is not the first word after run.py"

    def run_on(copy: Path) -> tuple[tuple[str, ...], dict[str, str]]:
        return (*words[:start], str(copy), *words[start + 1 :]), {}

    return ConfigTarget(path, fmt, run_on, root=("config", "process", 0), expand_env=True)


TRAINER = Trainer(
    ID,
    "ostris ai-toolkit",
    50,
    recognizes,
    read,
    config_copy=ConfigCopy(frozenset({ID, f"{ID}@{ACCUMULATION_KEY}"}), config_target),
)
