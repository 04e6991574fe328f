"""The few errors vramwatch raises on purpose; everything else that can fail is logged, counted and survived."""

from __future__ import annotations


class VramwatchError(Exception):
    """Base of vramwatch's own errors; the CLI prints these as one line and exits non-zero."""


class ConfigError(VramwatchError):
    """A config file, environment variable or option is invalid; the message names the source and key."""


class BackendUnavailable(VramwatchError):
    """The GPU library cannot be used at all (no driver, no libnvidia-ml, version mismatch).

    `reason` tells a machine with no NVIDIA stack at all (`library_not_found`: the simulator may stand in)
    from a GPU host whose driver is not usable right now (`driver_not_loaded`, `mismatch`, `other`: retry).
    """

    def __init__(self, message: str, reason: str = "other") -> None:
        super().__init__(message)
        self.reason = reason


class TraceError(VramwatchError):
    """A trace file cannot be used at all (missing, or no valid header); bad lines are skipped, not raised."""
