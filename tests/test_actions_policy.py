"""The [policy] section: safe defaults, a full config, and errors that name the key."""

from __future__ import annotations

import dataclasses
import signal
from typing import Any

import pytest
import tomllib
from vramwatch.actions.policy import DEFAULT_ACT_ON_KINDS, Policy, describe_policy, parse_policy, parse_signal
from vramwatch.errors import ConfigError
from vramwatch.model import Finding, ProcessMeta, Severity

FULL = """
[policy]
dry_run = true
cooldown_seconds = 120
recheck = false
act_on_kinds = ["oom_forecast"]
on_tentative = "wait"

[policy.actions]
warning = ["log", "notify"]
critical = ["notify", "signal", "hook", "kill"]

[policy.targets]
users = ["alice"]
cmdline = ["train_network\\\\.py"]
attached = true

[policy.signal]
allow_stop = true
adapters = ["agent", "simpletuner"]
fallback_signal = "USR1"
match = { "my_trainer\\\\.py" = "agent" }

[policy.kill]
prefer = ["ipykernel_launcher"]
avoid = ["train_network"]
grace_seconds = 5

[[policy.hooks]]
argv = ["/usr/local/bin/page-me", "--gpu"]
timeout_seconds = 10
on_resolved = true
env = { TEAM = "ml" }
"""


def test_default_policy_only_notifies() -> None:
    """No [policy]: notify for both severities, nothing intrusive, nothing targeted, not dry-run."""
    policy = parse_policy(None)
    assert policy == Policy()
    assert policy.actions_for(Severity.WARNING) == {"notify"}
    assert policy.actions_for(Severity.CRITICAL) == {"notify"}
    assert not policy.targets.configured
    assert policy.act_on_kinds == DEFAULT_ACT_ON_KINDS
    assert policy.on_tentative == "save"
    assert policy.hooks == ()


def test_a_full_policy_parses() -> None:
    """Every key of a complete [policy] table lands in the value object."""
    policy = parse_policy(tomllib.loads(FULL)["policy"])
    assert policy.dry_run
    assert not policy.recheck
    assert policy.cooldown_seconds == 120.0
    assert policy.warning == {"log", "notify"}
    assert policy.critical == {"notify", "signal", "hook", "kill"}
    assert policy.act_on_kinds == {"oom_forecast"}
    assert policy.on_tentative == "wait"
    assert policy.signal.allow_stop
    assert policy.signal.fallback_signal == signal.SIGUSR1
    assert policy.signal.adapters == ("agent", "simpletuner")
    ((pattern, name),) = policy.signal.overrides
    assert pattern.pattern == r"my_trainer\.py"
    assert name == "agent"
    assert policy.kill.grace_seconds == 5.0
    (hook,) = policy.hooks
    assert hook.argv == ("/usr/local/bin/page-me", "--gpu")
    assert hook.on_resolved
    assert hook.timeout_seconds == 10.0
    assert hook.env == (("TEAM", "ml"),)


def test_targets_and_kill_eligibility() -> None:
    """Targets match by user, cmdline regex or attachment; kill victims must match prefer and not avoid."""
    policy = parse_policy(tomllib.loads(FULL)["policy"])
    notebook = ProcessMeta(pid=1, start_time=1.0, user="carol", cmdline=("python", "-m", "ipykernel_launcher"))
    training = ProcessMeta(pid=2, start_time=1.0, user="bob", cmdline=("python", "train_network.py"))
    both = ProcessMeta(pid=3, start_time=1.0, user="dave", cmdline=("ipykernel_launcher", "train_network"))
    assert policy.targets.match(training) == r"cmdline /train_network\.py/"
    assert policy.targets.match(ProcessMeta(pid=9, start_time=1.0, user="alice")) == "user alice"
    assert policy.targets.match(notebook) is None
    assert policy.targets.match(notebook, frozenset({1})) == "attached"
    assert policy.kill.eligible(notebook)
    assert not policy.kill.eligible(training)
    assert not policy.kill.eligible(both)  # avoid wins over prefer
    assert not policy.kill.eligible(ProcessMeta(pid=4, start_time=1.0))  # unreadable cmdline: never a victim


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"dryrun": True}, r"\[policy\]: unknown key 'dryrun'"),
        ({"dry_run": "yes"}, r"\[policy\] dry_run: expected true or false, got 'yes'"),
        ({"on_tentative": "maybe"}, r"\[policy\] on_tentative: expected one of save, wait, act, got 'maybe'"),
        ({"cooldown_seconds": -1}, r"\[policy\] cooldown_seconds: expected a number >= 0"),
        ({"actions": {"critical": ["explode"]}}, r"\[policy.actions\] critical: expected a list of log, notify"),
        ({"actions": {"fatal": ["log"]}}, r"\[policy.actions\]: unknown key 'fatal'"),
        ({"actions": "notify"}, r"\[policy.actions\]: expected a table"),
        ({"targets": {"cmdline": ["(unclosed"]}}, r"\[policy.targets\] cmdline: invalid regular expression"),
        ({"targets": {"users": "alice"}}, r"\[policy.targets\] users: expected a list of non-empty strings"),
        ({"signal": {"fallback_signal": "SIGKILL"}}, r"SIGKILL cannot be caught"),
        ({"signal": {"fallback_signal": "SIGNOPE"}}, r"fallback_signal: expected a signal name"),
        ({"signal": {"adapters": ["kohya"]}}, r"\[policy.signal\] adapters: expected names from agent"),
        ({"signal": {"match": {"x": "nope"}}}, r"\[policy.signal\] match.'x': expected one of agent"),
        ({"actions": {"critical": ["signal"]}}, r"\[policy.targets\] names no process"),
        ({"actions": {"critical": ["kill"]}, "targets": {"users": ["a"]}}, r"\[policy.kill\] prefer names no"),
        ({"actions": {"critical": ["hook"]}}, r"no \[\[policy.hooks\]\] is configured"),
        ({"hooks": [{"argv": []}]}, r"\[\[policy.hooks\]\] #1 argv: expected a non-empty list"),
        ({"hooks": [{"timeout_seconds": 3}]}, r"\[\[policy.hooks\]\] #1: argv is required"),
        ({"hooks": [{"argv": ["x"], "env": {"A": 1}}]}, r"#1 env: expected a table of string values"),
        ({"hooks": {"argv": ["x"]}}, r"\[\[policy.hooks\]\]: expected an array of tables"),
    ],
)
def test_bad_policies_name_the_key(table: dict[str, Any], message: str) -> None:
    """Each mistake is a ConfigError that says which key and what was expected."""
    with pytest.raises(ConfigError, match=message):
        parse_policy(table)


def test_a_tentative_finding_may_only_ask_to_save_by_default() -> None:
    """One decision per action: a kind not acted on refuses all; a tentative finding lets only the signal go
    ("save"), nothing ("wait") or everything ("act"); a firm one everything."""
    table = tomllib.loads(FULL)["policy"]
    del table["on_tentative"]
    policy = parse_policy(table)
    firm = Finding("oom_forecast", Severity.CRITICAL, "GPU-0", "full in ~1 min", 1.0)
    doubt = dataclasses.replace(firm, tentative="python (pid 7): it appeared 9 s ago")
    assert policy.on_tentative == "save"
    assert policy.intrusive(firm) == [("hook", None), ("signal", None), ("kill", None)]
    assert policy.intrusive(dataclasses.replace(firm, kind="growth")) == [
        (a, "kind growth is not in [policy] act_on_kinds") for a in ("hook", "signal", "kill")
    ]
    held = "tentative (python (pid 7): it appeared 9 s ago); waits until it is confirmed ([policy] on_tentative = save)"
    assert policy.intrusive(doubt) == [("hook", held), ("signal", None), ("kill", held)]
    assert policy.held(doubt) == held
    assert policy.held(firm) is None
    wait = dataclasses.replace(policy, on_tentative="wait")
    assert [why is not None for _, why in wait.intrusive(doubt)] == [True, True, True]
    act = dataclasses.replace(policy, on_tentative="act")
    assert act.intrusive(doubt) == [("hook", None), ("signal", None), ("kill", None)]
    assert act.held(doubt) is None
    assert policy.intrusive(dataclasses.replace(firm, severity=Severity.WARNING)) == []


@pytest.mark.parametrize(("value", "expected"), [("SIGUSR2", signal.SIGUSR2), ("usr1", signal.SIGUSR1), (15, 15)])
def test_parse_signal_accepts_names_and_numbers(value: object, expected: int) -> None:
    """Signals are given as SIGNAME, NAME (any case) or a number."""
    assert parse_signal(value, where="x") == expected


def test_describe_policy_says_whom_and_what_an_armed_policy_may_touch() -> None:
    """check's words for a full policy on real pids: the actions per severity, dry run, the kinds and what a
    tentative finding may do, the targets, that a signal may end a run (allow_stop), the kill's choice and grace, and
    the hooks' programs without their arguments (which may hold tokens)."""
    lines = describe_policy(parse_policy(tomllib.loads(FULL)["policy"]))
    assert lines == [
        "on a warning: log, notify; on a critical: notify, signal, hook, kill",
        "dry run: what a signal, a hook or a kill would do is logged, not done",
        "signal, hook, kill: only for findings of kind oom_forecast; a tentative one does nothing intrusive until it"
        " is confirmed",
        r'processes it may signal or kill: user alice, cmdline "train_network\.py", and runs under vramwatch attach',
        "a confirmed finding's signal may end a run: allow_stop = true: adapters that save, then stop the run",
        "a kill: the largest process on the card that the targets name and whose command line matches "
        '"ipykernel_launcher", never "train_network"; SIGTERM, then SIGKILL 5 s later',
        "hooks, per finding whatever the targets: /usr/local/bin/page-me (on resolve too)",
    ]
    assert not any("--gpu" in line for line in lines)


SIGNAL_BOB = {"actions": {"critical": ["signal"]}, "targets": {"users": ["bob"]}}


@pytest.mark.parametrize(
    ("table", "off", "hidden", "last"),
    [
        ({}, None, False, "no process is signalled or killed, and no hook runs"),
        (SIGNAL_BOB, "off on a simulated card", False, "signal, hook and kill: off on a simulated card"),
        (SIGNAL_BOB, None, False, "processes it may signal or kill: user bob"),
        (
            SIGNAL_BOB,
            None,
            True,
            "signal and kill are refused here: the daemon cannot see this host's pids (host_pids = no, or a pid "
            "namespace of its own)",
        ),
        (
            {"actions": {"critical": ["hook"]}, "hooks": [{"argv": ["/bin/page"]}]},
            None,
            False,
            "hooks, per finding whatever the targets: /bin/page",
        ),
        (
            {"actions": {"critical": ["signal"]}, "targets": {"attached": True}},
            None,
            False,
            "processes it may signal or kill: only runs under vramwatch attach: serve signals and kills nothing",
        ),
        (
            {
                **SIGNAL_BOB,
                "actions": {"critical": ["signal", "kill"]},
                "kill": {"prefer": ["jupyter"]},
                "signal": {"force": True},
            },
            None,
            True,
            "signal and kill are refused here: the daemon cannot see this host's pids (host_pids = no, or a pid "
            "namespace of its own)",
        ),
    ],
)
def test_describe_policy_of_a_quiet_an_unreachable_a_signalling_a_blind_and_a_hook_policy(
    table: dict[str, Any], off: str | None, hidden: bool, last: str
) -> None:
    """The default policy touches nothing; one that cannot reach the card's processes says why; a signalling one
    names its targets, or that they cannot be seen (and says nothing more of signals and kills then); a hook-only one
    names its program; one that names attached runs only signals nothing under serve, which has none."""
    assert describe_policy(parse_policy(table), off=off, pids_hidden=hidden)[-1] == last


@pytest.mark.parametrize(
    ("table", "said"),
    [
        (
            SIGNAL_BOB,
            "signal: only for findings of kind contention, growth, oom_forecast, pressure; a tentative one "
            "may only ask a run to save",
        ),
        (
            {**SIGNAL_BOB, "actions": {"critical": ["kill"]}, "kill": {"prefer": ["jupyter"]}},
            "kill: only for findings of kind contention, growth, oom_forecast, pressure; a tentative one does nothing "
            "intrusive until it is confirmed",
        ),
        (
            {**SIGNAL_BOB, "on_tentative": "act"},
            "signal: only for findings of kind contention, growth, oom_forecast, pressure; a tentative one acts as a "
            "confirmed one does",
        ),
    ],
)
def test_what_a_tentative_finding_may_do_follows_the_actions_armed(table: dict[str, Any], said: str) -> None:
    """ "save" lets a tentative finding ask to save only where a signal is armed; with a kill alone it does nothing."""
    assert said in describe_policy(parse_policy(table))


def test_intrusive_actions_with_no_kind_to_act_on_are_refused() -> None:
    """An empty act_on_kinds beside signal, hook or kill would look armed and do nothing: refused, naming it."""
    with pytest.raises(ConfigError, match="act_on_kinds is empty"):
        parse_policy({**SIGNAL_BOB, "act_on_kinds": []})
