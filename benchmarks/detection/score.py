"""Score the detectors on recorded (or simulated) runs whose outcome is known, against a peer's rule.

    python benchmarks/detection/score.py TRACE_DIR            # every *.jsonl / *.jsonl.gz with a .truth.json
    python benchmarks/detection/score.py --simulate           # the simulator's scenarios, seeds 0-2
    python benchmarks/detection/score.py --simulate --every 5 # the same read every 5 s (`serve --interval 5`)
    python benchmarks/detection/score.py TRACE_DIR --json     # the summary as JSON instead of Markdown
    python benchmarks/detection/score.py TRACE_DIR --hidden   # as a daemon without the host's pids judges them

Each trace is replayed tick by tick through History -> analyze -> FindingTracker, exactly as the daemon
does, and through the peer baseline (gpu-monitor's rule: alert when a GPU's memory grew by 30 % within
10 minutes, checked once a minute). Targets, each printed PASS/FAIL:

- every gradual OOM warned >= 60 s ahead (fast leak) or >= 300 s ahead (slow leak), critical >= 20 s ahead;
- zero findings on healthy runs (plateaus included);
- a contender named within `--ticks` (3) ticks of its arrival.

`--hidden` replays every tick as a daemon in a container without the host's pid namespace reads it: no process is
listed (only the card's own series is judged), so nothing can name a process: the contention and post-mortem
targets fail by construction, and what is measured is the findings about the card (false ones and leads).

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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vramwatch.detectors import DetectorConfig, FindingTracker, analyze
from vramwatch.history import History
from vramwatch.model import Finding, Snapshot

FAST_LEAD_S = 60.0
SLOW_LEAD_S = 300.0
CRITICAL_LEAD_S = 20.0
WARNING_PRECISION = 0.95
SLOW_RATE_BYTES_PER_S = 10e6  # a leak slower than this (over the 10 min before the OOM) is a slow leak
BASELINE_GROWTH = 0.30
BASELINE_WINDOW_S = 600.0
BASELINE_CHECK_S = 60.0


@dataclass(frozen=True, slots=True)
class Expect:
    """One thing that really happened and that a finding may (or must) claim.

    `kind` is `oom` (a real out-of-memory at `t`: findings warning of it before, and post-mortems naming its
    process after, are true), `probable_oom` (a post-mortem naming `pid` must come from `from_t` on), or
    `contention` (a `contention` finding naming `pid` must come within `within_ticks` of `from_t`).
    """

    kind: str
    pid: int | None = None
    t: float | None = None  # oom: when it happened
    from_t: float | None = None
    to_t: float | None = None
    gradual: bool = False  # oom: growth that could be seen coming (a leak), with lead targets
    lead_s: float | None = None  # oom: required warning lead (None: by the fast/slow rule)
    critical_lead_s: float | None = None
    within_ticks: int | None = None
    required: bool = True  # False: true when claimed, no miss when not (e.g. what NVML alone cannot see)
    note: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, required: bool = True) -> Expect:
        def num(key: str) -> float | None:
            v = d.get(key)
            return None if v is None else float(v)

        pid = d.get("pid")
        ticks = d.get("within_ticks")
        return cls(
            kind=str(d["kind"]),
            pid=None if pid is None else int(pid),
            t=num("t"),
            from_t=num("from_t"),
            to_t=num("to_t"),
            gradual=bool(d.get("gradual", False)),
            lead_s=num("lead_s"),
            critical_lead_s=num("critical_lead_s"),
            within_ticks=None if ticks is None else int(ticks),
            required=bool(d.get("required", required)),
            note=str(d.get("note", "")),
        )


@dataclass(frozen=True, slots=True)
class Truth:
    """What really happened in a trace (its sidecar `<name>.truth.json`).

    Version 2 lists `expect` (claims that are true, and required unless marked otherwise) and `allow` (claims
    that are true but not required, e.g. `pressure` while a card really is nearly full); any other finding is
    false. Version 1 files (`oom_t`, `gradual`, `healthy`, `contention_t`, `contender_pid`) are read as the
    same expectations.
    """

    scenario: str
    source: str
    oom_t: float | None = None
    gradual: bool = False
    healthy: bool = False
    contention_t: float | None = None
    contender_pid: int | None = None
    required_lead_s: float | None = None  # optional override of the fast/slow classification
    oom_pid: int | None = None
    expect: tuple[Expect, ...] = ()
    allow: tuple[Expect, ...] = ()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Truth:
        def num(key: str) -> float | None:
            v = d.get(key)
            return None if v is None else float(v)

        def pid_of(key: str) -> int | None:
            v = d.get(key)
            return None if v is None else int(v)

        return cls(
            scenario=str(d.get("scenario", "?")),
            source=str(d.get("source", "?")),
            oom_t=num("oom_t"),
            gradual=bool(d.get("gradual", False)),
            healthy=bool(d.get("healthy", False)),
            contention_t=num("contention_t"),
            contender_pid=pid_of("contender_pid"),
            required_lead_s=num("required_lead_s"),
            oom_pid=pid_of("oom_pid"),
            expect=tuple(Expect.from_dict(e) for e in d.get("expect", ())),
            allow=tuple(Expect.from_dict(e, required=False) for e in d.get("allow", ())),
        )

    def expectations(self) -> tuple[Expect, ...]:
        """Version 2's `expect`, or the same claims read from version 1's keys."""
        if self.expect:
            return self.expect
        out = []
        if self.oom_t is not None:
            out.append(Expect("oom", self.oom_pid, t=self.oom_t, gradual=self.gradual, lead_s=self.required_lead_s))
        if self.contention_t is not None:
            out.append(Expect("contention", self.contender_pid, from_t=self.contention_t))
        return tuple(out)

    def allowances(self) -> tuple[Expect, ...]:
        """Version 2's `allow`; for version 1, `pressure` once a contender took the room (the card is full)."""
        if self.expect or self.allow:
            return self.allow
        if self.contention_t is not None:
            return (Expect("pressure", None, from_t=self.contention_t, required=False),)
        return ()


GROWER_PID = re.compile(r"\(pid (\d+)")


@dataclass(frozen=True, slots=True)
class Event:
    """One raised finding (or one baseline alert)."""

    t: float
    kind: str
    severity: str
    pid: int | None = None
    message: str = ""
    culprit: int | None = None  # a finding about a whole GPU that blames one run (a forecast's fastest grower)
    tentative: bool = False  # it said why it may be wrong yet (no policy ends a run on it)

    @classmethod
    def of(cls, f: Finding) -> Event:
        culprit = getattr(f, "culprit", None)
        if culprit is not None:
            blamed: int | None = culprit.pid
        else:  # an older tree (scored as a base) named its grower in words only: "python3 (pid 42, bob)"
            named = GROWER_PID.search(str((f.numbers or {}).get("grower") or ""))
            blamed = int(named.group(1)) if named else None
        pid = f.process.pid if f.process else None
        return cls(f.t, f.kind, f.severity.value, pid, f.message, blamed, getattr(f, "tentative", None) is not None)


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
        run.ours += [Event.of(f) for f in raised]
        run.ticks.append(snap.t)
        for g in snap.gpus:
            if g.used_bytes is not None:
                run.used.setdefault(g.uuid, []).append((snap.t, float(g.used_bytes)))
        run.baseline += rule.update(snap)
    return run


# -- scoring ---------------------------------------------------------------------------------------------


def required_lead(run: Run, oom_t: float | None = None) -> float:
    """60 s for a fast leak, 300 s for a slow one (by the truth's override, the scenario's name, or the rate)."""
    truth = run.truth
    if truth.required_lead_s is not None:
        return truth.required_lead_s
    words = set(re.split(r"[^a-z]+", truth.scenario.lower()))
    if "slow" in words:
        return SLOW_LEAD_S
    if "fast" in words:
        return FAST_LEAD_S
    return SLOW_LEAD_S if growth_before(run, oom_t) < SLOW_RATE_BYTES_PER_S else FAST_LEAD_S


def growth_before(run: Run, oom_t: float | None = None) -> float:
    """The steepest GPU's mean growth (bytes/s) over the 10 minutes before the OOM."""
    oom = run.truth.oom_t if oom_t is None else oom_t
    if oom is None:
        return 0.0
    rates = []
    for series in run.used.values():
        window = [(t, v) for t, v in series if oom - BASELINE_WINDOW_S <= t <= oom]
        if len(window) >= 2 and window[-1][0] > window[0][0]:
            rates.append((window[-1][1] - min(v for _, v in window)) / (window[-1][0] - window[0][0]))
    return max(rates, default=0.0)


PRE_OOM_KINDS = frozenset({"oom_forecast", "growth", "pressure", "fragmentation", "baseline"})
POST_OOM_KINDS = frozenset({"probable_oom", "oom"})
TOLERANCE_S = 2.0  # a tick either side: the trace's clock and the workload's events are sampled 1 s apart
POST_WINDOW_S = 60.0  # a post-mortem this long after the process died still tells of that death
PRE_WINDOW_S = 1800.0  # a warning this long before an OOM (when the truth gives no start) tells of it


def claims(event: Event, e: Expect) -> bool:
    """Does this raised finding claim what `e` says happened?"""
    if e.kind == "*" or (e.kind == event.kind and e.kind not in {"oom", "probable_oom", "contention"}):
        # A plain claim (stale_holder, pressure, ...) about `pid` (None: anyone) within [from_t, to_t].
        lo = -math.inf if e.from_t is None else e.from_t - TOLERANCE_S
        hi = math.inf if e.to_t is None else e.to_t + TOLERANCE_S
        return (e.pid is None or e.pid in (event.pid, event.culprit)) and lo <= event.t <= hi
    if e.kind == "oom" and e.t is not None:
        # About that process, or about its card without blaming another: a forecast that blamed a load elsewhere on
        # the card is no warning of this run's OOM (a contender's may be allowed on its own, as the truth says).
        pid_ok = e.pid is None or event.pid == e.pid or (event.pid is None and event.culprit in (None, e.pid))
        if event.kind in PRE_OOM_KINDS:
            start = e.from_t if e.from_t is not None else e.t - PRE_WINDOW_S
            return pid_ok and start - TOLERANCE_S <= event.t <= e.t + TOLERANCE_S
        if event.kind in POST_OOM_KINDS:
            return pid_ok and e.t - TOLERANCE_S <= event.t <= e.t + POST_WINDOW_S
        return False
    if e.kind == "probable_oom" and e.from_t is not None:
        return (
            event.kind in POST_OOM_KINDS
            and event.pid == e.pid
            and e.from_t - TOLERANCE_S <= event.t <= e.from_t + POST_WINDOW_S
        )
    if e.kind == "contention" and e.from_t is not None:
        hi = math.inf if e.to_t is None else e.to_t + TOLERANCE_S
        return event.kind == "contention" and event.pid == e.pid and e.from_t - TOLERANCE_S <= event.t <= hi
    return False


def classify(event: Event, truth: Truth) -> str:
    """`true` (it claims what happened), `allowed` (true, not required) or `false`."""
    if truth.healthy and event.kind != "baseline":
        return "false"
    if any(claims(event, e) for e in truth.expectations()):
        return "true"
    if any(claims(event, e) for e in truth.allowances()):
        return "allowed"
    return "false"


def first_claiming(
    events: Sequence[Event], e: Expect, *, critical: bool = False, before: float | None = None
) -> Event | None:
    return next(
        (
            ev
            for ev in events
            if claims(ev, e)
            and (not critical or ev.severity == "critical")
            and (before is None or ev.t <= before + TOLERANCE_S)
        ),
        None,
    )


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
    """One trace's row (leads, true/false findings, contention ticks) and its targets."""
    truth = run.truth
    verdicts = [(e, classify(e, truth)) for e in run.ours]
    baseline = [(e, classify(e, truth)) for e in run.baseline]
    row: dict[str, Any] = {
        "trace": run.name,
        "scenario": truth.scenario,
        "source": truth.source,
        "ticks": len(run.ticks),
        "findings": len(run.ours),
        "kinds": sorted({e.kind for e in run.ours}),
        "true": sum(v == "true" for _, v in verdicts),
        "allowed": sum(v == "allowed" for _, v in verdicts),
        "false": sum(v == "false" for _, v in verdicts),
        "false_critical": sum(v == "false" and e.severity == "critical" for e, v in verdicts),
        "false_list": [
            f"{e.kind}/{e.severity}{' (tentative)' if e.tentative else ''} t={e.t:.0f} pid={e.pid}: {e.message}"
            for e, v in verdicts
            if v == "false"
        ],
        "baseline_alerts": len(run.baseline),
        "baseline_false": sum(v == "false" for _, v in baseline),
        "verdicts": [
            {"t": e.t, "kind": e.kind, "severity": e.severity, "pid": e.pid, "verdict": v} for e, v in verdicts
        ],
        "baseline_verdicts": [{"t": e.t, "verdict": v} for e, v in baseline],
        "misses": [],
        "analyze_median_ms": round(statistics.median(run.analyze_seconds) * 1e3, 3) if run.analyze_seconds else None,
    }
    targets: list[Target] = []
    for e in truth.expectations():
        targets += _expectation_targets(run, e, row, contention_ticks)
    if truth.healthy:
        row["false_findings"] = len(run.ours)
        row["baseline_false_alerts"] = len(run.baseline)
    kinds = ", ".join(sorted({e.kind for e, v in verdicts if v == "false"})) or "none"
    targets.append(Target(run.name, "no false finding", "0", f"{row['false']} ({kinds})", row["false"] == 0))
    return row, targets


def _expectation_targets(run: Run, e: Expect, row: dict[str, Any], contention_ticks: int) -> list[Target]:
    name = run.name
    if e.kind == "oom" and e.t is not None:
        warn = first_claiming([x for x in run.ours if x.kind in PRE_OOM_KINDS], e, before=e.t)
        crit = first_claiming([x for x in run.ours if x.kind in PRE_OOM_KINDS], e, critical=True, before=e.t)
        base = first_claiming(run.baseline, e, before=e.t)
        row.setdefault("lead_warning_s", None if warn is None else round(e.t - warn.t, 1))
        row.setdefault("lead_critical_s", None if crit is None else round(e.t - crit.t, 1))
        row.setdefault("baseline_lead_s", None if base is None else round(e.t - base.t, 1))
        row.setdefault("first_warning", None if warn is None else warn.message)
        if not e.gradual:
            return []  # one allocation that did not fit: no lead to ask for (only the agent sees it coming)
        need = e.lead_s if e.lead_s is not None else required_lead(run, e.t)
        cneed = e.critical_lead_s if e.critical_lead_s is not None else CRITICAL_LEAD_S
        row["required_lead_s"] = need
        lead = None if warn is None else round(e.t - warn.t, 1)
        clead = None if crit is None else round(e.t - crit.t, 1)
        if lead is None or lead < need:
            row["misses"].append(f"oom at t={e.t:.0f}: warned {_s(lead)} ahead, {need:.0f} s required")
        return [
            Target(name, "warned ahead", f">= {need:.0f} s", _s(lead), lead is not None and lead >= need),
            Target(name, "critical ahead", f">= {cneed:.0f} s", _s(clead), clead is not None and clead >= cneed),
        ]
    if e.kind == "probable_oom":
        found = first_claiming(run.ours, e)
        if found is None and e.required:
            row["misses"].append(f"probable_oom of pid {e.pid}")
        if not e.required:
            return []
        got = "-" if found is None else f"{found.kind} {found.t - (e.from_t or 0):+.0f} s"
        return [Target(name, "post-mortem named", f"pid {e.pid}", got, found is not None)]
    if e.kind == "contention" and e.from_t is not None and e.required:
        named = first_claiming(run.ours, e)
        n = None if named is None else ticks_between(run.ticks, e.from_t, named.t)
        row.setdefault("contention_ticks", n)
        limit = e.within_ticks if e.within_ticks is not None else contention_ticks
        if n is None or n > limit:
            row["misses"].append(f"contention by pid {e.pid}: {_s(n, ' ticks')}")
        return [Target(name, "contender named", f"<= {limit} ticks", _s(n, ""), n is not None and n <= limit)]
    return []


def kind_table(runs: Sequence[Run]) -> dict[str, dict[str, dict[str, int]]]:
    """Per finding kind and severity: true, allowed and false findings; per expected kind: misses."""
    table: dict[str, dict[str, dict[str, int]]] = {}
    for run in runs:
        for e in run.ours + run.baseline:
            who = "gpu-monitor rule" if e.kind == "baseline" else "vramwatch"
            cell = table.setdefault(who, {}).setdefault(
                f"{e.kind}/{e.severity}", {"true": 0, "allowed": 0, "false": 0, "missed": 0}
            )
            cell[classify(e, run.truth)] += 1
        for e in run.truth.expectations():
            if not e.required:
                continue
            if e.kind == "oom" and e.t is not None:
                if not e.gradual:
                    continue
                need = e.lead_s if e.lead_s is not None else required_lead(run, e.t)
                for who, events in (("vramwatch", run.ours), ("gpu-monitor rule", run.baseline)):
                    warn = first_claiming([x for x in events if x.kind in PRE_OOM_KINDS], e, before=e.t)
                    if warn is None or e.t - warn.t < need:
                        cell = table.setdefault(who, {}).setdefault(
                            "oom warned in time", {"true": 0, "allowed": 0, "false": 0, "missed": 0}
                        )
                        cell["missed"] += 1
            elif first_claiming(run.ours, e) is None:
                cell = table.setdefault("vramwatch", {}).setdefault(
                    e.kind, {"true": 0, "allowed": 0, "false": 0, "missed": 0}
                )
                cell["missed"] += 1
    return table


def precision_targets(runs: Sequence[Run]) -> list[Target]:
    """Across the corpus: no false critical finding, and warnings at least 95 % precise."""
    crit = [classify(e, r.truth) for r in runs for e in r.ours if e.severity == "critical"]
    warn = [classify(e, r.truth) for r in runs for e in r.ours if e.severity == "warning"]
    out = []
    for label, verdicts, need in (("critical precision", crit, 1.0), ("warning precision", warn, WARNING_PRECISION)):
        judged = [v for v in verdicts if v != "allowed"]
        p = 1.0 if not judged else sum(v == "true" for v in judged) / len(judged)
        value = f"{p:.1%} ({sum(v == 'false' for v in judged)} false of {len(judged)})"
        out.append(Target("(corpus)", label, f">= {need:.0%}", value, p >= need))
    return out


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
    scenarios: Sequence[str], seeds: Sequence[int], every: float = 1.0
) -> Iterator[tuple[str, Truth, Iterable[Snapshot], float]]:
    """The simulator's scenarios read every `every` seconds (1 Hz by default; the world itself moves in its own
    steps whatever the reads), with truth from its own record of what happened."""
    from vramwatch.backends.simulated import SCENARIOS, ground_truth

    for name in scenarios:
        if name not in SCENARIOS:
            raise SystemExit(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
        for seed in seeds:
            gt = ground_truth(name, seed=seed)
            origin = float(gt["origin"]["monotonic"])
            listed_ooms = [e for e in gt["events"] if e["kind"] == "oom" and e.get("used_bytes") is not None]
            contention = [e for e in gt["events"] if e["kind"] == "contention"]
            starts = {(p["pid"], p["start_time"]): origin + p["start_t"] for p in gt["processes"]}
            expect = [
                Expect(
                    "oom",
                    int(e["pid"]),
                    t=origin + e["t"],
                    from_t=starts.get((e["pid"], e["start_time"])),
                    gradual=name in SIMULATED_GRADUAL,
                )
                for e in listed_ooms
            ]
            expect += [Expect("contention", int(e["pid"]), from_t=origin + e["t"]) for e in contention]
            expect += [
                Expect("stale_holder", int(p["pid"]), required=False)
                for p in gt["processes"]
                if p.get("role") == "stale"
            ]
            # A contender squeezes a run: what follows on that card (pressure, the victim's post-mortem) is true.
            allow = [Expect("pressure", None, from_t=origin + e["t"], required=False) for e in contention]
            # ... and so is a forecast blaming the contender while it takes the room (it stops at what it needs).
            allow += [
                Expect("oom_forecast", int(e["pid"]), from_t=starts.get((e["pid"], e["start_time"])), required=False)
                for e in contention
            ]
            truth = Truth(
                scenario=name,
                source="simulated",
                oom_t=origin + listed_ooms[0]["t"] if listed_ooms else None,
                gradual=name in SIMULATED_GRADUAL,
                healthy=name in SIMULATED_HEALTHY,
                contention_t=origin + contention[0]["t"] if contention else None,
                contender_pid=int(contention[0]["pid"]) if contention else None,
                expect=tuple(expect),
                allow=tuple(allow),
            )
            yield f"sim-{name}-{seed}", truth, _simulated_snapshots(name, seed, every), every


def _simulated_snapshots(name: str, seed: int, every: float = 1.0) -> Iterator[Snapshot]:
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
        clock.advance(every)


def hidden(snapshots: Iterable[Snapshot]) -> Iterator[Snapshot]:
    """`snapshots` as a daemon that cannot see the host's pids has them: no process, no exit, not visible."""
    for snap in snapshots:
        yield replace(snap, processes=(), exits=(), processes_visible=False)


# -- report ------------------------------------------------------------------------------------------------


def markdown(rows: list[dict[str, Any]], targets: list[Target], kinds: dict[str, dict[str, dict[str, int]]]) -> str:
    columns = (
        "trace",
        "ticks",
        "findings true / allowed / false (critical)",
        "lead warning",
        "lead critical",
        "gpu-monitor rule: lead, false alerts",
        "contender named (ticks)",
        "median analyze",
    )
    lines = ["| " + " | ".join(columns) + " |", "| --- |" + " ---: |" * (len(columns) - 1)]
    for r in rows:
        lines.append(
            f"| {r['trace']} | {r['ticks']} | {r['true']} / {r['allowed']} / {r['false']} ({r['false_critical']}) | "
            f"{_s(r.get('lead_warning_s'))} | {_s(r.get('lead_critical_s'))} | "
            f"{_s(r.get('baseline_lead_s'))}, {r['baseline_false']} | "
            f"{_s(r.get('contention_ticks'), '')} | {_s(r.get('analyze_median_ms'), ' ms')} |"
        )
    lines += [
        "",
        "| who | kind/severity | true | allowed | false | missed |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for who, table in kinds.items():
        for kind, c in sorted(table.items()):
            lines.append(f"| {who} | {kind} | {c['true']} | {c['allowed']} | {c['false']} | {c['missed']} |")
    false = [(r["trace"], f) for r in rows for f in r["false_list"]]
    if false:
        lines += ["", "False findings:", *[f"- {trace}: {f}" for trace, f in false]]
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
    p.add_argument(
        "--every", type=float, default=1.0, help="read the simulator every this many seconds, as `serve --interval`"
    )
    p.add_argument("--ticks", type=int, default=3, help="a contender must be named within this many ticks")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of Markdown")
    p.add_argument("--no-fail", action="store_true", help="exit 0 even when a target fails")
    p.add_argument("--hidden", action="store_true", help="as a daemon without the host's pids: no process is listed")
    args = p.parse_args(argv)
    if not args.every > 0:
        p.error("--every must be a positive number of seconds")
    if args.every != 1.0 and args.simulate is None:
        p.error("--every reads the simulator less often; for recorded traces use resample.py")

    cases: list[Iterator[tuple[str, Truth, Iterable[Snapshot], float]]] = [trace_cases(d) for d in args.dirs]
    if args.simulate is not None:
        from vramwatch.backends.simulated import SCENARIOS

        names = args.simulate or [n for n in SCENARIOS if n != "scale"]
        cases.append(simulated_cases(names, [int(s) for s in args.seeds.split(",") if s.strip()], args.every))
    config = DetectorConfig()
    rows: list[dict[str, Any]] = []
    runs: list[Run] = []
    targets: list[Target] = []
    for source in cases:
        for name, truth, snapshots, interval in source:
            run = replay(name, truth, hidden(snapshots) if args.hidden else snapshots, config, interval)
            row, trace_targets = score(run, args.ticks)
            runs.append(run)
            rows.append(row)
            targets += trace_targets
    if not rows:
        print("nothing to score: give trace directories (with .truth.json sidecars) or --simulate", file=sys.stderr)
        return 2
    targets += precision_targets(runs)
    kinds = kind_table(runs)
    passed = all(t.passed for t in targets)
    if args.json:
        doc = {"traces": rows, "kinds": kinds, "targets": [asdict(t) for t in targets], "passed": passed}
        print(json.dumps(doc, indent=2))
    else:
        print(markdown(rows, targets, kinds))
    return 0 if passed or args.no_fail else 1


if __name__ == "__main__":
    sys.exit(main())
