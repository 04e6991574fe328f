"""The daemon's end of the agent link: a Unix datagram socket that trainers' agents report to.

Agents (see `vramwatch.agent`) send small JSON datagrams: `hello`, `stats` every second, `oom` with the
allocator's state at an out-of-memory error. `AgentListener` reads each with `protocol.parse_report`,
checks the sender, and turns it into an `AgentReport` carrying `vramwatch.model.TorchStats` and
`OomEvent`s, hands each to `on_report`, keeps the latest figures per process and device for the sampler
(`latest()`), and can send a `pressure` notice back (`send_pressure`).

Trust. The socket has SO_PASSCRED set, so the kernel attaches SCM_CREDENTIALS (pid, uid, gid of the
sender, translated into this pid namespace) to every datagram; a process cannot forge them without
CAP_SYS_ADMIN (unix(7), https://man7.org/linux/man-pages/man7/unix.7.html). A report whose claimed pid
differs from the kernel's is rejected and counted as forged, unless the sender runs in a child pid
namespace (a container) and `/proc/<pid>/status` `NSpid` shows the claim is its pid in there. Reports
are keyed by the kernel's pid, which is also the pid NVML reports on this host.

Socket mode. The system socket is 0o666 inside a 0o755 directory owned by the daemon: any local user's
trainer can report, no other user can replace or delete the socket. What a user can send is bounded by
the credential check: figures about their own processes only. The cost is that any local user can make
the daemon parse datagrams (bounded: one recv each, a table of at most `max_peers` processes). Admins who
want only a group to report pass `mode=0o660` and set the group (systemd `SocketGroup=`-like set-up).
A private listener (`vramwatch run`) uses 0o600 in a 0o700 directory.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from ..agent import protocol
from ..errors import ConfigError, VramwatchError
from ..model import OomEvent, StepRecord, TorchStats, nvml_uuid

__all__ = ["AgentDevice", "AgentListener", "AgentReport", "ListenerCounters", "OomEvent", "oom_event"]

log = structlog.get_logger("vramwatch.agentlink")


@dataclass(frozen=True, slots=True)
class AgentDevice:
    """One device of one process as its agent reported it at one sample."""

    stats: TorchStats
    cuda_uuid: str | None = None  # CUDA's uuid of the device, without NVML's "GPU-" prefix
    total_bytes: int | None = None  # the device's total memory
    free_bytes: int | None = None  # free on the device (cudaMemGetInfo) at the sample

    @classmethod
    def from_report(cls, pid: int, entry: protocol.DeviceReport) -> AgentDevice:
        """A device entry of a stats datagram, its figures keyed by the kernel-verified `pid`."""
        stats = TorchStats(pid=pid, device=entry.device, gpu_uuid=nvml_uuid(entry.cuda_uuid), **entry.figures)
        return cls(
            stats=stats,
            cuda_uuid=entry.cuda_uuid,
            total_bytes=entry.total_bytes,
            free_bytes=entry.free_bytes,
        )

    @property
    def gpu_uuid(self) -> str | None:
        """The uuid as NVML spells it, to join with `GpuSample.uuid`."""
        return nvml_uuid(self.cuda_uuid)

    @property
    def usable_bytes(self) -> int | None:
        """What this process could hold at most right now: its reserved memory plus the device's free."""
        if self.stats.reserved_bytes is None or self.free_bytes is None:
            return None
        return self.stats.reserved_bytes + self.free_bytes


@dataclass(frozen=True, slots=True)
class AgentReport:
    """One accepted datagram: `kind` is hello, stats, oom or steps; `pid` is the kernel-verified pid."""

    kind: str
    pid: int
    uid: int | None
    t: float  # the listener's monotonic time of receipt
    torch_version: str | None = None
    devices: tuple[AgentDevice, ...] = ()
    oom: OomEvent | None = None
    sample_seconds: float | None = None  # what reading the allocator cost the agent for this sample
    dropped: int | None = None  # datagrams the agent could not deliver so far
    signal: bool = False  # the agent handles SIGUSR2 as a pressure notice
    steps: tuple[StepRecord, ...] = ()  # a steps report: the optimizer steps since the last one
    step_errors: int | None = None  # a stats report: exceptions the agent's step hook swallowed so far
    counts_steps: bool | None = None  # a hello: whether the agent counts optimizer steps (None: not said)

    @property
    def torch_stats(self) -> tuple[TorchStats, ...]:
        return tuple(d.stats for d in self.devices)


@dataclass(slots=True)
class ListenerCounters:
    """What the listener saw; the daemon exports these."""

    received: int = 0
    accepted: int = 0
    forged: int = 0  # claimed pid does not match the sender's credentials
    unverified: int = 0  # no credentials, or a sender outside this pid namespace
    malformed: int = 0
    callback_errors: int = 0
    pressure_sent: int = 0
    pressure_failed: int = 0


@dataclass(slots=True)
class _Peer:
    address: str | bytes | None
    uid: int | None
    last_seen: float
    signal: bool = False
    devices: dict[int, AgentDevice] = field(default_factory=dict)


def _step_records(pid: int, parsed: protocol.Report) -> tuple[StepRecord, ...]:
    """A steps report's entries, keyed by the kernel-verified pid."""
    if parsed.device is None:
        return ()
    return tuple(
        StepRecord(
            pid=pid,
            device=parsed.device,
            first_step=e.first_step,
            last_step=e.last_step,
            t=e.t,
            seconds=e.seconds,
            peak_allocated_bytes=e.peak_allocated_bytes,
            peak_reserved_bytes=e.peak_reserved_bytes,
            allocated_bytes=e.allocated_bytes,
            reserved_bytes=e.reserved_bytes,
            inactive_split_bytes=e.inactive_split_bytes,
        )
        for e in parsed.steps
    )


class AgentListener:
    """Binds `path`, verifies and decodes agents' datagrams, calls `on_report` in its own thread."""

    def __init__(
        self,
        path: Path,
        *,
        on_report: Callable[[AgentReport], None],
        mode: int = 0o666,
        clock: Callable[[], float] = time.monotonic,
        proc_root: Path = Path("/proc"),
        expire_seconds: float = 60.0,
        max_peers: int = 4096,
    ) -> None:
        self.path = Path(path)
        self.counters = ListenerCounters()
        self._on_report = on_report
        self._mode = mode
        self._clock = clock
        self._proc_root = proc_root
        self._expire_seconds = expire_seconds
        self._max_peers = max_peers
        self._sock: socket.socket | None = None
        self._inode: int | None = None
        self._peers: dict[int, _Peer] = {}
        self._peers_lock = threading.Lock()
        self._wake: tuple[socket.socket, socket.socket] | None = None  # made by start(): wakes the thread
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._logged_callback_error = False

    # -- lifecycle -------------------------------------------------------------------------------------

    def bind(self) -> None:
        """Create the socket file (replacing a stale one, refusing to steal a live one or a non-socket)."""
        if self._sock is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(self.path.lstat().st_mode):
                raise ConfigError(f"{self.path} exists and is not a socket; refusing to replace it")
            if self._alive(self.path):
                raise VramwatchError(f"another listener is already bound to {self.path}")
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # bursts of OOM reports
            sock.bind(os.fspath(self.path))
            self.path.chmod(self._mode)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._inode = self.path.stat().st_ino
        self._sock = sock

    @staticmethod
    def _alive(path: Path) -> bool:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            probe.connect(os.fspath(path))
        except OSError:
            return False
        finally:
            probe.close()
        return True

    def start(self) -> None:
        """Bind (if not yet) and read in a daemon thread until `stop()`."""
        self.bind()
        if self._thread is None:
            self._wake = socket.socketpair()
            for end in self._wake:
                end.setblocking(False)
            self._thread = threading.Thread(target=self._run, name="vramwatch-agentlink", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread, handle what is queued, close the socket and remove its file (if still ours)."""
        self._stopping.set()
        if self._wake is not None:
            with contextlib.suppress(OSError):
                self._wake[1].send(b"x")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self.poll()  # datagrams already queued (an OOM report just before the trainer died) still count
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            with contextlib.suppress(OSError):
                if self.path.stat().st_ino == self._inode:
                    self.path.unlink()
        if self._wake is not None:
            for end in self._wake:
                end.close()
            self._wake = None

    def __enter__(self) -> AgentListener:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        wake = self._wake
        while not self._stopping.is_set():
            sock = self._sock
            if sock is None or wake is None:
                return
            try:
                readable, _, _ = select.select([sock, wake[0]], [], [], 1.0)
            except (OSError, ValueError):
                return
            if sock in readable:
                self.poll()
            if wake[0] in readable:
                with contextlib.suppress(OSError):
                    wake[0].recv(64)

    # -- receiving -------------------------------------------------------------------------------------

    def poll(self, timeout: float = 0.0) -> int:
        """Handle every datagram queued now (waiting up to `timeout` for the first); returns how many."""
        sock = self._sock
        if sock is None:
            return 0
        if timeout > 0:
            with contextlib.suppress(OSError, ValueError):
                select.select([sock], [], [], timeout)
        handled = 0
        while True:
            try:
                data, ancdata, flags, address = sock.recvmsg(protocol.MAX_DATAGRAM_BYTES, protocol.CREDENTIALS_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            handled += 1
            self.counters.received += 1
            report = self._verify_and_decode(data, ancdata, flags, address)
            if report is not None:
                self.counters.accepted += 1
                self._deliver(report)
        self._expire()
        return handled

    def _deliver(self, report: AgentReport) -> None:
        try:
            self._on_report(report)
        except Exception as exc:  # the listener outlives a broken consumer
            self.counters.callback_errors += 1
            if not self._logged_callback_error:
                self._logged_callback_error = True
                log.warning("agent_report_callback_failed", error=repr(exc))

    def _innermost_pid(self, pid: int) -> int | None:
        """The pid `pid` has in its own (innermost) pid namespace, from /proc/<pid>/status NSpid."""
        try:
            text = (self._proc_root / str(pid) / "status").read_text()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("NSpid:"):
                fields = line.split()[1:]
                return int(fields[-1]) if fields and fields[-1].isdigit() else None
        return None

    def _verify_and_decode(
        self, data: bytes, ancdata: list[tuple[int, int, bytes]], flags: int, address: Any
    ) -> AgentReport | None:
        if flags & socket.MSG_TRUNC:
            self.counters.malformed += 1
            return None
        try:
            parsed = protocol.parse_report(data)
        except protocol.ProtocolError:
            self.counters.malformed += 1
            return None
        creds = protocol.credentials(ancdata)
        if creds is None or creds[0] <= 0:
            self.counters.unverified += 1
            return None
        pid, uid = creds
        claimed = parsed.claimed_pid
        if claimed != pid and self._innermost_pid(pid) != claimed:
            self.counters.forged += 1
            log.warning("agent_pid_mismatch", claimed_pid=claimed, sender_pid=pid, uid=uid)
            return None
        return self._report(parsed, pid, uid, address)

    def _report(self, parsed: protocol.Report, pid: int, uid: int, address: Any) -> AgentReport:
        """Remember the verified sender (reply address, devices) and key the report by its kernel pid."""
        now = self._clock()
        reply_address = address if isinstance(address, str | bytes) and address else None
        devices = tuple(AgentDevice.from_report(pid, entry) for entry in parsed.devices)
        with self._peers_lock:
            peer = self._peers.get(pid)
            if peer is None:
                peer = self._peers[pid] = _Peer(address=reply_address, uid=uid, last_seen=now)
            peer.last_seen = now
            peer.uid = uid
            if reply_address is not None:
                peer.address = reply_address
            if parsed.signal is not None:
                peer.signal = parsed.signal
            for d in devices:
                peer.devices[d.stats.device] = d
            oom = None
            if parsed.oom is not None:
                known = peer.devices.get(parsed.oom.device)
                oom = oom_event(pid, parsed.oom, known.cuda_uuid if known else None)
        return AgentReport(
            parsed.kind,
            pid,
            uid,
            now,
            torch_version=parsed.torch_version,
            devices=devices,
            oom=oom,
            sample_seconds=parsed.sample_seconds,
            dropped=parsed.dropped,
            signal=peer.signal,
            steps=_step_records(pid, parsed),
            step_errors=parsed.step_errors,
            counts_steps=parsed.counts_steps,
        )

    def _expire(self) -> None:
        now = self._clock()
        with self._peers_lock:
            stale = [pid for pid, p in self._peers.items() if now - p.last_seen > self._expire_seconds]
            for pid in stale:
                del self._peers[pid]
            while len(self._peers) > self._max_peers:
                oldest = min(self._peers, key=lambda pid: self._peers[pid].last_seen)
                del self._peers[oldest]

    # -- what the daemon asks ----------------------------------------------------------------------------

    def latest(self, max_age_seconds: float = 5.0) -> tuple[AgentDevice, ...]:
        """The newest report of each (pid, device) no older than `max_age_seconds`, for the sampler."""
        now = self._clock()
        with self._peers_lock:
            return tuple(
                device
                for peer in self._peers.values()
                if now - peer.last_seen <= max_age_seconds
                for device in peer.devices.values()
            )

    def pids(self) -> tuple[int, ...]:
        with self._peers_lock:
            return tuple(self._peers)

    def send_pressure(
        self, pid: int, *, level: str = "warning", reason: str | None = None, allow_signal: bool = False
    ) -> bool:
        """Tell the agent of `pid` that memory is about to run out; True when the notice left.

        By datagram to the address its reports came from; with `allow_signal`, by SIGUSR2 when that
        fails and the agent said it handles the signal (never otherwise: SIGUSR2 kills by default).
        """
        with self._peers_lock:
            peer = self._peers.get(pid)
            address, handles_signal = (peer.address, peer.signal) if peer else (None, False)
        sock = self._sock
        if address is not None and sock is not None:
            try:
                sock.sendto(protocol.encode(protocol.pressure_message(level=level, reason=reason)), address)
            except OSError:
                pass
            else:
                self.counters.pressure_sent += 1
                return True
        if allow_signal and handles_signal:
            try:
                os.kill(pid, signal.SIGUSR2)
            except OSError:
                pass
            else:
                self.counters.pressure_sent += 1
                return True
        self.counters.pressure_failed += 1
        return False


def oom_event(pid: int, report: protocol.OomReport, cuda_uuid: str | None) -> OomEvent:
    """The host's OomEvent from an oom datagram of the kernel-verified `pid`; `cuda_uuid` is known from its
    stats, not sent."""
    figures = report.figures
    return OomEvent(
        pid=pid,
        device=report.device,
        requested_bytes=report.alloc_bytes,
        capacity_bytes=report.capacity_bytes,
        device_free_bytes=report.device_free_bytes,
        allocated_bytes=figures["allocated_bytes"],
        reserved_bytes=figures["reserved_bytes"],
        inactive_split_bytes=figures["inactive_split_bytes"],
        num_alloc_retries=figures["num_alloc_retries"],
        num_ooms=figures["num_ooms"],
        snapshot_path=report.snapshot,
        observed=report.observed,
        cuda_uuid=cuda_uuid,
    )
