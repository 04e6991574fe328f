"""The shape of a detector: what it declares (`Detector`) and what its detect function yields.

Each detector module builds one `Detector` value, `DETECTOR`; `registry.py` lists them and `analyze` runs them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Generic, TypeVar

from ..model import Finding, ProcessKey
from ._context import GpuContext, Tick
from .config import DetectorConfig

C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class Verdict:
    """An answer that is not a problem ("stable at 20.1 GiB for 12 min"): shown by `status`, never raised.

    Each kind keeps what its sentence says and writes the sentence when `text` is read (`stability.Stable`): a card
    of long runs holds a verdict for nearly every tree at every tick, while the page, `status` and the report read
    them only when asked (docs/benchmarks.md, 2026-12-05 (f)).
    """

    key: ProcessKey
    gpu_uuid: str

    @property
    def text(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Forecast:
    """A GPU's time to OOM and its confidence, for the metrics, whether or not a finding is raised on it."""

    gpu_uuid: str
    eta_seconds: float
    confidence: float


#: What a detect function yields: findings, and the verdicts and forecasts that the metrics and `status` show.
Observation = Finding | Verdict | Forecast


@dataclass(frozen=True, slots=True)
class Quorum:
    """How long a doubtful (tentative) finding must be seen before it is raised: longer than what explains it away.

    `outlast_seconds` is the longest a false reason can keep the condition true (a forecast made by one jump holds
    while the jump is in its window's newest part). The finding must be seen on more ticks than fit in that time,
    within twice that time: at an interval of `dt`, n = round(outlast_seconds / dt), seen on n + 1 of the last 2n
    ticks (4 of 6 for 3 s at 1 Hz, 3 of 4 at 2 s, 2 of 2 at 5 s).
    """

    outlast_seconds: float

    def __post_init__(self) -> None:
        if not 0 < self.outlast_seconds < 60:
            raise ValueError(f"a quorum's outlast_seconds must be in (0, 60), got {self.outlast_seconds!r}")

    def ticks(self, interval_seconds: float) -> tuple[int, int]:
        """(seen, of): seen on `seen` of the last `of` ticks, at this sampling interval (at most 64 ticks)."""
        n = max(1, round(self.outlast_seconds / interval_seconds))
        return min(n + 1, 64), min(max(2 * n, n + 1), 64)


@dataclass(frozen=True, slots=True)
class Detector(Generic[C]):
    """One detector: what it is called, how it is configured and tracked, and how it detects."""

    kind: str
    #: Its settings with their defaults: an instance of its own frozen config dataclass.
    defaults: C
    #: Consecutive ticks its condition must hold before it is raised.
    raise_after: int
    #: Consecutive ticks it must be absent before it is cleared; None: an event (each finding is raised once,
    #: as it comes, and there is nothing to clear).
    clear_after: int | None
    #: Exactly one of these: called for each GPU that answered, or once for the whole tick.
    per_gpu: Callable[[GpuContext, C], Iterable[Observation]] | None = None
    per_tick: Callable[[Tick, C], Iterable[Observation]] | None = None
    #: The advice situation (advice/rules.toml `kinds`) its findings get; None: no advice.
    advice: str | None = None
    #: How long a *tentative* finding of it (`Finding.tentative`) must be seen before it is raised, instead of
    #: `raise_after` consecutive ticks; None: the same as a firm one.
    tentative_quorum: Quorum | None = None
    #: Prepended to its config's field names in `[detectors]`, where they would be ambiguous on their own.
    key_prefix: str = ""

    def __post_init__(self) -> None:
        if (self.per_gpu is None) == (self.per_tick is None):
            raise ValueError(f"detector {self.kind!r}: give exactly one of per_gpu and per_tick")
        if self.raise_after < 1 or (self.clear_after is not None and self.clear_after < 1):
            raise ValueError(f"detector {self.kind!r}: raise/clear ticks must be at least 1")

    def settings(self, config: DetectorConfig) -> C:
        """Its own settings in `config`: what the config file gave, else its defaults."""
        own: C = config.detectors.get(self.kind, self.defaults)
        return own

    def config_keys(self) -> dict[str, str]:
        """Its `[detectors]` keys, each to the field of its config it sets."""
        return {self.key_prefix + f.name: f.name for f in fields(self.defaults)}  # type: ignore[arg-type]
