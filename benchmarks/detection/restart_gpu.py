"""A daemon restart on a busy card, on a real GPU (about 5 minutes): old servers that load just after vramwatch starts.

    . benchmarks/gpu_env.sh && python3 benchmarks/detection/restart_gpu.py OUT [--scenario bare|unseen] [--base PKGDIR]

A ballast leaves 24 GiB (benchmarks/workloads/ballast.py). At t0 three processes start, all long before the
daemon: a healthy trainer (benchmarks/workloads/trainer.py, 5 GiB budget) that trains throughout, and two model
servers (benchmarks/workloads/phases.py) that sit at their bare CUDA context. `vramwatch serve` starts about 190 s
later (a daemon restarted, or installed, while they run) with the policy of hold_gpu.py: critical findings signal
`trainer.py` through an adapter that saves and then ends the run. 6 s after the daemon starts, server A loads 5 GiB
over 20 s; 10 s after, server B loads 9 GiB over 40 s. Both hold what they loaded for a while, then exit normally.
Nobody runs out of memory. With `--scenario unseen` the daemon starts where it cannot see what matters: A loaded
8 GiB at t0, gives 6 GiB back 30 s before the restart and takes them back over 40 s from 20 s after it; B began
to load 9 GiB over 45 s 15 s before the restart. A run vramwatch did not see start is judged as a young one for
six minutes: each climb is tentative at most.

What docs/detection.md says vramwatch does: both servers are old by their start times, but the daemon first saw
them at their bare context, so each climb is a first load, as a young run's is. A's 20-s climb is shorter than
`forecast_load_seconds` and raises nothing. B's 40-s climb, at a rate that would fill the card within two
minutes, is forecast critical, *tentative* ("it held only its CUDA context ... and began to climb"), and a
tentative finding ends no run: the trainer is not signalled. Before this was fixed, a climb that began within
`settle_seconds` of the daemon's start was judged as an old run leaking: firm, and the healthy trainer would have
been asked to save and stop.

`--base PKGDIR` (a directory holding an older `vramwatch` package) runs that tree's `serve` next to it, in dry-run,
started at the same moment: its `action` lines say whom it would have signalled. `vramwatch record` runs from
before t0 (OUT/restart.raw.jsonl.gz), so a replay can start where the daemon did (tests/test_live_h100_restart.py).
OUT also gets each process's log and summary.json (when each ran, what each daemon raised and decided).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import IO

from hold_gpu import daemons_said, events, lives, start_daemons, torn_down
from loads_gpu import VW, WORK, spawn, wait_for

#: How long the processes run before the daemon starts: older than `forecast_warmup_seconds` (180 s) by then.
OLD_S = 190.0
#: Each server's script, `{at}` standing for the daemon's start on the host's clock (CLOCK_MONOTONIC).
SCENARIOS = {
    # Both at their bare context when the daemon starts: 6 s later A loads 5 GiB over 20 s, 10 s later B 9 over 40 s.
    "bare": {"A": "until {at+6}; load 5 20; hold 60", "B": "until {at+10}; load 9 40; hold 40"},
    # What the daemon did not see: A loaded 8 GiB long before, gave 6 back 30 s before the restart and takes them back
    # over 40 s from 20 s after it; B began to load 9 GiB over 45 s 15 s before the restart (mid-load at the start).
    "unseen": {
        "A": "load 8 3; until {at-30}; free 6; until {at+20}; load 6 40; hold 30",
        "B": "until {at-15}; load 9 45; hold 40",
    },
}


def ready_at(path: Path, timeout: float) -> float:
    """The monotonic time of a workload's `ready` event (CLOCK_MONOTONIC is the host's, shared by processes)."""
    wait_for(path, "ready", timeout)
    return float(events(path, "ready")[0]["t"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", type=Path, default=Path("restart-out"), help="where the logs and results go")
    ap.add_argument("--scenario", choices=sorted(SCENARIOS), default="bare")
    ap.add_argument("--base", type=Path, help="a directory holding an older vramwatch package, run beside in dry-run")
    args = ap.parse_args()
    scenario, out = args.scenario, args.out.resolve()
    base = None if args.base is None else args.base.resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = ["ballast", "record", "serve", "trainer", "A", "B"] + (["serve-base"] if base else [])
    logs: dict[str, IO[bytes]] = {name: (out / f"{name}.log").open("wb") for name in names}
    procs = []
    started, codes, summary_ready = None, {}, {}
    servers = {}
    try:
        procs.append(spawn([sys.executable, str(WORK / "ballast.py"), "--leave-gib", "24"], logs["ballast"]))
        wait_for(out / "ballast.log", "ready", 120)
        procs.append(spawn([*VW, "--log-format", "json", "record", str(out / "restart.raw.jsonl.gz"), "--interval",
                            "1", "--force"], logs["record"]))  # fmt: skip
        time.sleep(4)
        t0, wall0 = time.monotonic(), time.time()
        daemon_at = t0 + OLD_S
        trainer = [sys.executable, str(WORK / "trainer.py"), "--mode", "healthy", "--budget-gib", "5", "--steps",
                   "100000", "--stop-at", str(daemon_at + 110)]  # fmt: skip
        procs.append(spawn(trainer, logs["trainer"]))
        # Each server's script is timed from the daemon's start (`until`, on the host's clock).
        for name, script in SCENARIOS[scenario].items():
            timed = re.sub(r"\{at([+-][0-9.]+)\}", lambda m: f"{daemon_at + float(m.group(1)):.3f}", script)
            servers[name] = spawn([sys.executable, str(WORK / "phases.py"), "--script", timed], logs[name])
        procs += servers.values()
        summary_ready = {name: round(ready_at(out / f"{name}.log", 120) - t0, 1) for name in servers}
        time.sleep(max(0.0, daemon_at - time.monotonic()))
        started = time.monotonic()
        start_daemons(out, logs, procs, base)
        end = started + 110
        while time.monotonic() < end and any(p.poll() is None for p in servers.values()):
            time.sleep(1)
        time.sleep(10)  # the daemons see them gone
        codes = {name: proc.poll() for name, proc in servers.items()}
    finally:
        torn_down(procs, logs)
    summary = {
        "t0": t0,
        "wall0": wall0,
        "scenario": scenario,
        "daemon_started_at": None if started is None else round(started - t0, 1),
        "ready_at": summary_ready,
        "exit_codes": codes,
    }
    summary.update(lives(out, t0, ("trainer", "A", "B")))
    for name in servers:
        began = [e for e in events(out / f"{name}.log", "phase") if e.get("phase") in {"load", "free"}]
        done = [e for e in events(out / f"{name}.log", "done") if e.get("phase") in {"load", "free"}]
        summary[f"{name}_phases"] = [
            {"phase": b["phase"], "args": b.get("args"), "from": round(b["t"] - t0, 1), "to": round(d["t"] - t0, 1)}
            for b, d in zip(began, done, strict=False)
        ]
    summary.update(daemons_said(out, wall0))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0 if all(code == 0 for code in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
