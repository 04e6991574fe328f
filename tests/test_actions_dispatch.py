"""The per-tick dispatcher: policy applied to real child processes, notifiers, cooldown, re-check, dry-run,
kills that spare protected jobs, and no exception ever escaping."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import psutil
import pytest
import structlog
from conftest import Spawn
from vramwatch.actions.dispatch import ActionDispatcher
from vramwatch.actions.policy import parse_policy
from vramwatch.model import Finding, ProcessKey, ProcessMeta, ProcessSample, Severity
from vramwatch.testing import FakeClock, RecordingNotifier, StaticInspector

CATCHER = """
import signal, sys, time
for s in (signal.SIGUSR1, signal.SIGTERM):
    signal.signal(s, lambda n, f: print("got", n, flush=True))
print("ready", flush=True)
while True:
    time.sleep(0.02)
"""
PLAIN = """
import time
print("ready", flush=True)
while True:
    time.sleep(0.02)
"""


@dataclass
class Child:
    proc: subprocess.Popen[str]
    meta: ProcessMeta

    @property
    def key(self) -> ProcessKey:
        return ProcessKey(self.meta.pid, self.meta.start_time)

    def line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def alive(self, settle: float = 0.15) -> bool:
        time.sleep(settle)
        return self.proc.poll() is None


@pytest.fixture
def spawn(spawn: Spawn) -> Callable[..., Child]:
    """The shared `spawn`, each child with the ProcessMeta the daemon's inspector would give it."""

    def start(code: str, marker: str) -> Child:
        proc = spawn(code, marker)
        p = psutil.Process(proc.pid)
        return Child(proc, ProcessMeta(pid=proc.pid, start_time=p.create_time(), user=p.username(),
                                       name="python3", cmdline=tuple(p.cmdline())))  # fmt: skip

    return start


def finding(child: Child | None = None, **overrides: object) -> Finding:
    base: dict[str, object] = {
        "kind": "oom_forecast",
        "severity": Severity.CRITICAL,
        "gpu_uuid": "GPU-0",
        "message": "GPU 0 fills in 2 minutes",
        "t": 1000.0,
        "process": child.key if child else None,
        "process_name": "python3",
        "eta_seconds": 120.0,
    }
    base.update(overrides)
    return Finding(**base)  # type: ignore[arg-type]


def sample(child: Child, gpu: str = "GPU-0", used: int = 2**30) -> ProcessSample:
    return ProcessSample(gpu_uuid=gpu, used_bytes=used, meta=child.meta)


SIGNAL_POLICY: dict[str, Any] = {
    "actions": {"critical": ["notify", "signal"]},
    "targets": {"cmdline": ["vw-marker"]},
    "signal": {"fallback_signal": "SIGUSR1"},
    "cooldown_seconds": 60,
}


def dispatcher(policy: Mapping[str, Any] | None, *children: Child, **kwargs: Any) -> ActionDispatcher:
    inspector = kwargs.pop("inspector", StaticInspector({c.meta.pid: c.meta for c in children}))
    return ActionDispatcher(
        parse_policy(policy), kwargs.pop("notifiers", ()), inspector=inspector,
        clock=kwargs.pop("clock", FakeClock()), environ_of=lambda pid: {}, **kwargs,
    )  # fmt: skip


def test_default_policy_notifies_and_never_signals(spawn) -> None:
    """No [policy]: raised and cleared findings reach the notifier; the process is not signalled."""
    child = spawn(CATCHER, "vw-marker")
    recorder = RecordingNotifier()
    d = dispatcher(None, child, notifiers=[recorder])
    f = finding(child)
    results = d.handle([f], [])
    d.handle([], [f])
    assert recorder.events == [(f, False), (f, True)]
    assert [r.action for r in results] == ["notify"]
    d.close(1)
    assert child.alive()
    child.proc.send_signal(signal.SIGKILL)
    assert child.proc.stdout is not None
    assert child.proc.stdout.read() == ""


def test_notify_without_destinations_logs_unless_told_not_to() -> None:
    """With no notifier configured, `notify` writes a finding_raised log line (not with default_log=False)."""
    with structlog.testing.capture_logs() as logs:
        dispatcher(None).handle([finding(kind="growth", severity=Severity.WARNING)], [])
        quiet = dispatcher(None, default_log=False).handle([finding(kind="growth", severity=Severity.WARNING)], [])
    assert [(e["event"], e["kind"], e["log_level"]) for e in logs] == [("finding_raised", "growth", "warning")]
    assert quiet[0].reason == "queued for 0 of 0 notifier(s)"


def test_signal_goes_to_the_named_process_then_cools_down(spawn) -> None:
    """The targeted process gets the fallback SIGUSR1 once; within the cooldown it is left alone."""
    child = spawn(CATCHER, "vw-marker")
    clock = FakeClock()
    d = dispatcher(SIGNAL_POLICY, child, clock=clock)
    (_notify, first) = d.handle([finding(child)], [])
    assert first.done
    assert first.signal == "SIGUSR1"
    assert first.adapter == "custom"
    assert "cmdline /vw-marker/" in first.reason
    assert child.line() == "got 10"
    clock.advance(30)
    (_, second) = d.handle([finding(child)], [])
    assert not second.done
    assert "cooldown" in second.reason
    clock.advance(31)
    (_, third) = d.handle([finding(child)], [])
    assert third.done
    assert child.line() == "got 10"


def test_a_process_the_inspector_says_is_gone_is_not_signalled(spawn) -> None:
    """A process reaped while NVML still lists it keeps its identity in the inspector, marked gone: it is not
    signalled, and the refusal says it exited."""
    child = spawn(CATCHER, "vw-marker")
    gone = replace(child.meta, status="gone")
    d = dispatcher(SIGNAL_POLICY, child, inspector=StaticInspector({gone.pid: gone}))
    (_notify, signalled) = d.handle([finding(child)], [])
    assert not signalled.done
    assert "has exited or was reused" in signalled.reason
    assert child.alive()


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        ({"targets": {"cmdline": ["someone-else"]}}, "not named by [policy.targets]"),
        ({"act_on_kinds": ["growth"]}, "not in [policy] act_on_kinds"),
        ({"dry_run": True}, "dry-run: would send SIGUSR1"),
        ({"signal": {}}, "no save-now mechanism known"),
    ],
)
def test_signals_are_withheld_unless_everything_agrees(spawn, change: dict[str, Any], expect: str) -> None:
    """A process outside the targets, a kind not acted on, dry-run or no mechanism: no signal, and why."""
    child = spawn(CATCHER, "vw-marker")
    d = dispatcher({**SIGNAL_POLICY, **change}, child)
    result = d.handle([finding(child)], [])[-1]
    assert not result.done
    assert expect in result.reason
    child.proc.kill()
    assert child.proc.stdout is not None
    assert child.proc.stdout.read() == ""


@pytest.mark.parametrize("answer", [False, "raise"])
def test_recheck_vetoes_the_action(spawn, answer: object) -> None:
    """If the re-check says the finding no longer holds (or cannot say), nothing is sent."""
    child = spawn(CATCHER, "vw-marker")

    def recheck(f: Finding) -> bool:
        if answer == "raise":
            raise OSError("NVML went away")
        return bool(answer)

    d = dispatcher(SIGNAL_POLICY, child, recheck=recheck)
    result = d.handle([finding(child)], [])[-1]
    assert not result.done
    assert "no longer holds" in result.reason or "re-check failed" in result.reason
    child.proc.kill()
    assert child.proc.stdout is not None
    assert child.proc.stdout.read() == ""


def test_stopping_adapters_need_allow_stop(spawn) -> None:
    """An adapter that ends the run (transformers JIT: SIGTERM) is refused until allow_stop is set."""
    child = spawn(CATCHER, "vw-marker")
    policy = {**SIGNAL_POLICY, "signal": {"match": {"vw-marker": "transformers_jit"}}}
    refused = dispatcher(policy, child).handle([finding(child)], [])[-1]
    assert not refused.done
    assert "allow_stop" in refused.reason
    assert refused.adapter == "transformers_jit"
    allowed = {**SIGNAL_POLICY, "signal": {"match": {"vw-marker": "transformers_jit"}, "allow_stop": True}}
    sent = dispatcher(allowed, child).handle([finding(child)], [])[-1]
    assert sent.done
    assert sent.signal == "SIGTERM"
    assert child.line() == "got 15"


def test_a_gpu_level_finding_signals_each_named_process_on_that_gpu(spawn) -> None:
    """A finding without a process asks every targeted process on its GPU, and none on other GPUs."""
    a, b, other = spawn(CATCHER, "vw-marker"), spawn(CATCHER, "vw-marker"), spawn(CATCHER, "vw-marker")
    d = dispatcher(SIGNAL_POLICY, a, b, other)
    results = d.handle([finding(None)], [], processes=[sample(a), sample(b), sample(other, gpu="GPU-1")])
    assert sorted(r.process.pid for r in results if r.done and r.process) == sorted([a.meta.pid, b.meta.pid])
    assert a.line() == "got 10"
    assert b.line() == "got 10"
    other.proc.kill()
    assert other.proc.stdout is not None
    assert other.proc.stdout.read() == ""


def test_a_tentative_finding_asks_to_save_and_ends_no_run(spawn) -> None:
    """By default a tentative forecast is notified and asks to save where the run goes on; its hook and kill wait."""
    child = spawn(CATCHER, "vw-marker")
    recorder = RecordingNotifier()
    more = {"actions": {"critical": ["notify", "signal", "kill", "hook"]}, "kill": {"prefer": ["vw-marker"]},
            "hooks": [{"argv": ["/bin/false"]}]}  # fmt: skip
    d = dispatcher({**SIGNAL_POLICY, **more}, child, notifiers=[recorder])
    doubt = "python3 (pid 7, bob): it appeared 17 s ago and has not held still yet"
    results = d.handle([finding(None, tentative=doubt)], [], processes=[sample(child)])
    by = {r.action: r for r in results}
    assert sorted(by) == ["hook", "kill", "notify", "signal"]
    assert by["signal"].done
    assert child.line() == "got 10"
    for action in ("hook", "kill"):
        assert not by[action].done
        assert by[action].reason.startswith(f"tentative ({doubt}); waits until it is confirmed")
    assert child.alive()
    assert recorder.events[0][0].tentative == doubt
    d.close(1)


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        ({"on_tentative": "wait"}, "tentative (young); waits until it is confirmed ([policy] on_tentative = wait)"),
        ({"signal": {"match": {"vw-marker": "transformers_jit"}, "allow_stop": True}},
         "transformers_jit saves and then ends the run; tentative (young)"),
    ],
)  # fmt: skip
def test_a_tentative_finding_never_stops_a_run(spawn, change: dict[str, Any], expect: str) -> None:
    """Under on_tentative = "wait", or with an adapter that saves and then stops the run: no signal, and why."""
    child = spawn(CATCHER, "vw-marker")
    d = dispatcher({**SIGNAL_POLICY, **change}, child)
    result = d.handle([finding(child, tentative="young")], [])[-1]
    assert not result.done
    assert expect in result.reason
    assert child.alive()
    child.proc.kill()
    assert child.proc.stdout is not None
    assert child.proc.stdout.read() == ""


def test_a_tentative_finding_forces_no_signal_on_a_process_that_does_not_catch_it(spawn) -> None:
    """force = true sends to a process that would die of it: not while the finding is tentative."""
    child = spawn(PLAIN, "vw-marker")
    policy = {**SIGNAL_POLICY, "signal": {"fallback_signal": "SIGUSR1", "force": True}}
    held = dispatcher(policy, child).handle([finding(child, tentative="young")], [])[-1]
    assert not held.done
    assert "not forced: tentative (young)" in held.reason
    assert child.alive()
    sent = dispatcher(policy, child).handle([finding(child)], [])[-1]
    assert sent.done
    child.proc.wait(5)


def test_on_tentative_act_acts_at_once(spawn) -> None:
    """With on_tentative = "act", a tentative finding may use an adapter that saves and then stops the run."""
    child = spawn(CATCHER, "vw-marker")
    policy = {**SIGNAL_POLICY, "on_tentative": "act",
              "signal": {"match": {"vw-marker": "transformers_jit"}, "allow_stop": True}}  # fmt: skip
    result = dispatcher(policy, child).handle([finding(child, tentative="young")], [])[-1]
    assert result.done
    assert child.line() == "got 15"


def test_contention_asks_the_squeezed_run_to_save_not_the_newcomer(spawn) -> None:
    """A contention finding names the newcomer; the save request goes to the run it squeezed (at_risk)."""
    victim, newcomer = spawn(CATCHER, "vw-marker"), spawn(CATCHER, "vw-marker")
    d = dispatcher(SIGNAL_POLICY, victim, newcomer)
    squeeze = finding(newcomer, kind="contention", at_risk=victim.key)
    results = d.handle([squeeze], [], processes=[sample(victim), sample(newcomer)])
    assert [(r.process, r.done) for r in results if r.action == "signal"] == [(victim.key, True)]
    assert victim.line() == "got 10"
    newcomer.proc.kill()
    assert newcomer.proc.stdout is not None
    assert newcomer.proc.stdout.read() == ""


def test_no_resolved_hook_for_a_finding_never_acted_on(tmp_path) -> None:
    """A tentative finding that clears unconfirmed runs no on_resolved hook; a firm one does."""
    marker = tmp_path / "ran"
    policy = {
        "actions": {"critical": ["hook"]},
        "hooks": [{"argv": ["/bin/sh", "-c", f"echo $VRAMWATCH_STATUS >> {marker}"], "on_resolved": True}],
    }
    d = dispatcher(policy)
    d.handle([], [finding(None, tentative="young")])  # under on_tentative = "save", a hook waits
    d.handle([], [finding(None)])
    d.close(5)
    assert marker.read_text().split() == ["resolved"]


def test_kill_spares_the_avoided_job_and_the_one_just_signalled(spawn) -> None:
    """Kill picks the biggest prefer-matching process that avoid does not protect; a process signalled in the
    same tick is in cooldown and not killed mid-save."""
    protected = spawn(PLAIN, "vw-kill protected")
    victim = spawn(PLAIN, "vw-kill notebook")
    trainer = spawn(CATCHER, "vw-kill trainer")
    policy = {
        "actions": {"critical": ["signal", "kill"]},
        "targets": {"cmdline": ["vw-kill"]},
        "signal": {"fallback_signal": "SIGUSR1"},
        "kill": {"prefer": ["vw-kill"], "avoid": ["protected"], "grace_seconds": 1},
    }
    d = dispatcher(policy, protected, victim, trainer)
    procs = [sample(protected, used=9 * 2**30), sample(trainer, used=8 * 2**30), sample(victim, used=2**30)]
    results = d.handle([finding(trainer)], [], processes=procs)
    signalled, killed = results
    assert signalled.done
    assert signalled.process == trainer.key
    assert killed.done
    assert killed.process == victim.key
    assert killed.signal == "SIGTERM"
    assert victim.proc.wait(5) == -signal.SIGTERM
    assert protected.alive()
    assert trainer.alive()
    assert trainer.line() == "got 10"
    d.close(2)


def test_no_signal_or_kill_without_the_host_pid_namespace(spawn) -> None:
    """When the daemon cannot see host pids, pids from NVML name nobody here: nothing is signalled."""
    child = spawn(CATCHER, "vw-marker")
    inspector = StaticInspector({child.meta.pid: child.meta}, visible=False)
    result = dispatcher(SIGNAL_POLICY, child, inspector=inspector).handle([finding(child)], [])[-1]
    assert not result.done
    assert "host pids" in result.reason


class Exploding:
    def notify(self, finding: Finding, *, cleared: bool = False) -> None:
        raise RuntimeError("broken notifier")


@dataclass
class Counting:
    sent: int
    ticks: int = 0
    events: list[Finding] = field(default_factory=list)

    def notify(self, finding: Finding, *, cleared: bool = False) -> None:
        self.events.append(finding)

    def counts(self) -> Mapping[str, int]:
        return {"sent": self.sent, "failed": 1, "dropped": 0}

    def tick(self) -> None:
        self.ticks += 1


def test_a_raising_notifier_neither_escapes_nor_silences_the_others() -> None:
    """A notifier that raises becomes an `error` result; the next notifier and the next finding still run."""
    counting = Counting(sent=0)
    d = dispatcher(None, notifiers=[Exploding(), counting])
    results = d.handle([finding(message="a"), finding(message="b")], [])
    assert [r.action for r in results] == ["error", "notify", "error", "notify"]
    assert "broken notifier" in results[0].reason
    assert results[1].reason == "queued for 1 of 2 notifier(s)"
    assert [f.message for f in counting.events] == ["a", "b"]


def test_a_failing_step_becomes_an_error_result(spawn) -> None:
    """An exception inside a step (here the inspector) is reported as an `error` result, not raised."""
    child = spawn(CATCHER, "vw-marker")

    class Broken(StaticInspector):
        def pid_namespace_matches(self) -> bool:
            raise RuntimeError("no /proc")

    results = dispatcher(SIGNAL_POLICY, child, inspector=Broken()).handle([finding(child)], [finding(child)])
    assert results[-2].action == "error"
    assert "no /proc" in results[-2].reason
    assert results[-1].action == "notify"  # the cleared finding was still handled


def test_notification_counts_sum_over_notifiers_and_ticks_reach_them() -> None:
    """The exporter's counter is the sum over notifiers; each handle() gives periodic notifiers a tick."""
    a, b = Counting(sent=2), Counting(sent=3)
    d = dispatcher(None, notifiers=[a, b])
    d.handle([], [])
    d.handle([], [])
    assert dict(d.notification_counts()) == {"sent": 5, "failed": 2, "dropped": 0}
    assert (a.ticks, b.ticks) == (2, 2)


def test_rearm_widens_what_each_severity_does_and_refuses_another_policy() -> None:
    """rearm gives the dispatcher its start's policy at full reach (the late card) and the card's inspector; a policy
    with other hooks or another kill would leave the runners built at the start behind, and is refused."""
    cut = parse_policy({**SIGNAL_POLICY, "actions": {"critical": ["notify"]}})
    d = ActionDispatcher(cut, (), inspector=StaticInspector({}), clock=FakeClock(), environ_of=lambda pid: {})
    card = StaticInspector({})
    d.rearm(replace(cut, critical=frozenset({"notify", "signal"})), card)
    assert d.policy.critical == {"notify", "signal"}
    assert d._inspector is card
    with pytest.raises(ValueError, match="rearm"):
        d.rearm(replace(cut, hooks=parse_policy({"hooks": [{"argv": ["true"]}]}).hooks), card)
    d.close(1)
