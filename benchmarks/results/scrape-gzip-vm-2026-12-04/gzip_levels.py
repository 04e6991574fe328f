"""gzip alone, at levels 1, 6 and 9, over the daemon's text answer at 4,096 simulated processes (no GPU):

    python benchmarks/results/scrape-gzip-vm-2026-12-04/gzip_levels.py

The answer is written once (the rates read, after one tick over five minutes of history), then each level
compresses it `--repeat` times; medians, with the compressed size.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import tick
from prometheus_client import generate_latest
from vramwatch import logs
from vramwatch.backends.simulated import SimulatedBackend
from vramwatch.exporter import make_registry
from vramwatch.testing import FakeClock


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=21)
    args = ap.parse_args()
    logs.configure("json", "error")
    clock = FakeClock()
    daemon, step = tick._daemon_for(SimulatedBackend("scale", seed=0, clock=clock), clock, prefill=300)
    step()
    body = generate_latest(make_registry(lambda: daemon._state))
    print(f"text answer: {len(body):,} bytes")
    print("| level | median | p90 | compressed bytes |")
    print("| ---: | ---: | ---: | ---: |")
    for level in (1, 6, 9):
        m = tick.measure(lambda lv=level: gzip.compress(body, compresslevel=lv), repeat=args.repeat)
        size = len(gzip.compress(body, compresslevel=level))
        print(f"| {level} | {m['median_s'] * 1e3:.2f} ms | {m['p90_s'] * 1e3:.2f} ms | {size:,} |")


if __name__ == "__main__":
    main()
