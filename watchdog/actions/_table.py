"""Reading one TOML table of the actions config: type checks whose errors name the table and the key.

Unknown keys are errors, so that a misspelt option fails at start-up instead of silently not applying.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigError


class TableReader:
    """Typed access to one TOML table, with errors that name the table and key (`[policy] dry_run: ...`)."""

    def __init__(self, table: Mapping[str, Any], where: str, allowed: Sequence[str]) -> None:
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: expected a table, got {type(table).__name__}")
        unknown = sorted(set(table) - set(allowed))
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(allowed)})")
        self.table = table
        self.where = where

    def error(self, key: str, expected: str, got: object) -> ConfigError:
        return ConfigError(f"{self.where} {key}: expected {expected}, got {got!r}")

    def boolean(self, key: str, default: bool) -> bool:
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, "true or false", value)
        return value

    def number(self, key: str, default: float, *, minimum: float = 0.0) -> float:
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
            raise self.error(key, f"a number >= {minimum:g}", value)
        return float(value)

    def strings(self, key: str, default: Sequence[str] = ()) -> tuple[str, ...]:
        value = self.table.get(key, list(default))
        if isinstance(value, str) or not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.error(key, "a list of non-empty strings", value)
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
