"""vramwatch: a live GPU-memory watchdog for people who train models.

The public names are re-exported here; everything else is an implementation detail of its module.
Reading order for a newcomer: `model` (what is measured), `detectors` (what it decides), `daemon` (how it runs).
"""

from __future__ import annotations

from ._version import __version__
from .errors import BackendUnavailable, ConfigError, TraceError, VramwatchError
from .model import Finding, GpuSample, ProcessKey, ProcessMeta, ProcessSample, Reading, Severity, Snapshot

__all__ = [
    "BackendUnavailable",
    "ConfigError",
    "Finding",
    "GpuSample",
    "ProcessKey",
    "ProcessMeta",
    "ProcessSample",
    "Reading",
    "Severity",
    "Snapshot",
    "TraceError",
    "VramwatchError",
    "__version__",
]
