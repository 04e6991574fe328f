"""What vramwatch may do about a finding: the `[policy]` section, validated, as a frozen value.

The default does nothing intrusive: every finding is *notified* (a log line, or the configured webhook,
Alertmanager, Apprise), and no process is signalled, killed or handed to a hook until the config says so.
Acting on a process needs three things configured: an action for the finding's severity (`[policy.actions]`),
the finding's kind in `act_on_kinds`, and the process named by `[policy.targets]` (its user, a regex over its
command line, or its being attached to the agent). A tentative finding (a forecast on a run that may still be
loading) never ends a run or runs a hook before it is confirmed: by default it may only ask to save where the run
goes on (`on_tentative`). Kills additionally need the victim's command line to
match `[policy.kill] prefer` and not `avoid`. Every intrusive action is preceded by a re-check that the
finding still holds, is skipped in `dry_run` (and logged as what it would have done), and is followed by a
`cooldown_seconds` during which the same process is not acted on again.

Bad config is rejected when loading, naming the key and what was expected:
`[policy] actions.critical: expected a list of log, notify, signal, hook, kill, got ['explode']`. Unknown keys
are errors too: a misspelt `dry_run` must not silently leave the daemon armed.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..detectors.registry import check_kinds
from ..errors import ConfigError
from ..model import Finding, ProcessMeta, Severity
from ..tables import TableReader, hidden
from .adapters import ADAPTER_NAMES

ACTIONS = ("log", "notify", "signal", "hook", "kill")
#: The actions that touch a process or run a command, in the order they are taken.
INTRUSIVE = ("hook", "signal", "kill")
#: `[policy] on_tentative`: what a tentative finding may do (see `Policy.on_tentative`).
TENTATIVE_CHOICES = ("save", "wait", "act")
#: Kinds that may trigger signal/hook/kill by default: the ones that say "memory is about to run out" (for
#: contention, in the run a newcomer squeezed: `Finding.at_risk`).
DEFAULT_ACT_ON_KINDS = frozenset({"oom_forecast", "growth", "pressure", "contention"})
_UNSENDABLE = frozenset({signal.SIGKILL, signal.SIGSTOP})
NOTIFY_ONLY = frozenset({"notify"})


@dataclass(frozen=True, slots=True)
class Targets:
    """Which processes may be signalled or killed: any one selector that matches is enough."""

    users: frozenset[str] = frozenset()
    cmdline: tuple[re.Pattern[str], ...] = ()
    attached: bool = False

    @property
    def configured(self) -> bool:
        return bool(self.users or self.cmdline or self.attached)

    def match(self, meta: ProcessMeta, attached_pids: frozenset[int] = frozenset()) -> str | None:
        """Why the policy names this process (`user alice`, `cmdline /train/`, `attached`), or None."""
        if meta.user is not None and meta.user in self.users:
            return f"user {meta.user}"
        line = " ".join(meta.cmdline or ())
        for pattern in self.cmdline:
            if line and pattern.search(line):
                return f"cmdline /{pattern.pattern}/"
        if self.attached and meta.pid in attached_pids:
            return "attached"
        return None


@dataclass(frozen=True, slots=True)
class SignalPolicy:
    """How a process is asked to save (`[policy.signal]`)."""

    force: bool = False  # send even to a process that does not catch the signal (its default action ends it)
    allow_stop: bool = False  # allow adapters that save and then end the run (OneTrainer, transformers JIT...)
    adapters: tuple[str, ...] = ADAPTER_NAMES
    fallback_signal: int | None = None  # for a process no adapter recognises (only if it catches it)
    overrides: tuple[tuple[re.Pattern[str], str], ...] = ()  # cmdline regex -> adapter, checked first


@dataclass(frozen=True, slots=True)
class KillPolicy:
    """Who may be killed on a shared box (`[policy.kill]`): prefer-matching, never avoid-matching."""

    prefer: tuple[re.Pattern[str], ...] = ()
    avoid: tuple[re.Pattern[str], ...] = ()
    grace_seconds: float = 10.0

    def eligible(self, meta: ProcessMeta) -> bool:
        line = " ".join(meta.cmdline or ())
        if not line:
            return False  # a process whose command line we cannot read is never a victim
        return any(p.search(line) for p in self.prefer) and not any(p.search(line) for p in self.avoid)


@dataclass(frozen=True, slots=True)
class HookCommand:
    """A command run with the finding in its environment (`[[policy.hooks]]`); argv, never a shell."""

    argv: tuple[str, ...]
    timeout_seconds: float = 30.0
    on_resolved: bool = False
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Policy:
    warning: frozenset[str] = NOTIFY_ONLY
    critical: frozenset[str] = NOTIFY_ONLY
    dry_run: bool = False
    cooldown_seconds: float = 300.0
    recheck: bool = True
    identity_tolerance_seconds: float = 1.0
    act_on_kinds: frozenset[str] = DEFAULT_ACT_ON_KINDS
    #: What a tentative finding (a load rises like a leak until it stops) may do before it is raised again, firm:
    #: "save" (default) asks to save only where the run goes on (no kill, hook, stopping adapter or forced
    #: signal), "wait" does nothing intrusive, "act" everything a firm finding would.
    on_tentative: str = "save"
    targets: Targets = field(default_factory=Targets)
    signal: SignalPolicy = field(default_factory=SignalPolicy)
    kill: KillPolicy = field(default_factory=KillPolicy)
    hooks: tuple[HookCommand, ...] = ()

    def actions_for(self, severity: Severity) -> frozenset[str]:
        return self.critical if severity is Severity.CRITICAL else self.warning

    def intrusive(self, finding: Finding) -> list[tuple[str, str | None]]:
        """Each intrusive action (hook, signal, kill) the policy asks for `finding`, with why it may not be taken
        (None: it may, once the finding is re-checked and its processes are named by the targets). The one place
        that decides what a finding's kind and doubt allow; `held` says whether a signal may end the run."""
        wanted = [a for a in INTRUSIVE if a in self.actions_for(finding.severity)]
        if finding.kind not in self.act_on_kinds:
            return [(a, f"kind {finding.kind} is not in [policy] act_on_kinds") for a in wanted]
        return [(a, None if a == "signal" and self.on_tentative == "save" else self.held(finding)) for a in wanted]

    def held(self, finding: Finding) -> str | None:
        """Why an action that may end a run (a kill, a hook, an adapter that saves then stops, a signal forced on a
        process that does not catch it) waits for `finding` (None: it does not wait)."""
        if finding.tentative is None or self.on_tentative == "act":
            return None
        mode = self.on_tentative
        return f"tentative ({finding.tentative}); waits until it is confirmed ([policy] on_tentative = {mode})"


def parse_signal(value: object, *, where: str) -> int:
    """`"SIGUSR1"`, `"USR1"` or `10` -> 10; SIGKILL and SIGSTOP are refused (they cannot be caught)."""
    bad = ConfigError(f"{where}: expected a signal name such as SIGUSR1, got {value!r}")
    try:
        if isinstance(value, int) and not isinstance(value, bool):
            signum = signal.Signals(value)
        elif isinstance(value, str):
            name = value.upper()
            signum = signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
        else:
            raise bad
    except (KeyError, ValueError):
        raise bad from None
    if signum in _UNSENDABLE:
        raise ConfigError(f"{where}: {signum.name} cannot be caught, so it cannot ask a trainer to save")
    return int(signum)


def _choice(reader: TableReader, key: str, choices: tuple[str, ...], default: str) -> str:
    value = reader.table.get(key, default)
    if value not in choices:
        raise reader.error(key, f"one of {', '.join(choices)}", value)
    return str(value)


def _actions(reader: TableReader, key: str, default: frozenset[str]) -> frozenset[str]:
    if key not in reader.table:
        return default
    names = reader.table[key]
    if isinstance(names, str) or not isinstance(names, list) or not all(n in ACTIONS for n in names):
        raise reader.error(key, f"a list of {', '.join(ACTIONS)}", names)
    return frozenset(names)


def _hooks(value: object) -> tuple[HookCommand, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"[[policy.hooks]]: expected an array of tables, got {hidden(value)}")
    hooks = []
    for index, table in enumerate(value):
        reader = TableReader(table, f"[[policy.hooks]] #{index + 1}", ("argv", "timeout_seconds", "on_resolved", "env"))
        if "argv" not in reader.table:
            raise ConfigError(f"{reader.where}: argv is required (a list: program, then its arguments)")
        argv = reader.strings("argv", secret=True)
        if not argv:
            raise reader.error("argv", "a non-empty list (program, then its arguments)", [])
        env = reader.table.get("env", {})
        if not isinstance(env, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise reader.error("env", "a table of string values", env, secret=True)
        hooks.append(
            HookCommand(
                argv=argv,
                timeout_seconds=reader.number("timeout_seconds", 30.0, minimum=0.001),
                on_resolved=reader.boolean("on_resolved", False),
                env=tuple(sorted(env.items())),
            )
        )
    return tuple(hooks)


def _kinds(reader: TableReader, key: str, default: frozenset[str]) -> frozenset[str]:
    names = frozenset(reader.strings(key, sorted(default)))
    check_kinds(names, f"{reader.where} {key}")
    return names


def parse_policy(section: Mapping[str, Any] | None) -> Policy:
    """The Policy of a `[policy]` table (as parsed from TOML); ConfigError naming the key on bad input."""
    top = TableReader(
        section or {},
        "[policy]",
        ("dry_run", "cooldown_seconds", "recheck", "identity_tolerance_seconds", "act_on_kinds", "on_tentative",
         "actions", "targets", "signal", "kill", "hooks"),
    )  # fmt: skip
    actions = top.sub("actions", ("warning", "critical"))
    targets = top.sub("targets", ("users", "cmdline", "attached"))
    sig = top.sub("signal", ("force", "allow_stop", "adapters", "fallback_signal", "match"))
    kill = top.sub("kill", ("prefer", "avoid", "grace_seconds"))

    adapters = sig.strings("adapters", ADAPTER_NAMES)
    for name in adapters:
        if name not in ADAPTER_NAMES:
            raise sig.error("adapters", f"names from {', '.join(ADAPTER_NAMES)}", name)
    match = sig.table.get("match", {})
    if not isinstance(match, Mapping):
        raise sig.error("match", "a table of regex = adapter name", match)
    overrides = []
    for pattern, name in match.items():
        if name not in ADAPTER_NAMES:
            raise sig.error(f"match.{pattern!r}", f"one of {', '.join(ADAPTER_NAMES)}", name)
        overrides.append((sig.regex(f"match.{pattern!r}", pattern), name))
    fallback = sig.table.get("fallback_signal")

    policy = Policy(
        warning=_actions(actions, "warning", NOTIFY_ONLY),
        critical=_actions(actions, "critical", NOTIFY_ONLY),
        dry_run=top.boolean("dry_run", False),
        cooldown_seconds=top.number("cooldown_seconds", 300.0),
        recheck=top.boolean("recheck", True),
        identity_tolerance_seconds=top.number("identity_tolerance_seconds", 1.0, minimum=0.001),
        act_on_kinds=_kinds(top, "act_on_kinds", DEFAULT_ACT_ON_KINDS),
        on_tentative=_choice(top, "on_tentative", TENTATIVE_CHOICES, "save"),
        targets=Targets(
            users=frozenset(targets.strings("users")),
            cmdline=targets.regexes("cmdline"),
            attached=targets.boolean("attached", False),
        ),
        signal=SignalPolicy(
            force=sig.boolean("force", False),
            allow_stop=sig.boolean("allow_stop", False),
            adapters=adapters,
            fallback_signal=None
            if fallback is None
            else parse_signal(fallback, where="[policy.signal] fallback_signal"),
            overrides=tuple(overrides),
        ),
        kill=KillPolicy(
            prefer=kill.regexes("prefer"),
            avoid=kill.regexes("avoid"),
            grace_seconds=kill.number("grace_seconds", 10.0),
        ),
        hooks=_hooks(top.table.get("hooks", [])),
    )
    _check_consistent(policy)
    return policy


def describe_policy(
    policy: Policy, *, off: str | None = None, pids_hidden: bool = False, waiting: bool = False
) -> list[str]:
    """What `policy` arms, in words (`vramwatch check`): the actions per severity, then what the intrusive ones
    answer, whom they may touch and how. `off`: why signal, hook and kill cannot act where the daemon reads (a
    simulated or replayed card's pids: `app.touches_processes`); `pids_hidden`: the daemon cannot see this host's
    pids, so signal and kill are refused (hooks still run); `waiting`: no card answered yet, and they are set up
    when one does (`app._arm_later`)."""
    lines = [f"on a warning: {_listed(policy.warning)}; on a critical: {_listed(policy.critical)}"]
    wanted = (policy.warning | policy.critical) & frozenset(INTRUSIVE)
    if not wanted:
        return [*lines, "no process is signalled or killed, and no hook runs"]
    if off is not None:
        return [*lines, f"signal, hook and kill: {off}"]
    if waiting:
        lines.append("signal, hook and kill are set up when a card answers (serve retries until then), as follows")
    if policy.dry_run:
        lines.append("dry run: what a signal, a hook or a kill would do is logged, not done")
    kinds = ", ".join(sorted(policy.act_on_kinds))
    lines.append(f"{_listed(wanted)}: only for findings of kind {kinds}; {_tentative(policy, wanted)}")
    reach = wanted & {"signal", "kill"}
    if reach and pids_hidden:
        lines.append("signal and kill are refused here: the daemon cannot see this host's pids (host_pids = no, "
                     "or a pid namespace of its own)")  # fmt: skip
        reach = frozenset()
    elif reach:
        t = policy.targets
        named = [f"user {u}" for u in sorted(t.users)] + [f"cmdline {_quoted(p)}" for p in t.cmdline]
        if named:
            # Only `vramwatch attach` has attached runs (the run it watches); the daemon acts with none.
            lines.append(f"processes it may signal or kill: {', '.join(named)}" + (", and runs under vramwatch "
                         "attach" if t.attached else ""))  # fmt: skip
        else:
            lines.append("processes it may signal or kill: only runs under vramwatch attach: serve signals and kills "
                         "nothing")  # fmt: skip
            reach = frozenset()
    ends = [
        *(["force = true: sent to a process that does not catch it, which ends it"] if policy.signal.force else []),
        *(["allow_stop = true: adapters that save, then stop the run"] if policy.signal.allow_stop else []),
    ]
    if "signal" in reach and ends:
        lines.append(f"a confirmed finding's signal may end a run: {'; '.join(ends)}")
    if "kill" in reach:
        k = policy.kill
        never = f", never {', '.join(_quoted(p) for p in k.avoid)}" if k.avoid else ""
        prefer = ", ".join(_quoted(p) for p in k.prefer)
        lines.append(
            f"a kill: the largest process on the card that the targets name and whose command line matches "
            f"{prefer}{never}; SIGTERM, then SIGKILL {k.grace_seconds:g} s later"
        )
    if "hook" in wanted:
        # The programs only: their arguments and environment may hold tokens.
        hooks = [h.argv[0] + (" (on resolve too)" if h.on_resolved else "") for h in policy.hooks]
        lines.append(f"hooks, per finding whatever the targets: {', '.join(hooks)}")
    return lines


def _tentative(policy: Policy, wanted: frozenset[str]) -> str:
    """What a tentative finding may do (`Policy.intrusive`): "save" lets it signal where the run goes on, only."""
    if policy.on_tentative == "act":
        return "a tentative one acts as a confirmed one does"
    if policy.on_tentative == "save" and "signal" in wanted:
        return "a tentative one may only ask a run to save"
    return "a tentative one does nothing intrusive until it is confirmed"


def _quoted(pattern: re.Pattern[str]) -> str:
    return f'"{pattern.pattern}"'


def _listed(actions: frozenset[str]) -> str:
    return ", ".join(a for a in ACTIONS if a in actions) or "nothing"


def _check_consistent(policy: Policy) -> None:
    """Refuse a policy that asks for an action it can never take: it would look armed and do nothing."""
    wanted = policy.warning | policy.critical
    if wanted & {"signal", "kill"} and not policy.targets.configured:
        raise ConfigError(
            "[policy] actions ask to signal or kill, but [policy.targets] names no process "
            "(set users, cmdline or attached)"
        )
    if "kill" in wanted and not policy.kill.prefer:
        raise ConfigError("[policy] actions ask to kill, but [policy.kill] prefer names no process to kill")
    if wanted & set(INTRUSIVE) and not policy.act_on_kinds:
        raise ConfigError(
            "[policy] actions ask to signal, kill or run a hook, but act_on_kinds is empty: no finding could "
            "trigger them"
        )
    if "hook" in wanted and not policy.hooks:
        raise ConfigError("[policy] actions ask to run a hook, but no [[policy.hooks]] is configured")
