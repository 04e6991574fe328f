"""A detector that raises loses only its own conclusions: the others' findings stand, its own are held (neither
raised nor cleared), the daemon logs it once with its traceback, counts it, and keeps serving."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from builders import GIB, UUID0, gpu
from prometheus_client import generate_latest
from structlog.testing import capture_logs
from vramwatch.actions import ActionDispatcher, parse_policy
from vramwatch.agenthost.link import AgentReport, OomEvent
from vramwatch.config import Config
from vramwatch.daemon import FAILURE_LOG_SECONDS, Daemon
from vramwatch.detectors import Detector, FindingTracker, analyze, config_from_table, registered
from vramwatch.detectors import registry as registry_module
from vramwatch.detectors._context import GpuContext, Tick
from vramwatch.detectors.analysis import Analysis, Failure
from vramwatch.detectors.oom import DETECTOR as OOM_DETECTOR
from vramwatch.history import History
from vramwatch.model import Finding, ProcessMeta, ProcessUsage, Reading, Severity, Snapshot
from vramwatch.testing import FakeClock, RecordingNotifier, ScriptedBackend

UUID1 = "GPU-11111111-1111-1111-1111-111111111111"


@dataclasses.dataclass(frozen=True, slots=True)
class NoSettings:
    """The fake detectors read no setting."""


class Switch:
    """Whether the fake detectors raise at this tick (on GPU 1 only, when asked), set by the test."""

    broken = False
    only_gpu1 = False


def always_full(ctx: GpuContext, own: NoSettings) -> Iterator[Finding]:
    """Says every card is full; raises (after it said so) while the switch is on, on GPU 1 only when asked."""
    yield Finding("always", Severity.WARNING, ctx.uuid, f"{ctx.uuid} is full", ctx.now)
    if Switch.broken and (ctx.uuid == UUID1 or not Switch.only_gpu1):
        raise ZeroDivisionError(f"a series it did not expect at {ctx.now}")  # (a message that differs each tick)


def steady(ctx: GpuContext, own: NoSettings) -> Iterator[Finding]:
    """Another detector, never failing: says so of every card."""
    yield Finding("steady", Severity.WARNING, ctx.uuid, f"{ctx.uuid} is steady", ctx.now)


def per_tick_full(tick: Tick, own: NoSettings) -> Iterator[Finding]:
    """A per-tick detector saying every card is full, raising while the switch is on."""
    for ctx in tick.gpus:
        yield Finding("tickwise", Severity.WARNING, ctx.uuid, f"{ctx.uuid} is full", tick.snapshot.t)
    if Switch.broken:
        raise KeyError("gone")


ALWAYS = Detector(kind="always", defaults=NoSettings(), raise_after=1, clear_after=3, per_gpu=always_full)
STEADY = Detector(kind="steady", defaults=NoSettings(), raise_after=1, clear_after=3, per_gpu=steady)
TICKWISE = Detector(kind="tickwise", defaults=NoSettings(), raise_after=1, clear_after=3, per_tick=per_tick_full)


@pytest.fixture(autouse=True)
def fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(Switch, "broken", False)
    monkeypatch.setattr(Switch, "only_gpu1", False)
    with registered(ALWAYS), registered(STEADY), registered(TICKWISE):
        yield


def _snapshot(t: float, cards: int = 1) -> Snapshot:
    gpus = (gpu(used=20 * GIB), gpu(1, used=20 * GIB, uuid=UUID1))[:cards]
    return Snapshot(t=t, wall_time=1.7e9 + t, gpus=gpus, processes=())


def test_a_failing_detector_drops_only_its_own_conclusions() -> None:
    """The failing one's findings (even those it yielded before raising) are gone; the others' stand; a Failure says
    which detector, on which GPU, with what error."""
    history = History()
    history.add(_snapshot(0.0))
    Switch.broken = True
    analysis = analyze(history, config_from_table({}, "f"))
    kinds = {f.kind for f in analysis.findings}
    assert "steady" in kinds
    assert not kinds & {"always", "tickwise"}
    failed = {(f.kind, f.gpu_uuid, f.error) for f in analysis.failed}
    assert failed == {
        ("always", UUID0, "ZeroDivisionError: a series it did not expect at 0.0"),
        ("tickwise", None, "KeyError: 'gone'"),
    }
    assert all("Traceback" in f.detail and "raise" in f.detail for f in analysis.failed)


def test_a_failing_gpu_does_not_silence_the_others() -> None:
    """A detector raising on one card still speaks of the other card."""
    Switch.only_gpu1 = True
    history = History()
    history.add(_snapshot(0.0, cards=2))
    Switch.broken = True
    analysis = analyze(history, config_from_table({}, "f"))
    assert {(f.kind, f.gpu_uuid) for f in analysis.findings if f.kind == "always"} == {("always", UUID0)}
    assert {(f.kind, f.gpu_uuid) for f in analysis.failed if f.kind == "always"} == {("always", UUID1)}


def _events(tracker: FindingTracker, analysis: Analysis) -> list[str]:
    raised, cleared = tracker.update(analysis)
    return [f"+{f.kind}" for f in raised] + [f"-{f.kind}" for f in cleared]


def test_a_failed_tick_neither_clears_nor_raises() -> None:
    """An active finding whose detector fails for its clear ticks stays active; once the detector judges again and no
    longer sees it, it clears after its clear ticks, as it would have."""
    tracker = FindingTracker(config_from_table({}, "f"))
    seen = Finding("always", Severity.WARNING, UUID0, "full", 0.0)
    assert _events(tracker, Analysis(t=0.0, findings=(seen,))) == ["+always"]
    failed = (Failure("always", UUID0, "ZeroDivisionError: x", ""),)
    for t in range(1, 4):
        assert _events(tracker, Analysis(t=float(t), failed=failed)) == []
    assert [f.kind for f in tracker.active()] == ["always"]
    assert [_events(tracker, Analysis(t=float(t))) for t in range(4, 7)] == [[], [], ["-always"]]


def test_a_detector_that_keeps_failing_lets_its_findings_clear() -> None:
    """A hold lasts the kind's clear ticks (3 here): a detector failing for good lets its active finding clear after
    as many more, as gone; a bug does not keep an alert up for ever."""
    tracker = FindingTracker(config_from_table({}, "f"))
    assert _events(tracker, Analysis(t=0.0, findings=(Finding("always", Severity.WARNING, UUID0, "full", 0.0),))) == [
        "+always"
    ]
    failed = (Failure("always", UUID0, "ZeroDivisionError: x", ""),)
    events = [_events(tracker, Analysis(t=float(t), failed=failed)) for t in range(1, 8)]
    assert events == [[], [], [], [], [], ["-always"], []]


def test_a_failure_on_another_gpu_or_of_another_kind_holds_nothing_here() -> None:
    """Holding is per kind and GPU: a failure elsewhere does not keep this finding from clearing; a per-tick
    detector's failure (no GPU) holds its findings on every GPU."""
    tracker = FindingTracker(config_from_table({}, "f"))
    a = Finding("always", Severity.WARNING, UUID0, "full", 0.0)
    b = Finding("tickwise", Severity.WARNING, UUID1, "full", 0.0)
    assert sorted(_events(tracker, Analysis(t=0.0, findings=(a, b)))) == ["+always", "+tickwise"]
    elsewhere = (
        Failure("always", UUID1, "E", ""),
        Failure("steady", UUID0, "E", ""),
        Failure("tickwise", None, "E", ""),
    )
    cleared = [e for t in range(1, 4) for e in _events(tracker, Analysis(t=float(t), failed=elsewhere))]
    assert cleared == ["-always"]
    assert [f.kind for f in tracker.active()] == ["tickwise"]


def test_a_held_subject_is_not_raised_by_its_detectors_failures() -> None:
    """Ticks a detector failed on count neither towards raising a condition nor against it: seen once, then failed
    ticks, then seen again reaches `raise_after` 2 as two consecutive sightings would."""
    config = config_from_table({}, "f")
    twice = dataclasses.replace(ALWAYS, kind="twice", raise_after=2)
    with registered(twice):
        tracker = FindingTracker(config)
        f = Finding("twice", Severity.WARNING, UUID0, "full", 0.0)
        assert _events(tracker, Analysis(t=0.0, findings=(f,))) == []
        for t in (1.0, 2.0, 3.0):
            assert _events(tracker, Analysis(t=t, failed=(Failure("twice", UUID0, "E", ""),))) == []
        assert _events(tracker, Analysis(t=4.0, findings=(f,))) == ["+twice"]


META = {4242: ProcessMeta(4242, 1000.0, name="train.py", user="alice")}


def _daemon(clock: FakeClock) -> tuple[Daemon, RecordingNotifier]:
    reading = Reading(gpus=(gpu(used=20 * GIB),), processes=(ProcessUsage(UUID0, 4242, 19 * GIB),))
    backend = ScriptedBackend([reading], meta=META, kind="simulated")
    d = Daemon(Config(), lambda: backend, clock=clock, detector_config=config_from_table({}, "f"))
    notifier = RecordingNotifier()
    d.dispatcher = ActionDispatcher(parse_policy({}), [notifier], clock=clock, default_log=False)
    return d, notifier


def _oom() -> OomEvent:
    """An agent's report of an OOM in pid 4242 on GPU 0."""
    return OomEvent(
        pid=4242, device=0, requested_bytes=GIB, capacity_bytes=24 * GIB, device_free_bytes=100, allocated_bytes=
        20 * GIB, reserved_bytes=23 * GIB, inactive_split_bytes=0, num_alloc_retries=3, num_ooms=1,
        snapshot_path=None, observed=True, cuda_uuid=UUID0,
    )  # fmt: skip


def test_the_daemon_keeps_serving_logs_once_and_counts() -> None:
    """A detector failing at every tick (its message differing each time): each tick is still published with the
    others' findings, the failure is logged with its traceback once, then once per `FAILURE_LOG_SECONDS` with how
    often it came, and counted."""
    clock = FakeClock()
    d, notifier = _daemon(clock)
    Switch.broken = True
    ticks = int(FAILURE_LOG_SECONDS) + 5
    with capture_logs() as logs:
        for _ in range(ticks):
            d.step()
            clock.advance(1)
    assert not [e for e in logs if e["event"] == "tick_failed"]
    lines = [e for e in logs if e["event"] == "detector_failed" and e["detector"] == "always"]
    assert [e["repeats"] for e in lines] == [None, int(FAILURE_LOG_SECONDS) - 1]
    assert "ZeroDivisionError" in lines[0]["traceback"]
    assert lines[1]["traceback"] is None
    assert d._state.snapshot is not None
    assert d._state.snapshot.t == clock.now - 1
    assert {f.kind for f, _ in notifier.events} >= {"steady"}
    assert "always" not in {f.kind for f, _ in notifier.events}
    body = generate_latest(d.registry).decode()
    assert f'vramwatch_detector_failures_total{{detector="always"}} {float(ticks)}' in body
    assert f'vramwatch_detector_failures_total{{detector="tickwise"}} {float(ticks)}' in body


def test_an_oom_report_waits_for_the_oom_detector(monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent's OOM report that arrives while the `oom` detector raises is judged at its next good tick: the
    certain post-mortem is late by a tick, not lost."""
    calls = {"n": 0}

    def flaky(tick: Tick, own: object) -> Iterator[Finding]:
        calls["n"] += 1
        if calls["n"] == 2:  # the tick the report is first offered
            raise RuntimeError("flaky")
        assert OOM_DETECTOR.per_tick is not None
        yield from OOM_DETECTOR.per_tick(tick, own)  # type: ignore[misc]

    broken = dataclasses.replace(OOM_DETECTOR, per_tick=flaky)
    swapped = [broken if d is OOM_DETECTOR else d for d in registry_module._all]
    monkeypatch.setattr(registry_module, "_all", swapped)
    monkeypatch.setitem(registry_module._by_kind, OOM_DETECTOR.kind, broken)
    clock = FakeClock()
    d, notifier = _daemon(clock)
    d.step()
    d.on_agent_report(AgentReport(kind="oom", pid=4242, uid=0, t=clock.now, oom=_oom()))
    said = []
    for _ in range(3):
        clock.advance(1)
        d.step()
        said.append(len([f for f, _ in notifier.events if f.kind == "oom"]))
    assert said == [0, 1, 1]  # not at the failed tick; at the next; once


def test_a_card_whose_context_cannot_be_gathered_holds_every_kind_on_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """When what the per-GPU detectors read of one card (its rates, trees, profile) cannot be gathered, each of them is
    failed on that card alone; the other card is judged as usual, and the per-tick detectors still run."""
    from vramwatch.detectors import analysis as analysis_module

    real = analysis_module._context

    def context(history: History, snap: Snapshot, card: object, *args: object) -> GpuContext:
        if getattr(card, "uuid", None) == UUID1:
            raise ValueError("an empty view")
        return real(history, snap, card, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(analysis_module, "_context", context)
    history = History()
    history.add(_snapshot(0.0, cards=2))
    analysis = analyze(history, config_from_table({}, "f"))
    assert {f.gpu_uuid for f in analysis.findings} == {UUID0}
    on_gpu1 = {f.kind for f in analysis.failed if f.gpu_uuid == UUID1}
    assert on_gpu1 == {d.kind for d in registry_module.detectors() if d.per_gpu is not None}
    assert "tickwise" in {f.kind for f in analysis.findings}  # the per-tick ones ran, on the card they could read
    assert all(f.error == "ValueError: an empty view" for f in analysis.failed)


def test_a_card_without_a_context_does_not_replay_the_agents_oom_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    """The `oom` detector runs per tick, so a card whose context fails does not fail it: an agent's OOM report is
    raised once, not offered again (and raised again) at every tick the context keeps failing."""
    from vramwatch.detectors import analysis as analysis_module

    def context(*_args: object) -> GpuContext:
        raise ValueError("an empty view")

    monkeypatch.setattr(analysis_module, "_context", context)
    clock = FakeClock()
    d, notifier = _daemon(clock)
    d.step()
    d.on_agent_report(AgentReport(kind="oom", pid=4242, uid=0, t=clock.now, oom=_oom()))
    for _ in range(5):
        clock.advance(1)
        d.step()
    assert len([f for f, _ in notifier.events if f.kind == "oom"]) == 1


def test_failures_on_two_cards_are_logged_once_each() -> None:
    """The throttle is per detector, card and type of error: a detector failing on two cards logs two tracebacks,
    then nothing more within `FAILURE_LOG_SECONDS`."""
    Switch.broken = True
    reading = Reading(
        gpus=(gpu(used=20 * GIB), gpu(1, used=20 * GIB, uuid=UUID1)),
        processes=(ProcessUsage(UUID0, 4242, 19 * GIB),),
    )
    backend = ScriptedBackend([reading], meta=META, kind="simulated")
    clock = FakeClock()
    d = Daemon(Config(), lambda: backend, clock=clock, detector_config=config_from_table({}, "f"))
    with capture_logs() as logs:
        for _ in range(60):
            d.step()
            clock.advance(1)
    lines = [e for e in logs if e["event"] == "detector_failed"]
    assert sorted((e["detector"], e["gpu"] or "") for e in lines) == [
        ("always", UUID0),
        ("always", UUID1),
        ("tickwise", ""),
    ]
    assert all(e["traceback"] is not None for e in lines)
