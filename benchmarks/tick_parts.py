"""Where a tick's time goes on a GPU host, per number of CUDA processes, all in one run:

    python3 benchmarks/tick_parts.py --procs 1,4,16,64        # a GPU host: N small CUDA processes
    python3 benchmarks/tick_parts.py --host-procs --procs 1,64  # anywhere: host processes, scripted NVML

For each count: the median of each NVML call a reader can make per GPU (memory v2, the compute, graphics and MPS
process lists through pynvml; the compute list also as vramwatch calls it, once), vramwatch's backend read (its
calls and their parsing), the sampler's tick (the read, the attribution through /proc, the history's append) and
the whole daemon tick (plus the detectors, the findings' lifecycle and the exporter's state), over an hour of
history; then a cProfile of `--profile` ticks at the largest count, top entries by own time. Differences between
the rows say what each layer adds.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tick


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", default="1,4,16,64")
    ap.add_argument("--host-procs", action="store_true")
    ap.add_argument("--prefill", type=int, default=3600)
    ap.add_argument("--repeat", type=int, default=300)
    ap.add_argument("--profile", type=int, default=300, help="ticks profiled at the largest count (0: none)")
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    from vramwatch import logs
    from vramwatch.backends.nvml import NvmlBackend
    from vramwatch.backends.nvml_lists import one_call
    from vramwatch.testing import FakeClock

    logs.configure("json", "error")
    counts = [int(c) for c in args.procs.split(",")]
    pool = tick.Pool(tick._HOST_CHILD if args.host_procs else tick._CUDA_CHILD)
    nv: Any
    try:
        if args.host_procs:
            nv = tick._fake_nvml(pool)
        else:
            import pynvml as nv
        nv.nvmlInit()
        print("| processes | memory v2 | compute list | graphics list | MPS list | compute list, one call | "
              "backend read | sampler tick | daemon tick |")  # fmt: skip
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for n in counts:
            pool.grow(n)
            if args.host_procs:
                nv.refresh()
            else:
                _wait_listed(nv, pool)
            h = nv.nvmlDeviceGetHandleByIndex(0)
            row: dict[str, Callable[[], object]] = {
                "memory v2": partial(nv.nvmlDeviceGetMemoryInfo, h, version=nv.nvmlMemory_v2),
                "compute": partial(nv.nvmlDeviceGetComputeRunningProcesses, h),
                "graphics": partial(nv.nvmlDeviceGetGraphicsRunningProcesses, h),
                "mps": partial(nv.nvmlDeviceGetMPSComputeRunningProcesses, h),
            }
            one = one_call(nv, "nvmlDeviceGetComputeRunningProcesses_v3", nv.NVMLError)
            if one is not None:  # vramwatch's own call of the compute list (one driver call, not pynvml's two)
                row["compute, one call"] = partial(one, h)
            ms = {k: tick.measure(f, repeat=args.repeat)["median_s"] * 1e3 for k, f in row.items()}
            backend = NvmlBackend(nvml=nv)
            ms["read"] = tick.measure(backend.read, repeat=args.repeat)["median_s"] * 1e3
            daemon, step = tick._daemon_for(backend, FakeClock(), prefill=args.prefill)
            clock = daemon.clock

            def sample(d: Any = daemon, c: Any = clock) -> None:
                c.advance(1.0)
                d.pipeline.sampler.tick()

            ms["tick"] = tick.measure(step, repeat=args.repeat)["median_s"] * 1e3
            ms["sampler"] = tick.measure(sample, repeat=args.repeat)["median_s"] * 1e3
            print(f"| {n} | " + " | ".join(f"{ms[k]:.3f} ms" for k in (*row, "read", "sampler", "tick")) + " |",
                  flush=True)  # fmt: skip
            if n == counts[-1] and args.profile:
                step()
                prof = cProfile.Profile()
                started = time.perf_counter()
                prof.enable()
                for _ in range(args.profile):
                    step()
                prof.disable()
                took = (time.perf_counter() - started) / args.profile * 1e3
                out = io.StringIO()
                pstats.Stats(prof, stream=out).strip_dirs().sort_stats("tottime").print_stats(args.top)
                print(f"\ncProfile, {n} processes, {args.profile} ticks ({took:.3f} ms a tick under the profiler), "
                      "by own time:\n")  # fmt: skip
                print(out.getvalue().split("\n", 4)[-1].rstrip())
            backend.close()
    finally:
        pool.close()


def _wait_listed(nv: Any, pool: tick.Pool) -> None:
    """Until the driver lists every CUDA process of the pool (it does once its context is made)."""
    handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(nv.nvmlDeviceGetCount())]
    mine, deadline = {p.pid for p in pool.procs}, time.monotonic() + 60
    while time.monotonic() < deadline:
        if mine <= {int(p.pid) for h in handles for p in nv.nvmlDeviceGetComputeRunningProcesses(h)}:
            return
        time.sleep(0.2)
    raise SystemExit("the driver did not list the pool's CUDA processes within 60 s")


if __name__ == "__main__":
    main()
