"""Two healthy loads next to a running trainer on a real GPU, watched live by `vramwatch serve` (about 4 minutes):

    . benchmarks/gpu_env.sh && python3 benchmarks/detection/loads_gpu.py OUT

A ballast leaves 24 GiB (benchmarks/workloads/ballast.py). A trainer (benchmarks/workloads/trainer.py, healthy,
8 GiB) runs throughout. At t = 40 s a *slow load* arrives: 11 GiB in 256 MiB tensors at about 450 MB/s (weights
read from a slow disk), held for a minute, then a normal exit. At t = 140 s a *fast load with its first batches*
arrives: 8 GiB at 1 GiB/s, then three allocations a second apart (the optimizer's state, longer batches: 4.4 GiB),
held, then a normal exit. Neither runs out of memory.

What docs/detection.md says vramwatch does: the slow load rises for longer than the forecast's shortest window at
a rate that would fill the card within two minutes, so it is forecast critical (the documented price of warning a
fast leak a minute ahead) and the message says the run "appeared N s ago and has not held still yet"; the fast
load and its first batches raise nothing. OUT gets `serve.log` (the live daemon's JSON log: its `finding_raised`
lines are the evidence), `loads.raw.jsonl.gz` (`vramwatch record`, ballast included, for replays), `events.jsonl`
(the workloads' own events) and `summary.json` (every finding the live daemon raised).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
WORK = HERE.parent / "workloads"
VW = [sys.executable, "-m", "vramwatch"]

#: A load as a process holds it on the GPU: each entry is (seconds after start, MiB to take then); then it holds
#: what it took for `hold` seconds and exits 0.
LOADER = """
import json, sys, time, torch
steps, hold = json.loads(sys.argv[1]), float(sys.argv[2])
torch.zeros(1, device="cuda")
held, start = [], time.monotonic()
print(json.dumps({"event": "start", "t": start}), flush=True)
for at, mib in steps:
    time.sleep(max(0.0, start + at - time.monotonic()))
    held.append(torch.empty(mib << 20, dtype=torch.uint8, device="cuda"))
    torch.cuda.synchronize()
print(json.dumps({"event": "loaded", "t": time.monotonic(), "mib": sum(m for _, m in steps)}), flush=True)
time.sleep(hold)
print(json.dumps({"event": "end", "t": time.monotonic()}), flush=True)
"""

SLOW = [(0.6 * k, 256) for k in range(44)]  # 11 GiB at ~450 MB/s: ~26 s
# 8 GiB at 1 GiB/s, then the optimizer's state and longer batches a second apart: the whole life fills one
# 15-s window (tests/test_detectors_scenarios.py, `load_then_first_batches`).
FAST = [(2.0 + 0.25 * k, 256) for k in range(32)] + [(10.0, 1638), (11.0, 1781), (12.0, 1140)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(cmd: list[str], out: IO[Any], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)


def wait_for(path: Path, event: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and any(f'"event": "{event}"' in line or f'"event":"{event}"' in line
                                 for line in path.read_text().splitlines()):  # fmt: skip
            return
        time.sleep(0.5)
    raise SystemExit(f"loads_gpu.py: no {event!r} from {path.name} within {timeout:.0f} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "loads-out")
    out.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    logs = {
        name: (out / f"{name}.log").open("wb") for name in ("ballast", "serve", "record", "trainer", "slow", "fast")
    }
    try:
        procs.append(spawn([sys.executable, str(WORK / "ballast.py"), "--leave-gib", "24"], logs["ballast"]))
        wait_for(out / "ballast.log", "ready", 120)
        procs.append(spawn([*VW, "--log-format", "json", "serve", "--listen", f"127.0.0.1:{free_port()}",
                            "--interval", "1", "--require-gpu"], logs["serve"]))  # fmt: skip
        procs.append(spawn([*VW, "--log-format", "json", "record", str(out / "loads.raw.jsonl.gz"), "--interval", "1"],
                           logs["record"]))  # fmt: skip
        time.sleep(4)
        t0, wall0 = time.monotonic(), time.time()
        procs.append(spawn([sys.executable, str(WORK / "trainer.py"), "--mode", "healthy", "--budget-gib", "8",
                            "--steps", "100000", "--stop-at", str(t0 + 215)], logs["trainer"]))  # fmt: skip
        time.sleep(max(0.0, t0 + 40 - time.monotonic()))
        slow = spawn([sys.executable, "-c", LOADER, json.dumps(SLOW), "60"], logs["slow"])
        procs.append(slow)
        time.sleep(max(0.0, t0 + 140 - time.monotonic()))
        fast = spawn([sys.executable, "-c", LOADER, json.dumps(FAST), "40"], logs["fast"])
        procs.append(fast)
        time.sleep(max(0.0, t0 + 220 - time.monotonic()))
        codes = {"slow": slow.poll(), "fast": fast.poll()}
    finally:
        for proc in reversed(procs):
            stop(proc)
        for f in logs.values():
            f.close()
    raised = []
    for line in (out / "serve.log").read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") in ("finding", "finding_raised"):  # serve's own line, or a log notifier's
            raised.append(record)
    for r in raised:  # seconds after t0 (the trainer's start; the slow load at 40 s, the fast one at 140 s)
        r["at"] = round(datetime.fromisoformat(r["timestamp"]).timestamp() - wall0, 1) if "timestamp" in r else None
    summary = {"wall0": wall0, "exit_codes": codes, "findings_raised": raised}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"loads exited {codes}; the live daemon raised {len(raised)} finding(s):")
    for r in raised:
        print(f"  t0+{r['at']} s  {r.get('severity')} {r.get('kind')}: {r.get('message')}")
    return 0 if codes == {"slow": 0, "fast": 0} else 1


if __name__ == "__main__":
    sys.exit(main())
