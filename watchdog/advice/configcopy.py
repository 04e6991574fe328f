"""A suggested change written into a copy of the trainer's config file, for `vramwatch probe --try`.

Three pieces, each decided once:

* `ConfigEdit`: the change as data, from rules.toml's `[rule.apply]` (config keys and their values, and flags
  for the command line), beside the human `[rule.syntax]` text it must agree with (a test checks);
* `ConfigTarget`: where one trainer keeps the file the change goes to, in which format, and how its command is
  pointed at a copy (each trainer module's `config_copy`, `trainers/_base.py`);
* `copy_text`: the copy's text, the original parsed as the trainer parses it, the keys set, and written back
  in the same format. The original is never written: the probe writes this text to a new file and removes it
  after the test run.

Keys are dotted paths from the target's `root` (ai-toolkit's job lives under `config.process[0]`):
`train.batch_size`; `datasets[].resolution` sets the key in every item of the list `datasets`. The last key is
set whether the file has it or not (a default made explicit); a table or list on the way must be there: a change
that would have to invent a section or a dataset is refused.

A copy loses the original's comments and layout; its values keep their types. YAML is read with the loader
ai-toolkit (the YAML trainer) reads with: PyYAML's safe loader plus its resolver for exponent floats (`lr:
1e-4` is a float to ai-toolkit and would otherwise be written back as the string '1e-4'). TOML is written
with tomli-w (sd-scripts and SimpleTuner read it back with the `toml` package: identical data).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from string import Template
from typing import Any

from .configfile import parse_mapping

#: A config key in `[rule.apply]`: dotted names, each optionally `[]` (every item of a list).
KEY = re.compile(r"[A-Za-z0-9_][\w-]*(\[\])?(\.[A-Za-z0-9_][\w-]*(\[\])?)*")
#: A command-line flag in `[rule.apply]` (added with the config change: kohya's `--gradient_accumulation_steps`).
FLAG = re.compile(r"--[A-Za-z0-9][\w-]*")
FORMATS = ("yaml", "json", "toml")

Scalar = str | int | float | bool
Value = Scalar | list[Scalar]


class CopyError(ValueError):
    """The change cannot be written into a copy of this file (unreadable, no such list, not a table)."""


@dataclass(frozen=True, slots=True)
class ConfigEdit:
    """A change as data: `values` set in a copy of the trainer's config file and `flags` added to its command
    line. In a rule (`Rule.apply`) strings may hold the syntax's placeholders; in a suggestion they are filled
    (`filled`), and `file` is the config file the rule's setting was read from, where that is known."""

    key: str  # the [rule.syntax] key it spells the change for: "ai-toolkit", "kohya@dataset_config"
    values: tuple[tuple[str, Value], ...]
    flags: tuple[tuple[str, str | None], ...] = ()  # (flag, value), None for a bare switch
    file: str | None = None

    @property
    def variant(self) -> str | None:
        """The part of `key` after "@" (kohya@dataset_config: "dataset_config"), None without one."""
        return self.key.partition("@")[2] or None

    def filled(self, variables: Mapping[str, str], file: str | None = None) -> ConfigEdit:
        """The edit with its placeholders filled; a value that is one placeholder alone (`$new_accum`) takes the
        variable's value as a number where it is one, so that a batch size stays an integer."""
        values = tuple((k, _fill(v, variables)) for k, v in self.values)
        flags = tuple((f, None if v is None else str(_fill(v, variables))) for f, v in self.flags)
        return replace(self, values=values, flags=flags, file=file)


def _fill(value: Value, variables: Mapping[str, str]) -> Value:
    if isinstance(value, list):
        return [_fill_scalar(v, variables) for v in value]
    return _fill_scalar(value, variables)


def _fill_scalar(value: Scalar, variables: Mapping[str, str]) -> Scalar:
    if not isinstance(value, str):
        return value
    text = Template(value).safe_substitute(variables)
    if re.fullmatch(r"\$\{?\w+\}?", value) and re.fullmatch(r"-?\d+", text):
        return int(text)
    return text


#: How a trainer's command is pointed at the copy: the copy's path -> (argv, environment variables to set).
RunOn = Callable[[Path], tuple[tuple[str, ...], dict[str, str]]]
#: What the copy must also say to mean what the original meant in its own place (SimpleTuner reads files beside
#: its config unless told where they are): sets them in the parsed copy, returns (key, value) for each one set.
Adjust = Callable[[dict[str, Any]], tuple[tuple[str, Value], ...]]


@dataclass(frozen=True, slots=True)
class ConfigTarget:
    """The config file one change is written to, and how the trainer is run on a copy of it."""

    path: Path  # the original: read, never written
    fmt: str  # yaml, json or toml: the copy is written in the same format
    run_on: RunOn
    root: tuple[str | int, ...] = ()  # where the rules' keys start in the file
    spellings: tuple[str, ...] = ("",)  # prefixes a key may carry (SimpleTuner: "" or "--"); new keys get the first
    # Where the copy goes: a private temporary directory, or (True) a new hidden directory beside the original,
    # for a trainer that finds its config by a path relative to its working directory (SimpleTuner).
    beside: bool = False
    expand_env: bool = False  # ${VAR} is replaced in the text before parsing, as the trainer does (ai-toolkit)
    adjust: Adjust | None = None


@dataclass(frozen=True, slots=True)
class CopiedConfig:
    """What a tried change wrote: the original, its copy (removed after the test run) and the keys set."""

    original: str
    copy: str
    set: tuple[tuple[str, Value], ...]  # concrete paths from the target's root: "datasets[0].resolution"


@cache
def _loader() -> Any:
    """PyYAML's safe loader with ai-toolkit's resolver for exponent floats (toolkit/config.py `fixed_loader`).

    Built on first use: PyYAML and tomli-w are imported where a config is parsed or written, not at start
    (`configfile.parse_mapping` says why)."""
    import yaml  # type: ignore[import-untyped,unused-ignore]  # no types-PyYAML in the dev deps

    class Loader(yaml.SafeLoader):  # type: ignore[misc,unused-ignore]  # PyYAML's classes are untyped
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(
            r"""^(?:
             [-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
            |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
            |\.[0-9_]+(?:[eE][-+][0-9]+)?
            |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
            |[-+]?\.(?:inf|Inf|INF)
            |\.(?:nan|NaN|NAN))$""",
            re.VERBOSE,
        ),
        list("-+0123456789."),
    )
    return Loader


_ENV_REFERENCE = re.compile(r"\$\{([^}]+)\}")


def _parse(text: str, fmt: str) -> dict[str, Any]:
    if fmt == "yaml":
        import yaml  # type: ignore[import-untyped,unused-ignore]

        try:
            data = yaml.load(text, Loader=_loader())  # noqa: S506  # a SafeLoader subclass: no object tags
        except yaml.YAMLError as exc:
            raise CopyError("cannot parse YAML") from exc
        if not isinstance(data, dict):
            raise CopyError("the YAML top level is not a table")
        return data
    data, why = parse_mapping(text, fmt)
    if data is None:
        raise CopyError(why or f"cannot parse {fmt}")
    return data


def dump(data: Mapping[str, Any], fmt: str) -> str:
    """`data` written as `fmt`, keys in their order."""
    if fmt == "yaml":
        import yaml  # type: ignore[import-untyped,unused-ignore]

        return str(yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True, default_flow_style=False))
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if fmt == "toml":
        import tomli_w

        return tomli_w.dumps(data)
    raise CopyError(f"unsupported format {fmt!r}")


def _steps(key: str) -> list[tuple[str, bool]]:
    """`datasets[].resolution` -> [("datasets", True), ("resolution", False)]."""
    return [(part.removesuffix("[]"), part.endswith("[]")) for part in key.split(".")]


def _spelled(node: Mapping[str, Any], name: str, spellings: Sequence[str]) -> list[str]:
    """The spellings of `name` the table has (SimpleTuner: `x` and `--x`), or the first to create."""
    present = [p + name for p in spellings if p + name in node]
    return present or [spellings[0] + name]


def set_key(doc: dict[str, Any], key: str, value: Value, spellings: Sequence[str] = ("",)) -> list[str]:
    """Set the dotted `key` in `doc`; the concrete paths set ("datasets[0].resolution"). CopyError where a table
    or list the key goes through is missing (or the list empty), or is not a table or list of tables."""
    nodes: list[tuple[dict[str, Any], str]] = [(doc, "")]
    steps = _steps(key)
    for index, (name, each) in enumerate(steps):
        last = index == len(steps) - 1
        following: list[tuple[dict[str, Any], str]] = []
        for node, where in nodes:
            for spelled in _spelled(node, name, spellings):
                path = f"{where}.{spelled}" if where else spelled
                if last and not each:
                    node[spelled] = copy.deepcopy(value)
                    following.append((node, path))
                    continue
                if each:
                    items = node.get(spelled)
                    if not isinstance(items, list) or not items:
                        raise CopyError(f"{path} is not a list with items: nothing to set {key} in")
                    if not all(isinstance(item, dict) for item in items):
                        raise CopyError(f"{path} holds items that are not tables")
                    if last:
                        raise CopyError(f"{key}: a list cannot be the key set")
                    following.extend((item, f"{path}[{i}]") for i, item in enumerate(items))
                    continue
                child = node.get(spelled)
                if not isinstance(child, dict):
                    raise CopyError(f"{path} is not a table" if spelled in node else f"no {path} in the file")
                following.append((child, path))
        nodes = following
    return [where for _, where in nodes]


def _root(doc: dict[str, Any], root: Sequence[str | int]) -> dict[str, Any]:
    node: Any = doc
    for part in root:
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and -len(node) <= part < len(node) else None
        else:
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            raise CopyError(f"no {'.'.join(map(str, root))} in the file")
    if not isinstance(node, dict):
        raise CopyError(f"{'.'.join(map(str, root))} is not a table")
    return node


def copy_text(
    text: str, target: ConfigTarget, edit: ConfigEdit, env: Mapping[str, str] | None = None
) -> tuple[str, tuple[tuple[str, Value], ...]]:
    """The copy's text with `edit`'s values set, and (path, value) for every key set; CopyError when the change
    cannot be written into this file. `env` fills `${VAR}` first where the trainer does (`expand_env`)."""
    if target.expand_env:
        known = env or {}
        text = _ENV_REFERENCE.sub(lambda m: known.get(m.group(1), m.group(0)), text)
    doc = _parse(text, target.fmt)
    node = _root(doc, target.root)
    done: list[tuple[str, Value]] = []
    for key, value in edit.values:
        done.extend((path, value) for path in set_key(node, key, value, target.spellings))
    if target.adjust is not None:
        done.extend(target.adjust(node))
    return dump(doc, target.fmt), tuple(done)


__all__ = [
    "FLAG",
    "FORMATS",
    "KEY",
    "ConfigEdit",
    "ConfigTarget",
    "CopiedConfig",
    "CopyError",
    "copy_text",
    "dump",
    "set_key",
]
