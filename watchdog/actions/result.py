"""`ActionResult` now lives in `vramwatch.model` (typing.py's `ActionHandler` seam needs it without importing the
action layer); this name is kept so that code importing it from here keeps working."""

from __future__ import annotations

from ..model import ActionResult

__all__ = ["ActionResult"]
