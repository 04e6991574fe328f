"""The `gpu` suite runs only where an NVIDIA driver answers; everywhere else it is skipped as a whole."""

from __future__ import annotations

import pytest
from fake_pynvml import real_nvml_answers


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if real_nvml_answers():
        return
    skip = pytest.mark.skip(reason="no NVIDIA driver/NVML on this machine (the gpu suite needs a real GPU)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
