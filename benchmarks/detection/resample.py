"""Keep every k-th tick of each recorded trace: the same runs as a daemon sampling every k seconds would have seen.

    python benchmarks/detection/resample.py benchmarks/detection/traces /tmp/every2s 2
    python benchmarks/detection/score.py /tmp/every2s

`serve --interval` can be raised to sample less often; this shows what the detectors then miss and whether they
raise anything false. The header's `interval_seconds` is multiplied by k. A process's exit seen on a dropped tick
is carried to the next kept one, where the daemon would have learnt of it. Truth files and workload events are
copied unchanged, so every target is scored against the same moments (a contender's "within N ticks" then allows
N of the longer ticks).
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
from pathlib import Path
from typing import Any


def resample(src: Path, dst: Path, every: int) -> tuple[int, int]:
    """Write `src` to `dst` with every `every`-th tick from the first; returns the ticks before and after."""
    with gzip.open(src, "rt") as f:
        lines: list[dict[str, Any]] = [json.loads(line) for line in f if line.strip()]
    header, ticks = lines[0], lines[1:]
    header["interval_seconds"] = float(header.get("interval_seconds") or 1.0) * every
    kept: list[dict[str, Any]] = []
    unseen_exits: list[Any] = []
    for i, tick in enumerate(ticks):
        if i % every:
            unseen_exits += tick.get("exits", [])
            continue
        if unseen_exits:
            tick["exits"] = unseen_exits + tick.get("exits", [])
            unseen_exits = []
        kept.append(tick)
    with gzip.open(dst, "wt") as out:
        for line in (header, *kept):
            out.write(json.dumps(line, separators=(",", ":")) + "\n")
    return len(ticks), len(kept)


def main() -> int:
    if len(sys.argv) != 4 or not sys.argv[3].isdigit() or int(sys.argv[3]) < 1:
        print(__doc__, file=sys.stderr)
        return 2
    src_dir, dst_dir, every = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    (dst_dir / "events").mkdir(parents=True, exist_ok=True)
    for truth_path in sorted(src_dir.glob("*.truth.json")):
        name = truth_path.name.removesuffix(".truth.json")
        before, after = resample(src_dir / f"{name}.jsonl.gz", dst_dir / f"{name}.jsonl.gz", every)
        shutil.copy(truth_path, dst_dir / truth_path.name)
        events = src_dir / "events" / f"{name}.events.jsonl.gz"
        if events.exists():
            shutil.copy(events, dst_dir / "events" / events.name)
        print(f"{name}: {before} ticks -> {after}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
