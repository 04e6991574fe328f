"""Every threshold and window the detectors use, in one frozen value with documented defaults.

The defaults aim at zero findings on healthy runs (warm-up bumps, sawtooth, a plateau at 92 % of the card)
while still warning a fast leak (~150 MB/s into 24 GiB) a minute ahead and a slow one (a few MB/s) many
minutes ahead. docs/detection.md explains each choice; everything here can be overridden.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ..errors import ConfigError

MIB = 1 << 20
GIB = 1 << 30

KINDS = (
    "growth",
    "oom_forecast",
    "pressure",
    "contention",
    "probable_oom",
    "stale_holder",
    "fragmentation",
)


def _enter_ticks() -> Mapping[str, int]:
    # Events (a contender arrives, a process vanishes) are raised on the tick they are seen; conditions that a
    # single odd sample could fake wait a few ticks.
    return MappingProxyType(
        {
            "growth": 5,
            "oom_forecast": 2,
            "pressure": 3,
            "contention": 1,
            "probable_oom": 1,
            "stale_holder": 5,
            "fragmentation": 5,
        }
    )


def _exit_ticks() -> Mapping[str, int]:
    return MappingProxyType(
        {
            "growth": 30,
            "oom_forecast": 30,
            "pressure": 10,
            "contention": 10,
            "probable_oom": 1,
            "stale_holder": 10,
            "fragmentation": 30,
        }
    )


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """Thresholds and windows of every detector; seconds are monotonic seconds, sizes bytes."""

    # --- robust growth rate (growth.py) -------------------------------------------------------------------
    #: Windows over which growth is tested, shortest first. Short ones catch fast leaks, long ones leaks that
    #: step once per epoch. A window is used once the history covers `min_coverage` of it.
    horizons_seconds: tuple[float, ...] = (15.0, 20.0, 30.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 3600.0)
    #: Each window is cut into this many equal sub-windows; growth is *sustained* only if every one of them
    #: rises. Warm-up has a few bumps; a leak keeps rising in all of them.
    subwindows: int = 5
    #: Points of the floor sampled per sub-window (for the Theil-Sen slope and the confidence).
    buckets_per_subwindow: int = 2
    min_coverage: float = 0.8
    #: Rises smaller than this are allocator noise (PyTorch reserves in 2 MiB and 20 MiB segments).
    noise_bytes: int = 8 * MIB
    #: A lone sample below this share of both its neighbours is a bad read, not a trough.
    outlier_fraction: float = 0.5
    #: A window must rise at least this much in total to count as growth.
    min_rise_bytes: int = 128 * MIB
    #: Each sub-window must carry at least this share of the window's rise ...
    min_subwindow_share: float = 0.02
    #: ... and none more than this share: one big step is warm-up, not a leak.
    max_subwindow_share: float = 0.5
    #: The newest sub-window must rise at least at this share of the window's mean rate: the steps must keep
    #: coming (growth that is dying out is warm-up ending, not a leak).
    min_recent_share: float = 0.5
    #: Window of the rate reported for series that are not growing (metrics show it with low confidence).
    rate_report_seconds: float = 600.0

    # --- growth findings (per process tree and per device) ------------------------------------------------
    #: The first seconds of a process's life (model load, first steps) never count towards a leak.
    warmup_seconds: float = 120.0
    #: A leak is claimed only from windows at least this long.
    growth_min_horizon_seconds: float = 240.0
    growth_min_rate_bytes_per_second: float = 50_000.0
    #: A growth finding carries an ETA when the card would be full within this time.
    growth_eta_max_seconds: float = 86_400.0

    # --- time to OOM (forecast.py) ------------------------------------------------------------------------
    #: A fast leak (~150 MB/s into 24 GiB) can leave 80-90 s from its start to the OOM. A warning needs a
    #: window of at least 20 s rising in every 4-s part; a critical forecast (full within
    #: `forecast_critical_eta_seconds`) may come from 15 s, which leaves a minute of warning.
    forecast_min_horizon_seconds: float = 20.0
    forecast_critical_min_horizon_seconds: float = 15.0
    forecast_warning_eta_seconds: float = 600.0
    forecast_critical_eta_seconds: float = 120.0
    #: Every part of a forecast's window must rise, the newest at a fair pace, but one part may carry this
    #: share of the rise: a leak that starts with the run shares its first window with a warm-up step, and
    #: waiting for a window without it costs the minute of warning.
    forecast_max_subwindow_share: float = 0.8
    #: Critical as well when the card is growing and less than this share of it is free.
    forecast_critical_free_fraction: float = 0.05
    #: While a process on the GPU is younger than this and has not yet settled (stayed flat for
    #: `settle_seconds`), the GPU is *warming*: model loading and quantisation look like a leak for a minute
    #: or two, so only critical forecasts are raised.
    forecast_warmup_seconds: float = 180.0
    settle_seconds: float = 15.0
    #: Growth that slows down (each part of the window rising no faster than the previous, the last at most
    #: this share of the first's rate) is projected to its plateau; when the plateau fits in the card there
    #: is no OOM to forecast and no leak to claim (bucketed resolutions filling the allocator's cache).
    saturation_slowdown: float = 0.7
    #: How much a part may exceed the one before and still count as slowing down (segment rounding).
    saturation_tolerance: float = 0.25
    #: The card is "full" this much before free reaches zero: the allocation that fails is never tiny.
    oom_margin_bytes: int = 256 * MIB

    # --- pressure (pressure.py) ---------------------------------------------------------------------------
    #: Warning when free < min(fraction x total, bytes): 3 % of a 24 GiB card, at most 1 GiB on big cards.
    pressure_free_fraction: float = 0.03
    pressure_free_bytes: int = 1 * GIB
    #: Once under the threshold within `pressure_hold_seconds`, the condition holds until free exceeds
    #: threshold x this factor (value hysteresis, computed from history, so still a pure function).
    pressure_exit_factor: float = 1.5
    pressure_hold_seconds: float = 60.0

    # --- contention (contention.py) -----------------------------------------------------------------------
    #: A newcomer must have taken at least this much (from the card's free memory, and in its own growth).
    contention_min_bytes: int = 256 * MIB
    #: The run it squeezes holds at least this much and was on the GPU this long before the newcomer came in.
    contention_incumbent_min_bytes: int = 1 * GIB
    contention_incumbent_seconds: float = 10.0
    #: An incumbent whose memory did not move (beyond `noise_bytes`) in this many seconds before the newcomer
    #: came in is a static holder (a server that loaded once, a notebook, a run on its plateau): the caching
    #: allocator already holds what it uses, so nobody can take "its" room.
    contention_static_seconds: float = 60.0
    #: A moving run needs its own recent peak (over this many seconds) minus what it holds now: a newcomer that
    #: leaves less free is named, critical (the run's next peak cannot fit).
    contention_need_seconds: float = 300.0
    #: A run younger than this (by its start time) has not shown what it needs yet (flat or not): a newcomer
    #: that takes at least `contention_room_fraction` of the free room and leaves less than
    #: `contention_young_headroom` x what the young run holds is named (warning).
    contention_young_seconds: float = 120.0
    contention_room_fraction: float = 0.5
    contention_young_headroom: float = 0.5
    #: A newcomer is judged for this long after it came in (first held `contention_incumbent_min_bytes`): what
    #: it takes later is growth, and what others take later is theirs.
    contention_arrival_seconds: float = 60.0
    #: Also name another user's process from the tick it appears next to a moving run, before it took anything.
    #: Off by default: where users share cards on purpose it names every normal arrival.
    contention_other_user: bool = False

    # --- probable OOM / crash (crash.py) ------------------------------------------------------------------
    #: A vanished process whose own memory was still growing steadily and, at that rate, would have used the
    #: card's last free memory within this many seconds of its last sight ran out of it ...
    crash_eta_seconds: float = 15.0
    #: ... or whose own memory rose by `min_rise_bytes` within `crash_rise_seconds`, up to its last sight,
    #: leaving the card less than this free.
    crash_ceiling_bytes: int = 512 * MIB
    crash_rise_seconds: float = 60.0
    #: Reported for this long after the process vanished.
    crash_hold_seconds: float = 30.0
    crash_min_bytes: int = 256 * MIB

    # --- stale holders (stale.py) -------------------------------------------------------------------------
    stale_min_bytes: int = 256 * MIB
    stale_statuses: frozenset[str] = frozenset({"zombie", "stopped", "tracing-stop", "dead"})
    #: Report workers whose launcher is gone (reparented to pid 1).
    stale_orphans: bool = True
    #: Report a process whose memory has not moved by a byte-noise for this long. Off by default: a healthy
    #: training run or an inference server is flat for hours, and memory alone cannot tell idle from busy.
    stale_idle_seconds: float | None = None

    # --- stability verdicts (stability.py) ----------------------------------------------------------------
    stable_min_seconds: float = 300.0

    # --- lifecycle (lifecycle.py) -------------------------------------------------------------------------
    #: Consecutive ticks a condition must hold before it is raised, per kind.
    enter_ticks: Mapping[str, int] = field(default_factory=_enter_ticks)
    #: Consecutive ticks a condition must be absent before it is cleared, per kind.
    exit_ticks: Mapping[str, int] = field(default_factory=_exit_ticks)
    default_enter_ticks: int = 3
    default_exit_ticks: int = 10
    #: After a subject is cleared it is not raised again at the same or lower severity for this long.
    cooldown_seconds: float = 300.0

    def __post_init__(self) -> None:
        # Config files give lists and tables; keep the value immutable, and per-kind tables partial.
        object.__setattr__(self, "stale_statuses", frozenset(self.stale_statuses))
        object.__setattr__(self, "enter_ticks", MappingProxyType({**_enter_ticks(), **self.enter_ticks}))
        object.__setattr__(self, "exit_ticks", MappingProxyType({**_exit_ticks(), **self.exit_ticks}))
        object.__setattr__(self, "horizons_seconds", tuple(float(h) for h in self.horizons_seconds))
        problems: list[str] = []
        if not self.horizons_seconds or any(not (h > 0 and math.isfinite(h)) for h in self.horizons_seconds):
            problems.append("horizons_seconds must be positive, finite seconds")
        elif list(self.horizons_seconds) != sorted(set(self.horizons_seconds)):
            problems.append("horizons_seconds must be strictly increasing")
        if self.subwindows < 2:
            problems.append("subwindows must be at least 2")
        if self.buckets_per_subwindow < 1:
            problems.append("buckets_per_subwindow must be at least 1")
        for name in (
            "min_coverage",
            "min_subwindow_share",
            "max_subwindow_share",
            "forecast_max_subwindow_share",
            "contention_room_fraction",
            "contention_young_headroom",
            "saturation_slowdown",
            "outlier_fraction",
            "min_recent_share",
            "saturation_tolerance",
        ):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                problems.append(f"{name} must be in (0, 1], got {value!r}")
        for name in (
            "pressure_free_fraction",
            "forecast_critical_free_fraction",
        ):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                problems.append(f"{name} must be in [0, 1), got {value!r}")
        if self.pressure_exit_factor < 1.0:
            problems.append("pressure_exit_factor must be >= 1")
        if self.forecast_critical_eta_seconds > self.forecast_warning_eta_seconds:
            problems.append("forecast_critical_eta_seconds must not exceed forecast_warning_eta_seconds")
        for name in (
            "noise_bytes",
            "min_rise_bytes",
            "oom_margin_bytes",
            "pressure_free_bytes",
            "contention_min_bytes",
            "contention_incumbent_min_bytes",
            "crash_min_bytes",
            "crash_ceiling_bytes",
            "stale_min_bytes",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative")
        for name in (
            "rate_report_seconds",
            "warmup_seconds",
            "growth_min_horizon_seconds",
            "growth_min_rate_bytes_per_second",
            "growth_eta_max_seconds",
            "forecast_min_horizon_seconds",
            "forecast_warning_eta_seconds",
            "forecast_critical_eta_seconds",
            "forecast_warmup_seconds",
            "forecast_critical_min_horizon_seconds",
            "settle_seconds",
            "pressure_hold_seconds",
            "contention_incumbent_seconds",
            "contention_static_seconds",
            "contention_need_seconds",
            "contention_young_seconds",
            "contention_arrival_seconds",
            "crash_rise_seconds",
            "crash_eta_seconds",
            "crash_hold_seconds",
            "stable_min_seconds",
            "cooldown_seconds",
        ):
            if not getattr(self, name) >= 0:
                problems.append(f"{name} must not be negative")
        if self.stale_idle_seconds is not None and not self.stale_idle_seconds > 0:
            problems.append("stale_idle_seconds must be positive or None")
        ticks = [*self.enter_ticks.items(), *self.exit_ticks.items()]
        ticks += [("default_enter_ticks", self.default_enter_ticks), ("default_exit_ticks", self.default_exit_ticks)]
        problems += [f"ticks for {kind!r} must be at least 1, got {n!r}" for kind, n in ticks if n < 1]
        if problems:
            raise ConfigError("invalid detector config: " + "; ".join(problems))

    @property
    def buckets(self) -> int:
        """Points of the floor per window, minus one."""
        return self.subwindows * self.buckets_per_subwindow

    def enter_after(self, kind: str) -> int:
        return self.enter_ticks.get(kind, self.default_enter_ticks)

    def exit_after(self, kind: str) -> int:
        return self.exit_ticks.get(kind, self.default_exit_ticks)
