"""Record real PyTorch runs on a GPU, as on a 24 GiB card, with their ground truth, for `score.py`.

    python benchmarks/detection/record_real.py OUTDIR healthy fast_leak spike_oom ...

For each scenario: a ballast process (benchmarks/workloads/ballast.py) takes all but 24 GiB of the card, so
an 80 or 141 GiB card runs out where an RTX 4090 would; `vramwatch record` samples at 1 Hz; the workload
(benchmarks/workloads/trainer.py, contender.py) prints JSON events with CLOCK_MONOTONIC times, the same clock
as the trace's `t`, so the real OOM time goes straight into the truth file.

The ballast is then taken out of the trace ("rebased"): its pid is removed and its bytes subtracted from the
card's used and total memory, so the trace reads as a 24 GiB card (detector thresholds in percent of the card
then mean what they mean on a 4090). The ballast is constant by construction; rebasing moves no other figure.
Outputs per scenario: `<name>.jsonl.gz` (rebased trace), `<name>.truth.json`, `<name>.events.jsonl`.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORK = HERE.parent / "workloads"
PY = sys.executable
BUDGET_GIB = 24

# name -> (trainer arguments, contender arguments or None, truth flags)
SCENARIOS: dict[str, tuple[list[str], list[str] | None, dict[str, Any]]] = {
    "healthy": (["--mode", "healthy", "--steps", "300", "--step-seconds", "0.5"], None,
                {"healthy": True, "gradual": False}),
    # A small model leaking ~150 MB/s from early on: about two minutes from start to OOM.
    "fast_leak": (["--mode", "fast_leak", "--steps", "5000", "--step-seconds", "0.25", "--budget-gib", "8"], None,
                  {"healthy": False, "gradual": True}),
    # The same leak on a model that already fills 60% of the card: barely a minute of leak before the OOM.
    "fast_leak_late": (["--mode", "fast_leak", "--steps", "5000", "--step-seconds", "0.25"], None,
                       {"healthy": False, "gradual": True}),
    "spike_oom": (["--mode", "spike_oom", "--steps", "50", "--step-seconds", "0.5"], None,
                  {"healthy": False, "gradual": False}),
    # Keeps each sampling phase's images: a step every 10 s on a model scaled for 16 GiB.
    "stepwise_leak": (["--mode", "stepwise_leak", "--steps", "5000", "--step-seconds", "0.25", "--sample-every", "40",
                       "--val-every", "1000000", "--budget-gib", "16"], None, {"healthy": False, "gradual": True}),
    # A healthy run sized for 34 GiB on the 24 GiB card: warm-up steps take it to ~90% of the card, then flat.
    "plateau": (["--mode", "healthy", "--steps", "520", "--step-seconds", "0.25", "--budget-gib", "34"], None,
                {"healthy": True, "gradual": False}),
    "contention": (["--mode", "healthy", "--steps", "480", "--step-seconds", "0.25"], ["--gib", "7.5", "--after", "45"],
                   {"healthy": False, "gradual": False}),
}  # fmt: skip


def _events(proc: subprocess.Popen[str], sink: list[dict[str, Any]], name: str) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue
        ev["source"] = name
        sink.append(ev)


def _wait_event(proc: subprocess.Popen[str], event: str, timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue
        if ev.get("event") == event:
            return dict(ev)
    raise RuntimeError(f"no {event!r} event from {proc.args}")


def rebase(raw: Path, out: Path, ballast_pid: int) -> dict[str, Any]:
    """Drop the ballast from every tick and shrink the card by what it held (see the module docstring)."""
    held_max = 0
    with gzip.open(raw, "rt") as src, gzip.open(out, "wt") as dst:
        header = json.loads(src.readline())
        header["rebased"] = {"removed_pid": ballast_pid, "why": "ballast making the card a 24 GiB one"}
        ballast_bytes = None
        lines = []
        for line in src:
            tick = json.loads(line)
            for p in tick.get("processes", []):
                if p["pid"] == ballast_pid and p.get("used_bytes") is not None:
                    ballast_bytes = p["used_bytes"]
            lines.append(tick)
        if ballast_bytes is None:
            raise RuntimeError("the ballast never appeared in the trace")
        held_max = ballast_bytes
        for g in header.get("gpus", []):
            g["total_bytes"] -= held_max
        dst.write(json.dumps(header, separators=(",", ":")) + "\n")
        for tick in lines:
            tick["processes"] = [p for p in tick.get("processes", []) if p["pid"] != ballast_pid]
            for g in tick["gpus"]:
                for key in ("total_bytes", "used_bytes"):
                    if g.get(key) is not None:
                        g[key] -= held_max
            dst.write(json.dumps(tick, separators=(",", ":")) + "\n")
    return {"ballast_bytes": held_max}


def record(name: str, outdir: Path) -> None:
    trainer_args, contender_args, flags = SCENARIOS[name]
    events: list[dict[str, Any]] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ballast = subprocess.Popen(
        [PY, str(WORK / "ballast.py"), "--leave-gib", str(BUDGET_GIB)], stdout=subprocess.PIPE, text=True, env=env
    )
    ready = _wait_event(ballast, "ready", 120)
    raw = outdir / f"{name}.raw.jsonl.gz"
    rec = subprocess.Popen([PY, "-m", "vramwatch", "--log-format", "json", "record", str(raw), "--interval", "1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)  # fmt: skip
    time.sleep(4)  # pre-roll: the ballast alone
    trainer = subprocess.Popen(
        [PY, str(WORK / "trainer.py"), *trainer_args], stdout=subprocess.PIPE, text=True, env=env
    )
    contender = None
    if contender_args:
        contender = subprocess.Popen(
            [PY, str(WORK / "contender.py"), *contender_args], stdout=subprocess.PIPE, text=True, env=env
        )
    import threading

    readers = [threading.Thread(target=_events, args=(trainer, events, "trainer"))]
    if contender:
        readers.append(threading.Thread(target=_events, args=(contender, events, "contender")))
    for r in readers:
        r.start()
    code = trainer.wait(600)
    time.sleep(6)  # post-roll: the crash or exit must be visible for a few ticks
    if contender:
        contender.send_signal(signal.SIGTERM)
        contender.wait(30)
    for r in readers:
        r.join(10)
    rec.send_signal(signal.SIGINT)
    rec.wait(30)
    ballast.send_signal(signal.SIGTERM)
    ballast.wait(60)
    base = rebase(raw, outdir / f"{name}.jsonl.gz", ballast.pid)
    raw.unlink()
    oom = next((e for e in events if e.get("event") == "oom"), None)
    contention = next((e for e in events if e.get("source") == "contender" and e.get("event") == "allocated"), None)
    truth = {
        "scenario": name,
        "source": "real: "
        + subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        + f", ballast leaving {BUDGET_GIB} GiB, rebased",
        "oom_t": oom["t"] if oom else None,
        "oom_pid": oom["pid"] if oom else None,
        "trainer_pid": trainer.pid,
        "trainer_exit": code,
        "contention_t": contention["t"] if contention else None,
        "contender_pid": contender.pid if contender else None,
        "ballast_free_bytes": ready.get("free_bytes"),
        **base,
        **flags,
    }
    if oom is None and not flags["healthy"] and name != "contention":
        truth["note"] = "expected an OOM and saw none"
    (outdir / f"{name}.truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    with (outdir / f"{name}.events.jsonl").open("w") as f:
        for ev in events:
            f.write(json.dumps(ev) + "\n")
    print(json.dumps({"scenario": name, "oom_t": truth["oom_t"], "exit": code}), flush=True)


def main() -> None:
    outdir = Path(sys.argv[1])
    outdir.mkdir(parents=True, exist_ok=True)
    for name in sys.argv[2:] or list(SCENARIOS):
        record(name, outdir)


if __name__ == "__main__":
    main()
