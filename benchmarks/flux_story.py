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
import contextlib
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


def _read(path: Path) -> str:
    """A run's file, or its gzipped copy (the evidence kept in benchmarks/results/ is compressed)."""
    if path.exists():
        return path.read_text()
    return gzip.decompress(path.with_name(path.name + ".gz").read_bytes()).decode()


def _wait_event(path: Path, proc: subprocess.Popen[bytes], event: str, timeout: float = 180) -> dict[str, Any]:
    """The first `event` a process writes to its JSON-lines file (every process writes to a file, not a pipe:
    nothing buffered is lost, and nothing blocks past `timeout`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ev in _lines(path.read_text() if path.exists() else ""):
            if ev.get("event") == event:
                return ev
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise RuntimeError(f"{proc.args} never said {event!r} (see {path})")


def _spawn(
    stack: contextlib.ExitStack, argv: list[str], out: Path, stderr: Path | None = None, stdin: int | None = None
) -> subprocess.Popen[bytes]:
    """Start `argv` with stdout to `out` (stderr too, unless given its own file); stopped when `stack` closes."""
    stdout = stack.enter_context(out.open("wb"))
    err = stack.enter_context(stderr.open("wb")) if stderr else subprocess.STDOUT
    proc = subprocess.Popen(argv, stdout=stdout, stderr=err, stdin=stdin,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    stack.callback(_stop, proc)
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _ballast(stack: contextlib.ExitStack, out: Path) -> dict[str, Any]:
    """A ballast leaving 24 GiB, held until `stack` closes; its `ready` event."""
    path = out / "ballast.jsonl"
    proc = _spawn(stack, [PY, str(WORK / "ballast.py"), "--leave-gib", "24"], path, stdin=subprocess.PIPE)
    return _wait_event(path, proc, "ready")


def _attach(
    stack: contextlib.ExitStack, pid: int, out: Path, name: str, config: Path | None = None
) -> subprocess.Popen[bytes]:
    cmd = [PY, "-m", "vramwatch", "--log-format", "json"]
    if config is not None:
        cmd += ["--config", str(config)]
    return _spawn(stack, [*cmd, "attach", str(pid), "--json"], out / f"{name}.attach.jsonl",
                  stderr=out / f"{name}.attach.log")  # fmt: skip


def _findings(events: list[dict[str, Any]], before: float | None) -> list[dict[str, Any]]:
    found = [f for e in events if e.get("event") == "tick" for f in e.get("findings", [])]
    return [f for f in found if before is None or f["t"] < before]


def _brief(f: dict[str, Any], oom: dict[str, Any] | None) -> dict[str, Any]:
    lead = oom["t"] - f["t"] if oom else None
    return {"lead_seconds": lead, "kind": f["kind"], "severity": f["severity"], "message": f["message"]}


def run_kohya(flags: list[str], out: Path, name: str, step_seconds: float) -> None:
    """A kohya-style run under a 24 GiB budget, with attach watching it; leaves its files in `out`."""
    with contextlib.ExitStack() as stack:
        ready = _ballast(stack, out)
        trainer = _spawn(stack, [PY, str(WORK / "flux_train_network.py"), *flags, "--max_train_steps", "20000",
                                 "--step-seconds", str(step_seconds)], out / f"{name}.trainer.jsonl")  # fmt: skip
        attach = _attach(stack, trainer.pid, out, name)
        attach.wait(590)
        trainer.wait(60)
    run = {"flags": flags, "ballast": ready, "trainer_exit": trainer.returncode, "attach_exit": attach.returncode}
    (out / f"{name}.run.json").write_text(json.dumps(run))


def kohya_report(out: Path, name: str) -> dict[str, Any]:
    """What attach said about a kohya-style run, against the trainer's own events (same monotonic clock)."""
    run = json.loads(_read(out / f"{name}.run.json"))
    events = _lines(_read(out / f"{name}.attach.jsonl"))
    trainer_events = _lines(_read(out / f"{name}.trainer.jsonl"))
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
        "post_mortem": [
            {
                "after_oom_seconds": f["t"] - oom["t"] if oom else None,
                "kind": f["kind"],
                "message": f["message"],
                "advice": f["advice"],
            }
            for f in (events[-1].get("findings", []) if events and events[-1].get("event") == "summary" else [])
            if f["kind"] in {"probable_oom", "oom"}
        ],
        "summary": {k: v for k, v in events[-1].items() if k != "findings"} if events else None,
    }


def run_save_now(out: Path) -> None:
    """A leaking Lightning run under the agent, watched by attach with a policy that may ask it to save."""
    config = out / "save_now.policy.toml"
    config.write_text(SAVE_POLICY)
    with contextlib.ExitStack() as stack:
        _ballast(stack, out)
        path = out / "save_now.trainer.jsonl"
        trainer = _spawn(stack, [PY, "-m", "vramwatch.agenthost.runner", "--pressure-headroom", "0", "--", PY,
                                 str(HERE / "agent" / "lightning_save.py"), "--budget-gib", "0",
                                 "--dir", str(out / "ckpt"), "--leak-mib", "16", "--step-seconds", "0.1"],
                         path, stderr=out / "save_now.trainer.err")  # fmt: skip
        start = _wait_event(path, trainer, "start")
        attach = _attach(stack, int(start["pid"]), out, "save_now", config)
        trainer.wait(400)
        attach.wait(60)


def save_now_report(out: Path) -> dict[str, Any]:
    """Did attach ask the run to save, did it save before its OOM, and does the checkpoint load?

    The trainer's events carry wall time only (Lightning's process), so lead times are on attach's clock:
    from its first action to the last tick the run was seen on the GPU (the probable-OOM finding's figure).
    """
    events = _lines(_read(out / "save_now.attach.jsonl"))
    trainer_events = _lines(_read(out / "save_now.trainer.jsonl"))
    start = next((e for e in trainer_events if e.get("event") == "start"), {})
    fit_end = next((e for e in trainer_events if e.get("event") == "fit_end"), {})
    loaded = next((e for e in trainer_events if e.get("event") == "loaded"), {})
    actions = [e for e in events if e.get("event") == "action"]
    done = [a for a in actions if a.get("done")]
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
        "first_action_before_oom_seconds": (last_seen - done[0]["t"]) if done and last_seen else None,
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
