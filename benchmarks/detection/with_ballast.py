"""Put the ballast back into rebased real traces: score them as other people's ballasted recordings look.

    python benchmarks/detection/with_ballast.py benchmarks/detection/traces /tmp/kept
    python benchmarks/detection/score.py /tmp/kept

`record_real.py` removes the ballast process and its bytes so that a trace reads as a 24 GiB card. This
undoes that for every `real_*` trace whose truth file records `ballast_bytes`: the card's total and used
memory grow by the ballast's (constant) bytes and a `ballast.py` process holding them is listed on every
tick under a pid the trace does not use. Truth files and workload events are copied unchanged. The
recordings are of one GPU, as `record_real.py` makes them; on several, the bytes go back on each (as the
rebase took them) and the process is listed on the first.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
from pathlib import Path
from typing import Any

BALLAST_CMDLINE = ["python3", "ballast.py", "--leave-gib", "24"]


def restore(src: Path, dst: Path, ballast_bytes: int) -> None:
    with gzip.open(src, "rt") as f:
        lines: list[dict[str, Any]] = [json.loads(line) for line in f if line.strip()]
    header, ticks = lines[0], lines[1:]
    used_pids = {p["pid"] for t in ticks for p in t.get("processes", [])}
    pid = max(used_pids, default=1) + 1
    start = min((t["wall"] for t in ticks if t.get("wall")), default=0.0) - 5.0
    for g in header.get("gpus", []):
        g["total_bytes"] += ballast_bytes
    header.pop("rebased", None)
    for t in ticks:
        for g in t["gpus"]:
            for key in ("total_bytes", "used_bytes"):
                if g.get(key) is not None:
                    g[key] += ballast_bytes
        t.setdefault("processes", []).append(
            {"gpu": t["gpus"][0]["uuid"], "pid": pid, "start_time": start, "used_bytes": ballast_bytes,
             "name": "ballast.py", "user": "root", "cmdline": BALLAST_CMDLINE}
        )  # fmt: skip
    with gzip.open(dst, "wt") as out:
        for line in (header, *ticks):
            out.write(json.dumps(line, separators=(",", ":")) + "\n")


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    src_dir, dst_dir = Path(sys.argv[1]), Path(sys.argv[2])
    (dst_dir / "events").mkdir(parents=True, exist_ok=True)
    for truth_path in sorted(src_dir.glob("real_*.truth.json")):
        name = truth_path.name.removesuffix(".truth.json")
        truth = json.loads(truth_path.read_text())
        if not truth.get("ballast_bytes"):
            continue
        restore(src_dir / f"{name}.jsonl.gz", dst_dir / f"{name}.jsonl.gz", int(truth["ballast_bytes"]))
        shutil.copy(truth_path, dst_dir / truth_path.name)
        events = src_dir / "events" / f"{name}.events.jsonl.gz"
        if events.exists():
            shutil.copy(events, dst_dir / "events" / events.name)
        print(f"{name}: ballast of {truth['ballast_bytes'] / 2**30:.1f} GiB put back")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
