"""Replay the recording through a tree, whole or from a given second, and print every finding raised.

python replay.py [FROM_SECONDS]     # this tree; PYTHONPATH=BASE_PKG for another (a dir with a `vramwatch` link)
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "detection"))

import score  # noqa: E402
import vramwatch  # noqa: E402
from vramwatch.detectors.analysis import DEFAULT_CONFIG  # noqa: E402

start = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
for name, truth, recorded, interval in score.trace_cases(HERE):
    snaps = list(recorded)
    t0 = snaps[0].t
    run = score.replay(name, truth, [s for s in snaps if s.t - t0 >= start], DEFAULT_CONFIG, interval)
    print(f"{vramwatch.__file__}: {len(run.ticks)} ticks from +{start:.0f} s, {len(run.ours)} finding(s) raised")
    for e in run.ours:
        print(f"  +{e.t - t0:.1f} s {e.severity} {e.kind}: {e.message}")
