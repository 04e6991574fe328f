"""cProfile of daemon ticks over host processes behind the scripted NVML, with an hour of history. No GPU:

    python benchmarks/tick_profile.py [--procs 64] [--saw-every 2] [--ticks 200] [--top 25]

Prints the top entries by cumulative and by own time (what issue 12 asks to report before and after a change).
The history is filled first, outside the profile; `--saw-every K` makes every K-th process a sawtooth.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tick
from vramwatch import logs
from vramwatch.backends.nvml import NvmlBackend
from vramwatch.testing import FakeClock


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", type=int, default=64)
    ap.add_argument("--saw-every", type=int, default=0, metavar="K")
    ap.add_argument("--prefill", type=int, default=3600)
    ap.add_argument("--ticks", type=int, default=200)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    logs.configure("json", "error")
    pool = tick.Pool(tick._HOST_CHILD)
    try:
        pool.grow(args.procs)
        nv = tick._fake_nvml(pool, args.saw_every)
        nv.refresh()
        _, step = tick._daemon_for(NvmlBackend(nvml=nv), FakeClock(), prefill=args.prefill, before=nv.refresh)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.ticks):
            step()
        prof.disable()
    finally:
        pool.close()
    for order in ("cumulative", "tottime"):
        out = io.StringIO()
        pstats.Stats(prof, stream=out).strip_dirs().sort_stats(order).print_stats(args.top)
        print(f"--- by {order}: {args.procs} host processes, saw every {args.saw_every or '-'}, {args.ticks} ticks")
        print(out.getvalue().split("\n", 4)[-1].rstrip())


if __name__ == "__main__":
    main()
