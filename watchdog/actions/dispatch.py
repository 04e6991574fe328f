"""The daemon's one call per tick into the action layer: findings in, decisions (ActionResults) out.

`ActionDispatcher.handle(raised, cleared, attached, processes)` applies the policy to the findings the
detectors raised and cleared this tick. Notifications are queued (never sent on this thread); signals are
sent after the checks in `signals.send_signal`; kills send SIGTERM now and escalate on a thread of their
own; hooks run on their own queue. It never raises: a failure becomes an `ActionResult` with
`action="error"`, because the sampler must keep sampling whatever a notifier or a /proc read does.

Order for one raised finding: `log`, `notify`, then (only for kinds in `act_on_kinds`, after one re-check that
the finding still holds) `hook`, `signal`, `kill`. A tentative finding ends no run and runs no hook (by default it
may ask to save where the run goes on, `Policy.intrusive`); the tracker raises it again once it is confirmed
(`detectors.lifecycle`), and that raise may do everything. A process signalled this tick is in cooldown, so a
`kill` in the same tick picks another victim: the run just asked to save is not then killed mid-save.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import psutil
import structlog

from ..clock import SystemClock
from ..environ import read_environ
from ..model import ActionResult, Finding, ProcessKey, ProcessMeta, ProcessSample
from ..typing import Clock, Notifier, ProcessInspector
from .adapters import choose_adapter, custom_adapter, resumability_hint
from .hooks import HookRunner
from .log_notifier import LogNotifier
from .policy import Policy
from .queue import RESULTS
from .signals import PROC, Killer, StartTimeOf, psutil_start_time

log = structlog.get_logger("vramwatch.actions")

#: Asked right before an intrusive action: does this finding still hold (e.g. is free memory still low)?
Recheck = Callable[[Finding], bool]
EnvironOf = Callable[[int], Mapping[str, str] | None]


class _PsutilLookup:
    """A minimal ProcessInspector for when the daemon passes none: name, user, command line, start time."""

    def inspect(self, pid: int) -> ProcessMeta:
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                return ProcessMeta(
                    pid=pid, start_time=proc.create_time(), name=proc.name(), user=proc.username(),
                    cmdline=tuple(proc.cmdline()),
                )  # fmt: skip
        except psutil.Error:
            return ProcessMeta(pid=pid, start_time=None)

    def pid_namespace_matches(self) -> bool:
        return True


class ActionDispatcher:
    """Applies a Policy to each tick's raised and cleared findings."""

    def __init__(
        self,
        policy: Policy,
        notifiers: Sequence[Notifier] = (),
        *,
        recheck: Recheck | None = None,
        clock: Clock | None = None,
        proc_root: Path = PROC,
        hooks: HookRunner | None = None,
        inspector: ProcessInspector | None = None,
        killer: Killer | None = None,
        start_time_of: StartTimeOf = psutil_start_time,
        environ_of: EnvironOf | None = None,
        default_log: bool = True,
    ) -> None:
        self.policy = policy
        self._log_notifier = LogNotifier()
        # With no destination configured, "notify" means a log line, so the default policy logs findings;
        # `default_log=False` is for a caller that already logs every finding itself.
        fallback: tuple[Notifier, ...] = (self._log_notifier,) if default_log else ()
        self.notifiers: tuple[Notifier, ...] = tuple(notifiers) or fallback
        self._recheck = recheck
        self._clock: Clock = clock or SystemClock()
        self.proc_root = proc_root
        self.hooks = hooks if hooks is not None else (HookRunner(policy.hooks) if policy.hooks else None)
        self._inspector: ProcessInspector = inspector or _PsutilLookup()
        self.killer = killer or Killer(
            grace_seconds=policy.kill.grace_seconds, start_time_of=start_time_of,
            tolerance_seconds=policy.identity_tolerance_seconds,
        )  # fmt: skip
        self._start_time_of = start_time_of
        self._environ_of: EnvironOf = environ_of or (lambda pid: read_environ(pid, proc_root))
        self._last_acted: dict[object, float] = {}

    def rearm(self, policy: Policy, inspector: ProcessInspector) -> None:
        """Act by `policy` from now on, on the processes `inspector` reads: a daemon whose start found no card is armed
        at the first that answers (`app._arm_later`). `policy` is the one this dispatcher was built with, at its full
        reach (`app.policy_for` cuts only what each severity does), so the notifiers, the hooks and the killer built
        from it stay as they are, with their queues and counts."""
        if (policy.hooks, policy.kill, policy.identity_tolerance_seconds) != (
            self.policy.hooks, self.policy.kill, self.policy.identity_tolerance_seconds,
        ):  # fmt: skip
            raise ValueError("rearm takes the policy the dispatcher was built with, at another reach only")
        self.policy = policy
        self._inspector = inspector

    # --- the per-tick entry point -------------------------------------------------------------------

    def handle(
        self,
        raised: Iterable[Finding],
        cleared: Iterable[Finding],
        attached: frozenset[int] = frozenset(),
        processes: Sequence[ProcessSample] = (),
    ) -> list[ActionResult]:
        """Act on this tick's findings; `attached` are pids with the agent attached, `processes` the
        snapshot's processes (kill victims are chosen among them). Never raises."""
        results: list[ActionResult] = []
        for finding in raised:
            results.extend(self._guarded(finding, lambda f: self._on_raised(f, attached, processes)))
        for finding in cleared:
            results.extend(self._guarded(finding, self._on_cleared))
        for notifier in self.notifiers:
            tick = getattr(notifier, "tick", None)
            if callable(tick):
                with contextlib.suppress(Exception):
                    tick()
        self._expire_cooldowns()
        return results

    def notification_counts(self) -> Mapping[str, int]:
        """Deliveries by result summed over every queued notifier: `vramwatch_notifications_total{result}`."""
        totals = dict.fromkeys(RESULTS, 0)
        for notifier in self.notifiers:
            counts = getattr(notifier, "counts", None)
            if callable(counts):
                for result, n in counts().items():
                    totals[result] = totals.get(result, 0) + n
        return totals

    def close(self, timeout: float = 5.0) -> None:
        """Drain notifier and hook queues and wait for pending kill escalations, all at once, `timeout` in all.

        Each queue drains on its own thread, so a receiver that hangs holds a stopping daemon `timeout` seconds,
        not `timeout` per queue, and the other queues still deliver meanwhile; what is left then is dropped and
        counted by its queue."""
        deadline = time.monotonic() + timeout
        closers = []
        for closable in (*self.notifiers, self.hooks, self.killer):
            close = getattr(closable, "close", None)
            if callable(close):
                closer = threading.Thread(target=_close_quietly, args=(close, timeout), name="vramwatch-close",
                                          daemon=True)  # fmt: skip
                closer.start()
                closers.append(closer)
        for closer in closers:
            # Each queue's own close is bounded by `timeout`; the grace lets it count and log what it dropped.
            closer.join(max(0.0, deadline + CLOSE_GRACE_SECONDS - time.monotonic()))

    # --- one finding --------------------------------------------------------------------------------

    def _guarded(self, finding: Finding, step: Callable[[Finding], list[ActionResult]]) -> list[ActionResult]:
        try:
            return step(finding)
        except Exception as exc:
            log.exception("action_failed", kind=finding.kind)
            return [ActionResult("error", False, f"{type(exc).__name__}: {exc}", finding.process, finding.kind)]

    def _on_raised(
        self, finding: Finding, attached: frozenset[int], processes: Sequence[ProcessSample]
    ) -> list[ActionResult]:
        actions = self.policy.actions_for(finding.severity)
        results = self._announce(finding, actions, cleared=False)
        decided = self.policy.intrusive(finding)
        allowed = [a for a, refused in decided if refused is None]
        results += [ActionResult(a, False, refused, finding.process, finding.kind) for a, refused in decided if refused]
        if not allowed:
            return results
        holds, why = self._still_holds(finding)
        if not holds:
            return results + [ActionResult(a, False, why, finding.process, finding.kind) for a in allowed]
        if "hook" in allowed:
            results += self._hook(finding)
        if "signal" in allowed:
            results += self._signal(finding, attached, processes)
        if "kill" in allowed:
            results += self._kill(finding, attached, processes)
        return results

    def _on_cleared(self, finding: Finding) -> list[ActionResult]:
        actions = self.policy.actions_for(finding.severity)
        results = self._announce(finding, actions, cleared=True)
        # A resolved hook answers the raised one: none for a finding the policy never acted on (a tentative one
        # that cleared without being confirmed, a kind outside `act_on_kinds`).
        if "hook" in actions and self.hooks is not None and ("hook", None) in self.policy.intrusive(finding):
            meta = self._meta(finding.process) if finding.process else None
            results += self.hooks.run(finding, cleared=True, meta=meta, dry_run=self.policy.dry_run)
        return results

    def _announce(self, finding: Finding, actions: frozenset[str], *, cleared: bool) -> list[ActionResult]:
        results = []
        logged = False
        if "notify" in actions:
            delivered = 0
            for notifier in self.notifiers:
                try:  # the Notifier contract says it never raises; one that does must not silence the others
                    notifier.notify(finding, cleared=cleared)
                    delivered += 1
                except Exception as exc:
                    log.exception("notifier_failed", notifier=type(notifier).__name__, kind=finding.kind)
                    results.append(ActionResult("error", False, f"{type(notifier).__name__}: {exc}",
                                                finding.process, finding.kind))  # fmt: skip
                logged = logged or notifier is self._log_notifier
            results.append(
                ActionResult("notify", delivered > 0, f"queued for {delivered} of {len(self.notifiers)} notifier(s)",
                             finding.process, finding.kind)
            )  # fmt: skip
        if "log" in actions and not logged:
            self._log_notifier.notify(finding, cleared=cleared)
            results.append(ActionResult("log", True, "logged", finding.process, finding.kind))
        return results

    def _still_holds(self, finding: Finding) -> tuple[bool, str]:
        if not self.policy.recheck or self._recheck is None:
            return True, ""
        try:
            if self._recheck(finding):
                return True, ""
        except Exception as exc:
            return False, f"re-check failed ({type(exc).__name__}); not acting"
        return False, "the finding no longer holds at re-check; not acting"

    # --- intrusive actions --------------------------------------------------------------------------

    def _hook(self, finding: Finding) -> list[ActionResult]:
        if self.hooks is None:
            return [ActionResult("hook", False, "no hook configured", finding.process, finding.kind)]
        cool_key = ("hook", finding.process or finding.subject)
        if (left := self._cooling(cool_key)) is not None:
            return [ActionResult("hook", False, f"hook ran {left:.0f} s ago (cooldown)", finding.process, finding.kind)]
        meta = self._meta(finding.process) if finding.process else None
        results = self.hooks.run(finding, meta=meta, dry_run=self.policy.dry_run)
        if any(r.done or r.dry_run for r in results):
            self._mark(cool_key)
        return results

    def _signal(
        self, finding: Finding, attached: frozenset[int], processes: Sequence[ProcessSample]
    ) -> list[ActionResult]:
        if not self._inspector.pid_namespace_matches():
            return [ActionResult("signal", False, "the daemon cannot see host pids here; no signals",
                                 finding.process, finding.kind)]  # fmt: skip
        if finding.at_risk is not None:  # the run the finding says is in danger (contention: the squeezed one)
            keys = [s.key for s in self._on_gpu(finding, processes)
                    if s.tree_key == finding.at_risk and self.policy.targets.match(s.meta, attached)]  # fmt: skip
            if not keys:
                return [ActionResult("signal", False, f"no process of the run at risk (pid {finding.at_risk.pid}) on "
                                     "this GPU is named by [policy.targets]", None, finding.kind)]  # fmt: skip
        elif finding.process is not None:
            keys = [finding.process]
        else:  # a GPU-level finding: ask every process the policy names on that GPU to save
            keys = [s.key for s in self._on_gpu(finding, processes) if self.policy.targets.match(s.meta, attached)]
            if not keys:
                return [ActionResult("signal", False, "no process on this GPU is named by [policy.targets]",
                                     None, finding.kind)]  # fmt: skip
        return [self._signal_one(finding, key, attached) for key in dict.fromkeys(keys)]

    def _signal_one(self, finding: Finding, key: ProcessKey, attached: frozenset[int]) -> ActionResult:
        def refuse(reason: str, adapter: str | None = None) -> ActionResult:
            return ActionResult("signal", False, reason, key, finding.kind, adapter=adapter)

        meta = self._meta(key)
        if meta is None:
            return refuse(f"pid {key.pid} has exited or was reused; not signalled")
        why = self.policy.targets.match(meta, attached)
        if why is None:
            return refuse(f"pid {key.pid} is not named by [policy.targets]; not signalled")
        if (left := self._cooling(key)) is not None:
            return refuse(f"pid {key.pid} was acted on {left:.0f} s ago (cooldown)")
        sig = self.policy.signal
        env = self._environ_of(key.pid)
        chosen = choose_adapter(meta, env, allowed=sig.adapters, overrides=sig.overrides)
        if chosen is None and sig.fallback_signal is not None:
            chosen = custom_adapter(sig.fallback_signal)
        if chosen is None:
            hint = resumability_hint(meta)
            return refuse(f"no save-now mechanism known for pid {key.pid}" + (f"; {hint}" if hint else ""))
        if chosen.stops_run and not sig.allow_stop:
            return refuse(
                f"{chosen.name} saves and then ends the run; not used ([policy.signal] allow_stop = false)",
                chosen.name,
            )
        held = self.policy.held(finding)
        if chosen.stops_run and held is not None:
            return refuse(f"{chosen.name} saves and then ends the run; {held}", chosen.name)
        result = chosen.trigger(
            key, proc_root=self.proc_root, dry_run=self.policy.dry_run, force=sig.force and held is None, env=env,
            start_time_of=self._start_time_of, tolerance_seconds=self.policy.identity_tolerance_seconds,
        )  # fmt: skip
        if result.done or result.dry_run:
            self._mark(key)
        reason = result.reason
        if sig.force and held is not None and not (result.done or result.dry_run):
            reason += f"; not forced: {held}"
        return ActionResult(
            "signal", result.done, f"{reason} ({why}, adapter {chosen.name})", key, finding.kind,
            signal=result.signal, adapter=chosen.name, dry_run=result.dry_run,
        )  # fmt: skip

    def _kill(
        self, finding: Finding, attached: frozenset[int], processes: Sequence[ProcessSample]
    ) -> list[ActionResult]:
        if not self._inspector.pid_namespace_matches():
            return [ActionResult("kill", False, "the daemon cannot see host pids here; no kills",
                                 finding.process, finding.kind)]  # fmt: skip
        candidates = sorted(self._on_gpu(finding, processes), key=lambda s: -(s.used_bytes or 0))
        seen: set[ProcessKey] = set()
        cooling = 0
        for sample in candidates:
            if sample.key in seen:
                continue
            seen.add(sample.key)
            if self.policy.targets.match(sample.meta, attached) is None or not self.policy.kill.eligible(sample.meta):
                continue
            if self._cooling(sample.key) is not None:
                cooling += 1
                continue
            result = self.killer.kill(sample.key, dry_run=self.policy.dry_run)
            if result.done or result.dry_run:
                self._mark(sample.key)
            return [ActionResult("kill", result.done, result.reason, sample.key, finding.kind,
                                 signal=result.signal, dry_run=result.dry_run)]  # fmt: skip
        reason = "no process on this GPU matches [policy.kill] prefer and [policy.targets] without matching avoid"
        if cooling:
            reason = f"every eligible victim was acted on recently ({cooling} in cooldown)"
        return [ActionResult("kill", False, reason, None, finding.kind)]

    # --- helpers ------------------------------------------------------------------------------------

    @staticmethod
    def _on_gpu(finding: Finding, processes: Sequence[ProcessSample]) -> list[ProcessSample]:
        return [p for p in processes if finding.gpu_uuid is None or p.gpu_uuid == finding.gpu_uuid]

    def _meta(self, key: ProcessKey | None) -> ProcessMeta | None:
        """What the inspector knows about `key`, or None when the pid is gone or now another process."""
        if key is None or key.start_time is None:
            return None
        try:
            meta = self._inspector.inspect(key.pid)
        except Exception:
            return None
        tolerance = self.policy.identity_tolerance_seconds
        if meta.start_time is None or not abs(meta.start_time - key.start_time) <= tolerance:  # closed on NaN
            return None
        # A process reaped while NVML still lists it keeps its identity in the inspector (it says how it ended):
        # gone all the same, nothing to act on.
        return None if meta.status == "gone" else meta

    def _cooling(self, key: object) -> float | None:
        """Seconds since the last action on `key` if still within the cooldown, else None."""
        last = self._last_acted.get(key)
        if last is None:
            return None
        elapsed = self._clock.monotonic() - last
        return elapsed if elapsed < self.policy.cooldown_seconds else None

    def _mark(self, key: object) -> None:
        self._last_acted[key] = self._clock.monotonic()

    def _expire_cooldowns(self) -> None:
        now = self._clock.monotonic()
        for key in [k for k, t in self._last_acted.items() if now - t >= self.policy.cooldown_seconds]:
            del self._last_acted[key]


#: How long past the shared deadline a stop waits for a queue to log what it dropped.
CLOSE_GRACE_SECONDS = 0.5


def _close_quietly(close: Callable[[float], object], timeout: float) -> None:
    with contextlib.suppress(Exception):  # one queue's failure to close must not keep the others open
        close(timeout)
