"""A/B of whole daemon ticks in one process: the vramwatch of another commit (`--base`, default `main`) against
this tree's, over the same host processes behind the scripted NVML, with an hour of history. No GPU needed:

    python benchmarks/tick_ab.py                          # 1, 4, 16, 64 processes; still, then every other a sawtooth
    python benchmarks/tick_ab.py --base e947182 --procs 64 --saw-every 2 --rounds 20
    python3 benchmarks/tick_ab.py --gpu --base-dir BASE    # a GPU host: real NVML, N small CUDA processes; BASE
                                                          # from `git archive REF watchdog | tar -x -C BASE`
    python benchmarks/tick_ab.py --simulated scale512,scale  # the simulator at scale: 8 x 64 (an hour), 8 x 512
    python benchmarks/tick_ab.py --simulated scale --simulated-prefill 3600  # 8 x 512 with an hour (minutes a side)

The base tree is taken with `git archive` and imported under another name beside this tree's `vramwatch`, so both
run in the same interpreter, on the same processes and the same readings. They tick in alternating blocks (the
order flips every round), so that the machine's load and the history's growth fall on both alike; each figure is
the median over the blocks of the mean tick in a block. On a shared machine only the ratios within one run count.
The collector is tuned as `serve` tunes it (`--default-gc` keeps CPython's settings, as before 2026-12-05 (f)).
After every block both daemons' last analyses are compared: the run stops if they differ in anything (not with
`--gpu`: each side reads the real card at its own moment, so a sawtooth differs between them; there NVML's own
part of a tick is measured too, and the per-process cost beyond it reported).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import shutil
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


def base_package(ref: str, into: Path, base_dir: Path | None = None) -> ModuleType:
    """The `vramwatch` package of commit `ref` (or of the tree `base_dir`, on a host without the repository's
    history: `git archive REF watchdog | tar -x -C DIR` made elsewhere), importable as `vramwatch_base`."""
    if base_dir is not None:
        shutil.copytree(base_dir / "watchdog", into / "vramwatch_base")
    else:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "watchdog"], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
        (into / "watchdog").rename(into / "vramwatch_base")
    sys.path.insert(0, str(into))
    return importlib.import_module("vramwatch_base")


def side(
    package: ModuleType, pool: tick.Pool, saw_every: int, prefill: int, *, gpu: bool = False
) -> tuple[Any, Callable[[], None]]:
    """A daemon of `package` over its own scripted NVML listing the pool's processes (with `gpu`: the real NVML
    and the pool's CUDA processes), with `prefill` ticks."""
    nvml = importlib.import_module(package.__name__ + ".backends.nvml")
    testing = importlib.import_module(package.__name__ + ".testing")
    if gpu:
        return tick._daemon_for(nvml.NvmlBackend(), testing.FakeClock(), prefill=prefill, package=package)
    nv = tick._fake_nvml(pool, saw_every)
    nv.refresh()
    return tick._daemon_for(
        nvml.NvmlBackend(nvml=nv), testing.FakeClock(), prefill=prefill, before=nv.refresh, package=package
    )


def fingerprint(daemon: Any) -> str:
    # The two packages' classes differ, so their dataclasses never compare equal: their text does. The process
    # rates and the verdicts as plain dicts: a tree that computes either when read may hold it in a mapping whose
    # text lists none.
    analysis = daemon.pipeline.analysis
    fields = {f.name: getattr(analysis, f.name) for f in dataclasses.fields(analysis)}
    fields.update(process_growth=dict(analysis.process_growth.items()), verdicts=dict(analysis.verdicts.items()))
    # A field that only one side has is compared while it holds something: `failed` (2026-12-06) is empty on a tick
    # where no detector raised, which is what a tree without it means.
    return repr({name: value for name, value in fields.items() if name not in ADDED or value})


#: Fields of `Analysis` added after trees a base may be taken from.
ADDED = frozenset({"failed"})


#: The simulator's scenarios at scale and the history each is measured with (as `tick.py --simulated`).
SIMULATED_PREFILL = {"steady": 3600, "scale512": 3600, "scale": 300}


def _simulated_history(scenario: str, args: argparse.Namespace) -> int:
    """Ticks of history for a simulated scenario: `--simulated-prefill`, else the scenario's own (8 x 512 fills an
    hour in minutes per side, so it gets five minutes unless asked)."""
    if args.simulated_prefill is not None:
        return int(args.simulated_prefill)
    return int(SIMULATED_PREFILL.get(scenario, args.prefill))


def run(packages: dict[str, ModuleType], n: int, saw_every: int, args: argparse.Namespace) -> dict[str, float]:
    pool = tick.Pool(tick._CUDA_CHILD, saw_every) if args.gpu else tick.Pool(tick._HOST_CHILD)
    try:
        pool.grow(n)
        if args.gpu:
            _listed(pool)
        sides = {name: side(pkg, pool, saw_every, args.prefill, gpu=args.gpu) for name, pkg in packages.items()}
        out = _alternate(sides, args, f"{n} processes, saw every {saw_every}")
        if args.gpu:
            out["nvml"] = _raw_nvml(args)
        return out
    finally:
        pool.close()


def run_simulated(packages: dict[str, ModuleType], scenario: str, args: argparse.Namespace) -> dict[str, float]:
    """`run` over a simulated scenario: each side its own simulator of the same seed, so both read the same."""

    def sim_side(package: ModuleType) -> tuple[Any, Callable[[], None]]:
        simulated = importlib.import_module(package.__name__ + ".backends.simulated")
        clock = importlib.import_module(package.__name__ + ".testing").FakeClock()
        backend = simulated.SimulatedBackend(scenario, seed=0, clock=clock)
        return tick._daemon_for(backend, clock, prefill=_simulated_history(scenario, args), package=package)

    return _alternate({name: sim_side(pkg) for name, pkg in packages.items()}, args, f"simulated {scenario}")


def _alternate(
    sides: dict[str, tuple[Any, Callable[[], None]]], args: argparse.Namespace, what: str
) -> dict[str, float]:
    """Blocks of `ticks` ticks per side in alternating order over `rounds`; the median of each side's mean tick
    (ms). Stops when the two analyses differ after a block (not on a real GPU, whose readings differ)."""
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
        # On a GPU each side reads the card at its own moment: a sawtooth differs between them.
        if len(texts) != 1 and not args.gpu:
            raise SystemExit(f"the analyses differ at round {r} ({what})")
    return {name: statistics.median(v) for name, v in ms.items()}


def _raw_nvml(args: argparse.Namespace) -> float:
    """The median over `rounds` blocks of `ticks` of NVML's own part of a tick (memory v2, the compute and
    graphics lists of each GPU), in ms: what any NVML reader pays, the floor under both sides."""
    import pynvml

    pynvml.nvmlInit()
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        blocks = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            for _ in range(args.ticks):
                for h in handles:
                    pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
                    pynvml.nvmlDeviceGetComputeRunningProcesses(h)
                    pynvml.nvmlDeviceGetGraphicsRunningProcesses(h)
            blocks.append((time.perf_counter() - started) / args.ticks * 1e3)
        return float(statistics.median(blocks))
    finally:
        pynvml.nvmlShutdown()


def _listed(pool: tick.Pool) -> None:
    """Wait until the driver lists every CUDA process of the pool (it does once its context is made)."""
    import pynvml

    pynvml.nvmlInit()
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        mine, deadline = {p.pid for p in pool.procs}, time.monotonic() + 60
        while time.monotonic() < deadline:
            listed = {int(p.pid) for h in handles for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)}
            if mine <= listed:
                return
            time.sleep(0.2)
        raise SystemExit("the driver did not list the pool's CUDA processes within 60 s")
    finally:
        pynvml.nvmlShutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="main", help="the commit to compare against (default: main)")
    ap.add_argument("--procs", default="1,4,16,64", help="process counts, comma-separated")
    ap.add_argument("--saw-every", default="0,2", help="modes: 0 = all still, K = every K-th a sawtooth")
    ap.add_argument("--prefill", type=int, default=3600, help="ticks of history before measuring (an hour)")
    ap.add_argument("--rounds", type=int, default=15, help="alternating blocks per side")
    ap.add_argument("--ticks", type=int, default=20, help="ticks per block")
    ap.add_argument("--gpu", action="store_true", help="real NVML and N small CUDA processes (a GPU host)")
    ap.add_argument("--base-dir", type=Path, help="the base as a tree holding watchdog/ (no git history needed)")
    ap.add_argument("--simulated", metavar="SCENARIOS", help="simulated scenarios instead, comma-separated")
    ap.add_argument("--simulated-prefill", type=int, help="ticks of history for every simulated scenario")
    ap.add_argument("--default-gc", action="store_true", help="keep CPython's collector settings (not serve's)")
    args = ap.parse_args()
    import vramwatch
    from vramwatch import entry, logs

    logs.configure("json", "error")  # findings of the measured processes are not what is measured
    # The collector as `serve` sets it, for both trees (one interpreter). With CPython's own settings, two daemons'
    # 4,096 processes spend most of each tick in collections that serve does not make (docs/benchmarks.md,
    # 2026-12-05 (f)).
    if not args.default_gc:
        entry.tune_collector()
    with tempfile.TemporaryDirectory() as tmp:
        packages = {"base": base_package(args.base, Path(tmp), args.base_dir), "change": vramwatch}
        head = (
            subprocess.run(
                ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
            ).stdout.strip()
            or "no git history here"
        )
        base = f"the tree in {args.base_dir}" if args.base_dir else args.base
        print(f"base {base} against this tree ({Path(vramwatch.__file__).parent}, HEAD {head}: uncommitted changes "
              f"and a copied tree's stale .git are not shown); prefill {args.prefill} ticks (simulated: the history "
              f"column); "
              f"{args.rounds} alternating blocks of {args.ticks} ticks; medians of the blocks' mean tick; "
              f"collector {'as CPython sets it' if args.default_gc else 'as serve tunes it'}")  # fmt: skip
        if args.simulated:
            print("\n| simulated | history | base | change | change/base |\n| --- | ---: | ---: | ---: | ---: |")
            for scenario in args.simulated.split(","):
                m = run_simulated(packages, scenario, args)
                history = _simulated_history(scenario, args)
                print(f"| {scenario} | {history} s | {m['base']:.2f} ms | {m['change']:.2f} ms | "
                      f"{m['change'] / m['base']:.2f}x |", flush=True)  # fmt: skip
            return
        nvml_col = " raw NVML |" if args.gpu else ""
        print(f"\n| processes | mode |{nvml_col} base | change | change/base | saved per process |")
        print("| ---: | --- | ---: | ---: | ---: | ---: |" + (" ---: |" if args.gpu else ""))
        for saw in (int(k) for k in args.saw_every.split(",")):
            mode = "still" if not saw else f"every {saw}th a sawtooth" if saw != 2 else "half sawtooth"
            fits: dict[str, list[tuple[int, float]]] = {"base": [], "change": [], "nvml": []}
            for n in (int(c) for c in args.procs.split(",")):
                m = run(packages, n, saw, args)
                for name, points in fits.items():
                    if name in m:
                        points.append((n, m[name]))
                saved = (m["base"] - m["change"]) / n * 1e3
                raw = f" {m['nvml']:.3f} ms |" if "nvml" in m else ""
                print(
                    f"| {n} | {mode} |{raw} {m['base']:.3f} ms | {m['change']:.3f} ms | "
                    f"{m['change'] / m['base']:.2f}x | {saved:.1f} µs |",
                    flush=True,
                )
            if len(fits["base"]) > 1:
                b, c = (_slope(fits[k]) for k in ("base", "change"))
                raw = f" {_slope(fits['nvml']):.1f} µs |" if fits["nvml"] else ""
                print(f"| fit: per process | {mode} |{raw} {b:.1f} µs | {c:.1f} µs | {c / b:.2f}x | {b - c:.1f} µs |")
                if fits["nvml"]:
                    beyond = {k: v - _slope(fits["nvml"]) for k, v in (("base", b), ("change", c))}
                    print(f"\nbeyond NVML's own, per process ({mode}): base {beyond['base']:.1f} µs, "
                          f"change {beyond['change']:.1f} µs")  # fmt: skip


def _slope(points: list[tuple[int, float]]) -> float:
    """Least-squares µs per process of the median tick (ms) against the number of processes."""
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx * 1e3 if sxx else 0.0


if __name__ == "__main__":
    main()
