"""`vramwatch attach`: a live view of one run that ends with a summary saying how the run ended."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from vramwatch.attach import sparkline
from vramwatch.backends.simulated import ground_truth
from vramwatch.cli import main
from vramwatch.typing import ActionHandler


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
    # The summary's findings name their card as the tick lines do.
    assert {f["gpu"] for f in summary["findings"]} == {f["gpu"] for f in findings} == {0}


def test_attach_to_a_pid_that_never_uses_a_gpu_gives_up_with_a_reason() -> None:
    """A pid that never shows up on a GPU is waited for, said so, and given up on after the wait."""
    from vramwatch.attach import attach
    from vramwatch.daemon import Pipeline
    from vramwatch.history import History
    from vramwatch.model import GpuSample, Reading
    from vramwatch.testing import FakeClock, ScriptedBackend

    clock = FakeClock()
    card = GpuSample(0, "GPU-0", "x", 24 * 1024**3, 1024**3, 23 * 1024**3)
    backend = ScriptedBackend([Reading(gpus=(card,), processes=())])  # a card on which pid 4 never appears
    pipeline = Pipeline(backend, History(window_seconds=3600, interval_seconds=1.0), clock, advise=False)
    lines: list[str] = []

    def advance(seconds: float) -> bool:
        clock.sleep(seconds)
        return False

    summary = attach(4, backend, pipeline, _NoActions(), clock, out=lines.append, as_json=True, wait=advance)
    assert json.loads(lines[0]) == {"event": "waiting", "pid": 4}
    assert summary["ended"] == "never used a GPU while watched"


class _NoActions:
    """An action handler that does nothing (this watch has nothing to act on)."""

    def handle(self, *_args: Any, **_kwargs: Any) -> list[Any]:
        return []


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
    """A dispatcher fake: 'asks' the attached run to save on each critical finding, as an agent policy would
    (the real dispatcher's results: a `signal` per process, through the `agent` adapter)."""

    def __init__(self) -> None:
        self.calls: list[tuple[frozenset[int], list[int]]] = []

    def handle(self, raised, cleared, attached=frozenset(), processes=()):  # type: ignore[no-untyped-def]
        from vramwatch.actions import ActionResult
        from vramwatch.model import Severity

        self.calls.append((attached, [p.pid for p in processes]))
        out = []
        for f in raised:
            out.append(ActionResult("notify", True, "queued", f.process, f.kind))
            if f.severity is not Severity.CRITICAL:
                continue
            if f.kind == "probable_oom":
                out.append(ActionResult("signal", False, "kind probable_oom is not in [policy] act_on_kinds",
                                        f.process, f.kind))  # fmt: skip
                continue
            for key in [f.process] if f.process else [p.key for p in processes if p.pid in attached]:
                out.append(ActionResult("signal", True, f"sent SIGUSR2 to pid {key.pid}", key, f.kind,
                                        signal="SIGUSR2", adapter="agent"))  # fmt: skip
        return out


def _attach_simulated(
    scenario: str, pid: int, dispatcher: ActionHandler, *, as_json: bool
) -> tuple[dict[str, Any], list[str]]:
    """Attach to `pid` in a simulated scenario at full speed; the summary and every line printed."""
    from vramwatch.attach import attach
    from vramwatch.backends.simulated import SimulatedBackend
    from vramwatch.daemon import Pipeline
    from vramwatch.history import History
    from vramwatch.testing import FakeClock

    clock = FakeClock()
    backend = SimulatedBackend(scenario, clock=clock)
    pipeline = Pipeline(backend, History(window_seconds=3600, interval_seconds=1.0), clock)
    lines: list[str] = []

    def advance(seconds: float) -> bool:
        clock.sleep(seconds)
        return False

    summary = attach(pid, backend, pipeline, dispatcher, clock, out=lines.append, as_json=as_json, wait=advance)
    return summary, lines


def test_attach_shows_what_it_did_to_the_run_and_sums_it_up() -> None:
    """Attach consents for its pid, prints each save-now action as it happens, and lists it in the summary."""
    pid = _leaker()
    acts = _SavesOnCritical()
    summary, lines = _attach_simulated("fast_leak", pid, acts, as_json=True)
    events = [json.loads(line) for line in lines]
    actions = [e for e in events if e["event"] == "action"]
    assert actions, "the save-now action is shown when it happens"
    assert actions[0]["action"] == "signal"
    assert actions[0]["adapter"] == "agent"
    assert actions[0]["pid"] == pid
    assert all(e["action"] != "notify" for e in actions), "notifications are not news to the person attached"
    assert all(e["kind"] != "probable_oom" for e in actions), "nothing to say about not acting on a dead run"
    assert summary["ended"] == "probable OOM"
    ticks = [e for e in events if e["event"] == "tick"]
    first_critical = min(f["t"] for e in ticks for f in e["findings"] if f["severity"] == "critical")
    assert actions[0]["t"] == first_critical
    assert {a["action"] for a in summary["actions"]} == {"signal"}
    assert summary["actions"][0]["t"] == first_critical
    assert acts.calls
    assert all(att == frozenset({pid}) for att, _ in acts.calls), "attaching is consent for that pid only"
    assert all(set(pids) <= {pid} for _, pids in acts.calls), "only the run's own processes are offered"
    ticks_at = [i for i, e in enumerate(events) if e["event"] == "tick" and e["findings"]]
    assert events.index(actions[0]) > ticks_at[0], "the finding is shown before what was done about it"


def test_attach_in_text_mode_prints_the_action_under_its_finding_and_in_the_summary() -> None:
    """Text mode: the action line follows the finding that caused it; the summary lists what was done."""
    pid = _leaker()
    _, lines = _attach_simulated("fast_leak", pid, _SavesOnCritical(), as_json=False)
    text = "\n".join(lines)
    critical = text.index("[critical]")
    action = text.index(f"  action signal SIGUSR2 (agent) to pid {pid}: done: sent SIGUSR2 to pid {pid}")
    assert critical < action
    assert f"acted: signal SIGUSR2 (agent) to pid {pid}" in lines[-1]
    assert "probably died of out-of-memory" in lines[-1]
    assert "not in [policy] act_on_kinds" not in text, "refusals about a dead run are noise"


def test_attach_never_acts_on_other_processes_even_when_the_policy_names_them() -> None:
    """A real dispatcher whose policy also targets the newcomer's user: attach acts on the attached run only."""
    from vramwatch.actions import ActionDispatcher, parse_policy
    from vramwatch.testing import FakeClock

    truth = ground_truth("contention")["processes"]
    trainer = next(p["pid"] for p in truth if p["role"] == "trainer" and p["user"] == "alice")
    intruder = next(p["pid"] for p in truth if p["role"] == "intruder")
    policy = parse_policy({
        "dry_run": True,
        "act_on_kinds": ["contention", "oom_forecast", "pressure", "growth"],
        "actions": {"warning": ["signal"], "critical": ["signal"]},
        "targets": {"users": ["alice", "bob"], "attached": True},
    })  # fmt: skip
    dispatcher = ActionDispatcher(policy, [], clock=FakeClock(), default_log=False)
    summary, lines = _attach_simulated("contention", trainer, dispatcher, as_json=True)
    events = [json.loads(line) for line in lines]
    shown = [f for e in events if e["event"] == "tick" for f in e["findings"]]
    assert any(f["kind"] == "contention" and f["pid"] == intruder for f in shown), "the newcomer is named"
    acted = [e for e in events if e["event"] == "action" and "pid" in e]
    assert acted, "the run's own findings were acted on (dry-run)"
    assert {a["pid"] for a in acted} == {trainer}
    assert {a["pid"] for a in summary["actions"] if "pid" in a} == {trainer}


@pytest.mark.parametrize("on_tentative", ["wait", "save"])
def test_attach_waits_on_a_newcomer_that_may_be_loading(on_tentative: str) -> None:
    """The recorded newcomer's load is forecast critical but tentative: under "wait" the attached trainer is not
    signalled; under "save" (the default) it is asked to save, since that does not end it."""
    from vramwatch.actions import ActionDispatcher, parse_policy
    from vramwatch.testing import FakeClock

    truth = ground_truth("contention")["processes"]
    trainer = next(p["pid"] for p in truth if p["role"] == "trainer" and p["user"] == "alice")
    intruder = next(p["pid"] for p in truth if p["role"] == "intruder")
    policy = parse_policy({
        "dry_run": True, "on_tentative": on_tentative, "actions": {"critical": ["signal"]},
        "targets": {"attached": True},
    })  # fmt: skip
    dispatcher = ActionDispatcher(policy, [], clock=FakeClock(), default_log=False)
    _, lines = _attach_simulated("contention", trainer, dispatcher, as_json=True)
    events = [json.loads(line) for line in lines]
    forecasts = [f for e in events if e["event"] == "tick" for f in e["findings"] if f["kind"] == "oom_forecast"]
    assert forecasts, "the newcomer's load is forecast"
    assert all(f"(pid {intruder}," in f["tentative"] for f in forecasts)
    decisions = [e for e in events if e["event"] == "action" and e["kind"] == "oom_forecast"]
    assert decisions, "the policy was asked"
    if on_tentative == "wait":
        assert all(not d["done"] and d["reason"].startswith("tentative (") and "pid" not in d for d in decisions)
    else:
        assert {d.get("pid") for d in decisions} == {trainer}
        assert not any("tentative" in d["reason"] for d in decisions)


class _Quiet:
    """A dispatcher fake that does nothing."""

    def handle(self, raised, cleared, attached=frozenset(), processes=()):  # type: ignore[no-untyped-def]
        return []


def _watch_a_real_pid(
    exit_after_ticks: int | None, *, full: bool = False, on_gpu: bool = True
) -> tuple[dict[str, Any], int]:
    """Attach to a real child process that NVML (scripted) shows on the GPU for three ticks, then not (or
    never, with `on_gpu=False`); it is killed, unreaped, after `exit_after_ticks`. The summary and the ticks."""
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
        held = 23 * GIB if full else 2 * GIB  # full: it vanishes from a nearly full card, a probable OOM
        on = Reading(gpus=(gpu(used=held + GIB // 2),), processes=(ProcessUsage(UUID0, child.pid, held),))
        off = Reading(gpus=(gpu(used=GIB // 2),), processes=())
        meta = {child.pid: ProcessMeta(child.pid, 1000.0, name="train.py", user="me")}
        # A run that fills the card in a step and vanishes: the shape of an OOM (see detectors/crash.py).
        start = Reading(gpus=(gpu(used=GIB),), processes=(ProcessUsage(UUID0, child.pid, GIB // 2),))
        backend = ScriptedBackend([start, on, on, off] if on_gpu else [off], meta=meta, kind="nvml")
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

        return attach(child.pid, backend, pipeline, _Quiet(), clock, out=lambda _s: None, wait=advance), ticks
    finally:
        child.kill()
        child.wait()


def test_a_run_that_exits_soon_after_leaving_the_gpu_has_exited() -> None:
    """A pid that leaves the GPU and dies a few ticks later (writing its OOM traceback) has exited, zombie or not."""
    summary, _ = _watch_a_real_pid(exit_after_ticks=6)
    assert summary["ended"] == "exited"


def test_a_run_still_alive_long_after_leaving_the_gpu_is_said_to_be_running() -> None:
    """A pid still alive after the grace period left the GPU but goes on (e.g. it moved its work to the CPU)."""
    summary, _ = _watch_a_real_pid(exit_after_ticks=None)
    assert summary["ended"] == "left the GPU (still running)"


def test_a_probable_oom_is_said_even_when_the_process_outlives_its_memory() -> None:
    """A run gone from a nearly full card is a probable OOM; if it is still alive after the grace, that is said too."""
    summary, _ = _watch_a_real_pid(exit_after_ticks=None, full=True)
    assert summary["probable_oom"] is True
    assert summary["ended"] == "probable OOM (the process is still running)"
    summary, _ = _watch_a_real_pid(exit_after_ticks=6, full=True)
    assert summary["ended"] == "probable OOM"


def test_a_pid_that_dies_before_using_a_gpu_ends_the_watch_even_as_a_zombie() -> None:
    """A pid that exits before it ever touched a GPU (unreaped by its parent) ends the wait at once."""
    summary, ticks = _watch_a_real_pid(exit_after_ticks=3, on_gpu=False)
    assert summary["ended"] == "exited before using a GPU"
    assert ticks < 10, "the watch ends on the first tick after the death, not after the 10-minute wait"


TRACES = Path(__file__).resolve().parents[1] / "benchmarks" / "detection" / "traces"


@pytest.mark.parametrize(
    ("trace", "role", "code", "oom"),
    [("real_young_incumbent", "R", 0, False), ("real_exits_and_ooms", "W", 0, False),
     ("real_shared_afternoon", "L", 3, True), ("real_busy_afternoon", "run1", 0, False),
     ("real_busy_afternoon", "F", 0, False), ("real_busy_afternoon", "run2", 3, True),
     ("real_busy_afternoon", "L", 3, True)],
)  # fmt: skip
def test_attach_on_real_recordings_tells_an_exit_from_an_oom(trace: str, role: str, code: int, oom: bool) -> None:
    """On the real-GPU corpus: a run ending normally (on a nearly full card, inside its own validation spike, or a
    two-stage load that frees and loads again) exits 0 with no OOM claimed; the leak that ran out, and the run
    beside it that it squeezed out of memory, are probable OOMs (exit 3)."""
    truth = json.loads((TRACES / f"{trace}.truth.json").read_text())
    pid = next(p["pid"] for p in truth["processes"] if p["role"] == role)
    replay = str(TRACES / f"{trace}.jsonl.gz")
    res = CliRunner().invoke(main, ["attach", str(pid), "--replay", replay, "--fast-forward", "--json"])
    assert res.exit_code == code, res.output
    summary = json.loads(res.stdout.splitlines()[-1])
    assert summary["probable_oom"] is oom
    assert summary["ended"] == ("probable OOM" if oom else "exited")


@pytest.mark.parametrize("pid", ["0", "-1", "100000000000000000000", "abc"])
def test_attach_refuses_a_pid_that_cannot_exist(pid: str) -> None:
    """A typo'd pid is one clear usage error (exit 2), never a ten-minute wait or a traceback."""
    res = CliRunner().invoke(main, ["attach", "--", pid])
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    assert "PID" in res.output


@pytest.mark.parametrize(
    ("eta", "free", "text"),
    [
        (0.3, 0.4 * 1024**3, "at its limit (0.4 GiB free)"),
        (0.0, None, "at its limit"),
        (75.0, 5 * 1024**3, "full in ~75 s"),
    ],
)
def test_a_forecast_under_a_second_reads_at_its_limit_not_full_in_0s(eta: float, free: float | None, text: str) -> None:
    """Free memory left within the margin reads "at its limit (0.4 GiB free)", never "full in ~0s"."""
    from vramwatch.render import eta_text

    assert eta_text(eta, free) == text


def test_attach_to_a_pid_the_simulation_never_runs_is_a_clear_error() -> None:
    """On the simulated card, a pid that is not in the scenario is refused at once with the pids that are."""
    res = CliRunner().invoke(main, ["attach", "4242", "--simulate", "leak", "--fast-forward"])
    assert res.exit_code == 2
    assert "never runs in the simulated scenario 'leak'" in res.stderr
    assert str(_leaker_of("leak")) in res.stderr


def test_attach_to_a_pid_the_recording_never_shows_is_a_clear_error() -> None:
    """On a replayed trace, a pid that never holds GPU memory in it is refused at once (not waited for until the
    trace ends, a second a tick), naming the trace."""
    replay = TRACES / "real_young_incumbent.jsonl.gz"
    res = CliRunner().invoke(main, ["attach", "4242", "--replay", str(replay)])
    assert res.exit_code == 2
    assert res.stderr == f"vramwatch: error: pid 4242 never uses a GPU in the trace {replay}\n"


def _leaker_of(scenario: str) -> int:
    return next(int(p["pid"]) for p in ground_truth(scenario)["processes"] if p.get("behaviour") == "leak")


def _attach_into_a_terminal(width: int = 140) -> tuple[dict[str, Any], str]:
    """Attach to the fast leak at full speed with the view a terminal gets, drawn into a fake terminal."""
    import io

    from rich.console import Console
    from vramwatch.attach import attach
    from vramwatch.backends.simulated import SimulatedBackend
    from vramwatch.daemon import Pipeline
    from vramwatch.history import History
    from vramwatch.terminal import LiveBlock
    from vramwatch.testing import FakeClock

    screen = io.StringIO()
    block = LiveBlock(Console(file=screen, force_terminal=True, width=width, highlight=False))
    clock = FakeClock()
    backend = SimulatedBackend("fast_leak", clock=clock)
    pipeline = Pipeline(backend, History(window_seconds=3600, interval_seconds=1.0), clock)

    def advance(seconds: float) -> bool:
        clock.sleep(seconds)
        return False

    summary = attach(_leaker(), backend, pipeline, _NoActions(), clock, out=block.print, wait=advance, block=block)
    return summary, screen.getvalue()


def test_on_a_terminal_the_view_is_redrawn_in_place_and_news_is_printed_once() -> None:
    """On a terminal each tick redraws the block (cursor up, erase line); a finding and its advice print once."""
    summary, screen = _attach_into_a_terminal()
    assert summary["probable_oom"] is True
    assert "\x1b[1A" in screen
    assert "\x1b[2K" in screen
    forecast = [line for line in screen.splitlines() if "[critical]" in line and "full in" in line]
    assert len(forecast) == 1, "the critical forecast is news once, not a line per tick"
    assert "-> 1." in screen, "with its advice"
    assert screen.count("active: ") == screen.count("active: oom_forecast"), "kinds redrawn, not repeated lines"
    assert screen.rstrip().endswith("it probably died of out-of-memory: see the findings and advice above")


def _run_attach(*, tty: bool) -> tuple[int, str]:
    """`vramwatch attach` on the fast leak as a real process, its stdout a pseudo-terminal or a pipe."""
    import os
    import pty
    import subprocess
    import sys

    argv = [sys.executable, "-m", "vramwatch", "attach", str(_leaker()), "--simulate", "fast_leak", "--fast-forward"]
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "140"}
    if not tty:
        res = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)
        return res.returncode, res.stdout
    main_fd, child_fd = pty.openpty()
    proc = subprocess.Popen(argv, stdout=child_fd, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env)
    os.close(child_fd)
    chunks = []
    while True:
        try:
            data = os.read(main_fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(main_fd)
    return proc.wait(timeout=60), b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_attach_redraws_on_a_terminal_and_prints_plain_lines_when_piped() -> None:
    """The same command: in place on a pseudo-terminal, plain scrolling lines (no escape codes) into a pipe."""
    code, screen = _run_attach(tty=True)
    assert code == 3
    assert "\x1b[1A" in screen
    assert "\x1b[2K" in screen
    code, piped = _run_attach(tty=False)
    assert code == 3
    assert "\x1b[" not in piped
    assert piped.count("  ▁") + piped.count("peak ") > 50, "one status per tick, as lines"


def _watch_with_steps(figures: list[Any], *, as_json: bool) -> tuple[dict[str, Any], list[str]]:
    """Attach to pid 4 for three ticks (then it leaves), with the agents' step figures a daemon would give."""
    from vramwatch.attach import attach
    from vramwatch.daemon import Pipeline
    from vramwatch.history import History
    from vramwatch.model import GpuSample, ProcessMeta, ProcessUsage, Reading
    from vramwatch.testing import FakeClock, ScriptedBackend

    clock = FakeClock()
    card = GpuSample(0, "GPU-0", "x", 24 * 1024**3, 9 * 1024**3, 15 * 1024**3)
    on = Reading(gpus=(card,), processes=(ProcessUsage("GPU-0", 4, 8 * 1024**3),))
    off = Reading(gpus=(card,), processes=())
    backend = ScriptedBackend([on, on, on, off], meta={4: ProcessMeta(4, 1.0, name="train.py")})
    pipeline = Pipeline(backend, History(window_seconds=3600, interval_seconds=1.0), clock, advise=False)
    lines: list[str] = []

    def advance(seconds: float) -> bool:
        clock.sleep(seconds)
        return False

    summary = attach(4, backend, pipeline, _NoActions(), clock, out=lines.append, as_json=as_json, wait=advance,
                     steps=lambda: figures)  # fmt: skip
    return summary, lines


def _figures() -> list[Any]:
    from vramwatch.stephistory import StepFigures
    from vramwatch.steps import Outcome

    gib = 1024**3
    return [
        StepFigures(4, 0, 1_200, 8 * gib, 12 * gib, 2 * 1024**2, Outcome.PHASE, 2_000, "sample", "will run out at "
                    "sampling after step 2,000: it needs 24 GiB"),
        StepFigures(99, 0, 50, gib, None, 0.0, Outcome.FITS, None, None, "fits"),  # another run's: not shown
    ]  # fmt: skip


def test_attach_shows_the_agents_step_figures_of_its_run() -> None:
    """With an agent reporting steps, the live lines and the summary say the step, its peak, growth, the forecast."""
    summary, lines = _watch_with_steps(_figures(), as_json=False)
    text = "\n".join(lines)
    assert "step 1,200 (pid 4): step peak 8.00 GiB (12.00 GiB reserved), grows 2.0 MiB a step; " in text
    assert "will run out at sampling (step 2,000)" in text
    assert "pid 99" not in text
    assert [f["pid"] for f in summary["steps"]] == [4]
    assert lines[-1].endswith("will run out at sampling after step 2,000: it needs 24 GiB")


def test_attach_json_carries_the_step_figures() -> None:
    """`attach --json` ticks and summary carry the step figures of the run's processes."""
    _, lines = _watch_with_steps(_figures(), as_json=True)
    events = [json.loads(line) for line in lines]
    ticks = [e for e in events if e["event"] == "tick"]
    assert ticks[-1]["steps"][0]["fail_step"] == 2_000
    assert ticks[-1]["steps"][0]["phase"] == "sample"
    assert events[-1]["steps"][0]["step"] == 1_200


def test_attach_without_step_figures_shows_none() -> None:
    """A run without the agent's steps reads as before: no step line, an empty list in JSON."""
    summary, lines = _watch_with_steps([], as_json=False)
    assert "step peak" not in "\n".join(lines)
    assert summary["steps"] == []


def test_daemon_steps_are_read_every_few_seconds_and_survive_no_daemon() -> None:
    """The daemon's figures are fetched at most every 5 s; no daemon (or a foreign document) means no figures."""
    from vramwatch.attach import DaemonSteps
    from vramwatch.testing import FakeClock

    clock = FakeClock()
    docs: list[Any] = [{"steps": [_figures()[0].as_dict()]}, None, {"steps": "nonsense"}]
    calls: list[int] = []

    def fetch() -> Any:
        calls.append(1)
        return docs[len(calls) - 1]

    source = DaemonSteps(fetch, clock)
    assert [f.pid for f in source()] == [4]
    clock.advance(1)
    assert [f.pid for f in source()] == [4]  # cached
    assert len(calls) == 1
    clock.advance(5)
    assert source() == ()
    clock.advance(5)
    assert source() == ()
