"""A/B of whole daemon ticks in one process: the vramwatch of another commit (`--base`, default `main`) against
this tree's, over the same host processes behind the scripted NVML, with an hour of history. No GPU needed:

    python benchmarks/tick_ab.py                          # 1, 4, 16, 64 processes; still, then every other a sawtooth
    python benchmarks/tick_ab.py --base e947182 --procs 64 --saw-every 2 --rounds 20

The base tree is taken with `git archive` and imported under another name beside this tree's `vramwatch`, so both
run in the same interpreter, on the same processes and the same readings. They tick in alternating blocks (the
order flips every round), so that the machine's load and the history's growth fall on both alike; each figure is
the median over the blocks of the mean tick in a block. On a shared machine only the ratios within one run count.
After every block both daemons' last analyses are compared: the run stops if they differ in anything.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tick

ROOT = Path(__file__).resolve().parents[1]


def base_package(ref: str, into: Path) -> ModuleType:
    """The `vramwatch` package of commit `ref`, importable as `vramwatch_base`."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "watchdog"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    (into / "watchdog").rename(into / "vramwatch_base")
    sys.path.insert(0, str(into))
    return importlib.import_module("vramwatch_base")


def side(package: ModuleType, pool: tick.Pool, saw_every: int, prefill: int) -> tuple[Any, Callable[[], None]]:
    """A daemon of `package` over its own scripted NVML listing the pool's processes, with `prefill` ticks."""
    nvml = importlib.import_module(package.__name__ + ".backends.nvml")
    testing = importlib.import_module(package.__name__ + ".testing")
    nv = tick._fake_nvml(pool, saw_every)
    nv.refresh()
    return tick._daemon_for(
        nvml.NvmlBackend(nvml=nv), testing.FakeClock(), prefill=prefill, before=nv.refresh, package=package
    )


def fingerprint(daemon: Any) -> str:
    # The two packages' classes differ, so their dataclasses never compare equal: their text does.
    return repr(daemon.pipeline.analysis)


def run(packages: dict[str, ModuleType], n: int, saw_every: int, args: argparse.Namespace) -> dict[str, float]:
    pool = tick.Pool(tick._HOST_CHILD)
    try:
        pool.grow(n)
        sides = {name: side(pkg, pool, saw_every, args.prefill) for name, pkg in packages.items()}
        ms: dict[str, list[float]] = {name: [] for name in sides}
        names = list(sides)
        for r in range(args.rounds):
            for name in names if r % 2 else reversed(names):
                step = sides[name][1]
                started = time.perf_counter()
                for _ in range(args.ticks):
                    step()
                ms[name].append((time.perf_counter() - started) / args.ticks * 1e3)
            texts = {fingerprint(d) for d, _ in sides.values()}
            if len(texts) != 1:
                raise SystemExit(f"the analyses differ at round {r} ({n} processes, saw every {saw_every})")
        return {name: statistics.median(v) for name, v in ms.items()}
    finally:
        pool.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="main", help="the commit to compare against (default: main)")
    ap.add_argument("--procs", default="1,4,16,64", help="process counts, comma-separated")
    ap.add_argument("--saw-every", default="0,2", help="modes: 0 = all still, K = every K-th a sawtooth")
    ap.add_argument("--prefill", type=int, default=3600, help="ticks of history before measuring (an hour)")
    ap.add_argument("--rounds", type=int, default=15, help="alternating blocks per side")
    ap.add_argument("--ticks", type=int, default=20, help="ticks per block")
    args = ap.parse_args()
    import vramwatch
    from vramwatch import logs

    logs.configure("json", "error")  # findings of the measured processes are not what is measured
    with tempfile.TemporaryDirectory() as tmp:
        packages = {"base": base_package(args.base, Path(tmp)), "change": vramwatch}
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        print(f"base {args.base} against this tree (HEAD {head}); prefill {args.prefill} ticks; "
              f"{args.rounds} alternating blocks of {args.ticks} ticks; medians of the blocks' mean tick")  # fmt: skip
        print("\n| processes | mode | base | change | change/base | saved per process |")
        print("| ---: | --- | ---: | ---: | ---: | ---: |")
        for saw in (int(k) for k in args.saw_every.split(",")):
            mode = "still" if not saw else f"every {saw}th a sawtooth" if saw != 2 else "half sawtooth"
            fits: dict[str, list[tuple[int, float]]] = {"base": [], "change": []}
            for n in (int(c) for c in args.procs.split(",")):
                m = run(packages, n, saw, args)
                for name, points in fits.items():
                    points.append((n, m[name]))
                saved = (m["base"] - m["change"]) / n * 1e3
                print(
                    f"| {n} | {mode} | {m['base']:.3f} ms | {m['change']:.3f} ms | {m['change'] / m['base']:.2f}x "
                    f"| {saved:.1f} µs |",
                    flush=True,
                )
            if len(fits["base"]) > 1:
                b, c = (_slope(fits[k]) for k in ("base", "change"))
                print(f"| fit: per process | {mode} | {b:.1f} µs | {c:.1f} µs | {c / b:.2f}x | {b - c:.1f} µs |")


def _slope(points: list[tuple[int, float]]) -> float:
    """Least-squares µs per process of the median tick (ms) against the number of processes."""
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx * 1e3 if sxx else 0.0


if __name__ == "__main__":
    main()
