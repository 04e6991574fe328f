"""What every trainer's reader shares: the settings builder, the reader's context, and value normalisation.

The readers themselves are in `advice/trainers/`, one module per trainer, each following that trainer's own
precedence as read from its source. Defaults are applied only where the trainer's source fixes them and no
config file that could override them failed to load (`Builder.default`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import settings as s
from .argv import Flags, Invocation, flag_text, parse_flags, to_int
from .configfile import ReadFile, load_mapping


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
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 1024.0, as a JSON writer may give a whole number
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
        ("anima", "anima"),
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


def path_mentions(inv: Invocation, cwd: str | None, *needles: str) -> bool:
    """Whether the script's path or the working directory names the trainer (its checkout's folder)."""
    lowered = " ".join([inv.script or "", cwd or ""]).lower()
    return any(n in lowered for n in needles)


def script_dir(inv: Invocation, cwd: str | None) -> Path | None:
    if inv.script is None:
        return None
    path = resolve_path(inv.script, cwd)
    return None if path is None else path.parent


def launcher_precision(ctx: Context) -> tuple[str, str] | None:
    """`--mixed_precision X` given to accelerate launch anywhere in the tree: (normalised, as written)."""
    for launcher in ctx.launchers:
        if launcher.launcher != "accelerate":
            continue
        flags, _ = parse_flags(launcher.launcher_args)
        got = flag_text(flags, "mixed_precision")
        if got and precision(got[1]):
            return precision(got[1]) or "no", f"accelerate launch --mixed_precision {got[1]}"
    return None


#: (setting, the flag names that set it, how to convert the flag's text)
FlagTable = Sequence[tuple[str, tuple[str, ...], Callable[[str], Any]]]


def read_flag_table(flags: Flags, b: Builder, table: FlagTable) -> None:
    """Best effort for trainers without a config file: each (setting, flag names, convert) from the first flag
    given; a bare switch reads as "true"."""
    for setting, names, convert in table:
        got = flag_text(flags, *names)
        if got is not None:
            value = convert(got[1]) if got[1] != "" else convert("true")
            b.set(setting, value, s.FROM_FLAG, f"--{got[0]}")
