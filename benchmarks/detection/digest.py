"""Everything the detectors conclude, tick by tick, as one fingerprint per case: the proof that a change to
how they compute (a refactor, a faster history) left what they conclude untouched.

    python benchmarks/detection/digest.py benchmarks/detection/traces --simulate > after.txt
    git stash; python benchmarks/detection/digest.py benchmarks/detection/traces --simulate > before.txt
    diff before.txt after.txt   # nothing: the same findings, messages, numbers, rates and verdicts

Each line is a case (a recorded trace, or a simulated scenario and seed, the cases `score.py` scores) and the
SHA-256 of every tick's `Analysis` written out in full: each finding's kind, severity, message, numbers and
process, each growth rate (device and process, to the last bit), each forecast and each stability verdict.
With `--dump DIR` the full text is written there too, for a diff that shows what moved.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from score import simulated_cases, trace_cases
from vramwatch.detectors.analysis import Analysis, analyze
from vramwatch.detectors.config import DetectorConfig
from vramwatch.history import History
from vramwatch.model import Snapshot

SKIP = {"scale"}  # 4,096 processes: a cost benchmark, not a detection case (as in score.py)


def lines(snapshots: Iterable[Snapshot], interval: float, config: DetectorConfig) -> Iterable[str]:
    """One text line per tick for everything `analyze` concluded, keys sorted so the order is stable."""
    history = History(window_seconds=3600.0, interval_seconds=interval)
    for snap in snapshots:
        history.add(snap)
        yield _text(analyze(history, config))


def _text(a: Analysis) -> str:
    parts = [f"t={a.t!r}"]
    for f in a.findings:
        numbers = sorted((k, repr(v)) for k, v in f.numbers.items())
        parts.append(f"F {f.kind} {f.severity.value} {f.gpu_uuid} {f.process} {f.message!r} {numbers}")
    parts += [f"G {k} {r!r}" for k, r in sorted(a.gpu_growth.items())]
    parts += [f"P {k[0]} {k[1]} {r!r}" for k, r in sorted(a.process_growth.items(), key=lambda kv: str(kv[0]))]
    parts += [f"E {k} {v!r}" for k, v in sorted(a.oom_eta.items())]
    parts += [f"V {k[0]} {k[1]} {v}" for k, v in sorted(a.verdicts.items(), key=lambda kv: str(kv[0]))]
    return " | ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="*", type=Path, help="directories of traces with .truth.json sidecars")
    ap.add_argument("--simulate", nargs="*", metavar="SCENARIO", help="simulated scenarios (all if none named)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--dump", type=Path, help="also write each case's full text here")
    args = ap.parse_args(argv)
    from vramwatch import logs

    logs.configure("json", "error")
    config = DetectorConfig()
    cases: list[tuple[str, Iterable[Snapshot], float]] = []
    for d in args.dirs:
        cases += [(name, snaps, interval) for name, _truth, snaps, interval in trace_cases(d)]
    if args.simulate is not None:
        seeds = [int(s) for s in args.seeds.split(",")]
        from vramwatch.backends.simulated import SCENARIOS

        names = args.simulate or [n for n in SCENARIOS if n not in SKIP]
        cases += [(n, s, i) for n, _t, s, i in simulated_cases(names, seeds)]
    for name, snaps, interval in cases:
        digest = hashlib.sha256()
        text = []
        for line in lines(snaps, interval, config):
            digest.update(line.encode() + b"\n")
            if args.dump:
                text.append(line)
        if args.dump:
            args.dump.mkdir(parents=True, exist_ok=True)
            (args.dump / f"{name}.txt").write_text("\n".join(text) + "\n")
        print(f"{name} {digest.hexdigest()[:16]}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
