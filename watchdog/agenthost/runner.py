"""`vramwatch run -- <command...>`: run a training command with the agent in every Python process it starts.

How the agent gets in: the agent package's `_site/` goes first on PYTHONPATH, so each interpreter the command
starts (the launcher, `accelerate launch` / `torchrun` workers, spawned processes) imports our
`sitecustomize`, which chains the one that would have run and starts the agent (see
`vramwatch/agent/_site/sitecustomize.py`). Configuration travels in environment variables (`protocol.ENV_*`).

Where reports go: to a private listener this runner binds in a 0o700 temporary directory, always (so the
user gets warnings on stderr with no daemon running), and to the daemon's socket as well (`socket_path`,
or the default paths: an agent drops datagrams nobody listens to). The private listener's reports feed
`monitor.RunMonitor` (warnings, pressure notices, OOM post-mortem) and an optional `on_report` hook.

The command's stdio, exit status and signals pass through unchanged:
- stdin/stdout/stderr are inherited, never piped;
- the return code is the child's, or 128 + N when a signal N killed it, as shells report it;
- Ctrl-C / Ctrl-\\ : the terminal sends SIGINT / SIGQUIT to the whole foreground process group, child
  included; the runner ignores them (it must outlive the child to report its end) and does not forward
  them, which would deliver them twice. When the runner is not in a terminal's foreground group (a
  script, `kill -INT <runner>`), it forwards them;
- SIGTERM, SIGHUP, SIGUSR1, SIGUSR2 are forwarded to the child (a `kill` of the runner reaches the
  trainer; SIGUSR2 is also the agent's pressure signal).
- with `group` (`vramwatch probe`), the child leads its own session and process group, and signals go to the
  whole group: `accelerate launch` and shell wrappers do not pass SIGINT on to the trainer they start. The
  child is then outside the terminal's foreground group, so Ctrl-C reaches only the runner, which forwards it
  (or hands it to `on_interrupt`);
- The finished child is left unreaped for `exit_status_seconds` (2.5 s: two 1 Hz ticks), so that a
  watching daemon reads its exit status in `/proc/<pid>/stat`: NVML cannot tell a run that ended normally on
  a full card from one that ran out of memory; its exit status can (a clean exit is never a `probable_oom`).
The handlers are Python handlers, not SIG_IGN, so the child starts with default dispositions.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from ..agent import protocol
from ..errors import ConfigError
from ..steps import Schedule
from .link import AgentListener, AgentReport
from .monitor import DEFAULT_PRESSURE_HEADROOM_SHARE, AdviseVerdict, MonitorConfig, RunMonitor

# The agent's bootstrap, shipped inside the agent package (it loads the agent by path from the folder above).
SITE_DIR = Path(protocol.__file__).resolve().parent / "_site"

_FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
_TERMINAL = (signal.SIGINT, signal.SIGQUIT)

#: How long a finished child stays unreaped (a zombie whose exit status a daemon's next ticks can read).
EXIT_STATUS_VISIBLE_SECONDS = 2.5


def agent_environment(
    base: Mapping[str, str],
    targets: Sequence[str],
    *,
    snapshot_dir: Path | None = None,
    empty_cache_on_pressure: bool = False,
    count_steps: bool = False,
) -> dict[str, str]:
    """The child's environment: `base` plus our sitecustomize first on PYTHONPATH and the agent's settings."""
    env = dict(base)
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.fspath(SITE_DIR) + (os.pathsep + existing if existing else "")
    env[protocol.ENV_AGENT] = "1"
    env[protocol.ENV_SOCKET] = os.pathsep.join(dict.fromkeys(targets))
    if snapshot_dir is not None:
        env[protocol.ENV_SNAPSHOT_DIR] = os.fspath(snapshot_dir.resolve())
    if empty_cache_on_pressure:
        env[protocol.ENV_EMPTY_CACHE_ON_PRESSURE] = "1"
    if count_steps:
        env.setdefault(protocol.ENV_STEPS, "1")  # a user's explicit VRAMWATCH_AGENT_STEPS=0 wins
    return env


class ChildGroup:
    """The child's process group, signalled from any thread without racing the child's reaping.

    The group's id is the leader's pid, which cannot belong to another process while the leader is unreaped
    (running, or a zombie): `signal` sends only then, under the lock that the reaping (`run_command`) takes,
    and the reaping sets `reaped` before it lets go. The lock is taken with a timeout, never blocking: a
    signal handler that runs in the reaping thread while it holds the lock gives up (the child has ended).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reaped = threading.Event()
        self.pid: int | None = None  # the leader's, once it runs: the group's and the session's id

    def signal(self, signum: int) -> bool:
        """Send `signum` to every process of the group; False once the leader is reaped (or not started)."""
        if not self._lock.acquire(timeout=0.5):
            return False
        try:
            if self.pid is None or self.reaped.is_set():
                return False
            try:
                os.killpg(self.pid, signum)
            except (ProcessLookupError, PermissionError):
                return False
            return True
        finally:
            self._lock.release()

    def reap(self, proc: subprocess.Popen[bytes]) -> int:
        """Reap the ended leader (`proc.wait()`) and set `reaped`, with no group signal in between."""
        with self._lock:
            returncode = proc.wait()
            self.reaped.set()
        return returncode


def _foreground_of_a_terminal() -> bool:
    """True when this process is in its terminal's foreground group, which then got the key's signal too."""
    for fd in (0, 1, 2):
        try:
            return os.tcgetpgrp(fd) == os.getpgrp()
        except OSError:
            continue
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


@contextlib.contextmanager
def _passing_signals(
    child: Callable[[], subprocess.Popen[bytes] | None],
    group: ChildGroup | None = None,
    on_interrupt: Callable[[], None] | None = None,
) -> Iterator[None]:
    def handler(signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGINT and on_interrupt is not None:
            on_interrupt()  # the caller stops the child its own way
            return
        proc = child()
        if proc is None or proc.returncode is not None:
            return
        if group is not None:
            group.signal(signum)  # its own session: the terminal's keys never reached it
            return
        if signum in _TERMINAL and _foreground_of_a_terminal():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signum)

    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread: signals then keep their defaults
        return
    for sig in (*_TERMINAL, *_FORWARDED):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


def _private_socket_dir() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="vramwatch-run-"))
    if len(os.fspath(directory / "agent.sock")) > 100:  # sun_path holds 108 bytes
        directory.rmdir()
        directory = Path(tempfile.mkdtemp(prefix="vramwatch-run-", dir="/tmp"))
    return directory


#: What `vramwatch run` says at the end of a run from which no agent reported.
NOT_WATCHED = (
    "vramwatch: no process of this run reported PyTorch's CUDA memory (a process reports once it has used CUDA "
    "through torch for about a second): its memory was not watched"
)


def run_command(
    argv: Sequence[str],
    *,
    snapshot_dir: Path | None = None,
    socket_path: Path | None = None,
    on_report: Callable[[AgentReport], None] | None = None,
    builtin_checks: bool = True,
    empty_cache_on_pressure: bool = False,
    events_path: Path | None = None,
    stderr: TextIO | None = None,
    env: Mapping[str, str] | None = None,
    monitor_config: MonitorConfig | None = None,
    exit_status_seconds: float = EXIT_STATUS_VISIBLE_SECONDS,
    count_steps: bool = True,
    schedule: Schedule | None = None,
    advise: AdviseVerdict | None = None,
    on_start: Callable[[subprocess.Popen[bytes]], None] | None = None,
    child_stdout: int | None = None,
    group: ChildGroup | None = None,
    on_interrupt: Callable[[], None] | None = None,
) -> int:
    """Run `argv` with the agent loaded; return its exit status (128 + N if killed by signal N).

    `socket_path`: the daemon's socket to report to as well (default: the standard paths).
    `snapshot_dir`: record allocator history and dump a memory_viz snapshot there on OOM.
    `on_report`: called (in the listener thread) with every report of the private listener.
    `events_path`: the built-in check's conclusions as JSON lines.
    `count_steps`: the agent counts optimizer steps (see `agent/steps.py`); `schedule`: what the trainer's
    configuration says of its future steps (the built-in check forecasts against it); `advise`: the setting
    changes for a forecast that does not fit.
    `on_start`: called with the child once it runs (`vramwatch probe` stops it from another thread).
    `child_stdout`: a file descriptor for the child's stdout instead of ours (`probe --json` keeps its own
    stdout for the report).
    `group`: start the child in its own session and process group, forward signals to the whole group, and
    reap it through `group` (so that another thread can signal the group safely).
    `on_interrupt`: called for a SIGINT to the runner instead of forwarding it.
    """
    if not argv:
        raise ConfigError("vramwatch run: no command given (usage: vramwatch run -- python train.py ...)")
    out = stderr if stderr is not None else sys.stderr
    base = os.environ if env is None else env
    if snapshot_dir is not None:
        snapshot_dir.mkdir(parents=True, exist_ok=True)
    private_dir = _private_socket_dir()
    events: TextIO | None = None
    listener: AgentListener | None = None
    proc: subprocess.Popen[bytes] | None = None
    try:
        if events_path is not None:
            try:
                events = events_path.open("a", encoding="utf-8")
            except OSError as exc:  # before the command starts: a run whose conclusions go nowhere is not started
                raise ConfigError(f"--events {events_path}: cannot write there: {exc.strerror or exc}") from exc
        monitor = (
            RunMonitor(out=out, events=events, config=monitor_config, schedule=schedule, advise=advise)
            if builtin_checks
            else None
        )

        heard = threading.Event()

        def deliver(report: AgentReport) -> None:
            heard.set()
            if monitor is not None:
                monitor.on_report(report)
            if on_report is not None:
                on_report(report)

        listener = AgentListener(private_dir / "agent.sock", on_report=deliver, mode=0o600)
        listener.start()
        if monitor is not None:
            bound = listener

            def send_pressure(pid: int, level: str, reason: str) -> bool:
                return bound.send_pressure(pid, level=level, reason=reason, allow_signal=True)

            monitor.set_pressure_sender(send_pressure)

        daemon_targets = [os.fspath(socket_path)] if socket_path is not None else list(protocol.agent_targets(base))
        child_env = agent_environment(
            base,
            [os.fspath(listener.path), *daemon_targets],
            snapshot_dir=snapshot_dir,
            empty_cache_on_pressure=empty_cache_on_pressure,
            count_steps=count_steps,
        )
        with _passing_signals(lambda: proc, group, on_interrupt):
            try:
                proc = subprocess.Popen(
                    list(argv), env=child_env, stdout=child_stdout, start_new_session=group is not None
                )
            except FileNotFoundError:
                print(f"vramwatch: command not found: {argv[0]}", file=out)
                return 127
            except PermissionError:
                print(f"vramwatch: permission denied: {argv[0]}", file=out)
                return 126
            if group is not None:
                group.pid = proc.pid
            if on_start is not None:
                on_start(proc)
            returncode = _wait_leaving_status(proc, exit_status_seconds, group)
        if monitor is not None and not heard.is_set():
            # Said, because a run that nobody watched looks the same as a healthy one (torch missing from the
            # command's Python, a CPU-only run, a command that is not Python).
            print(NOT_WATCHED, file=out)
        return 128 - returncode if returncode < 0 else returncode
    finally:
        if listener is not None:
            listener.stop()
        if events is not None:
            events.close()
        shutil.rmtree(private_dir, ignore_errors=True)


def _wait_leaving_status(proc: subprocess.Popen[bytes], seconds: float, group: ChildGroup | None = None) -> int:
    """Wait for the child to end, leave it a zombie for `seconds`, then reap it and return its return code."""
    if seconds > 0 or group is not None:
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # ended, not reaped: /proc still shows it
            if seconds > 0:
                threading.Event().wait(seconds)
    return proc.wait() if group is None else group.reap(proc)


def main(args: Sequence[str] | None = None) -> int:
    """`python -m vramwatch.agenthost.runner [options] -- command...`, until the CLI's `vramwatch run` is wired."""
    parser = argparse.ArgumentParser(prog="python -m vramwatch.agenthost.runner")
    parser.add_argument("--snapshot", type=Path, help="dump a memory_viz snapshot here on OOM")
    parser.add_argument("--socket", type=Path, help="the daemon's agent socket (default: the standard paths)")
    parser.add_argument("--events", type=Path, help="append the built-in check's conclusions here (JSON lines)")
    parser.add_argument("--empty-cache-on-pressure", action="store_true")
    parser.add_argument("--pressure-headroom", type=float, default=DEFAULT_PRESSURE_HEADROOM_SHARE)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    ns = parser.parse_args(args)
    command = ns.command[1:] if ns.command[:1] == ["--"] else ns.command
    try:
        return run_command(
            command,
            snapshot_dir=ns.snapshot,
            socket_path=ns.socket,
            events_path=ns.events,
            empty_cache_on_pressure=ns.empty_cache_on_pressure,
            monitor_config=MonitorConfig(
                pressure_headroom_share=ns.pressure_headroom, pressure_rearm_share=2 * ns.pressure_headroom
            ),
        )
    except ConfigError as exc:
        print(f"vramwatch: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
