"""The agent thread with a fake torch probe, reporting to a real AgentListener over a real socket."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from vramwatch.agent import protocol
from vramwatch.agent.core import Agent, AgentConfig, PressureNotice
from vramwatch.agenthost.link import AgentListener, AgentReport

MIB = 1 << 20


def nested(allocated: int, reserved: int, *, split: int = 0, retries: int = 0, ooms: int = 0, peak: int | None = None):
    return {
        "allocated_bytes": {"all": {"current": allocated}},
        "reserved_bytes": {"all": {"current": reserved, "peak": reserved if peak is None else peak}},
        "active_bytes": {"all": {"current": allocated}},
        "inactive_split_bytes": {"all": {"current": split}},
        "num_alloc_retries": retries,
        "num_ooms": ooms,
    }


class FakeProbe:
    """A TorchProbe whose state the test sets; records what the agent asked of it."""

    def __init__(self) -> None:
        self.initialized = False
        self.stats: dict[int, dict[str, Any]] = {0: nested(300 * MIB, 512 * MIB, split=20 * MIB)}
        self.observer: Callable[[int, int, int, int], None] | None = None
        self.attach_ok = True
        self.history: int | None = None
        self.empty_cache_calls = 0
        self.stats_error: Exception | None = None

    def cuda_initialized(self) -> bool:
        return self.initialized

    def torch_version(self) -> str | None:
        return "2.11.0+fake"

    def device_count(self) -> int:
        return len(self.stats)

    def memory_stats(self, device: int) -> Mapping[str, Any]:
        if self.stats_error is not None:
            raise self.stats_error
        return self.stats.get(device, {})

    def device_identity(self, device: int) -> tuple[str | None, int | None]:
        return (f"uuid-{device}", 24 << 30)

    def mem_get_info(self, device: int) -> tuple[int, int] | None:
        return (1 << 30, 24 << 30)

    def attach_oom_observer(self, observer: Callable[[int, int, int, int], None]) -> bool:
        if self.attach_ok:
            self.observer = observer
        return self.attach_ok

    def record_history(self, max_entries: int) -> bool:
        self.history = max_entries
        return True

    def dump_snapshot(self, path: str) -> bool:
        Path(path).write_bytes(b"snapshot")
        return True

    def empty_cache(self) -> bool:
        self.empty_cache_calls += 1
        return True

    step_hook: Callable[[object], None] | None = None
    peaks: tuple[int, int, int, int, int] | None = (900 * MIB, 1024 * MIB, 300 * MIB, 512 * MIB, 20 * MIB)
    peaks_error: str | None = None  # the message of a RuntimeError raised afresh at each read
    resets = 0
    registrations = 0

    def register_step_hook(self, hook: Callable[[object], None]) -> bool:
        self.step_hook = hook
        self.registrations += 1
        return True

    def current_device(self) -> int | None:
        return 0

    def take_step_peaks(self, device: int) -> tuple[int, int, int, int, int] | None:
        if self.peaks_error is not None:
            # A new exception each time: re-raising one instance would chain tracebacks that keep the
            # optimizer of the first failing step alive.
            raise RuntimeError(self.peaks_error)
        self.resets += 1
        return self.peaks


class FakeOptimizer:
    """An optimizer as the step hook sees one (weak-referenceable, unlike a bare `object()`)."""


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[AgentListener, list[AgentReport]]]:
    reports: list[AgentReport] = []
    link = AgentListener(tmp_path / "agent.sock", on_report=reports.append, mode=0o600)
    link.bind()
    yield link, reports
    link.stop()


def make_agent(
    targets: list[str], probe: FakeProbe, callbacks: list[Callable[[PressureNotice], None]] | None = None, **config: Any
) -> Agent:
    cbs = callbacks if callbacks is not None else []
    return Agent(AgentConfig(targets=tuple(targets), **config), probe=probe, callbacks=lambda: cbs)


def test_silent_until_cuda_is_initialised_then_hello_and_stats(listener):
    """Nothing is sent before the process initialises CUDA; then a hello and the allocator's figures."""
    link, reports = listener
    probe = FakeProbe()
    agent = make_agent([str(link.path)], probe)
    agent.tick()
    link.poll(timeout=0.1)
    assert reports == []
    probe.initialized = True
    agent.tick()
    link.poll(timeout=1.0)
    assert [r.kind for r in reports] == ["hello", "stats"]
    stats = reports[1].devices[0].stats
    assert stats.pid == os.getpid()
    assert (stats.allocated_bytes, stats.reserved_bytes, stats.inactive_split_bytes) == (300 * MIB, 512 * MIB, 20 * MIB)
    assert stats.requested_bytes is None  # key absent in this torch: None, not 0
    assert reports[1].devices[0].free_bytes == 1 << 30
    assert reports[1].sample_seconds is not None
    agent.stop()


def test_devices_never_used_are_not_reported(listener):
    """A device where the allocator never reserved anything has no context of ours: skipped."""
    link, reports = listener
    probe = FakeProbe()
    probe.initialized = True
    probe.stats[1] = nested(0, 0, peak=0)
    agent = make_agent([str(link.path)], probe)
    agent.tick()
    link.poll(timeout=1.0)
    assert [d.stats.device for d in reports[-1].devices] == [0]
    agent.stop()


def test_no_listener_drops_and_counts(tmp_path: Path):
    """With nobody listening the agent drops its datagrams, counts them and carries on."""
    probe = FakeProbe()
    probe.initialized = True
    agent = make_agent([str(tmp_path / "nobody.sock"), "@vramwatch-test-nobody"], probe)
    agent.tick()
    agent.tick()
    assert agent.counters.sent == 0
    assert agent.counters.dropped == 6  # hello + 2 stats, to each of 2 targets
    agent.stop()


def test_stats_errors_never_escape_the_thread(listener):
    """A probe that raises is survived: the thread keeps running and counts the error."""
    link, _ = listener
    probe = FakeProbe()
    probe.initialized = True
    probe.stats_error = RuntimeError("allocator backend without stats")
    agent = make_agent([str(link.path)], probe, interval_seconds=0.02)
    agent.start_thread()
    deadline = threading.Event()
    deadline.wait(0.2)
    assert agent.running
    assert agent.counters.errors >= 2
    agent.stop()
    assert not agent.running


def test_pressure_datagram_runs_callbacks_in_the_agent_thread(listener):
    """A pressure notice from the listener reaches the callbacks, run in the agent thread, not the caller's."""
    link, reports = listener
    probe = FakeProbe()
    probe.initialized = True
    seen: list[tuple[str, PressureNotice]] = []
    done = threading.Event()

    def callback(notice: PressureNotice) -> None:
        seen.append((threading.current_thread().name, notice))
        done.set()

    agent = make_agent([str(link.path)], probe, [callback], interval_seconds=0.05)
    agent.start_thread()
    while not reports:
        link.poll(timeout=1.0)
    assert link.send_pressure(os.getpid(), level="critical", reason="5% left")
    assert wait_for(done.is_set), "timed out"
    (thread_name, notice) = seen[0]
    assert thread_name == "vramwatch-agent"
    assert (notice.level, notice.reason, notice.source) == ("critical", "5% left", "socket")
    agent.stop()


def test_signal_notice_runs_callbacks_in_the_agent_thread(tmp_path: Path):
    """notify_signal (what the SIGUSR2 handler calls) only wakes the thread, which runs the callbacks."""
    done = threading.Event()
    names: list[str] = []

    def callback(notice: PressureNotice) -> None:
        names.append(f"{threading.current_thread().name}/{notice.source}")
        done.set()

    agent = make_agent([str(tmp_path / "none.sock")], FakeProbe(), [callback], interval_seconds=10.0)
    agent.start_thread()
    agent.notify_signal()
    assert wait_for(done.is_set), "timed out"
    assert names == ["vramwatch-agent/signal"]
    agent.stop()


def test_a_failing_callback_does_not_stop_the_others(tmp_path: Path, capsys):
    """Every callback runs even when an earlier one raises; the failure is reported once on stderr."""
    calls: list[str] = []

    def broken(notice: PressureNotice) -> None:
        raise ValueError("nope")

    agent = make_agent([str(tmp_path / "none.sock")], FakeProbe(), [broken, lambda n: calls.append(n.level)])
    agent.handle_pressure(PressureNotice("warning", None, "signal", 0.0))
    assert calls == ["warning"]
    assert agent.counters.callback_errors == 1
    assert "pressure callback" in capsys.readouterr().err
    agent.stop()


@pytest.mark.parametrize(("configured", "expected_calls"), [(True, 1), (False, 0)])
def test_empty_cache_on_pressure_only_when_configured(tmp_path: Path, configured: bool, expected_calls: int):
    """torch.cuda.empty_cache() runs on pressure only with VRAMWATCH_EMPTY_CACHE_ON_PRESSURE."""
    probe = FakeProbe()
    probe.initialized = True
    agent = make_agent([str(tmp_path / "none.sock")], probe, empty_cache_on_pressure=configured)
    agent.tick()
    agent.handle_pressure(PressureNotice("critical", None, "socket", 0.0))
    assert probe.empty_cache_calls == expected_calls
    agent.stop()


def test_oom_observer_reports_the_allocator_state_and_a_snapshot(listener, tmp_path: Path):
    """The OOM observer sends the failed request with the allocator's figures and the snapshot's path."""
    link, reports = listener
    probe = FakeProbe()
    probe.initialized = True
    agent = make_agent([str(link.path)], probe, snapshot_dir=str(tmp_path / "snaps"), snapshot_max_entries=5000)
    agent.tick()  # arms: history recording, observer attached
    assert probe.history == 5000
    assert probe.observer is not None
    probe.stats[0] = nested(100 * MIB, 900 * MIB, split=700 * MIB, ooms=1)
    probe.observer(0, 66 * MIB, 80 << 30, 10 * MIB)
    link.poll(timeout=1.0)
    oom = reports[-1].oom
    assert oom is not None
    assert (oom.requested_bytes, oom.capacity_bytes, oom.device_free_bytes) == (66 * MIB, 80 << 30, 10 * MIB)
    assert oom.reserved_unallocated_bytes == 800 * MIB
    assert oom.inactive_split_bytes == 700 * MIB
    assert oom.observed
    assert oom.snapshot_path is not None
    assert Path(oom.snapshot_path).read_bytes() == b"snapshot"
    agent.stop()


def test_oom_observer_never_raises(tmp_path: Path):
    """An observer that fails inside must not replace the OutOfMemoryError the trainer expects."""
    probe = FakeProbe()
    probe.initialized = True
    agent = make_agent([str(tmp_path / "none.sock")], probe)
    agent.tick()
    probe.stats_error = RuntimeError("boom")
    assert probe.observer is not None
    probe.observer(0, 1, 2, 3)  # must not raise
    assert agent.oom.errors == 1
    agent.stop()


def test_oom_without_observer_is_reported_from_the_counter(listener):
    """Without an OOM observer, a rise of num_ooms is reported at once as an unobserved OOM."""
    link, reports = listener
    probe = FakeProbe()
    probe.initialized = True
    probe.attach_ok = False
    agent = make_agent([str(link.path)], probe)
    agent.tick()
    probe.stats[0] = nested(100 * MIB, 900 * MIB, ooms=1)
    agent.tick()
    agent.tick()
    link.poll(timeout=1.0)
    ooms = [r.oom for r in reports if r.oom is not None]
    assert len(ooms) == 1
    assert ooms[0].observed is False
    assert ooms[0].requested_bytes is None
    agent.stop()


def test_oom_seen_by_the_observer_is_not_reported_twice(listener):
    """The counter rising for an OOM the observer already reported adds no second report."""
    link, reports = listener
    probe = FakeProbe()
    probe.initialized = True
    agent = make_agent([str(link.path)], probe)
    agent.tick()
    probe.stats[0] = nested(100 * MIB, 900 * MIB, ooms=1)
    assert probe.observer is not None
    probe.observer(0, MIB, 1 << 30, 0)
    for _ in range(3):
        agent.tick()
    link.poll(timeout=1.0)
    assert sum(1 for r in reports if r.kind == "oom") == 1
    agent.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to send as another user")
def test_pressure_from_another_user_is_ignored(tmp_path: Path):
    """Only root, this user or the listener socket's owner may send pressure; others are counted and ignored."""
    calls: list[PressureNotice] = []
    agent = make_agent([str(tmp_path / "none.sock")], FakeProbe(), [calls.append])
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.setuid(65534)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.sendto(protocol.encode(protocol.pressure_message(level="critical", reason="x")), agent.address)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    agent._read_replies()
    assert calls == []
    assert agent.counters.rejected_replies == 1
    agent.stop()


def test_config_from_environment():
    """The runner's environment variables configure the agent; bad numbers fall back to defaults."""
    config = AgentConfig.from_env(
        {
            protocol.ENV_SOCKET: "/a.sock:/b.sock",
            protocol.ENV_INTERVAL: "0.5",
            protocol.ENV_SNAPSHOT_DIR: "/snaps",
            protocol.ENV_SNAPSHOT_MAX_ENTRIES: "many",
            protocol.ENV_EMPTY_CACHE_ON_PRESSURE: "1",
            protocol.ENV_SIGNAL: "0",
        }
    )
    assert config.targets == ("/a.sock", "/b.sock")
    assert config.interval_seconds == 0.5
    assert config.snapshot_dir == "/snaps"
    assert config.snapshot_max_entries == 100_000
    assert config.empty_cache_on_pressure is True
    assert config.install_signal_handler is False


def test_default_targets_are_the_user_and_system_sockets():
    """Without VRAMWATCH_SOCKET the agent tries the per-user runtime socket, then the system one."""
    assert protocol.agent_targets({"XDG_RUNTIME_DIR": "/run/user/1000"}) == (
        "/run/user/1000/vramwatch/agent.sock",
        "/run/vramwatch/agent.sock",
    )
    assert protocol.default_socket_path({}, system=True) == Path("/run/vramwatch/agent.sock")
    assert protocol.default_socket_path({protocol.ENV_SOCKET: "/x.sock:/y.sock"}) == Path("/x.sock")


def test_steps_counted_only_when_asked(listener):
    """Without `count_steps` no optimizer hook is registered: a trainer's own peak statistics stay untouched."""
    link, _ = listener
    probe = FakeProbe()
    probe.initialized = True
    agent = make_agent([str(link.path)], probe)
    agent.tick()
    assert probe.step_hook is None
    assert agent.steps is None
    agent.stop()


def test_steps_reported_with_their_peaks(listener):
    """Each optimizer step of the first optimizer is one record with the peak since the step before."""
    link, reports = listener
    probe = FakeProbe()
    probe.initialized = True
    agent = make_agent([str(link.path)], probe, count_steps=True)
    agent.tick()
    assert probe.step_hook is not None
    trainer_optimizer, other_optimizer = FakeOptimizer(), FakeOptimizer()
    for _ in range(3):
        probe.step_hook(trainer_optimizer)
        probe.step_hook(other_optimizer)  # a second optimizer stepping each iteration: not a step more
    agent.tick()
    link.poll(timeout=1.0)
    hello = next(r for r in reports if r.kind == "hello")
    assert hello.kind == "hello"
    (steps,) = [r for r in reports if r.kind == "steps"]
    assert [(s.first_step, s.last_step) for s in steps.steps] == [(1, 1), (2, 2), (3, 3)]
    assert {(s.pid, s.device, s.peak_allocated_bytes, s.peak_reserved_bytes) for s in steps.steps} == {
        (os.getpid(), 0, 900 * MIB, 1024 * MIB)
    }
    assert probe.resets == 3
    agent.stop()


def test_steps_of_the_last_second_are_sent_at_exit(listener):
    """Steps counted after the last beat reach the host at interpreter exit, once; a stopped agent sends none."""
    link, reports = listener
    probe = FakeProbe()
    probe.initialized = True
    agent = make_agent([str(link.path)], probe, count_steps=True)
    agent.tick()
    assert probe.step_hook is not None
    optimizer = FakeOptimizer()
    for _ in range(4):
        probe.step_hook(optimizer)
    agent.flush_at_exit()
    agent.flush_at_exit()  # nothing new: no second message
    link.poll(timeout=1.0)
    (steps,) = [r for r in reports if r.kind == "steps"]
    assert [s.last_step for s in steps.steps] == [1, 2, 3, 4]
    agent.stop()
    probe.step_hook(optimizer)
    agent.flush_at_exit()
    link.poll(timeout=0.2)
    assert len([r for r in reports if r.kind == "steps"]) == 1


def test_at_exit_the_last_steps_are_sent_and_the_thread_is_joined(listener):
    """At interpreter exit the agent sends its last steps, then its thread is stopped and joined, so that it is
    not inside a torch call while the interpreter is torn down."""
    link, reports = listener
    probe = FakeProbe()
    probe.initialized = True
    agent = make_agent([str(link.path)], probe, count_steps=True)
    agent.start_thread()
    deadline = time.monotonic() + 5
    while probe.step_hook is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert probe.step_hook is not None
    probe.step_hook(FakeOptimizer())
    agent.at_exit()
    assert agent._thread is not None
    assert not agent._thread.is_alive()
    assert not agent.oom.disabled  # exit handlers that run after this one may still use CUDA: still observed
    link.poll(timeout=1.0)
    assert [s.last_step for r in reports if r.kind == "steps" for s in r.steps] == [1]
    agent.stop()  # at a real exit the interpreter closes the sockets; here the test does


def test_a_step_without_peaks_is_still_counted(listener):
    """A torch that cannot say its peaks sends no entry, but the step counts: the numbers stay the trainer's."""
    link, _ = listener
    probe = FakeProbe()
    probe.initialized = True
    probe.peaks = None
    agent = make_agent([str(link.path)], probe, count_steps=True)
    agent.tick()
    assert probe.step_hook is not None
    probe.step_hook(FakeOptimizer())
    assert agent.steps is not None
    assert agent.steps.steps == 1
    agent.stop()


def test_steps_before_cuda_is_up_are_counted(listener):
    """The hook is registered at the first beat, before CUDA: early steps count, and the first entry spans them."""
    link, reports = listener
    probe = FakeProbe()
    agent = make_agent([str(link.path)], probe, count_steps=True)
    agent.tick()
    assert probe.step_hook is not None
    optimizer = FakeOptimizer()
    probe.step_hook(optimizer)
    probe.step_hook(optimizer)
    assert probe.resets == 0  # no peaks asked before CUDA is up: that would initialise it
    probe.initialized = True
    probe.step_hook(optimizer)
    agent.tick()
    agent.tick()
    link.poll(timeout=1.0)
    assert probe.registrations == 1  # once, however many beats
    (steps,) = [r for r in reports if r.kind == "steps"]
    assert [(s.first_step, s.last_step) for s in steps.steps] == [(1, 3)]
    agent.stop()


def test_step_hook_errors_are_reported_and_said_once(listener, capsys):
    """Exceptions the hook swallows ride on every stats message and are written to stderr once."""
    link, reports = listener
    probe = FakeProbe()
    probe.initialized = True
    probe.peaks_error = "no stats"
    agent = make_agent([str(link.path)], probe, count_steps=True)
    agent.tick()
    assert probe.step_hook is not None
    probe.step_hook(FakeOptimizer())
    probe.step_hook(FakeOptimizer())
    agent.tick()
    agent.tick()
    link.poll(timeout=1.0)
    stats = [r for r in reports if r.kind == "stats"]
    assert [r.step_errors for r in stats] == [0, 2, 2]
    assert capsys.readouterr().err.count("optimizer step hook failed (RuntimeError('no stats'))") == 1
    agent.stop()


def test_a_stopped_agents_hook_leaves_the_peaks_alone(listener):
    """After stop() the hook torch still holds neither counts nor resets the peaks a later agent reads."""
    link, _ = listener
    probe = FakeProbe()
    probe.initialized = True
    agent = make_agent([str(link.path)], probe, count_steps=True)
    agent.tick()
    hook = probe.step_hook
    assert hook is not None
    agent.stop()
    hook(FakeOptimizer())
    assert probe.resets == 0
