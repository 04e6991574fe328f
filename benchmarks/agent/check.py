"""Read the raw outputs of run_all.sh and decide, proof by proof, whether the agent did what it claims.

    python benchmarks/agent/check.py RAW_DIR > results.json

Each proof NAME left NAME.rc (exit status), NAME.out.jsonl (its own JSON events on stdout) and
NAME.events.jsonl (the runner's built-in check: findings, growth, pressure, oom). Times compared are
wall-clock seconds stamped by both sides on the same host.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            out.append(item)
    return out


def rc(raw: Path, name: str) -> int | None:
    path = raw / f"{name}.rc"
    return int(path.read_text().strip()) if path.exists() else None


def first(events: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    return next((e for e in events if all(e.get(k) == v for k, v in match.items())), None)


def oom_wall(own: list[dict[str, Any]], runner: list[dict[str, Any]]) -> float | None:
    walls = [e["wall"] for e in own + runner if e.get("event") == "oom" and "wall" in e]
    return min(walls) if walls else None


def fragment(raw: Path, name: str, expect_oom: bool) -> dict[str, Any]:
    own, runner = lines(raw / f"{name}.out.jsonl"), lines(raw / f"{name}.events.jsonl")
    finding = first(runner, event="finding", kind="fragmentation")
    oom = oom_wall(own, runner)
    held = first(own, event="held")
    result: dict[str, Any] = {
        "rc": rc(raw, name),
        "finding": finding,
        "oom_wall": oom,
        "held_state": held,
        "completed": first(own, event="completed"),
        "post_mortem": first(runner, event="oom"),
    }
    if expect_oom:
        result["pass"] = bool(result["rc"] == 3 and finding and oom and finding["wall"] < oom)
    else:
        result["pass"] = bool(result["rc"] == 0 and result["completed"] and oom is None)
    return result


def leak(raw: Path) -> dict[str, Any]:
    own, runner = lines(raw / "leak.out.jsonl"), lines(raw / "leak.events.jsonl")
    growth = first(runner, event="growth", **{"class": "leak"})
    pressure = first(runner, event="pressure")
    oom = oom_wall(own, runner)
    fragmentation = first(runner, event="finding", kind="fragmentation")
    return {
        "rc": rc(raw, "leak"),
        "growth": growth,
        "pressure": pressure,
        "oom_wall": oom,
        "fragmentation_finding": fragmentation,
        "pass": bool(rc(raw, "leak") == 3 and growth and oom and growth["wall"] < oom and fragmentation is None),
    }


def overhead(raw: Path) -> dict[str, Any]:
    result = first(lines(raw / "overhead.out.jsonl"), event="result")
    if result is None:
        return {"rc": rc(raw, "overhead"), "pass": False}
    sampling_ok = result["share_of_a_step_at_1hz"] < 0.01
    # Counting steps (`vramwatch run`/`probe`): the hook's own cost per step, under 1 % of a step.
    steps_ok = result.get("step_hook_share_of_a_step", 1.0) < 0.01
    return {**result, "rc": rc(raw, "overhead"), "pass": sampling_ok and steps_ok}


def lightning(raw: Path) -> dict[str, Any]:
    own, runner = lines(raw / "lightning.out.jsonl"), lines(raw / "lightning.events.jsonl")
    end, loaded = first(own, event="fit_end"), first(own, event="loaded")
    pressure = first(runner, event="pressure")
    return {
        "rc": rc(raw, "lightning"),
        "pressure": pressure,
        "fit_end": end,
        "loaded": loaded,
        "pass": bool(rc(raw, "lightning") == 0 and pressure and end and end["oom"] and end["saved"]),
    }


def main() -> int:
    raw = Path(sys.argv[1])
    results = {
        "fragment_default_allocator": fragment(raw, "fragment_default", expect_oom=True),
        "fragment_expandable_segments": fragment(raw, "fragment_expandable", expect_oom=False),
        "leak": leak(raw),
        "overhead": overhead(raw),
        "lightning_save": lightning(raw),
        "gpu_tests_rc": rc(raw, "gpu_tests"),
    }
    results["all_pass"] = all(v["pass"] for v in results.values() if isinstance(v, dict)) and results[
        "gpu_tests_rc"
    ] in (0, None)
    json.dump(results, sys.stdout, indent=2, default=str)
    print()
    return 0 if results["all_pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
