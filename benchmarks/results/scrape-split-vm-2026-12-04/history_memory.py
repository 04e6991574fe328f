"""The bytes of the history's series (points and staircases, each series object counted once) after a prefill:

    python benchmarks/results/scrape-split-vm-2026-12-04/history_memory.py scale512 3600

Run it with a base tree first on PYTHONPATH (imported as `vramwatch`) to compare.
"""

from __future__ import annotations

import sys
from array import array
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import tick
from vramwatch import logs
from vramwatch.backends.simulated import SimulatedBackend
from vramwatch.testing import FakeClock


def main() -> None:
    logs.configure("json", "error")
    scenario, prefill = sys.argv[1], int(sys.argv[2])
    clock = FakeClock()
    daemon, _ = tick._daemon_for(SimulatedBackend(scenario, seed=0, clock=clock), clock, prefill=prefill)
    history = daemon.history
    series: dict[int, Any] = {}
    for table in (history.processes, history.trees):
        for track in table.values():
            series[id(track.series)] = track.series
    total = sum(_bytes(s._t) + _bytes(s._v) + _bytes(s._mins) + _bytes(s._maxs) for s in series.values())
    print(
        f"{scenario}, {prefill} s: {len(history.processes)} process and {len(history.trees)} tree tracks, "
        f"{len(series)} series objects, {total / 1e6:.1f} MB of points and staircases"
    )


def _bytes(a: array[Any]) -> int:
    return a.buffer_info()[1] * a.itemsize


if __name__ == "__main__":
    main()
