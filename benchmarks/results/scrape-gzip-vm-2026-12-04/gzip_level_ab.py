"""A/B of the gzip level alone in the daemon's /metrics answer, over the simulator at scale, in one run (no GPU):

    python benchmarks/results/scrape-gzip-vm-2026-12-04/gzip_level_ab.py --repeat 20

A: the answer before this change (`exporter.prefer_text`, then prometheus-client's app, which gzips at level 9).
B: `exporter.metrics_app` (the same text answer, gzipped at `exporter.GZIP_LEVEL`). Both with Prometheus's Accept and
`Accept-Encoding: gzip`, timed in alternating rounds, a tick ahead of each (each scrape computes its rates, as a real
one does). Also checks that both decompress to the same bytes and prints the compressed sizes.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import tick
from prometheus_client import make_wsgi_app
from vramwatch import logs
from vramwatch.backends.simulated import SimulatedBackend
from vramwatch.exporter import GZIP_LEVEL, make_registry, metrics_app, prefer_text
from vramwatch.testing import FakeClock

ENVIRON = {"PATH_INFO": "/metrics", "REQUEST_METHOD": "GET", "QUERY_STRING": "",
           "HTTP_ACCEPT": tick.PROMETHEUS_ACCEPT, "HTTP_ACCEPT_ENCODING": "gzip"}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    logs.configure("json", "error")
    print(f"| simulated | history | A: level 9 (before) | B: level {GZIP_LEVEL} (now) | B / A | A bytes | B bytes |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for scenario, prefill in (("steady", 3600), ("scale512", 3600), ("scale", 300)):
        clock = FakeClock()
        daemon, step = tick._daemon_for(SimulatedBackend(scenario, seed=0, clock=clock), clock, prefill=prefill)
        registry = make_registry(lambda d=daemon: d._state)
        library, now = make_wsgi_app(registry), metrics_app(registry)

        def before_change(app=library) -> bytes:
            return b"".join(app(prefer_text(dict(ENVIRON)), lambda *_: None))

        def this_change(app=now) -> bytes:
            return b"".join(app(dict(ENVIRON), lambda *_: None))

        step()
        a_body, b_body = before_change(), this_change()
        if gzip.decompress(a_body) != gzip.decompress(b_body):
            raise SystemExit(f"{scenario}: the two answers differ once decompressed")
        a, b = tick.measure_pair(before_change, this_change, repeat=args.repeat, before=step)
        print(
            f"| {scenario} | {prefill} s | {a['median_s'] * 1e3:.2f} ms | {b['median_s'] * 1e3:.2f} ms"
            f" | {b['median_s'] / a['median_s']:.2f}x | {len(a_body):,} | {len(b_body):,} |"
        )


if __name__ == "__main__":
    main()
