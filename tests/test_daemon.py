"""The daemon's tick: backend loss and recovery, agent data, post-mortems and the pre-action re-check."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from builders import GIB, UUID0, gpu
from prometheus_client import generate_latest
from vramwatch.actions import ActionDispatcher, parse_policy
from vramwatch.agenthost.link import AgentReport, OomEvent
from vramwatch.config import Config
from vramwatch.daemon import Daemon
from vramwatch.errors import BackendUnavailable
from vramwatch.model import (
    Finding,
    ProcessKey,
    ProcessMeta,
    ProcessUsage,
    Reading,
    Severity,
    Snapshot,
    TorchStats,
)
from vramwatch.testing import FakeClock, RecordingNotifier, ScriptedBackend

META = {4242: ProcessMeta(4242, 1000.0, name="train.py", user="alice")}


def _reading(used: int = 10 * GIB) -> Reading:
    return Reading(gpus=(gpu(used=used + GIB),), processes=(ProcessUsage(UUID0, 4242, used),))


def _daemon(backends: list[ScriptedBackend | Exception], clock: FakeClock) -> tuple[Daemon, RecordingNotifier]:
    it = iter(backends)

    def factory() -> ScriptedBackend:
        b = next(it)
        if isinstance(b, Exception):
            raise b
        return b

    notifier = RecordingNotifier()
    d = Daemon(Config(), factory, clock=clock)
    d.dispatcher = ActionDispatcher(parse_policy({}), [notifier], clock=clock, default_log=False)
    return d, notifier


def test_missing_driver_is_retried_with_backoff_while_up_is_zero() -> None:
    """No driver: up=0 and retries at growing intervals; once it loads, samples flow and up=1."""
    clock = FakeClock()
    ok = ScriptedBackend([_reading()], meta=META, kind="nvml")
    d, _ = _daemon([BackendUnavailable("no driver", reason="driver_not_loaded")] * 2 + [ok], clock)
    d.step()
    assert d._state.up is False
    clock.advance(0.5)
    d.step()  # inside the 1 s backoff: no new attempt
    clock.advance(1.0)
    d.step()  # second failure: the next wait doubles to 2 s
    clock.advance(1.0)
    d.step()
    assert d._state.up is False
    clock.advance(1.5)
    d.step()
    assert d._state.up is True
    assert d._state.snapshot is not None
    assert d.healthy()


def test_library_lost_mid_run_reopens_the_backend() -> None:
    """A read that fails with BackendUnavailable closes that backend and opens a fresh one after backoff."""
    clock = FakeClock()
    first = ScriptedBackend([_reading(), BackendUnavailable("gone")], meta=META, kind="nvml")
    second = ScriptedBackend([_reading()], meta=META, kind="nvml")
    d, _ = _daemon([first, second], clock)
    d.step()
    clock.advance(1)
    d.step()
    assert first.closed
    assert d._state.up is False
    clock.advance(1.5)
    d.step()
    assert d._state.up is True
    assert second.reads == 1


def test_agent_stats_join_the_sample_and_the_metrics() -> None:
    """Allocator figures from an agent land in the snapshot, the trace list and vramwatch_torch_* series."""
    clock = FakeClock()
    d, _ = _daemon([ScriptedBackend([_reading()], meta=META, kind="nvml")], clock)
    stats = TorchStats(4242, 0, allocated_bytes=6 * GIB, reserved_bytes=9 * GIB, gpu_uuid=UUID0, num_ooms=0)
    d.step()
    assert d.pipeline is not None
    d.pipeline.sampler.torch_source = lambda: (stats,)
    clock.advance(1)
    d.step()
    assert d._state.snapshot is not None
    assert d._state.snapshot.torch == (stats,)
    body = generate_latest(d.registry).decode()
    assert 'vramwatch_torch_allocated_bytes{gpu="0",pid="4242",process="train.py"} 6.442450944e+09' in body
    assert len(d.history.torch[(4242, 0)]) == 1


def test_agent_oom_report_is_one_certain_post_mortem() -> None:
    """An agent's OOM report becomes one critical `oom` finding with the allocator's figures, sent once."""
    clock = FakeClock()
    d, notifier = _daemon([ScriptedBackend([_reading()], meta=META, kind="simulated")], clock)
    d.step()
    oom = OomEvent(
        pid=4242, device=0, requested_bytes=GIB, capacity_bytes=24 * GIB, device_free_bytes=100, allocated_bytes=
        20 * GIB, reserved_bytes=23 * GIB, inactive_split_bytes=2 * GIB, num_alloc_retries=3, num_ooms=1,
        snapshot_path=None, observed=True, cuda_uuid=UUID0,
    )  # fmt: skip
    d.on_agent_report(AgentReport(kind="oom", pid=4242, uid=0, t=clock.now, oom=oom))
    clock.advance(1)
    d.step()
    clock.advance(1)
    d.step()
    ooms = [f for f, cleared in notifier.events if f.kind == "oom"]
    assert len(ooms) == 1
    (f,) = ooms
    assert f.severity is Severity.CRITICAL
    assert f.process == ProcessKey(4242, 1000.0)
    assert f.numbers["reserved_unallocated_bytes"] == 3 * GIB
    assert "fragmented" in f.message  # 3 GiB cached but unusable for a 1 GiB request
    assert f.numbers["fragmented"] is True  # the one rule (detectors/oom.py) that `vramwatch run` tells too


def test_recheck_refuses_when_memory_got_better_or_the_process_left() -> None:
    """Right before acting: free memory that rose by more than 2% of the card, or a vanished pid, means no."""
    clock = FakeClock()
    backend = ScriptedBackend([_reading(20 * GIB)], meta=META, kind="nvml")
    d, _ = _daemon([backend], clock)
    d.step()
    free_then = 24 * GIB - 21 * GIB
    f = Finding("oom_forecast", Severity.CRITICAL, UUID0, "m", 1.0, ProcessKey(4242, 1000.0),
                numbers={"free_bytes": free_then})  # fmt: skip
    assert d.recheck(f) is True
    backend.readings = [_reading(10 * GIB)]  # 10 GiB freed since
    backend.reads = 0
    assert d.recheck(f) is False
    backend.readings = [replace(_reading(20 * GIB), processes=())]
    backend.reads = 0
    assert d.recheck(f) is False


def test_a_replay_that_ends_says_so_once_and_keeps_its_last_tick() -> None:
    """serve --replay at the end of its recording: one `replay_ended` line, no failing ticks, the last state kept."""
    from structlog.testing import capture_logs

    clock = FakeClock()
    backend = ScriptedBackend([_reading(), EOFError("end of trace")], meta=META)
    d, _ = _daemon([backend], clock)
    with capture_logs() as logs:
        for _ in range(4):
            d.step()
            clock.advance(1)
    events = [e["event"] for e in logs]
    assert events.count("replay_ended") == 1
    assert "tick_failed" not in events
    assert backend.reads == 2
    assert d._state.snapshot is not None


def test_a_replayed_gpu_recording_is_labelled_replay_not_live(tmp_path: Path) -> None:
    """serve --replay of a trace whose header says `nvml` exports backend="replay" (the page's banner reads it):
    a recording is never shown as a live card."""
    from vramwatch.backends.replay import ReplayBackend
    from vramwatch.trace import TraceWriter, make_header

    path = tmp_path / "gpu.jsonl"
    with path.open("w", encoding="utf-8") as fp, TraceWriter(fp, make_header({"backend": "nvml"}, 1.0)) as writer:
        writer.write(Snapshot(1.0, 1.0, (gpu(used=2 * GIB),), ()))
    clock = FakeClock()
    d = Daemon(Config(), lambda: ReplayBackend(path), clock=clock)
    d.step()
    assert d._state.backend["backend"] == "replay"
    assert d._state.backend["recorded_backend"] == "nvml"
    assert 'backend="replay"' in generate_latest(d.registry).decode()


def test_a_finding_in_the_log_carries_its_advice_and_its_doubt() -> None:
    """The daemon's log line of a raised finding has the advice (what to change) and why it may be tentative."""
    from structlog.testing import capture_logs

    clock = FakeClock()
    d, _ = _daemon([ScriptedBackend([_reading()], meta=META)], clock)
    d.step()
    assert d.pipeline is not None
    finding = Finding("pressure", Severity.WARNING, UUID0, "m", clock.now, advice=("--gradient_checkpointing",))
    doubt = replace(finding, kind="oom_forecast", tentative="python (pid 7): it appeared 17 s ago")
    d.pipeline.step = lambda: (d._state.snapshot, [finding, doubt], [])  # type: ignore[method-assign]
    with capture_logs() as logs:
        d.step()
    firm, tentative = [e for e in logs if e["event"] == "finding"]
    assert firm["advice"] == ["--gradient_checkpointing"]
    assert firm["tentative"] is None
    assert tentative["tentative"] == "python (pid 7): it appeared 17 s ago"


def _steps(pid: int, first: int, last: int, *, t: float, leak: int = 0) -> AgentReport:
    """A steps report: 8 GiB training steps (12 GiB reserved), `leak` bytes a step staying allocated."""
    from vramwatch.model import StepRecord

    records = tuple(
        StepRecord(pid, 0, k, k, t, 0.5, 8 * GIB + leak * k, 12 * GIB, 4 * GIB + leak * k, 10 * GIB)
        for k in range(first, last + 1)
    )
    return AgentReport(kind="steps", pid=pid, uid=0, t=t, steps=records)


def _agent_stats(pid: int, *, t: float, free: int) -> AgentReport:
    from vramwatch.agenthost.link import AgentDevice

    stats = TorchStats(pid, 0, allocated_bytes=4 * GIB, reserved_bytes=10 * GIB, gpu_uuid=UUID0)
    device = AgentDevice(stats=stats, cuda_uuid=UUID0.removeprefix("GPU-"), total_bytes=24 * GIB, free_bytes=free)
    return AgentReport(kind="stats", pid=pid, uid=0, t=t, devices=(device,))


def test_agent_steps_are_kept_and_exported_with_their_forecast() -> None:
    """The daemon keeps the agents' steps: /metrics and /status.json show the step figures and the forecast."""
    import json

    clock = FakeClock()
    d, _ = _daemon([ScriptedBackend([_reading()], meta=META, kind="nvml")], clock)
    d.step()
    d.on_agent_report(_steps(4242, 1, 300, t=clock.now, leak=8 * 1024**2))
    d.on_agent_report(_agent_stats(4242, t=clock.now, free=10 * GIB))  # 20 GiB usable
    clock.advance(1)
    d.step()
    reg = d.registry
    labels = {"gpu": "0", "pid": "4242", "process": "train.py"}
    assert reg.get_sample_value("vramwatch_process_optimizer_steps_total", labels) == 300
    peak = reg.get_sample_value("vramwatch_process_step_peak_bytes", {**labels, "kind": "allocated"})
    assert peak == 8 * GIB + 8 * 1024**2 * 300
    assert reg.get_sample_value("vramwatch_process_step_peak_bytes", {**labels, "kind": "reserved"}) == 12 * GIB
    growth = reg.get_sample_value("vramwatch_process_step_growth_bytes", labels)
    assert growth is not None
    assert abs(growth - 8 * 1024**2) < 1024**2
    fail = reg.get_sample_value("vramwatch_process_forecast_fail_step", labels)
    assert fail is not None
    assert 300 < fail < 2_000
    (doc,) = json.loads(d.status_json())["steps"]
    assert doc["pid"] == 4242
    assert doc["outcome"] == "growth"
    assert doc["fail_step"] == fail
    assert "will run out at step" in doc["message"]


def test_agent_steps_are_forecast_to_the_trainers_own_end() -> None:
    """A run's step forecast in `serve` stops at its trainer's `--max_train_steps`, read from its command line as
    `run` and `probe` read it: a slow leak that would run out after the run's end is not said to run out."""
    import json

    clock = FakeClock()
    argv = ("python", "flux_train_network.py", "--max_train_steps", "400", "--output_dir", "out")
    meta = {4242: ProcessMeta(4242, 1000.0, name="python", user="alice", cmdline=argv, cwd="/")}
    d, _ = _daemon([ScriptedBackend([_reading()], meta=meta, kind="nvml")], clock)
    d.step()
    d.on_agent_report(_steps(4242, 1, 300, t=clock.now, leak=8 * 1024**2))  # runs out near step 1,500
    d.on_agent_report(_agent_stats(4242, t=clock.now, free=10 * GIB))
    clock.advance(1)
    d.step()
    (doc,) = json.loads(d.status_json())["steps"]
    assert doc["outcome"] == "fits"
    assert doc["fail_step"] is None
    assert "--max_train_steps 400" in doc["message"]
    assert "vramwatch_process_forecast_fail_step{" not in generate_latest(d.registry).decode()


def test_a_run_whose_command_line_cannot_be_read_is_forecast_a_horizon_ahead() -> None:
    """Without the process's command line (another user's, the daemon not root) no schedule is read: the forecast
    looks ahead as before, and the run's slow leak is said to run out."""
    import json

    clock = FakeClock()
    d, _ = _daemon([ScriptedBackend([_reading()], meta=META, kind="nvml")], clock)
    d.step()
    d.on_agent_report(_steps(4242, 1, 300, t=clock.now, leak=8 * 1024**2))
    d.on_agent_report(_agent_stats(4242, t=clock.now, free=10 * GIB))
    clock.advance(1)
    d.step()
    (doc,) = json.loads(d.status_json())["steps"]
    assert doc["outcome"] == "growth"
    assert not d._agent_steps[(4242, 0)].scheduled


def test_a_run_that_fits_has_no_fail_step_series() -> None:
    """Without growth and with room, the forecast fits: the fail-step series is absent, the others are there."""
    clock = FakeClock()
    d, _ = _daemon([ScriptedBackend([_reading()], meta=META, kind="nvml")], clock)
    d.step()
    d.on_agent_report(_agent_stats(4242, t=clock.now, free=10 * GIB))
    d.on_agent_report(_steps(4242, 1, 100, t=clock.now))
    clock.advance(1)
    d.step()
    body = generate_latest(d.registry).decode()
    assert "vramwatch_process_optimizer_steps_total{" in body
    assert "vramwatch_process_forecast_fail_step{" not in body


def test_agent_steps_expire_with_their_agent(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Steps of a process whose agent the listener no longer knows (gone quiet, expired) are dropped."""
    from vramwatch.agenthost.link import AgentListener

    clock = FakeClock()
    d, _ = _daemon([ScriptedBackend([_reading()], meta=META, kind="nvml")], clock)
    d.step()
    d.on_agent_report(_steps(4242, 1, 100, t=clock.now))
    clock.advance(1)
    d.step()
    assert d.state.steps
    d.agents = AgentListener(tmp_path / "agent.sock", on_report=d.on_agent_report)  # knows no peer
    clock.advance(1)
    d.step()
    assert d.state.steps == {}
    assert d._agent_steps == {}


def test_agent_step_histories_are_bounded() -> None:
    """However many steps and processes report, the daemon keeps a bounded history of each, and a bounded few."""
    from vramwatch import daemon as daemon_module

    clock = FakeClock()
    d, _ = _daemon([ScriptedBackend([_reading()], meta=META, kind="nvml")], clock)
    for i in range(20):
        d.on_agent_report(_steps(4242, 500 * i + 1, 500 * i + 500, t=float(i)))
    assert len(d._agent_steps[(4242, 0)].history) <= daemon_module.STEP_RECORDS
    for pid in range(daemon_module.STEP_PROCESSES + 10):
        d.on_agent_report(_steps(10_000 + pid, 1, 3, t=100.0 + pid))
    assert len(d._agent_steps) == daemon_module.STEP_PROCESSES
    assert (10_000 + daemon_module.STEP_PROCESSES + 9, 0) in d._agent_steps  # the newest are kept


def test_the_daemons_modules_load_nothing_that_only_other_commands_or_features_use() -> None:
    """`serve`'s modules start without PyYAML, tomli-w, importlib.metadata, statistics, the trace and replay
    modules, the simulator, attach or the agent itself: each loads when a trainer's config is read or written, a
    run reports steps, a trace is recorded or replayed, no GPU answers, or a trainer runs the agent. A months-long
    daemon's resident memory pays for them otherwise (docs/benchmarks.md)."""
    lazy = (
        "yaml", "tomli_w", "importlib.metadata", "statistics", "vramwatch.trace", "vramwatch.backends.replay",
        "vramwatch.backends.simulated", "vramwatch.attach", "vramwatch.agent.core",
    )  # fmt: skip
    code = (
        "import sys, vramwatch.cli, vramwatch.app, vramwatch.daemon, vramwatch.backends.nvml, vramwatch.web\n"
        "from vramwatch.advice.configfile import parse_mapping\n"
        "assert parse_mapping('max_train_steps = 1', 'toml')[0]\n"  # a kohya TOML config needs no YAML either
        f"print(sorted(m for m in {lazy!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_advise_command_a_simulated_finding_suggests_runs_as_written() -> None:
    """On a simulated card, the `vramwatch advise PID --kind growth` a finding suggests names the scenario, so that
    the command runs as written (the scenario's pids are not the host's)."""
    import re
    import shlex

    from click.testing import CliRunner
    from vramwatch.backends.simulated import SimulatedBackend
    from vramwatch.cli import main
    from vramwatch.daemon import Pipeline
    from vramwatch.history import History

    clock = FakeClock()
    pipeline = Pipeline(SimulatedBackend("leak", seed=0, clock=clock), History(), clock)
    suggested = None
    for _ in range(200):
        clock.advance(1.0)
        _, raised, _ = pipeline.step()
        lines = [line for f in raised for line in f.advice if "vramwatch advise" in line]
        if lines:
            suggested = re.search(r"`vramwatch (advise [^`]*)`", lines[0])
            break
    assert suggested is not None, "the leak's forecast suggests `vramwatch advise`"
    assert "--simulate leak" in suggested.group(1)
    res = CliRunner().invoke(main, shlex.split(suggested.group(1)))
    assert res.exit_code == 0, res.output
    assert "leak" in res.output.lower()


def test_status_json_names_each_findings_gpu_by_index() -> None:
    """/status.json (`status --json` from a daemon) gives a finding's GPU index, as /api/state and replay --json do."""
    import json

    from vramwatch.backends.simulated import SimulatedBackend

    clock = FakeClock()
    d = Daemon(Config(), lambda: SimulatedBackend("leak", seed=0, clock=clock), clock=clock)
    for _ in range(120):
        clock.advance(1.0)
        d.step()
    findings = json.loads(d.status_json())["findings"]
    assert findings, "the leak's forecast is active two minutes in"
    assert {f["gpu"] for f in findings} == {0}


def test_notifications_name_the_card_by_index() -> None:
    """Every finding the pipeline raises or clears about a card carries its NVML index, so that a webhook's `gpu`,
    an Alertmanager alert's `gpu` label and a chat text's "GPU 0" are filled (they were null / the uuid)."""
    from vramwatch.actions.payload import chat_text, finding_fields
    from vramwatch.backends.simulated import SimulatedBackend
    from vramwatch.daemon import Pipeline
    from vramwatch.history import History

    clock = FakeClock()
    pipeline = Pipeline(SimulatedBackend("leak", seed=0, clock=clock), History(), clock)
    seen: list[Finding] = []
    for _ in range(700):
        clock.advance(1.0)
        _, raised, cleared = pipeline.step()
        seen += raised + cleared
    on_a_card = [f for f in seen if f.gpu_uuid is not None]
    assert len(on_a_card) >= 3, "the leak story raises and clears findings about its card"
    assert {f.numbers["gpu_index"] for f in on_a_card} == {0}
    f = on_a_card[0]
    assert finding_fields(f, wall_time=None)["gpu"] == 0
    assert " GPU 0" in chat_text(f, cleared=False, host="box", process=None)
