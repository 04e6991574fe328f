"""Detectors: pure functions from history windows to findings."""

from __future__ import annotations
