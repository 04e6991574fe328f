"""Detectors: pure functions from history windows to findings, plus the one stateful lifecycle tracker.

    analysis = analyze(history, config)            # what holds at the newest tick (pure)
    raised, cleared = tracker.update(analysis)     # what to notify (hysteresis, cooldown, escalation)

Reading order: `growth` (the robust rate everything builds on), `forecast`, `leak`, `pressure`,
`contention`, `crash`, `stale`, `stability`, `analysis`, `lifecycle`. docs/detection.md explains the
defaults in `DetectorConfig`.
"""

from __future__ import annotations

from .analysis import DEFAULT_CONFIG, Analysis, analyze
from .config import DetectorConfig
from .growth import Rate
from .lifecycle import FindingTracker

__all__ = ["DEFAULT_CONFIG", "Analysis", "DetectorConfig", "FindingTracker", "Rate", "analyze"]
