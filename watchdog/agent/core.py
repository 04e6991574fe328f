"""The agent thread: inside the trainer, report PyTorch's allocator figures once a second.

From outside, NVML sees a process's CUDA context plus whatever PyTorch's caching allocator *reserved*: it
cannot tell tensors from cache, a leak from caching, or see fragmentation. This thread reads
`torch.cuda.memory_stats` in the trainer itself and sends the figures as small JSON datagrams to a listener
(the daemon's socket, or the private one of `vramwatch run`).

Life of the agent in a process:
1. `start()` creates the agent: the runner's sitecustomize calls it when `import torch` begins, a user
   at any time. If torch is not imported yet, an import watcher waits for `import torch`: a Python
   process that never imports torch gets no thread and no signal handler at all.
2. The thread checks once a second whether the process has initialised CUDA, reading `sys.modules`
   only: the agent never imports torch and never initialises CUDA itself. When steps are to be counted,
   the optimizer step hook is registered at the first beat once torch is imported, before CUDA is up.
3. Once CUDA is up it sends `hello`, attaches the allocator's OOM observer (see `oom.py`) and from then
   on sends `stats` every `interval_seconds`. Sends are non-blocking: with no listener (ENOENT,
   ECONNREFUSED) or a full one (EAGAIN) a datagram is dropped and counted, never waited for.
4. A `pressure` datagram back from the listener (trusted only from root, this user, or the owner of the
   listener's socket file) or a SIGUSR2 runs the callbacks registered with `on_pressure`, in this
   thread, and optionally `torch.cuda.empty_cache()`.

The agent socket is bound to a Linux autobind (abstract) address: unique, and nothing to clean up. The
listener replies to the address the kernel reports for our datagrams, which works within one network
namespace; across namespaces the listener can fall back to SIGUSR2 (advertised in `hello`).

Cost: one `memory_stats` call per device per second (a copy of the allocator's counters under its
mutex, so it briefly contends with allocations in the training thread) and one cudaMemGetInfo; each
`stats` message carries `sample_seconds`, what that cost this time. A forked child (DataLoader workers)
does not inherit a running agent: its sockets are closed and its callbacks cleared.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import protocol
from .oom import OomRecorder
from .probe import RealTorchProbe, TorchProbe
from .steps import StepCounter
from .steps import message as steps_message


def _env_flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    value = environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() not in {"0", "false", "no", "off"}


def _env_number(environ: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    try:
        return max(minimum, float(environ.get(name, default)))
    except ValueError:
        return default  # a bad value must never break the trainer


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """How the agent behaves; `from_env` reads what `vramwatch run` (or the user) put in the environment."""

    targets: tuple[str, ...]  # listener socket paths ("@name": abstract)
    interval_seconds: float = 1.0
    snapshot_dir: str | None = None
    snapshot_max_entries: int = 100_000
    max_snapshots: int = 3
    empty_cache_on_pressure: bool = False
    install_signal_handler: bool = True
    read_device_free: bool = True
    count_steps: bool = False  # count optimizer steps and report each one's peak (see steps.py)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AgentConfig:
        env = os.environ if environ is None else environ
        return cls(
            targets=protocol.agent_targets(env),
            interval_seconds=_env_number(env, protocol.ENV_INTERVAL, 1.0, 0.01),
            snapshot_dir=env.get(protocol.ENV_SNAPSHOT_DIR) or None,
            snapshot_max_entries=int(_env_number(env, protocol.ENV_SNAPSHOT_MAX_ENTRIES, 100_000, 1)),
            empty_cache_on_pressure=_env_flag(env, protocol.ENV_EMPTY_CACHE_ON_PRESSURE, False),
            install_signal_handler=_env_flag(env, protocol.ENV_SIGNAL, True),
            read_device_free=_env_flag(env, protocol.ENV_MEMINFO, True),
            count_steps=_env_flag(env, protocol.ENV_STEPS, False),
        )


@dataclass(frozen=True, slots=True)
class PressureNotice:
    """Memory is about to run out: what the callbacks of `on_pressure` receive."""

    level: str  # "warning" or "critical"
    reason: str | None
    source: str  # "socket" or "signal"
    t: float  # monotonic seconds


@dataclass(slots=True)
class AgentCounters:
    """What the agent did, for tests and `stats` messages; approximate under concurrent OOMs."""

    sent: int = 0
    dropped: int = 0
    samples: int = 0
    sample_seconds_total: float = 0.0
    pressure_notices: int = 0
    rejected_replies: int = 0
    callback_errors: int = 0
    errors: int = 0
    late_ooms: dict[int, int] = field(default_factory=dict)


PressureCallback = Callable[[PressureNotice], None]

#: How long interpreter exit waits for the agent's thread to finish its beat (it wakes at once when told).
EXIT_JOIN_SECONDS = 1.0

_LOCK = threading.Lock()
_AGENT: Agent | None = None
_CALLBACKS: list[PressureCallback] = []
_PREVIOUS_SIGUSR2: Callable[[int, Any], Any] | None = None


def _agent_version() -> str:
    # Imported here, in the agent thread once CUDA is up: importlib.metadata costs ~20 ms to import, and
    # this module loads during `import torch`.
    from importlib.metadata import version

    try:
        return version("vramwatch-daemon")
    except Exception:  # loaded by path in an environment without vramwatch installed
        return "unknown"


class Agent:
    """One process's agent: a socket, a wake-up pipe and a daemon thread. Use `start()` for the singleton."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        probe: TorchProbe | None = None,
        clock: Callable[[], float] = time.monotonic,
        callbacks: Callable[[], list[PressureCallback]] | None = None,
    ) -> None:
        self.config = config
        self.probe: TorchProbe = probe if probe is not None else RealTorchProbe()
        self.pid = os.getpid()
        self.counters = AgentCounters()
        self._clock = clock
        self._callbacks = callbacks if callbacks is not None else _registered_callbacks
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock.bind("")  # Linux autobind: a unique abstract address
        self.address: str | bytes = self._sock.getsockname()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop = threading.Event()
        self._signal_pending = False
        self._thread: threading.Thread | None = None
        self._send_lock = threading.Lock()
        self._cuda_ready = False
        self._seq = 0
        self._oom_debt: dict[int, int] = {}  # device -> OOMs counted but not yet reported
        self._observed_seen: dict[int, int] = {}
        self.signal_handler = False
        self.steps: StepCounter | None = None  # set once torch takes the hook, when counting steps was asked for
        self._step_error_said = False
        self.oom = OomRecorder(
            self.probe,
            self._send_oom,
            pid=self.pid,
            snapshot_dir=config.snapshot_dir,
            max_snapshots=config.max_snapshots,
            max_entries=config.snapshot_max_entries,
            clock=clock,
        )

    # -- lifecycle -------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    @property
    def cuda_ready(self) -> bool:
        return self._cuda_ready

    def start_thread(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="vramwatch-agent", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread and close the sockets; the OOM observer stays attached but does nothing."""
        self._stop.set()
        self.oom.disabled = True
        self._disable_steps()
        self._poke()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._close()

    def abandon_after_fork(self) -> None:
        """In a forked child: the thread does not exist there, the sockets are the parent's; let go."""
        self._stop.set()
        self.oom.disabled = True
        self._disable_steps()
        self._close()

    def _disable_steps(self) -> None:
        # The hook stays registered with torch (a later agent's registration replaces it): it must stop
        # resetting the peaks, or it would steal them from that agent's counter.
        if self.steps is not None:
            self.steps.disabled = True

    def _close(self) -> None:
        for s in (self._sock, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                s.close()

    def _poke(self) -> None:
        with contextlib.suppress(OSError):  # full (already poked) or closed
            self._wake_w.send(b"x")

    def notify_signal(self) -> None:
        """From the SIGUSR2 handler: only a flag and a wake-up byte, the work happens in the thread."""
        self._signal_pending = True
        self._poke()

    # -- the thread ------------------------------------------------------------------------------------

    def _run(self) -> None:
        next_tick = self._clock()
        while not self._stop.is_set():
            now = self._clock()
            if now >= next_tick:
                try:
                    self.tick()
                except Exception:
                    self.counters.errors += 1
                next_tick = now + self.config.interval_seconds  # no catch-up bursts after a stall
            timeout = max(0.0, next_tick - self._clock())
            try:
                readable, _, _ = select.select([self._sock, self._wake_r], [], [], timeout)
            except (OSError, ValueError):
                return  # sockets closed under us: stopping
            if self._wake_r in readable:
                self._drain_wake()
            if self._sock in readable:
                self._read_replies()
            if self._signal_pending:
                self._signal_pending = False
                self.handle_pressure(PressureNotice("warning", "SIGUSR2", "signal", self._clock()))

    def tick(self) -> None:
        """One beat: wait for CUDA, then sample. Public so tests can drive it without the thread."""
        if self.config.count_steps and self.steps is None:
            self._register_steps()
        if not self._cuda_ready:
            if not self.probe.cuda_initialized():
                return
            self._cuda_ready = True
            self.oom.arm()
            self._send_message(
                protocol.hello_message(
                    pid=self.pid,
                    ppid=os.getppid(),
                    t=self._clock(),
                    torch_version=self.probe.torch_version(),
                    agent_version=_agent_version(),
                    python=".".join(str(x) for x in sys.version_info[:3]),
                    signal=self._signal_installed(),
                    steps=self.steps is not None,
                )
            )
        self._sample()
        self._send_steps()

    def _register_steps(self) -> None:
        """Register the step hook as soon as torch can take it, before CUDA is up: steps taken before the
        process's first CUDA call are counted too (without peaks), so the numbers stay the trainer's. Once only:
        `self.steps` is set on success, and the probe replaces any hook registered before (one per process)."""
        counter = StepCounter(self.probe, self._clock)
        if self.probe.register_step_hook(counter.on_step):
            self.steps = counter

    def _step_errors(self) -> int | None:
        """The step hook's swallowed exceptions, said once on stderr (the trainer's log) and sent with each sample."""
        counter = self.steps
        if counter is None:
            return None
        if counter.errors and not self._step_error_said:
            self._step_error_said = True
            print(
                f"vramwatch agent: the optimizer step hook failed ({counter.first_error}); steps go on, "
                "their peaks may be missing",
                file=sys.stderr,
            )
        return counter.errors

    def _send_steps(self) -> None:
        if self.steps is not None:
            message = steps_message(self.steps, pid=self.pid, t=self._clock())
            if message is not None:
                self._send_message(message)

    def flush_at_exit(self) -> None:
        """At interpreter exit (atexit): send the steps counted since the last beat. The thread beats once a
        second, so without this a run's last second of steps (all of a short run's) never reaches the host,
        and a probe of a run that ended by itself would miss its end."""
        if self.pid != os.getpid() or self._stop.is_set() or not self._cuda_ready:
            return  # a forked child's copy, a stopped agent, or nothing announced to the host yet
        with contextlib.suppress(Exception):  # never an error at the trainer's exit
            self._send_steps()

    def at_exit(self) -> None:
        """At interpreter exit (atexit): the last second's steps, then the thread stopped and joined (at most
        `EXIT_JOIN_SECONDS`). A daemon thread left running may be inside a torch call while the interpreter and
        CUDA's caching allocator are torn down, which can abort a trainer that ended well ("terminate called
        without an active exception", exit 134: once in four runs of the gpu suite's OOM test)."""
        if self.pid != os.getpid():
            return  # a forked child's copy: the thread is the parent's
        self.flush_at_exit()
        # Only the thread: the OOM observer and the step hook keep working for exit handlers that run after this
        # one (atexit runs them newest first) and still use CUDA.
        self._stop.set()
        self._poke()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(EXIT_JOIN_SECONDS)

    def _send_oom(self, message: dict[str, Any]) -> None:
        """The steps completed so far go first: the listener then knows after which step the OOM came."""
        self._send_steps()
        self._send_message(message)

    def _signal_installed(self) -> bool:
        try:
            return signal.getsignal(signal.SIGUSR2) is _on_sigusr2 and self.signal_handler
        except (ValueError, OSError):
            return False

    def _sample(self) -> None:
        started = time.perf_counter()
        entries: list[dict[str, Any]] = []
        for device in range(self.probe.device_count()):
            stats = self.probe.memory_stats(device)
            if not stats:
                continue
            peak = protocol.read_stat(stats, ("reserved_bytes", "all", "peak"))
            ooms = protocol.read_stat(stats, ("num_ooms",))
            if not peak and not ooms:
                continue  # never allocated here: no context of ours to ask about
            cuda_uuid, total = self.probe.device_identity(device)
            info = self.probe.mem_get_info(device) if self.config.read_device_free else None
            entries.append(
                protocol.device_entry(
                    device,
                    stats,
                    cuda_uuid=cuda_uuid,
                    total_bytes=total if total is not None else (info[1] if info else None),
                    free_bytes=info[0] if info else None,
                )
            )
            self._account_ooms(device, ooms, stats)
        cost = time.perf_counter() - started
        self.counters.samples += 1
        self.counters.sample_seconds_total += cost
        if not entries:
            return
        self._seq += 1
        self._send_message(
            protocol.stats_message(
                pid=self.pid,
                seq=self._seq,
                t=self._clock(),
                torch_version=self.probe.torch_version(),
                devices=entries,
                sample_seconds=cost,
                dropped=self.counters.dropped,
                signal=self._signal_installed(),
                step_errors=self._step_errors(),
            )
        )

    def _account_ooms(self, device: int, ooms: int | None, stats: Mapping[str, Any]) -> None:
        """Report OOMs the observer did not: none attached, or it was attached after they happened."""
        if ooms is None:
            return
        observed = self.oom.observed_by_device.get(device, 0)
        reported_late = self.counters.late_ooms.get(device, 0)
        debt = ooms - observed - reported_late
        previous_debt = self._oom_debt.get(device, 0)
        self._oom_debt[device] = debt
        # With an observer, a count seen a microsecond before its callback ran is settled by the next
        # sample; without one, nothing else will report it, so do it now (the process may be dying).
        if debt > 0 and (not self.oom.observer_attached or previous_debt > 0):
            self.oom.late(device, stats)
            self.counters.late_ooms[device] = reported_late + debt
            self._oom_debt[device] = 0

    # -- sending and receiving -------------------------------------------------------------------------

    def _send_message(self, message: dict[str, Any]) -> None:
        data = protocol.encode(message)
        # An OOM report matters more than a sample and the process may be about to die: retry a full
        # listener briefly instead of dropping at once.
        attempts = 3 if message.get("type") == "oom" else 1
        for target in self.config.targets:
            address = protocol.socket_address(target)
            for attempt in range(attempts):
                try:
                    with self._send_lock:
                        self._sock.sendto(data, address)
                    self.counters.sent += 1
                    break
                except BlockingIOError:
                    if attempt + 1 < attempts:
                        time.sleep(0.005)
                        continue
                    self.counters.dropped += 1
                except OSError:  # ENOENT, ECONNREFUSED, EACCES, EMSGSIZE, closed: no listener for us
                    self.counters.dropped += 1
                    break

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(64):
                pass
        except OSError:
            pass

    def _trusted_uids(self) -> set[int]:
        uids = {0, os.getuid(), os.geteuid()}
        for target in self.config.targets:
            if target.startswith("@"):
                continue
            with contextlib.suppress(OSError):
                uids.add(Path(target).stat().st_uid)  # the daemon may run as its own system user
        return uids

    def _read_replies(self) -> None:
        while True:
            try:
                data, ancdata, _flags, _addr = self._sock.recvmsg(4096, protocol.CREDENTIALS_SPACE)
            except OSError:
                return  # EAGAIN: drained (or closed)
            creds = protocol.credentials(ancdata)
            if creds is None or creds[1] not in self._trusted_uids():
                self.counters.rejected_replies += 1
                continue
            try:
                pressure = protocol.parse_pressure(data)
            except protocol.ProtocolError:
                self.counters.rejected_replies += 1
                continue
            if pressure is not None:
                self.handle_pressure(PressureNotice(pressure.level, pressure.reason, "socket", self._clock()))

    def handle_pressure(self, notice: PressureNotice) -> None:
        """Run every registered callback (one failing does not stop the others), then maybe empty the cache."""
        self.counters.pressure_notices += 1
        for callback in list(self._callbacks()):
            try:
                callback(notice)
            except Exception as exc:
                self.counters.callback_errors += 1
                if self.counters.callback_errors == 1:
                    print(f"vramwatch agent: pressure callback {callback!r} failed: {exc!r}", file=sys.stderr)
        if self.config.empty_cache_on_pressure and self._cuda_ready:
            self.probe.empty_cache()


# -- the process-wide agent ----------------------------------------------------------------------------


def _registered_callbacks() -> list[PressureCallback]:
    with _LOCK:
        return list(_CALLBACKS)


def on_pressure(callback: PressureCallback) -> Callable[[], None]:
    """Run `callback(notice)` in the agent thread when memory pressure is signalled; returns an unregister."""
    with _LOCK:
        _CALLBACKS.append(callback)

    def unregister() -> None:
        with _LOCK:
            if callback in _CALLBACKS:
                _CALLBACKS.remove(callback)

    return unregister


def current() -> Agent | None:
    """This process's agent, if `start()` ran here (not in a parent before a fork)."""
    agent = _AGENT
    return agent if agent is not None and agent.pid == os.getpid() else None


def start(config: AgentConfig | None = None, *, torch_importing: bool = False) -> Agent:
    """Start this process's agent (idempotent). Configuration comes from the environment by default.

    `torch_importing`: called while `import torch` is under way (from an import hook): start the thread
    now, a watcher installed at this point would miss that import.
    """
    global _AGENT  # noqa: PLW0603 - one agent per process, by design
    with _LOCK:
        existing = current()
        if existing is not None and not existing._stop.is_set():
            return existing
        agent = Agent(config if config is not None else AgentConfig.from_env())
        _AGENT = agent
    if torch_importing or "torch" in sys.modules:
        _activate(agent)
    else:
        sys.meta_path.insert(0, _TorchImportWatcher(agent))
    return agent


def stop() -> None:
    """Stop this process's agent, if any; registered callbacks stay for the next `start()`."""
    global _AGENT
    with _LOCK:
        agent, _AGENT = current(), None
    if agent is not None:
        agent.stop()


def _activate(agent: Agent) -> None:
    if agent.config.install_signal_handler:
        _install_signal_handler(agent)
    agent.start_thread()
    atexit.register(agent.at_exit)


class _TorchImportWatcher:
    """A meta-path finder that finds nothing: it notices `import torch` and starts the agent then.

    It stays in `sys.meta_path` as a no-op afterwards: removing a finder while the import system iterates
    that list would make it skip the next finder.
    """

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._fired = False

    def find_spec(self, name: str, _path: object = None, _target: object = None) -> None:
        if self._fired or name != "torch":
            return
        self._fired = True
        if current() is self._agent:
            _activate(self._agent)


def _on_sigusr2(signum: int, frame: Any) -> None:
    agent = current()
    if agent is not None:
        agent.notify_signal()
    previous = _PREVIOUS_SIGUSR2
    if previous is not None:
        previous(signum, frame)


def _install_signal_handler(agent: Agent) -> None:
    """Handle SIGUSR2 unless someone chose to ignore it or a C extension owns it; chain a Python handler."""
    global _PREVIOUS_SIGUSR2  # noqa: PLW0603 - the handler we chain lives as long as the process
    if threading.current_thread() is not threading.main_thread():
        return  # signal.signal works only there; the socket still delivers pressure
    existing = signal.getsignal(signal.SIGUSR2)
    if existing is _on_sigusr2:
        agent.signal_handler = True
        return
    if existing is None or existing == signal.SIG_IGN:
        return
    _PREVIOUS_SIGUSR2 = existing if callable(existing) else None  # SIG_DFL would kill: not chained
    signal.signal(signal.SIGUSR2, _on_sigusr2)
    agent.signal_handler = True


def _after_fork_in_child() -> None:
    global _AGENT, _LOCK  # noqa: PLW0603
    _LOCK = threading.Lock()  # the parent's may have been held by another thread at fork time
    agent, _AGENT = _AGENT, None
    _CALLBACKS.clear()  # a DataLoader worker must not save the trainer's checkpoints
    if agent is not None:
        agent.abandon_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
