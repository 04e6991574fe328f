"""`vramwatch probe -- <trainer command>`: will this run fit to the end? A short test run that says so.

The field guide's best advice is "test 100-200 steps before the long run"; this automates it. The probe
runs the command under the agent (`vramwatch run`, counting optimizer steps: `VRAMWATCH_AGENT_STEPS=1` is
forced), stops it once it has seen `steps` optimizer steps *and* each recurring phase its configuration
announces within reach (or at a time limit), and forecasts the whole run from what it measured
(`steps.py`): the training steps' peak, each phase's peak, growth per step, against what the run can use on
this card now.

Phases far in the future are brought into the test where the trainer has a setting for it
(`Trainer.probe_argv`: kohya's `--sample_at_first` samples before step 1), so that a run whose sample images
at step 1,200 will not fit is told so after a few minutes, without reaching step 1,200. A save the probe would
not reach (kohya's only save, after the last step) is brought in by the trainer's periodic save flag
(`Trainer.save_every_flag`) set to a step inside the test (`save_step`); the forecast keeps the run's own
schedule, so that save stands for the run's saves at their real steps (`Schedule.probe_save_every`). The test run's
outputs go to a temporary directory where the trainer has a flag for it (`Trainer.output_dir_flag`), removed
afterwards: a probe never leaves sample images or checkpoints in the user's output directory.

The command runs in its own session and process group (`runner.ChildGroup`): `accelerate launch` and shell
wrappers do not pass SIGINT on, so the probe signals the whole group, SIGINT first (the trainers' own
interrupt: they do not save on it), then SIGTERM and SIGKILL `stop_seconds` apart, and afterwards ends any
process of the command still left (`_sweep`). A probe that itself runs out of memory reports that as its
answer; one that crashes, counts no step, or is interrupted (Ctrl-C) says so and gives no verdict.

Exit codes, for wrapper scripts: `EXIT_*` below.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .advice import Suggestion, TrainerSettings, advise, recognize
from .advice.argv import flag_text, parse_flags, script_start, set_flag, split_invocation
from .advice.configcopy import FLAG, ConfigEdit, ConfigTarget, CopiedConfig, CopyError, Value, copy_text
from .advice.configfile import MAX_CONFIG_BYTES, read_text_file
from .advice.settings import UNKNOWN
from .advice.trainers import TRAINER_NAMES, Trainer, by_id
from .agent import protocol
from .agenthost.link import AgentReport
from .agenthost.monitor import format_oom
from .agenthost.runner import ChildGroup, run_command
from .detectors.oom import fragmented_at_oom
from .model import OomEvent, StepRecord
from .schedule import schedule_of
from .steps import (
    SAMPLE,
    SAVE,
    Outcome,
    Schedule,
    StepProfile,
    Verdict,
    describe,
    forecast,
    phase_words,
    profile,
)
from .units import duration, size

SHOWN = 3  # setting changes a terminal report lists (the JSON has them all, ranked)

EXIT_FITS = 0
# The command crashed (a non-zero exit that is not an OOM) before it was measured, it counted no optimizer
# step, or it ended before any step was measured.
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_OOM = 3  # the probe itself ran out of GPU memory (the same code as `attach`'s OOM)
EXIT_PHASE = 4  # will run out in a recurring phase (sample images, a save)
# Will run out at a training step: from growth per step (`Outcome.GROWTH`), or because the steps' own peak,
# with no growth, is already above what the run can use now (`Outcome.STEP`: something else took memory).
# One code for both: a wrapper script asks "does a training step run out?", and the JSON's outcome says why.
EXIT_GROWTH = 5
# Fits as far as measured, but a phase the configuration announces was not measured, or fewer steps than
# asked were (the time limit came first): the forecast reaches further than the measurement. A phase that
# runs only after the last step (kohya's final save, with no --save_every_n_steps) is not counted: no probe
# reaches it, so it would make every such run exit 6; it is named in the message and the JSON instead.
EXIT_UNMEASURED = 6
EXIT_INTERRUPTED = 130  # Ctrl-C: the command was stopped, no verdict (128 + SIGINT, as shells say it)

#: The exit code of each forecast outcome, for a probe that measured what it was asked to (a fit short of that
#: is `EXIT_UNMEASURED`). Every `Outcome` has one (a test checks): a new outcome never falls through to "fits".
OUTCOME_EXIT: dict[Outcome, int] = {
    Outcome.FITS: EXIT_FITS,
    Outcome.PHASE: EXIT_PHASE,
    Outcome.GROWTH: EXIT_GROWTH,
    Outcome.STEP: EXIT_GROWTH,
}

#: The least time a run is given to reach its first optimizer step (loading a model, caching latents and
#: text encoder outputs take minutes), whatever the time limit; the default is half the time limit above it.
NO_STEP_MIN_SECONDS = 120.0

#: The advisor's situations for running out in each named phase, most specific first; any other phase (a
#: learned recurring peak) is a plateau. `vramwatch run` and the probe both read it (`advice_kinds`).
PHASE_ADVICE: dict[str, tuple[str, ...]] = {SAMPLE: ("sampling", "plateau"), SAVE: ("plateau",)}


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    """How long a probe runs and how it ends."""

    steps: int = 200  # optimizer steps to measure at least
    max_seconds: float = 1800.0  # stop at this time whatever was measured
    reach_steps: int = 1000  # wait for an announced phase whose first occurrence comes within this many steps
    # Let the trainer's settings bring a phase into the test: sampling before step 1 (kohya --sample_at_first),
    # a save inside the test where the run saves only at its end or beyond reach (`bring_save_forward`).
    bring_forward: bool = True
    stop_seconds: float = 30.0  # after SIGINT before SIGTERM, and after SIGTERM before SIGKILL; after an OOM
    first_step_seconds: float | None = None  # no optimizer step by then: give up (None: `no_step_seconds`)

    @property
    def no_step_seconds(self) -> float:
        """How long the command may run without an optimizer step: max(120 s, half the time limit)."""
        if self.first_step_seconds is not None:
            return self.first_step_seconds
        return max(NO_STEP_MIN_SECONDS, self.max_seconds / 2)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What a probe measured and concluded."""

    argv: tuple[str, ...]  # what ran (with the phases brought forward, the outputs redirected)
    trainer: str
    schedule: Schedule
    notes: tuple[str, ...]
    seconds: float
    # "measured", "time", "exited" (the command ended by itself), "oom", "no_steps" (steps off, or none came
    # in time: `failure` says which) or "interrupted" (Ctrl-C)
    stopped: str
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
    advice: tuple[Suggestion, ...] = ()  # ranked changes in the trainer's words, each once
    steps_asked: int | None = None  # the optimizer steps the probe meant to measure
    complete: bool = False  # everything asked for was measured when the command ended
    failure: str | None = None  # why no step could be measured (the agent counts none, or none came in time)

    @property
    def measured_steps(self) -> int:
        return self.records[-1].last_step if self.records else 0

    @property
    def crashed(self) -> bool:
        """The command ended by itself with a non-zero status that is not an OOM, before it was measured."""
        return self.stopped == "exited" and self.exit_status not in (None, 0) and self.oom is None and not self.complete

    @property
    def short(self) -> bool:
        """Fewer steps measured than asked for, short of the run's own end: the forecast reaches further."""
        if self.steps_asked is None or self.complete:
            return False
        end = self.schedule.max_steps
        return self.measured_steps < self.steps_asked and (end is None or self.measured_steps < end)

    @property
    def unmeasured(self) -> tuple[str, ...]:
        """The announced phases no record holds that a probe could have measured (exit 6): not those that run
        only after the run's last step (`Schedule.only_at_end`) unless the probe brought them into its test."""
        if self.verdict is None:
            return ()
        return tuple(n for n in self.verdict.unmeasured if not self._beyond_probe(n))

    @property
    def unmeasured_at_end(self) -> tuple[str, ...]:
        """The announced phases that run only after the last step, that the probe did not bring into its test,
        and that no record holds (named, not exit 6)."""
        if self.verdict is None:
            return ()
        return tuple(n for n in self.verdict.unmeasured if self._beyond_probe(n))

    def _beyond_probe(self, phase: str) -> bool:
        return self.schedule.only_at_end(phase) and self.schedule.test_every(phase) is None

    @property
    def runs_out(self) -> bool:
        """The answer is "it will not fit" (or it did not, in the probe): changes are worth trying."""
        return self.exit_code in {EXIT_OOM, EXIT_PHASE, EXIT_GROWTH}

    @property
    def exit_code(self) -> int:
        if self.stopped == "interrupted":
            return EXIT_INTERRUPTED
        if self.phase_oom is not None:
            return EXIT_PHASE
        if self.oom is not None:
            return EXIT_OOM
        if self.failure is not None or self.crashed or self.verdict is None:
            return EXIT_FAILED
        code = OUTCOME_EXIT[self.verdict.outcome]
        if code == EXIT_FITS and (self.unmeasured or self.short):
            return EXIT_UNMEASURED
        return code


@dataclass(slots=True)
class _Collector:
    """The agents' reports during the probe (listener thread in, watcher and main thread out)."""

    records: dict[int, list[StepRecord]] = field(default_factory=dict)
    capacity: dict[int, int] = field(default_factory=dict)  # pid -> reserved + free at its last step
    usable: dict[int, int] = field(default_factory=dict)  # pid -> reserved + free at its last sample
    ooms: list[tuple[OomEvent, int]] = field(default_factory=list)  # (event, steps completed before it)
    counts_steps: dict[int, bool | None] = field(default_factory=dict)  # pid -> what its hello said
    # Every reporting process as (pid, start time): what the sweep may end after the command has ended.
    identities: set[tuple[int, int]] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_report(self, report: AgentReport) -> None:
        stat = _proc_stat(report.pid)  # the report's pid is the kernel's, and it is alive now
        with self.lock:
            if stat is not None:
                self.identities.add((report.pid, stat.start))
            if report.kind == "hello":
                self.counts_steps[report.pid] = report.counts_steps
            elif report.kind == "stats":
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

    def heard(self) -> bool:
        """An agent said hello: some process of the run used CUDA through torch."""
        with self.lock:
            return bool(self.counts_steps)

    def steps_off(self) -> bool:
        """Agents said hello and none of them counts steps: no step will ever come (torch without the hook)."""
        with self.lock:
            said = self.counts_steps.values()
            return not self.records and False in said and True not in said


def _measured(records: Sequence[StepRecord], schedule: Schedule, config: ProbeConfig) -> bool:
    """Enough steps, and every announced phase within reach seen (its record after the phase has ended): a
    save brought into the test at the probe's own interval too."""
    if not records or records[-1].last_step < config.steps:
        return False
    prof = profile(records, schedule)
    if prof is None:
        return False
    for name in prof.unmeasured:
        every = schedule.test_every(name)
        if every is not None and every <= config.reach_steps:
            return False
    return True


#: Why the probe stops a test run itself, as said before it does (an interrupt by the user says nothing).
_STOP_WORDS = {
    "measured": "measured enough",
    "time": "out of time (--max-time)",
    "no_steps": "no optimizer step to measure",
}


def _stop(group: ChildGroup, seconds: float) -> None:
    """SIGINT (the trainer's own save-less interrupt), then SIGTERM, then SIGKILL to the command's whole
    process group, each after `seconds`; never once its leader is reaped (`ChildGroup.signal`)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        if not group.signal(sig) or group.reaped.wait(seconds):
            return


@dataclass(frozen=True, slots=True)
class _Stat:
    """The fields of /proc/<pid>/stat the sweep needs."""

    state: str
    pgrp: int
    session: int
    start: int  # clock ticks after boot: with the pid, the process's identity


def _proc_stat(pid: int, proc: Path = Path("/proc")) -> _Stat | None:
    try:
        raw = (proc / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()  # the name may hold spaces and parentheses
    try:
        return _Stat(fields[0].decode(), int(fields[2]), int(fields[3]), int(fields[19]))
    except (IndexError, ValueError):
        return None


def _leftovers(leader: int, identities: set[tuple[int, int]], proc: Path = Path("/proc")) -> set[tuple[int, int]]:
    """Live processes of the command: of the leader's session or process group, or ones that reported."""
    found: set[tuple[int, int]] = set()
    with contextlib.suppress(OSError):
        for entry in proc.iterdir():
            # The reaped leader's pid is no longer the command's: a process holding it now is another's.
            if not entry.name.isdigit() or int(entry.name) in (os.getpid(), leader):
                continue
            stat = _proc_stat(int(entry.name), proc)
            if stat is not None and stat.state not in "ZX" and leader in (stat.pgrp, stat.session):
                found.add((int(entry.name), stat.start))
    for pid, start in identities:
        stat = _proc_stat(pid, proc)
        if stat is not None and stat.start == start and stat.state not in "ZX":
            found.add((pid, start))
    return found


def _signal_identity(pid: int, start: int, signum: int) -> None:
    """Signal `pid` only while it is still the process that started at `start`: a pidfd opened first, then
    the start time checked, then the signal through the pidfd, so a reused pid is never signalled."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        fd = None  # no pidfd (an old kernel): the check just before the signal is the guard
    try:
        stat = _proc_stat(pid)
        if stat is None or stat.start != start:
            return
        with contextlib.suppress(OSError):
            if fd is not None:
                signal.pidfd_send_signal(fd, signum)
            else:
                os.kill(pid, signum)
    finally:
        if fd is not None:
            os.close(fd)


def _sweep(leader: int | None, identities: set[tuple[int, int]], seconds: float) -> None:
    """After the leader was reaped: end what is left of the command (a worker its launcher left behind, the
    measured process), SIGTERM then SIGKILL `seconds` later. A process that left the session and never
    reported is not followed."""
    if leader is None:
        return
    for signum in (signal.SIGTERM, signal.SIGKILL):
        left = _leftovers(leader, identities)
        if not left:
            return
        for pid, start in left:
            _signal_identity(pid, start, signum)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and _leftovers(leader, identities):
            time.sleep(0.05)


def bring_forward(argv: Sequence[str], settings: TrainerSettings) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The command with its phases brought into the test by the trainer's own settings, and what changed."""
    trainer = _trainer_of(settings)
    if trainer is None or trainer.probe_argv is None:
        return tuple(argv), ()
    return trainer.probe_argv(argv, settings)


#: The share of the steps a probe measures that come after the save it brings forward (at least 2 steps).
SAVE_TAIL_SHARE = 0.1


def save_step(schedule: Schedule, steps: int) -> int | None:
    """The step after which a probe runs the save it brings forward: K = W - max(2, W / 10), W the steps it
    measures (`steps`, or the run's last step when that comes first), moved earlier past any step after which
    the run does something else (sampling); None when that leaves K below 2.

    Late in the test: the save then runs after the warm-up (the optimizer state exists, the buckets have
    ramped up, the allocator has settled), its figure holds most of the growth the probe sees, so the forecast
    extrapolates the least to the run's real save; a save that runs out ends the probe with its steps already
    measured; and with K above W/2 the periodic flag saves once in the test, not twice (a save writes the model,
    with --save_state the optimizer state too: time and disk). Not last: the steps after it show what the save
    leaves behind, and its record comes in before the probe stops. At least 2: the first record holds the
    start-up, so a training step's peak is measured before the save's. Alone: a step after which the trainer
    also samples would share the save's record, and its figure would be only an upper bound.
    """
    window = steps if schedule.max_steps is None else min(steps, schedule.max_steps)
    k = window - max(2, int(window * SAVE_TAIL_SHARE))
    while k >= 2 and schedule.phases_after(k):
        k -= 1
    return k if k >= 2 else None


def bring_save_forward(
    argv: Sequence[str], trainer: Trainer | None, schedule: Schedule, config: ProbeConfig
) -> tuple[tuple[str, ...], tuple[str, ...], int | None]:
    """The command with a save brought into the test, what changed, and the step it now saves after (the
    command unchanged, and None, where the probe reaches the run's first save by itself or cannot bring it in).

    A save the run makes only after its last step (kohya with no --save_every_n_steps), or first on an interval
    beyond `--reach`, is what a probe never measures: the trainer's own periodic save flag set to `save_step`
    makes one save run in the test with the run's other save settings (kohya --save_precision, --save_state),
    into the test's temporary output directory. Never for a run that saves on epochs only (no step is known).
    """
    args = tuple(argv)
    due = schedule.first_save()
    every = schedule.every(SAVE)
    if due is None or (every == due and due <= config.reach_steps):
        return args, (), None  # no save known in steps, or the probe waits for the run's own
    if every == due:
        spelled = f" ({schedule.spelled_every(SAVE)})" if schedule.spelled_every(SAVE) else ""
        where = f"first after step {due:,}{spelled}, beyond --reach {config.reach_steps:,}"
    else:
        where = f"only after its last step (step {due:,})"
    flag = trainer.save_every_flag if trainer is not None else None
    if trainer is None or flag is None:
        name = trainer.name if trainer is not None else "this command"
        return args, (f"the run saves {where}: {name} has no flag to bring a save into a short run",), None
    at = save_step(schedule, config.steps)
    if at is None:
        return args, (f"the run saves {where}: too few steps to bring a save into the test",), None
    inv = split_invocation(args)
    if inv.script is None and inv.module is None:
        return args, (f"the run saves {where}: no training script on the command line to add {flag} to",), None
    given = flag_text(parse_flags(inv.args)[0], flag.lstrip("-"))
    done = f"set {flag} {at} (was {given[1]})" if given is not None else f"added {flag} {at}"
    note = (
        f"{done}: the run saves {where}; the test saves after step {at} with the run's other save settings, "
        "and the forecast takes that save for the run's"
    )
    return set_flag(args, flag, str(at)), (note,), at


def _with_save(
    argv: Sequence[str], trainer: Trainer | None, schedule: Schedule, config: ProbeConfig
) -> tuple[tuple[str, ...], tuple[str, ...], Schedule]:
    """`bring_save_forward` (unless --no-bring-forward), and the run's schedule with the test's save interval."""
    if not config.bring_forward:
        return tuple(argv), (), schedule
    command, notes, at = bring_save_forward(argv, trainer, schedule, config)
    return command, notes, dataclasses.replace(schedule, probe_save_every=at)


def _trainer_of(settings: TrainerSettings) -> Trainer | None:
    if settings.trainer == UNKNOWN:
        return None
    try:
        return by_id(settings.trainer)
    except KeyError:
        return None


def redirect_output(
    argv: Sequence[str], trainer: Trainer | None, directory: str
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The command with its outputs (sample images, checkpoints) sent to `directory` through the trainer's
    own flag, and a note; unchanged, with a note saying where they go, where the trainer has none."""
    if trainer is None:
        return tuple(argv), ("an unrecognised command: its test run writes wherever it is configured to",)
    if trainer.output_dir_flag is None:
        return tuple(argv), (
            f"{trainer.name} has no output-directory flag: the test run writes its sample images and "
            "checkpoints where its configuration says",
        )
    out = set_flag(argv, trainer.output_dir_flag, directory)
    return tuple(out), (f"outputs go to a temporary directory ({trainer.output_dir_flag} {directory}), removed after",)


def _without_first_phase(argv: Sequence[str], trainer: Trainer | None) -> tuple[str, ...] | None:
    """The command without the switch that runs a phase before step 1; None when it is not on the command
    line (a config file's setting, which the command line cannot turn off)."""
    switch = trainer.first_phase_switch if trainer is not None else None
    if switch is None:
        return None
    start = script_start(argv)
    kept = [w for w in argv[start:] if w != switch and not w.startswith(switch + "=")]
    if len(kept) == len(argv) - start:
        return None
    return (*argv[:start], *kept)


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

    When the OOM comes before step 1 where a phase runs first (brought forward by the probe, or the
    command's own `--sample_at_first`), that OOM could as well be the first training step's: the probe then
    runs the command without that phase, and only if that run measures a step past step 1 was the phase
    what did not fit. A save brought into the test (`bring_save_forward`) runs after a step K of at least 2,
    after training steps: an OOM after step K is that save's (`_phase_of_oom`).
    """
    config = config or ProbeConfig()
    base = dict(os.environ if env is None else env)
    where = cwd if cwd is not None else str(Path.cwd())
    settings = recognize(argv, cwd=where, env=base)
    trainer = _trainer_of(settings)
    scratch = tempfile.mkdtemp(prefix="vramwatch-probe-")
    try:
        given, notes = redirect_output(argv, trainer, scratch)
        sampled, more = bring_forward(given, settings) if config.bring_forward else (given, ())
        # The schedule is the run's own (the sampling brought forward adds sample_at_first, no interval); the
        # save brought in is the test's alone (`Schedule.probe_save_every`): the forecast keeps the run's saves.
        schedule = schedule_of(recognize(sampled, cwd=where, env=base) if sampled != given else settings)
        command, saved, schedule = _with_save(sampled, trainer, schedule, config)
        notes = (*notes, *more, *saved)
        once = functools.partial(
            _probe_once,
            trainer=settings.trainer,
            config=config,
            env=base,
            out=out,
            clock=clock,
            child_stdout=child_stdout,
        )
        result = once(command, schedule, notes=notes)
        first = schedule.phases_after(0)
        if result.stopped == "interrupted" or result.oom is None:
            pass
        elif result.oom_after_step == 0 and first:
            name = "+".join(sorted(first))
            plain = given if sampled != given else _without_first_phase(given, trainer)
            if plain is None:
                why = (
                    f"it ran out of memory before step 1, where it runs {phase_words(name)} first: that or the "
                    "first training step (the configuration's switch is not on the command line to drop)"
                )
                result = dataclasses.replace(result, phase_oom=name, notes=(*result.notes, why))
            else:
                why = (
                    f"it ran out of memory before step 1, in {phase_words(name)} or the first training step: "
                    f"probed again without {phase_words(name)} first"
                )
                plain_schedule = schedule_of(recognize(plain, cwd=where, env=base))
                plain, _, plain_schedule = _with_save(plain, trainer, plain_schedule, config)
                result = _settle(result, once(plain, plain_schedule, notes=(*notes, why)), name)
        else:
            result = _phase_of_oom(result)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return _with_advice(result, settings)


def _phase_of_oom(result: ProbeResult) -> ProbeResult:
    """An OOM after a step the trainer runs a phase after is that phase's; after any other step, a plain OOM."""
    phases = result.schedule.phases_after(result.oom_after_step or 0) if result.oom is not None else frozenset()
    return dataclasses.replace(result, phase_oom="+".join(sorted(phases))) if phases else result


def _settle(first: ProbeResult, again: ProbeResult, phase: str) -> ProbeResult:
    """What an OOM before step 1 in `phase` was, from the run without the phase (`again`).

    Only a step measured without the phase tells the phase apart: a run that measured none (it ran out at
    its first step too, it crashed, it ran out of time) concludes nothing about the phase.
    """
    if again.stopped == "interrupted":
        return again
    if not again.records:
        if again.oom is not None:
            return again  # the first training step runs out on its own: a plain OOM
        why = f"without {phase_words(phase)} first: {verdict_text(again)}"
        return dataclasses.replace(
            first, notes=(*first.notes, f"{why}; whether {phase_words(phase)} or the first step ran out is unknown")
        )
    if again.oom is None:
        return dataclasses.replace(again, phase_oom=phase, oom=first.oom, oom_after_step=0)
    return _phase_of_oom(again)


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
    """One test run: until measured (or out of memory, or out of time, or interrupted), then stopped."""
    collector = _Collector()
    group = ChildGroup()
    interrupted = threading.Event()
    stopped: list[str] = []
    failure: list[str] = []
    started = clock()

    def decide() -> str | None:
        """Why to stop now, or None to go on."""
        if interrupted.is_set():
            return "interrupted"
        _, records = collector.main()
        if collector.steps_off():
            failure.append(
                "the agent counts no optimizer steps in this run (its hello says so: this PyTorch has no "
                "global optimizer step hook, which came with PyTorch 2.0)"
            )
            return "no_steps"
        if _measured(records, schedule, config):
            return "measured"
        if not records and clock() - started > min(config.no_step_seconds, config.max_seconds):
            if not collector.heard():
                # Nothing used CUDA through torch: the optimizer's hooks are not the question yet.
                failure.append(
                    f"no process of the command reported PyTorch's CUDA memory in {duration(clock() - started)} "
                    "(torch missing from the command's Python, a command that never uses CUDA, or a start-up longer "
                    "than that: allow more with --max-time)"
                )
            else:
                failure.append(
                    f"no optimizer step was counted in {duration(clock() - started)} (an optimizer that bypasses "
                    "torch.optim's step hooks, or a start-up longer than that: allow more with --max-time)"
                )
            return "no_steps"
        if clock() - started > config.max_seconds:
            return "time"
        return None

    def watch() -> None:
        while not group.reaped.is_set():
            if collector.ooms and not interrupted.is_set():
                stopped.append("oom")
                # The trainer ends by itself after its OOM (an interrupt now could lose its own report), but
                # not always (a hung NCCL peer, a trainer that catches it): stop_seconds at most.
                if not group.reaped.wait(config.stop_seconds):
                    _stop(group, config.stop_seconds)
                return
            reason = decide()
            if reason is not None:
                stopped.append(reason)
                if out is not None and reason in _STOP_WORDS:
                    # Python prints a KeyboardInterrupt traceback as the trainer stops on SIGINT: said to be ours
                    # first, it does not read as the run crashing.
                    out.write(f"vramwatch probe: {_STOP_WORDS[reason]}: stopping the command with SIGINT (a "
                              "KeyboardInterrupt traceback from it now is this stop)\n")  # fmt: skip
                    out.flush()
                _stop(group, config.stop_seconds)
                return
            interrupted.wait(0.5)

    def on_start(_proc: subprocess.Popen[bytes]) -> None:
        threading.Thread(target=watch, name="vramwatch-probe", daemon=True).start()

    # The probe needs the steps: a user's (or a profile's) VRAMWATCH_AGENT_STEPS=0 would leave it blind.
    child_env = {**env, protocol.ENV_STEPS: "1"}
    status: int | None = None
    try:
        status = run_command(
            command,
            on_report=collector.on_report,
            builtin_checks=False,
            stderr=out,
            env=child_env,
            on_start=on_start,
            exit_status_seconds=0.0,
            child_stdout=child_stdout,
            group=group,
            on_interrupt=interrupted.set,
        )
    except KeyboardInterrupt:
        # Outside the runner's handlers (before the command started, or before they were set).
        interrupted.set()
        if not stopped:
            stopped.append("interrupted")
        _stop(group, config.stop_seconds)
    finally:
        _sweep(group.pid, collector.identities, config.stop_seconds)
    if interrupted.is_set() and not stopped:
        stopped.append("interrupted")  # the command ended on the interrupt before the watcher saw it
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
        steps_asked=config.steps,
        complete=_measured(records, schedule, config),
        failure=failure[0] if failure else None,
    )


def watched_run(argv: Sequence[str], **options: Any) -> int:
    """`vramwatch run`: the command under the agent, its steps forecast against its own schedule.

    The built-in check then says, in the trainer's words, when the run will not reach its end.
    """
    settings = recognize(argv, cwd=str(Path.cwd()), env=dict(os.environ))

    def advise_verdict(verdict: Verdict) -> list[str]:
        changes = _suggestions(settings, advice_kinds(verdict))
        return [f"try: {s.change}" for s in changes[:3]]

    return run_command(argv, schedule=schedule_of(settings), advise=advise_verdict, **options)


def _phase_kinds(phase: str) -> tuple[str, ...]:
    """The advisor's situations for a phase ("sample+save": both), from `PHASE_ADVICE`."""
    kinds: dict[str, None] = {}
    for part in phase.split("+"):
        kinds.update(dict.fromkeys(PHASE_ADVICE.get(part, ("plateau",))))
    return tuple(kinds)


def advice_kinds(
    verdict: Verdict | None,
    prof: StepProfile | None = None,
    *,
    phase_oom: str | None = None,
    oom: OomEvent | None = None,
) -> tuple[str, ...]:
    """The advisor's situations for an answer, most specific first: the one decision behind `vramwatch run`'s
    warnings (a forecast) and the probe's verdict (a forecast, or an OOM in the probe).

    A phase (forecast, or the phase the probe ran out in) gets its `PHASE_ADVICE`; an OOM in a training
    step fragmentation or spike advice; a step whose own peak no longer fits (`Outcome.STEP`) spike advice
    (the size of one step, whatever the growth); running out at a step from growth, growth advice, unless the
    profile shows no growth (a step already beyond the limit: a spike).
    """
    if phase_oom is not None:
        return _phase_kinds(phase_oom)
    if oom is not None:
        fragmented = fragmented_at_oom(
            requested_bytes=oom.requested_bytes,
            reserved_bytes=oom.reserved_bytes,
            allocated_bytes=oom.allocated_bytes,
            device_free_bytes=oom.device_free_bytes,
        )
        return ("fragmentation",) if fragmented else ("spike",)
    if verdict is None or verdict.outcome is Outcome.FITS:
        return ()
    if verdict.outcome is Outcome.PHASE:
        return _phase_kinds(verdict.phase or "")
    if verdict.outcome is Outcome.STEP:
        return ("spike",)
    if prof is not None and prof.growth_bytes_per_step <= 0:
        return ("spike",)
    return ("growth",)


def _suggestions(settings: TrainerSettings, kinds: Sequence[str]) -> list[Suggestion]:
    """The advisor's suggestions for each situation in turn, each change once."""
    changes: list[Suggestion] = []
    for kind in kinds:
        for s in advise(settings, kind).suggestions:
            if s.change not in (c.change for c in changes):
                changes.append(s)
    return changes


def _with_advice(result: ProbeResult, settings: TrainerSettings) -> ProbeResult:
    if result.exit_code not in {EXIT_OOM, EXIT_PHASE, EXIT_GROWTH}:
        return result  # no advice for a run that fits, crashed, measured nothing or was interrupted
    kinds = advice_kinds(result.verdict, result.profile, phase_oom=result.phase_oom, oom=result.oom)
    changes = _suggestions(settings, kinds)
    return dataclasses.replace(result, advice=tuple(changes)) if changes else result


@dataclass(frozen=True, slots=True)
class Tried:
    """One suggested change, applied to the command and probed: `--try N`."""

    change: str  # as the advisor wrote it
    expected: str  # the saving the rule expects
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]  # environment variables the change sets
    result: ProbeResult
    config: CopiedConfig | None = None  # the config file copied with the change written in, for a config change


@dataclass(frozen=True, slots=True)
class NotTried:
    """A suggested change `--try` passed over on its way to the N it tries, and why it could not apply it."""

    change: str  # as the advisor wrote it
    why: str


#: Why `applied` passes a change over: it is none of the things `--try` can set.
NOT_APPLICABLE = "no flag, environment variable or config key to set: a change to make by hand"


@dataclass(frozen=True, slots=True)
class Tries:
    """What `--try N` did: the changes it measured, and those it passed over before reaching N (in rank order)."""

    tried: tuple[Tried, ...] = ()
    not_tried: tuple[NotTried, ...] = ()


_VARIABLE = re.compile(r"([A-Z_][A-Z0-9_]*)=(\S+)")


def applied(argv: Sequence[str], change: str) -> tuple[tuple[str, ...], dict[str, str]] | None:
    """The command with one suggested change applied, and the environment it sets; None when the change is
    not a command-line flag or an environment variable (a config file's, a prompt file's, code).

    `--flag value` replaces the flag's value where the script's own arguments have it, or is appended: a
    launcher's options (`accelerate launch --mixed_precision fp16 train.py ...`) are the launcher's, never
    the trainer's. A trailing note in parentheses is not part of the change. A change spelt for a config file
    is never read here, whatever its text looks like (SimpleTuner's config.env lines look like variables):
    `config_change` decides those.
    """
    text = _change_text(change)
    variable = _VARIABLE.fullmatch(text)
    if variable is not None:
        return tuple(argv), {variable.group(1): variable.group(2)}
    words = text.split()
    pairs: list[tuple[str, str | None]] = []
    i = 0
    while i < len(words):
        if not FLAG.fullmatch(words[i]):
            return None
        value = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--") else None
        pairs.append((words[i], value))
        i += 2 if value is not None else 1
    if not pairs:
        return None
    out = tuple(argv)
    for flag, value in pairs:
        out = set_flag(out, flag, value)
    return out, {}


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """A suggested change that is a config file's, ready to be written: the copy's text and what it sets."""

    target: ConfigTarget
    text: str
    set: tuple[tuple[str, Value], ...]
    flags: tuple[tuple[str, str | None], ...]  # added to the command line with it


def config_change(
    argv: Sequence[str],
    suggestion: Suggestion,
    settings: TrainerSettings,
    *,
    cwd: str,
    env: Mapping[str, str],
) -> ConfigChange | str | None:
    """For a change spelt for the trainer's config file: the copy to run it on, or why it cannot be tried;
    None for a change that is not a config file's (a flag, a variable: `applied`)."""
    trainer = _trainer_of(settings)
    copies = trainer.config_copy if trainer is not None else None
    if copies is None or not copies.covers(suggestion.syntax_key):
        return None
    if suggestion.syntax_key not in copies.keys:
        return dict(copies.not_copied).get(suggestion.syntax_key or "", "not copied")
    if not isinstance(suggestion.edit, ConfigEdit):
        return suggestion.edit or "the rule gives no change as data for this config file (rules.toml [rule.apply])"
    target = copies.target(argv, settings, suggestion.edit, cwd)
    if isinstance(target, str):
        return target
    text = read_text_file(target.path)
    if text is None:
        return f"{target.path.name}: missing, unreadable or larger than {MAX_CONFIG_BYTES} bytes"
    try:
        written, done = copy_text(text, target, suggestion.edit, env)
    except CopyError as exc:
        return f"{target.path.name}: {exc}"
    return ConfigChange(target, written, done, suggestion.edit.flags)


@contextlib.contextmanager
def written_copy(change: ConfigChange) -> Iterator[tuple[tuple[str, ...], dict[str, str], CopiedConfig] | str]:
    """The copy written for one test run, and the command and environment that run on it (why not, when it
    could not be written: a read-only directory); removed afterwards with its directory. The original is only read.
    The copy goes in a new private temporary directory, or, for a trainer that finds its config by a path under
    its working directory (`ConfigTarget.beside`), in a new hidden directory beside the original."""
    original, beside = change.target.path, change.target.beside
    directory: Path | None = None
    try:
        directory = Path(
            tempfile.mkdtemp(
                prefix=".vramwatch-try-" if beside else "vramwatch-try-", dir=original.parent if beside else None
            )
        )
        copy = directory / original.name
        copy.write_text(change.text, encoding="utf-8")
    except OSError as exc:
        made: tuple[tuple[str, ...], dict[str, str], CopiedConfig] | str = (
            f"a copy of {original.name} could not be written: {exc.strerror or exc}"
        )
    else:
        argv, variables = change.target.run_on(copy)
        for flag, value in change.flags:
            argv = set_flag(argv, flag, value)
        made = (argv, variables, CopiedConfig(str(original), str(copy), change.set))
    try:
        yield made
    finally:
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


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
) -> Tries:
    """The field guide's loop, automated: probe again with each of the top `count` suggested changes that can
    be applied (to the command line, the environment, or a copy of the trainer's config file), one at a time,
    and measure what each did. Changes that cannot be applied (a prompt file's, code, a key the copy cannot
    take) are passed over, each with its reason (`Tries.not_tried`); one that saves no memory is skipped."""
    base = dict(os.environ if env is None else env)
    where = cwd if cwd is not None else str(Path.cwd())
    settings = recognize(argv, cwd=where, env=base)
    tried: list[Tried] = []
    passed: list[NotTried] = []
    for s in result.advice:
        if len(tried) >= count:
            break
        if s.expected_saving.startswith(("none", "no memory")):
            continue  # not a memory change (kohya_resumable: periodic state saves): not a fix to try
        change = config_change(argv, s, settings, cwd=where, env=base)
        if isinstance(change, str):
            passed.append(NotTried(s.change, change))  # a config file's change that cannot go into a copy
            continue
        if change is None:
            made = applied(argv, s.change)
            if made is None:
                passed.append(NotTried(s.change, NOT_APPLICABLE))
                continue
            new_argv, variables = made
            probed = run_probe(new_argv, config, env={**base, **variables}, cwd=cwd, out=out, child_stdout=child_stdout)
            tried.append(Tried(s.change, s.expected_saving, new_argv, tuple(variables.items()), probed))
        else:
            with written_copy(change) as made_copy:
                if isinstance(made_copy, str):
                    passed.append(NotTried(s.change, made_copy))  # a read-only directory
                    continue
                new_argv, variables, copied = made_copy
                probed = run_probe(
                    new_argv, config, env={**base, **variables}, cwd=cwd, out=out, child_stdout=child_stdout
                )
            tried.append(Tried(s.change, s.expected_saving, new_argv, tuple(variables.items()), probed, copied))
        if probed.exit_code == EXIT_INTERRUPTED:
            break  # Ctrl-C ends the whole loop, not one round of it
    return Tries(tuple(tried), tuple(passed))


def _tried_line(t: Tried, base: ProbeResult) -> str:
    """ "with `--gradient_checkpointing`: fits to step 3,000 ...; step peak 15.20 GiB (-31 %); steps 24 % slower"."""
    text = f"with `{t.change}`"
    if t.config is not None:
        written = ", ".join(f"{key} = {json.dumps(value)}" for key, value in t.config.set)
        text += f" (in a copy of {Path(t.config.original).name}: {written})"
    text += f": {verdict_text(t.result)}"
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
    n = result.measured_steps
    if result.exit_code == EXIT_INTERRUPTED:
        return f"none: the probe was interrupted (Ctrl-C) after {n:,} steps, and the command stopped"
    if result.phase_oom is not None and result.oom is not None:
        first = _first_occurrence(result.schedule, result.phase_oom)
        brought = (
            f" (the save brought forward to after step {result.oom_after_step:,})"
            if SAVE in result.phase_oom.split("+") and result.schedule.probe_save_every and result.oom_after_step
            else ""
        )
        return (
            f"will run out at {phase_words(result.phase_oom)}{first}: in this probe{brought} it asked for "
            f"{size(result.oom.requested_bytes)} with {size(result.oom.device_free_bytes)} free on the device"
        )
    if result.oom is not None:
        after = result.oom_after_step
        return "out of memory during the probe" + (f", after step {after:,}" if after else "")
    if result.failure is not None:
        return f"none: {result.failure}"
    if result.crashed:
        where = f"after step {n:,}" if n else "before its first optimizer step"
        return f"none: the command crashed (exit status {result.exit_status}) {where}, before it was measured"
    if result.verdict is not None and result.profile is not None:
        text = describe(result.verdict, result.profile, result.schedule)
        if result.short:
            why = "the time limit came first" if result.stopped == "time" else _STOPPED[result.stopped]
            text = f"measured only {n:,} of {result.steps_asked:,} steps ({why}): {text}"
        return text
    if result.stopped == "time":
        return f"none: the time limit came before the steps could be measured ({n:,} counted)"
    return f"none: the command ended (status {result.exit_status}) before its steps could be measured"


def _first_occurrence(schedule: Schedule, phase: str) -> str:
    """ " (first after step 50, --sample_every_n_steps 50)" for a scheduled phase, " (after the last step,
    step 3,000)" for a save the run makes only there, "" otherwise."""
    name = phase.split("+", maxsplit=1)[0]
    first = _first_step(schedule, phase)
    if name == SAVE and first is not None and first != schedule.every(SAVE):
        return f" (after the last step, step {first:,})"
    interval = schedule.every(name)
    spelled = schedule.spelled_every(name)
    return f" (first after step {interval:,}" + (f", {spelled})" if spelled else ")") if interval else ""


def _first_step(schedule: Schedule, phase: str) -> int | None:
    """The step a phase first runs after in the run as given: 0 when before step 1, else its interval; for a
    save, the last step where the run saves only after it (`Schedule.first_save`)."""
    name = phase.split("+", maxsplit=1)[0]
    if name in schedule.phases_after(0):
        return 0
    return schedule.first_save() if name == SAVE else schedule.every(name)


_STOPPED = {
    "measured": "stopped once measured",
    "time": "stopped at the time limit",
    "exited": "the command ended by itself",
    "oom": "it ran out of memory",
    "no_steps": "stopped: no optimizer step to measure",
    "interrupted": "interrupted",
}


def _json_verdict(result: ProbeResult) -> dict[str, Any] | None:
    """The JSON's `verdict`, always what the exit code says: the phase the probe ran out in (exit 4), the
    forecast where the exit code is the forecast's (0, 4, 5, 6), else null (an OOM in a training step, a
    crash, no step measured, an interrupt)."""
    if result.phase_oom is not None and result.exit_code == EXIT_PHASE:
        return {
            "outcome": Outcome.PHASE.value,
            "step": _first_step(result.schedule, result.phase_oom),
            "phase": result.phase_oom,
            "needed_bytes": None,  # the probe's OOM gives the request that failed (`oom`), not the phase's need
            "spare_bytes": None,
            "margin_bytes": None,
            "end_step": result.schedule.max_steps,
            "unmeasured": [],
            "unmeasured_at_end": [],
            "upper_bound": False,  # it ran out: no bound, a fact
        }
    verdict = result.verdict
    if verdict is None or result.exit_code not in {EXIT_FITS, EXIT_PHASE, EXIT_GROWTH, EXIT_UNMEASURED}:
        return None
    return {
        "outcome": verdict.outcome.value,
        "step": verdict.step,
        "phase": verdict.phase,
        "needed_bytes": verdict.needed_bytes,
        "spare_bytes": verdict.spare_bytes,
        "margin_bytes": verdict.margin_bytes,
        "end_step": verdict.end_step,
        "unmeasured": list(result.unmeasured),  # what makes exit 6
        "unmeasured_at_end": list(result.unmeasured_at_end),  # runs only after the last step: named, not exit 6
        # The failing phase was measured only before step 1, with the start-up: it may run out, not will.
        "upper_bound": verdict.upper_bound,
    }


def render_text(result: ProbeResult, tries: Tries | None = None) -> list[str]:
    """The probe's report for a terminal, what each tried change did, and which could not be tried."""
    tries = tries or Tries()
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
            bound = " (an upper bound: measured only before step 1, with the start-up)" if p.peak_is_upper_bound else ""
            lines.append(f"  {p.name}{every}: peak {size(p.peak_allocated_bytes)}{bound}, seen after step {seen}")
    if result.capacity_bytes is not None:
        lines.append(f"  this card: {size(result.capacity_bytes)} usable by the run (its reserved memory + free)")
    lines.append("verdict: " + verdict_text(result))
    if result.oom is not None and result.phase_oom is None:
        lines += [f"  {line}" for line in format_oom(result.oom)]
    if result.advice:
        lines.append("setting changes, most effective first:")
        shown = result.advice[:SHOWN]
        lines += [f"  {i}. {s.change}  ({s.expected_saving})" for i, s in enumerate(shown, 1)]
    if tries.tried:
        lines.append("measured, one change at a time:")
        lines += [f"  {_tried_line(t, result)}" for t in tries.tried]
    lines += [f"  not tried: {_change_text(n.change)} ({n.why})" for n in tries.not_tried]
    return lines


def _change_text(change: str) -> str:
    """A change without its trailing note in parentheses ("--blocks_to_swap 18  (not together with ...)")."""
    return change.split("  (", maxsplit=1)[0].strip()


def to_json(result: ProbeResult, tries: Tries | None = None) -> dict[str, Any]:
    """The probe's report for scripts: bytes and seconds, never formatted figures."""
    tries = tries or Tries()
    prof = result.profile
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
            "save_at_end": result.schedule.save_at_end,
            # The save the probe brought into its test run saved every this many steps (null: none brought).
            "probe_save_every": result.schedule.probe_save_every,
        },
        "steps": None
        if prof is None
        else {
            "measured": prof.step,
            "peak_allocated_bytes": prof.step_peak_allocated_bytes,
            # The largest peak any record executed (start-up and phases too): a need up to it fits without the
            # allocator's margin.
            "executed_peak_allocated_bytes": prof.executed_peak_allocated_bytes,
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
                # Measured only before step 1, together with the start-up: the phase needs at most this much.
                "upper_bound": p.peak_is_upper_bound,
                "seen_after": list(p.seen_after),
            }
            for p in prof.phases
        ],
        "verdict": _json_verdict(result),
        "steps_asked": result.steps_asked,
        "failure": result.failure,
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
                # A config file's change: the file copied, its copy (removed after the run) and the keys set.
                "config_file": None
                if t.config is None
                else {"original": t.config.original, "copy": t.config.copy, "set": dict(t.config.set)},
            }
            for t in tries.tried
        ],
        # The changes --try passed over before reaching its N, in rank order, and why each could not be applied.
        "not_tried": [{"change": n.change, "why": n.why} for n in tries.not_tried],
        "advice": [{"change": s.change, "saving": s.expected_saving} for s in result.advice],
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
