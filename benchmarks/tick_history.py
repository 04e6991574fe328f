"""How a tick's cost grows with the history behind it: one simulated daemon, filled tick by tick, measured at each
history length on the way (no GPU needed).

    python benchmarks/tick_history.py                             # 8 x 512 at 300, 480, 900, 1800 and 3600 s
    python benchmarks/tick_history.py --scenario scale512 --at 60,300,3600

At each length it runs `--ticks` ticks and reports the median tick, the median time of each stage (the sampler's
tick, of which the history's append; the per-GPU contexts that `analyze` gathers for the detectors; the publishing of
the exporter's state) and, per detector, the median time its detect function took (each detector's part of
`analyze`), with the number of stability verdicts per tick.
A detector's cost can jump when the history first covers one of its windows (warm-up, the stability and
growth horizons), so a tick measured with five minutes of history is not what a daemon spends after an hour.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tick


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="scale", help="a simulated scenario (8 x 512: scale; 8 x 64: scale512)")
    ap.add_argument("--at", default="300,480,900,1800,3600", help="history lengths in seconds, increasing")
    ap.add_argument("--ticks", type=int, default=15, help="ticks measured at each length")
    args = ap.parse_args()
    lengths = sorted({int(a) for a in args.at.split(",") if a.strip()})

    from vramwatch import daemon, entry, history, logs, sampler
    from vramwatch.backends.simulated import SimulatedBackend
    from vramwatch.detectors import analysis
    from vramwatch.testing import FakeClock

    logs.configure("json", "error")
    entry.tune_collector()  # the collector as serve sets it
    spent: dict[str, float] = {}
    verdicts = [0]
    stages = _stages(sampler, history, analysis, daemon)
    for owner, name, label in stages:
        _time_attr(owner, name, label, spent)
    analysis.detectors = _timed(analysis.detectors, spent, verdicts)  # type: ignore[assignment]

    clock = FakeClock()
    _, one_tick = tick._daemon_for(SimulatedBackend(args.scenario, seed=0, clock=clock), clock, prefill=0)
    print(f"$ python benchmarks/tick_history.py {' '.join(sys.argv[1:])}")
    print(f"host: {platform.node()}, Python {platform.python_version()}; scenario {args.scenario}, collector as serve")
    print()
    names: list[str] = [label for _, _, label in stages]  # the stages in their order, then the detectors
    rows: list[tuple[int, float, dict[str, float], float]] = []
    done = 0
    for length in lengths:
        for _ in range(length - done):
            one_tick()
        done = length
        ticks: list[float] = []
        per: dict[str, list[float]] = {}
        counted = 0
        for _ in range(args.ticks):
            spent.clear()
            verdicts[0] = 0
            t0 = time.perf_counter()
            one_tick()
            ticks.append(time.perf_counter() - t0)
            counted += verdicts[0]
            for name, s in spent.items():
                per.setdefault(name, []).append(s)
        done += args.ticks
        names += [n for n in per if n not in names]
        medians = {n: statistics.median(v) for n, v in per.items()}
        rows.append((length, statistics.median(ticks), medians, counted / args.ticks))
    shown = [n for n in names if any(r[2].get(n, 0.0) >= 0.0005 for r in rows)]  # those that reach 0.5 ms
    header = ["history", "tick median", *shown, "verdicts a tick"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---:|" * len(header))
    for length, med, medians, per_tick in rows:
        cells = [f"{length} s", f"{med * 1e3:.2f} ms", *(f"{medians.get(n, 0.0) * 1e3:.2f} ms" for n in shown)]
        print("| " + " | ".join([*cells, f"{per_tick:.0f}"]) + " |")
    print()
    print(
        "sampler: the backend's read, the snapshot and the history's append (history.add); contexts: what analyze"
        " gathers per GPU before the detectors run; publish: the exporter's state. Each detector column is the"
        " median of its detect function's time per tick, all GPUs together."
    )


def _stages(sampler: Any, history: Any, analysis: Any, daemon: Any) -> list[tuple[Any, str, str]]:
    """The stages of a tick that are timed apart: (owner, attribute, column)."""
    return [
        (sampler.Sampler, "tick", "sampler"),
        (history.History, "add", "history.add"),
        (analysis, "_context", "contexts"),
        (daemon.Daemon, "_publish", "publish"),
    ]


def _time_attr(owner: Any, name: str, label: str, spent: dict[str, float]) -> None:
    """Replace `owner.name` with a version that adds its time to `spent[label]` (callers look it up per call)."""
    fn = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - t0

    setattr(owner, name, timed)


def _timed(detectors: Callable[[], Iterable[Any]], spent: dict[str, float], verdicts: list[int]) -> Callable[[], Any]:
    """`detectors` with each detect function timed into `spent` (by kind) and verdicts counted."""
    from vramwatch.detectors import Verdict

    def wrap(fn: Callable[..., Iterable[Any]], name: str) -> Callable[..., list[Any]]:
        def timed(*args: Any) -> list[Any]:
            t0 = time.perf_counter()
            out = list(fn(*args))
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0
            verdicts[0] += sum(isinstance(o, Verdict) for o in out)
            return out

        return timed

    def every() -> tuple[Any, ...]:
        out = []
        for d in detectors():
            changes: dict[str, Any] = {}
            if d.per_gpu is not None:
                changes["per_gpu"] = wrap(d.per_gpu, str(d.kind))
            if d.per_tick is not None:
                changes["per_tick"] = wrap(d.per_tick, f"{d.kind} (per tick)")
            out.append(dataclasses.replace(d, **changes))
        return tuple(out)

    return every


if __name__ == "__main__":
    main()
