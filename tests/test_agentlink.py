"""The daemon-side agent listener over real Unix datagram sockets: decoding, pid checks, replies."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import pytest
from vramwatch.agent import protocol
from vramwatch.agenthost.link import AgentListener, AgentReport
from vramwatch.errors import ConfigError, VramwatchError

MIB = 1 << 20


class Clock:
    """A hand-moved monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fake_proc(root: Path, pid: int, nspids: list[int]) -> Path:
    (root / str(pid)).mkdir(parents=True)
    (root / str(pid) / "status").write_text("Name:\tpython\nNSpid:\t" + "\t".join(map(str, nspids)) + "\n")
    return root


@pytest.fixture
def sender():
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("")
    sock.settimeout(2.0)
    yield sock
    sock.close()


def stats_message(pid: int, allocated: int = 300 * MIB, **extra: object) -> dict:
    entry = protocol.device_entry(
        0,
        {
            "allocated_bytes": {"all": {"current": allocated}},
            "reserved_bytes": {"all": {"current": 512 * MIB}},
            "inactive_split_bytes": {"all": {"current": 20 * MIB}},
            "num_alloc_retries": 1,
            "num_ooms": 0,
        },
        cuda_uuid="abcd-ef",
        total_bytes=24 << 30,
        free_bytes=1 << 30,
    )
    message = protocol.stats_message(
        pid=pid, seq=1, t=1.0, torch_version="2.11.0", devices=[entry], sample_seconds=1e-4, dropped=0, signal=True
    )
    message.update(extra)
    return message


def make_listener(tmp_path: Path, **kwargs: object) -> tuple[AgentListener, list[AgentReport]]:
    reports: list[AgentReport] = []
    if "proc_root" not in kwargs:
        kwargs["proc_root"] = fake_proc(tmp_path / "proc", os.getpid(), [os.getpid()])
    listener = AgentListener(tmp_path / "run" / "agent.sock", on_report=reports.append, **kwargs)  # type: ignore[arg-type]
    listener.bind()
    return listener, reports


def test_report_becomes_torch_stats_with_the_kernel_pid(tmp_path: Path, sender: socket.socket):
    """A genuine stats datagram is decoded into TorchStats keyed by the sender's verified pid."""
    listener, reports = make_listener(tmp_path)
    sender.sendto(protocol.encode(stats_message(os.getpid())), str(listener.path))
    assert listener.poll(timeout=1.0) == 1
    (report,) = reports
    assert report.kind == "stats"
    assert report.pid == os.getpid()
    assert report.uid == os.getuid()
    (device,) = report.devices
    assert device.stats.allocated_bytes == 300 * MIB
    assert device.stats.reserved_bytes == 512 * MIB
    assert device.stats.requested_bytes is None  # this "torch" did not report it
    assert device.stats.num_alloc_retries == 1
    assert device.gpu_uuid == "GPU-abcd-ef"
    assert device.usable_bytes == 512 * MIB + (1 << 30)
    assert report.torch_stats == (device.stats,)
    listener.stop()


def test_forged_pid_is_rejected_and_counted(tmp_path: Path, sender: socket.socket):
    """A datagram claiming another process's pid is dropped: SCM_CREDENTIALS say who really sent it."""
    listener, reports = make_listener(tmp_path)
    sender.sendto(protocol.encode(stats_message(1)), str(listener.path))
    listener.poll(timeout=1.0)
    assert reports == []
    assert listener.counters.forged == 1
    assert listener.counters.accepted == 0
    listener.stop()


def test_container_pid_is_accepted_through_nspid(tmp_path: Path, sender: socket.socket):
    """A sender in a child pid namespace may claim its inner pid; the report is keyed by the outer one."""
    proc = fake_proc(tmp_path / "proc", os.getpid(), [os.getpid(), 42])
    listener, reports = make_listener(tmp_path, proc_root=proc)
    sender.sendto(protocol.encode(stats_message(42)), str(listener.path))
    listener.poll(timeout=1.0)
    assert [r.pid for r in reports] == [os.getpid()]
    listener.stop()


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"[1, 2]", id="not-an-object"),
        pytest.param(json.dumps({"v": 2, "type": "stats", "pid": 1}).encode(), id="future-version"),
        pytest.param(json.dumps({"v": 1, "type": "gossip", "pid": 1}).encode(), id="unknown-type"),
        pytest.param(json.dumps({"v": 1, "type": "stats"}).encode(), id="no-pid"),
        pytest.param(json.dumps({"v": 1, "type": "pressure", "pid": 1}).encode(), id="pressure-is-not-a-report"),
    ],
)
def test_malformed_datagrams_are_counted_not_raised(tmp_path: Path, sender: socket.socket, payload: bytes):
    """Garbage is counted as malformed and never reaches on_report nor stops the listener."""
    listener, reports = make_listener(tmp_path)
    sender.sendto(payload, str(listener.path))
    listener.poll(timeout=1.0)
    assert reports == []
    assert listener.counters.malformed == 1
    listener.stop()


def test_bad_device_entries_are_malformed(tmp_path: Path, sender: socket.socket):
    """A stats message whose devices are not a list of objects with a device index is refused."""
    listener, reports = make_listener(tmp_path)
    sender.sendto(protocol.encode(stats_message(os.getpid(), devices=[{"allocated_bytes": 1}])), str(listener.path))
    listener.poll(timeout=1.0)
    assert reports == []
    assert listener.counters.malformed == 1
    listener.stop()


def test_negative_or_boolean_figures_become_none(tmp_path: Path, sender: socket.socket):
    """A figure that cannot be a byte count is unknown (None), not trusted."""
    message = stats_message(os.getpid())
    message["devices"][0]["allocated_bytes"] = -5
    message["devices"][0]["reserved_bytes"] = True
    listener, reports = make_listener(tmp_path)
    sender.sendto(protocol.encode(message), str(listener.path))
    listener.poll(timeout=1.0)
    stats = reports[0].devices[0].stats
    assert (stats.allocated_bytes, stats.reserved_bytes) == (None, None)
    listener.stop()


def test_oom_report_names_the_request_and_the_cache(tmp_path: Path, sender: socket.socket):
    """An oom datagram becomes an OomEvent with the failed request and reserved-but-unallocated bytes."""
    listener, reports = make_listener(tmp_path)
    sender.sendto(protocol.encode(stats_message(os.getpid())), str(listener.path))
    oom = protocol.oom_message(
        pid=os.getpid(),
        t=2.0,
        torch_version="2.11.0",
        device=0,
        alloc_bytes=66 * MIB,
        capacity_bytes=80 << 30,
        device_free_bytes=10 * MIB,
        stats={"allocated_bytes": {"all": {"current": 100 * MIB}}, "reserved_bytes": {"all": {"current": 900 * MIB}}},
        snapshot="/tmp/x.pickle",
        observed=True,
    )
    sender.sendto(protocol.encode(oom), str(listener.path))
    listener.poll(timeout=1.0)
    event = reports[-1].oom
    assert event is not None
    assert event.requested_bytes == 66 * MIB
    assert event.reserved_unallocated_bytes == 800 * MIB
    assert event.snapshot_path == "/tmp/x.pickle"
    assert event.observed is True
    assert event.gpu_uuid == "GPU-abcd-ef"  # learnt from the stats of the same process
    listener.stop()


def test_pressure_goes_back_to_the_reporting_socket(tmp_path: Path, sender: socket.socket):
    """send_pressure reaches the address the agent's datagrams came from."""
    listener, _ = make_listener(tmp_path)
    sender.sendto(protocol.encode(stats_message(os.getpid())), str(listener.path))
    listener.poll(timeout=1.0)
    assert listener.send_pressure(os.getpid(), level="critical", reason="12 MiB left")
    message = protocol.decode(sender.recv(4096))
    assert message == {"v": 1, "type": "pressure", "level": "critical", "reason": "12 MiB left"}
    assert listener.counters.pressure_sent == 1
    listener.stop()


def test_pressure_to_an_unknown_pid_fails_without_signalling(tmp_path: Path):
    """No report from a pid: no address, and no SIGUSR2 (it would kill a process without the agent)."""
    listener, _ = make_listener(tmp_path)
    assert listener.send_pressure(os.getpid(), allow_signal=True) is False
    assert listener.counters.pressure_failed == 1
    listener.stop()


def test_latest_keeps_only_recent_processes(tmp_path: Path, sender: socket.socket):
    """latest() serves the newest figures per process and forgets processes that went quiet."""
    clock = Clock()
    listener, _ = make_listener(tmp_path, clock=clock, expire_seconds=30.0)
    sender.sendto(protocol.encode(stats_message(os.getpid(), allocated=1 * MIB)), str(listener.path))
    sender.sendto(protocol.encode(stats_message(os.getpid(), allocated=2 * MIB)), str(listener.path))
    listener.poll(timeout=1.0)
    assert [d.stats.allocated_bytes for d in listener.latest()] == [2 * MIB]
    clock.now += 10
    assert listener.latest(max_age_seconds=5.0) == ()
    clock.now += 30
    listener.poll()
    assert listener.pids() == ()
    listener.stop()


def test_a_failing_consumer_does_not_stop_the_listener(tmp_path: Path, sender: socket.socket):
    """on_report raising is counted; later reports are still delivered."""
    calls: list[AgentReport] = []

    def consumer(report: AgentReport) -> None:
        calls.append(report)
        raise RuntimeError("boom")

    listener = AgentListener(
        tmp_path / "agent.sock", on_report=consumer, proc_root=fake_proc(tmp_path / "p", os.getpid(), [os.getpid()])
    )
    listener.bind()
    for _ in range(2):
        sender.sendto(protocol.encode(stats_message(os.getpid())), str(listener.path))
    listener.poll(timeout=1.0)
    assert len(calls) == 2
    assert listener.counters.callback_errors == 2
    listener.stop()


def test_socket_file_mode_and_cleanup(tmp_path: Path):
    """The socket gets the configured mode, and stop() removes it."""
    listener, _ = make_listener(tmp_path, mode=0o666)
    assert stat.S_IMODE(listener.path.stat().st_mode) == 0o666
    listener.stop()
    assert not listener.path.exists()


def test_refuses_to_replace_a_regular_file(tmp_path: Path):
    """A path that holds something other than a socket is never deleted."""
    path = tmp_path / "agent.sock"
    path.write_text("precious")
    with pytest.raises(ConfigError, match="not a socket"):
        AgentListener(path, on_report=lambda r: None).bind()
    assert path.read_text() == "precious"


def test_refuses_to_steal_a_live_socket_and_replaces_a_stale_one(tmp_path: Path):
    """A second daemon does not take a live listener's socket; a dead one's leftover file is replaced."""
    first, _ = make_listener(tmp_path)
    with pytest.raises(VramwatchError, match="already bound"):
        AgentListener(first.path, on_report=lambda r: None).bind()
    first._sock.close()  # type: ignore[union-attr]  # dies without cleaning up
    first._sock = None
    second = AgentListener(first.path, on_report=lambda r: None)
    second.bind()
    assert stat.S_ISSOCK(second.path.stat().st_mode)
    second.stop()


def test_thread_delivers_and_stop_drains(tmp_path: Path, sender: socket.socket):
    """With start(), reports arrive without polling; what is queued at stop() is still delivered."""
    listener, reports = make_listener(tmp_path)
    listener.start()
    sender.sendto(protocol.encode(stats_message(os.getpid())), str(listener.path))
    sender.sendto(protocol.encode(stats_message(os.getpid(), allocated=7 * MIB)), str(listener.path))
    listener.stop()
    assert [r.devices[0].stats.allocated_bytes for r in reports] == [300 * MIB, 7 * MIB]


def test_steps_datagrams_are_reports_not_malformed(tmp_path: Path, sender: socket.socket):
    """A steps datagram is accepted and decoded into step records of the kernel pid, never counted as malformed.

    (Daemons from before step counting knew no `steps` type and counted each one as malformed.)
    """
    listener, reports = make_listener(tmp_path)
    entries = [[k, k, float(k), 0.5, 8 << 30, 12 << 30, 4 << 30, 10 << 30, 0] for k in (1, 2, 3)]
    message = protocol.steps_message(pid=os.getpid(), t=3.0, device=0, entries=entries)
    sender.sendto(protocol.encode(message), str(listener.path))
    assert listener.poll(timeout=1.0) == 1
    assert listener.counters.malformed == 0
    assert listener.counters.accepted == 1
    (report,) = reports
    assert report.kind == "steps"
    assert [(r.pid, r.device, r.last_step) for r in report.steps] == [(os.getpid(), 0, k) for k in (1, 2, 3)]
    assert report.steps[0].peak_allocated_bytes == 8 << 30
    listener.stop()
