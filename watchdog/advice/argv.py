"""Taking a command line apart: which launcher, which training script, which flags.

A training process looks like `python -u flux_train_network.py --train_batch_size 4 ...`, and its launcher
like `accelerate launch --mixed_precision bf16 --num_processes 2 flux_train_network.py ...` or
`torchrun --nproc_per_node 8 train.py ...`. `split_invocation` finds the script (the first `.py`/`.sh`
argument, or the module after `-m`) and separates the launcher's options from the script's own.

`parse_flags` reads the script's options the way argparse does for these trainers: `--name value`,
`--name=value`, a bare `--name` switch, several values for `nargs="*"` options, and the last occurrence of a
flag wins; a single-valued flag's value is the word right after it (`value_of`), whatever positional words
follow. It never raises: a command line is data from another user's process.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath

# Modules that are launchers: the real script follows them.
_LAUNCHER_MODULES = frozenset(
    {
        "accelerate.commands.launch",
        "accelerate.commands.accelerate_cli",
        "torch.distributed.run",
        "torch.distributed.launch",
        "deepspeed.launcher.runner",
    }
)
_PYTHON = re.compile(r"^python(\d+(\.\d+)?)?[mw]?(\.exe)?$")
_NEGATIVE_NUMBER = re.compile(r"^-\d")
_TRUE = frozenset({"1", "true", "yes", "on", "y"})
_FALSE = frozenset({"0", "false", "no", "off", "n", "none"})

Flags = Mapping[str, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class Invocation:
    """A command line split into launcher, script and the script's own arguments."""

    launcher: str | None  # python, accelerate, torchrun, deepspeed, bash, or None
    launcher_args: tuple[str, ...]
    script: str | None  # as written: "sd-scripts/flux_train_network.py"
    module: str | None  # for `python -m pkg.mod`
    args: tuple[str, ...]

    @property
    def script_name(self) -> str | None:
        """The script's file name, or the module name, for display and trainer detection."""
        if self.script is not None:
            return PurePath(self.script).name
        return self.module


def _launcher_of(first: str) -> str | None:
    name = PurePath(first).name.lower()
    if _PYTHON.match(name):
        return "python"
    if name in {"accelerate", "torchrun", "deepspeed", "bash", "sh"}:
        return name
    return None


def split_invocation(argv: Sequence[str]) -> Invocation:
    """Find the training script in `argv`; everything before it is the launcher's business."""
    tokens = [str(t) for t in argv]
    if not tokens:
        return Invocation(None, (), None, None, ())
    first = tokens[0]
    if first.lower().endswith(".py"):
        return Invocation(None, (), first, None, tuple(tokens[1:]))
    launcher = _launcher_of(first)
    i = 1
    if launcher == "accelerate" and len(tokens) > 1 and tokens[1] == "launch":
        i = 2
    start = i
    while i < len(tokens):
        word = tokens[i]
        if word == "-m" and i + 1 < len(tokens):
            module = tokens[i + 1]
            if module in _LAUNCHER_MODULES:
                launcher = module.split(".")[0] if module.startswith("accelerate") else "torchrun"
                if launcher == "accelerate" and i + 2 < len(tokens) and tokens[i + 2] == "launch":
                    i += 1
                i += 2
                continue
            return Invocation(launcher, tuple(tokens[start:i]), None, module, tuple(tokens[i + 2 :]))
        if word == "-c":
            # python -c "code": no script to read (multiprocessing workers look like this).
            return Invocation(launcher, tuple(tokens[start:]), None, None, ())
        if not word.startswith("-") and word.lower().endswith((".py", ".sh")):
            return Invocation(launcher, tuple(tokens[start:i]), word, None, tuple(tokens[i + 1 :]))
        i += 1
    return Invocation(launcher, tuple(tokens[start:]), None, None, ())


def _is_flag(word: str) -> bool:
    return word.startswith("-") and len(word) > 1 and not _NEGATIVE_NUMBER.match(word)


def parse_flags(args: Sequence[str]) -> tuple[dict[str, tuple[str, ...]], tuple[str, ...]]:
    """Return ({flag name without dashes: its values}, positional arguments before the first flag)."""
    flags: dict[str, tuple[str, ...]] = {}
    positionals: list[str] = []
    i = 0
    seen_flag = False
    while i < len(args):
        word = args[i]
        if word == "--":
            break
        if not _is_flag(word):
            if not seen_flag:
                positionals.append(word)
            i += 1
            continue
        seen_flag = True
        name, eq, inline = word.lstrip("-").partition("=")
        if eq:
            flags[name] = (inline,)
            i += 1
            continue
        values: list[str] = []
        i += 1
        while i < len(args) and not _is_flag(args[i]) and args[i] != "--":
            values.append(args[i])
            i += 1
        flags[name] = tuple(values)
    return flags, tuple(positionals)


def value_of(values: Sequence[str]) -> str | bool:
    """A flag's value as argparse reads a single-valued option: the word right after it (True for a bare switch).

    Words after that one are the command's positional arguments (`train.py --train_batch_size 4 config.toml`,
    a trailing `...` in an example), not the flag's: taking the last word would read "config.toml" as the batch
    size and lose the flag. The few list-valued options (`nargs="*"`) are read from `parse_flags` directly.
    """
    return values[0] if values else True


def flag_text(flags: Flags, *names: str) -> tuple[str, str] | None:
    """(name, value) of the first of `names` given with a value; a bare switch has value ""."""
    for name in names:
        if name in flags:
            value = value_of(flags[name])
            return name, ("" if value is True else str(value))
    return None


def to_bool(text: object) -> bool | None:
    """Read a boolean as trainers write it (True, "true", 1, "yes"); None when it is not one."""
    if isinstance(text, bool):
        return text
    if isinstance(text, int | float):
        return bool(text)
    if isinstance(text, str):
        lowered = text.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    return None


def to_int(text: object) -> int | None:
    """Read a positive count ("4", 4, 4.0); None for anything else, including bool and 0 or less."""
    if isinstance(text, bool):
        return None
    if isinstance(text, int):
        return text if text > 0 else None
    if isinstance(text, float) and text.is_integer():
        return int(text) if text > 0 else None
    if isinstance(text, str):
        try:
            value = int(text.strip())
        except ValueError:
            return None
        return value if value > 0 else None
    return None


def to_interval(text: object) -> int | None:
    """Read an every-N interval ("200", 200, 200.0) the way these trainers test it (`N and step % N == 0`, or
    kohya's `<= 0 disables`): N when positive, 0 (off) for 0 or less; None for anything else, including bool."""
    if isinstance(text, bool):
        return None
    if isinstance(text, float):
        if not text.is_integer():
            return None
        text = int(text)
    if isinstance(text, str):
        try:
            text = int(text.strip())
        except ValueError:
            return None
    if isinstance(text, int):
        return max(text, 0)
    return None


def flag_switch(flags: Flags, name: str) -> bool | None:
    """A store_true flag: True if given bare or with a true value, False if given false, None if absent."""
    if name not in flags:
        return None
    value = value_of(flags[name])
    if value is True:
        return True
    meant = to_bool(value)
    return True if meant is None else meant  # `--switch config.toml`: a bare switch, then a positional word


def script_start(argv: Sequence[str]) -> int:
    """Where the script's own arguments begin: after the script (the first `.py` after a launcher's options)
    or after `-m module` (`split_invocation`); with neither, after the program (argv[0])."""
    inv = split_invocation(argv)
    if inv.script is None and inv.module is None:
        return min(1, len(argv))
    return len(argv) - len(inv.args)


def set_flag(argv: Sequence[str], flag: str, value: str | None) -> tuple[str, ...]:
    """`flag` (with `value`) set among the script's own arguments: replaced where they have it, else appended.
    A launcher's options (`accelerate launch --mixed_precision fp16 train.py ...`) are never changed."""
    words = [str(w) for w in argv]
    start = script_start(words)
    for i in range(start, len(words)):
        word = words[i]
        if word.startswith(flag + "="):
            return (*words[:i], flag if value is None else f"{flag}={value}", *words[i + 1 :])
        if word == flag:
            if value is None:
                return tuple(words)
            has_value = i + 1 < len(words) and not words[i + 1].startswith("--")
            return (*words[: i + 1], value, *words[i + (2 if has_value else 1) :])
    return (*words, flag, *([value] if value is not None else []))
