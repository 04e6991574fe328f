"""Re-derive the process-tree fields of traces recorded before attribution stopped climbing past non-launchers.

The real traces in traces/ were recorded by record_real.py, which starts the trainer and the contender as
children of one driver script run under `timeout`; the attribution of that day grouped every process under
`timeout`, which hid the contention between two unrelated runs. Today's rule (a process's root is a known
launcher such as torchrun/accelerate, or itself) makes each of them its own root. This rewrites only the
root_pid / root_name / root_start_time fields, never a memory figure or a time:

    python benchmarks/detection/reroot.py benchmarks/detection/traces/real_*.jsonl.gz
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

HARNESS = {"timeout", "record_real.py"}


def reroot(path: Path) -> int:
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    changed = 0
    out = [lines[0]]
    for line in lines[1:]:
        tick = json.loads(line)
        for p in tick.get("processes", []):
            if p.get("root_name") in HARNESS:
                p["root_pid"], p["root_name"], p["root_start_time"] = p["pid"], p.get("name"), p.get("start_time")
                changed += 1
        out.append(json.dumps(tick, separators=(",", ":")))
    path.write_bytes(gzip.compress(("\n".join(out) + "\n").encode()))
    return changed


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(arg, reroot(Path(arg)), "process entries re-rooted")
