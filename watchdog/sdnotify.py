"""Tell systemd how the daemon is doing: the sd_notify protocol, without libsystemd.

Under `Type=notify` systemd passes a datagram socket in `$NOTIFY_SOCKET` (a path, or an abstract socket
when it starts with `@`) and waits for `READY=1` before it calls the unit started. Later messages update
the status line `systemctl status` shows (`STATUS=`), announce a config reload (`RELOADING=1`) or a stop
(`STOPPING=1`), and keep the watchdog fed (`WATCHDOG=1`): with `WatchdogSec=` set, systemd kills and
restarts a service that stays silent longer than that.

The daemon pings only after its sampler completed a tick (the tick loop calls `watchdog()`), so a sampler
stuck in a hung NVML call stops the pings and systemd restarts the service: that is the point of the
watchdog. `watchdog()` sends at most once per ping interval (half of `WATCHDOG_USEC`, as sd_watchdog_enabled
advises), however often it is called.

Everything here is a no-op outside systemd (no `$NOTIFY_SOCKET`) and never raises: a notification that
cannot be sent is reported by the return value, and the daemon carries on.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from .clock import SystemClock
from .typing import Clock

__all__ = ["SdNotifier", "watchdog_interval"]


def watchdog_interval(environ: Mapping[str, str] | None = None, *, pid: int | None = None) -> float | None:
    """Seconds between watchdog pings (half of `WATCHDOG_USEC`), or None when no watchdog is armed for us.

    `WATCHDOG_PID`, when set, names the process the watchdog is meant for: a child that inherited the
    environment must not ping on its parent's behalf.
    """
    env = os.environ if environ is None else environ
    raw_usec = env.get("WATCHDOG_USEC")
    if raw_usec is None:
        return None
    try:
        usec = int(raw_usec)
    except ValueError:
        return None
    if usec <= 0:
        return None
    raw_pid = env.get("WATCHDOG_PID")
    if raw_pid is not None:
        try:
            target = int(raw_pid)
        except ValueError:
            return None
        if target != (os.getpid() if pid is None else pid):
            return None
    return usec / 2_000_000


def _socket_address(raw: str) -> str | None:
    """The address to sendto(): a filesystem path as is, `@name` as the abstract name `\\0name`."""
    if raw.startswith("/"):
        return raw
    if raw.startswith("@") and len(raw) > 1:
        return "\0" + raw[1:]
    # vsock: and other transports are for VMs and containers talking to a host manager; not ours.
    return None


class SdNotifier:
    """A client of systemd's notification socket; every method is a no-op returning False when disabled."""

    def __init__(
        self,
        address: str | None,
        *,
        watchdog_interval_s: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._address = None if address is None else _socket_address(address)
        self._ping_interval_s = watchdog_interval_s
        self._clock: Clock = SystemClock() if clock is None else clock
        self._last_ping: float | None = None

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        clock: Clock | None = None,
        unset_environment: bool = False,
    ) -> SdNotifier:
        """Read `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`; outside systemd the result does nothing.

        `unset_environment=True` removes those variables from `os.environ` (only when `environ` is None)
        so that subprocesses the daemon starts do not talk to systemd in its name.
        """
        env = os.environ if environ is None else environ
        notifier = cls(env.get("NOTIFY_SOCKET"), watchdog_interval_s=watchdog_interval(env), clock=clock)
        if unset_environment and environ is None:
            for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                os.environ.pop(key, None)
        return notifier

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notification socket."""
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often the watchdog wants a ping (half of WatchdogSec), or None when it is off."""
        return self._ping_interval_s if self.enabled else None

    def watchdog_covers(self, tick_interval_s: float) -> bool:
        """False when a healthy sampler ticking every `tick_interval_s` could miss the watchdog deadline.

        A ping goes out on the first tick at least one ping interval after the last one, and systemd's
        deadline is two ping intervals (WatchdogSec): two ticks must fit in one ping interval so that a
        single overrun does not get a healthy daemon killed.
        """
        interval = self.watchdog_interval_s
        return interval is None or tick_interval_s * 2 <= interval

    def notify(self, *assignments: str) -> bool:
        """Send raw `KEY=value` lines in one datagram; True when systemd's socket accepted it."""
        if self._address is None or not assignments:
            return False
        payload = "\n".join(assignments).encode("utf-8", errors="replace")
        try:
            # A socket per message, as libsystemd does: messages are rare (one ping per ping interval) and
            # nothing is held open across a fork or leaked into a subprocess.
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(payload, self._address)
        except OSError:
            # systemd gone (shutdown) or the socket vanished: status messages are best effort by design.
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Startup is done: the first tick completed and /metrics answers."""
        lines = ["READY=1"]
        if status is not None:
            lines.append(_status_line(status))
        return self.notify(*lines)

    def status(self, text: str) -> bool:
        """Set the one-line status `systemctl status vramwatch` shows."""
        return self.notify(_status_line(text))

    def reloading(self) -> bool:
        """A SIGHUP reload started; send `ready()` when it is done.

        `MONOTONIC_USEC` is required by systemd >= 253 (`Type=notify-reload`) to tell this reload from an
        older one; earlier versions ignore it.
        """
        usec = int(self._clock.monotonic() * 1_000_000)
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        """Shutdown started (SIGTERM received)."""
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        """Feed the watchdog after a completed tick; rate-limited to one datagram per ping interval."""
        interval = self.watchdog_interval_s
        if interval is None:
            return False
        now = self._clock.monotonic()
        if self._last_ping is not None and now - self._last_ping < interval:
            return False
        if not self.notify("WATCHDOG=1"):
            return False
        self._last_ping = now
        return True


def _status_line(text: str) -> str:
    # One datagram holds newline-separated assignments: a newline in the text would start a bogus one.
    return "STATUS=" + " ".join(text.splitlines())
