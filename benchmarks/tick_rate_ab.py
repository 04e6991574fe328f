"""A/B in one process: the metrics' per-process rate through `growth.reported_rate` (its flat shortcut) against
`profile(...).rate(...)` (the full fit), in alternating blocks of daemon ticks over still host processes behind
the scripted NVML, with an hour of history. Runs anywhere (no GPU):

    python benchmarks/tick_rate_ab.py [--procs 64] [--rounds 30] [--ticks 20]

Both sides tick the same daemon in turn, so the machine's load and the history's growth fall on both alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tick
from vramwatch.backends.nvml import NvmlBackend
from vramwatch.detectors import analysis, growth
from vramwatch.testing import FakeClock


def full_fit(view: Any, config: Any) -> growth.Rate | None:
    return growth.profile(view, config).rate(config)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--ticks", type=int, default=20)
    args = ap.parse_args()
    sides: dict[str, Callable[[Any, Any], growth.Rate | None]] = {
        "full_fit": full_fit,
        "reported_rate": growth.reported_rate,
    }
    pool = tick.Pool(tick._HOST_CHILD)
    try:
        pool.grow(args.procs)
        nv = tick._fake_nvml(pool)
        nv.refresh()
        _, step = tick._daemon_for(NvmlBackend(nvml=nv), FakeClock(), prefill=3600)
        ms: dict[str, list[float]] = {name: [] for name in sides}
        for r in range(args.rounds):
            for name in sides if r % 2 else reversed(sides):
                analysis.reported_rate = sides[name]  # type: ignore[assignment]
                started = time.perf_counter()
                for _ in range(args.ticks):
                    step()
                ms[name].append((time.perf_counter() - started) / args.ticks * 1e3)
        old, new = statistics.median(ms["full_fit"]), statistics.median(ms["reported_rate"])
        saved_us = (old - new) / args.procs * 1e3
        print(
            f"{args.procs} still host processes, an hour of history: tick {old:.2f} ms (full fit) against "
            f"{new:.2f} ms (reported_rate), {new / old - 1:+.1%}; {saved_us:.1f} µs saved per process"
        )
    finally:
        pool.close()


if __name__ == "__main__":
    main()
