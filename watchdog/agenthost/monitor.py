"""The built-in check of `vramwatch run` when no daemon watches: agent reports in, warnings to stderr out.

Deliberately small (the daemon's detectors and advisor do the full job): per process and device it keeps
the last two minutes of samples and
- raises the fragmentation finding (`detectors.fragmentation`) once per episode;
- says once when allocated memory grows (a leak: tensors kept alive), as opposed to caching;
- sends a pressure notice to the process when its headroom (free on the device plus its own cached but
  unallocated memory) falls under `pressure_headroom_share` of what it can use, so that registered
  callbacks (the Lightning / transformers adapters) save a checkpoint while there is still time; re-armed
  once headroom recovers;
- prints the OOM post-mortem: what was asked, what PyTorch held, how much of it was unusable cache;
- with the agent counting optimizer steps, forecasts in steps (`steps.py`) against the trainer's schedule,
  for every process and device that reports steps (DDP ranks on one box), and says once when the run will
  not reach its end (a sampling phase, a save, growth per step), for the process that runs out first: a
  warning ahead of it, critical when the failing phase is the next one or under two minutes away (and then
  sends the pressure notice, so that a registered callback saves before it; not when the failing phase is
  itself a save: the save the notice asks for would be what runs out). It says it again only when that
  changes to something not said before (outcome, phase or severity) or the failing step comes more than
  10 % of the remaining steps closer than when it was said: a noisy leak moves its forecast at every redo,
  and can flip it between a training step and a peak it learned, which is not news. A failing phase measured
  only with the start-up (`Verdict.upper_bound`: it may run out) is a warning, never critical;
- says once per process when the agent's step hook fails (`step_errors`): its peaks may be missing.

Every conclusion is also written as a JSON line to `events` when given (the GPU proof scripts read it).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from ..detectors.fragmentation import FragmentationConfig, GrowthConfig, classify_growth, detect_fragmentation
from ..detectors.oom import fragmented_at_oom
from ..model import OomEvent, StepRecord
from ..stephistory import MAX_RECORDS, RECENT_RECORDS, StepHistory, is_save
from ..steps import Outcome, Schedule, StepProfile, Verdict, describe, forecast, profile
from ..units import size
from .link import AgentDevice, AgentReport

SendPressure = Callable[[int, str, str], bool]  # (pid, level, reason) -> sent
#: The setting changes for a verdict that does not fit, in the trainer's words (the CLI binds the advisor).
AdviseVerdict = Callable[[Verdict], list[str]]


DEFAULT_PRESSURE_HEADROOM_SHARE = 0.10


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    """Thresholds of the built-in check; headroom shares are of what the process can use."""

    history_seconds: float = 120.0
    pressure_headroom_share: float = DEFAULT_PRESSURE_HEADROOM_SHARE
    pressure_rearm_share: float = 0.20
    fragmentation: FragmentationConfig = field(default_factory=FragmentationConfig)
    growth: GrowthConfig = field(default_factory=GrowthConfig)
    forecast_every_seconds: float = 5.0  # how often the step forecast is redone (and logged to `events`)
    critical_seconds: float = 120.0  # a step forecast this close is critical
    # A forecast said is said again when its failing step comes this share of the remaining steps closer.
    repeat_closer_share: float = 0.10
    max_step_records: int = MAX_RECORDS  # per process and device (`StepHistory`: phases kept, old steps merged)
    recent_step_records: int = RECENT_RECORDS


@dataclass(slots=True)
class _Track:
    samples: deque[tuple[float, AgentDevice]] = field(default_factory=deque)
    fragmentation: str | None = None  # severity already reported in this episode
    leak_reported: bool = False
    pressure_sent: bool = False


@dataclass(slots=True)
class _Steps:
    history: StepHistory
    last_report: float = 0.0  # monotonic receipt time of its latest records
    last_forecast: float | None = None
    forecast: tuple[StepProfile, Verdict, str, str] | None = None  # the latest: profile, verdict, text, severity


#: What a step forecast says: (outcome, phase, severity).
_SaidKey = tuple[Outcome, str | None, str]


@dataclass(frozen=True, slots=True)
class _Said:
    """A step forecast said: where it ran out, and at which step of the run it was said."""

    fail_step: int
    at_step: int


def _fragmented(oom: OomEvent) -> bool:
    """The daemon's rule, so that `vramwatch run` and `serve` never disagree about the same OOM."""
    return fragmented_at_oom(
        requested_bytes=oom.requested_bytes,
        reserved_bytes=oom.reserved_bytes,
        allocated_bytes=oom.allocated_bytes,
        device_free_bytes=oom.device_free_bytes,
    )


def format_oom(oom: OomEvent) -> list[str]:
    """The post-mortem of one OOM, as lines for a terminal."""
    where = f"cuda:{oom.device}" + (f" ({oom.gpu_uuid})" if oom.gpu_uuid else "")
    lines = [
        f"pid {oom.pid} ran out of GPU memory on {where}: asked for {size(oom.requested_bytes)}"
        + (f" with {size(oom.device_free_bytes)} free on the device" if oom.device_free_bytes is not None else "")
        + ("" if oom.observed else " (seen from the OOM counter, state a moment later)")
    ]
    slack = oom.reserved_unallocated_bytes
    lines.append(
        f"  PyTorch held {size(oom.reserved_bytes)}: {size(oom.allocated_bytes)} in tensors, "
        f"{size(slack)} reserved but unallocated"
        + (f" ({size(oom.inactive_split_bytes)} in split blocks)" if oom.inactive_split_bytes else "")
    )
    if _fragmented(oom):
        lines.append(
            "  the cache held enough memory, in pieces too small for the request: fragmentation; "
            "try PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"
        )
    else:
        lines.append("  the tensors themselves fill the memory: lower the batch size or resolution, or offload")
    if oom.snapshot_path:
        lines.append(f"  memory snapshot: {oom.snapshot_path} (open it at https://pytorch.org/memory_viz)")
    return lines


class RunMonitor:
    """Consumes AgentReports (call `on_report` from the listener thread); thread-safe."""

    def __init__(
        self,
        *,
        out: TextIO,
        send_pressure: SendPressure | None = None,
        events: TextIO | None = None,
        config: MonitorConfig | None = None,
        wall: Callable[[], float] = time.time,
        schedule: Schedule | None = None,
        advise: AdviseVerdict | None = None,
    ) -> None:
        self._out = out
        self._send_pressure = send_pressure
        self._events = events
        self.config = config or MonitorConfig()
        self._wall = wall
        self._tracks: dict[tuple[int, int], _Track] = {}
        self.schedule = schedule or Schedule()
        self._advise = advise
        self._steps: dict[tuple[int, int], _Steps] = {}  # (pid, device) -> its steps
        self._capacity: dict[tuple[int, int], int] = {}  # (pid, device) -> what it can allocate now
        self._said: dict[_SaidKey, _Said] = {}  # each thing said, as last said
        self.verdicts: dict[tuple[int, int], Verdict] = {}  # (pid, device) -> the latest step forecast
        self._step_errors_said: set[int] = set()  # pids whose failing step hook was said
        self._lock = threading.Lock()
        self.ooms: list[OomEvent] = []

    def set_pressure_sender(self, send_pressure: SendPressure | None) -> None:
        """Where pressure notices go (the listener, once bound)."""
        self._send_pressure = send_pressure

    def step_history(self, pid: int, device: int) -> StepHistory | None:
        """The steps kept of one process on one device (bounded: see `StepHistory`)."""
        with self._lock:
            track = self._steps.get((pid, device))
            return track.history if track is not None else None

    def on_report(self, report: AgentReport) -> None:
        with self._lock:
            if report.kind == "hello":
                self._event({"event": "hello", "pid": report.pid, "t": report.t, "torch": report.torch_version})
            elif report.kind == "stats":
                self._on_step_errors(report)
                for device in report.devices:
                    self._on_stats(report, device)
            elif report.kind == "oom" and report.oom is not None:
                self._on_oom(report.t, report.oom)
            elif report.kind == "steps" and report.steps:
                self._on_steps(report.pid, report.t, report.steps)

    def _say(self, lines: list[str]) -> None:
        for line in lines:
            print(f"vramwatch: {line}", file=self._out, flush=True)

    def _event(self, event: dict[str, Any]) -> None:
        if self._events is not None:
            event["wall"] = self._wall()
            self._events.write(json.dumps(event) + "\n")
            self._events.flush()

    def _on_step_errors(self, report: AgentReport) -> None:
        """Say once per process that its optimizer step hook fails: every stats message carries the count so
        far, and it only grows, so saying it at each one would repeat the same news every second."""
        if not report.step_errors or report.pid in self._step_errors_said:
            return
        self._step_errors_said.add(report.pid)
        self._say(
            [
                f"warning: pid {report.pid}: the agent's optimizer step hook failed ({report.step_errors} so far; "
                "the trainer's stderr has the first error): steps are still counted, but their peaks may be "
                "missing, so the step forecast may be late"
            ]
        )
        self._event({"event": "step_errors", "pid": report.pid, "t": report.t, "count": report.step_errors})

    def _on_stats(self, report: AgentReport, device: AgentDevice) -> None:
        stats = device.stats
        key = (report.pid, stats.device)
        track = self._tracks.setdefault(key, _Track())
        track.samples.append((report.t, device))
        while track.samples and report.t - track.samples[0][0] > self.config.history_seconds:
            track.samples.popleft()
        self._event(
            {
                "event": "stats",
                "pid": report.pid,
                "device": stats.device,
                "t": report.t,
                "allocated_bytes": stats.allocated_bytes,
                "reserved_bytes": stats.reserved_bytes,
                "inactive_split_bytes": stats.inactive_split_bytes,
                "num_alloc_retries": stats.num_alloc_retries,
                "num_ooms": stats.num_ooms,
                "free_bytes": device.free_bytes,
                "sample_seconds": report.sample_seconds,
            }
        )
        usable = device.usable_bytes or device.total_bytes
        if device.usable_bytes is not None:
            self._capacity[(report.pid, stats.device)] = device.usable_bytes
        times = [t for t, _ in track.samples]
        window = [d.stats for _, d in track.samples]
        if usable:
            self._check_fragmentation(report, device, track, times, usable)
            self._check_pressure(report, device, track, usable)
        if not track.leak_reported:
            verdict = classify_growth(
                times, [s.allocated_bytes for s in window], [s.reserved_bytes for s in window], self.config.growth
            )
            if verdict == "leak":
                track.leak_reported = True
                span = times[-1] - times[0]
                first, last = window[0].allocated_bytes or 0, stats.allocated_bytes or 0
                self._say(
                    [
                        f"pid {report.pid} on cuda:{stats.device}: allocated memory grew {size(last - first)} "
                        f"in {span:.0f} s: tensors are being kept alive (a leak), not allocator caching"
                    ]
                )
                self._event(
                    {"event": "growth", "class": "leak", "pid": report.pid, "device": stats.device, "t": report.t}
                )

    def _check_fragmentation(
        self, report: AgentReport, device: AgentDevice, track: _Track, times: list[float], usable: int
    ) -> None:
        finding = detect_fragmentation(
            [d.stats for _, d in track.samples],
            times,
            usable,
            self.config.fragmentation,
            gpu_uuid=device.gpu_uuid,
        )
        if finding is None:
            track.fragmentation = None
            return
        if track.fragmentation in {finding.severity.value, "critical"}:
            return
        track.fragmentation = finding.severity.value
        self._say(
            [
                f"{finding.severity.value}: fragmentation in pid {report.pid} on cuda:{device.stats.device}: "
                f"{finding.message}",
                "  try PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (PyTorch's remedy for fragmentation)",
            ]
        )
        self._event(
            {
                "event": "finding",
                "kind": finding.kind,
                "severity": finding.severity.value,
                "pid": report.pid,
                "device": device.stats.device,
                "t": finding.t,
                "numbers": finding.numbers,
            }
        )

    def _check_pressure(self, report: AgentReport, device: AgentDevice, track: _Track, usable: int) -> None:
        stats = device.stats
        if device.free_bytes is None or stats.reserved_bytes is None or stats.allocated_bytes is None:
            return
        headroom = device.free_bytes + max(0, stats.reserved_bytes - stats.allocated_bytes)
        share = headroom / usable
        if track.pressure_sent:
            if share > self.config.pressure_rearm_share:
                track.pressure_sent = False
            return
        if share >= self.config.pressure_headroom_share or self._send_pressure is None:
            return
        level = "critical" if share < self.config.pressure_headroom_share / 2 else "warning"
        reason = f"{size(headroom)} of {size(usable)} left on cuda:{stats.device}"
        sent = self._send_pressure(report.pid, level, reason)
        track.pressure_sent = True
        self._say(
            [f"memory pressure in pid {report.pid}: {reason}; " + ("notified it" if sent else "could not notify it")]
        )
        self._event(
            {
                "event": "pressure",
                "pid": report.pid,
                "device": stats.device,
                "t": report.t,
                "level": level,
                "headroom_bytes": headroom,
                "usable_bytes": usable,
                "sent": sent,
            }
        )

    def _on_steps(self, pid: int, t: float, records: tuple[StepRecord, ...]) -> None:
        for device in sorted({r.device for r in records}):
            key = (pid, device)
            track = self._steps.get(key)
            if track is None:
                history = StepHistory(
                    self.schedule, max_records=self.config.max_step_records, recent=self.config.recent_step_records
                )
                track = self._steps[key] = _Steps(history)
            track.history.extend([r for r in records if r.device == device])
            track.last_report = t
            if track.last_forecast is not None and t - track.last_forecast < self.config.forecast_every_seconds:
                continue
            self._forecast(key, track, t)
        self._announce(t)

    def _forecast(self, key: tuple[int, int], track: _Steps, t: float) -> None:
        """Redo one process's forecast on one device; log it to `events`."""
        pid, device = key
        capacity = self._capacity.get(key)
        prof = profile(track.history.for_profile(), self.schedule)
        if capacity is None or prof is None:
            return
        track.last_forecast = t
        verdict = forecast(prof, self.schedule, capacity)
        self.verdicts[key] = verdict
        text = describe(verdict, prof, self.schedule)
        track.forecast = (prof, verdict, text, self._severity(prof, verdict))
        self._event(
            {
                "event": "step_forecast",
                "pid": pid,
                "device": device,
                "t": t,
                "step": prof.step,
                "outcome": verdict.outcome.value,
                "at_step": verdict.step,
                "phase": verdict.phase,
                "upper_bound": verdict.upper_bound,
                "needed_bytes": verdict.needed_bytes,
                "capacity_bytes": verdict.capacity_bytes,
                "growth_bytes_per_step": prof.growth_bytes_per_step,
                "step_peak_allocated_bytes": prof.step_peak_allocated_bytes,
                "phases": {p.name: p.peak_allocated_bytes for p in prof.phases},
                "message": text,
            }
        )

    def _severity(self, prof: StepProfile, verdict: Verdict) -> str:
        """Critical when the failing phase is the next of its kind or the failing step is minutes away; a
        warning at most when the failing phase was measured only with the start-up (it may run out, not will:
        no pressure notice for a bound)."""
        if verdict.outcome is Outcome.FITS or verdict.step is None:
            return "info"
        if verdict.upper_bound:
            return "warning"
        seconds = (verdict.step - prof.step) * prof.step_seconds if prof.step_seconds else None
        next_of_its_kind = verdict.phase is not None and all(
            (p.period or 0) >= verdict.step - prof.step for p in prof.phases if p.name == verdict.phase
        )
        close = seconds is not None and seconds <= self.config.critical_seconds
        return "critical" if close or next_of_its_kind else "warning"

    def _announce(self, t: float) -> None:
        """Say the forecast of the process that runs out first, when it is news (see the module's docstring)."""
        live = {
            key: track.forecast
            for key, track in self._steps.items()
            # A process silent for the history's length has ended (or stopped stepping): not this run's future.
            if track.forecast is not None and t - track.last_report <= self.config.history_seconds
        }
        failing = {k: f for k, f in live.items() if f[1].outcome is not Outcome.FITS and f[1].step is not None}
        if not failing:
            return
        (pid, device), (prof, verdict, text, severity) = min(
            failing.items(), key=lambda kv: (kv[1][1].step or 0, kv[1][1].spare_bytes)
        )
        if verdict.step is None:  # filtered above; says so to the type checker
            return
        key: _SaidKey = (verdict.outcome, verdict.phase, severity)
        said = self._said.get(key)
        if said is not None:
            closer = said.fail_step - verdict.step
            if closer <= self.config.repeat_closer_share * max(1, said.fail_step - said.at_step):
                return
        self._said[key] = _Said(verdict.step, prof.step)
        seconds = (verdict.step - prof.step) * prof.step_seconds if prof.step_seconds else None
        when = f" (in about {seconds:.0f} s)" if seconds is not None else ""
        where = f"pid {pid}" + (f" on cuda:{device}" if len({d for _, d in live}) > 1 else "")
        others = sorted({p for p, _ in failing} - {pid})
        lines = [f"{severity}: {where} at step {prof.step:,}: {text}{when}"]
        if others:
            lines.append("  also forecast to run out: pid " + ", ".join(map(str, others)))
        lines += [f"  {line}" for line in (self._advise(verdict) if self._advise is not None else [])]
        if severity == "critical" and is_save(verdict.phase):
            # The notice asks the trainer to save a checkpoint: here saving is what runs out of memory.
            lines.append("  not asking it to save a checkpoint: the save itself is what will run out of memory")
        self._say(lines)
        if severity == "critical" and self._send_pressure is not None and not is_save(verdict.phase):
            for failing_pid in sorted({p for p, _ in failing}):
                self._send_pressure(failing_pid, "critical", text)

    def _on_oom(self, t: float, oom: OomEvent) -> None:
        self.ooms.append(oom)
        self._say(format_oom(oom))
        self._event(
            {
                "event": "oom",
                "pid": oom.pid,
                "device": oom.device,
                "t": t,
                "observed": oom.observed,
                "requested_bytes": oom.requested_bytes,
                "allocated_bytes": oom.allocated_bytes,
                "reserved_bytes": oom.reserved_bytes,
                "reserved_unallocated_bytes": oom.reserved_unallocated_bytes,
                "inactive_split_bytes": oom.inactive_split_bytes,
                "device_free_bytes": oom.device_free_bytes,
                "snapshot": oom.snapshot_path,
            }
        )
