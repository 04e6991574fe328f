"""Issue 13's proof on a real GPU: `vramwatch probe`'s verdicts against what the full runs then did.

    . benchmarks/gpu_env.sh            # on a GPU host without vramwatch installed (a lent GPU)
    python3 benchmarks/probe_gpu.py OUT [--leave-gib 24] [--only try,fits,sampling,...]

A ballast leaves `--leave-gib` GiB of the card free (a 24 GiB card's pressure on a big one, so OOMs are real).
For each scenario of `SCENARIOS` (the Flux LoRA stand-in `benchmarks/workloads/flux_train_network.py` at
kohya's flags) it runs

1. `vramwatch probe --json -- <command>`: the verdict, its exit code and how long the probe took;
2. the full run under `vramwatch run --events`: where it really ended (its last step, an OOM and in which
   phase), and what the built-in check said before that;
3. for `try` (the field guide's failing settings, `probe --try 3`): the full run again with the first change
   the probe measured as fitting, to see that it really finishes.

and then the agent's step-counting overhead: the fitting command twice per order, with the agent counting
steps and without (`VRAMWATCH_AGENT_STEPS=0`), the median step time of each from the workload's own events.
Everything lands in OUT: per scenario the probe's JSON, the full run's workload events, the check's events
and its stderr; `summary.json` and `summary.md` (the table).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: vramwatch's own dependency there
    import tomli as tomllib

HERE = Path(__file__).resolve().parent
WORKLOAD = HERE / "workloads" / "flux_train_network.py"
BALLAST = HERE / "workloads" / "ballast.py"
PY = sys.executable

# kohya's flags as the field guide's fitting settings (checkpointing, batch 1, 512 px); `--base-gib` holds the
# rest of a Flux transformer's frozen weights (the stand-in's own model is small), see workloads/README.md.
FIT = ["--gradient_checkpointing", "--train_batch_size", "1", "--resolution", "512,512"]
PROMPTS_1024 = ["--sample_prompts", str(HERE / "workloads" / "prompts-1024.txt")]
OUTPUT = ["--output_dir", "/tmp/probe-gpu-out"]  # noqa: S108 - a scratch directory on a lent GPU host
# The guide's failing settings in a kohya dataset config (batch 4 at 1024 px, which win over the command line):
# `--try` must change them in a copy, never in this file.
DATASET_CONFIG = Path("/tmp/probe-gpu-dataset.toml")  # noqa: S108 - written by this script on a lent GPU host
DATASET_TEXT = """[general]
enable_bucket = true

[[datasets]]
resolution = [1024, 1024]
batch_size = 4

  [[datasets.subsets]]
  image_dir = "/tmp/probe-gpu-images"
  num_repeats = 1
"""


def _flux(*flags: str) -> list[str]:
    return [PY, str(WORKLOAD), *OUTPUT, *flags]


# In order of what matters most if device time runs out. Each: the command, what should happen, the probe's
# step target and time limit, and the full run's time limit.
SCENARIOS: dict[str, dict[str, Any]] = {
    "try": {
        "expect": "the field guide's failing settings run out at the biggest bucket (~step 15): `probe --try 3`"
                  " measures three changes; the full run with the first that fits then finishes",
        # The guide's flags (batch 4, 1024 px, fp32, no checkpointing); 30 steps pass the ramp of buckets
        # (the largest arrives at step 17) at ~2-3 s a step, what one device call allows.
        "command": _flux("--train_batch_size", "4", "--resolution", "1024,1024", "--mixed_precision", "no",
                         "--max_train_steps", "30"),
        "probe_steps": 20, "probe_seconds": 100, "full_seconds": 150, "tries": 3,
    },
    "try_config": {
        "expect": "as `try`, with batch 4 and 1024 px in a kohya --dataset_config: `--try 3` applies the batch and"
                  " resolution changes to copies (the file untouched); the full run on such a copy finishes",
        "command": _flux("--dataset_config", str(DATASET_CONFIG), "--mixed_precision", "no",
                         "--max_train_steps", "30"),
        "probe_steps": 20, "probe_seconds": 100, "full_seconds": 150, "tries": 3, "fixed": "config",
    },
    "sampling": {
        "expect": "steps fit; the 1024 px sample after step 50 does not: probe says so, full run OOMs there",
        "command": _flux(*FIT, "--mixed_precision", "no", "--base-gib", "20", "--max_train_steps", "400",
                         "--sample_every_n_steps", "50", *PROMPTS_1024),
        "probe_steps": 40, "probe_seconds": 150, "full_seconds": 90,
    },
    "sampling_far": {
        "expect": "as `sampling`, but the sample after step 1,500 is beyond the probe's reach (1,000 steps): the"
                  " probe must say so from the sample it brings before step 1, without reaching step 1,500",
        "command": _flux(*FIT, "--mixed_precision", "no", "--base-gib", "20", "--max_train_steps", "1600",
                         "--sample_every_n_steps", "1500", *PROMPTS_1024),
        "probe_steps": 40, "probe_seconds": 150, "full_seconds": 150,
    },
    "leak": {
        "expect": "leaks 20 MiB a step: probe names the step, full run OOMs near it",
        "command": _flux(*FIT, "--mixed_precision", "bf16", "--base-gib", "14", "--max_train_steps", "3000",
                         "--leak-mib-per-step", "20"),
        "probe_steps": 60, "probe_seconds": 90, "full_seconds": 120,
    },
    "save_end": {
        "expect": "kohya's save after the last step (step 300) needs 12 GiB more than is left and no periodic save"
                  " comes before: the probe brings a save into its own steps and says the run will run out there",
        "command": _flux(*FIT, "--mixed_precision", "bf16", "--base-gib", "14", "--max_train_steps", "300",
                         "--final-save", "--save_precision", "bf16", "--save_state", "--save-extra-gib", "12"),
        "probe_steps": 40, "probe_seconds": 120, "full_seconds": 90,
    },
    "save_cost": {
        "expect": "leaks 20 MiB a step and saves every 20 steps gathering 3 GiB: a save stops fitting ~150 steps"
                  " before the steps would; `run` asks for a save while one still fits, the run OOMs in a later save",
        "command": _flux(*FIT, "--mixed_precision", "bf16", "--base-gib", "14", "--max_train_steps", "3000",
                         "--leak-mib-per-step", "20", "--save_every_n_steps", "20", "--save_precision", "bf16",
                         "--save-extra-gib", "3"),
        "probe_steps": 60, "probe_seconds": 90, "full_seconds": 120,
    },
    "fits": {
        "expect": "everything fits with margin: probe says fits, full run ends normally with no warning",
        "command": _flux(*FIT, "--mixed_precision", "bf16", "--base-gib", "14", "--max_train_steps", "200",
                         "--sample_every_n_steps", "50", *PROMPTS_1024, "--save_every_n_steps", "100",
                         "--save_precision", "bf16"),
        "probe_steps": 40, "probe_seconds": 120, "full_seconds": 120,
    },
    "save": {
        "expect": "a save after step 100 needing 12 GiB more than is left: probe names it, full run OOMs there",
        "command": _flux(*FIT, "--mixed_precision", "bf16", "--base-gib", "14", "--max_train_steps", "400",
                         "--save_every_n_steps", "100", "--save_precision", "bf16", "--save_state",
                         "--save-extra-gib", "12"),
        "probe_steps": 40, "probe_seconds": 120, "full_seconds": 90,
    },
}  # fmt: skip


def _json_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _with_keys(text: str, keys: dict[str, Any]) -> str:
    """The dataset config with the keys `--try` set in its copy (concrete paths: `datasets[0].batch_size`)."""
    import tomli_w  # vramwatch's own dependency (installed from the carried wheels on a lent GPU)

    data = tomllib.loads(text)
    for dotted, value in keys.items():
        *path, last = dotted.split(".")
        node: Any = data
        for part in path:
            name, _, index = part.partition("[")
            node = node[name] if not index else node[name][int(index.rstrip("]"))]
        node[last] = value
    return tomli_w.dumps(data)


def start_ballast(leave_gib: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [PY, str(BALLAST), "--leave-gib", str(leave_gib)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if '"ready"' in line:
            print("ballast:", line.strip(), flush=True)
            return proc
    raise SystemExit("ballast did not start")


def probe(name: str, command: list[str], out: Path, sc: dict[str, Any]) -> dict[str, Any]:
    started = time.monotonic()
    steps, max_seconds, tries = sc["probe_steps"], sc["probe_seconds"], sc.get("tries", 0)
    options = ["--json", "--steps", str(steps), "--max-time", str(max_seconds)]
    options += ["--try", str(tries)] if tries else []
    done = subprocess.run(
        [PY, "-m", "vramwatch", "probe", *options, "--", *command],
        capture_output=True,
        text=True,
        timeout=(1 + tries) * (max_seconds + 90),  # each try is a probe of its own
        check=False,
    )
    (out / f"{name}.probe.stderr").write_text(done.stderr[-200_000:])
    (out / f"{name}.probe.json").write_text(done.stdout)
    try:
        report = json.loads(done.stdout)
    except ValueError:
        report = {"error": "no JSON", "stdout": done.stdout[-2000:]}
    return {"exit_code": done.returncode, "seconds": time.monotonic() - started, "report": report}


def full_run(
    name: str, command: list[str], out: Path, timeout: float, env: dict[str, str] | None = None
) -> dict[str, Any]:
    events = out / f"{name}.check.jsonl"
    events.unlink(missing_ok=True)
    started = time.monotonic()
    with (out / f"{name}.workload.jsonl").open("w") as wl, (out / f"{name}.run.stderr").open("w") as err:
        try:
            done = subprocess.run(
                [PY, "-m", "vramwatch", "run", "--events", str(events), "--", *command],
                stdout=wl,
                stderr=err,
                timeout=timeout,
                env=env,
                check=False,
            )
            code: int | None = done.returncode
        except subprocess.TimeoutExpired:
            code = None
    workload = _json_lines(out / f"{name}.workload.jsonl")
    check = _json_lines(events)
    steps = [e for e in workload if e.get("event") == "step"]
    oom = next((e for e in workload if e.get("event") == "oom"), None)
    phases = [e for e in workload if e.get("event") == "phase"]
    last_step = max((int(e.get("step", 0)) for e in steps), default=0)
    end_t = oom["t"] if oom else (workload[-1]["t"] if workload else None)
    said = [
        e
        for e in check
        if e.get("event") == "step_forecast" and e.get("outcome") != "fits" and (end_t is None or e["t"] < end_t)
    ]
    return {
        "exit_code": code,
        "seconds": time.monotonic() - started,
        "last_step": last_step,
        "oom": None if oom is None else {k: oom.get(k) for k in ("t", "step", "phase", "tried_to_allocate_bytes")},
        "oom_phase": next((p.get("name") for p in reversed(phases) if oom and p["t"] <= oom["t"]), None),
        "first_warning": None
        if not said
        else {
            "t_before_end": (end_t - said[0]["t"]) if end_t is not None else None,
            "at_step": said[0]["step"],
            "message": said[0]["message"],
        },
        "step_forecasts": len([e for e in check if e.get("event") == "step_forecast"]),
        # The save-before-OOM notices `run` sent (or withheld), and the saves the run completed: a notice is right
        # when a save after it still completed, i.e. it came while a save fitted.
        "pressure": [
            {
                **{k: e.get(k) for k in ("t", "source", "level", "at_step", "last_save_step", "save_by_step", "sent")},
                "withheld": e.get("withheld"),
                "run_step": max((int(x["step"]) for x in steps if x["t"] <= e["t"]), default=0),
            }
            for e in check
            if e.get("event") == "pressure"
        ],
        "saves_done": [int(e["step"]) for e in workload if e.get("event") == "save"],
        # What `run` said of growth (a leak): from its step profile or its samples, and at which step of the run.
        "leak_said": [
            {
                "t": e["t"],
                "source": e.get("source"),
                "run_step": max((int(x["step"]) for x in steps if x["t"] <= e["t"]), default=0),
            }
            for e in check
            if e.get("event") == "growth"
        ],
        "step_seconds_median": statistics.median([b["t"] - a["t"] for a, b in itertools.pairwise(steps)])
        if len(steps) > 2
        else None,
    }


def overhead(out: Path, command: list[str], rounds: int) -> dict[str, Any]:
    """Median step time with and without the agent counting steps, alternating, same command."""
    times: dict[str, list[float]] = {"steps_on": [], "steps_off": []}
    for r in range(rounds):
        for label in ("steps_on", "steps_off") if r % 2 == 0 else ("steps_off", "steps_on"):
            env = dict(os.environ, VRAMWATCH_AGENT_STEPS="1" if label == "steps_on" else "0")
            result = full_run(f"overhead-{label}-{r}", command, out, timeout=300, env=env)
            if result["step_seconds_median"] is not None:
                times[label].append(result["step_seconds_median"])
    on, off = (statistics.median(times[k]) if times[k] else None for k in ("steps_on", "steps_off"))
    return {"rounds": rounds, **times, "ratio_on_off": (on / off) if on and off else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--leave-gib", type=float, default=24.0)
    ap.add_argument("--only", default="", help="comma-separated scenarios (run in this order), and/or 'overhead'")
    ap.add_argument("--overhead-rounds", type=int, default=2)
    ap.add_argument("--deadline", type=float, default=1e9, help="start nothing new after this many seconds")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    only = {s for s in args.only.split(",") if s}
    t0 = time.monotonic()
    DATASET_CONFIG.write_text(DATASET_TEXT)
    ballast = start_ballast(args.leave_gib)
    summary: dict[str, Any] = {"leave_gib": args.leave_gib, "scenarios": {}}
    try:
        order = [n for n in args.only.split(",") if n in SCENARIOS] if only else list(SCENARIOS)
        for name in order:
            sc = SCENARIOS[name]
            if time.monotonic() - t0 > args.deadline:
                print(f"== {name}: skipped, past the deadline", flush=True)
                continue
            print(f"== {name}: {sc['expect']}", flush=True)
            p = probe(name, sc["command"], args.out, sc)
            verdict = p["report"].get("message")
            print(f"   probe: exit {p['exit_code']} in {p['seconds']:.0f} s: {verdict}", flush=True)
            for t in p["report"].get("tried", []):
                print(f"   tried `{t['change']}`: exit {t['exit_code']}: {t['message']}", flush=True)
            f = full_run(name, sc["command"], args.out, sc["full_seconds"])
            print(f"   full run: exit {f['exit_code']}, last step {f['last_step']}, oom {f['oom']}, leak said "
                  f"{f['leak_said']}", flush=True)  # fmt: skip
            result = {"expect": sc["expect"], "command": sc["command"][2:], "probe": p, "full": f}
            tried = p["report"].get("tried", [])
            if sc.get("fixed") == "config":  # the proof of a config file's change: the first that fits in a copy
                fixed = next((t for t in tried if t["exit_code"] == 0 and t.get("config_file")), None)
                result["original_unchanged"] = DATASET_CONFIG.read_text() == DATASET_TEXT
                result["copies_left"] = [
                    t["config_file"]["copy"]
                    for t in tried
                    if t.get("config_file") and Path(t["config_file"]["copy"]).exists()
                ]
            else:
                fixed = next((t for t in tried if t["exit_code"] == 0), None)
            if fixed is not None:
                # The proof of `--try`: the change it measured as fitting, applied to the full run (a config
                # file's change on a copy of our own: the probe removed its copy after the test).
                env = dict(os.environ, **fixed["env"])
                argv = list(fixed["argv"])
                if fixed.get("config_file"):
                    copy = args.out / f"{name}-fixed{DATASET_CONFIG.suffix}"
                    copy.write_text(_with_keys(DATASET_TEXT, fixed["config_file"]["set"]))
                    argv = [str(copy) if a == fixed["config_file"]["copy"] else a for a in argv]
                g = full_run(f"{name}-fixed", argv, args.out, sc["full_seconds"], env=env)
                print(
                    f"   full run with `{fixed['change']}`: exit {g['exit_code']}, last step {g['last_step']}, "
                    f"oom {g['oom']}",
                    flush=True,
                )
                result["fixed"] = {"change": fixed["change"], "full": g}
            summary["scenarios"][name] = result
            (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
        if (not only or "overhead" in only) and time.monotonic() - t0 < args.deadline:
            summary["overhead"] = overhead(args.out, OVERHEAD_COMMAND, args.overhead_rounds)
            print("overhead:", summary["overhead"], flush=True)
    finally:
        if ballast.stdin:
            ballast.stdin.close()
        ballast.wait(timeout=30)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0


OVERHEAD_COMMAND = _flux(*FIT, "--mixed_precision", "bf16", "--max_train_steps", "120")

if __name__ == "__main__":
    sys.exit(main())
