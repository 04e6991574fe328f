"""GPU backends: where readings come from. Only `backends.nvml` imports pynvml."""

from __future__ import annotations
