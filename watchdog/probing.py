"""`vramwatch probe -- <trainer command>`: will this run fit to the end? A short test run that says so.

The field guide's best advice is "test 100-200 steps before the long run"; this automates it. The probe
runs the command under the agent (`vramwatch run`, counting optimizer steps), stops it once it has seen
`steps` optimizer steps *and* each recurring phase its configuration announces within reach (or at a time
limit), and forecasts the whole run from what it measured (`steps.py`): the training steps' peak, each
phase's peak, growth per step, against what the run can use on this card now.

Phases far in the future are brought into the test where the trainer has a setting for it
(`Trainer.probe_argv`: kohya's `--sample_at_first` samples before step 1), so that a run whose sample images
at step 1,200 will not fit is told so after a few minutes, without reaching step 1,200.

The probe stops the run with SIGINT, the trainers' own interrupt (they do not save on it), then SIGTERM
and SIGKILL if it does not end. A probe that itself runs out of memory reports that as its answer.

Exit codes, for wrapper scripts: `EXIT_*` below.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .advice import TrainerSettings, advise, recognize
from .advice.settings import UNKNOWN
from .advice.trainers import TRAINER_NAMES, by_id
from .agenthost.link import AgentReport
from .agenthost.monitor import format_oom
from .agenthost.runner import run_command
from .detectors.oom import fragmented_at_oom
from .model import OomEvent, StepRecord
from .steps import SAMPLE, SAVE, Outcome, Schedule, StepProfile, Verdict, describe, forecast, phase_words, profile
from .units import duration, size

SHOWN = 3  # setting changes a terminal report lists (the JSON has them all, ranked)

EXIT_FITS = 0
EXIT_FAILED = 1  # the command ended before any step was measured, or its steps could not be read
EXIT_USAGE = 2
EXIT_OOM = 3  # the probe itself ran out of GPU memory (the same code as `attach`'s OOM)
EXIT_PHASE = 4  # will run out in a recurring phase (sample images, a save)
EXIT_GROWTH = 5  # will run out at a training step, from growth per step
EXIT_UNMEASURED = 6  # fits as far as measured, but a phase the configuration announces was not measured


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    """How long a probe runs and how it ends."""

    steps: int = 200  # optimizer steps to measure at least
    max_seconds: float = 1800.0  # stop at this time whatever was measured
    reach_steps: int = 1000  # wait for an announced phase whose first occurrence comes within this many steps
    bring_forward: bool = True  # let the trainer's settings bring a phase into the test (kohya --sample_at_first)
    stop_seconds: float = 30.0  # after SIGINT before SIGTERM, and after SIGTERM before SIGKILL


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What a probe measured and concluded."""

    argv: tuple[str, ...]  # what ran (with the phases brought forward)
    trainer: str
    schedule: Schedule
    notes: tuple[str, ...]
    seconds: float
    stopped: str  # "measured", "time", "exited" (the command ended by itself) or "oom"
    exit_status: int | None  # the command's own
    pid: int | None  # the process whose steps were measured
    profile: StepProfile | None
    verdict: Verdict | None
    capacity_bytes: int | None
    oom: OomEvent | None
    oom_after_step: int | None  # the last step completed before the OOM
    # The phase that ran out of memory in the probe: "sample", "save", or "sample+save" when both ran after
    # that step (the probe cannot tell which of the two it was).
    phase_oom: str | None = None
    records: tuple[StepRecord, ...] = ()  # the measured process's steps
    advice: tuple[tuple[str, str], ...] = ()  # (change in the trainer's words, expected saving)

    @property
    def runs_out(self) -> bool:
        """The answer is "it will not fit" (or it did not, in the probe): changes are worth trying."""
        return self.exit_code in {EXIT_OOM, EXIT_PHASE, EXIT_GROWTH}

    @property
    def exit_code(self) -> int:
        if self.phase_oom is not None:
            return EXIT_PHASE
        if self.oom is not None:
            return EXIT_OOM
        if self.verdict is None:
            return EXIT_FAILED
        if self.verdict.outcome is Outcome.PHASE:
            return EXIT_PHASE
        if self.verdict.outcome is Outcome.GROWTH:
            return EXIT_GROWTH
        return EXIT_UNMEASURED if self.verdict.unmeasured else EXIT_FITS


def schedule_of(settings: TrainerSettings) -> Schedule:
    """The run's end, sampling and saving in optimizer steps, each spelt as its configuration states it.

    Intervals given in epochs stay unknown (an epoch's steps depend on the dataset's size, which the
    advisor does not read): the forecast names those phases as not measured until it has seen them.
    """
    values: dict[str, int | None] = {}
    spelling: list[tuple[str, str]] = []
    for item, setting in (
        ("max_steps", "max_train_steps"),
        ("sample_every", "sample_every_n_steps"),
        ("save_every", "save_every_n_steps"),
    ):
        value = getattr(settings, setting)
        values[item] = value if isinstance(value, int) and value > 0 else None
        source = settings.source_of(setting)
        if values[item] is not None and source is not None:
            detail = f"{source.detail} {value}" if source.detail.startswith("--") else source.detail
            spelling.append((item, detail))
    return Schedule(
        max_steps=values["max_steps"],
        sample_every=values["sample_every"],
        sample_at_first=settings.sample_at_first is True,
        save_every=values["save_every"],
        spelling=tuple(spelling),
    )


@dataclass(slots=True)
class _Collector:
    """The agents' reports during the probe (listener thread in, watcher and main thread out)."""

    records: dict[int, list[StepRecord]] = field(default_factory=dict)
    capacity: dict[int, int] = field(default_factory=dict)  # pid -> reserved + free at its last step
    usable: dict[int, int] = field(default_factory=dict)  # pid -> reserved + free at its last sample
    ooms: list[tuple[OomEvent, int]] = field(default_factory=list)  # (event, steps completed before it)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_report(self, report: AgentReport) -> None:
        with self.lock:
            if report.kind == "stats":
                for device in report.devices:
                    if device.usable_bytes is not None:
                        self.usable[report.pid] = device.usable_bytes
            elif report.kind == "steps":
                self.records.setdefault(report.pid, []).extend(report.steps)
                if report.pid in self.usable:
                    self.capacity[report.pid] = self.usable[report.pid]
            elif report.kind == "oom" and report.oom is not None:
                done = self.records.get(report.pid, [])
                self.ooms.append((report.oom, done[-1].last_step if done else 0))

    def main(self) -> tuple[int | None, list[StepRecord]]:
        """The process with the most steps (a launcher's worker, not the launcher), and its records."""
        with self.lock:
            if not self.records:
                return None, []
            pid = max(self.records, key=lambda p: self.records[p][-1].last_step)
            return pid, list(self.records[pid])


def _measured(records: Sequence[StepRecord], schedule: Schedule, config: ProbeConfig) -> bool:
    """Enough steps, and every announced phase within reach seen (its record after the phase has ended)."""
    if not records or records[-1].last_step < config.steps:
        return False
    prof = profile(records, schedule)
    if prof is None:
        return False
    for name in prof.unmeasured:
        every = schedule.every(name)
        if every is not None and every <= config.reach_steps:
            return False
    return True


def _stop(proc: subprocess.Popen[bytes], ended: threading.Event, seconds: float) -> None:
    """SIGINT (the trainer's own save-less interrupt), then SIGTERM, then SIGKILL, each after `seconds`."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        if ended.wait(seconds):
            return


def bring_forward(argv: Sequence[str], settings: TrainerSettings) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The command with its phases brought into the test by the trainer's own settings, and what changed."""
    if settings.trainer == UNKNOWN:
        return tuple(argv), ()
    probe_argv = by_id(settings.trainer).probe_argv
    if probe_argv is None:
        return tuple(argv), ()
    return probe_argv(argv, settings)


def run_probe(
    argv: Sequence[str],
    config: ProbeConfig | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    out: TextIO | None = None,
    clock: Callable[[], float] = time.monotonic,
    child_stdout: int | None = None,
) -> ProbeResult:
    """Run `argv` under the agent until it is measured, stop it, and forecast the whole run.

    When a phase brought before step 1 runs out of memory there, that OOM could as well be the first
    training step's: the probe then runs the command as given, and if its steps pass step 1, the phase
    was what did not fit.
    """
    config = config or ProbeConfig()
    base = dict(os.environ if env is None else env)
    where = cwd if cwd is not None else str(Path.cwd())
    settings = recognize(argv, cwd=where, env=base)
    command, notes = bring_forward(argv, settings) if config.bring_forward else (tuple(argv), ())
    schedule = schedule_of(recognize(command, cwd=where, env=base) if command != tuple(argv) else settings)
    result = _probe_once(
        command,
        schedule,
        trainer=settings.trainer,
        notes=notes,
        config=config,
        env=base,
        out=out,
        clock=clock,
        child_stdout=child_stdout,
    )
    if result.oom is not None and result.oom_after_step == 0 and command != tuple(argv):
        again = _probe_once(
            tuple(argv),
            schedule_of(settings),
            trainer=settings.trainer,
            notes=(*notes, "it ran out of memory before step 1 with that change: probed again as given"),
            config=config,
            env=base,
            out=out,
            clock=clock,
            child_stdout=child_stdout,
        )
        if again.oom is None or (again.oom_after_step or 0) > 0:
            result = dataclasses.replace(again, phase_oom=SAMPLE, oom=again.oom or result.oom)
        else:
            result = again
    elif result.oom is not None and schedule.phases_after(result.oom_after_step or 0):
        result = dataclasses.replace(
            result, phase_oom="+".join(sorted(schedule.phases_after(result.oom_after_step or 0)))
        )
    return _with_advice(result, settings)


def _probe_once(
    command: tuple[str, ...],
    schedule: Schedule,
    *,
    trainer: str,
    notes: tuple[str, ...],
    config: ProbeConfig,
    env: Mapping[str, str],
    out: TextIO | None,
    clock: Callable[[], float],
    child_stdout: int | None,
) -> ProbeResult:
    """One test run: until measured (or out of memory, or out of time), then stopped."""
    collector = _Collector()
    ended = threading.Event()
    stopped: list[str] = []
    started = clock()

    def watch(proc: subprocess.Popen[bytes]) -> None:
        while not ended.wait(0.5):
            if collector.ooms:
                stopped.append("oom")
                return  # the trainer ends by itself; an interrupt now could lose its own report
            _, records = collector.main()
            if _measured(records, schedule, config):
                stopped.append("measured")
            elif clock() - started > config.max_seconds:
                stopped.append("time")
            else:
                continue
            _stop(proc, ended, config.stop_seconds)
            return

    def on_start(proc: subprocess.Popen[bytes]) -> None:
        threading.Thread(target=watch, args=(proc,), name="vramwatch-probe", daemon=True).start()

    try:
        status = run_command(
            command,
            on_report=collector.on_report,
            builtin_checks=False,
            stderr=out,
            env=env,
            on_start=on_start,
            exit_status_seconds=0.0,
            child_stdout=child_stdout,
        )
    finally:
        ended.set()
    pid, records = collector.main()
    prof = profile(records, schedule) if records else None
    capacity = collector.capacity.get(pid) if pid is not None else None
    verdict = forecast(prof, schedule, capacity) if prof is not None and capacity is not None else None
    oom, oom_after = collector.ooms[0] if collector.ooms else (None, None)
    return ProbeResult(
        argv=command,
        trainer=trainer,
        schedule=schedule,
        notes=notes,
        seconds=clock() - started,
        stopped=stopped[0] if stopped else ("oom" if oom is not None else "exited"),
        exit_status=status,
        pid=pid,
        profile=prof,
        verdict=verdict,
        capacity_bytes=capacity,
        oom=oom,
        oom_after_step=oom_after,
        records=tuple(records),
    )


def watched_run(argv: Sequence[str], **options: Any) -> int:
    """`vramwatch run`: the command under the agent, its steps forecast against its own schedule.

    The built-in check then says, in the trainer's words, when the run will not reach its end.
    """
    settings = recognize(argv, cwd=str(Path.cwd()), env=dict(os.environ))

    def advise_verdict(verdict: Verdict) -> list[str]:
        kinds: tuple[str, ...] = ("sampling", "plateau") if verdict.phase == SAMPLE else ("plateau",)
        if verdict.outcome is Outcome.GROWTH:
            kinds = ("growth",)
        changes: list[str] = []
        for kind in kinds:
            changes += [s.change for s in advise(settings, kind).suggestions if s.change not in changes]
        return [f"try: {change}" for change in changes[:3]]

    return run_command(argv, schedule=schedule_of(settings), advise=advise_verdict, **options)


def _advice_kinds(result: ProbeResult) -> tuple[str, ...]:
    """The advisor's situations for a probe's answer, most specific first."""
    if result.phase_oom is not None:
        return ("sampling", "plateau") if SAMPLE in result.phase_oom.split("+") else ("plateau",)
    if result.oom is not None:
        o = result.oom
        fragmented = fragmented_at_oom(
            requested_bytes=o.requested_bytes,
            reserved_bytes=o.reserved_bytes,
            allocated_bytes=o.allocated_bytes,
            device_free_bytes=o.device_free_bytes,
        )
        return ("fragmentation",) if fragmented else ("spike",)
    verdict = result.verdict
    if verdict is None or verdict.outcome is Outcome.FITS:
        return ()
    if verdict.outcome is Outcome.PHASE:
        return ("sampling", "plateau") if verdict.phase == SAMPLE else ("plateau",)
    if result.profile is not None and result.profile.growth_bytes_per_step > 0:
        return ("growth",)
    return ("spike",)


def _with_advice(result: ProbeResult, settings: TrainerSettings) -> ProbeResult:
    changes: list[tuple[str, str]] = []
    for kind in _advice_kinds(result):
        for s in advise(settings, kind).suggestions:
            if s.change not in (c for c, _ in changes):
                changes.append((s.change, s.expected_saving))
    if not changes:
        return result
    return dataclasses.replace(result, advice=tuple(changes))


@dataclass(frozen=True, slots=True)
class Tried:
    """One suggested change, applied to the command and probed: `--try N`."""

    change: str  # as the advisor wrote it
    expected: str  # the saving the rule expects
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]  # environment variables the change sets
    result: ProbeResult


_FLAG = re.compile(r"--[A-Za-z0-9][\w-]*")
_VARIABLE = re.compile(r"([A-Z_][A-Z0-9_]*)=(\S+)")


def applied(argv: Sequence[str], change: str) -> tuple[tuple[str, ...], dict[str, str]] | None:
    """The command with one suggested change applied, and the environment it sets; None when the change is
    not a command-line flag or an environment variable (a config file, a prompt file, code): those are not
    applied (a copied config file is not built yet).

    `--flag value` replaces the flag's value where the command has it, or is appended; a trailing note in
    parentheses is not part of the change.
    """
    text = change.split("  (", maxsplit=1)[0].strip()
    variable = _VARIABLE.fullmatch(text)
    if variable is not None:
        return tuple(argv), {variable.group(1): variable.group(2)}
    words = text.split()
    pairs: list[tuple[str, str | None]] = []
    i = 0
    while i < len(words):
        if not _FLAG.fullmatch(words[i]):
            return None
        value = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--") else None
        pairs.append((words[i], value))
        i += 2 if value is not None else 1
    if not pairs:
        return None
    out = list(argv)
    for flag, value in pairs:
        out = _set_flag(out, flag, value)
    return tuple(out), {}


def _set_flag(argv: list[str], flag: str, value: str | None) -> list[str]:
    for i, word in enumerate(argv):
        if word.startswith(flag + "="):
            return [*argv[:i], flag if value is None else f"{flag}={value}", *argv[i + 1 :]]
        if word == flag:
            if value is None:
                return argv
            has_value = i + 1 < len(argv) and not argv[i + 1].startswith("--")
            return [*argv[: i + 1], value, *argv[i + (2 if has_value else 1) :]]
    return [*argv, flag, *([value] if value is not None else [])]


def try_changes(
    result: ProbeResult,
    argv: Sequence[str],
    count: int,
    config: ProbeConfig | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    out: TextIO | None = None,
    child_stdout: int | None = None,
) -> list[Tried]:
    """The field guide's loop, automated: probe again with each of the top `count` suggested changes that
    can be applied to the command line or the environment, one at a time, and measure what each did."""
    base = dict(os.environ if env is None else env)
    tried: list[Tried] = []
    for change, expected in result.advice:
        if len(tried) >= count:
            break
        if expected.startswith(("none", "no memory")):
            continue  # not a memory change (kohya_resumable: periodic state saves)
        made = applied(argv, change)
        if made is None:
            continue
        new_argv, variables = made
        probed = run_probe(new_argv, config, env={**base, **variables}, cwd=cwd, out=out, child_stdout=child_stdout)
        tried.append(Tried(change, expected, new_argv, tuple(variables.items()), probed))
    return tried


def _tried_line(t: Tried, base: ProbeResult) -> str:
    """ "with `--gradient_checkpointing`: fits to step 3,000 ...; step peak 15.20 GiB (-31 %); steps 24 % slower"."""
    text = f"with `{t.change}`: {verdict_text(t.result)}"
    prof, was = t.result.profile, base.profile
    if prof is not None:
        text += f"; step peak {size(prof.step_peak_allocated_bytes)}"
        if was is not None and was.step_peak_allocated_bytes:
            saved = 1 - prof.step_peak_allocated_bytes / was.step_peak_allocated_bytes
            text += f" ({-saved:+.0%} measured; the rule expects {t.expected})"
        if prof.step_seconds and was is not None and was.step_seconds:
            slower = prof.step_seconds / was.step_seconds - 1
            text += f"; steps {abs(slower):.0%} {'slower' if slower >= 0 else 'faster'}"
    return text


def verdict_text(result: ProbeResult) -> str:
    """The probe's answer in one sentence (the terminal's `verdict:` line and the JSON's `message`)."""
    if result.phase_oom is not None and result.oom is not None:
        first = _first_occurrence(result.schedule, result.phase_oom)
        return (
            f"will run out at {phase_words(result.phase_oom)}{first}: in this probe it asked for "
            f"{size(result.oom.requested_bytes)} with {size(result.oom.device_free_bytes)} free on the device"
        )
    if result.oom is not None:
        after = result.oom_after_step
        return "out of memory during the probe" + (f", after step {after:,}" if after else "")
    if result.verdict is not None and result.profile is not None:
        return describe(result.verdict, result.profile, result.schedule)
    return f"none: the command ended (status {result.exit_status}) before its steps could be measured"


def _first_occurrence(schedule: Schedule, phase: str) -> str:
    """ " (first after step 50, --sample_every_n_steps 50)" for a scheduled phase, "" otherwise."""
    name = phase.split("+", maxsplit=1)[0]
    interval = schedule.every(name)
    setting = {SAMPLE: "sample_every", SAVE: "save_every"}.get(name, "")
    spelled = schedule.spelled(setting)
    return f" (first after step {interval:,}" + (f", {spelled})" if spelled else ")") if interval else ""


_STOPPED = {
    "measured": "stopped once measured",
    "time": "stopped at the time limit",
    "exited": "the command ended by itself",
    "oom": "it ran out of memory",
}


def render_text(result: ProbeResult, tried: Sequence[Tried] = ()) -> list[str]:
    """The probe's report for a terminal, and what each tried change did."""
    lines = []
    prof = result.profile
    steps = f"{prof.step:,} steps" if prof is not None else "no optimizer step measured"
    name = TRAINER_NAMES.get(result.trainer, result.trainer)
    lines.append(f"vramwatch probe: {name}, {steps} in {duration(result.seconds)} ({_STOPPED[result.stopped]})")
    lines += [f"  note: {n}" for n in result.notes]
    if prof is not None:
        growth = f"grows {size(prof.growth_bytes_per_step)} a step" if prof.growth_bytes_per_step else "no growth"
        each = f", {prof.step_seconds:.2f} s a step" if prof.step_seconds else ""
        lines.append(f"  training steps: peak {size(prof.step_peak_allocated_bytes)} allocated{each}, {growth}")
        for p in prof.phases:
            every = f" every {p.period:,} steps ({p.period_source})" if p.period else ""
            seen = ", ".join(f"{s:,}" for s in p.seen_after[:5])
            lines.append(f"  {p.name}{every}: peak {size(p.peak_allocated_bytes)}, seen after step {seen}")
    if result.capacity_bytes is not None:
        lines.append(f"  this card: {size(result.capacity_bytes)} usable by the run (its reserved memory + free)")
    lines.append("verdict: " + verdict_text(result))
    if result.oom is not None and result.phase_oom is None:
        lines += [f"  {line}" for line in format_oom(result.oom)]
    if result.advice:
        lines.append("setting changes, most effective first:")
        shown = result.advice[:SHOWN]
        lines += [f"  {i}. {change}  ({saving})" for i, (change, saving) in enumerate(shown, 1)]
    if tried:
        lines.append("measured, one change at a time:")
        lines += [f"  {_tried_line(t, result)}" for t in tried]
    return lines


def to_json(result: ProbeResult, tried: Sequence[Tried] = ()) -> dict[str, Any]:
    """The probe's report for scripts: bytes and seconds, never formatted figures."""
    prof = result.profile
    verdict = result.verdict
    return {
        "exit_code": result.exit_code,
        "message": verdict_text(result),
        "trainer": result.trainer,
        "argv": list(result.argv),
        "notes": list(result.notes),
        "seconds": result.seconds,
        "stopped": result.stopped,
        "exit_status": result.exit_status,
        "pid": result.pid,
        "capacity_bytes": result.capacity_bytes,
        "schedule": {
            "max_steps": result.schedule.max_steps,
            "sample_every": result.schedule.sample_every,
            "sample_at_first": result.schedule.sample_at_first,
            "save_every": result.schedule.save_every,
        },
        "steps": None
        if prof is None
        else {
            "measured": prof.step,
            "peak_allocated_bytes": prof.step_peak_allocated_bytes,
            "growth_bytes_per_step": prof.growth_bytes_per_step,
            "seconds_per_step": prof.step_seconds,
        },
        "phases": []
        if prof is None
        else [
            {
                "name": p.name,
                "period": p.period,
                "period_source": p.period_source,
                "peak_allocated_bytes": p.peak_allocated_bytes,
                "seen_after": list(p.seen_after),
            }
            for p in prof.phases
        ],
        "verdict": None
        if verdict is None
        else {
            "outcome": verdict.outcome.value,
            "step": verdict.step,
            "phase": verdict.phase,
            "needed_bytes": verdict.needed_bytes,
            "spare_bytes": verdict.spare_bytes,
            "margin_bytes": verdict.margin_bytes,
            "end_step": verdict.end_step,
            "unmeasured": list(verdict.unmeasured),
        },
        "phase_oom": result.phase_oom,
        "oom": None
        if result.oom is None
        else {
            "after_step": result.oom_after_step,
            "requested_bytes": result.oom.requested_bytes,
            "allocated_bytes": result.oom.allocated_bytes,
            "reserved_bytes": result.oom.reserved_bytes,
            "device_free_bytes": result.oom.device_free_bytes,
        },
        "tried": [
            {
                "change": t.change,
                "expected": t.expected,
                "argv": list(t.argv),
                "env": dict(t.env),
                "exit_code": t.result.exit_code,
                "message": verdict_text(t.result),
                "step_peak_allocated_bytes": t.result.profile.step_peak_allocated_bytes if t.result.profile else None,
                "seconds_per_step": t.result.profile.step_seconds if t.result.profile else None,
            }
            for t in tried
        ],
        "advice": [{"change": c, "saving": s} for c, s in result.advice],
        # The measured process's steps (protocol.STEP_FIELDS without the pid), for replay and evidence.
        "records": [
            [
                r.first_step,
                r.last_step,
                r.t,
                r.seconds,
                r.peak_allocated_bytes,
                r.peak_reserved_bytes,
                r.allocated_bytes,
                r.reserved_bytes,
                r.inactive_split_bytes,
            ]
            for r in result.records
        ],
    }
