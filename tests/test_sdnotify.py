"""The sd_notify client against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from vramwatch.sdnotify import SdNotifier, watchdog_interval
from vramwatch.testing import FakeClock


class FakeSystemd:
    """A bound datagram socket that collects what a notifier sends, like systemd's notify socket."""

    def __init__(self, address: str, bind_to: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(bind_to)
        self.sock.settimeout(2.0)

    def receive(self) -> list[str]:
        """The next datagram, split into its `KEY=value` lines."""
        return self.sock.recv(4096).decode().split("\n")

    def nothing_pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(2.0)
        return False


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    path = str(tmp_path / "notify")
    fake = FakeSystemd(path, path)
    yield fake
    fake.sock.close()


def test_ready_with_status_is_one_datagram(systemd: FakeSystemd) -> None:
    """READY=1 and STATUS= arrive together, so systemd never sees a ready service without its status."""
    notifier = SdNotifier(systemd.address)
    assert notifier.ready("watching 2 GPUs") is True
    assert systemd.receive() == ["READY=1", "STATUS=watching 2 GPUs"]


def test_status_flattens_newlines(systemd: FakeSystemd) -> None:
    """A newline in a status text cannot inject a second assignment such as STOPPING=1."""
    SdNotifier(systemd.address).status("gpu0 full\nSTOPPING=1")
    assert systemd.receive() == ["STATUS=gpu0 full STOPPING=1"]


def test_stopping(systemd: FakeSystemd) -> None:
    """stopping() sends STOPPING=1."""
    SdNotifier(systemd.address).stopping()
    assert systemd.receive() == ["STOPPING=1"]


def test_reloading_carries_monotonic_usec(systemd: FakeSystemd) -> None:
    """RELOADING=1 comes with MONOTONIC_USEC in microseconds of the monotonic clock (systemd >= 253)."""
    clock = FakeClock(now=1234.5)
    SdNotifier(systemd.address, clock=clock).reloading()
    assert systemd.receive() == ["RELOADING=1", "MONOTONIC_USEC=1234500000"]


def test_abstract_socket_address() -> None:
    """An address starting with @ reaches the abstract-namespace socket of that name."""
    name = f"vramwatch-test-{uuid.uuid4().hex}"
    fake = FakeSystemd("@" + name, "\0" + name)
    try:
        assert SdNotifier.from_env({"NOTIFY_SOCKET": "@" + name}).ready() is True
        assert fake.receive() == ["READY=1"]
    finally:
        fake.sock.close()


def test_watchdog_rate_limited_to_ping_interval(systemd: FakeSystemd) -> None:
    """Calling watchdog() every tick sends one WATCHDOG=1 per ping interval, not one per tick."""
    clock = FakeClock()
    env = {"NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": "30000000"}
    notifier = SdNotifier.from_env(env, clock=clock)
    assert notifier.watchdog_interval_s == 15.0
    sent = []
    for _ in range(31):  # one tick a second for 30 s
        sent.append(notifier.watchdog())
        clock.advance(1.0)
    assert sent.count(True) == 3  # t=0, 15, 30
    assert [i for i, ok in enumerate(sent) if ok] == [0, 15, 30]
    assert [systemd.receive() for _ in range(3)] == [["WATCHDOG=1"]] * 3
    assert systemd.nothing_pending()


def test_watchdog_silent_without_watchdog_usec(systemd: FakeSystemd) -> None:
    """Without WatchdogSec= there is nothing to feed: watchdog() sends nothing."""
    notifier = SdNotifier.from_env({"NOTIFY_SOCKET": systemd.address})
    assert notifier.watchdog() is False
    assert systemd.nothing_pending()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "me"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    """The ping interval is half of WATCHDOG_USEC, and only for the process WATCHDOG_PID names."""
    assert watchdog_interval(env, pid=4242) == expected


@pytest.mark.parametrize(("tick", "covered"), [(1.0, True), (7.5, True), (8.0, False), (60.0, False)])
def test_watchdog_covers_tick_interval(tick: float, covered: bool) -> None:
    """A tick interval too long for WatchdogSec=30 is flagged so the daemon can warn instead of being killed."""
    notifier = SdNotifier.from_env({"NOTIFY_SOCKET": "/run/nonexistent", "WATCHDOG_USEC": "30000000"})
    assert notifier.watchdog_covers(tick) is covered


def test_noop_outside_systemd() -> None:
    """Without NOTIFY_SOCKET every call is a no-op that reports False."""
    notifier = SdNotifier.from_env({})
    assert not notifier.enabled
    assert (notifier.ready("x"), notifier.status("x"), notifier.watchdog(), notifier.stopping()) == (
        False,
        False,
        False,
        False,
    )
    assert notifier.watchdog_covers(3600.0)


@pytest.mark.parametrize("address", ["vsock:2:1234", "@", "relative/path"])
def test_unsupported_addresses_disable(address: str) -> None:
    """Transports we do not speak leave the notifier disabled rather than failing later."""
    assert not SdNotifier(address).enabled


def test_vanished_socket_does_not_raise(tmp_path: Path) -> None:
    """A notify socket that is gone (systemd shutting down) makes calls return False, never raise."""
    notifier = SdNotifier(str(tmp_path / "gone"), watchdog_interval_s=1.0)
    assert notifier.ready() is False
    assert notifier.watchdog() is False


def test_failed_ping_is_retried_next_tick(tmp_path: Path) -> None:
    """A ping that could not be sent does not start the rate-limit window: the next tick tries again."""
    path = str(tmp_path / "late")
    clock = FakeClock()
    notifier = SdNotifier(path, watchdog_interval_s=15.0, clock=clock)
    assert notifier.watchdog() is False
    fake = FakeSystemd(path, path)
    try:
        clock.advance(1.0)
        assert notifier.watchdog() is True
        assert fake.receive() == ["WATCHDOG=1"]
    finally:
        fake.sock.close()


def test_unset_environment(monkeypatch: pytest.MonkeyPatch, systemd: FakeSystemd) -> None:
    """unset_environment=True hides the socket from subprocesses but keeps this notifier working."""
    monkeypatch.setenv("NOTIFY_SOCKET", systemd.address)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = SdNotifier.from_env(unset_environment=True)
    assert "NOTIFY_SOCKET" not in os.environ
    assert "WATCHDOG_USEC" not in os.environ
    assert notifier.watchdog_interval_s == 1.0
    assert notifier.watchdog() is True
    assert systemd.receive() == ["WATCHDOG=1"]


SERVE = [sys.executable, "-m", "vramwatch", "serve"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _until(systemd: FakeSystemd, wanted: str, deadline: float) -> list[str]:
    """Receive datagrams until one contains the line `wanted`; returns that datagram's lines."""
    while time.monotonic() < deadline:
        try:
            lines = systemd.receive()
        except TimeoutError:
            continue
        if wanted in lines:
            return lines
    pytest.fail(f"no {wanted} from the daemon in time")


@pytest.mark.slow
def test_serve_speaks_sd_notify(systemd: FakeSystemd, tmp_path: Path) -> None:
    """Under a notify socket `serve` reports READY once /metrics answers, pings the watchdog from its ticks,
    brackets a SIGHUP reload with RELOADING/READY, and says STOPPING on SIGTERM before exiting cleanly."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VRAMWATCH_")}
    env |= {"NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": "2000000"}
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*SERVE, "--simulate", "steady", "--interval", "0.2", "--listen", f"127.0.0.1:{port}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        _until(systemd, "READY=1", time.monotonic() + 10)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert response.status == 200
        _until(systemd, "WATCHDOG=1", time.monotonic() + 3)
        proc.send_signal(signal.SIGHUP)
        reloading = _until(systemd, "RELOADING=1", time.monotonic() + 5)
        assert any(line.startswith("MONOTONIC_USEC=") for line in reloading)
        _until(systemd, "READY=1", time.monotonic() + 5)
        proc.send_signal(signal.SIGTERM)
        _until(systemd, "STOPPING=1", time.monotonic() + 5)
        assert proc.wait(timeout=5) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_watchdog_too_short_for_the_interval_is_said_in_its_own_terms(tmp_path: Path) -> None:
    """WatchdogSec=30 with a 10 s interval: the warning gives WatchdogSec as systemd has it (30, not the 15 s ping
    interval) and the WatchdogSec the interval needs (40)."""
    from dataclasses import replace

    from structlog.testing import capture_logs
    from vramwatch.config import Config
    from vramwatch.daemon import Daemon
    from vramwatch.testing import FakeClock, ScriptedBackend

    cfg = Config()
    cfg = replace(cfg, daemon=replace(cfg.daemon, interval=10.0))
    notifier = SdNotifier(str(tmp_path / "notify.sock"), watchdog_interval_s=15.0)
    d = Daemon(cfg, lambda: ScriptedBackend([]), clock=FakeClock(), systemd=notifier)
    d.stop_event.set()
    with capture_logs() as logs:
        d.run()
    (warned,) = [e for e in logs if e["event"] == "watchdog_shorter_than_interval"]
    assert (warned["interval"], warned["watchdog_sec"], warned["needs_watchdog_sec"]) == (10.0, 30.0, 40.0)
