"""The daemon loop: sample, analyse, track, act, publish — once a second, on one thread.

One `step()` is the whole pipeline of a tick:

    backend.read() -> attribution -> History -> detectors.analyze() -> FindingTracker (raise once, clear once)
        -> advice attached to new findings -> notifiers / actions -> ExportState published for /metrics

The loop holds no detection rule of its own: what is a finding (the agents' OOM reports included) is decided
in `detectors/`, which advice it gets in `enrich.py`, what is done about it in `actions/`.

Everything slow or fallible sits behind a seam that cannot stall the tick: notifiers queue and deliver on
their own thread, hooks run in their own process, the HTTP server answers scrapes from the last published
(immutable) state. A backend that disappears (driver unloaded, NVML gone) is reopened with backoff while
`vramwatch_up` reads 0; a lost GPU is marked down by the backend and the others are still served.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from types import FrameType

import structlog

from .actions import ActionDispatcher, parse_policy
from .agenthost.link import AgentDevice, AgentListener, AgentReport
from .clock import SystemClock
from .config import Config
from .detectors import Analysis, DetectorConfig, FindingTracker, Rate, analyze, config_from_table
from .enrich import Enricher, read_tree
from .environ import read_environ
from .errors import BackendUnavailable, VramwatchError
from .exporter import ExportState, MetricsServer, Pages, make_registry
from .history import History
from .lazy import LazyMapping
from .model import Finding, FindingKind, OomEvent, ProcessKey, ProcessMeta, Snapshot, TorchStats
from .render import card_index, finding_to_json, snapshot_to_json
from .sampler import Sampler, TickStats, run_every
from .schedule import process_schedule
from .sdnotify import SdNotifier
from .stephistory import StepFigures, StepHistory, step_figures
from .steps import Schedule
from .typing import Backend, Clock, described

log = structlog.get_logger("vramwatch.daemon")

BackendFactory = Callable[[], Backend]

#: Bounds of the agents' step histories: per process and device (see `StepHistory`), and processes in all.
STEP_RECORDS = 1024
STEP_RECENT_RECORDS = 512
STEP_PROCESSES = 256
#: A process's step forecast is redone at most this often (a profile costs milliseconds; agents report at 1 Hz).
STEP_FORECAST_SECONDS = 5.0


def _bytes_per_second(rate: Rate) -> float:
    return rate.bytes_per_second


@dataclass(slots=True)
class _StepTrack:
    """One agent's steps on one device as the daemon keeps them, and what it last made of them."""

    history: StepHistory
    received: float  # monotonic time of its latest records
    capacity_bytes: int | None = None  # what the process can allocate there (reserved + free), from its stats
    gpu_uuid: str | None = None
    figures: StepFigures | None = None
    figured_at: float | None = None
    figured_updates: int = -1
    # Whether the trainer's schedule (its end, sampling, saving) was read: once, when the sampler first shows the
    # process with its command line; until then the forecast looks a fixed horizon ahead.
    scheduled: bool = False


#: The kinds that tell the agents on a GPU that memory is about to run out, so that they can save.
PRESSURE_NOTICE_KINDS = frozenset(
    {FindingKind.OOM_FORECAST, FindingKind.PRESSURE, FindingKind.FRAGMENTATION, FindingKind.GROWTH}
)


@dataclass
class Backoff:
    """Exponential retry delays (1 s doubling to `cap`), reset after a success."""

    cap: float = 60.0
    delay: float = 1.0
    next_at: float = 0.0

    def failed(self, now: float) -> float:
        wait = self.delay
        self.next_at = now + wait
        self.delay = min(self.cap, self.delay * 2)
        return wait

    def reset(self) -> None:
        self.delay, self.next_at = 1.0, 0.0


@dataclass
class Pipeline:
    """Sampling plus detection: what `serve`, `replay`, `record` and `attach` share.

    Keeps no state of its own besides the history and the finding tracker; `step()` returns the snapshot and
    the findings raised and cleared at this tick.
    """

    backend: Backend
    history: History
    clock: Clock
    detector_config: DetectorConfig = field(default_factory=DetectorConfig)
    advise: bool = True
    torch_source: Callable[[], tuple[TorchStats, ...]] | None = None
    #: The agents' OOM reports since the last tick (drained on each call); the `oom` detector reads them.
    oom_source: Callable[[], tuple[OomEvent, ...]] | None = None

    def __post_init__(self) -> None:
        self.sampler = Sampler(self.backend, self.history, self.clock, self.torch_source)
        self.tracker = FindingTracker(self.detector_config)
        self.analysis: Analysis | None = None
        # Agents' OOM reports the `oom` detector could not judge (it raised): offered again at the next tick.
        self._unjudged_ooms: tuple[OomEvent, ...] = ()
        # Per (detector, GPU, type of error): when it was last logged, and the failures since (a bug at 1 Hz is one
        # line every `FAILURE_LOG_SECONDS`, not 3,600 tracebacks an hour).
        self._failures_logged: dict[tuple[str, str | None, str], tuple[float, int]] = {}
        # Live lookups (a trainer's environment, its launcher's command line) only make sense for real pids.
        self.enrich = (
            Enricher(self.history, live=self.backend.kind == "nvml", advise_args=_advise_args(self.backend))
            if self.advise
            else None
        )

    def step(self) -> tuple[Snapshot | None, list[Finding], list[Finding]]:
        """Sample, analyse, track; advice on what is raised. Returns the snapshot and what was raised and cleared."""
        snap = self.sampler.tick()
        if snap is None:
            return None, [], []
        ooms = self._unjudged_ooms + (self.oom_source() if self.oom_source is not None else ())
        self.analysis = analyze(self.history, self.detector_config, ooms=ooms)
        self._unjudged_ooms = ()
        if self.analysis.failed:
            self._failed(self.analysis, ooms)
        raised, cleared = self.tracker.update(self.analysis)
        if self.enrich is not None and raised:
            active = self.tracker.active()
            raised = [self.enrich(f, snap, self.analysis, active) for f in raised]
        return snap, [with_gpu_index(f, snap) for f in raised], [with_gpu_index(f, snap) for f in cleared]

    def _failed(self, analysis: Analysis, ooms: tuple[OomEvent, ...]) -> None:
        """Count and log the detectors that raised at this tick; keep the OOM reports the `oom` detector missed."""
        stats = self.sampler.stats.detector_failures
        for kind in {f.kind for f in analysis.failed}:
            stats[kind] = stats.get(kind, 0) + 1
        if any(f.kind == FindingKind.OOM for f in analysis.failed):
            self._unjudged_ooms = ooms[-MAX_UNJUDGED_OOMS:]
        for f in analysis.failed:
            # Errors are told apart by their type (a message that carries a number differs at every tick), per
            # detector and GPU.
            kind_of_error = f.error.partition(":")[0]
            key = (f.kind, f.gpu_uuid, kind_of_error)
            last = self._failures_logged.get(key)
            if last is not None and analysis.t - last[0] < FAILURE_LOG_SECONDS:
                self._failures_logged[key] = (last[0], last[1] + 1)
                continue
            # A new error logs its traceback; the same one again says only how often it came since.
            log.error(
                "detector_failed",
                detector=f.kind,
                gpu=f.gpu_uuid,
                error=f.error,
                repeats=None if last is None else last[1],
                effect="its findings on this GPU are held a while (neither raised nor cleared); the others go on",
                traceback=f.detail if last is None else None,
            )
            self._failures_logged[key] = (analysis.t, 0)


def with_gpu_index(f: Finding, snap: Snapshot) -> Finding:
    """`f` with its card's NVML index in `numbers["gpu_index"]`, as notifications read it (the `gpu` of a webhook
    and an Alertmanager alert, a hook's VRAMWATCH_GPU, "GPU 0" in a chat text): a finding keys its card by UUID."""
    index = None if "gpu_index" in f.numbers else card_index(f, snap)
    return f if index is None else replace(f, numbers={**f.numbers, "gpu_index": index})


def _advise_args(backend: Backend) -> str:
    """What `vramwatch advise PID` needs besides the pid to find a process of this backend: a simulated card's pids
    live in its scenario, not on the host."""
    if backend.kind == "simulated":
        scenario = backend.describe().get("scenario")
        if scenario:
            return f" --simulate {scenario}"
    return ""


#: What SIGHUP applies live; every other [daemon] option, and the RESTART_SECTIONS, need a restart.
RELOADABLE = frozenset({"process_metrics"})
RESTART_SECTIONS = ("policy", "notify")

#: A detector failing again and again with the same error is logged once in this many seconds.
FAILURE_LOG_SECONDS = 300.0
#: At most this many OOM reports wait for an `oom` detector that keeps failing (the newest).
MAX_UNJUDGED_OOMS = 64


class Daemon:
    """`vramwatch serve`: the pipeline on a 1 Hz loop, the metrics server, notifiers, signals, reload."""

    def __init__(
        self,
        config: Config,
        open_backend: BackendFactory,
        *,
        clock: Clock | None = None,
        dispatcher: ActionDispatcher | None = None,
        detector_config: DetectorConfig | None = None,
        on_tick: Callable[[Snapshot], None] | None = None,
        reload_config: Callable[[], Config] | None = None,
        systemd: SdNotifier | None = None,
        agents: AgentListener | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self._open_backend = open_backend
        # Default: the policy that only notifies, and no destination: findings are logged (below), nothing else.
        self.dispatcher = dispatcher or ActionDispatcher(parse_policy({}), (), default_log=False)
        self.detector_config = detector_config or DetectorConfig()
        self.on_tick = on_tick
        self._reload_config = reload_config
        self.systemd = systemd or SdNotifier(None)
        # In-process agents (`vramwatch run`): their allocator figures join the samples, their OOM reports
        # become certain post-mortems, and they are told when memory is about to run out.
        self.agents = agents
        self._agent_ooms: list[OomEvent] = []
        # The agents' optimizer steps per (pid, device): `serve` exports the step figures, `attach` shows them.
        # The daemon does not read trainers' flags: its forecasts look 100,000 steps ahead and learn recurring
        # peaks (`vramwatch run` forecasts against the trainer's own schedule).
        self._agent_steps: dict[tuple[int, int], _StepTrack] = {}
        self._agent_lock = threading.Lock()
        self._last_step: float | None = None
        self._status_line = ""
        d = config.daemon
        self.history = History(window_seconds=d.history_seconds, interval_seconds=d.interval)
        self.pipeline: Pipeline | None = None
        self.backend_info: dict[str, str] = {}
        self.stop_event = threading.Event()
        self.reload_requested = threading.Event()
        self._backoff = Backoff()
        self._findings_raised: dict[tuple[str, str], int] = {}
        self._idle_stats = TickStats()
        self._state = ExportState(snapshot=None, backend={}, stats=self._idle_stats, up=False)
        self.registry = make_registry(lambda: self._state)
        self.server: MetricsServer | None = None
        # The live page (`vramwatch.web`): its routes, served beside /metrics, and what it sees of each tick.
        self.pages: Pages | None = None
        self.on_findings: Callable[[Snapshot, list[Finding], list[Finding]], None] | None = None
        # How the loop waits between ticks (default: on stop_event); `serve --speed` shortens the waits.
        self.wait: Callable[[float], bool] | None = None
        #: Called with each backend the daemon opens, before its pipeline is built: `serve` sets up there what depends
        #: on the card (the agents' socket, the policy's reach, the recording) when none answered at its start.
        self.on_backend: Callable[[Backend], None] | None = None
        self._sigint_count = 0
        self._replay_ended = False

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start_server(self) -> int:
        """Bind the metrics server (raises VramwatchError with a clear message if the port is taken)."""
        self.server = MetricsServer(
            self.config.daemon.listen, self.registry, self.healthy, self.status_json, pages=self.pages
        )
        self.server.start()
        return self.server.port

    def run(self) -> None:
        """Tick until `stop_event` is set (SIGTERM/SIGINT), then shut down cleanly."""
        interval = self.config.daemon.interval
        if self.systemd.watchdog_interval_s is not None and not self.systemd.watchdog_covers(interval):
            # The pings go out every half WatchdogSec, and two ticks must fit between two pings (`watchdog_covers`).
            ping = self.systemd.watchdog_interval_s or 0.0
            log.warning(
                "watchdog_shorter_than_interval",
                interval=interval,
                watchdog_sec=2 * ping,
                needs_watchdog_sec=4 * interval,
                effect="one slow tick could get a healthy daemon killed: raise WatchdogSec= or lower the interval",
            )
        self.systemd.ready(f"serving {self.config.daemon.listen}")
        try:
            run_every(
                self.config.daemon.interval,
                self.step,
                self.clock,
                self.stop_event,
                on_overrun=self._overrun,
                wait=self.wait,
            )
        finally:
            self.systemd.stopping()
            self.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.pipeline is not None:
            self.pipeline.backend.close()
        if self.agents is not None:
            self.agents.stop()
        self.dispatcher.close()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop at the next wake-up (within a second); a second SIGINT forces exit; SIGHUP reloads."""
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:  # noqa: ARG002 - signal handler signature
        if signum == signal.SIGINT:
            self._sigint_count += 1
            if self._sigint_count > 1:
                raise KeyboardInterrupt  # the user insists: leave now, without the graceful path
        self.stop_event.set()

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:  # noqa: ARG002 - signal handler signature
        self.reload_requested.set()

    @property
    def state(self) -> ExportState:
        """What the last tick published (immutable; replaced whole at each tick)."""
        return self._state

    def status_json(self) -> bytes:
        """The `status --json` document of the last tick, with trends, forecasts, verdicts and findings."""
        st = self._state
        if st.snapshot is None:
            return json.dumps({"up": False, "backend": st.backend.get("backend")}).encode()
        doc = snapshot_to_json(
            st.snapshot, process_growth=st.process_growth, oom_eta=st.oom_eta, gpu_growth=st.gpu_growth
        )
        doc["up"] = st.up
        doc["backend"] = st.backend.get("backend")
        doc["verdicts"] = [
            {"pid": k.pid, "start_time": k.start_time, "gpu_uuid": gpu, "verdict": v}
            for (k, gpu), v in st.verdicts.items()
        ]
        doc["findings"] = [finding_to_json(f, st.snapshot) for f in st.active]
        # What the agents' optimizer steps say (`attach` shows it for its run); no command line in it.
        doc["steps"] = [f.as_dict() for _, f in sorted(st.steps.items())]
        return json.dumps(doc).encode()

    def lookup(self, key: ProcessKey) -> ProcessMeta | None:
        """What is known of a process identity, from history (it may have exited since)."""
        for (k, _gpu), track in self.history.processes.items():
            if k == key:
                return track.meta
        return None

    def recheck(self, finding: Finding) -> bool:
        """Right before an intrusive action: read the GPU again; act only if things have not got better.

        Holds when the finding's process is still on the GPU and free memory has not risen by more than 2% of
        the card since the finding was raised. A failed read means "do not act": uncertainty never signals.
        """
        p = self.pipeline
        if p is None or finding.gpu_uuid is None:
            return False
        try:
            reading = p.backend.read()
        except Exception:
            return False
        gpu = next((g for g in reading.gpus if g.uuid == finding.gpu_uuid), None)
        if gpu is None or not gpu.up or gpu.free_bytes is None or not gpu.total_bytes:
            return False
        if finding.process is not None and finding.process.pid not in {u.pid for u in reading.processes}:
            return False
        was = finding.numbers.get("free_bytes")
        return not (isinstance(was, (int, float)) and gpu.free_bytes > was + 0.02 * gpu.total_bytes)

    def healthy(self) -> bool:
        """True while the loop completed a step within three intervals (/healthz, like the systemd watchdog).

        A step that only retried a missing driver counts: the daemon is alive and says so with `vramwatch_up 0`;
        restarting it would not bring the driver back. A step stuck in a driver call does not count.
        """
        if self._last_step is None:
            return False
        return self.clock.monotonic() - self._last_step < 3 * self.config.daemon.interval + 1

    # -- one tick ----------------------------------------------------------------------------------------

    def step(self) -> None:
        """One tick; whatever happens in it, the loop's liveness is recorded and systemd's watchdog fed."""
        try:
            self._step()
        finally:
            self._last_step = self.clock.monotonic()
            self.systemd.watchdog()
            self._report_status()

    def _report_status(self) -> None:
        snap = self._state.snapshot
        if not self._state.up or snap is None:
            line = "GPU library unavailable; retrying"
        else:
            line = f"{len(snap.gpus)} GPUs, {len(snap.processes)} processes, {len(self._state.active)} findings"
        if line != self._status_line:
            self._status_line = line
            self.systemd.status(line)

    def _step(self) -> None:
        """Sample, analyse, track (the pipeline), act, publish."""
        if self.reload_requested.is_set():
            self.reload_requested.clear()
            self._reload()
        pipeline = self._ensure_backend()
        if pipeline is None:
            self._publish(None, up=False)
            return
        if self._replay_ended:
            return
        try:
            snap, raised, cleared = pipeline.step()
        except EOFError:
            # A recording played to its end: say it once, and keep serving its last tick for dashboards.
            self._replay_ended = True
            log.warning("replay_ended", effect="serving the last tick of the recording; stop with Ctrl-C")
            return
        except Exception:
            # A bug in one tick must not end the watchdog: log it with the traceback, count it, carry on.
            log.exception("tick_failed")
            pipeline.sampler.stats.count_error("process")
            return
        if snap is None:  # the library went away mid-run: reopen it with backoff
            pipeline.backend.close()
            self.pipeline = None
            self._backoff.failed(self.clock.monotonic())
            self._publish(None, up=False)
            return
        self._log(raised, cleared)
        self._act(raised, cleared, snap)
        self._publish(snap, up=True)
        if self.on_findings is not None:
            self.on_findings(snap, raised, cleared)
        if self.on_tick is not None:
            self.on_tick(snap)

    def _log(self, raised: list[Finding], cleared: list[Finding]) -> None:
        """One line per finding raised (counted for `vramwatch_findings_total`) and per finding cleared."""
        for f in raised:
            key = (f.kind, f.severity.value)
            self._findings_raised[key] = self._findings_raised.get(key, 0) + 1
            log.warning(
                "finding",
                kind=f.kind,
                severity=f.severity.value,
                gpu=f.gpu_uuid,
                pid=f.process.pid if f.process else None,
                eta_seconds=f.eta_seconds,
                message=f.message,
                # Why it may not be what it seems yet (null once firm): a confirmation reads as a repeat without it.
                tentative=f.tentative,
                advice=list(f.advice),  # what to change, in the trainer's words: the log alone must say it
            )
        for f in cleared:
            log.info("finding_cleared", kind=f.kind, gpu=f.gpu_uuid, pid=f.process.pid if f.process else None)

    def _act(self, raised: list[Finding], cleared: list[Finding], snap: Snapshot) -> None:
        """Warn the agents on a filling GPU, then let the dispatcher notify and act per the policy."""
        self._notify_agents(raised, snap)
        # No pid is "attached" to the daemon: `vramwatch attach` runs its own pipeline and passes its pid there.
        for result in self.dispatcher.handle(raised, cleared, frozenset(), snap.processes):
            # What was done (or refused for an intrusive action) is worth a line; "nothing to send" is not.
            level = (
                log.info
                if result.done or result.action in {"signal", "save_now", "kill", "hook", "error"}
                else log.debug
            )
            level("action", **result.log_fields())

    def on_agent_report(self, report: AgentReport) -> None:
        """Listener thread: keep OOM reports for the next tick (findings are made on the tick's thread), and
        step records with the room each process has on each device for the step figures."""
        with self._agent_lock:
            if report.oom is not None:
                self._agent_ooms.append(report.oom)
            for device in report.devices:
                track = self._agent_steps.get((report.pid, device.stats.device))
                if track is not None:  # only processes that count steps: the others need no capacity kept
                    track.capacity_bytes = device.usable_bytes or track.capacity_bytes
                    track.gpu_uuid = device.gpu_uuid or track.gpu_uuid
            for r in report.steps:
                key = (report.pid, r.device)
                track = self._agent_steps.get(key)
                if track is None:
                    history = StepHistory(max_records=STEP_RECORDS, recent=STEP_RECENT_RECORDS)
                    track = self._agent_steps[key] = _StepTrack(history, report.t)
                    known = self._agent_device(report.pid, r.device)
                    if known is not None:
                        track.capacity_bytes, track.gpu_uuid = known.usable_bytes, known.gpu_uuid
                track.history.extend([r])
                track.received = report.t
            while len(self._agent_steps) > STEP_PROCESSES:
                del self._agent_steps[min(self._agent_steps, key=lambda k: self._agent_steps[k].received)]

    def _agent_device(self, pid: int, device: int) -> AgentDevice | None:
        """The latest stats the listener holds for one process's device (a process's steps may come first)."""
        if self.agents is None:
            return None
        return next(
            (d for d in self.agents.latest(max_age_seconds=60.0) if d.stats.pid == pid and d.stats.device == device),
            None,
        )

    def _step_figures(self, snap: Snapshot | None) -> dict[tuple[int, int], StepFigures]:
        """Tick thread: each agent's step figures, redone when new steps came and the last is a few seconds old;
        the steps of a process whose agent the listener expired (gone quiet) are dropped with it. The first
        time `snap` shows a process, its trainer's schedule is read, as `run` and `probe` read it: a run that
        ends at its `--max_train_steps` is not said to run out after it."""
        with self._agent_lock:
            if not self._agent_steps:
                return {}  # no agent counts steps (most daemons, every tick): nothing to figure or to drop
            unread = {k[0] for k, track in self._agent_steps.items() if not track.scheduled}
        now = self.clock.monotonic()
        live = set(self.agents.pids()) if self.agents is not None else None
        # Read outside the lock (config files, /proc): the listener thread keeps taking reports meanwhile. Once
        # per process: after its first reading, a tick looks at no snapshot here.
        metas = {p.pid: p.meta for p in snap.processes} if unread and snap is not None else {}
        read = {
            pid: self._schedule(meta)
            for pid in unread
            if (meta := metas.get(pid)) is not None and meta.cmdline is not None
        }
        out: dict[tuple[int, int], StepFigures] = {}
        with self._agent_lock:
            for key in [k for k in self._agent_steps if live is not None and k[0] not in live]:
                del self._agent_steps[key]
            for key, track in self._agent_steps.items():
                if not track.scheduled and key[0] in read:
                    track.history.schedule = read[key[0]]
                    track.scheduled, track.figured_updates = True, -1  # redo the figures against it now
                due = track.figured_at is None or now - track.figured_at >= STEP_FORECAST_SECONDS
                due = due or track.figured_updates == -1
                if due and track.figured_updates != track.history.updates:
                    made = step_figures(track.history, track.capacity_bytes, gpu_uuid=track.gpu_uuid)
                    track.figures = made[0] if made is not None else None
                    track.figured_at, track.figured_updates = now, track.history.updates
                if track.figures is not None:
                    out[key] = track.figures
        return out

    @staticmethod
    def _schedule(meta: ProcessMeta) -> Schedule:
        """A process's schedule, from what the advisor reads for its advice; empty when that fails (a config
        file that vanished, one that cannot be parsed): the forecast then looks a fixed horizon ahead."""
        try:
            return process_schedule(meta, tree_argvs=read_tree(meta.pid), env=read_environ(meta.pid))
        except Exception as exc:  # an unreadable config must not stop the tick
            log.warning("step_schedule_unread", pid=meta.pid, error=str(exc))
            return Schedule()

    def _drain_ooms(self) -> tuple[OomEvent, ...]:
        """The OOM reports received since the last tick, for the `oom` detector (the pipeline's `oom_source`)."""
        with self._agent_lock:
            events, self._agent_ooms = self._agent_ooms, []
        return tuple(events)

    def _notify_agents(self, raised: list[Finding], snap: Snapshot) -> None:
        """Tell the agents on a GPU that is about to fill, so their `on_pressure` callbacks can save."""
        if self.agents is None:
            return
        for f in raised:
            if f.kind not in PRESSURE_NOTICE_KINDS:
                continue
            agent_pids = set(self.agents.pids())
            for p in snap.processes_on(f.gpu_uuid or ""):
                if p.pid in agent_pids and self.agents.send_pressure(p.pid, level=f.severity.value, reason=f.message):
                    log.info("pressure_notice_sent", pid=p.pid, kind=f.kind, severity=f.severity.value)

    def _overrun(self, skipped: int) -> None:
        if self.pipeline is not None:
            self.pipeline.sampler.stats.overruns += 1
        log.warning("tick_overrun", skipped_ticks=skipped)

    def _ensure_backend(self) -> Pipeline | None:
        if self.pipeline is not None:
            return self.pipeline
        now = self.clock.monotonic()
        if now < self._backoff.next_at:
            return None
        try:
            backend = self._open_backend()
        except BackendUnavailable as exc:
            wait = self._backoff.failed(now)
            log.error("backend_unavailable", error=str(exc), retry_in_seconds=wait)
            return None
        self._backoff.reset()
        self.backend_info = described(backend)
        if self.on_backend is not None:
            try:
                self.on_backend(backend)
            except Exception:
                # A bug in what is set up at the first card must not take the watchdog down as the card arrives.
                log.exception("backend_setup_failed", effect="serving goes on without what failed to set up")
        agents = self.agents
        source = (lambda: tuple(d.stats for d in agents.latest())) if agents is not None else None
        self.pipeline = Pipeline(
            backend, self.history, self.clock, self.detector_config, torch_source=source, oom_source=self._drain_ooms
        )
        log.info("backend_ready", **self.backend_info)
        return self.pipeline

    def _publish(self, snap: Snapshot | None, *, up: bool) -> None:
        p = self.pipeline
        analysis = p.analysis if p else None
        shown = snap if snap is not None else self._state.snapshot if up else None
        self._state = ExportState(
            snapshot=shown,
            backend=self.backend_info,
            stats=p.sampler.stats if p else self._idle_stats,
            up=up,
            process_metrics=self.config.daemon.process_metrics,
            gpu_growth={k: r.bytes_per_second for k, r in analysis.gpu_growth.items()} if analysis else {},
            # Read per scrape or page view, not per tick: each process's rate is computed when first asked for.
            process_growth=LazyMapping(analysis.process_growth, _bytes_per_second) if analysis else {},
            oom_eta={k: v[0] for k, v in analysis.oom_eta.items()} if analysis else {},
            active=tuple(p.tracker.active()) if p else (),
            findings_raised=dict(self._findings_raised),
            verdicts=analysis.verdicts if analysis else {},  # read-only already; each sentence written when read
            notifications=dict(self.dispatcher.notification_counts()),
            steps=self._step_figures(shown),
        )

    def _reload(self) -> None:
        """SIGHUP: re-read the config and apply what can change live; history and findings are kept.

        Live: `process_metrics` and the whole [detectors] section. Everything else needs a restart, and each
        change is logged as such: the other [daemon] options (listen address, interval, history length, backend,
        recording, logging), [policy] and [notify] (a half-applied action policy is worse than the old one). A
        file the next start would refuse, in any section, is refused now: the previous configuration is kept.
        """
        if self._reload_config is None:
            return
        self.systemd.reloading()
        try:
            new = self._reload_config()
            detectors = config_from_table(new.section("detectors"), f"{new.source or 'config'}: [detectors]")
        except VramwatchError as exc:
            log.error("reload_failed", error=str(exc), kept="previous configuration")
            self.systemd.ready("reload failed; previous configuration kept")
            return
        old = self.config
        pinned = [f.name for f in fields(old.daemon) if f.name not in RELOADABLE]
        for key in pinned:
            if getattr(new.daemon, key) != getattr(old.daemon, key):
                log.warning("reload_needs_restart", key=key, running=getattr(old.daemon, key),
                            configured=getattr(new.daemon, key))  # fmt: skip
        for name in RESTART_SECTIONS:
            if new.section(name) != old.section(name):
                # Without the values: [notify] may hold a token where no *_env indirection was used.
                log.warning("reload_needs_restart", key=f"[{name}]", effect="read at start only; restart to apply")
        self.config = replace(
            new,
            daemon=replace(new.daemon, **{k: getattr(old.daemon, k) for k in pinned}),
            sections={**new.sections, **{name: old.section(name) for name in RESTART_SECTIONS}},
        )
        self.detector_config = detectors
        if self.pipeline is not None:
            self.pipeline.detector_config = detectors
        log.info("reloaded", source=new.source)
        self.systemd.ready(f"serving {self.config.daemon.listen}; configuration reloaded")
