"""cProfile of daemon ticks over host processes behind the scripted NVML, with an hour of history. No GPU:

    python benchmarks/tick_profile.py [--procs 64] [--saw-every 2] [--ticks 200] [--top 25]
    python benchmarks/tick_profile.py --simulated scale512 --prefill 700 --ticks 20   # the simulator instead
    python benchmarks/tick_profile.py --simulated scale --prefill 100 --ticks 10 --collections  # GC runs per tick
    python3 benchmarks/tick_profile.py --cuda --procs 64          # a GPU host: real NVML, 64 small CUDA processes

Prints the top entries by cumulative and by own time (what issue 12 asks to report before and after a change).
The history is filled first, outside the profile; `--saw-every K` makes every K-th process a sawtooth.
`--cuda` profiles the tick as a GPU host runs it: the real driver, and `tick.py --procs`'s small CUDA processes.
`--collections` counts the cyclic collector's runs per tick by generation instead (cProfile does not show them).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import sys
from collections.abc import Callable
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
    ap.add_argument("--simulated", metavar="SCENARIO", help="profile a simulated scenario's ticks (8 x 64: scale512)")
    ap.add_argument("--collections", action="store_true", help="count the collector's runs per tick instead")
    ap.add_argument("--cuda", action="store_true", help="real NVML over --procs small CUDA processes (a GPU host)")
    args = ap.parse_args()
    logs.configure("json", "error")
    if args.simulated:
        from vramwatch.backends.simulated import SimulatedBackend

        clock = FakeClock()
        _, step = tick._daemon_for(SimulatedBackend(args.simulated, seed=0, clock=clock), clock, prefill=args.prefill)
        if args.collections:
            print(f"{args.simulated}: collections per tick by generation (young, middle, old), threshold "
                  f"{gc.get_threshold()}: {collections(step, args.ticks)}")  # fmt: skip
            return
        report(profiled(step, args.ticks), f"{args.simulated} (simulated), {args.prefill} ticks of history", args)
        return
    pool = tick.Pool(tick._CUDA_CHILD if args.cuda else tick._HOST_CHILD, args.saw_every)
    try:
        pool.grow(args.procs)
        if args.cuda:
            import pynvml

            backend, before = NvmlBackend(nvml=pynvml), None  # (it initializes NVML)
            tick.wait_listed(pynvml, pool)
        else:
            nv = tick._fake_nvml(pool, args.saw_every)
            nv.refresh()
            backend, before = NvmlBackend(nvml=nv), nv.refresh
        _, step = tick._daemon_for(backend, FakeClock(), prefill=args.prefill, before=before)
        prof = profiled(step, args.ticks)
    finally:
        pool.close()
    kind = "small CUDA processes (real NVML)" if args.cuda else "host processes"
    report(prof, f"{args.procs} {kind}, saw every {args.saw_every or '-'}", args)


def collections(step: Callable[[], None], ticks: int) -> list[float]:
    counts = [0, 0, 0]

    def started(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            counts[info["generation"]] += 1

    gc.callbacks.append(started)
    try:
        for _ in range(ticks):
            step()
    finally:
        gc.callbacks.remove(started)
    return [c / ticks for c in counts]


def profiled(step: Callable[[], None], ticks: int) -> cProfile.Profile:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(ticks):
        step()
    prof.disable()
    return prof


def report(prof: cProfile.Profile, what: str, args: argparse.Namespace) -> None:
    for order in ("cumulative", "tottime"):
        out = io.StringIO()
        pstats.Stats(prof, stream=out).strip_dirs().sort_stats(order).print_stats(args.top)
        print(f"--- by {order}: {what}, {args.ticks} ticks")
        print(out.getvalue().split("\n", 4)[-1].rstrip())


if __name__ == "__main__":
    main()
