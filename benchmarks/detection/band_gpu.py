"""A run that saws in a band next to a trainer, on a real GPU (about 8 minutes):

    . benchmarks/gpu_env.sh && python3 benchmarks/detection/band_gpu.py OUT [--base PKGDIR] [--step S] [--leak MBPS]

A ballast leaves 24 GiB (benchmarks/workloads/ballast.py). A healthy trainer (benchmarks/workloads/trainer.py,
8 GiB) runs for 400 s. At t = 10 s a *sawer* arrives: 6 GiB of weights, then steps of `--step` seconds (0.97 by
default), each taking 3 GiB in twelve 256 MiB tensors over its first 70 % (its activations) and giving them back at
its end (`del` and `empty_cache()`, as trainers that flush every step do). NVML, read once a second, sees it at
whatever phase a step is in: with a step a little shorter than the read interval the phase drifts, and the reads
climb slowly through the band (3 GiB in about 30 s) and fall back, again and again. It runs 420 s and exits normally.
Nothing runs out of memory and nothing leaks: every finding is false.

`vramwatch serve` runs live with hold_gpu.py's policy (critical findings signal the processes matching
`trainer\\.py` through an adapter that saves and then ends the run, `allow_stop = true`). What docs/detection.md says
it does ("A run sawing in the band it lived in is no grower"): once the sawer has sawed for three minutes, its climbs
through its band raise nothing. With `--base PKGDIR` (a directory holding an older `vramwatch` package), a second
daemon of that tree watches the same card with the same policy in `dry_run`: its `action` lines say whom it would
have signalled, and when.

With `--leak MBPS`, the sawer keeps `MBPS` x its step in MB at every step from `--leak-from` seconds after it started
(200 by default: its band is known by then) until a step's activations no longer fit: a real OOM (it logs `oom` and
exits 3). Both daemons then run in `dry_run`, so that the trainer lives and the card fills: their findings say when
the first critical forecast came and what rate and ETA it claimed, against when the OOM came ("A leak beneath a
sawtooth is forecast by its peaks" in docs/detection.md). `summary.json` gets `sawer_oom_at`.

OUT gets `serve.log` (and `serve-base.log`), `trainer.log` and `sawer.log` (their events), `band.raw.jsonl.gz`
(`vramwatch record`, for replays) and `summary.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from hold_gpu import daemons_said, events, lives, torn_down, watched
from loads_gpu import spawn

SAWER = """
import json, sys, time, torch

def say(event, **more):
    print(json.dumps({"event": event, "t": time.monotonic(), **more}), flush=True)

step, seconds, leak, leak_from = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
torch.zeros(1, device="cuda")
weights = [torch.empty(256 << 20, dtype=torch.uint8, device="cuda") for _ in range(24)]  # 6 GiB
torch.cuda.synchronize()
say("start", step=step)
begin = next_step = time.monotonic()
steps, kept = 0, []
try:
    while next_step < begin + seconds:
        acts = []
        for k in range(12):  # 3 GiB over the first 70 % of the step: a forward pass's activations
            time.sleep(max(0.0, next_step + 0.7 * step * k / 12 - time.monotonic()))
            acts.append(torch.empty(256 << 20, dtype=torch.uint8, device="cuda"))
        torch.cuda.synchronize()
        time.sleep(max(0.0, next_step + 0.95 * step - time.monotonic()))
        if leak and next_step >= begin + leak_from:  # a leak beneath the sawtooth: each step keeps a little
            kept.append(torch.empty(int(leak * step), dtype=torch.uint8, device="cuda"))
        del acts
        torch.cuda.empty_cache()  # the step's memory goes back to the driver
        steps += 1
        next_step += step  # a steady period: the phase against the reads drifts, it does not wander
        time.sleep(max(0.0, next_step - time.monotonic()))
except torch.cuda.OutOfMemoryError:
    say("oom", steps=steps, kept=sum(k.numel() for k in kept))
    sys.exit(3)
say("end", steps=steps)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", default="band-out", type=Path, help="where the logs and the trace go")
    ap.add_argument("--base", type=Path, help="a directory holding an older `vramwatch` package, run in dry-run")
    ap.add_argument("--step", type=float, default=0.97, help="the sawer's step period in seconds")
    ap.add_argument("--seconds", type=float, default=420.0, help="how long the sawer saws")
    ap.add_argument("--leak", type=float, default=0.0, help="MB/s the sawer keeps from --leak-from on (0: none)")
    ap.add_argument("--leak-from", type=float, default=200.0, help="seconds after it starts that it begins to leak")
    args = ap.parse_args()
    out, base = args.out.resolve(), args.base.resolve() if args.base else None
    out.mkdir(parents=True, exist_ok=True)
    names = ["ballast", "serve", "record", "trainer", "sawer"] + (["serve-base"] if base else [])
    logs = {name: (out / f"{name}.log").open("wb") for name in names}
    procs = []
    sawer = None
    try:
        # A leak runs to its OOM with both daemons in dry-run: the trainer lives, and the card fills for real.
        t0, wall0 = watched(out, logs, procs, base, "band.raw.jsonl.gz", acting=not args.leak)
        time.sleep(max(0.0, t0 + 10 - time.monotonic()))
        argv = [str(args.step), str(args.seconds), str(args.leak * 1e6), str(args.leak_from)]
        sawer = spawn([sys.executable, "-c", SAWER, *argv], logs["sawer"])
        procs.append(sawer)
        while sawer.poll() is None and time.monotonic() < t0 + args.seconds + 60:
            time.sleep(1)
        time.sleep(10)  # the daemons see it gone
    finally:
        teardown = torn_down(procs, logs)

    code = sawer.poll() if sawer is not None else None
    summary: dict[str, Any] = {"wall0": wall0, "t0": t0, "teardown_at": round(teardown - t0, 1), "sawer_exit": code}
    summary.update(lives(out, t0, ("trainer", "sawer")))
    ended = [e for e in events(out / "sawer.log", "end") if "steps" in e]
    if ended:
        summary["sawer_steps"] = ended[0]["steps"]
    oom = events(out / "sawer.log", "oom")
    if oom:
        summary["sawer_oom_at"] = round(oom[0]["t"] - t0, 1)
    summary.update(daemons_said(out, wall0))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0 if code == (3 if args.leak else 0) else 1


if __name__ == "__main__":
    sys.exit(main())
