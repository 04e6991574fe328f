"""`vramwatch attach`: a live view of one run that ends with a summary saying how the run ended."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from vramwatch.attach import sparkline
from vramwatch.backends.simulated import ground_truth
from vramwatch.cli import main


def _leaker() -> int:
    (pid,) = {p["pid"] for p in ground_truth("fast_leak")["processes"] if p.get("behaviour") == "leak"}
    return int(pid)


def test_attach_follows_a_leak_to_its_oom_and_exits_3() -> None:
    """Attached to a leaking run: ticks with trend and ETA, a critical forecast with advice, then an OOM summary."""
    pid = _leaker()
    res = CliRunner().invoke(main, ["attach", str(pid), "--simulate", "fast_leak", "--fast-forward", "--json"])
    assert res.exit_code == 3, res.output
    events = [json.loads(line) for line in res.stdout.splitlines()]
    ticks = [e for e in events if e["event"] == "tick"]
    assert ticks
    assert any(e["oom_eta_seconds"] is not None for e in ticks)
    findings = [f for e in ticks for f in e["findings"]]
    critical = [f for f in findings if f["kind"] == "oom_forecast" and f["severity"] == "critical"]
    assert critical
    assert critical[0]["advice"], "a forecast carries the advisor's suggestions"
    summary = events[-1]
    assert summary["event"] == "summary"
    assert summary["probable_oom"] is True
    assert summary["ended"] == "probable OOM"
    assert summary["peak_bytes"] > 20 * 1024**3


def test_attach_to_a_pid_that_never_uses_a_gpu_gives_up_with_a_reason() -> None:
    """A pid that never shows up on a GPU is waited for, said so, and given up on after the wait."""
    res = CliRunner().invoke(main, ["attach", "4", "--simulate", "steady", "--fast-forward", "--json"])
    assert res.exit_code == 0
    events = [json.loads(line) for line in res.stdout.splitlines()]
    assert events[0] == {"event": "waiting", "pid": 4}
    assert events[-1]["ended"] == "never used a GPU while watched"


def test_attach_to_a_missing_pid_on_a_real_host_is_a_clear_error() -> None:
    """On NVML, a pid that does not exist is refused at once (checked before sampling)."""
    from vramwatch.attach import check_pid
    from vramwatch.errors import VramwatchError
    from vramwatch.testing import ScriptedBackend

    with pytest.raises(VramwatchError, match="no process with pid 999999999"):
        check_pid(999_999_999, ScriptedBackend([], kind="nvml"))


def test_sparkline_scales_between_min_and_max() -> None:
    """The sparkline spans the block characters from the lowest to the highest value."""
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([5, 5, 5]) == "▁▁▁"
    assert sparkline([]) == ""


class _SavesOnCritical:
    """A dispatcher fake: 'asks' the attached pid to save on each critical finding, as a policy would."""

    def __init__(self) -> None:
        self.calls: list[frozenset[int]] = []

    def handle(self, raised, cleared, attached=frozenset(), processes=()):  # type: ignore[no-untyped-def]
        from vramwatch.actions import ActionResult
        from vramwatch.model import Severity

        self.calls.append(attached)
        return [
            ActionResult("save_now", True, "SIGUSR2 sent", f.process, f.kind, signal="SIGUSR2", adapter="agent")
            if f.kind != "probable_oom"
            else ActionResult("signal", False, "kind probable_oom is not in [policy] act_on_kinds", f.process, f.kind)
            for f in raised
            if f.severity is Severity.CRITICAL
        ] + [ActionResult("notify", True, "queued", f.process, f.kind) for f in raised]


def test_attach_shows_what_it_did_to_the_run_and_sums_it_up() -> None:
    """Attach consents for its pid, prints each save-now action as it happens, and lists it in the summary."""
    from vramwatch.attach import attach
    from vramwatch.backends.simulated import SimulatedBackend
    from vramwatch.daemon import Pipeline
    from vramwatch.history import History
    from vramwatch.testing import FakeClock

    pid = _leaker()
    clock = FakeClock()
    backend = SimulatedBackend("fast_leak", clock=clock)
    pipeline = Pipeline(backend, History(window_seconds=3600, interval_seconds=1.0), clock)
    acts = _SavesOnCritical()
    lines: list[str] = []

    def advance(seconds: float) -> bool:
        clock.sleep(seconds)
        return False

    summary = attach(pid, backend, pipeline, acts, clock, out=lines.append, as_json=True, wait=advance)
    events = [json.loads(line) for line in lines]
    actions = [e for e in events if e["event"] == "action"]
    assert actions, "the save-now action is shown when it happens"
    assert actions[0]["action"] == "save_now"
    assert actions[0]["adapter"] == "agent"
    assert all(e["action"] != "notify" for e in actions), "notifications are not news to the person attached"
    assert all(e["kind"] != "probable_oom" for e in actions), "nothing to say about not acting on a dead run"
    assert summary["ended"] == "probable OOM"
    ticks = [e for e in events if e["event"] == "tick"]
    first_critical = min(f["t"] for e in ticks for f in e["findings"] if f["severity"] == "critical")
    assert actions[0]["t"] == first_critical
    assert {a["action"] for a in summary["actions"]} == {"save_now"}
    assert acts.calls
    assert all(c == frozenset({pid}) for c in acts.calls), "attaching is consent for that pid only"


class _Quiet:
    """A dispatcher fake that does nothing."""

    def handle(self, raised, cleared, attached=frozenset(), processes=()):  # type: ignore[no-untyped-def]
        return []


def _watch_a_real_pid_that_leaves_the_gpu(exit_after_ticks: int | None) -> dict[str, object]:
    import os
    import subprocess
    import sys

    from builders import GIB, UUID0, gpu
    from vramwatch.attach import attach
    from vramwatch.daemon import Pipeline
    from vramwatch.history import History
    from vramwatch.model import ProcessMeta, ProcessUsage, Reading
    from vramwatch.testing import FakeClock, ScriptedBackend

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        on = Reading(gpus=(gpu(used=3 * GIB),), processes=(ProcessUsage(UUID0, child.pid, 2 * GIB),))
        off = Reading(gpus=(gpu(used=GIB),), processes=())
        meta = {child.pid: ProcessMeta(child.pid, 1000.0, name="train.py", user="me")}
        backend = ScriptedBackend([on, on, on, off], meta=meta, kind="nvml")
        clock = FakeClock()
        pipeline = Pipeline(backend, History(window_seconds=600, interval_seconds=1.0), clock, advise=False)
        ticks = 0

        def advance(seconds: float) -> bool:
            nonlocal ticks
            ticks += 1
            if exit_after_ticks is not None and ticks == exit_after_ticks:
                child.kill()
                # Wait for it to die without reaping it: a zombie until `finally`, as under a parent that
                # waits later.
                os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
            clock.sleep(seconds)
            return False

        return attach(child.pid, backend, pipeline, _Quiet(), clock, out=lambda _s: None, wait=advance)
    finally:
        child.kill()
        child.wait()


def test_a_run_that_exits_soon_after_leaving_the_gpu_has_exited() -> None:
    """A pid that leaves the GPU and dies a few ticks later (writing its OOM traceback) has exited, zombie or not."""
    summary = _watch_a_real_pid_that_leaves_the_gpu(exit_after_ticks=6)
    assert summary["ended"] == "exited"


def test_a_run_still_alive_long_after_leaving_the_gpu_is_said_to_be_running() -> None:
    """A pid still alive after the grace period left the GPU but goes on (e.g. it moved its work to the CPU)."""
    summary = _watch_a_real_pid_that_leaves_the_gpu(exit_after_ticks=None)
    assert summary["ended"] == "left the GPU (still running)"
