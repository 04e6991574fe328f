"""Acting on findings: everything in vramwatch that has a side effect outside the daemon.

The daemon calls `ActionDispatcher.handle(raised, cleared, attached, processes)` once per tick. What it
may do is a `Policy` (`[policy]` in the config; default: notify only). Modules, one concern each:

- `queue`: the bounded delivery queue and worker thread every network notifier uses (never blocks a tick)
- `transport`, `payload`: one HTTP POST with urllib; a finding rendered as JSON, chat text and labels
- `webhook`, `alertmanager`, `apprise_notifier`, `log_notifier`: the notifiers; `notify_config` builds
  them from `[notify]`
- `signals`: signal masks from /proc, pid identity checks, safe sending, the opt-in killer
- `adapters`: each trainer's "save now" mechanism, as data
- `policy`, `hooks`, `dispatch`: what may be done, hook commands, and the per-tick dispatcher

See docs/actions.md.
"""

from __future__ import annotations

from ..environ import read_environ
from ..model import ActionResult
from .adapters import ADAPTERS, SaveNowAdapter, choose_adapter, resumability_hint
from .alertmanager import AlertmanagerNotifier
from .apprise_notifier import AppriseNotifier
from .dispatch import ActionDispatcher, Recheck
from .hooks import HookRunner, hook_environment
from .log_notifier import LogNotifier
from .notify_config import build_notifiers
from .policy import HookCommand, KillPolicy, Policy, SignalPolicy, Targets, describe_policy, parse_policy
from .queue import DeliveryError, DeliveryQueue
from .signals import Killer, ProcStatus, parse_mask, parse_status, send_signal, verify_identity
from .webhook import WebhookNotifier, verify_signature

__all__ = [
    "ADAPTERS",
    "ActionDispatcher",
    "ActionResult",
    "AlertmanagerNotifier",
    "AppriseNotifier",
    "DeliveryError",
    "DeliveryQueue",
    "HookCommand",
    "HookRunner",
    "KillPolicy",
    "Killer",
    "LogNotifier",
    "Policy",
    "ProcStatus",
    "Recheck",
    "SaveNowAdapter",
    "SignalPolicy",
    "Targets",
    "WebhookNotifier",
    "build_notifiers",
    "choose_adapter",
    "describe_policy",
    "hook_environment",
    "parse_mask",
    "parse_policy",
    "parse_status",
    "read_environ",
    "resumability_hint",
    "send_signal",
    "verify_identity",
    "verify_signature",
]
