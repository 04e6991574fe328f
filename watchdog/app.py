"""The commands as plain functions: the click layer in `cli.py` only parses options and calls these.

Each returns an exit code and writes through the `out`/`err` callables it is given, so tests call them
directly with a fake clock and backend, and the CLI tests check parsing only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from .actions import ActionDispatcher, Policy, build_notifiers, describe_policy, parse_policy
from .actions.notify_config import READ_AT_START
from .agent.protocol import default_socket_path
from .agenthost.link import AgentListener, AgentReport
from .backends import banner, open_backend
from .clock import ScaledClock, SystemClock
from .config import Config, local_address, split_listen
from .daemon import Daemon, Pipeline
from .detectors import DetectorConfig, config_from_table
from .errors import BackendUnavailable, ConfigError, VramwatchError
from .exporter import cannot_listen
from .history import History
from .model import Finding, ProcessKey, ProcessMeta, Severity, Snapshot
from .render import finding_to_json, snapshot_to_json, status_table
from .sampler import Sampler, run_every
from .sdnotify import SdNotifier
from .testing import FakeClock
from .typing import Backend, Clock
from .web import LiveView

if TYPE_CHECKING:
    from .trace import TraceWriter

Echo = Callable[[str], None]
log = structlog.get_logger("vramwatch")


def detector_config(cfg: Config) -> DetectorConfig:
    """`[detectors]`: the shared settings and each registered detector's own, checked."""
    return config_from_table(cfg.section("detectors"), f"{cfg.source or 'config'}: [detectors]")


def _open(cfg: Config, clock: Clock, *, require_gpu: bool, loop: bool = False) -> tuple[Backend, bool]:
    """The configured backend and whether it is the no-driver fallback to the simulator."""
    d = cfg.daemon
    backend = open_backend(
        simulate=d.simulate,
        replay=d.replay,
        seed=d.seed,
        clock=clock,
        host_pids=d.host_pids,
        require_gpu=require_gpu,
        replay_loop=loop,
    )
    fallback = d.simulate is None and d.replay is None and backend.kind == "simulated"
    return backend, fallback


def serve(
    cfg: Config,
    *,
    out: Echo,
    require_gpu: bool = False,
    clock: Clock | None = None,
    reload_config: Callable[[], Config] | None = None,
    stop: threading.Event | None = None,
    ready: Callable[[Daemon], None] | None = None,
    speed: float = 1.0,
    force: bool = False,
    record_flag: bool = False,
    opener: Callable[..., tuple[Backend, bool]] = _open,
) -> int:
    """`vramwatch serve`: run the daemon until SIGTERM/SIGINT. A missing driver is retried, not fatal.

    Serves /metrics and the live page at `/`; `speed` plays a simulated or replayed card faster than real time.
    `force`: overwrite an existing record file; the trace being replayed, never. `record_flag`: the file was named
    on the command line (`--record`), else by the config file (`[daemon] record`). `opener`: how the card is opened
    (`_open`; a test's fake card that answers late).
    """
    pre = preflight(cfg, force=force, interactive=record_flag)  # refused before anything opens
    detectors, set_aside = pre.detectors, pre.set_aside
    if speed != 1.0:
        if cfg.daemon.simulate is None and cfg.daemon.replay is None:
            # Also where no GPU answers and the simulator stands in: --speed names what it speeds up.
            raise VramwatchError(
                "--speed plays a simulated or recorded card faster: name it with --simulate NAME or --replay FILE "
                "(a real GPU runs at its own pace)"
            )
        clock = ScaledClock(speed)
    clock = clock or SystemClock()
    first: list[Backend] = []
    pinned_interval: float | None = None
    try:
        backend, fallback = opener(cfg, clock, require_gpu=require_gpu, loop=True)
        first.append(backend)
        out(banner(backend, fallback=fallback))
        pinned_interval = _paced(backend)
        if pinned_interval is not None:
            cfg = replace(cfg, daemon=replace(cfg.daemon, interval=pinned_interval))
    except BackendUnavailable as exc:
        out(f"vramwatch: {exc}; serving vramwatch_up 0 and retrying with backoff")

    def factory() -> Backend:
        if first:
            return first.pop()
        return opener(cfg, clock, require_gpu=True, loop=True)[0]

    def reload_checked() -> Config:
        assert reload_config is not None  # noqa: S101 - only handed to the daemon when given
        new = reload_config()
        # What the next start would refuse is refused now, not reported "reloaded". Not the variables that *_env
        # names: a reload cannot see them (systemd reads EnvironmentFile= at start only), so they count as set.
        check_actions(new, environ=READ_AT_START)
        if pinned_interval is not None:  # a replay runs at its recorded pace: not a change the file asks for
            new = replace(new, daemon=replace(new.daemon, interval=pinned_interval))
        return new

    daemon = Daemon(
        cfg,
        factory,
        clock=clock,
        detector_config=detectors,
        reload_config=reload_checked if reload_config is not None else None,
        # Taken out of the environment so trainers started by hooks do not inherit systemd's socket.
        systemd=SdNotifier.from_env(unset_environment=True),
    )
    if first:
        daemon.agents = open_agent_listener(first[0], daemon.on_agent_report)
    daemon.dispatcher = build_dispatcher(
        cfg, pre.policy, first[0] if first else None, clock, lookup=daemon.lookup, recheck=daemon.recheck
    )
    writers: list[TraceWriter] = []
    if not first:
        # No card answered at the start (a unit started before the driver loaded): what depends on the card is set
        # up when one first does. Until then nothing may act on a process, no agent reports, nothing is recorded.
        daemon.on_backend = _arm_later(daemon, pre, cfg, writers, out, force=force, interactive=record_flag)
    if stop is not None:
        daemon.stop_event = stop
    if speed != 1.0:
        daemon.wait = lambda seconds: daemon.stop_event.wait(seconds / speed)
    live = LiveView(cfg.daemon.history_seconds, cfg.daemon.interval, lambda: daemon.state)
    daemon.pages = live.wsgi
    daemon.on_findings = live.observe
    try:
        port = daemon.start_server()
    except VramwatchError:  # the port is taken: let go of what was opened for it (the process may go on, in tests)
        daemon.close()
        for backend in first:
            backend.close()
        raise
    if cfg.daemon.record and first:
        # Only once the port is ours: a serve that cannot start must leave the last recording where it was.
        try:
            _record_into(daemon, writers, Path(cfg.daemon.record), first[0], cfg.daemon.interval, set_aside=set_aside)
        except (VramwatchError, OSError) as exc:
            daemon.close()
            first[0].close()  # not the pipeline's yet, which daemon.close() closes
            if isinstance(exc, OSError):
                raise VramwatchError(f"{cfg.daemon.record}: cannot write the trace: {exc.strerror or exc}") from exc
            raise
    host = cfg.daemon.listen.rpartition(":")[0] or "127.0.0.1"
    pace = f"every {cfg.daemon.interval:g}s" + (f", {speed:g}x real time" if speed != 1.0 else "")
    page = local_address(f"{host}:{port}")  # bound to every address: shown as this machine's loopback
    out(f"vramwatch: live page at http://{page}/ (metrics at /metrics), {pace} (Ctrl-C to stop)")
    if ready is not None:
        ready(daemon)
    else:
        daemon.install_signal_handlers()
    try:
        daemon.run()
    finally:
        for writer in writers:
            writer.close()
    ticks = daemon.pipeline.sampler.stats.ticks if daemon.pipeline is not None else 0
    out(f"vramwatch: stopped after {ticks} ticks" + (f"; trace written to {cfg.daemon.record}" if writers else ""))
    return 0


def _arm_later(
    daemon: Daemon,
    pre: Preflight,
    cfg: Config,
    writers: list[TraceWriter],
    out: Echo,
    *,
    force: bool,
    interactive: bool,
) -> Callable[[Backend], None]:
    """`Daemon.on_backend` for a serve whose start found no card: at the first card that answers, the agents'
    socket (NVML), the policy's reach over that card's processes and the recording, as a start that found it would
    have set them up. What the start read stays: the policy it parsed (`pre`), the notifiers it built (their queues
    and counts go on), nothing read again from the config, a key file or the environment. Once: a card lost and found
    again keeps them. A recording that cannot start now is logged and the daemon goes on (at the start it would
    have been refused, before anything opened)."""
    armed: list[Backend] = []

    def arm(backend: Backend) -> None:
        if armed:
            return
        armed.append(backend)
        daemon.agents = open_agent_listener(backend, daemon.on_agent_report)
        daemon.dispatcher.rearm(policy_for(pre.policy, backend), backend.inspector())
        log.info("armed_at_first_card", backend=backend.kind, policy_reaches_processes=touches_processes(backend))
        out(f"{banner(backend)} (it answered after the start: signal, hook, kill, agents and recording set up now)")
        record = cfg.daemon.record
        if not record:
            return
        try:
            # Again: the file may have appeared while no card answered (a wait of hours, at boot).
            replay = Path(cfg.daemon.replay) if cfg.daemon.replay else None
            set_aside = _check_record_target(Path(record), replay, force=force, interactive=interactive)
            _record_into(daemon, writers, Path(record), backend, cfg.daemon.interval, set_aside=set_aside)
        except (VramwatchError, OSError) as exc:
            log.error("record_failed", file=record, error=str(exc), effect="not recording; serving goes on")

    return arm


def refuse_overwrite(path: Path, *, force: bool) -> None:
    """An existing trace is a recording someone may need (the one attached to a bug report): kept unless `force`."""
    if path.exists() and not force:
        raise VramwatchError(f"{path} exists: give another file name, or --force to overwrite it")


def _check_record_target(record: Path, replay: Path | None, *, force: bool, interactive: bool) -> bool:
    """`serve --record` (or `[daemon] record`): never the trace being replayed (opening it truncates it); an
    existing file is refused on the command line unless `force`, and kept aside when the config file names it.
    True when it is to be set aside (`_record_into` does it, once the port is bound). Changes nothing.

    A service that records restarts onto its own last trace (systemd's `Restart=`): refusing would keep the
    watchdog down, overwriting would lose that trace, so it is renamed with the time it was set aside."""
    if replay is not None and same_file(record, replay):
        raise VramwatchError(
            f"{record} is the trace being replayed: recording to it would destroy it; record to another file"
        )
    if record.exists() and not record.is_file():
        raise VramwatchError(f"{record} is not a regular file: record to a file")
    parent = record.parent
    if str(record).startswith("~"):
        raise VramwatchError(f"{record}: ~ is not expanded in a trace's path: give it in full")
    if not parent.is_dir():
        raise VramwatchError(f"{record}: cannot write the trace: no directory {parent}")
    if not os.access(parent, os.W_OK):
        # (Run as root, as `check` often is, this always passes: the unit's sandbox decides for the service.)
        raise VramwatchError(f"{record}: cannot write the trace: {parent} is not writable by this user")
    if interactive or force or not record.exists():
        refuse_overwrite(record, force=force)
        return False
    return True


def _record_into(
    daemon: Daemon, writers: list[TraceWriter], record: Path, backend: Backend, interval: float, *, set_aside: bool
) -> None:
    """`serve`'s recording of `backend`, at the start or at the first card that answers after it: the previous
    recording set aside first when `_check_record_target` said so, then every tick written (`_recorder`). Raises
    before anything is recorded; the caller decides whether that ends the daemon."""
    # Loaded here, like the replay and simulated backends: a daemon that does not record never holds them.
    from .trace import open_trace_writer

    if set_aside and record.exists():
        _set_aside(record)
    writers.append(open_trace_writer(record, backend, interval))
    daemon.on_tick = _recorder(writers[-1], record)


def _set_aside(record: Path) -> None:
    stem, dot, suffixes = record.name.partition(".")
    kept = record.with_name(f"{stem}.{time.strftime('%Y%m%dT%H%M%S')}{dot}{suffixes}")
    try:
        record.rename(kept)
    except OSError as exc:
        raise VramwatchError(
            f"{record} exists and cannot be set aside ({exc.strerror}): record to another file"
        ) from None
    log.info("record_kept", previous=str(kept), path=str(record))


def same_file(a: Path, b: Path) -> bool:
    """Whether `a` and `b` name one existing file (through links, `..` or hard links too): the one check before
    writing where a trace is read (`serve --record` over `--replay`, `report -o` over its trace)."""
    try:
        return a.samefile(b)
    except (OSError, ValueError):
        return False  # one of them cannot be read: nothing there to destroy


def _recorder(writer: TraceWriter, path: Path) -> Callable[[Snapshot], None]:
    """`serve --record FILE`: each tick also goes to a trace; a full disk stops the recording, not the daemon."""
    state = {"ticks": 0, "broken": False}

    def write(snap: Snapshot) -> None:
        if state["broken"]:
            return
        try:
            writer.write(snap)
            state["ticks"] += 1
            if state["ticks"] % 10 == 0:
                writer.flush()
        except OSError as exc:
            state["broken"] = True
            log.error("record_failed", file=str(path), error=str(exc), effect="recording stopped; serving goes on")

    return write


def build_dispatcher(
    cfg: Config,
    policy: Policy,
    backend: Backend | None,
    clock: Clock,
    *,
    lookup: Callable[[ProcessKey], ProcessMeta | None],
    recheck: Callable[[Finding], bool],
) -> ActionDispatcher:
    """`policy` (`policy_of(cfg)`, read once) and the config's notifiers; intrusive actions only ever apply to real
    (NVML) pids: for other backends the policy is cut down to log and notify (`touches_processes`)."""
    with _in_file(cfg):
        notifiers = build_notifiers(dict(cfg.section("notify")), lookup=lookup, clock=clock)
    return ActionDispatcher(
        policy_for(policy, backend),
        notifiers,
        recheck=recheck,
        clock=clock,
        inspector=backend.inspector() if backend is not None else None,
        default_log=False,
    )


def policy_for(policy: Policy, backend: Backend | None) -> Policy:
    """`policy` as it may act where `backend` reads: cut down to log and notify where it cannot reach the processes
    (`touches_processes`), and logged as such."""
    if touches_processes(backend):
        return policy
    safe = frozenset({"log", "notify"})
    reaches = (policy.warning | policy.critical) - safe  # (what would act on processes)
    if reaches and backend is None:
        log.warning("policy_actions_waiting", reason="no card answered at the start; signal, hook and kill are "
                    "set up when one does")  # fmt: skip
    elif reaches and backend is not None:
        log.warning("policy_actions_disabled", reason=f"backend is {backend.kind}; "
                    "signal, hook and kill act on real NVML processes only")  # fmt: skip
    return replace(policy, warning=policy.warning & safe, critical=policy.critical & safe)


def touches_processes(backend: Backend | None) -> bool:
    """Whether the policy's signal, hook and kill may act where `backend` reads: on NVML's pids only. A simulated or
    replayed pid is a number in a script, and may be a real process of this machine: acting on it would signal an
    innocent."""
    return backend is not None and backend.kind == "nvml"


def policy_of(cfg: Config) -> Policy:
    """`[policy]` of `cfg`, or a ConfigError naming the file: the one reading of it, for every command that acts."""
    with _in_file(cfg):
        return parse_policy(dict(cfg.section("policy")))


def check_actions(cfg: Config, *, environ: Mapping[str, str] | None = None) -> tuple[Policy, list[str]]:
    """`[policy]` and `[notify]` read as the next start reads them: a ConfigError naming the file, else the policy
    and the kinds of its notifiers (`Webhook`, `Alertmanager`, `Apprise`). `environ`: where the variables that
    `*_env` keys name are read (default: this process's environment)."""
    kinds = []
    policy = policy_of(cfg)
    with _in_file(cfg):
        for notifier in build_notifiers(dict(cfg.section("notify")), environ=environ):
            kinds.append(type(notifier).__name__.removesuffix("Notifier"))
            close = getattr(notifier, "close", None)
            if callable(close):
                close(0.0)  # nothing was queued: its worker thread ends at once
    return policy, kinds


@dataclass(frozen=True, slots=True)
class Preflight:
    """What `serve`'s start reads and refuses before it opens anything. One place, so that `check` refuses what the
    start would and the two cannot drift apart."""

    policy: Policy
    notifiers: tuple[str, ...]  # their kinds: Webhook, Alertmanager, Apprise
    detectors: DetectorConfig
    set_aside: bool  # the record target exists and is to be set aside (`_check_record_target`)


def preflight(
    cfg: Config, *, force: bool = False, interactive: bool = False, environ: Mapping[str, str] | None = None
) -> Preflight:
    """Every section as the start reads it (`[policy]`, `[notify]` with the variables `*_env` names, `[detectors]`)
    and the record target; a VramwatchError naming the file and key, else what the start will use."""
    policy, notifiers = check_actions(cfg, environ=environ)
    detectors = detector_config(cfg)
    d = cfg.daemon
    set_aside = d.record is not None and _check_record_target(
        Path(d.record), Path(d.replay) if d.replay else None, force=force, interactive=interactive
    )
    return Preflight(policy, tuple(notifiers), detectors, set_aside)


def check(
    cfg: Config, *, out: Echo, require_gpu: bool = False, opener: Callable[..., tuple[Backend, bool]] = _open
) -> int:
    """`vramwatch check`: the configuration as `serve` reads it at start (`preflight`), checked without serving,
    recording, signalling or sending anything. What serve would refuse raises (one line, exit 2); otherwise what it
    would read and arm is said, and the exit is 0 (1 with `require_gpu` when no GPU library answers). `opener`: as
    serve's."""
    pre = preflight(cfg)
    d = cfg.daemon
    _check_listen(d.listen)
    code, off, hidden, waiting, interval = 0, None, False, False, d.interval
    try:
        backend, fallback = opener(cfg, SystemClock(), require_gpu=require_gpu)  # a bad scenario or trace raises
    except BackendUnavailable as exc:
        gpus = f"{exc}; serve would export vramwatch_up 0 and retry"
        waiting = True
        code = 1 if require_gpu else 0
    else:
        try:
            gpus = banner(backend, fallback=fallback).removeprefix("vramwatch: ")
            if fallback:
                gpus += " (the systemd unit runs serve --require-gpu, which waits for a driver instead)"
            if not touches_processes(backend):
                off = "off on a simulated or replayed card: its pids are not this host's"
            hidden = not backend.inspector().pid_namespace_matches()
            interval = _paced(backend) or interval
        finally:
            backend.close()
    out(f"vramwatch: {cfg.source}: serve would start with it" if cfg.source else
        "vramwatch: no config file: serve would start with the built-in defaults (the systemd unit reads "
        "/etc/vramwatch/vramwatch.toml: name it with --config)")  # fmt: skip
    out(f"  GPUs: {gpus}")
    pace = f"a tick every {interval:g} s" + (" (the trace's pace)" if interval != d.interval else "")
    record = f"; recording to {d.record}" + (" (it exists: serve sets it aside first)" if pre.set_aside else "")
    if d.record and not Path(d.record).is_absolute():
        record += " (relative to serve's working directory: the systemd unit's is /)"
    out(f"  listen {d.listen}; {pace}; {d.history_seconds:g} s of history"
        + ("; no per-process series" if not d.process_metrics else "") + (record if d.record else ""))  # fmt: skip
    for note in cfg.notes:
        out(f"  note: {note}")
    for line in describe_policy(pre.policy, off=off, pids_hidden=hidden, waiting=waiting):
        out(f"  policy: {line}")
    kinds = ", ".join(k + (f" x{n}" if n > 1 else "") for k, n in Counter(pre.notifiers).items())
    silent = " (no severity notifies in [policy.actions]: nothing is sent)"
    if "notify" in pre.policy.warning | pre.policy.critical:
        silent = ""
    out(f"  notify: {kinds}{silent}" if kinds else "  notify: none configured: findings go to the log")
    return code


def _check_listen(listen: str) -> None:
    """The host of `listen` resolves and can be bound here (on a free port: the running daemon holds the real one)."""
    host = split_listen(listen)[0]
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, 0))
    except OSError as exc:
        raise ConfigError(cannot_listen(listen, exc)) from None


def _paced(backend: Backend) -> float | None:
    """A replay is served at the pace it was recorded (looping, so dashboards see it as it happened): that pace."""
    recorded = getattr(backend, "interval_seconds", None)
    return float(recorded) if backend.kind == "replay" and recorded else None


@contextlib.contextmanager
def _in_file(cfg: Config) -> Iterator[None]:
    """A `[policy]` or `[notify]` error names the file it is in, as `[daemon]` and `[detectors]` errors do."""
    try:
        yield
    except ConfigError as exc:
        if cfg.source is None or str(exc).startswith(f"{cfg.source}:"):
            raise
        raise ConfigError(f"{cfg.source}: {exc}") from None


def status(
    cfg: Config,
    *,
    out: Echo,
    as_json: bool = False,
    clock: Clock | None = None,
    daemon_url: str | None = None,
) -> int:
    """`vramwatch status`: a running daemon's view (with trends and forecasts), else one snapshot of our own.

    Asked for a daemon by name (`--daemon ADDR`), it reports that daemon or says why it cannot: a sample of our
    own would pass for the daemon's view. A daemon that answers without a reading (its GPU library lost, or not
    yet read) is said to be so, exit 1, rather than taken for no daemon.
    """
    doc = None
    if daemon_url is not None and (cfg.daemon.simulate is not None or cfg.daemon.replay is not None):
        raise VramwatchError(
            "--daemon asks a running daemon, but a simulated or replayed card is named (--simulate, --replay, or "
            "the config or environment): not both"
        )
    if daemon_url is not None and not daemon_url.startswith("http"):
        try:
            split_listen(daemon_url)  # "localhost" alone would be asked at port 80 and said not to answer
        except ValueError as exc:
            raise VramwatchError(f"--daemon {daemon_url!r}: expected {exc}") from None
    if cfg.daemon.simulate is None and cfg.daemon.replay is None:
        where = daemon_url or local_address(cfg.daemon.listen)
        doc = fetch_daemon_status(where)
        if doc is None and daemon_url is not None:
            raise VramwatchError(f"no vramwatch daemon answers at {daemon_url} (is `vramwatch serve` listening there?)")
        if doc is not None and doc.get("gpus") is None:
            if as_json:
                out(json.dumps(doc))
            else:
                out(f"vramwatch: the daemon at {where} answers, but has no GPU reading yet: its GPU library is "
                    "unavailable or it has not ticked (see its log)")  # fmt: skip
            return 1
    if doc is not None:
        first = f"vramwatch: from the daemon at {where} (backend {doc.get('backend')})"
    else:
        clock = clock or SystemClock()
        try:
            backend, fallback = _open(cfg, clock, require_gpu=False)
        except BackendUnavailable as exc:
            raise VramwatchError(str(exc)) from exc
        try:
            pipeline = Pipeline(backend, History(window_seconds=60, interval_seconds=cfg.daemon.interval), clock,
                                detector_config(cfg), advise=False)  # fmt: skip
            snap, _, _ = pipeline.step()
            if snap is None:
                raise VramwatchError("the GPU library stopped answering during the read")
            doc = {"backend": backend.kind, **snapshot_to_json(snap)}
            first = banner(backend, fallback=fallback)
        finally:
            backend.close()
    if as_json:
        out(json.dumps(doc))
    else:
        out(first)
        out(status_table(doc))
    return 0


def open_agent_listener(backend: Backend, on_report: Callable[[AgentReport], None]) -> AgentListener | None:
    """Listen for in-process agents (`vramwatch run`) where `backend` is NVML's (None elsewhere: an agent's pid is
    this host's, a simulated or replayed card's are not); without the socket the daemon runs on, NVML only."""
    if backend.kind != "nvml":
        return None
    # Under systemd (INVOCATION_ID is set for every unit) the socket lives in /run/vramwatch, the unit's
    # RuntimeDirectory; for a user's own daemon, in $XDG_RUNTIME_DIR.
    path = default_socket_path(system="INVOCATION_ID" in os.environ)
    listener = AgentListener(path, on_report=on_report)
    try:
        listener.bind()
        listener.start()
    except (OSError, VramwatchError) as exc:
        log.warning("agent_socket_unavailable", path=str(path), error=str(exc), effect="no in-process agent data")
        return None
    log.info("agent_socket", path=str(path))
    return listener


def fetch_daemon_status(url: str, timeout: float = 1.0) -> dict[str, Any] | None:
    """A running daemon's /status.json, or None when no vramwatch answers there. A daemon without a reading
    answers `{"up": false, ...}` with no `gpus`: that is returned too (the caller tells the two apart)."""
    import urllib.error
    import urllib.request

    base = url if url.startswith("http") else f"http://{url}"
    try:
        with urllib.request.urlopen(base.rstrip("/") + "/status.json", timeout=timeout) as r:  # noqa: S310
            doc = json.loads(r.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None
    return doc if isinstance(doc, dict) and ("gpus" in doc or doc.get("up") is False) else None


def scenarios(out: Echo) -> int:
    from .backends.simulated import SCENARIOS

    for name, sc in SCENARIOS.items():
        out(f"{name:<16} {getattr(sc, 'description', '')}")
    return 0


def config_path(path: str | None) -> Path | None:
    return Path(path) if path else None


def record(
    cfg: Config,
    path: Path,
    *,
    out: Echo,
    duration: float | None = None,
    cmdline: bool = True,
    force: bool = False,
    clock: Clock | None = None,
    stop: threading.Event | None = None,
) -> int:
    """`vramwatch record FILE`: write what the sampler sees, one JSON line per tick, until stopped or `duration`.

    An existing FILE is a recording someone may need (the one attached to a bug report): it is never
    overwritten unless `force`.
    """
    refuse_overwrite(path, force=force)
    clock = clock or SystemClock()
    backend, fallback = _open(cfg, clock, require_gpu=False)
    stop = stop or threading.Event()
    out(banner(backend, fallback=fallback))
    from .trace import open_trace_writer

    try:
        writer = open_trace_writer(path, backend, cfg.daemon.interval)
    except VramwatchError:
        backend.close()
        raise
    # The agents of `vramwatch run` report to this socket when no daemon holds it: their allocator figures
    # (allocated beside reserved) go into the trace, so a replay can tell a cache from a leak as serve did.
    agents = open_agent_listener(backend, lambda _report: None)
    source = (lambda: tuple(d.stats for d in agents.latest())) if agents is not None else None
    sampler = Sampler(backend, History(window_seconds=60, interval_seconds=cfg.daemon.interval), clock, source)
    started = clock.monotonic()
    ticks = 0

    with writer:

        def step() -> None:
            nonlocal ticks
            snap = sampler.tick()
            if snap is not None:
                try:
                    writer.write(snap, cmdline=cmdline)
                    if ticks % 10 == 9:
                        writer.flush()  # a killed recorder loses at most ten seconds; per-tick flushes bloat gzip
                except OSError as exc:
                    stop.set()
                    raise VramwatchError(f"{path}: cannot write the trace: {exc.strerror or exc}") from exc
                ticks += 1
            if duration is not None and clock.monotonic() - started >= duration:
                stop.set()

        _stop_on_signals(stop)
        try:
            run_every(cfg.daemon.interval, step, clock, stop)
        finally:
            backend.close()
            if agents is not None:
                agents.stop()
    out(f"vramwatch: recorded {ticks} ticks to {path}")
    return 0


def replay(
    cfg: Config,
    path: Path,
    *,
    out: Echo,
    err: Echo,
    as_json: bool = False,
) -> int:
    """`vramwatch replay FILE`: run the detectors over a trace at full speed and print the findings."""
    bad: list[tuple[int, str]] = []

    def on_error(lineno: int, message: str) -> None:
        bad.append((lineno, message))
        err(f"vramwatch: {path}:{lineno}: skipped: {message}")

    from .backends.replay import ReplayBackend

    backend = ReplayBackend(path, on_error=on_error)
    # Recorded ticks carry their own time: the clock is never read, a still FakeClock documents that.
    history = History(window_seconds=cfg.daemon.history_seconds)
    pipeline = Pipeline(backend, history, FakeClock(), detector_config(cfg))
    if not as_json:
        out(banner(backend))
    ticks = raised_count = 0
    snap: Snapshot | None = None
    while True:
        try:
            snap, raised, cleared = pipeline.step()
        except EOFError:
            break
        ticks += 1
        for f in raised:
            raised_count += 1
            if as_json:
                out(json.dumps(finding_to_json(f, snap)))
            else:
                where = f" pid {f.process.pid}" if f.process else ""
                out(f"t={f.t:10.1f}  {f.severity.value.upper():8} {f.kind:<14}{where}: {f.message}")
                for line in f.advice:
                    out(f"    -> {line}")
        for f in cleared:
            if as_json:
                out(json.dumps(finding_to_json(f, snap, event="cleared")))
    err(f"vramwatch: replayed {ticks} ticks, {raised_count} findings, {len(bad)} malformed lines skipped")
    return 0


def report(cfg: Config, trace: Path, output: Path | None, *, out: Echo, err: Echo) -> int:
    """`vramwatch report TRACE -o FILE`: the live page's picture of a recorded run, as one self-contained file."""
    from .web.report import write_report

    if output is None:
        name = trace.name.removesuffix(".gz").removesuffix(".jsonl").removesuffix(".json")
        output = trace.with_name(name + ".html")
    if same_file(output, trace):
        raise VramwatchError(f"{output} is the trace itself: give the report another name with -o FILE")
    bad = 0

    def on_error(lineno: int, message: str) -> None:
        nonlocal bad
        bad += 1
        err(f"vramwatch: {trace}:{lineno}: skipped: {message}")

    try:
        doc = write_report(trace, output, detector_config(cfg), history_seconds=cfg.daemon.history_seconds,
                           on_error=on_error)  # fmt: skip
    except OSError as exc:
        raise VramwatchError(f"{output}: cannot write the report: {exc.strerror or exc}") from exc
    r = doc["report"]
    out(
        f"vramwatch: report of {trace} ({_count(r['ticks'], 'tick')}, {_count(len(doc['findings']), 'finding')}, "
        f"{_count(len(doc['postmortem']), 'process', 'processes')} left) written to {output}"
        + (f"; {bad} malformed lines skipped" if bad else "")
    )
    return 0


def _stop_on_signals(stop: threading.Event) -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be installed from the main thread (tests call us from others)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())


def advise(
    *,
    out: Echo,
    pid: int | None = None,
    cmdline: str | None = None,
    kind: str = "oom_forecast",
    as_json: bool = False,
    cwd: str | None = None,
    simulate: str | None = None,
    seed: int | None = None,
) -> int:
    """`vramwatch advise`: the ranked setting changes for a running pid, a command line, or a trainer of a
    simulated scenario (its pid, or by default the one whose memory misbehaves)."""
    from .advice import advice_to_dict, advise_cmdline, advise_process, render_text
    from .attribution import PsutilInspector
    from .enrich import read_tree
    from .environ import read_environ

    if cmdline is not None and (pid is not None or simulate is not None):
        raise VramwatchError("give a pid (or --simulate) or --cmdline, not both")
    if simulate is not None:
        meta = _simulated_trainer(simulate, seed or 0, pid)
        if not as_json:
            out(f"vramwatch: SIMULATED: pid {meta.pid} of the scenario {simulate!r} (no real process is read)")
        result = advise_process(meta, kind)
    elif cmdline is not None:
        result = advise_cmdline(cmdline, kind, cwd=cwd)
    elif pid is not None:
        meta = PsutilInspector().inspect(pid)
        if meta.start_time is None:
            raise VramwatchError(f"no process with pid {pid} (or it may not be inspected by this user)")
        if meta.cmdline is None:
            raise VramwatchError(f"pid {pid} {_why_no_cmdline(meta)}: there is no command line to advise on")
        result = advise_process(meta, kind, tree_argvs=read_tree(pid), env=read_environ(pid))
    else:
        raise VramwatchError("give a pid or --cmdline")
    out(json.dumps(advice_to_dict(result)) if as_json else render_text(result, limit=8))
    return 0


def _why_no_cmdline(meta: ProcessMeta) -> str:
    """Why a live pid shows no command line: it has exited (a zombie), it is a kernel thread, or it is not ours."""
    if meta.status == "zombie":
        return "has exited (its parent has not reaped it yet)"
    from .attribution import kernel_thread  # as advise's inspector: loaded by the commands that read processes

    if kernel_thread(meta.pid):
        return "is a kernel thread"
    return f"belongs to {meta.user or 'another user'} (run as that user, or as root, to read it)"


def _simulated_trainer(scenario: str, seed: int, pid: int | None) -> ProcessMeta:
    """What the simulator says of `pid` (default: its misbehaving trainer, else its first trainer)."""
    from .backends.simulated import SimulatedBackend, ground_truth

    story = ground_truth(scenario, seed=seed)
    procs = story["processes"]
    if pid is None:
        trainers = [p for p in procs if p.get("role") == "trainer"] or procs
        if not trainers:
            raise VramwatchError(f"the simulated scenario {scenario!r} runs no process to advise")
        pid = int(next((p for p in trainers if p.get("behaviour") not in (None, "flat", "idle")), trainers[0])["pid"])
    elif pid not in {int(p["pid"]) for p in procs}:
        raise VramwatchError(f"pid {pid} never runs in the simulated scenario {scenario!r}")
    return SimulatedBackend(scenario, seed=seed, clock=FakeClock()).inspector().inspect(pid)


def attach(
    cfg: Config,
    pid: int,
    *,
    out: Echo,
    as_json: bool = False,
    fast_forward: bool = False,
    terminal: bool | None = None,
) -> int:
    """`vramwatch attach PID`: watch one run live until it ends; exit 0, or 3 when it probably died of OOM.

    On a terminal (`terminal`, by default: stdout is one) the run's state is redrawn in place and only news
    scrolls; piped, every tick is printed as lines.
    """
    from .attach import DaemonSteps
    from .attach import attach as watch
    from .terminal import LiveBlock, is_terminal

    clock: Clock = FakeClock() if fast_forward else SystemClock()
    backend, fallback = _open(cfg, clock, require_gpu=False)
    if fast_forward and backend.kind == "nvml":
        backend.close()
        raise VramwatchError("--fast-forward is for --simulate and --replay only")
    if not as_json:
        out(banner(backend, fallback=fallback))
    history = History(window_seconds=cfg.daemon.history_seconds, interval_seconds=cfg.daemon.interval)
    pipeline = Pipeline(backend, history, clock, detector_config(cfg))
    dispatcher = build_dispatcher(cfg, policy_of(cfg), backend, clock, lookup=lambda _k: None, recheck=lambda _f: True)
    stop = threading.Event()
    _stop_on_signals(stop)

    def advance(seconds: float) -> bool:
        clock.sleep(seconds)  # a FakeClock: time moves, nothing waits
        return stop.is_set()

    wait = advance if fast_forward else None
    # The agents report to the daemon's socket, not to us: their step figures come from its /status.json.
    url = f"http://{local_address(cfg.daemon.listen)}"
    steps = DaemonSteps(lambda: fetch_daemon_status(url, timeout=0.5), clock) if backend.kind == "nvml" else None
    block = None
    if not as_json and (is_terminal() if terminal is None else terminal):
        block = LiveBlock()
        out = block.print
    try:
        summary = watch(pid, backend, pipeline, dispatcher, clock, out=out, as_json=as_json,
                        interval=cfg.daemon.interval, stop=stop, wait=wait, block=block, steps=steps)  # fmt: skip
    finally:
        if block is not None:
            block.close()
        dispatcher.close()
        backend.close()
    return 3 if summary["probable_oom"] else 0


def notify_test(cfg: Config, *, out: Echo, timeout: float = 15.0) -> int:
    """`vramwatch notify --test`: send one test finding through every configured notifier and report the outcome."""
    clock = SystemClock()
    with _in_file(cfg):
        notifiers = build_notifiers(dict(cfg.section("notify")), clock=clock)
    if not notifiers:
        raise VramwatchError(
            "no notifier is configured: add a [[notify.webhook]] (url = ...) or [[notify.alertmanager]] table to "
            "the config file given with --config (see docs/actions.md)"
        )
    finding = Finding(
        kind="test",
        severity=Severity.WARNING,
        gpu_uuid=None,
        message="vramwatch notification test: if you read this, alerts reach you",
        t=clock.monotonic(),
    )
    ok = True
    for n in notifiers:
        n.notify(finding)
        n.notify(finding, cleared=True)  # Alertmanager: resolve it at once so it does not linger
        closer = getattr(n, "close", None)
        if closer is not None:
            closer(timeout)  # drains the queue: the deliveries are done (or failed) when this returns
        counts = dict(getattr(n, "counts", dict)())
        good = counts.get("sent", 0) >= 1 and not counts.get("failed", 0)
        ok &= good
        out(f"{type(n).__name__}: {'ok' if good else 'FAILED'} ({', '.join(f'{k} {v}' for k, v in counts.items())})")
    return 0 if ok else 1


def _count(n: int, one: str, many: str | None = None) -> str:
    """ "1 process", "2 processes", "0 findings"."""
    return f"{n} {one if n == 1 else many or one + 's'}"
