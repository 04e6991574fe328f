"""What a hand-written writer for the two per-process families would cost, for the team's decision on the scrape
target (docs/benchmarks.md, "where a scrape's time goes"). A measurement only: vramwatch does not use it.

    python benchmarks/results/scrape-split-vm-2026-12-04/writer_prototype.py

Over the simulator's 8 x 512 processes, with every rate read beforehand: prometheus-client building the two
per-process families and writing them, against text lines built from label text cached per label set and the
library's own float formatting. It checks that both give the same sample lines first.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import tick
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.utils import floatToGoString
from vramwatch import exporter, logs
from vramwatch.backends.simulated import SimulatedBackend
from vramwatch.testing import FakeClock
from vramwatch.units import gpu_index_label


def main() -> None:
    logs.configure("json", "error")
    clock = FakeClock()
    daemon, step = tick._daemon_for(SimulatedBackend("scale", seed=0, clock=clock), clock, prefill=60)
    step()
    state = daemon._state
    snap = state.snapshot
    for key in state.process_growth:
        state.process_growth[key]
    collector = exporter.SnapshotCollector(lambda: state)
    cache: dict[tuple[str, ...], str] = {}

    def cached_text() -> str:
        index = {g.uuid: gpu_index_label(g) for g in snap.gpus}
        mem, growth = [], []
        for p in snap.processes:
            values = exporter._proc_labels(p, index)
            labels = cache.get(values)
            if labels is None:
                pairs = sorted(zip(exporter.PROC_LABELS, values, strict=True))
                labels = cache[values] = "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "} "
            if p.used_bytes is not None:
                mem.append(f"vramwatch_process_gpu_memory_bytes{labels}{floatToGoString(float(p.used_bytes))}\n")
            rate = state.process_growth.get((p.key, p.gpu_uuid))
            if rate is not None:
                growth.append(
                    f"vramwatch_process_gpu_memory_growth_bytes_per_second{labels}{floatToGoString(float(rate))}\n"
                )
        return "".join(mem) + "".join(growth)

    def library() -> bytes:
        families = list(collector._processes(state, snap))
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Prebuilt(families))
        return generate_latest(registry)

    lines = sorted(line for line in library().decode().splitlines() if not line.startswith("#"))
    if lines != sorted(cached_text().splitlines()):
        raise SystemExit("the cached-label lines differ from prometheus-client's")
    print(f"{len(snap.processes)} processes, {len(lines)} sample lines")
    lib, own = _median_of(library), _median_of(cached_text)
    print(f"prometheus-client, families and writer: {lib * 1e3:.2f} ms; cached label text: {own * 1e3:.2f} ms "
          f"({own / lib:.2f}x)")  # fmt: skip


class _Prebuilt:
    def __init__(self, families: list[object]) -> None:
        self.families = families

    def collect(self) -> list[object]:
        return self.families


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _median_of(fn: Callable[[], object], repeat: int = 21) -> float:
    return tick.measure(fn, repeat=repeat, warmup=1)["median_s"]


if __name__ == "__main__":
    main()
