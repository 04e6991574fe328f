"""The field guide's story on a real GPU: a kohya-style Flux LoRA run that outgrows a 24 GiB card, watched by
`vramwatch attach`. Checks what issue 5 asks and prints the evidence as JSON.

    python benchmarks/flux_story.py [--out DIR]

Runs, each with a ballast leaving 24 GiB (benchmarks/workloads/ballast.py):
1. `flux_train_network.py --train_batch_size 4 --resolution 1024,1024 --mixed_precision no --optimizer_type AdamW`
   (no --gradient_checkpointing): attach must warn before the real OOM and rank kohya's own flags, with
   `--gradient_checkpointing` among the first;
2. the same settings that fit (`--gradient_checkpointing --train_batch_size 1 --resolution 512,512
   --mixed_precision bf16`) plus `--leak`: attach must call it a leak (the code advice, not settings).
Exit status 0 when every check passes. Needs PyTorch and a GPU; not part of the CI suite.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORK = HERE / "workloads"
PY = sys.executable
GUIDE = ["--train_batch_size", "4", "--resolution", "1024,1024", "--mixed_precision", "no", "--optimizer_type", "AdamW"]
FITS_BUT_LEAKS = ["--gradient_checkpointing", "--train_batch_size", "1", "--resolution", "512,512",
                  "--mixed_precision", "bf16", "--leak"]  # fmt: skip


def _ready(proc: subprocess.Popen[str], timeout: float = 120) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if '"event":"ready"' in line.replace(" ", ""):
            return
    raise RuntimeError(f"{proc.args} never became ready")


def story(flags: list[str], out: Path, name: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ballast = subprocess.Popen([PY, str(WORK / "ballast.py"), "--leave-gib", "24"], stdout=subprocess.PIPE,
                               text=True, env=env)  # fmt: skip
    _ready(ballast)
    log = (out / f"{name}.trainer.jsonl").open("w")
    trainer = subprocess.Popen(
        [PY, str(WORK / "flux_train_network.py"), *flags, "--max_train_steps", "400", "--step-seconds", "1.0"],
        stdout=log, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    attach = subprocess.run(
        [PY, "-m", "vramwatch", "attach", str(trainer.pid), "--json"],
        capture_output=True, text=True, timeout=900, env=env, check=False,
    )  # fmt: skip
    trainer.wait(60)
    log.close()
    ballast.send_signal(signal.SIGTERM)
    ballast.wait(60)
    (out / f"{name}.attach.jsonl").write_text(attach.stdout)
    events = [json.loads(line) for line in attach.stdout.splitlines() if line.startswith("{")]
    trainer_events = [json.loads(x) for x in (out / f"{name}.trainer.jsonl").read_text().splitlines()
                      if x.startswith("{")]  # fmt: skip
    oom = next((e for e in trainer_events if e.get("event") == "oom"), None)
    findings = [f for e in events if e.get("event") == "tick" for f in e.get("findings", [])]
    before = [f for f in findings if oom is None or f["t"] < oom["t"]]
    return {
        "name": name,
        "flags": flags,
        "trainer_exit": trainer.returncode,
        "oom_t": oom["t"] if oom else None,
        "attach_exit": attach.returncode,
        "findings_before_oom": [(f["t"], f["kind"], f["severity"]) for f in before],
        "first_advice": next((f["advice"] for f in before if f["advice"]), None),
        "summary": events[-1] if events else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("flux-story"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    guide = story(GUIDE, args.out, "guide")
    leak = story(FITS_BUT_LEAKS, args.out, "leak")
    advice = " ".join(guide["first_advice"] or [])
    checks = {
        "guide: warned before the OOM": bool(guide["findings_before_oom"]) and guide["oom_t"] is not None,
        "guide: kohya flags ranked, checkpointing first or second": "--gradient_checkpointing"
        in " ".join((guide["first_advice"] or [])[:2]),
        "guide: batch 1 + accumulation suggested": "--gradient_accumulation_steps" in advice,
        "leak: told it is a leak": any("loss.item()" in a or "leak" in a for a in (leak["first_advice"] or [])),
    }
    print(json.dumps({"guide": guide, "leak": leak, "checks": checks}, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
