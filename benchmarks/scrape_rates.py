"""Where a scrape's process rates go, by kind of series, over the simulator at scale. No GPU:

    python benchmarks/scrape_rates.py                     # 8 x 512 with five minutes, 8 x 64 with an hour
    python benchmarks/scrape_rates.py --only scale512 --repeat 10

After one tick over a prefilled history, every process's rate input is sorted by the path `growth.process_rate`
takes for it: computed at the tick (a still view), a flat reported window, a level floor proved from the
staircases, or a fit. Each kind is timed as a scrape reads it before the next tick's append (live views, medians of
`--repeat` reads), and the moving processes are timed once more over views that keep only their points (no
staircase: what a scrape that overlaps the next append reads), after checking that both give the same rates.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tick
from vramwatch import logs
from vramwatch.backends.simulated import SimulatedBackend
from vramwatch.detectors import growth
from vramwatch.detectors._series import View
from vramwatch.testing import FakeClock

SCENARIOS = {"scale": 300, "scale512": 3600}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=sorted(SCENARIOS), help="one scenario (default: both)")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    logs.configure("json", "error")
    print("| simulated | kind | processes | median per rate | all of them, per scrape |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name in [args.only] if args.only else list(SCENARIOS):
        for row in measure(name, SCENARIOS[name], args.repeat):
            print("| " + " | ".join(row) + " |")


def measure(scenario: str, prefill: int, repeat: int) -> list[list[str]]:
    clock = FakeClock()
    daemon, step = tick._daemon_for(SimulatedBackend(scenario, seed=0, clock=clock), clock, prefill=prefill)
    step()
    config = daemon.detector_config
    kinds: dict[str, list[tuple[View, growth.RatePlan]]] = {}
    still = 0
    for card in daemon.pipeline.analysis.process_growth._cards.values():  # the tick's per-card rate inputs
        for entry in card._inputs.values():
            if isinstance(entry, growth.Rate):
                still += 1
            else:
                kinds.setdefault(_kind(*entry, config), []).append(entry)
    label = f"{scenario} ({prefill} s)"
    rows = [[label, "still (computed at the tick)", str(still), "-", "-"]]
    for kind, entries in sorted(kinds.items()):
        per = _median_of(lambda e=entries: [growth.process_rate(v, config, p) for v, p in e], repeat)
        rows.append([label, kind, str(len(entries)), f"{per / len(entries) * 1e6:.1f} µs", f"{per * 1e3:.2f} ms"])
    moving = [e for entries in kinds.values() for e in entries]
    points_only = [(_points_only(v), p) for v, p in moving]
    if [growth.process_rate(v, config, p) for v, p in moving] != [
        growth.process_rate(v, config, p) for v, p in points_only
    ]:
        raise SystemExit("the rates over points-only views differ from the live views' rates")
    for what, entries in (("every moving process", moving), ("the same, views of points only", points_only)):
        per = _median_of(lambda e=entries: [growth.process_rate(v, config, p) for v, p in e], repeat)
        rows.append([label, what, str(len(entries)), f"{per / len(entries) * 1e6:.1f} µs", f"{per * 1e3:.2f} ms"])
    return rows


def _kind(view: View, plan: growth.RatePlan, config: Any) -> str:
    """The path `growth._planned_rate` takes for this view: the same tests, in the same order."""
    windows, every, reported = plan
    only_reported = config.min_rise_bytes > 0 and (
        view.still() or view.tail_max(2) - view.since(windows[-1][1]).min() < config.min_rise_bytes
    )
    if only_reported:
        flat = view.since(every[1])
        if len(flat) >= 2 and flat.min() == flat.max():
            return "flat reported window"
    assert reported is not None  # a process's plan shows every window
    chosen, a = reported
    if (
        config.min_rise_bytes > 0
        and growth._floor_level(view, a, config)
        and (
            only_reported or all(h == chosen or growth._cannot_rise_in_every_part(view, w, config) for h, w in windows)
        )
    ):
        return "level floor"
    return "one fit (the reported window)" if only_reported else "every window's fit"


def _points_only(view: View) -> View:
    """The view without its staircases: every question answered by a scan of its points."""
    t, v = view.t, view.v
    return View(t, v)


def _median_of(fn: Callable[[], object], repeat: int = 21) -> float:
    return tick.measure(fn, repeat=repeat, warmup=1)["median_s"]


if __name__ == "__main__":
    main()
