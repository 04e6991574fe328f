"""The field guide's story on a real GPU, watched by `vramwatch attach`: what issue 5 asks, as JSON evidence.

    python benchmarks/flux_story.py [--out DIR] [--only guide,leak,save_now]

Each story runs under a ballast that leaves 24 GiB free (benchmarks/workloads/ballast.py), as on an RTX 4090:

- `guide`: `flux_train_network.py --train_batch_size 4 --resolution 1024,1024 --mixed_precision no
  --optimizer_type AdamW` (no --gradient_checkpointing) climbs for a dozen steps and dies of a real OOM.
  `vramwatch attach` must warn before the OOM and rank kohya's own flags, `--gradient_checkpointing` first or
  second and batch 1 with gradient accumulation among them.
- `leak`: the settings that fit (`--gradient_checkpointing --train_batch_size 1 --resolution 512,512
  --mixed_precision bf16`) plus `--leak`: attach must call it a leak (a `growth` finding and the code advice)
  before the OOM, not suggest settings.
- `save_now`: a leaking PyTorch Lightning run under `vramwatch run` (the agent's own pressure notices off)
  with the agent's save callback; attach, with a policy that may signal attached runs, asks it to save on its
  first warning; the checkpoint must be written before the OOM and load back.

Exit status 0 when every check of the stories run passes. Needs PyTorch (and Lightning for save_now) and a GPU;
not part of the CI suite. On a host without vramwatch installed, `. benchmarks/gpu_env.sh` first.
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
# attach's policy for the save-now story: the attached run may be asked to save on a warning (never killed).
SAVE_POLICY = """
[policy]
act_on_kinds = ["oom_forecast", "growth", "pressure"]
[policy.actions]
warning = ["notify", "signal"]
critical = ["notify", "signal"]
[policy.targets]
attached = true
[policy.signal]
adapters = ["agent"]
"""


def _lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def _wait_event(proc: subprocess.Popen[str], event: str, timeout: float = 180) -> dict[str, Any]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        for ev in _lines(line):
            if ev.get("event") == event:
                return ev
    raise RuntimeError(f"{proc.args} never said {event!r}")


def _ballast(env: dict[str, str]) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen([PY, str(WORK / "ballast.py"), "--leave-gib", "24"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    return proc, _wait_event(proc, "ready")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def _attach(pid: int, out: Path, name: str, env: dict[str, str], config: Path | None = None) -> subprocess.Popen[str]:
    cmd = [PY, "-m", "vramwatch", "--log-format", "json"]
    if config is not None:
        cmd += ["--config", str(config)]
    return subprocess.Popen([*cmd, "attach", str(pid), "--json"], stdout=subprocess.PIPE,
                            stderr=(out / f"{name}.attach.log").open("w"), text=True, env=env)  # fmt: skip


def _findings(events: list[dict[str, Any]], before: float | None) -> list[dict[str, Any]]:
    found = [f for e in events if e.get("event") == "tick" for f in e.get("findings", [])]
    return [f for f in found if before is None or f["t"] < before]


def _brief(f: dict[str, Any], oom: dict[str, Any] | None) -> dict[str, Any]:
    lead = oom["t"] - f["t"] if oom else None
    return {"lead_seconds": lead, "kind": f["kind"], "severity": f["severity"], "message": f["message"]}


def run_kohya(flags: list[str], out: Path, name: str, step_seconds: float) -> None:
    """A kohya-style run under a 24 GiB budget, with attach watching it; leaves its files in `out`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ballast, ready = _ballast(env)
    try:
        log = (out / f"{name}.trainer.jsonl").open("w")
        trainer = subprocess.Popen(
            [PY, str(WORK / "flux_train_network.py"), *flags, "--max_train_steps", "20000",
             "--step-seconds", str(step_seconds)],
            stdout=log, stderr=subprocess.STDOUT, text=True, env=env,
        )  # fmt: skip
        attach = _attach(trainer.pid, out, name, env)
        stdout, _ = attach.communicate(timeout=590)
        trainer.wait(60)
        log.close()
    finally:
        _stop(ballast)
    (out / f"{name}.attach.jsonl").write_text(stdout)
    run = {"flags": flags, "ballast": ready, "trainer_exit": trainer.returncode, "attach_exit": attach.returncode}
    (out / f"{name}.run.json").write_text(json.dumps(run))


def kohya_report(out: Path, name: str) -> dict[str, Any]:
    """What attach said about a kohya-style run, against the trainer's own events (same monotonic clock)."""
    run = json.loads((out / f"{name}.run.json").read_text())
    events = _lines((out / f"{name}.attach.jsonl").read_text())
    trainer_events = _lines((out / f"{name}.trainer.jsonl").read_text())
    oom = next((e for e in trainer_events if e.get("event") == "oom"), None)
    start = next((e["t"] for e in trainer_events if e.get("event") == "ready"), None)
    before = _findings(events, oom["t"] if oom else None)
    first = before[0] if before else None
    steps = [e for e in trainer_events if e.get("event") == "step"]
    return {
        "name": name,
        "flags": run["flags"],
        "ballast_free_bytes": run["ballast"].get("free_bytes"),
        "trainer_exit": run["trainer_exit"],
        "steps_done": len(steps),
        "last_step_reserved_bytes": steps[-1]["reserved_bytes"] if steps else None,
        "oom_after_ready_seconds": (oom["t"] - start) if oom and start else None,
        "oom_tried_to_allocate_bytes": oom.get("tried_to_allocate_bytes") if oom else None,
        "attach_exit": run["attach_exit"],
        "findings_before_oom": [_brief(f, oom) for f in before],
        "first_advice": first["advice"] if first else None,
        "advice_by_kind": {f["kind"]: f["advice"] for f in reversed(before) if f["advice"]},
        "summary": {k: v for k, v in events[-1].items() if k != "findings"} if events else None,
    }


def run_save_now(out: Path) -> None:
    """A leaking Lightning run under the agent, watched by attach with a policy that may ask it to save."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    config = out / "save_now.policy.toml"
    config.write_text(SAVE_POLICY)
    ballast, _ = _ballast(env)
    try:
        trainer = subprocess.Popen(
            [PY, "-m", "vramwatch.agent.runner", "--pressure-headroom", "0", "--", PY,
             str(HERE / "agent" / "lightning_save.py"), "--budget-gib", "0", "--dir", str(out / "ckpt"),
             "--leak-mib", "16", "--step-seconds", "0.1"],
            stdout=subprocess.PIPE, stderr=(out / "save_now.trainer.err").open("w"), text=True, env=env,
        )  # fmt: skip
        start = _wait_event(trainer, "start")
        attach = _attach(int(start["pid"]), out, "save_now", env, config)
        rest, _ = trainer.communicate(timeout=400)
        stdout, _ = attach.communicate(timeout=60)
    finally:
        _stop(ballast)
    (out / "save_now.trainer.jsonl").write_text(json.dumps(start) + "\n" + rest)
    (out / "save_now.attach.jsonl").write_text(stdout)


def save_now_report(out: Path) -> dict[str, Any]:
    """Did attach ask the run to save, did it save before its OOM, and does the checkpoint load?

    The trainer's events carry wall time only (Lightning's process), so lead times are on attach's clock:
    from its first action to the last tick the run was seen on the GPU (the probable-OOM finding's figure).
    """
    events = _lines((out / "save_now.attach.jsonl").read_text())
    trainer_events = _lines((out / "save_now.trainer.jsonl").read_text())
    start = next((e for e in trainer_events if e.get("event") == "start"), {})
    fit_end = next((e for e in trainer_events if e.get("event") == "fit_end"), {})
    loaded = next((e for e in trainer_events if e.get("event") == "loaded"), {})
    actions = [e for e in events if e.get("event") == "action"]
    # A post-mortem is raised once the run has left the GPU: it is in the summary, not in a tick.
    found = events[-1].get("findings", []) if events and events[-1].get("event") == "summary" else []
    last_seen = next((f["numbers"].get("last_seen_t") for f in found if f["kind"] == "probable_oom"), None)
    return {
        "name": "save_now",
        "trainer_pid": start.get("pid"),
        "oom": fit_end.get("oom"),
        "oom_at_step": fit_end.get("steps"),
        "checkpoints": loaded.get("checkpoints", []),
        "actions": actions,
        "first_action_before_oom_seconds": (last_seen - actions[0]["t"]) if actions and last_seen else None,
        "findings": [(f["kind"], f["severity"], f["message"]) for f in found],
        "summary": {k: v for k, v in events[-1].items() if k != "findings"} if events else None,
    }


def checks_for(stories: dict[str, dict[str, Any]]) -> dict[str, bool]:
    checks: dict[str, bool] = {}
    if guide := stories.get("guide"):
        ranked = guide["first_advice"] or []
        checks["guide: a real OOM"] = guide["oom_after_ready_seconds"] is not None
        checks["guide: warned before the OOM"] = bool(guide["findings_before_oom"])
        checks["guide: --gradient_checkpointing first or second"] = "--gradient_checkpointing" in " ".join(ranked[:2])
        checks["guide: batch 1 + gradient accumulation suggested"] = "--gradient_accumulation_steps" in " ".join(ranked)
        checks["guide: attach exits 3 (probable OOM)"] = guide["attach_exit"] == 3
    if leak := stories.get("leak"):
        kinds = {f["kind"] for f in leak["findings_before_oom"]}
        growth_advice = " ".join(leak["advice_by_kind"].get("growth", []))
        checks["leak: a growth (leak) finding before the OOM"] = "growth" in kinds
        checks["leak: told to look for a bug, not settings"] = "loss.item()" in growth_advice
    if save := stories.get("save_now"):
        done = [a for a in save["actions"] if a.get("adapter") == "agent" and a.get("done")]
        saved_steps = [c.get("global_step") for c in save["checkpoints"]]
        checks["save_now: attach asked the run to save (agent adapter)"] = bool(done)
        checks["save_now: a checkpoint saved before the OOM"] = bool(save["oom"]) and any(
            s is not None and s < (save["oom_at_step"] or 0) for s in saved_steps
        )
        checks["save_now: the checkpoint loads back"] = bool(save["checkpoints"]) and all(
            c.get("weights_match") for c in save["checkpoints"]
        )
    return checks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("flux-story"))
    ap.add_argument("--only", default="guide,leak,save_now", help="comma-separated stories to run")
    ap.add_argument("--report-only", action="store_true", help="rebuild the report from the files in --out")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    stories: dict[str, dict[str, Any]] = {}
    for name in wanted:
        if name == "guide":
            if not args.report_only:
                run_kohya(GUIDE, args.out, "guide", step_seconds=2.0)
            stories[name] = kohya_report(args.out, "guide")
        elif name == "leak":
            if not args.report_only:
                # ~6 MiB kept per step, a step every 0.12 s: ~50 MB/s, about 8 minutes from start to OOM.
                run_kohya(FITS_BUT_LEAKS, args.out, "leak", step_seconds=0.12)
            stories[name] = kohya_report(args.out, "leak")
        elif name == "save_now":
            if not args.report_only:
                run_save_now(args.out)
            stories[name] = save_now_report(args.out)
        else:
            ap.error(f"unknown story {name!r}")
    checks = checks_for(stories)
    report = {"stories": stories, "checks": checks, "passed": all(checks.values())}
    (args.out / f"flux_story.{'-'.join(wanted)}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
