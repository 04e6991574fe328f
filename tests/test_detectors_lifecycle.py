"""FindingTracker: raise once, clear once, cooldown, escalation; and DetectorConfig validation."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from vramwatch.detectors import Analysis, DetectorConfig, FindingTracker, config_from_table, settings, stale
from vramwatch.detectors.base import Quorum
from vramwatch.detectors.registry import raise_after, tentative_quorum
from vramwatch.errors import ConfigError
from vramwatch.model import Finding, ProcessKey, Severity

W, C = Severity.WARNING, Severity.CRITICAL
CONFIG = DetectorConfig(
    # `doubtful`: a kind no detector declares, so its tentative findings are raised as its firm ones are (no quorum).
    enter_ticks={"growth": 3, "oom_forecast": 2, "doubtful": 2},
    exit_ticks={"growth": 4, "oom_forecast": 3, "doubtful": 3},
    cooldown_seconds=100.0,
)


def finding(kind: str = "growth", severity: Severity = W, t: float = 0.0, pid: int = 1) -> Finding:
    return Finding(kind, severity, "GPU-0", f"{kind} {severity.value}", t, process=ProcessKey(pid, 1.0))


def feed(pattern: str, kind: str = "growth", config: DetectorConfig = CONFIG) -> list[str]:
    """One tick per character: '.' absent, 'w' warning, 'c' critical, 'W' and 'C' the same tentative; returns the
    events as 't:+w' (upper case when tentative), 't:-'."""
    tracker = FindingTracker(config)
    events = []
    for t, ch in enumerate(pattern):
        present = []
        if ch != ".":
            f = finding(kind, C if ch in "cC" else W, t)
            present = [dataclasses.replace(f, tentative="young" if ch.isupper() else None)]
        raised, cleared = tracker.update(Analysis(t=float(t), findings=tuple(present)))
        events += [f"{t}:+{f.severity.value[0].upper() if f.tentative else f.severity.value[0]}" for f in raised]
        events += [f"{t}:-" for _ in cleared]
    return events


@pytest.mark.parametrize(
    ("pattern", "events"),
    [
        ("www", ["2:+w"]),  # raised after enter_ticks consecutive ticks
        ("ww.ww.ww", []),  # never three in a row: never raised
        ("wwww...w....", ["2:+w", "11:-"]),  # a one-tick gap does not clear; four absent ticks do
        ("wwww....wwww", ["2:+w", "7:-"]),  # back within the cooldown at the same severity: held back
        ("wwwwccc", ["2:+w", "6:+c"]),  # escalation (critical for enter_ticks) is raised again, at critical
        ("wwwwcwc", ["2:+w"]),  # a flicker of critical is not an escalation
        ("wwwccc.....", ["2:+w", "5:+c", "9:-"]),  # cleared once, whatever the severity
        ("wwwcccwwwwccc", ["2:+w", "5:+c"]),  # calming down is silent; re-escalating within cooldown too
    ],
)
def test_hysteresis_table(pattern: str, events: list[str]) -> None:
    """Each presence pattern gives exactly the raise/clear events of the hysteresis rules."""
    assert feed(pattern) == events


@pytest.mark.parametrize(
    ("pattern", "events"),
    [
        ("CCCcc", ["1:+C", "4:+c"]),  # confirmed: seen firm for enter_ticks, raised again, firm
        ("CCcCcc", ["1:+C", "5:+c"]),  # the firm ticks must be consecutive
        ("CCccCCcc", ["1:+C", "3:+c"]),  # confirmed once: a tentative spell after it is silent
        ("cccCCcc", ["1:+c"]),  # raised firm: nothing to confirm
        ("CC...", ["1:+C", "4:-"]),  # a load that stopped: cleared, never confirmed
        ("CC....cc", ["1:+C", "4:-", "7:+c"]),  # firm within the cooldown of a tentative one that cleared: raised
        ("cc....cc", ["1:+c", "4:-"]),  # firm within the cooldown of a firm one: silent, as ever
        ("WWWwww", ["1:+W", "4:+w"]),  # a tentative warning is confirmed the same way
        ("WWWcc", ["1:+W", "4:+c"]),  # escalation to a firm critical: one raise
        ("cccWWWcc", ["1:+c"]),  # calming down to a tentative warning is silent; firm critical again too
        ("CCCwwCC", ["1:+C"]),  # a firm warning while a tentative critical calms down confirms nothing
        ("CCCwwwww", ["1:+C", "6:+w"]),  # once calmed, a firm warning was never raised: it is, once
    ],
)
def test_tentative_findings_are_raised_again_once_confirmed(pattern: str, events: list[str]) -> None:
    """A tentative finding seen firm at the same severity for enter_ticks is raised again, once per activation."""
    assert feed(pattern, kind="doubtful") == events


@pytest.mark.parametrize(
    ("pattern", "events"),
    [
        ("CCC...", []),  # what one jump makes (the newest part of the window, 3 ticks): never raised
        ("CCCC", ["3:+C"]),  # one tick more than a jump can make
        ("CCC.C", ["4:+C"]),  # a leak's gap does not start it over
        ("CC..CC", ["5:+C"]),  # 4 of the last 6
        ("CC...CC", []),  # 4, but over 7 ticks
        ("C.C.C.C", []),  # never 4 of 6
        ("cc", ["1:+c"]),  # a firm forecast: the detector's enter ticks, as ever
        ("wwCCCC", ["1:+w", "5:+C"]),  # escalating to a tentative critical takes the quorum too
        ("wwCCcc", ["1:+w", "4:+c"]),  # a firm one its consecutive critical ticks, tentative ones included
    ],
)
def test_a_tentative_forecast_needs_its_quorum(pattern: str, events: list[str]) -> None:
    """A tentative oom_forecast is raised once seen (at its severity) on 4 of the last 6 ticks; a firm one as ever."""
    assert feed(pattern, kind="oom_forecast") == events


@hsettings(max_examples=300, deadline=None)
@given(st.text(alphabet=".C", max_size=80))
def test_a_tentative_critical_is_raised_exactly_when_its_quorum_is_met(pattern: str) -> None:
    """Whatever the sequence: the first raise is at the first tick seen on 4 of the last 6, and none without one."""
    quorum = [t for t in range(len(pattern)) if pattern[t] == "C" and pattern[max(0, t - 5) : t + 1].count("C") >= 4]
    raised = [int(e.split(":")[0]) for e in feed(pattern, kind="oom_forecast") if e.endswith("+C")]
    assert raised[:1] == quorum[:1]


@hsettings(max_examples=300, deadline=None)
@given(st.text(alphabet=".wcWC", max_size=80))
def test_confirmation_is_once_and_never_lost(pattern: str) -> None:
    """Whatever the sequence (shorter than the cooldown): each severity is raised firm at most once while the
    subject is active, and a firm finding present long enough to pass the enter and the exit ticks has been raised
    firm, at its severity or above."""
    events = _events(pattern, CONFIG)
    assert len(pattern) < CONFIG.cooldown_seconds
    enter, leave = raise_after(CONFIG, "doubtful"), CONFIG.exit_ticks["doubtful"]
    firm_raised: set[str] = set()
    this_activation: set[str] = set()
    run_of, run_len = "", 0
    for t, ch in enumerate(pattern):
        for e in events[t]:
            if e == "-":
                this_activation = set()
            elif e in "wc":
                assert e not in this_activation, f"{e} raised firm twice while active, the second time at t={t}"
                this_activation.add(e)
                firm_raised.add(e)
        run_of, run_len = (ch, run_len + 1) if ch == run_of else (ch, 1)
        if ch in "wc" and run_len >= enter + leave:
            assert firm_raised & ({"w", "c"} if ch == "w" else {"c"}), f"{ch} firm since t={t - run_len + 1}"


def _events(pattern: str, config: DetectorConfig) -> dict[int, list[str]]:
    """`feed`'s events for a kind with no quorum, by tick: the raised finding's letter, or '-' for a clear."""
    out: dict[int, list[str]] = {t: [] for t in range(len(pattern))}
    for event in feed(pattern, kind="doubtful", config=config):
        t, what = event.split(":")
        out[int(t)].append(what.lstrip("+"))
    return out


def test_cooldown_yields_to_a_higher_severity() -> None:
    """After a warning cleared, the same subject coming back critical is raised at once."""
    assert feed("wwww....ccc") == ["2:+w", "7:-", "10:+c"]


def test_subject_raised_again_after_the_cooldown() -> None:
    """A condition that persists through the cooldown is raised once the cooldown is over."""
    config = dataclasses.replace(CONFIG, cooldown_seconds=5.0)
    assert feed("wwww....wwwwww", config=config) == ["2:+w", "7:-", "12:+w"]


def test_per_kind_ticks_and_defaults() -> None:
    """Kinds have their own enter ticks; unknown kinds fall back to the defaults."""
    assert feed("cc", kind="oom_forecast") == ["1:+c"]
    assert feed("www", kind="made_up") == ["2:+w"]  # default_enter_ticks = 3


def test_subjects_are_independent_and_active_lists_them() -> None:
    """Two processes are two subjects; active() lists what is raised and not cleared."""
    tracker = FindingTracker(CONFIG)
    for t in range(3):
        tracker.update(Analysis(t=float(t), findings=(finding(t=t, pid=1), finding(t=t, pid=2))))
    assert sorted(f.process.pid for f in tracker.active() if f.process) == [1, 2]
    for t in range(3, 8):
        tracker.update(Analysis(t=float(t), findings=(finding(t=t, pid=2),)))
    assert [f.process.pid for f in tracker.active() if f.process] == [2]


def test_active_finding_is_refreshed_silently() -> None:
    """While active, the stored finding takes each tick's numbers without a new event."""
    tracker = FindingTracker(CONFIG)
    for t in range(6):
        f = dataclasses.replace(finding(t=t), numbers={"free_bytes": 100 - t})
        raised, _ = tracker.update(Analysis(t=float(t), findings=(f,)))
        assert raised == ([f] if t == 2 else [])
    (active,) = tracker.active()
    assert active.numbers["free_bytes"] == 95


def test_tracker_memory_stays_bounded() -> None:
    """Subjects that come and go are forgotten once cleared and cooled down."""
    tracker = FindingTracker(dataclasses.replace(CONFIG, cooldown_seconds=1.0))
    for t in range(500):
        tracker.update(Analysis(t=float(t), findings=(finding(t=t, pid=t),)))
    assert len(tracker.states) <= 2


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"subwindows": 1}, "subwindows"),
        ({"horizons_seconds": (60.0, 30.0)}, "strictly increasing"),
        ({"horizons_seconds": ()}, "horizons_seconds"),
        ({"max_subwindow_share": 1.5}, "max_subwindow_share"),
        ({"noise_bytes": -1}, "noise_bytes"),
        ({"forecast_critical_eta_seconds": 900.0}, "forecast_critical_eta_seconds"),
        ({"enter_ticks": {"growth": 0}}, "'growth'"),
        ({"stale_idle_seconds": 0.0}, "stale_idle_seconds"),
    ],
)
def test_invalid_config_is_a_config_error(changes: dict[str, object], message: str) -> None:
    """A nonsensical threshold, shared or one detector's own, is refused with a message naming it."""
    with pytest.raises(ConfigError, match=message):
        config_from_table(changes, "f: [detectors]")


def test_config_from_a_file_is_normalised() -> None:
    """Lists and partial tables (as TOML gives them) become immutable values merged over the defaults."""
    config = config_from_table(
        {"stale_statuses": ["zombie"], "enter_ticks": {"growth": 9}, "horizons_seconds": [30, 60]}, "f: [detectors]"
    )
    assert settings(config, stale.DETECTOR).stale_statuses == frozenset({"zombie"})
    assert raise_after(config, "growth") == 9
    assert raise_after(config, "contention") == 1
    assert config.horizons_seconds == (30.0, 60.0)
    with pytest.raises(TypeError):
        config.enter_ticks["growth"] = 1  # type: ignore[index]


@pytest.mark.parametrize(("enter", "quorum"), [(None, (4, 6)), (1, (4, 6)), (5, (5, 6)), (9, (9, 9))])
def test_enter_ticks_never_let_a_tentative_one_in_sooner(enter: int | None, quorum: tuple[int, int]) -> None:
    """`enter_ticks` above the forecast's quorum raises the quorum with it; below it, the quorum stays."""
    config = DetectorConfig(enter_ticks={} if enter is None else {"oom_forecast": enter})
    assert tentative_quorum(config, "oom_forecast") == quorum
    assert tentative_quorum(config, "growth") is None


@pytest.mark.parametrize(
    ("interval", "ticks"),
    [(1.0, (4, 6)), (0.98, (4, 6)), (0.5, (7, 12)), (2.0, (3, 4)), (5.0, (2, 2)), (0.01, (64, 64))],
)
def test_a_quorum_is_a_time(interval: float, ticks: tuple[int, int]) -> None:
    """A quorum of 3 s is 4 of 6 ticks at 1 Hz, 3 of 4 at 2 s, 2 of 2 at 5 s (more than one jump makes), at most 64."""
    assert Quorum(3.0).ticks(interval) == ticks


@pytest.mark.parametrize("outlast", [0.0, -1.0, 60.0])
def test_a_quorum_out_of_range_is_refused(outlast: float) -> None:
    """A quorum's time must be in (0, 60) s."""
    with pytest.raises(ValueError, match="outlast_seconds"):
        Quorum(outlast)


@pytest.mark.parametrize(("step", "raised_at"), [(1.0, 3.0), (2.0, 4.0), (5.0, 5.0)])
def test_a_tentative_forecast_read_less_often_needs_fewer_ticks(step: float, raised_at: float) -> None:
    """The tracker reads the interval off the ticks: a tentative forecast seen on every tick is raised after 4 ticks
    at 1 Hz, 3 at 2 s and 2 at 5 s (the same 3 s to outlast), not 4 ticks whatever the interval."""
    tracker = FindingTracker(CONFIG)
    raised = []
    for k in range(6):
        f = dataclasses.replace(finding("oom_forecast", C, k * step), tentative="young")
        raised += [r.t for r in tracker.update(Analysis(t=k * step, findings=(f,)))[0]]
    assert raised[:1] == [raised_at]


def test_a_finding_blaming_another_culprit_is_not_held_back_by_the_cooldown() -> None:
    """After a clear, the same subject blaming the same culprit, or none, stays silent within the cooldown; another
    culprit (a card-wide forecast about another grower) is raised."""
    a, b = ProcessKey(10, 1.0), ProcessKey(20, 2.0)

    def events(second: ProcessKey | None) -> list[str]:
        tracker = FindingTracker(CONFIG)
        out = []
        for t, culprit in enumerate([a, a, "gone", "gone", "gone", second, second]):
            if culprit == "gone":
                present: tuple[Finding, ...] = ()
            else:
                present = (dataclasses.replace(finding("oom_forecast", C, t), culprit=culprit),)
            raised, cleared = tracker.update(Analysis(t=float(t), findings=present))
            out += [f"{t}:+{f.culprit.pid if f.culprit else None}" for f in raised] + [f"{t}:-" for _ in cleared]
        return out

    assert events(a) == ["1:+10", "4:-"]
    assert events(None) == ["1:+10", "4:-"]  # blaming nobody (its processes not visible) is not another culprit
    assert events(b) == ["1:+10", "4:-", "6:+20"]


@pytest.mark.parametrize(
    ("pattern", "since", "events"),
    [
        ("11...11", None, ["1:+", "4:-"]),  # nothing tells it from the cleared claim returning: the cooldown holds it
        ("11...11", 0.0, ["1:+", "4:-"]),  # the climb it claims began before the last claim cleared (4)
        ("11...11", 4.0, ["1:+", "4:-"]),  # began as the last one cleared: not after it
        ("11...11", 5.0, ["1:+", "4:-", "6:+"]),  # began after it cleared: another claim
        ("11.1111", 0.0, ["1:+"]),  # still up, back after a gap about the same climb: the claim going on
        ("11.1111", 2.0, ["1:+"]),  # still up, about a climb that began in the gap: it continues that claim
    ],
)
def test_a_card_forecast_about_a_climb_that_began_after_the_clear_is_another_claim(
    pattern: str, since: float | None, events: list[str]
) -> None:
    """Where no culprit is named (the pids hidden), a forecast back within the cooldown about a climb (`Finding.since`)
    that began after the last forecast cleared is raised, one about a climb that began before is not, and one that
    comes while the last is still up continues it."""
    tracker = FindingTracker(CONFIG)
    out = []
    back = pattern.index(".") + pattern.count(".")  # the first tick after the gap
    for t, present in enumerate(pattern):
        at = since if t >= back else 0.0
        found = (dataclasses.replace(finding("oom_forecast", C, t), since=at),) if present == "1" else ()
        raised, cleared = tracker.update(Analysis(t=float(t), findings=found))
        out += [f"{t}:+" for _ in raised] + [f"{t}:-" for _ in cleared]
    assert out == events


@pytest.mark.parametrize(
    ("culprits", "events"),
    [
        ("aaabbb", ["1:+a", "4:+b"]),  # another grower for the enter ticks: raised again, naming it
        ("aababab", ["1:+a"]),  # taking turns tick by tick: never long enough
        ("aabbaabb", ["1:+a", "3:+b"]),  # each culprit once per activation
        ("aa....bb", ["1:+a", "4:-", "7:+b"]),  # after a clear: another culprit is a new claim (above)
    ],
)
def test_an_active_finding_that_blames_another_culprit_is_raised_again(culprits: str, events: list[str]) -> None:
    """An active card-wide finding whose culprit changes for the enter ticks is raised again, once per culprit."""
    keys = {"a": ProcessKey(10, 1.0), "b": ProcessKey(20, 2.0)}
    tracker = FindingTracker(CONFIG)
    out = []
    for t, ch in enumerate(culprits):
        present = () if ch == "." else (dataclasses.replace(finding("oom_forecast", C, t), culprit=keys[ch]),)
        raised, cleared = tracker.update(Analysis(t=float(t), findings=present))
        out += [f"{t}:+{'a' if f.culprit == keys['a'] else 'b'}" for f in raised] + [f"{t}:-" for _ in cleared]
    assert out == events


def test_a_tentative_forecast_about_another_grower_waits_for_its_own_quorum() -> None:
    """While a forecast is active, a tentative one blaming another grower needs that grower for the quorum's seen
    ticks in a row: the subject's own quorum, met by the first grower, does not count for it."""
    a, b = ProcessKey(10, 1.0), ProcessKey(20, 2.0)
    tracker = FindingTracker(CONFIG)
    raised_at = []
    for t, culprit in enumerate([a, a, a, a, b, b, b, b]):
        f = dataclasses.replace(finding("oom_forecast", C, t), culprit=culprit, tentative="young")
        raised, _ = tracker.update(Analysis(t=float(t), findings=(f,)))
        raised_at += [(t, r.culprit) for r in raised]
    assert raised_at == [(3, a), (7, b)]


@hsettings(max_examples=300, deadline=None)
@given(st.text(alphabet=".abc", max_size=80))
def test_each_culprit_is_raised_at_most_once_while_active(pattern: str) -> None:
    """Whatever the turns the culprits take: between two clears, no culprit is raised twice, and one that held for the
    enter ticks while the finding was active has been raised."""
    keys = {ch: ProcessKey(ord(ch), 1.0) for ch in "abc"}
    tracker = FindingTracker(CONFIG)
    since_clear: list[str] = []
    run_of, run_len = "", 0
    for t, ch in enumerate(pattern):
        present = () if ch == "." else (dataclasses.replace(finding("oom_forecast", C, t), culprit=keys[ch]),)
        raised, cleared = tracker.update(Analysis(t=float(t), findings=present))
        if cleared:
            since_clear = []
        for f in raised:
            name = chr(f.culprit.pid) if f.culprit else "?"
            assert name not in since_clear, f"{name} raised twice while active, the second time at t={t}"
            since_clear.append(name)
        run_of, run_len = (ch, run_len + 1) if ch == run_of else (ch, 1)
        if ch != "." and tracker.active() and since_clear and run_len >= raise_after(CONFIG, "oom_forecast"):
            assert ch in since_clear, f"{ch} blamed for {run_len} ticks while active and never raised (t={t})"


def test_a_re_escalation_blaming_another_culprit_is_raised_within_the_cooldown() -> None:
    """Critical about a, calmed to a warning, then critical about b within the cooldown: b is raised; a again is not."""
    a, b = ProcessKey(10, 1.0), ProcessKey(20, 2.0)

    def events(second: ProcessKey) -> list[str]:
        tracker = FindingTracker(CONFIG)
        out = []
        steps = [(C, a), (C, a), (W, a), (W, a), (W, a), (C, second), (C, second)]
        for t, (severity, culprit) in enumerate(steps):
            f = dataclasses.replace(finding("oom_forecast", severity, t), culprit=culprit)
            raised, _ = tracker.update(Analysis(t=float(t), findings=(f,)))
            out += [f"{t}:+{f.severity.value[0]}{chr(96 + f.culprit.pid // 10)}" for f in raised if f.culprit]
        return out

    assert events(a) == ["1:+ca"]
    assert events(b) == ["1:+ca", "6:+cb"]
