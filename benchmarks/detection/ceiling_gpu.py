"""Runs that fill the card with their cache and live, on a real GPU (about 7 minutes): PyTorch's flush at the ceiling.

    . benchmarks/gpu_env.sh && python3 benchmarks/detection/ceiling_gpu.py OUT [--base PKGDIR] [--dry-run] [--agent]

A ballast leaves 24 GiB (benchmarks/workloads/ballast.py). Two runs of trainer.py's `recycle` mode follow each other,
each a healthy trainer (8 GiB budget) beside a LoRA's frozen base model (6 GiB), whose sequence-length warm-up holds,
each step, a buffer 2 MiB larger than the last (from 64 MiB, a step a second). The smaller buffers stay in PyTorch's
cache, so what NVML sees of the run climbs by a buffer a step (64-400 MB/s) until cudaMalloc fails; PyTorch then
frees its cache and retries (`num_alloc_retries` in the step events), the run falls back by several GiB and climbs
again. Nothing runs out of memory there:

- `R` (0-200 s) is healthy: every critical finding about it is false, and a policy that ends runs must leave it be;
- `L` (from about 205 s) leaks 100 MB/s beneath its cache: its troughs rise until it really runs out of memory (exit
  3), about two and a half minutes after it started. Its OOM is owed a forecast.

`vramwatch serve` runs live with the policy of hold_gpu.py (critical findings signal `trainer.py` through an adapter
that saves and then ends the run), acting, or in dry-run with `--dry-run`. `--base PKGDIR` (a directory holding an
older `vramwatch` package) runs that tree's `serve` beside it in dry-run. `vramwatch record` runs from before R
(OUT/ceiling.raw.jsonl.gz) for replays (tests/test_live_h100_ceiling.py). OUT also gets each process's log and
summary.json: when each run started and ended, how many times PyTorch flushed its cache, what each daemon raised and
whom it decided to signal.

`--agent` runs R and L under `vramwatch run` (the in-process agent), reporting their allocator's figures to each
daemon's own socket: the daemons then know allocated from reserved (detectors/cache.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from hold_gpu import daemons_said, events, lives, start_daemons, torn_down
from loads_gpu import VW, WORK, spawn, wait_for

HEALTHY_S = 200.0
LEAK_MB_PER_S = 100.0
LEAK_LIMIT_S = 200.0
RECYCLE = ["--mode", "recycle", "--budget-gib", "8", "--frozen-gib", "6", "--grow-mib", "64", "--step-seconds", "1",
           "--steps", "100000"]  # fmt: skip


def flushes(path: Path) -> dict[str, Any]:
    """How often PyTorch flushed its cache and retried (the last step's `num_alloc_retries`), and its reserved range."""
    steps = events(path, "step")
    reserved = [int(e["reserved_bytes"]) for e in steps if e.get("reserved_bytes") is not None]
    return {
        "steps": len(steps),
        "num_alloc_retries": steps[-1].get("num_alloc_retries") if steps else None,
        "reserved_min_gib": round(min(reserved) / (1 << 30), 2) if reserved else None,
        "reserved_max_gib": round(max(reserved) / (1 << 30), 2) if reserved else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", type=Path, default=Path("ceiling-out"), help="where the logs and results go")
    ap.add_argument("--base", type=Path, help="a directory holding an older vramwatch package, run beside in dry-run")
    ap.add_argument("--dry-run", action="store_true", help="the live daemon decides but signals nobody")
    ap.add_argument("--agent", action="store_true", help="run R and L under `vramwatch run`, reporting to the daemons")
    args = ap.parse_args()
    out = args.out.resolve()
    base = None if args.base is None else args.base.resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = ["ballast", "record", "serve", "R", "L"] + (["serve-base"] if base else [])
    logs: dict[str, IO[bytes]] = {name: (out / f"{name}.log").open("wb") for name in names}
    procs = []
    codes: dict[str, int | None] = {}
    t0 = wall0 = 0.0
    try:
        procs.append(spawn([sys.executable, str(WORK / "ballast.py"), "--leave-gib", "24"], logs["ballast"]))
        wait_for(out / "ballast.log", "ready", 120)
        # (AF_UNIX paths are short: the sockets live in a fresh directory of /tmp; the agents report to both daemons.)
        here = Path(tempfile.mkdtemp(prefix="vw-"))
        sockets = {name: str(here / f"{name}.sock") for name in ("serve", "serve-base")}
        start_daemons(out, logs, procs, base, acting=not args.dry_run, sockets=sockets if args.agent else None)
        agent_env = dict(os.environ)
        agent_env["VRAMWATCH_SOCKET"] = ":".join(sockets[name] for name in sockets if base or name == "serve")
        under = [*VW, "run", "--"] if args.agent else []
        env = agent_env if args.agent else None
        procs.append(spawn([*VW, "--log-format", "json", "record", str(out / "ceiling.raw.jsonl.gz"), "--interval",
                            "1", "--force"], logs["record"]))  # fmt: skip
        time.sleep(4)
        t0, wall0 = time.monotonic(), time.time()
        healthy = spawn([*under, sys.executable, str(WORK / "trainer.py"), *RECYCLE, "--stop-at", str(t0 + HEALTHY_S)],
                        logs["R"], env=env)  # fmt: skip
        procs.append(healthy)
        while healthy.poll() is None and time.monotonic() < t0 + HEALTHY_S + 30:
            time.sleep(1)
        time.sleep(5)  # the daemons see it gone
        leak_at = time.monotonic()
        leaker = spawn([*under, sys.executable, str(WORK / "trainer.py"), *RECYCLE, "--leak-mb-per-s",
                        str(LEAK_MB_PER_S), "--stop-at", str(leak_at + LEAK_LIMIT_S)], logs["L"], env=env)  # fmt: skip
        procs.append(leaker)
        while leaker.poll() is None and time.monotonic() < leak_at + LEAK_LIMIT_S + 30:
            time.sleep(1)
        time.sleep(10)  # the daemons see it gone
        codes = {"R": healthy.poll(), "L": leaker.poll()}
    finally:
        torn_down(procs, logs)
    summary: dict[str, Any] = {"t0": t0, "wall0": wall0, "exit_codes": codes, "agent": args.agent}
    summary.update(lives(out, t0, ("R", "L")))
    summary["R_cache"] = flushes(out / "R.log")
    summary["L_cache"] = flushes(out / "L.log")
    summary["L_oom"] = bool(events(out / "L.log", "oom"))
    summary.update(daemons_said(out, wall0))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0 if codes.get("R") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
