"""With its agent's figures, a run whose climb is PyTorch's cache (its tensors holding what they held) is forecast
tentatively, saying so: a policy asks it to save and ends nothing. A leak beneath the cache, a peak that grows,
another library's memory, or a gap in the agent's reports are judged as without the agent."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vramwatch.detectors.forecast import CACHE_CAVEAT
from vramwatch.detectors.testing import GIB, MIB, Rig, replay, ticks

PID = 100
CONTEXT = 500 * MIB
SETTLED = 8 * GIB  # what NVML sees of the run on its plateau
CLIMB_AT = 400.0  # (vramwatch has watched the run for the give-back test's look-back: 6 min)
END = 455.0  # the cache climbs 200 MiB/s from 400 s: full near 480 s


def nvml(t: float, rate: float = 200 * MIB) -> int:
    """The run on NVML: flat, then a steady climb (its cache, or a leak: NVML cannot tell)."""
    return SETTLED + int(max(0.0, t - CLIMB_AT) * rate)


def tensors(t: float, peak_rise: float = 0.0, floor_rise: float = 0.0) -> int:
    """Allocated at a 1 Hz sample: a step's floor (weights, optimizer) or its peak (activations), alternately, so the
    samples of every few seconds see both; `peak_rise`/`floor_rise` bytes a second from the climb on."""
    climb = max(0.0, t - CLIMB_AT)
    base = 5 * GIB + int(climb * floor_rise)
    return base + (int(1.5 * GIB + climb * peak_rise) if int(t) % 2 else 0)


def agent(
    alloc: Callable[[float], int] = tensors, reserved: Callable[[float], int] | None = None, until: float = END
) -> Callable[[float], Mapping[int, tuple[int, int]]]:
    def reports(t: float) -> Mapping[int, tuple[int, int]]:
        if t > until:
            return {}
        r = reserved(t) if reserved is not None else nvml(t) - CONTEXT
        return {PID: (alloc(t), r)}

    return reports


def run(rig: Rig) -> list[tuple[str, str, bool]]:
    """(kind, severity, firm) of every finding raised about the climb."""
    rows = [(t, {PID: nvml(t)}) for t in ticks(0.0, END)]
    out = replay(rows, rig)
    return [(f.kind, f.severity.value, f.tentative is None) for f in out.raised]


def test_without_the_agent_the_climb_is_forecast_firm() -> None:
    """The baseline: NVML alone cannot tell a settled run's climb of cache from a leak, and forecasts it, firm (a
    policy may end the run)."""
    assert ("oom_forecast", "critical", True) in run(Rig())


def test_a_climb_of_cache_is_forecast_tentatively_and_says_why() -> None:
    """Reserved climbs with NVML while the tensors hold what they held: the critical forecast is raised, tentative,
    with the agent's word in its message; nothing firm that a policy would end the run for."""
    rows = [(t, {PID: nvml(t)}) for t in ticks(0.0, END)]
    raised = replay(rows, Rig(agents=agent())).raised
    forecasts = [f for f in raised if f.kind == "oom_forecast"]
    assert [f.severity.value for f in forecasts] == ["critical"]
    assert forecasts[0].tentative is not None
    assert CACHE_CAVEAT in forecasts[0].message
    assert not [f for f in raised if f.tentative is None and f.severity.value == "critical"]


@pytest.mark.parametrize(
    ("case", "rig"),
    [
        # Tensors kept alive: the floor and the peak rise 100 MiB/s beneath the cache.
        ("a leak beneath the cache", Rig(agents=agent(lambda t: tensors(t, 100 * MIB, 100 * MIB)))),
        # A longer sequence each step: the floor holds, the peak grows 30 MiB/s.
        ("a peak that grows", Rig(agents=agent(lambda t: tensors(t, peak_rise=30 * MIB)))),
        # NVML climbs, reserved does not: another library's memory (a second allocator, NCCL), never given back.
        ("not the allocator's", Rig(agents=agent(reserved=lambda t: SETTLED - CONTEXT))),
        # The agent stopped reporting 10 s before the climb began: its word is stale.
        ("stale reports", Rig(agents=agent(until=CLIMB_AT - 10))),
        # The agent began to report mid-climb: the window's start is not covered.
        ("reports that start late", Rig(agents=lambda t: agent()(t) if t >= CLIMB_AT + 30 else {})),
    ],
)
def test_what_the_agent_does_not_vouch_for_is_forecast_as_without_it(case: str, rig: Rig) -> None:
    """Each case's findings, firm or tentative, are those NVML alone gives: the agent only tempers a forecast it can
    vouch for."""
    assert run(rig) == run(Rig()), case


@settings(max_examples=30, deadline=None)
@given(
    peak_rise=st.floats(min_value=0.0, max_value=200.0),
    floor_rise=st.floats(min_value=0.0, max_value=200.0),
    rate=st.floats(min_value=60.0, max_value=400.0),
)
def test_a_rising_peak_is_never_explained_away(peak_rise: float, floor_rise: float, rate: float) -> None:
    """Whatever the climb's rate, when the tensors' peak rises by more than `min_rise_bytes` over the shortest window
    (128 MiB in 10 s), the agent vouches for nothing: the findings, firm or tentative, are those without it."""
    peak = peak_rise * MIB
    floor_ = floor_rise * MIB
    if max(peak + floor_, floor_) * 10 <= 128 * MIB * 1.5:
        return  # (a peak that barely rises may be cache: not this property's case)

    def rig(agents: Callable[[float], Mapping[int, tuple[int, int]]] | None) -> Rig:
        return Rig(agents=agents)

    rows = [(t, {PID: nvml(t, rate * MIB)}) for t in ticks(0.0, END)]
    reports = agent(lambda t: tensors(t, peak, floor_), reserved=lambda t: nvml(t, rate * MIB) - CONTEXT)
    with_agent = replay(rows, rig(reports)).raised
    without = replay(rows, rig(None)).raised
    assert [(f.kind, f.severity, f.tentative) for f in with_agent] == [
        (f.kind, f.severity, f.tentative) for f in without
    ]


def _judged(reports: Callable[[float], Mapping[int, tuple[int, int]]], at: float, since: float) -> bool:
    """`cache.caching` of the run at tick `at`, for the window from `since`."""
    from vramwatch.detectors.analysis import _context
    from vramwatch.detectors.cache import caching
    from vramwatch.detectors.config import DetectorConfig

    rig = Rig(agents=reports)
    history = replay([(t, {PID: nvml(t)}) for t in ticks(0.0, at)], rig).history
    snap = history.latest
    assert snap is not None
    ctx = _context(history, snap, snap.gpus[0], DetectorConfig(), ())
    return caching(ctx, ctx.trees[next(iter(ctx.trees))], since)


AT = CLIMB_AT + 40


@pytest.mark.parametrize(
    ("case", "reports", "at", "since", "expected"),
    [
        ("reported all along", agent(), AT, AT - 20, True),
        # (Reports that stopped while the run climbed: what they last said of reserved memory falls short of NVML.)
        ("reports stopped 6 s ago", agent(until=AT - 6), AT, AT - 40, False),
        # A 50 MiB/s leak beneath the cache, under a validation's 12 GiB peak of long ago: the floor rises.
        (
            "a leak beneath an old, higher peak",
            agent(lambda t: 12 * GIB if t == 100.0 else tensors(t, 50 * MIB, 50 * MIB)),
            AT,
            AT - 20,
            False,
        ),
        # NVML climbs 45 MiB/s more than reserved: memory outside PyTorch's allocator, never given back.
        ("memory outside the allocator", agent(reserved=lambda t: nvml(t, 155 * MIB) - CONTEXT), AT, AT - 30, False),
        ("reports began in its second tenth", lambda t: agent()(t) if t >= AT - 17 else {}, AT, AT - 20, False),
        ("reports began in its first tenth", lambda t: agent()(t) if t >= AT - 19 else {}, AT, AT - 20, True),
        ("too few reports in a third", lambda t: agent()(t) if int(t) % 3 == 0 else {}, AT, AT - 11, False),
        ("enough in each third", agent(), AT, AT - 11, True),
        # A sequence-length warm-up's buffer, 2 MiB larger each step: steady, but 30 MiB in the window.
        ("a peak creeping 2 MiB/s", agent(lambda t: tensors(t, 2 * MIB, 2 * MIB)), AT, AT - 15, True),
        # The daemon takes each agent's newest report at its tick: what it says can be a second or two old.
        ("reports two seconds behind", agent(reserved=lambda t: nvml(t - 2) - CONTEXT), AT, AT - 15, True),
        (
            "reserved rose by three quarters of NVML's rise",
            agent(reserved=lambda t: nvml(t, 150 * MIB) - CONTEXT),
            AT,
            AT - 20,
            False,
        ),
        ("the run did not climb in the window", agent(), CLIMB_AT - 5, CLIMB_AT - 30, False),
    ],
)
def test_what_the_agent_must_have_said(
    case: str, reports: Callable[[float], Mapping[int, tuple[int, int]]], at: float, since: float, expected: bool
) -> None:
    """The agent vouches for a window only with reports from its first tenth to now, three or more in each third; a
    run that did not climb in the window has no climb to explain."""
    assert _judged(reports, at, since) is expected, case


def test_a_peak_growing_beneath_an_old_higher_one_is_not_vouched_for() -> None:
    """A long-gone validation held 12 GiB; since, the floor holds but the step's peak grows 40 MiB/s, still below it:
    the most of each third rises steadily within the window, so the agent does not vouch for the climb."""

    def reports(t: float) -> Mapping[int, tuple[int, int]]:
        if t == 100.0:
            return {PID: (12 * GIB, nvml(t) - CONTEXT)}
        return agent(lambda u: tensors(u, peak_rise=40 * MIB))(t)

    assert _judged(reports, AT, AT - 20) is False
    assert _judged(agent(), AT, AT - 20) is True  # (the same without the growing peak)
