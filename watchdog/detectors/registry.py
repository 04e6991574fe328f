"""The detector registry: each detector declares itself in its own file; `analyze` loops over them all.

A detector is one `Detector` value (base.py) in its module (`detectors/pressure.py`'s `DETECTOR`): its finding
kind, its own config dataclass (the fields and their ranges, next to the code that reads them), how many ticks its
condition must hold before it is raised (a tentative finding: its quorum) and be gone before it is cleared, which
advice its findings get, and its pure detect function, called once per GPU that answered (`per_gpu`) or once per
tick (`per_tick`).
vramwatch's own detectors are listed in `BUILTIN` (in analysis order); `register` adds another one at run time,
and from then on it is analysed, configured from `[detectors]`, tracked, exported and accepted by the CLI
like the built-in ones (tests/test_registry.py shows a toy one).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import fields
from types import MappingProxyType
from typing import Any, TypeVar

from ..config import dataclass_from_table
from ..errors import ConfigError
from ..model import FindingKind
from . import contention, crash, forecast, fragmentation, leak, oom, pressure, stale
from .base import Detector
from .config import DetectorConfig

C = TypeVar("C")

#: vramwatch's own detectors, in analysis order: within a GPU, the order findings come out in (notifications
#: follow it). Adding one: its file in this folder with its `DETECTOR`, and its line here.
BUILTIN: tuple[Detector[Any], ...] = (
    leak.DETECTOR,
    forecast.DETECTOR,
    pressure.DETECTOR,
    contention.DETECTOR,
    crash.DETECTOR,
    stale.DETECTOR,
    fragmentation.DETECTOR,
    oom.DETECTOR,
)


_all: list[Detector[Any]] = list(BUILTIN)
# Looked up per finding on every tick by the tracker: kept in step with `_all` rather than rebuilt.
_by_kind: dict[str, Detector[Any]] = {d.kind: d for d in BUILTIN}


def detectors() -> tuple[Detector[Any], ...]:
    """Every detector, vramwatch's own first, then the registered ones in the order they came."""
    return tuple(_all)


def by_kind() -> Mapping[str, Detector[Any]]:
    return MappingProxyType(_by_kind)


def kinds() -> frozenset[str]:
    """Every finding kind a config may name: each detector's, and those made outside `analyze` (the agent's `oom`)."""
    return frozenset(_by_kind) | {str(k) for k in FindingKind}


def check_kinds(names: Iterable[object], where: str) -> None:
    """Refuse a kind nobody raises: a misspelt `oom-forecast` would otherwise silently never apply."""
    known = kinds()
    for name in names:
        if name not in known:
            raise ConfigError(f"{where}: unknown finding kind {name!r} (known: {', '.join(sorted(known))})")


def register(detector: Detector[C]) -> Detector[C]:
    """Add a detector; its kind and its `[detectors]` keys must be new (a clash would silently shadow one)."""
    taken = {key for d in detectors() for key in d.config_keys()} | {f.name for f in fields(DetectorConfig)}
    if detector.kind in by_kind():
        raise ValueError(f"a detector of kind {detector.kind!r} is already registered")
    clash = sorted(taken & set(detector.config_keys()))
    if clash:
        raise ValueError(f"detector {detector.kind!r}: [detectors] keys {clash} are already taken")
    _all.append(detector)
    _by_kind[detector.kind] = detector
    return detector


def unregister(kind: str) -> None:
    """Remove a detector `register` added (tests use it to leave the registry as they found it)."""
    if any(d.kind == kind for d in BUILTIN):
        raise ValueError(f"{kind!r} is one of vramwatch's own detectors")
    _all[:] = [d for d in _all if d.kind != kind]
    _by_kind.pop(kind, None)


@contextmanager
def registered(detector: Detector[C]) -> Iterator[Detector[C]]:
    """The detector, registered for the duration of a `with` block."""
    register(detector)
    try:
        yield detector
    finally:
        unregister(detector.kind)


def settings(config: DetectorConfig, detector: Detector[C]) -> C:
    """The detector's own settings in `config`: what the config file gave, else its defaults."""
    return detector.settings(config)


def raise_after(config: DetectorConfig, kind: str) -> int:
    """Ticks a condition of `kind` must hold before it is raised: the config's override, else the detector's."""
    declared = _by_kind.get(kind)
    if kind in config.enter_ticks:
        return config.enter_ticks[kind]
    return declared.raise_after if declared is not None else config.default_enter_ticks


def tentative_quorum(config: DetectorConfig, kind: str, interval_seconds: float = 1.0) -> tuple[int, int] | None:
    """(seen, of): a tentative finding of `kind` is raised once seen on `seen` of the last `of` ticks at this sampling
    interval (None: as a firm one is). Never less than a firm one: an `enter_ticks` override above `seen` raises it."""
    declared = _by_kind.get(kind)
    quorum = declared.tentative_quorum if declared is not None else None
    if quorum is None:
        return None
    seen, of = quorum.ticks(interval_seconds)
    seen = min(64, max(seen, raise_after(config, kind)))
    return seen, max(of, seen)


def clear_after(config: DetectorConfig, kind: str) -> int | None:
    """Ticks a condition of `kind` must be gone before it is cleared; None for an event (never cleared)."""
    declared = _by_kind.get(kind)
    if kind in config.exit_ticks:
        return config.exit_ticks[kind]
    return declared.clear_after if declared is not None else config.default_exit_ticks


#: Keys that were renamed, old name -> new: a config file written for an older vramwatch keeps working.
RENAMED = {"crash_ceiling_bytes": "ceiling_free_bytes"}


def config_from_table(table: Mapping[str, Any], where: str) -> DetectorConfig:
    """`[detectors]` of a config file: each key goes to the config that owns it (shared, or one detector's).

    A key nobody owns is a ConfigError naming the known keys (a typo must not pass silently); so is a value of
    the wrong type or out of its range.
    """
    shared = {f.name for f in fields(DetectorConfig)} - {"detectors"}
    owners = {key: (d, name) for d in detectors() for key, name in d.config_keys().items()}
    mine: dict[str, Any] = {}
    theirs: dict[str, dict[str, Any]] = {}
    for given, value in table.items():
        key = RENAMED.get(given, given)
        if key in shared:
            mine[key] = value
        elif key in owners:
            detector, name = owners[key]
            theirs.setdefault(detector.kind, {})[name] = value
        else:
            known = ", ".join(sorted(shared | set(owners)))
            raise ConfigError(f"{where}: unknown key {key!r} (known: {known})")
    try:
        return _built(mine, theirs, where)
    except ConfigError as exc:
        # A range check in a config's own __post_init__ knows no file: the error names where the table came from
        # (one that already starts with the file, a wrong type's, is left as it is).
        if str(exc).startswith(where.partition(": ")[0]):
            raise
        raise ConfigError(f"{where}: {exc}") from None


def _built(mine: dict[str, Any], theirs: dict[str, dict[str, Any]], where: str) -> DetectorConfig:
    """The DetectorConfig of the keys `config_from_table` sorted: the shared ones and each detector's own."""
    by = by_kind()
    own = {kind: _own_from_table(by[kind], values, where) for kind, values in theirs.items()}
    for ticks in ("enter_ticks", "exit_ticks"):
        table_of = mine.get(ticks, {})
        if isinstance(table_of, Mapping):
            check_kinds(table_of, f"{where[:-1]}.{ticks}]")
            for kind, n in table_of.items():
                if isinstance(n, bool) or not isinstance(n, int):
                    raise ConfigError(f"{where[:-1]}.{ticks}] {kind}: expected a whole number of ticks >= 1, got {n!r}")
    base: DetectorConfig = dataclass_from_table(DetectorConfig, mine, where)
    return DetectorConfig(**{f.name: getattr(base, f.name) for f in fields(DetectorConfig)} | {"detectors": own})


def _own_from_table(detector: Detector[Any], values: Mapping[str, Any], where: str) -> Any:
    # The detector's own defaults are the schema: `dataclass_from_table` checks each key's type against them.
    return dataclass_from_table(type(detector.defaults), values, where)
