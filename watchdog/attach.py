"""`vramwatch attach <pid>`: one training run's live view, for the person at the keyboard.

It samples by itself (NVML is cheap and any number of clients may read it, so a running daemon is no
obstacle), runs the same detectors as the daemon, and shows the run's process tree memory, the card, a
sparkline of the last minutes, the growth rate and time to OOM, findings and advice. Attaching is consent:
the policy's actions for this pid (a save-now adapter, if the policy enables one) apply to it. When the
process ends, a summary says how: its peak, its growth, and whether it probably died of OOM.

When the run's processes carry the in-process agent (`vramwatch run`) and a daemon (`vramwatch serve`) receives
their reports, the agent's step figures are read from the daemon's `/status.json` (`steps`): the last step,
the training steps' peak, growth per step, and whether the run fits or where it will run out.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import psutil

from .actions import ActionResult
from .actions.payload import gpu_index
from .backends.simulated import SimulatedBackend, ground_truth
from .daemon import Pipeline
from .detectors import pressure, settings
from .detectors.pressure import pressure_threshold
from .errors import VramwatchError
from .model import POST_MORTEM_KINDS, Finding, Snapshot
from .render import eta_text, finding_dict, finding_to_json
from .sampler import run_every
from .stephistory import StepFigures, worst
from .steps import phase_words
from .typing import ActionHandler, Backend, Clock
from .units import duration, gib, gpu_label, rate, size

SPARK = "▁▂▃▄▅▆▇█"
#: How long a pid that is not (yet) on a GPU is waited for before giving up.
WAIT_FOR_GPU_SECONDS = 600.0
#: How long a pid that left the GPU may take to exit before it is called "left the GPU (still running)".
EXIT_GRACE_SECONDS = 10.0
#: How often the daemon's step figures are read again (it redoes a forecast every few seconds at most).
STEPS_EVERY_SECONDS = 5.0

#: The agents' step figures of every process that reports them (attach keeps those of its run's tree).
StepSource = Callable[[], Sequence[StepFigures]]


class DaemonSteps:
    """The step figures a running daemon publishes in `/status.json`, read at most every `every` seconds.

    `fetch` returns the daemon's document or None (no daemon answers): then there are no figures, and the
    watch goes on with what it samples itself.
    """

    def __init__(
        self, fetch: Callable[[], Mapping[str, Any] | None], clock: Clock, every: float = STEPS_EVERY_SECONDS
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._every = every
        self._at: float | None = None
        self._last: tuple[StepFigures, ...] = ()

    def __call__(self) -> tuple[StepFigures, ...]:
        now = self._clock.monotonic()
        if self._at is not None and now - self._at < self._every:
            return self._last
        self._at = now
        doc = self._fetch()
        entries = doc.get("steps") if doc is not None else None
        parsed = (StepFigures.from_dict(e) for e in entries if isinstance(e, dict)) if isinstance(entries, list) else ()
        self._last = tuple(f for f in parsed if f is not None)
        return self._last


def step_line(f: StepFigures) -> str:
    """One process's steps in a line: how far, the step peak, growth, and fits or where it runs out."""
    reserved = f" ({size(f.step_peak_reserved_bytes)} reserved)" if f.step_peak_reserved_bytes is not None else ""
    growth = f"grows {size(f.growth_bytes_per_step)} a step" if f.growth_bytes_per_step > 0 else "no growth a step"
    if f.outcome is None:
        verdict = "no forecast yet"
    elif f.fails and f.phase is not None:
        verdict = f"will run out at {phase_words(f.phase)} (step {f.fail_step:,})"
    elif f.fails:
        verdict = f"will run out at step {f.fail_step:,}"
    else:
        verdict = "fits"
    return (
        f"step {f.step:,} (pid {f.pid}): step peak {size(f.step_peak_allocated_bytes)}{reserved}, {growth}; {verdict}"
    )


class StatusBlock(Protocol):
    """Where a terminal shows the run's state, redrawn in place (see `terminal.LiveBlock`); piped, there is none."""

    def update(self, text: str) -> None:
        """Replace the block with `text` (a few lines)."""

    def close(self) -> None:
        """Leave the last block on screen; what is printed next goes below it."""


def sparkline(values: list[float], width: int = 40) -> str:
    """The last `width` values as block characters scaled between their min and max."""
    vals = values[-width:]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    span = hi - lo or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((v - lo) / span * (len(SPARK) - 1)))] for v in vals)


@dataclass
class AttachState:
    """What attach has seen of the run so far; becomes the closing summary."""

    pid: int
    seen_on_gpu: bool = False
    peak_bytes: int = 0
    first_bytes: int | None = None
    first_t: float | None = None
    last_t: float | None = None
    last_bytes: int = 0
    history: list[float] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    actions: list[tuple[float, ActionResult]] = field(default_factory=list)  # (t, what was done)
    ended: str | None = None
    last_free_bytes: int | None = None  # the card's free memory at the run's last tick on it
    left_nearly_full: bool = False  # ... under the pressure threshold
    exit_code: int | None = None  # as /proc showed it before the process was reaped, when it did
    exit_signal: int | None = None
    steps: dict[tuple[int, int], StepFigures] = field(default_factory=dict)  # (pid, device) -> the agent's steps

    def worst_steps(self) -> StepFigures | None:
        """The step figures of the run's process that runs out first (all its ranks report)."""
        return worst(list(self.steps.values()))

    def probable_oom(self) -> bool:
        return any(f.kind in POST_MORTEM_KINDS and f.process and f.process.pid == self.pid for f in self.findings)

    def summary(self) -> dict[str, Any]:
        span = (self.last_t - self.first_t) if self.first_t is not None and self.last_t is not None else None
        oom = self.probable_oom()
        return {
            "event": "summary",
            "pid": self.pid,
            "ended": self.ended,
            "probable_oom": oom,
            "peak_bytes": self.peak_bytes,
            "first_bytes": self.first_bytes,
            "last_bytes": self.last_bytes,
            "watched_seconds": span,
            "growth_bytes_per_second": (
                (self.last_bytes - self.first_bytes) / span if span and self.first_bytes is not None else None
            ),
            "exit_code": self.exit_code,
            "exit_signal": self.exit_signal,
            "last_free_bytes": self.last_free_bytes,
            "left_nearly_full": self.left_nearly_full,
            # The card index the tick lines gave each finding (`Pipeline.step` records it in its numbers).
            "findings": [finding_dict(f, gpu_index(f)) for f in self.findings],
            "actions": [{"t": t, **r.log_fields()} for t, r in self.actions],
            "steps": [f.as_dict() for _, f in sorted(self.steps.items())],
        }


def _running(pid: int) -> bool:
    """Alive and not a zombie: a trainer whose parent has not reaped it yet has ended all the same."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.AccessDenied:  # /proc mounted with hidepid: it exists, we may not look
        return True
    except psutil.Error:
        return False


def check_pid(pid: int, backend: Backend) -> str | None:
    """Refuse a pid that does not exist; return a note when it belongs to another user (read-only then)."""
    if isinstance(backend, SimulatedBackend):
        # Simulated pids live in the scenario: one that never runs in it would be waited for in vain.
        story = ground_truth(backend.scenario.name, seed=backend.seed)
        pids = sorted({int(p["pid"]) for p in story["processes"]})
        if pid not in pids:
            raise VramwatchError(
                f"pid {pid} never runs in the simulated scenario {backend.scenario.name!r}; its pids: "
                + ", ".join(map(str, pids))
            )
        return None
    if backend.kind == "replay":
        # Replayed pids live in the recording, not on this machine: one it never shows would be waited for until
        # the trace ends, a second a tick. One pass over the file, as `report` makes.
        from .trace import read_trace

        path = backend.path  # type: ignore[attr-defined]
        if not any(u.pid == pid for reading in read_trace(path)[1] for u in reading.processes):
            raise VramwatchError(f"pid {pid} never uses a GPU in the trace {path}")
        return None
    if backend.kind != "nvml":
        return None
    try:
        proc = psutil.Process(pid)
        owner = proc.username()
    except psutil.NoSuchProcess:
        raise VramwatchError(f"no process with pid {pid}") from None
    except psutil.AccessDenied:
        owner = None
    me = psutil.Process().username()
    if me not in (owner, "root"):
        return (
            f"pid {pid} belongs to {owner or 'another user'}: its memory is shown, but vramwatch will not act on it "
            "(attach as that user, or as root, to let the policy signal it)"
        )
    return None


def attach(
    pid: int,
    backend: Backend,
    pipeline: Pipeline,
    dispatcher: ActionHandler,
    clock: Clock,
    *,
    out: Callable[[str], None],
    as_json: bool = False,
    interval: float = 1.0,
    stop: threading.Event | None = None,
    wait: Callable[[float], bool] | None = None,
    block: StatusBlock | None = None,
    steps: StepSource | None = None,
) -> dict[str, Any]:
    """Watch `pid` until it ends (or `stop` is set); returns the summary it also prints.

    With a `block` (a terminal), the run's state is redrawn there each tick and only what is news (findings
    with their advice, actions, the summary) goes to `out`; without one, each tick is printed as lines.
    `steps`: the agents' step figures (a daemon's, see `DaemonSteps`), shown for the run's processes.
    """
    note = check_pid(pid, backend)
    if note:
        out(json.dumps({"event": "note", "message": note}) if as_json else f"vramwatch: {note}")
    state = AttachState(pid)
    stop = stop or threading.Event()
    attached = frozenset({pid})
    waited = 0.0
    gone_for = 0.0

    def step() -> None:
        nonlocal waited, gone_for
        try:
            snap, raised, cleared = pipeline.step()
        except EOFError:  # a replay ran out
            state.ended = "recording ended"
            stop.set()
            return
        if snap is None:
            return
        mine = [p for p in snap.processes if pid in (p.pid, p.meta.root_pid)]
        tree = {p.pid for p in mine} | {pid}
        if steps is not None:
            state.steps.update({(f.pid, f.device): f for f in steps() if f.pid in tree})
        gpus = {p.gpu_uuid for p in mine}
        relevant = [f for f in raised if f.gpu_uuid in gpus or (f.process and f.process.pid == pid)]
        state.findings.extend(relevant)
        if mine:
            state.seen_on_gpu = True
            gone_for = 0.0
            tree_bytes = sum(p.used_bytes or 0 for p in mine)
            state.first_bytes = tree_bytes if state.first_bytes is None else state.first_bytes
            state.first_t = snap.t if state.first_t is None else state.first_t
            state.last_t, state.last_bytes = snap.t, tree_bytes
            state.peak_bytes = max(state.peak_bytes, tree_bytes)
            frees = [g for g in snap.gpus if g.uuid in gpus and g.free_bytes is not None and g.total_bytes]
            low = min(frees, key=lambda g: g.free_bytes or 0, default=None)
            state.last_free_bytes = None if low is None else low.free_bytes
            state.left_nearly_full = low is not None and (low.free_bytes or 0) < pressure_threshold(
                low.total_bytes or 0, settings(pipeline.detector_config, pressure.DETECTOR)
            )
            state.history.append(tree_bytes)
            del state.history[:-600]
            if block is not None and not as_json:
                block.update(_status_text(pid, snap, mine=mine, pipeline=pipeline, state=state, with_active=True))
                if relevant:
                    out(_findings_text(relevant))
            else:
                out(_render(pid, snap, mine=mine, pipeline=pipeline, new=relevant, state=state, as_json=as_json))
        # Attach acts for this run only: on findings about its tree, or about its GPU with no process named,
        # and then only among its own processes. Other people's findings are shown, never acted on from here.
        ours = [f for f in relevant if f.process is None or f.process.pid in tree]
        ours_cleared = [f for f in cleared if (f.process.pid in tree if f.process else f.gpu_uuid in gpus)]
        # Another user's run (see check_pid) is only watched: the note promised that nothing is done to it.
        results = [] if note else dispatcher.handle(ours, ours_cleared, attached, mine)
        # The person at the keyboard must see what was done to their run (a save-now signal), and what
        # was refused and why; notifications and log lines are not news to them.
        acted = [r for r in results if r.action not in {"notify", "log"} and not _post_mortem_refusal(r)]
        state.actions.extend((snap.t, r) for r in acted)
        for r in acted:
            out(json.dumps({"event": "action", "t": snap.t, **r.log_fields()}) if as_json else _action_text(r))
        if mine:
            return
        for ex in snap.exits:
            if ex.pid == pid:
                state.exit_code, state.exit_signal = ex.exit_code, ex.signal
        if state.seen_on_gpu:
            gone_for += interval
            alive = backend.kind == "nvml" and _running(pid)
            if alive and gone_for < EXIT_GRACE_SECONDS:
                return  # its CUDA context goes first: a process dying of OOM is still writing its traceback
            if state.probable_oom():
                state.ended = "probable OOM" + (" (the process is still running)" if alive else "")
            else:
                state.ended = "left the GPU (still running)" if alive else "exited"
            stop.set()
            return
        waited += interval
        if backend.kind == "nvml" and not _running(pid):
            state.ended = "exited before using a GPU"
            stop.set()
        elif waited >= WAIT_FOR_GPU_SECONDS:
            state.ended = "never used a GPU while watched"
            stop.set()
        elif waited == interval:
            out(json.dumps({"event": "waiting", "pid": pid}) if as_json else f"waiting for pid {pid} to use a GPU...")

    try:
        run_every(interval, step, clock, stop, wait=wait)
    finally:
        if block is not None:
            block.close()
    summary = state.summary()
    if as_json:
        out(json.dumps(summary))
    else:
        out(_summary_text(summary))
    return summary


def _render(
    pid: int,
    snap: Snapshot,
    *,
    mine: list[Any],
    pipeline: Pipeline,
    new: list[Finding],
    state: AttachState,
    as_json: bool,
) -> str:
    growth, eta, cards, active = _figures(pipeline, snap, mine)
    if as_json:
        return json.dumps(
            {
                "event": "tick",
                "t": snap.t,
                "pid": pid,
                "tree_bytes": state.last_bytes,
                "processes": [{"pid": p.pid, "gpu_uuid": p.gpu_uuid, "used_bytes": p.used_bytes} for p in mine],
                "gpus": [{"uuid": g.uuid, "used_bytes": g.used_bytes, "total_bytes": g.total_bytes} for g in cards],
                "growth_bytes_per_second": growth or None,
                "oom_eta_seconds": eta,
                "findings": [finding_to_json(f, snap) for f in new],
                "steps": [f.as_dict() for _, f in sorted(state.steps.items())],
            }
        )
    text = _status_text(pid, snap, mine=mine, pipeline=pipeline, state=state, with_active=not new and bool(active))
    return text + ("\n" + _findings_text(new) if new else "")


def _figures(
    pipeline: Pipeline, snap: Snapshot, mine: list[Any]
) -> tuple[float, float | None, list[Any], list[Finding]]:
    """The run's growth rate (summed over its processes), the soonest OOM forecast of its cards, its cards, and
    the findings still active on them."""
    analysis = pipeline.analysis
    gpus = {p.gpu_uuid for p in mine}
    growth = sum(
        analysis.process_growth[(p.key, p.gpu_uuid)].bytes_per_second
        for p in mine
        if analysis is not None and (p.key, p.gpu_uuid) in analysis.process_growth
    )
    eta = min((analysis.oom_eta[u][0] for u in gpus if analysis and u in analysis.oom_eta), default=None)
    cards = [g for g in snap.gpus if g.uuid in gpus]
    active = [f for f in pipeline.tracker.active() if f.gpu_uuid in gpus]
    return growth, eta, cards, active


def _status_text(pid: int, snap: Snapshot, *, mine: list[Any], pipeline: Pipeline, state: AttachState,
                 with_active: bool) -> str:  # fmt: skip
    """The run's state in two lines (three `with_active`: the kinds of the findings still active)."""
    growth, eta, cards, active = _figures(pipeline, snap, mine)
    free = min((g.free_bytes for g in cards if g.free_bytes is not None), default=None)
    lines = [
        f"pid {pid} ({mine[0].meta.name or '?'}): {gib(state.last_bytes)} GiB on "
        + ", ".join(f"{gpu_label(g)} ({gib(g.used_bytes)}/{gib(g.total_bytes)} GiB used)" for g in cards)
        + (f"  trend {rate(growth, signed=True)}" if growth else "")
        + (f"  {eta_text(eta, free)}" if eta is not None else ""),
        f"  {sparkline(state.history)}  peak {gib(state.peak_bytes)} GiB",
    ]
    figures = state.worst_steps()
    if figures is not None:
        lines.append(f"  {step_line(figures)}")
    if with_active and active:
        lines.append(f"  active: {', '.join(sorted({f.kind for f in active}))}")
    return "\n".join(lines)


def _findings_text(new: list[Finding]) -> str:
    lines = []
    for f in new:
        lines.append(f"  [{f.severity.value}] {f.message}")
        lines.extend(f"      -> {a}" for a in f.advice)
    return "\n".join(lines)


def _post_mortem_refusal(r: ActionResult) -> bool:
    # Nothing can be done for a run that already died; "not signalling after a probable_oom" is not news.
    return r.action in {"signal", "kill", "hook"} and not r.done and not r.dry_run and r.kind in POST_MORTEM_KINDS


def _action_text(r: ActionResult) -> str:
    verdict = "done" if r.done else ("dry-run" if r.dry_run else "not done")
    return f"  action {_what(r.log_fields())}: {verdict}: {r.reason}"


def _what(fields: dict[str, Any]) -> str:
    """'signal SIGUSR2 (agent) to pid 4242' from an action's log fields (live, or in the summary)."""
    how = [fields.get("signal"), f"({fields['adapter']})" if fields.get("adapter") else None]
    to = f"to pid {fields['pid']}" if fields.get("pid") is not None else None
    return " ".join(x for x in (fields["action"], *how, to) if x)


def _summary_text(s: dict[str, Any]) -> str:
    lines = [f"pid {s['pid']}: {s['ended'] or 'stopped watching'}"]
    if s["peak_bytes"]:
        lines.append(
            f"  peak {gib(s['peak_bytes'])} GiB; from {gib(s['first_bytes'])} to {gib(s['last_bytes'])} GiB"
            f" over {duration(s['watched_seconds'])} ({rate(s['growth_bytes_per_second'], signed=True)} on average)"
        )
    figures = worst([f for f in map(StepFigures.from_dict, s.get("steps", [])) if f is not None])
    if figures is not None:
        lines.append(f"  {step_line(figures)}")
        if figures.message:
            lines.append(f"    {figures.message}")
    done = [a for a in s.get("actions", []) if a.get("done")]
    if done:
        lines.append("  acted: " + "; ".join(_what(a) for a in done))
    if s["exit_code"] is not None or s["exit_signal"] is not None:
        how = f"signal {s['exit_signal']}" if s["exit_signal"] else f"status {s['exit_code']}"
        lines.append(f"  it exited with {how}")
    if s["probable_oom"]:
        lines.append("  it probably died of out-of-memory: see the findings and advice above")
    elif s["ended"] == "exited" and s["left_nearly_full"]:
        # What is known, no more: a run that ends on a full card is most often a run that ended.
        lines.append(
            f"  it left while the card was nearly full ({gib(s['last_free_bytes'])} GiB free); nothing says it ran "
            "out of memory (its own memory did not run into the limit)"
        )
    return "\n".join(lines)
