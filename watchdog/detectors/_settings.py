"""Config fields with their range beside them, and the one check that reads those ranges.

Every detector's config is a frozen dataclass whose fields are declared with `setting(default, check)`, so the
valid range of a threshold sits on the line that defines it; `validate` runs every field's check and raises
one `ConfigError` naming each bad field (as `[detectors]` in a config file would spell it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import field, fields
from typing import Any, TypeVar

from ..errors import ConfigError

T = TypeVar("T")

#: A check returns what is wrong with a value ("must not be negative"), or None when it is fine.
Check = Callable[[Any], str | None]


def setting(default: T, check: Check | None = None) -> T:
    """A config field with its default and the check its values must pass."""
    result: T = field(default=default, metadata={"check": check})
    return result


def share(value: Any) -> str | None:
    """A share of something that must be there: (0, 1]."""
    return None if 0.0 < value <= 1.0 else f"must be in (0, 1], got {value!r}"


def fraction(value: Any) -> str | None:
    """A fraction that may be zero and never the whole: [0, 1)."""
    return None if 0.0 <= value < 1.0 else f"must be in [0, 1), got {value!r}"


def non_negative(value: Any) -> str | None:
    # `not >=` rather than `<`: NaN fails it too.
    return None if value >= 0 else "must not be negative"


def at_least(low: int) -> Check:
    def check(value: Any) -> str | None:
        return None if value >= low else f"must be at least {low}"

    return check


def positive_or_none(value: Any) -> str | None:
    return None if value is None or value > 0 else "must be positive or None"


def problems(config: object) -> list[str]:
    """What is wrong with each field of `config`, by its own check ("name must ..."), in field order."""
    found = []
    for f in fields(config):  # type: ignore[arg-type]
        check = f.metadata.get("check")
        why = check(getattr(config, f.name)) if check is not None else None
        if why is not None:
            found.append(f"{f.name} {why}")
    return found


def validate(config: object, more: Iterable[str] = ()) -> None:
    """Raise one ConfigError listing every field that fails its check, and `more` (checks across fields)."""
    found = [*problems(config), *more]
    if found:
        raise ConfigError("invalid detector config: " + "; ".join(found))
