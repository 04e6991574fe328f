"""Reading trainers' config files safely: bounded size, any failure means "unknown", never an exception.

The advisor reads files named on another user's command line (a kohya `--config_file`, an ai-toolkit YAML),
possibly as root. So it reads at most `MAX_CONFIG_BYTES`, only regular files, never follows a FIFO or a
device, and turns every problem (missing, unreadable, not UTF-8, broken TOML/JSON/YAML, wrong shape) into
`None` plus a note. YAML is parsed with `yaml.safe_load` only: a config file must never run code.

`ReadFile` is the seam: tests pass a dict-backed reader so they need no files at all.
"""

from __future__ import annotations

import json
import re
import stat
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

MAX_CONFIG_BYTES = 1 << 20  # trainer configs are a few kB; a larger file is not a config

ReadFile = Callable[[Path], "str | None"]


_PSEUDO_ROOTS = ("/proc/", "/sys/", "/dev/")


def read_text_file(path: Path) -> str | None:
    """Return the text of a regular file of at most MAX_CONFIG_BYTES, or None for anything else."""
    try:
        # /proc files stat as regular and empty; another process's environ is not a config.
        if str(path.resolve()).startswith(_PSEUDO_ROOTS):
            return None
        # stat first: opening a FIFO named as a "config" would block the advisor forever.
        info = path.stat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_CONFIG_BYTES:
            return None
        with path.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except (OSError, ValueError):
        return None
    if len(data) > MAX_CONFIG_BYTES:
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None


def parse_mapping(text: str, fmt: str) -> tuple[dict[str, Any] | None, str | None]:
    """Parse `text` as `fmt` (toml, json, yaml); return (mapping, None) or (None, why it failed)."""
    try:
        if fmt == "toml":
            data: Any = tomllib.loads(text)
        elif fmt == "json":
            data = json.loads(text)
        elif fmt == "yaml":
            # Imported on the first YAML config read, not at start: resident memory of a months-long daemon that a
            # card with no YAML-configured trainer on it never needs.
            import yaml  # type: ignore[import-untyped,unused-ignore]  # no types-PyYAML in the dev deps

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                return None, f"cannot parse YAML{_where(exc)}"
        else:
            return None, f"unsupported format {fmt!r}"
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, RecursionError, ValueError) as exc:
        return None, f"cannot parse {fmt.upper()}{_where(exc)}"
    if not isinstance(data, dict):
        return None, f"{fmt.upper()} top level is {type(data).__name__}, not a table"
    return data, None


def _where(exc: BaseException) -> str:
    """ " (line N)" for a parse error. Never the message itself: YAML quotes the offending line, and the
    file may not be the user's own (a symlink to a secret read with the daemon's rights)."""
    mark = getattr(exc, "problem_mark", None)
    line = getattr(mark, "line", None)
    if isinstance(line, int):
        return f" (line {line + 1})"
    lineno = getattr(exc, "lineno", None)
    if isinstance(lineno, int):
        return f" (line {lineno})"
    found = re.search(r"line (\d+)", str(exc))
    return f" (line {found.group(1)})" if found else ""


def parse_env_file(text: str) -> dict[str, str]:
    """Parse a shell-style `KEY=value` file (SimpleTuner config.env): `export`, quotes and `+=` handled."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].strip()
        eq = line.find("=")
        if eq <= 0:
            continue
        append = line[eq - 1] == "+"
        key = line[: eq - 1 if append else eq].strip()
        if not key.isidentifier():
            continue
        value = line[eq + 1 :].strip().strip('"').strip("'").strip()
        values[key] = f"{values[key]} {value}".strip() if append and key in values else value
    return values


def format_of(path: Path) -> str | None:
    """The parser a file name calls for, from its suffix."""
    suffix = path.suffix.lower()
    return {".toml": "toml", ".json": "json", ".jsonc": "json", ".yaml": "yaml", ".yml": "yaml", ".env": "env"}.get(
        suffix
    )


def load_mapping(path: Path, read_file: ReadFile, fmt: str | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """Read and parse one config file; return (mapping, None) or (None, a note saying why not)."""
    fmt = fmt or format_of(path)
    if fmt is None:
        return None, f"{path.name}: unknown config format"
    text = read_file(path)
    if text is None:
        return None, f"{path.name}: missing, unreadable or larger than {MAX_CONFIG_BYTES} bytes"
    if fmt == "env":
        return dict(parse_env_file(text)), None
    data, why = parse_mapping(text, fmt)
    return data, (f"{path.name}: {why}" if why else None)


def lookup(data: Mapping[str, Any], dotted: str) -> Any:
    """`lookup(d, "train.batch_size")` -> d["train"]["batch_size"], or None when any step is missing."""
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node
