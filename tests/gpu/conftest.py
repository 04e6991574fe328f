"""The `gpu` suite runs only where an NVIDIA driver answers; everywhere else it is skipped as a whole."""

from __future__ import annotations

import pytest


def _nvml_ok() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
    except Exception:
        return False
    return True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _nvml_ok():
        return
    skip = pytest.mark.skip(reason="no NVIDIA driver/NVML on this machine (the gpu suite needs a real GPU)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
