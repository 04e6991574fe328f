"""The built-in check of `vramwatch run` when no daemon watches: agent reports in, warnings to stderr out.

Deliberately small (the daemon's detectors and advisor do the full job): per process and device it keeps
the last two minutes of samples and
- raises the fragmentation finding (`detectors.fragmentation`) once per episode;
- says once when allocated memory grows (a leak: tensors kept alive), as opposed to caching: for a process
  that counts optimizer steps, from its step profile (the memory kept between steps), else from the floor of
  its samples;
- sends a pressure notice to the process when its headroom (free on the device plus its own cached but
  unallocated memory) falls under `pressure_headroom_share` of what it can use, so that registered
  callbacks (the Lightning / transformers adapters) save a checkpoint while there is still time; re-armed
  once headroom recovers; withheld when the step forecast says that save would itself run out (below);
- prints the OOM post-mortem: what was asked, what PyTorch held, how much of it was unusable cache;
- with the agent counting optimizer steps, forecasts in steps (`steps.py`) against the trainer's schedule,
  for every process and device that reports steps (DDP ranks on one box), and says once when the run will
  not reach its end (a sampling phase, a save, growth per step), for the process that runs out first: a
  warning ahead of it, critical when the failing phase is the next one or under two minutes away (and then
  sends the pressure notice, so that a registered callback saves before it). A save needs memory of its own:
  with a save measured (`steps.last_save`), the forecast is also critical, and the notice sent, a lead
  (`save_lead_steps`, or `critical_seconds` of steps, the larger) before the last step a save fits, which a
  leak can bring well before the failing step; a save that fits no longer is not asked for (it would itself
  run out; a figure that is only an upper bound may fit, and is asked for all the same), nor, with no save
  measured, when the failing phase is a save; with several ranks, none is asked when one's save would run
  out (saving is collective). It says it again only when that changes to something not said before
  (outcome, phase, severity, whether it asks for a save) or the failing step comes more than 10 % of the
  remaining steps closer than when it was said: a noisy leak moves its forecast at every redo, and can flip
  it between a training step and a peak it learned, which is not news. A failing phase measured only with
  the start-up (`Verdict.upper_bound`: it may run out) is a warning, never critical;
- says once per process when the agent's step hook fails (`step_errors`): its peaks may be missing.

Every conclusion is also written as a JSON line to `events` when given (the GPU proof scripts read it).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from ..detectors.fragmentation import FragmentationConfig, GrowthConfig, classify_growth, detect_fragmentation
from ..detectors.oom import fragmented_at_oom
from ..model import OomEvent, StepRecord, TorchStats
from ..stephistory import MAX_RECORDS, RECENT_RECORDS, StepHistory, is_save
from ..steps import (
    Outcome,
    SaveFit,
    Schedule,
    StepProfile,
    Verdict,
    describe,
    forecast,
    last_save,
    phase_words,
    profile,
)
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
    # With a save's cost measured, the notice goes out at least this many steps (or `critical_seconds` of steps,
    # the larger) before the last step a save fits: the adapters agree across ranks every 10 steps
    # (`sync_every`), so a notice can wait that long to be acted on, plus a report's second and a redo's 5 s.
    save_lead_steps: int = 12
    # A forecast said is said again when its failing step comes this share of the remaining steps closer.
    repeat_closer_share: float = 0.10
    # A process that reports steps is called a leak from its steps only once this many are measured: the step
    # profile skips its first fifth as warm-up, and a run's first buckets (each new shape's caches) can still
    # rise past a short run's warm-up; by then they have passed (the forecast reads the growth from the start).
    leak_min_steps: int = 100
    max_step_records: int = MAX_RECORDS  # per process and device (`StepHistory`: phases kept, old steps merged)
    recent_step_records: int = RECENT_RECORDS


@dataclass(slots=True)
class _Track:
    samples: deque[tuple[float, AgentDevice]] = field(default_factory=deque)
    fragmentation: str | None = None  # severity already reported in this episode
    leak_reported: bool = False
    pressure_sent: bool = False


@dataclass(frozen=True, slots=True)
class _Forecast:
    """One process's latest step forecast on one device, and what it decides."""

    prof: StepProfile
    verdict: Verdict
    save: SaveFit | None  # until when a checkpoint save fits; None: no save measured, its cost is unknown
    save_by: int | None  # the step by which a save is asked for (its last step less the lead), when it fits
    text: str
    severity: str


@dataclass(slots=True)
class _Steps:
    history: StepHistory
    last_report: float = 0.0  # monotonic receipt time of its latest records
    last_forecast: float | None = None
    forecast: _Forecast | None = None  # the latest


#: What a step forecast says: (outcome, phase, severity, whether it asks for a save).
_SaidKey = tuple[Outcome, str | None, str, bool]


def _save_runs_out(save: SaveFit | None, phase: str | None = None) -> bool:
    """Whether the checkpoint a pressure notice asks for would itself run out of memory, so that no notice is
    sent: the save's measured need fits no longer (a figure that is only an upper bound may still fit: asked
    all the same, the run being lost otherwise), or, with no save measured, the failing phase is a save."""
    if save is None:
        return is_save(phase)
    return not save.fits and not save.upper_bound


def _save_words(save: SaveFit) -> str:
    """What a save needs, as a clause: "a checkpoint save needs +1.50 GiB beyond a training step"."""
    bound = "at most " if save.upper_bound else ""
    extra = f"{bound}+{size(save.extra_bytes)} beyond" if save.extra_bytes > 0 else "no more than"
    text = f"a checkpoint save needs {extra} a training step"
    if save.shared_with:
        text += f" (measured only together with {phase_words('+'.join(save.shared_with))})"
    elif save.with_start_up:
        text += " (measured only together with the start-up)"
    return text


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
            leak = self._leak(report.pid, stats.device, times, window)
            if leak is not None:
                track.leak_reported = True
                grew, source = leak
                self._say(
                    [
                        f"pid {report.pid} on cuda:{stats.device}: allocated memory {grew}: tensors are being kept "
                        "alive (a leak), not allocator caching"
                    ]
                )
                self._event(
                    {
                        "event": "growth",
                        "class": "leak",
                        "source": source,
                        "pid": report.pid,
                        "device": stats.device,
                        "t": report.t,
                    }
                )

    def _leak(self, pid: int, device: int, times: list[float], window: list[TorchStats]) -> tuple[str, str] | None:
        """How a process's allocated memory grew, and from what ("steps" or "samples"), when that is a leak.

        A process that counts optimizer steps is judged by its step profile alone: the memory kept between steps,
        which is the same moment of every step. Its 1 Hz samples fall anywhere in a step (mid-step is an
        activation's worth higher), and its warm-up, first sample images or a new bucket step it up once; over the
        samples' short window that reads as a rise in every part, a false leak on a healthy run (seen on the H200:
        "grew 307.6 MiB in 11 s" on a run that then ended normally). The profile says growth where memory stays
        behind from step to step, and it is a leak once that adds up to `growth.min_rise_bytes` over the steps
        measured, and `leak_min_steps` are (a short run's first buckets are not a leak). A process that has
        reported no step (none counted, a loop without `torch.optim`, or not yet) is judged by the floor of its
        samples (`classify_growth`)."""
        steps = self._steps.get((pid, device))
        if steps is not None:
            fc = steps.forecast
            if fc is None:
                return None
            prof = fc.prof
            grown = prof.growth_bytes_per_step * prof.step
            if prof.step < self.config.leak_min_steps:
                return None
            if prof.growth_bytes_per_step <= 0 or grown < self.config.growth.min_rise_bytes:
                return None
            return f"grows {size(prof.growth_bytes_per_step)} a step (at step {prof.step:,})", "steps"
        verdict = classify_growth(
            times, [s.allocated_bytes for s in window], [s.reserved_bytes for s in window], self.config.growth
        )
        if verdict != "leak":
            return None
        first, last = window[0].allocated_bytes or 0, window[-1].allocated_bytes or 0
        return f"grew {size(last - first)} in {times[-1] - times[0]:.0f} s", "samples"

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
        steps = self._steps.get((report.pid, stats.device))
        fc = steps.forecast if steps is not None else None
        # The notice asks for a checkpoint: not one that the step forecast says would itself run out.
        withheld = fc is not None and _save_runs_out(fc.save)
        sent = False if withheld else self._send_pressure(report.pid, level, reason)
        track.pressure_sent = True
        if withheld and fc is not None and fc.save is not None:
            outcome = f"not notifying it: {_save_words(fc.save)} and no longer fits (it would itself run out of memory)"
        else:
            outcome = "notified it" if sent else "could not notify it"
        self._say([f"memory pressure in pid {report.pid}: {reason}; {outcome}"])
        self._event(
            {
                "event": "pressure",
                "source": "headroom",
                "pid": report.pid,
                "device": stats.device,
                "t": report.t,
                "level": level,
                "headroom_bytes": headroom,
                "usable_bytes": usable,
                **self._save_fields(fc),
                "withheld": withheld,
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
        save = last_save(prof, self.schedule, capacity)
        self.verdicts[key] = verdict
        text = describe(verdict, prof, self.schedule)
        track.forecast = _Forecast(
            prof, verdict, save, self._save_by(prof, save), text, self._severity(prof, verdict, save)
        )
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
                **self._save_fields(track.forecast),
                "message": text,
            }
        )

    @staticmethod
    def _save_fields(fc: _Forecast | None) -> dict[str, Any]:
        """What events say of a save's fit: `last_save_step` null with `save_needed_bytes` given: it no longer
        fits; all null: no save measured."""
        save = fc.save if fc is not None else None
        return {
            "last_save_step": save.last_step if save is not None else None,
            "save_by_step": fc.save_by if fc is not None else None,
            "save_needed_bytes": save.needed_bytes if save is not None else None,
            "save_upper_bound": save.upper_bound if save is not None else None,
        }

    def _save_by(self, prof: StepProfile, save: SaveFit | None) -> int | None:
        """The step by which the notice asks for a save, so that it still fits when the trainer acts on it: the
        last step a save fits less `save_lead_steps`, or less `critical_seconds` of steps at the measured pace,
        the larger; None without a save measured or when none fits any more."""
        if save is None or save.last_step is None:
            return None
        paced = math.ceil(self.config.critical_seconds / prof.step_seconds) if prof.step_seconds else 0
        return save.last_step - max(self.config.save_lead_steps, paced)

    def _severity(self, prof: StepProfile, verdict: Verdict, save: SaveFit | None) -> str:
        """Critical when the failing phase is the next of its kind, the failing step is minutes away, or a
        save's time has come (`_save_by` reached: it must be asked for now to fit, or it fits no longer); a
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
        save_by = self._save_by(prof, save)
        save_due = save is not None and (save_by is None or prof.step >= save_by)
        return "critical" if close or next_of_its_kind or save_due else "warning"

    def _announce(self, t: float) -> None:
        """Say the forecast of the process that runs out first, or of one whose save's time has come, when it is
        news; when critical, ask the failing processes to save unless the save would run out (see the module's
        docstring)."""
        live = {
            key: track.forecast
            for key, track in self._steps.items()
            # A process silent for the history's length has ended (or stopped stepping): not this run's future.
            if track.forecast is not None and t - track.last_report <= self.config.history_seconds
        }
        failing = {
            k: f for k, f in live.items() if f.verdict.outcome is not Outcome.FITS and f.verdict.step is not None
        }
        if not failing:
            return
        # Critical first: a save due in one process comes before a later warning's failing step in another.
        urgent = sorted(
            failing.items(),
            key=lambda kv: (kv[1].severity != "critical", kv[1].verdict.step, kv[1].verdict.spare_bytes),
        )
        (pid, device), fc = urgent[0]
        prof, verdict = fc.prof, fc.verdict
        if verdict.step is None:  # filtered above; says so to the type checker
            return
        # With several ranks saving is collective (the adapters agree on it): a save that would run out in one
        # of them runs out for all, so none is asked.
        blocking = sorted({p for (p, _), f in failing.items() if _save_runs_out(f.save, f.verdict.phase)})
        asks = fc.severity == "critical" and not blocking
        key: _SaidKey = (verdict.outcome, verdict.phase, fc.severity, asks)
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
        lines = [f"{fc.severity}: {where} at step {prof.step:,}: {fc.text}{when}"]
        if others:
            lines.append("  also forecast to run out: pid " + ", ".join(map(str, others)))
        lines += [f"  {line}" for line in (self._advise(verdict) if self._advise is not None else [])]
        save_line = self._save_line(pid, fc, asks, blocking)
        if save_line is not None:
            lines.append(f"  {save_line}")
        self._say(lines)
        if fc.severity != "critical" or self._send_pressure is None:
            return
        notified: set[int] = set()
        for (failing_pid, failing_device), f in urgent:  # each process once, with its most urgent forecast
            if failing_pid in notified:
                continue
            notified.add(failing_pid)
            sent = self._send_pressure(failing_pid, "critical", fc.text) if asks else False
            self._event(
                {
                    "event": "pressure",
                    "source": "forecast",
                    "pid": failing_pid,
                    "device": failing_device,
                    "t": t,
                    "level": "critical",
                    "at_step": f.verdict.step,
                    **self._save_fields(f),
                    "withheld": not asks,
                    "sent": sent,
                }
            )

    @staticmethod
    def _save_line(pid: int, fc: _Forecast, asks: bool, blocking: list[int]) -> str | None:
        """What a save needs, until when it fits and whether the trainer is asked for one, as one line."""
        critical, save = fc.severity == "critical", fc.save
        if asks:
            action = "asking it to save now"
        elif critical and pid in blocking:
            action = "not asking it to save: the save itself would run out of memory"
        elif critical:
            action = (
                f"not asking it to save: a save would run out of memory in pid {', '.join(map(str, blocking))} "
                "(with several ranks saving is collective)"
            )
        elif fc.save_by is not None and not fc.verdict.upper_bound:
            action = f"it will be asked to save from step {fc.save_by:,}"
        else:
            action = None
        if save is None:
            if not critical:
                return None
            unknown = " (what a save needs is not known: none has been measured yet)" if asks else ""
            return f"{action}{unknown}"
        if save.last_step is not None and fc.verdict.step is not None and save.last_step >= fc.verdict.step - 1:
            fit = f"it fits until the run runs out (a save after step {save.last_step:,} at the latest)"
        elif save.last_step is not None:
            fit = f"it fits {'at least' if save.upper_bound else 'only'} until step {save.last_step:,}"
        else:
            fit = "it may no longer fit" if save.upper_bound else "it no longer fits"
        if asks and not save.fits:
            action = "asking it to save now all the same"
        return f"{_save_words(save)}; {fit}" + (f": {action}" if action else "")

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
