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

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tracefiles import Line, rewrite_corpus

BALLAST_CMDLINE = ["python3", "ballast.py", "--leave-gib", "24"]


def restore(header: Line, ticks: list[Line], ballast_bytes: int) -> tuple[Line, list[Line]]:
    """The trace with the ballast's bytes back on every GPU and its process listed on the first."""
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
    return header, ticks


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2

    def rewrite(_name: str, truth: Line, header: Line, ticks: list[Line]) -> tuple[Line, list[Line]] | None:
        return restore(header, ticks, int(truth["ballast_bytes"])) if truth.get("ballast_bytes") else None

    for name in rewrite_corpus(Path(sys.argv[1]), Path(sys.argv[2]), rewrite, "real_*.truth.json"):
        print(f"{name}: ballast put back")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
