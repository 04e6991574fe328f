"""The settings every detector shares, and the tables that give each registered detector its own.

`DetectorConfig` holds what more than one detector reads: the robust growth rate (growth.py), the forecast's
sustained-rise test (shared by the forecast, the device rate in the metrics and the probable-OOM evidence),
the stability verdicts, and the lifecycle (raise/clear ticks, cooldown). Each detector's own thresholds live
in its own file, in its own config dataclass (see `registry.py`); `detectors` maps a kind to its settings.

In a config file all of them stay flat under `[detectors]` (`pressure_free_fraction = 0.05` as before);
`registry.config_from_table` hands each key to the config that owns it.

The defaults aim at zero findings on healthy runs (warm-up bumps, sawtooth, a plateau at 92 % of the card)
while still warning a fast leak (~150 MB/s into 24 GiB) a minute ahead and a slow one (a few MB/s) many
minutes ahead. docs/detection.md explains each choice; everything here can be overridden.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ._settings import at_least, non_negative, setting, share, validate

MIB = 1 << 20
GIB = 1 << 30
#: The most a process holding only its CUDA context holds (300-600 MB, up to about 1 GiB with the libraries'
#: workspaces): more is a model, a cache, a run. Contention's newcomer "came in" past it; the forecast calls a climb
#: from it a first load, whatever the process's age (a model server that sat idle, then loads).
BARE_CONTEXT_BYTES = 1 * GIB


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """Thresholds and windows shared by the detectors; seconds are monotonic seconds, sizes bytes."""

    # --- robust growth rate (growth.py) -------------------------------------------------------------------
    #: Windows over which growth is tested, shortest first. Short ones catch fast leaks, long ones leaks that
    #: step once per epoch. A window is used once the history covers `min_coverage` of it.
    horizons_seconds: tuple[float, ...] = (15.0, 20.0, 30.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 3600.0)
    #: Each window is cut into this many equal sub-windows; growth is *sustained* only if every one of them
    #: rises. Warm-up has a few bumps; a leak keeps rising in all of them.
    subwindows: int = setting(5, at_least(2))
    #: Points of the floor sampled per sub-window (for the Theil-Sen slope and the confidence).
    buckets_per_subwindow: int = setting(2, at_least(1))
    min_coverage: float = setting(0.8, share)
    #: Rises smaller than this are allocator noise (PyTorch reserves in 2 MiB and 20 MiB segments).
    noise_bytes: int = setting(8 * MIB, non_negative)
    #: A lone sample below this share of both its neighbours is a bad read, not a trough.
    outlier_fraction: float = setting(0.5, share)
    #: A window must rise at least this much in total to count as growth.
    min_rise_bytes: int = setting(128 * MIB, non_negative)
    #: Each sub-window must carry at least this share of the window's rise ...
    min_subwindow_share: float = setting(0.02, share)
    #: ... and none more than this share: one big step is warm-up, not a leak.
    max_subwindow_share: float = setting(0.5, share)
    #: The newest sub-window must rise at least at this share of the window's mean rate: the steps must keep
    #: coming (growth that is dying out is warm-up ending, not a leak).
    min_recent_share: float = setting(0.5, share)
    #: Window of the rate reported for series that are not growing (metrics show it with low confidence).
    rate_report_seconds: float = setting(600.0, non_negative)
    #: The first seconds of a process's life (model load, first steps) never count towards a leak, nor
    #: towards a stability verdict.
    warmup_seconds: float = setting(120.0, non_negative)
    #: Growth that slows down (each part of the window rising no faster than the previous, the last at most
    #: this share of the first's rate) is projected to its plateau; when the plateau fits in the card there
    #: is no OOM to forecast and no leak to claim (bucketed resolutions filling the allocator's cache).
    saturation_slowdown: float = setting(0.7, share)
    #: How much a part may exceed the one before and still count as slowing down (segment rounding).
    saturation_tolerance: float = setting(0.25, share)
    #: The card is "full" this much before free reaches zero: the allocation that fails is never tiny.
    oom_margin_bytes: int = setting(256 * MIB, non_negative)
    #: The card is at its ceiling with at most this free: the next sizeable cudaMalloc fails, and PyTorch frees its
    #: cache and retries, or raises an OOM (a run that vanished then: crash.py; one that fell and lived: ceiling.py).
    ceiling_free_bytes: int = setting(512 * MIB, non_negative)

    # --- the forecast's sustained-rise test (forecast.py, the device rate, crash.py) ------------------------
    #: A fast leak (~150 MB/s into 24 GiB) can leave 80-90 s from its start to the OOM. A warning needs a
    #: window of at least 20 s rising in every 4-s part; a critical forecast (full within
    #: `forecast_critical_eta_seconds`) may come from 15 s, which leaves a minute of warning.
    forecast_min_horizon_seconds: float = setting(20.0, non_negative)
    forecast_critical_min_horizon_seconds: float = setting(15.0, non_negative)
    #: Every part of a forecast's window must rise, the newest at a fair pace, but one part may carry this
    #: share of the rise: a leak that starts with the run shares its first window with a warm-up step, and
    #: waiting for a window without it costs the minute of warning.
    forecast_max_subwindow_share: float = setting(0.8, share)

    # --- stability verdicts (stability.py) ----------------------------------------------------------------
    stable_min_seconds: float = setting(300.0, non_negative)

    # --- lifecycle (lifecycle.py) -------------------------------------------------------------------------
    #: Consecutive ticks a condition must hold before it is raised, per kind; overrides the ticks each
    #: detector declares (a partial table, as a config file gives it).
    enter_ticks: Mapping[str, int] = field(default_factory=_empty)
    #: Consecutive ticks a condition must be absent before it is cleared, per kind; overrides as above.
    exit_ticks: Mapping[str, int] = field(default_factory=_empty)
    #: For a kind no detector declares (a finding made outside `analyze`).
    default_enter_ticks: int = setting(3, at_least(1))
    default_exit_ticks: int = setting(10, at_least(1))
    #: After a subject is cleared it is not raised again at the same or lower severity for this long.
    cooldown_seconds: float = setting(300.0, non_negative)

    # --- each detector's own settings ----------------------------------------------------------------------
    #: kind -> that detector's config (its dataclass, see registry.py); a kind not here runs on its defaults.
    detectors: Mapping[str, Any] = field(default_factory=_empty)

    def __post_init__(self) -> None:
        # Config files give lists and tables; keep the value immutable.
        object.__setattr__(self, "enter_ticks", MappingProxyType(dict(self.enter_ticks)))
        object.__setattr__(self, "exit_ticks", MappingProxyType(dict(self.exit_ticks)))
        object.__setattr__(self, "detectors", MappingProxyType(dict(self.detectors)))
        object.__setattr__(self, "horizons_seconds", tuple(float(h) for h in self.horizons_seconds))
        more: list[str] = []
        if not self.horizons_seconds or any(not (h > 0 and math.isfinite(h)) for h in self.horizons_seconds):
            more.append("horizons_seconds must be positive, finite seconds")
        elif list(self.horizons_seconds) != sorted(set(self.horizons_seconds)):
            more.append("horizons_seconds must be strictly increasing")
        ticks = [*self.enter_ticks.items(), *self.exit_ticks.items()]
        more += [f"ticks for {kind!r} must be at least 1, got {n!r}" for kind, n in ticks if n < 1]
        validate(self, more)

    @property
    def buckets(self) -> int:
        """Points of the floor per window, minus one."""
        return self.subwindows * self.buckets_per_subwindow
