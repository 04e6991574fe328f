"""A `vramwatch record` trace read as snapshots, the way benchmarks/detection/score.py reads the corpus."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from vramwatch.model import Snapshot

ROOT = Path(__file__).resolve().parents[1]


def recorded(path: Path) -> list[Snapshot]:
    """The trace's ticks as snapshots (score.py's own reader, so that tests replay what the benchmarks score)."""
    spec = importlib.util.spec_from_file_location("vramwatch_recorded_score", ROOT / "benchmarks/detection/score.py")
    assert spec is not None
    assert spec.loader is not None
    score = sys.modules.get(spec.name)
    if score is None:
        score = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = score  # its dataclasses look their module up by name
        spec.loader.exec_module(score)
    return list(score._trace_snapshots(path))
