"""Keep every k-th tick of each recorded trace: the same runs as a daemon sampling every k seconds would have seen.

    python benchmarks/detection/resample.py benchmarks/detection/traces /tmp/every2s 2
    python benchmarks/detection/score.py /tmp/every2s

`serve --interval` can be raised to sample less often; this shows what the detectors then miss and whether they
raise anything false. The header's `interval_seconds` is multiplied by k. A process's exit seen on a dropped tick
is carried to the next kept one, where the daemon would have learnt of it (one seen after the last kept tick is
lost, as it would be). Ticks are kept by position: a trace with gaps stays as uneven as it was. Truth files and
workload events are copied unchanged, so every target is scored against the same moments (a contender's "within
N ticks" then allows N of the longer ticks).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tracefiles import Line, read_trace, rewrite_corpus, write_trace


def resample_ticks(header: Line, ticks: list[Line], every: int) -> tuple[Line, list[Line]]:
    """The header with its interval multiplied, and every `every`-th tick from the first (exits carried)."""
    header = {**header, "interval_seconds": float(header.get("interval_seconds") or 1.0) * every}
    kept: list[Line] = []
    unseen_exits: list[object] = []
    for i, tick in enumerate(ticks):
        if i % every:
            unseen_exits += tick.get("exits", [])
            continue
        kept.append({**tick, "exits": unseen_exits + tick.get("exits", [])} if unseen_exits else tick)
        unseen_exits = []
    return header, kept


def resample(src: Path, dst: Path, every: int) -> tuple[int, int]:
    """Write the trace `src` to `dst` resampled (`resample_ticks`); returns the ticks before and after."""
    header, ticks = read_trace(src)
    header, kept = resample_ticks(header, ticks, every)
    write_trace(dst, header, kept)
    return len(ticks), len(kept)


def main() -> int:
    if len(sys.argv) != 4 or not sys.argv[3].isdigit() or int(sys.argv[3]) < 1:
        print(__doc__, file=sys.stderr)
        return 2
    src_dir, dst_dir, every = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])

    def rewrite(name: str, _truth: Line, header: Line, ticks: list[Line]) -> tuple[Line, list[Line]]:
        header, kept = resample_ticks(header, ticks, every)
        print(f"{name}: {len(ticks)} ticks -> {len(kept)}")
        return header, kept

    for _name in rewrite_corpus(src_dir, dst_dir, rewrite):
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
