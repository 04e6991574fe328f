"""Shared bits of the agent's GPU proofs: JSON events on stdout and a ballast process that shrinks the card.

The ballast is a separate process (as another user's job would be) holding all but `leave_gib` of the
GPU's free memory, so the proof's own allocator state stays its own (an in-process ballast would count in
its allocated and reserved bytes). It runs with `VRAMWATCH_AGENT=0`: under `vramwatch run` it is loaded
with the agent's sitecustomize but does not report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

MIB = 1 << 20
GIB = 1 << 30

BALLAST = """
import sys, torch
leave = int(float(sys.argv[1]) * (1 << 30))
torch.zeros(1, device="cuda")
held, block = [], 1 << 30
while block >= 2 << 20:
    free, _ = torch.cuda.mem_get_info()
    size = min(block, free - leave) // (2 << 20) * (2 << 20)
    if size < 2 << 20:
        break
    try:
        held.append(torch.empty(size, dtype=torch.uint8, device="cuda"))
    except torch.cuda.OutOfMemoryError:
        block //= 2
torch.cuda.synchronize()
print("ready", sum(t.numel() for t in held), torch.cuda.mem_get_info()[0], flush=True)
sys.stdin.read()
"""


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "wall": time.time(), **fields}), flush=True)


def start_ballast(leave_gib: float) -> subprocess.Popen[str]:
    env = dict(os.environ, VRAMWATCH_AGENT="0")
    proc = subprocess.Popen(
        [sys.executable, "-c", BALLAST, str(leave_gib)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    if not line or line[0] != "ready":
        raise RuntimeError("ballast did not start")
    emit("ballast", held_bytes=int(line[1]), free_bytes=int(line[2]), leave_gib=leave_gib)
    return proc


def stop_ballast(proc: subprocess.Popen[str]) -> None:
    if proc.stdin is not None:
        proc.stdin.close()
    proc.wait(timeout=30)


def allocator_figures(torch: Any) -> dict[str, int]:
    s = torch.cuda.memory_stats()
    free, total = torch.cuda.mem_get_info()
    return {
        "allocated_bytes": s.get("allocated_bytes.all.current", 0),
        "reserved_bytes": s.get("reserved_bytes.all.current", 0),
        "inactive_split_bytes": s.get("inactive_split_bytes.all.current", 0),
        "num_alloc_retries": s.get("num_alloc_retries", 0),
        "num_ooms": s.get("num_ooms", 0),
        "free_bytes": free,
        "total_bytes": total,
    }
