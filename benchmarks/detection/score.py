"""Score the detectors on recorded (or simulated) runs whose outcome is known, against a peer's rule.

    python benchmarks/detection/score.py TRACE_DIR            # every *.jsonl / *.jsonl.gz with a .truth.json
    python benchmarks/detection/score.py --simulate           # the simulator's scenarios, seeds 0-2
    python benchmarks/detection/score.py TRACE_DIR --json     # the summary as JSON instead of Markdown

Each trace is replayed tick by tick through History -> analyze -> FindingTracker, exactly as the daemon
does, and through the peer baseline (gpu-monitor's rule: alert when a GPU's memory grew by 30 % within
10 minutes, checked once a minute). Targets, each printed PASS/FAIL:

- every gradual OOM warned >= 60 s ahead (fast leak) or >= 300 s ahead (slow leak), critical >= 20 s ahead;
- zero findings on healthy runs (plateaus included);
- a contender named within `--ticks` (3) ticks of its arrival.

Exit status 1 when a target fails (0 with --no-fail), 2 when there is nothing to score.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vramwatch.detectors import DetectorConfig, FindingTracker, analyze
from vramwatch.history import History
from vramwatch.model import Snapshot

FAST_LEAD_S = 60.0
SLOW_LEAD_S = 300.0
CRITICAL_LEAD_S = 20.0
SLOW_RATE_BYTES_PER_S = 10e6  # a leak slower than this (over the 10 min before the OOM) is a slow leak
BASELINE_GROWTH = 0.30
BASELINE_WINDOW_S = 600.0
BASELINE_CHECK_S = 60.0


@dataclass(frozen=True, slots=True)
class Truth:
    """What really happened in a trace (its sidecar `<name>.truth.json`)."""

    scenario: str
    source: str
    oom_t: float | None = None
    gradual: bool = False
    healthy: bool = False
    contention_t: float | None = None
    contender_pid: int | None = None
    required_lead_s: float | None = None  # optional override of the fast/slow classification

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Truth:
        def num(key: str) -> float | None:
            v = d.get(key)
            return None if v is None else float(v)

        pid = d.get("contender_pid")
        return cls(
            scenario=str(d.get("scenario", "?")),
            source=str(d.get("source", "?")),
            oom_t=num("oom_t"),
            gradual=bool(d.get("gradual", False)),
            healthy=bool(d.get("healthy", False)),
            contention_t=num("contention_t"),
            contender_pid=None if pid is None else int(pid),
            required_lead_s=num("required_lead_s"),
        )


@dataclass(frozen=True, slots=True)
class Event:
    """One raised finding (or one baseline alert)."""

    t: float
    kind: str
    severity: str
    pid: int | None = None
    message: str = ""


@dataclass(slots=True)
class Run:
    """A replayed trace: its tick times, our raised findings, the baseline's alerts, and the device curve."""

    name: str
    truth: Truth
    ticks: list[float] = field(default_factory=list)
    ours: list[Event] = field(default_factory=list)
    baseline: list[Event] = field(default_factory=list)
    used: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # gpu -> (t, used bytes)
    analyze_seconds: list[float] = field(default_factory=list)


class GpuMonitorRule:
    """The peer baseline: every minute, alert a GPU whose used memory is 30 % above its 10-minute low."""

    def __init__(self) -> None:
        self.samples: dict[str, deque[tuple[float, float]]] = {}
        self.next_check: float | None = None
        self.alerting: set[str] = set()

    def update(self, snap: Snapshot) -> list[Event]:
        for g in snap.gpus:
            if g.up and g.used_bytes is not None:
                q = self.samples.setdefault(g.uuid, deque())
                q.append((snap.t, float(g.used_bytes)))
                while q and q[0][0] < snap.t - BASELINE_WINDOW_S:
                    q.popleft()
        if self.next_check is None:
            self.next_check = snap.t + BASELINE_CHECK_S
        if snap.t < self.next_check:
            return []
        self.next_check += BASELINE_CHECK_S * max(1, math.floor((snap.t - self.next_check) / BASELINE_CHECK_S) + 1)
        events = []
        for uuid, q in self.samples.items():
            low, now = min(v for _, v in q), q[-1][1]
            firing = low > 0 and now >= (1 + BASELINE_GROWTH) * low
            if firing and uuid not in self.alerting:
                events.append(Event(snap.t, "baseline", "warning", None, f"{uuid} grew {now / low - 1:.0%} in 10 min"))
            (self.alerting.add if firing else self.alerting.discard)(uuid)
        return events


def replay(name: str, truth: Truth, snapshots: Iterable[Snapshot], config: DetectorConfig, interval: float) -> Run:
    """Feed snapshots through the detectors and the baseline, as the daemon's loop does."""
    import time

    run = Run(name, truth)
    history = History(window_seconds=3600.0, interval_seconds=interval)
    tracker = FindingTracker(config)
    rule = GpuMonitorRule()
    for snap in snapshots:
        history.add(snap)
        started = time.perf_counter()
        analysis = analyze(history, config)
        run.analyze_seconds.append(time.perf_counter() - started)
        raised, _cleared = tracker.update(analysis)
        run.ticks.append(snap.t)
        for g in snap.gpus:
            if g.used_bytes is not None:
                run.used.setdefault(g.uuid, []).append((snap.t, float(g.used_bytes)))
        run.ours += [
            Event(f.t, f.kind, f.severity.value, f.process.pid if f.process else None, f.message) for f in raised
        ]
        run.baseline += rule.update(snap)
    return run


# -- scoring ---------------------------------------------------------------------------------------------


def required_lead(run: Run) -> float:
    """60 s for a fast leak, 300 s for a slow one (by the truth's override, the scenario's name, or the rate)."""
    truth = run.truth
    if truth.required_lead_s is not None:
        return truth.required_lead_s
    words = set(re.split(r"[^a-z]+", truth.scenario.lower()))
    if "slow" in words:
        return SLOW_LEAD_S
    if "fast" in words:
        return FAST_LEAD_S
    return SLOW_LEAD_S if growth_before(run) < SLOW_RATE_BYTES_PER_S else FAST_LEAD_S


def growth_before(run: Run) -> float:
    """The steepest GPU's mean growth (bytes/s) over the 10 minutes before the OOM."""
    oom = run.truth.oom_t
    if oom is None:
        return 0.0
    rates = []
    for series in run.used.values():
        window = [(t, v) for t, v in series if oom - BASELINE_WINDOW_S <= t <= oom]
        if len(window) >= 2 and window[-1][0] > window[0][0]:
            rates.append((window[-1][1] - min(v for _, v in window)) / (window[-1][0] - window[0][0]))
    return max(rates, default=0.0)


def first_before(events: Sequence[Event], limit: float, *, critical: bool = False) -> Event | None:
    return next((e for e in events if e.t <= limit and (not critical or e.severity == "critical")), None)


def ticks_between(ticks: Sequence[float], start: float, end: float) -> int:
    """Ticks after `start` up to and including `end` (0: named on the arrival tick)."""
    return sum(1 for t in ticks if start < t <= end)


@dataclass(frozen=True, slots=True)
class Target:
    trace: str
    name: str
    required: str
    value: str
    passed: bool


def score(run: Run, contention_ticks: int) -> tuple[dict[str, Any], list[Target]]:
    truth = run.truth
    row: dict[str, Any] = {
        "trace": run.name,
        "scenario": truth.scenario,
        "source": truth.source,
        "ticks": len(run.ticks),
        "findings": len(run.ours),
        "kinds": sorted({e.kind for e in run.ours}),
        "baseline_alerts": len(run.baseline),
        "analyze_median_ms": round(statistics.median(run.analyze_seconds) * 1e3, 3) if run.analyze_seconds else None,
    }
    targets: list[Target] = []
    if truth.oom_t is not None:
        warn = first_before(run.ours, truth.oom_t)
        crit = first_before(run.ours, truth.oom_t, critical=True)
        base = first_before(run.baseline, truth.oom_t)
        row.update(
            lead_warning_s=None if warn is None else round(truth.oom_t - warn.t, 1),
            lead_critical_s=None if crit is None else round(truth.oom_t - crit.t, 1),
            baseline_lead_s=None if base is None else round(truth.oom_t - base.t, 1),
            first_warning=None if warn is None else warn.message,
        )
        if truth.gradual:
            need = required_lead(run)
            row["required_lead_s"] = need
            lead, clead = row["lead_warning_s"], row["lead_critical_s"]
            targets.append(
                Target(run.name, "warned ahead", f">= {need:.0f} s", _s(lead), lead is not None and lead >= need)
            )
            targets.append(
                Target(
                    run.name,
                    "critical ahead",
                    f">= {CRITICAL_LEAD_S:.0f} s",
                    _s(clead),
                    clead is not None and clead >= CRITICAL_LEAD_S,
                )
            )
    if truth.healthy:
        row["false_findings"] = len(run.ours)
        row["baseline_false_alerts"] = len(run.baseline)
        kinds = ", ".join(sorted({e.kind for e in run.ours})) or "none"
        targets.append(Target(run.name, "no finding (healthy)", "0", f"{len(run.ours)} ({kinds})", not run.ours))
    if truth.contention_t is not None:
        named = next(
            (
                e
                for e in run.ours
                if e.kind == "contention"
                and e.t >= truth.contention_t
                and (truth.contender_pid is None or e.pid == truth.contender_pid)
            ),
            None,
        )
        n = None if named is None else ticks_between(run.ticks, truth.contention_t, named.t)
        row["contention_ticks"] = n
        targets.append(
            Target(
                run.name,
                "contender named",
                f"<= {contention_ticks} ticks",
                _s(n, ""),
                n is not None and n <= contention_ticks,
            )
        )
    return row, targets


def _s(value: float | None, unit: str = " s") -> str:
    return "-" if value is None else f"{value:g}{unit}"


# -- inputs ------------------------------------------------------------------------------------------------


def trace_cases(directory: Path) -> Iterator[tuple[str, Truth, Iterable[Snapshot], float]]:
    """(name, truth, snapshots, interval) for every trace in `directory` that has a truth sidecar."""
    for path in sorted(directory.iterdir()):
        m = re.fullmatch(r"(.+)\.jsonl(\.gz)?", path.name)
        if m is None:
            continue
        sidecar = path.with_name(f"{m.group(1)}.truth.json")
        if not sidecar.exists():
            print(f"skipped {path.name}: no {sidecar.name}", file=sys.stderr)
            continue
        truth = Truth.from_dict(json.loads(sidecar.read_text()))
        yield m.group(1), truth, _trace_snapshots(path), _trace_interval(path)


def _trace_interval(path: Path) -> float:
    from vramwatch.backends.replay import ReplayBackend

    backend = ReplayBackend(path)
    try:
        return backend.interval_seconds or 1.0
    finally:
        backend.close()


def _trace_snapshots(path: Path) -> Iterator[Snapshot]:
    """The trace's ticks as the daemon would see them (the replay backend's recorded metadata included)."""
    from vramwatch.backends.replay import ReplayBackend
    from vramwatch.sampler import snapshot_from_reading

    backend = ReplayBackend(path, on_error=lambda n, msg: print(f"{path.name}:{n}: {msg}", file=sys.stderr))
    inspector = backend.inspector()
    try:
        while True:
            try:
                reading = backend.read()
            except EOFError:
                return
            yield snapshot_from_reading(reading, inspector, visible=inspector.pid_namespace_matches())
    finally:
        backend.close()


SIMULATED_HEALTHY = {"steady", "warmup", "plateau", "lost_gpu"}
SIMULATED_GRADUAL = {"leak", "slow_leak", "fast_leak", "stepwise_leak"}


def simulated_cases(
    scenarios: Sequence[str], seeds: Sequence[int]
) -> Iterator[tuple[str, Truth, Iterable[Snapshot], float]]:
    """The simulator's scenarios at 1 Hz, with truth from its own record of what happened."""
    from vramwatch.backends.simulated import SCENARIOS, ground_truth

    for name in scenarios:
        if name not in SCENARIOS:
            raise SystemExit(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
        for seed in seeds:
            gt = ground_truth(name, seed=seed)
            origin = float(gt["origin"]["monotonic"])
            listed_ooms = [e for e in gt["events"] if e["kind"] == "oom" and e.get("used_bytes") is not None]
            contention = [e for e in gt["events"] if e["kind"] == "contention"]
            truth = Truth(
                scenario=name,
                source="simulated",
                oom_t=origin + listed_ooms[0]["t"] if listed_ooms else None,
                gradual=name in SIMULATED_GRADUAL,
                healthy=name in SIMULATED_HEALTHY,
                contention_t=origin + contention[0]["t"] if contention else None,
                contender_pid=int(contention[0]["pid"]) if contention else None,
            )
            yield f"sim-{name}-{seed}", truth, _simulated_snapshots(name, seed), 1.0


def _simulated_snapshots(name: str, seed: int) -> Iterator[Snapshot]:
    from vramwatch.backends.simulated import SCENARIOS, SimulatedBackend
    from vramwatch.sampler import snapshot_from_reading
    from vramwatch.testing import FakeClock

    clock = FakeClock()
    backend = SimulatedBackend(name, seed=seed, clock=clock)
    end = clock.monotonic() + SCENARIOS[name].horizon_seconds
    while clock.monotonic() <= end:
        reading = backend.read()
        inspector = backend.inspector()
        yield snapshot_from_reading(
            reading, inspector, t=clock.monotonic(), wall=clock.wall(), visible=inspector.pid_namespace_matches()
        )
        clock.advance(1.0)


# -- report ------------------------------------------------------------------------------------------------


def markdown(rows: list[dict[str, Any]], targets: list[Target]) -> str:
    columns = (
        "trace",
        "source",
        "ticks",
        "lead warning (vramwatch)",
        "lead critical",
        "lead (gpu-monitor rule)",
        "findings on healthy (vramwatch / rule)",
        "contender named (ticks)",
        "median analyze",
    )
    lines = ["| " + " | ".join(columns) + " |", "| --- | --- |" + " ---: |" * (len(columns) - 2)]
    for r in rows:
        healthy = f"{r['false_findings']} / {r['baseline_false_alerts']}" if "false_findings" in r else "-"
        lines.append(
            f"| {r['trace']} | {r['source']} | {r['ticks']} | {_s(r.get('lead_warning_s'))} | "
            f"{_s(r.get('lead_critical_s'))} | {_s(r.get('baseline_lead_s'))} | {healthy} | "
            f"{_s(r.get('contention_ticks'), '')} | {_s(r.get('analyze_median_ms'), ' ms')} |"
        )
    lines += ["", "| target | trace | required | got | result |", "| --- | --- | --- | --- | --- |"]
    lines += [
        f"| {t.name} | {t.trace} | {t.required} | {t.value} | {'PASS' if t.passed else 'FAIL'} |" for t in targets
    ]
    failed = sum(not t.passed for t in targets)
    lines += ["", f"{len(targets) - failed}/{len(targets)} targets passed" + (f", {failed} FAILED" if failed else "")]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="*", type=Path, help="directories of traces with .truth.json sidecars")
    p.add_argument("--simulate", nargs="*", metavar="SCENARIO", help="score simulated scenarios (all if none named)")
    p.add_argument("--seeds", default="0,1,2", help="simulator seeds, comma-separated (default 0,1,2)")
    p.add_argument("--ticks", type=int, default=3, help="a contender must be named within this many ticks")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of Markdown")
    p.add_argument("--no-fail", action="store_true", help="exit 0 even when a target fails")
    args = p.parse_args(argv)

    cases: list[Iterator[tuple[str, Truth, Iterable[Snapshot], float]]] = [trace_cases(d) for d in args.dirs]
    if args.simulate is not None:
        from vramwatch.backends.simulated import SCENARIOS

        names = args.simulate or [n for n in SCENARIOS if n != "scale"]
        cases.append(simulated_cases(names, [int(s) for s in args.seeds.split(",") if s.strip()]))
    config = DetectorConfig()
    rows: list[dict[str, Any]] = []
    targets: list[Target] = []
    for source in cases:
        for name, truth, snapshots, interval in source:
            run = replay(name, truth, snapshots, config, interval)
            row, trace_targets = score(run, args.ticks)
            rows.append(row)
            targets += trace_targets
    if not rows:
        print("nothing to score: give trace directories (with .truth.json sidecars) or --simulate", file=sys.stderr)
        return 2
    passed = all(t.passed for t in targets)
    if args.json:
        print(json.dumps({"traces": rows, "targets": [asdict(t) for t in targets], "passed": passed}, indent=2))
    else:
        print(markdown(rows, targets))
    return 0 if passed or args.no_fail else 1


if __name__ == "__main__":
    sys.exit(main())
