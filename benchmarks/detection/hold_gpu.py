"""A policy that may end runs, next to a slow load and then a slow leak, on a real GPU (about 6 minutes):

    . benchmarks/gpu_env.sh && python3 benchmarks/detection/hold_gpu.py OUT [--base PKGDIR] [--no-leak]

A ballast leaves 24 GiB (benchmarks/workloads/ballast.py). A healthy trainer (benchmarks/workloads/trainer.py,
8 GiB) runs throughout. At t = 30 s a *slow load* arrives (loads_gpu.py's: 11 GiB at about 450 MB/s, held 40 s,
then a normal exit). 3 s after the load has gone (t = 100 s or so) a *leaker* arrives (trainer.py `fast_leak`),
its rate set from the free memory then so that it runs out about 240 s after it started: critical (full within two
minutes) from about 120 s, no longer young at 180 s.

`vramwatch serve` runs live with a policy that signals on critical findings through an adapter that saves and then
ends the run (`transformers_jit`: SIGTERM, which trainer.py catches, ending cleanly; `allow_stop = true`), for the
processes matching `trainer\\.py`. What docs/actions.md says it does: the slow load is forecast critical but
*tentative* (it has not held still since it appeared), and a tentative finding ends no run: the trainer is not
signalled. The leak's forecast is tentative as well until the leaker is three minutes old, then raised again,
firm, and every targeted run on the card is asked to save and stop (a GPU-level forecast asks each), before the
OOM.

`--no-leak` stops after the slow load (about 2.5 minutes): the load's part alone. `--leak-only` starts the leaker at
t = 33 s with no slow load (about 4.5 minutes); `--oom-after S` sizes the leak to run out S seconds after it
started (240 by default); `--load-hold S` holds the slow load S seconds once loaded (40 by default).

With `--base PKGDIR` (a directory holding an older `vramwatch` package), a second daemon of that tree watches the
same card with the same policy in `dry_run`: its `action` lines say whom it would have signalled, and when.

OUT gets `serve.log` (and `serve-base.log`), each run's stdout (`trainer.log`, `slow.log`, `leaker.log`: their
`exit` events say how and when each ended), `hold.raw.jsonl.gz` (`vramwatch record`, for replays) and
`summary.json`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from loads_gpu import LOADER, SLOW, VW, WORK, free_port, spawn, stop, wait_for

POLICY = """
[policy]
dry_run = {dry_run}
[policy.actions]
critical = ["notify", "signal"]
[policy.targets]
cmdline = ['trainer\\.py']
[policy.signal]
allow_stop = true
match = {{ 'trainer\\.py' = "transformers_jit" }}
"""

LEAK_OOM_AFTER_S = 240.0
LEAK_BUDGET_GIB = 5.0


def free_bytes() -> int:
    import pynvml  # only on the GPU host: the script is not part of the package

    pynvml.nvmlInit()
    try:
        return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).free)
    finally:
        pynvml.nvmlShutdown()


def events(path: Path, name: str) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines() if path.exists() else ():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == name:
            out.append(record)
    return out


def watched(
    out: Path,
    logs: dict[str, IO[bytes]],
    procs: list[subprocess.Popen[bytes]],
    base: Path | None,
    trace: str,
    *,
    acting: bool = True,
) -> tuple[float, float]:
    """The card and its watchers: a ballast leaving 24 GiB, `serve` under POLICY (acting, unless not `acting`; and
    `serve-base`, the `base` tree in dry-run), `record` into OUT/`trace`, then a healthy trainer (8 GiB) for 400 s.
    Appends each process to `procs`; returns (t0, wall0), the monotonic and wall time just before the trainer
    started."""
    procs.append(spawn([sys.executable, str(WORK / "ballast.py"), "--leave-gib", "24"], logs["ballast"]))
    wait_for(out / "ballast.log", "ready", 120)
    start_daemons(out, logs, procs, base, acting=acting)
    procs.append(spawn([*VW, "--log-format", "json", "record", str(out / trace), "--interval", "1", "--force"],
                       logs["record"]))  # fmt: skip
    time.sleep(4)
    t0, wall0 = time.monotonic(), time.time()
    trainer = [sys.executable, str(WORK / "trainer.py"), "--mode", "healthy", "--budget-gib", "8", "--steps", "100000"]
    procs.append(spawn([*trainer, "--stop-at", str(t0 + 400)], logs["trainer"]))
    return t0, wall0


def start_daemons(
    out: Path,
    logs: dict[str, IO[bytes]],
    procs: list[subprocess.Popen[bytes]],
    base: Path | None,
    *,
    acting: bool = True,
    sockets: dict[str, str] | None = None,
) -> None:
    """`serve` under POLICY (acting, unless not `acting`), and with `base` that tree's `serve` beside it in dry-run
    (`serve-base`), each with its config in OUT (`serve.toml`, `serve-base.toml`) and its log in `logs`; appended to
    `procs`. `sockets`: each daemon's agent socket by name (`VRAMWATCH_SOCKET`), for trainers run under the agent;
    this tree's daemon then records its ticks to OUT/serve.trace.jsonl.gz, with the agents' figures."""
    daemons = [("serve", None, "false" if acting else "true")] + ([("serve-base", base, "true")] if base else [])
    for name, pkg, dry in daemons:
        config = out / f"{name}.toml"
        text = POLICY.format(dry_run=dry)
        env = dict(os.environ)
        if sockets is not None:
            env["VRAMWATCH_SOCKET"] = sockets[name]
            if pkg is None:  # this tree's daemon records its ticks, the agents' figures with them (`record` has none)
                text += f'[daemon]\nrecord = "{out / (name + ".trace.jsonl.gz")}"\n'
        config.write_text(text)
        if pkg is not None:
            env["PYTHONPATH"] = f"{pkg}:{env.get('PYTHONPATH', '')}"
        cmd = [*VW, "--log-format", "json", "--config", str(config), "serve",
               "--listen", f"127.0.0.1:{free_port()}", "--interval", "1", "--require-gpu"]  # fmt: skip
        procs.append(spawn(cmd, logs[name], env=env))


def torn_down(procs: list[subprocess.Popen[bytes]], logs: dict[str, IO[bytes]]) -> float:
    """Stop every process (the newest first) and close the logs; returns when the harness began its own SIGTERMs
    (a trainer's `exit` event after it says "sigterm")."""
    teardown = time.monotonic()
    for proc in reversed(procs):
        stop(proc)
    for f in logs.values():
        f.close()
    return teardown


def main() -> int:
    args = sys.argv[1:]
    base = None
    leak = "--no-leak" not in args
    load = "--leak-only" not in args
    args = [a for a in args if a not in {"--no-leak", "--leak-only"}]
    oom_after, held = LEAK_OOM_AFTER_S, 40.0
    for flag in ("--oom-after", "--load-hold"):
        if flag in args:
            i = args.index(flag)
            if flag == "--oom-after":
                oom_after = float(args[i + 1])
            else:
                held = float(args[i + 1])
            del args[i : i + 2]
    if "--base" in args:
        i = args.index("--base")
        base = Path(args[i + 1]).resolve()
        del args[i : i + 2]
    out = Path(args[0] if args else "hold-out").resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = ["ballast", "serve", "record", "trainer", "slow", "leaker"] + (["serve-base"] if base else [])
    logs = {name: (out / f"{name}.log").open("wb") for name in names}
    procs = []
    sizing: dict[str, float] = {}
    leaker = None
    try:
        t0, wall0 = watched(out, logs, procs, base, "hold.raw.jsonl.gz")
        time.sleep(max(0.0, t0 + 30 - time.monotonic()))
        # --leak-only: no slow load (a stand-in that has already exited, so the leak is sized at once).
        slow = spawn([sys.executable, "-c", LOADER, json.dumps(SLOW), str(held)] if load else ["true"], logs["slow"])
        procs.append(slow)
        if not leak:
            while slow.poll() is None and time.monotonic() < t0 + 150:
                time.sleep(1)
            time.sleep(15)  # the daemons see it gone
        else:
            # Sized once the slow load has gone (it ends near t0 + 100, later on a slower host): sized while it still
            # held its 11 GiB, the leaker would be slow enough to outlive the scenario.
            while slow.poll() is None and time.monotonic() < t0 + 150:
                time.sleep(1)
            time.sleep(3.0)
            free = free_bytes()
            # What the leaker holds before it leaks: its context and about 63 % of its budget (trainer.py, healthy).
            room = free - (0.63 * LEAK_BUDGET_GIB + 0.6) * (1 << 30)
            rate = round(max(20.0, room / 1e6 / (oom_after - 10)), 1)
            sizing = {"free_bytes": free, "room_bytes": room, "leak_mb_per_s": rate}
            leak_at = time.monotonic()
            leaker = spawn([sys.executable, str(WORK / "trainer.py"), "--mode", "fast_leak",
                            "--budget-gib", str(LEAK_BUDGET_GIB), "--step-seconds", "0.25", "--steps", "100000",
                            "--leak-mb-per-s", str(rate)], logs["leaker"])  # fmt: skip
            procs.append(leaker)
            end = leak_at + oom_after + 50
            while leaker.poll() is None and time.monotonic() < end:
                time.sleep(1)
            time.sleep(10)  # the daemons see it gone
    finally:
        teardown = torn_down(procs, logs)

    codes = {"slow": slow.poll(), "leaker": leaker.poll() if leaker is not None else None}
    summary: dict[str, Any] = {
        "wall0": wall0, "t0": t0, "teardown_at": round(teardown - t0, 1), "exit_codes": codes, "leak_sizing": sizing,
    }  # fmt: skip
    summary.update(lives(out, t0, ("trainer", "slow", "leaker")))
    summary["leaker_oom"] = bool(events(out / "leaker.log", "oom"))
    summary.update(daemons_said(out, wall0))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0 if codes["slow"] == 0 else 1


def lives(out: Path, t0: float, names: tuple[str, ...]) -> dict[str, Any]:
    """When each run's log says it started and ended (its `start`/`ready` and `exit`/`end` events), from t0."""
    summary: dict[str, Any] = {}
    for name in names:
        got = [e for e in (events(out / f"{name}.log", "start") + events(out / f"{name}.log", "ready")) if "t" in e]
        if got:
            summary[f"{name}_started_at"] = round(got[0]["t"] - t0, 1)
        ended = [e for e in events(out / f"{name}.log", "exit") + events(out / f"{name}.log", "end") if "t" in e]
        if ended:
            summary[f"{name}_ended"] = {"at": round(ended[0]["t"] - t0, 1), "reason": ended[0].get("reason")}
    return summary


def daemons_said(out: Path, wall0: float) -> dict[str, Any]:
    """What each daemon (`serve`, `serve-base`) raised and decided to signal, in seconds from wall0."""
    summary: dict[str, Any] = {}
    for name in ("serve", "serve-base"):
        path = out / f"{name}.log"
        if not path.exists():
            continue
        raised, actions = [], []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            at = record.get("timestamp")
            when = round(_wall(at) - wall0, 1) if isinstance(at, str) else None
            if record.get("event") == "finding":
                raised.append({"at": when, "severity": record.get("severity"), "kind": record.get("kind"),
                               "tentative": record.get("tentative"), "message": record.get("message")})  # fmt: skip
            elif record.get("event") == "action" and record.get("action") == "signal":
                actions.append({"at": when, "done": record.get("done"), "dry_run": record.get("dry_run"),
                                "pid": record.get("pid"), "reason": record.get("reason")})  # fmt: skip
        summary[name] = {"findings_raised": raised, "signal_decisions": actions}
    return summary


def _wall(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp).timestamp()


if __name__ == "__main__":
    sys.exit(main())
