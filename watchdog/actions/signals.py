"""Signals that reach only the process meant, and only when they will not kill it by accident.

Two dangers. First, SIGUSR1, SIGUSR2, SIGTERM, SIGINT and SIGHUP all *terminate* a process that installed
no handler for them (signal(7): default action "Term"), and most Python trainers install none for SIGUSR1:
a "save now" nudge would destroy the very run it meant to protect. So before sending, the target's caught
mask is read from `/proc/<pid>/status` (`SigCgt`, a hex bitmask in which bit n-1 stands for signal n), and a
signal the target does not catch is not sent unless the policy says `force`. The ignored and blocked
masks (`SigIgn`, `SigBlk`) are read too: an ignored signal would do nothing, a blocked one waits.

Second, pids are reused. A finding names a process by (pid, start time); before any signal the pid's
start time (psutil `create_time()`) must match within a small tolerance, else the pid now belongs to
someone else and nothing is sent. Where the kernel offers pidfds (Linux >= 5.3), the pid is pinned with
`pidfd_open` *before* the check and the signal goes through that pidfd, so the process checked is the
process signalled; elsewhere a tiny window between check and `kill()` remains.

`Killer` is the opt-in last resort for shared boxes: SIGTERM, then SIGKILL after a grace period if the
process is still there, the wait running on its own thread (never on the sampler's).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import structlog

from ..model import ActionResult, ProcessKey

log = structlog.get_logger("vramwatch.actions")

PROC = Path("/proc")

#: Finds a pid's start time (epoch seconds), or None when there is no such process.
StartTimeOf = Callable[[int], float | None]


@dataclass(frozen=True, slots=True)
class ProcStatus:
    """What /proc/<pid>/status says about signals (sets of signal numbers) and the real uid."""

    caught: frozenset[int]
    blocked: frozenset[int]
    ignored: frozenset[int]
    uid: int | None = None

    def catches(self, signum: int) -> bool:
        return signum in self.caught


def parse_mask(text: str) -> frozenset[int]:
    """Signal numbers set in a /proc status mask: bit n-1 (counting from the least significant) is signal n.

    `0000000000004a02` -> {2, 10, 12, 15} (SIGINT, SIGUSR1, SIGPIPE, SIGTERM). Any length of hex is
    accepted (64 signals on x86, 128 bits on MIPS).
    """
    value = int(text.strip(), 16)
    return frozenset(n + 1 for n in range(value.bit_length()) if value >> n & 1)


def parse_status(text: str) -> ProcStatus:
    """The signal masks and real uid from the text of /proc/<pid>/status; ValueError if SigCgt is missing."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip()] = value.strip()
    if "SigCgt" not in fields:
        raise ValueError("no SigCgt line in /proc status")
    uid_field = fields.get("Uid", "").split()
    return ProcStatus(
        caught=parse_mask(fields["SigCgt"]),
        blocked=parse_mask(fields.get("SigBlk", "0")),
        ignored=parse_mask(fields.get("SigIgn", "0")),
        uid=int(uid_field[0]) if uid_field and uid_field[0].isdigit() else None,
    )


def read_status(pid: int, proc_root: Path = PROC) -> ProcStatus | None:
    """`parse_status` of a live pid; None when the pid is gone or its status cannot be read or parsed."""
    try:
        return parse_status((proc_root / str(pid) / "status").read_text())
    except (OSError, ValueError):
        return None


def psutil_start_time(pid: int) -> float | None:
    """psutil's `create_time()` (epoch seconds) of a live, non-zombie pid; None otherwise."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.create_time()
    except psutil.Error:
        return None


@dataclass(frozen=True, slots=True)
class IdentityCheck:
    ok: bool
    reason: str


def verify_identity(
    key: ProcessKey, *, start_time_of: StartTimeOf = psutil_start_time, tolerance_seconds: float = 1.0
) -> IdentityCheck:
    """Whether `key.pid` is still the process that started at `key.start_time` (within the tolerance)."""
    if key.start_time is None:
        return IdentityCheck(False, f"pid {key.pid}: no start time recorded, identity cannot be verified")
    now_start = start_time_of(key.pid)
    if now_start is None:
        return IdentityCheck(False, f"pid {key.pid} has exited")
    if not abs(now_start - key.start_time) <= tolerance_seconds:  # fails closed on NaN
        return IdentityCheck(
            False, f"pid {key.pid} was reused (started at {now_start:.2f}, expected {key.start_time:.2f})"
        )
    return IdentityCheck(True, "identity verified")


@contextlib.contextmanager
def _pinned(pid: int) -> Iterator[int | None]:
    """A pidfd for `pid` while the block runs (None where pidfds are unavailable); ProcessLookupError if gone."""
    opener = getattr(os, "pidfd_open", None)
    fd: int | None = None
    if opener is not None:
        try:
            fd = opener(pid)
        except ProcessLookupError:
            raise
        except OSError:  # ENOSYS on kernels before 5.3, EPERM under some seccomp profiles
            fd = None
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


def _send(pidfd: int | None, pid: int, signum: int) -> None:
    sender = getattr(signal, "pidfd_send_signal", None)
    if pidfd is not None and sender is not None:
        sender(pidfd, signum)
    else:
        os.kill(pid, signum)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def send_signal(
    key: ProcessKey,
    signum: int,
    *,
    proc_root: Path = PROC,
    dry_run: bool = False,
    force: bool = False,
    start_time_of: StartTimeOf = psutil_start_time,
    tolerance_seconds: float = 1.0,
    action: str = "signal",
    adapter: str | None = None,
) -> ActionResult:
    """Send `signum` to `key` if it is still that process and catches the signal (or `force`); never raises.

    The result says what was done, or precisely why not (exited, reused, does not catch it, ignores it,
    not permitted).
    """
    name = signal_name(signum)

    def result(done: bool, reason: str, *, dry: bool = False) -> ActionResult:
        return ActionResult(action, done, reason, process=key, signal=name, adapter=adapter, dry_run=dry)

    try:
        with _pinned(key.pid) as pidfd:
            status = read_status(key.pid, proc_root)
            identity = verify_identity(key, start_time_of=start_time_of, tolerance_seconds=tolerance_seconds)
            if not identity.ok:
                return result(False, f"{identity.reason}; {name} not sent")
            if status is None:
                return result(False, f"cannot read the signal masks of pid {key.pid}; {name} not sent")
            if not force:
                if signum in status.ignored:
                    return result(False, f"pid {key.pid} ignores {name}; not sent (it would do nothing)")
                if not status.catches(signum):
                    return result(
                        False,
                        f"pid {key.pid} installs no handler for {name}, whose default action would end it; "
                        "not sent (set force to override)",
                    )
            if dry_run:
                return result(False, f"dry-run: would send {name} to pid {key.pid}", dry=True)
            _send(pidfd, key.pid, signum)
    except ProcessLookupError:
        return result(False, f"pid {key.pid} has exited; {name} not sent")
    except PermissionError:
        return result(False, f"not permitted to signal pid {key.pid} (run the daemon as its user or root)")
    except OSError as exc:
        return result(False, f"{name} to pid {key.pid} failed: {exc}")
    note = " (blocked by its main thread for now; delivered when unblocked)" if signum in status.blocked else ""
    return result(True, f"sent {name} to pid {key.pid}{note}")


class Killer:
    """SIGTERM now, SIGKILL after `grace_seconds` if the same process is still alive (on a worker thread)."""

    def __init__(
        self,
        *,
        grace_seconds: float = 10.0,
        start_time_of: StartTimeOf = psutil_start_time,
        tolerance_seconds: float = 1.0,
    ) -> None:
        self.grace_seconds = grace_seconds
        self._start_time_of = start_time_of
        self._tolerance = tolerance_seconds
        # One short-lived thread per kill waits out its grace period: kills are rare (the policy's cooldown
        # bounds them), and a queue that could drop an escalation would leave a SIGTERM-proof hog alive.
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def kill(self, key: ProcessKey, *, dry_run: bool = False) -> ActionResult:
        """Verify identity, send SIGTERM, and schedule the SIGKILL check; never raises."""
        identity = verify_identity(key, start_time_of=self._start_time_of, tolerance_seconds=self._tolerance)
        if not identity.ok:
            return ActionResult("kill", False, f"{identity.reason}; not killed", process=key, signal="SIGTERM")
        if dry_run:
            return ActionResult(
                "kill", False, f"dry-run: would send SIGTERM to pid {key.pid}, SIGKILL after "
                f"{self.grace_seconds:g} s", process=key, signal="SIGTERM", dry_run=True,
            )  # fmt: skip
        opener = getattr(os, "pidfd_open", None)
        pidfd: int | None = None
        if opener is not None:
            with contextlib.suppress(OSError):  # gone (checked next) or no pidfds here (plain kill then)
                pidfd = opener(key.pid)
        # Checked again once pinned: the first check and the pidfd may straddle a pid reuse.
        identity = verify_identity(key, start_time_of=self._start_time_of, tolerance_seconds=self._tolerance)
        handed_over = False
        try:
            if not identity.ok:
                return ActionResult("kill", False, f"{identity.reason}; not killed", process=key, signal="SIGTERM")
            _send(pidfd, key.pid, signal.SIGTERM)
            thread = threading.Thread(
                target=self._escalate, args=(key, pidfd), name=f"vramwatch-kill-{key.pid}", daemon=True
            )
            thread.start()
            handed_over = True
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        except ProcessLookupError:
            return ActionResult("kill", False, f"pid {key.pid} has exited; not killed", process=key, signal="SIGTERM")
        except (OSError, RuntimeError) as exc:
            return ActionResult("kill", False, f"SIGTERM to pid {key.pid} failed: {exc}", process=key, signal="SIGTERM")
        finally:
            if pidfd is not None and not handed_over:
                os.close(pidfd)
        return ActionResult(
            "kill", True, f"sent SIGTERM to pid {key.pid}; SIGKILL in {self.grace_seconds:g} s if it is still alive",
            process=key, signal="SIGTERM",
        )  # fmt: skip

    def _escalate(self, key: ProcessKey, pidfd: int | None) -> None:
        try:
            if self._exited(key, pidfd):
                log.info("kill_done", pid=key.pid, signal="SIGTERM")
                return
            _send(pidfd, key.pid, signal.SIGKILL)
            log.warning("kill_escalated", pid=key.pid, signal="SIGKILL", grace_seconds=self.grace_seconds)
        except ProcessLookupError:
            log.info("kill_done", pid=key.pid, signal="SIGTERM")
        except Exception:  # a thread must not die with a traceback the daemon never sees
            log.exception("kill_escalation_failed", pid=key.pid)
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def _exited(self, key: ProcessKey, pidfd: int | None) -> bool:
        """Wait up to the grace period for the process to end."""
        if pidfd is not None:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)  # a pidfd turns readable when its process exits
            return bool(poller.poll(int(self.grace_seconds * 1000)))
        deadline = time.monotonic() + self.grace_seconds
        while True:
            if not verify_identity(key, start_time_of=self._start_time_of, tolerance_seconds=self._tolerance).ok:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def close(self, timeout: float = 5.0) -> None:
        """Wait up to `timeout` seconds for pending escalations (they are daemon threads either way)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
