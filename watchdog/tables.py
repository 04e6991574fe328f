"""Reading one table of the config file: every section's reader, with errors that name the table and key.

`TableReader` gives typed access key by key (`[policy]`, `[notify]`); `dataclass_from_table` builds a frozen
config dataclass whose defaults are the schema (`[detectors]`, ...); `config.py` checks `[daemon]` with its
own validators through `check_keys` and `key_error`. All three word their errors the same way
(`<where> <key>: expected <what>, got <value>`), and all three refuse unknown keys, so that a misspelt
option fails at start-up instead of silently not applying.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import fields, replace
from typing import Any

from .errors import ConfigError


def check_keys(table: Mapping[str, Any], where: str, known: Collection[str]) -> None:
    """Refuse a key that is not `known`, naming it and what is known."""
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")


def key_error(where: str, key: str, expected: str, got: object, *, secret: bool = False) -> ConfigError:
    """The one wording of a bad value: `[policy] dry_run: expected true or false, got 'yes'`. A `secret` key's value
    is named by its type only (`hidden`)."""
    return ConfigError(f"{where} {key}: expected {expected}, got {hidden(got) if secret else repr(got)}")


def hidden(got: object) -> str:
    """A value that may hold a token (a webhook or Apprise URL, a hook's arguments or environment), as an error names
    it: by its type only, since the error goes to a terminal, a log and systemd's journal."""
    return f"a {type(got).__name__} (not shown: it may hold a secret)"


class TableReader:
    """Typed access to one TOML table, with errors that name the table and key (`[policy] dry_run: ...`)."""

    def __init__(self, table: Mapping[str, Any], where: str, allowed: Sequence[str]) -> None:
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: expected a table, got {type(table).__name__}")
        check_keys(table, where, allowed)
        self.table = table
        self.where = where

    def error(self, key: str, expected: str, got: object, *, secret: bool = False) -> ConfigError:
        return key_error(self.where, key, expected, got, secret=secret)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, "true or false", value)
        return value

    def number(self, key: str, default: float, *, minimum: float = 0.0) -> float:
        value = self.table.get(key, default)
        # TOML reads `nan` and `inf` as floats; NaN passes every `<` test, so a NaN tolerance would verify any pid.
        if not _finite(value) or value < minimum:
            raise self.error(key, f"a number >= {minimum:g}", value)
        return float(value)

    def integer(self, key: str, default: int, *, minimum: int = 0) -> int:
        value = self.table.get(key, default)
        if not _finite(value) or value != int(value) or value < minimum:
            raise self.error(key, f"a whole number >= {minimum}", value)
        return int(value)

    def strings(self, key: str, default: Sequence[str] = (), *, secret: bool = False) -> tuple[str, ...]:
        value = self.table.get(key, list(default))
        if isinstance(value, str) or not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.error(key, "a list of non-empty strings", value, secret=secret)
        return tuple(value)

    def regexes(self, key: str) -> tuple[re.Pattern[str], ...]:
        return tuple(self.regex(key, text) for text in self.strings(key))

    def regex(self, key: str, text: str) -> re.Pattern[str]:
        try:
            return re.compile(text)
        except re.error as exc:
            raise ConfigError(f"{self.where} {key}: invalid regular expression {text!r}: {exc}") from None

    def sub(self, key: str, allowed: Sequence[str]) -> TableReader:
        return TableReader(self.table.get(key, {}), f"{self.where[:-1]}.{key}]", allowed)


def _kind_of(default: object) -> str:
    """What a value like `default` is called in a config file's terms (`a list of strings`, not `frozenset`)."""
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "a whole number"
    if isinstance(default, float):
        return "a finite number"
    if isinstance(default, (tuple, frozenset)):
        return "a list"
    if isinstance(default, Mapping):
        return "a table"
    if isinstance(default, str):
        return "a string"
    return type(default).__name__


def _finite(value: object) -> bool:
    """A TOML number that is neither a boolean, NaN nor infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def dataclass_from_table(cls: type[Any], table: Mapping[str, Any], where: str) -> Any:
    """Build a frozen config dataclass from a TOML table, checking each key and type against the defaults.

    Used for sections owned by other modules ([detectors], ...), so that their dataclass is the one schema:
    a key that is not a field, or a value whose type differs from the field's default, is a ConfigError.
    """
    defaults = cls()
    check_keys(table, where, {f.name for f in fields(cls)})
    values: dict[str, Any] = {}
    for key, given in table.items():
        raw = given
        current = getattr(defaults, key)
        expected: type[Any] = type(current)
        if isinstance(current, bool):
            ok = isinstance(raw, bool)
        elif isinstance(current, (int, float)):
            # int() would quietly turn 1.5 into 1, and NaN passes every range check a field's validator makes.
            ok = _finite(raw) and (isinstance(current, float) or raw == int(raw))
            raw = expected(raw) if ok else raw
        elif current is None:
            ok = True
        elif isinstance(current, (tuple, frozenset)) and isinstance(raw, list):
            ok, raw = True, type(current)(raw)
        elif isinstance(current, Mapping) and isinstance(raw, dict):
            ok = True  # the dataclass normalises and validates its own tables
        else:
            ok = isinstance(raw, expected)
        if not ok:
            raise key_error(where, key, _kind_of(current), raw)
        values[key] = raw
    try:
        return replace(defaults, **values)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
