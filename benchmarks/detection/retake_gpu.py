"""A run that gives memory back and takes it again, next to a trainer, on a real GPU (about 4.5 minutes):

    . benchmarks/gpu_env.sh && python3 benchmarks/detection/retake_gpu.py OUT [--base PKGDIR]

A ballast leaves 24 GiB (benchmarks/workloads/ballast.py). A healthy trainer (benchmarks/workloads/trainer.py,
8 GiB) runs throughout. At t = 20 s a *retaker* arrives: it takes 11 GiB in about 4 s (a load too short for any
forecast), holds it 60 s, gives all but 1 GiB back (`del` and `empty_cache()`: weights offloaded for sampling, a model
server between two models) for 90 s, then takes 10 GiB back at about 450 MB/s (a model read from disk), holds it
40 s and exits normally. Nothing runs out of memory: every finding is false.

`vramwatch serve` runs live with hold_gpu.py's policy (critical findings signal the processes matching
`trainer\\.py` through an adapter that saves and then ends the run, `allow_stop = true`). What docs/detection.md
says it does ("A run taking back what it gave back is no grower"): the climb back to what the retaker held, with
room on the card, raises nothing. With `--base PKGDIR` (a directory holding an older `vramwatch` package), a second
daemon of that tree watches the same card with the same policy in `dry_run`: before that rule, the climb was a firm
critical forecast, and its `action` lines say it would have ended the trainer.

OUT gets `serve.log` (and `serve-base.log`), `trainer.log` and `retaker.log` (their events: when each phase began),
`retake.raw.jsonl.gz` (`vramwatch record`, for replays) and `summary.json`.
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

RETAKER = """
import json, sys, time, torch

def say(event, **more):
    print(json.dumps({"event": event, "t": time.monotonic(), **more}), flush=True)

def take(held, chunks, every):
    start = time.monotonic()
    for k in range(chunks):
        time.sleep(max(0.0, start + k * every - time.monotonic()))
        held.append(torch.empty(256 << 20, dtype=torch.uint8, device="cuda"))
        torch.cuda.synchronize()

torch.zeros(1, device="cuda")
held = []
say("start")
take(held, 44, 0.1)  # 11 GiB in ~4 s
say("loaded", gib=len(held) / 4)
time.sleep(60)
del held[4:]
torch.cuda.empty_cache()
say("gave_back", gib=len(held) / 4)
time.sleep(90)
say("taking_back")
take(held, 40, 0.6)  # 10 GiB at ~450 MB/s: ~24 s
say("taken_back", gib=len(held) / 4)
time.sleep(40)
say("end")
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", default="retake-out", type=Path, help="where the logs and the trace go")
    ap.add_argument("--base", type=Path, help="a directory holding an older `vramwatch` package, run in dry-run")
    args = ap.parse_args()
    out, base = args.out.resolve(), args.base.resolve() if args.base else None
    out.mkdir(parents=True, exist_ok=True)
    names = ["ballast", "serve", "record", "trainer", "retaker"] + (["serve-base"] if base else [])
    logs = {name: (out / f"{name}.log").open("wb") for name in names}
    procs = []
    retaker = None
    try:
        t0, wall0 = watched(out, logs, procs, base, "retake.raw.jsonl.gz")
        time.sleep(max(0.0, t0 + 20 - time.monotonic()))
        retaker = spawn([sys.executable, "-c", RETAKER], logs["retaker"])
        procs.append(retaker)
        while retaker.poll() is None and time.monotonic() < t0 + 320:
            time.sleep(1)
        time.sleep(15)  # the daemons see it gone
    finally:
        teardown = torn_down(procs, logs)

    code = retaker.poll() if retaker is not None else None
    summary: dict[str, Any] = {"wall0": wall0, "t0": t0, "teardown_at": round(teardown - t0, 1), "retaker_exit": code}
    summary.update(lives(out, t0, ("trainer", "retaker")))
    for phase in ("loaded", "gave_back", "taking_back", "taken_back"):
        got = [e for e in events(out / "retaker.log", phase) if "t" in e]
        if got:
            summary[f"retaker_{phase}_at"] = round(got[0]["t"] - t0, 1)
    summary.update(daemons_said(out, wall0))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
