"""Detectors: pure functions from history windows to findings, plus the one stateful lifecycle tracker.

    analysis = analyze(history, config)            # what holds at the newest tick (pure)
    raised, cleared = tracker.update(analysis)     # what to notify (hysteresis, cooldown, escalation)

Each detector is one file that declares itself (`DETECTOR`: its kind, its own config, its raise/clear ticks,
its detect function); `registry.py` lists them and `analyze` runs them all. Reading order: `growth` (the
robust rate everything builds on), `base` and `registry` (what a detector declares), `leak`, `forecast`,
`pressure`, `contention`, `crash`, `stale`, `fragmentation`, `oom`, `analysis`, `lifecycle`.
docs/detection.md explains the defaults.
"""

from __future__ import annotations

from .analysis import DEFAULT_CONFIG, Analysis, analyze
from .base import Detector, Forecast, Verdict
from .config import DetectorConfig
from .growth import Rate
from .lifecycle import FindingTracker
from .registry import config_from_table, register, registered, settings

__all__ = [
    "DEFAULT_CONFIG",
    "Analysis",
    "Detector",
    "DetectorConfig",
    "FindingTracker",
    "Forecast",
    "Rate",
    "Verdict",
    "analyze",
    "config_from_table",
    "register",
    "registered",
    "settings",
]
