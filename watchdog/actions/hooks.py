"""Hooks: a command of the admin's choosing, run with the finding in its environment, off the sampler.

Each `[[policy.hooks]]` entry is an argv list, executed directly (never through a shell, so nothing in a
finding can be interpreted as shell syntax), with stdin closed and its output captured for the log. It
runs on the hook queue's worker thread, in a session of its own: at `timeout_seconds` the whole process
group is killed (SIGKILL), so a hook script that started `sleep` or `curl` children cannot linger. Hooks are
not retried (a hook may have side effects); a non-zero exit or a timeout is counted as `failed`.

Environment: only `PATH`, `HOME`, `LANG`, `LC_ALL`, `TZ`, `USER` and `LOGNAME` are inherited from the
daemon (the rest of its environment may hold secrets, such as a webhook's HMAC key), plus the hook's own
`env` table, plus the finding (variables whose value is unknown are absent, never empty):

| variable | value |
| --- | --- |
| `VRAMWATCH_STATUS` | `firing` or `resolved` |
| `VRAMWATCH_KIND`, `VRAMWATCH_SEVERITY` | the finding's kind and severity |
| `VRAMWATCH_MESSAGE` | its one-line message |
| `VRAMWATCH_GPU`, `VRAMWATCH_GPU_UUID` | GPU index (when known) and UUID |
| `VRAMWATCH_ETA_SECONDS` | forecast seconds until the card is full |
| `VRAMWATCH_CONFIDENCE` | 0..1 |
| `VRAMWATCH_USED_BYTES`, `VRAMWATCH_FREE_BYTES`, `VRAMWATCH_TOTAL_BYTES` | from the finding's numbers |
| `VRAMWATCH_NUMBER_<NAME>` | every number of the finding (name upper-cased) |
| `VRAMWATCH_PID`, `VRAMWATCH_START_TIME` | the process identity (epoch seconds) |
| `VRAMWATCH_PROCESS_NAME`, `VRAMWATCH_USER`, `VRAMWATCH_CONTAINER` | what is known about it |
| `VRAMWATCH_ADVICE` | the advice lines, newline-separated |
| `VRAMWATCH_HOST` | the host name |

In dry-run mode hooks are not run; the dispatcher logs which would have run.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence

import structlog

from ..model import ActionResult, Finding, ProcessMeta
from .payload import clean_numbers, gpu_index
from .policy import HookCommand
from .queue import DeliveryError, DeliveryQueue

log = structlog.get_logger("vramwatch.actions")

INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME")
_OUTPUT_TAIL = 2000
_NAME = re.compile(r"[^A-Za-z0-9]+")


def hook_environment(
    finding: Finding,
    *,
    cleared: bool = False,
    meta: ProcessMeta | None = None,
    host: str = "",
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment a hook runs with (see the module docstring for the variables)."""
    source = os.environ if base is None else base
    env = {k: source[k] for k in INHERITED if k in source}
    numbers = clean_numbers(finding.numbers)
    values: dict[str, object] = {
        "STATUS": "resolved" if cleared else "firing",
        "KIND": finding.kind,
        "SEVERITY": finding.severity.value,
        "MESSAGE": finding.message,
        "GPU": gpu_index(finding),
        "GPU_UUID": finding.gpu_uuid,
        "ETA_SECONDS": finding.eta_seconds,
        "CONFIDENCE": finding.confidence,
        "USED_BYTES": numbers.get("used_bytes"),
        "FREE_BYTES": numbers.get("free_bytes"),
        "TOTAL_BYTES": numbers.get("total_bytes"),
        "HOST": host or None,
        "ADVICE": "\n".join(finding.advice) or None,
    }
    if finding.process is not None:
        values["PID"] = finding.process.pid
        values["START_TIME"] = finding.process.start_time
        values["PROCESS_NAME"] = finding.process_name
        if meta is not None and meta.pid == finding.process.pid and meta.start_time == finding.process.start_time:
            values["USER"] = meta.user
            values["CONTAINER"] = meta.container_id
            values["PROCESS_NAME"] = finding.process_name or meta.name
    for name, number in numbers.items():
        values[f"NUMBER_{_NAME.sub('_', name).upper()}"] = number
    for name, value in values.items():
        if value is not None:
            env[f"VRAMWATCH_{name}"] = f"{value:.3f}" if isinstance(value, float) else str(value)
    return env


class HookRunner:
    """Runs the policy's hooks for a finding, each on the hook queue's worker thread."""

    def __init__(
        self,
        commands: Sequence[HookCommand],
        *,
        host: str | None = None,
        base_env: Mapping[str, str] | None = None,
        queue: DeliveryQueue | None = None,
    ) -> None:
        self.commands = tuple(commands)
        self.host = host or socket.gethostname()
        self._base_env = base_env
        self.queue = queue or DeliveryQueue("hooks", maxsize=64, max_attempts=1)

    def run(
        self, finding: Finding, *, cleared: bool = False, meta: ProcessMeta | None = None, dry_run: bool = False
    ) -> list[ActionResult]:
        """Queue every hook that applies (resolved findings only reach hooks with `on_resolved`)."""
        results = []
        for command in self.commands:
            if cleared and not command.on_resolved:
                continue
            if dry_run:
                results.append(
                    ActionResult("hook", False, f"dry-run: would run {command.argv[0]}", process=finding.process,
                                 kind=finding.kind, dry_run=True)
                )  # fmt: skip
                continue
            env = hook_environment(finding, cleared=cleared, meta=meta, host=self.host, base=self._base_env)
            env.update(command.env)
            queued = self.queue.submit(functools.partial(self.execute, command, env), label=command.argv[0])
            reason = f"queued {command.argv[0]}" if queued else "hook queue closed"
            results.append(ActionResult("hook", queued, reason, process=finding.process, kind=finding.kind))
        return results

    @staticmethod
    def execute(command: HookCommand, env: Mapping[str, str]) -> None:
        """Run one hook to completion or its timeout; DeliveryError (not retryable) when it fails."""
        program = command.argv[0]
        try:
            proc = subprocess.Popen(
                command.argv, env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
            )  # fmt: skip
        except OSError as exc:
            raise DeliveryError(f"hook {program} could not start: {exc}", retryable=False) from None
        try:
            output, _ = proc.communicate(timeout=command.timeout_seconds)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise DeliveryError(
                f"hook {program} timed out after {command.timeout_seconds:g} s and was killed", retryable=False
            ) from None
        tail = output.decode("utf-8", "replace")[-_OUTPUT_TAIL:]
        if proc.returncode != 0:
            log.warning("hook_failed", program=program, exit_code=proc.returncode, output=tail)
            raise DeliveryError(f"hook {program} exited with {proc.returncode}", retryable=False)
        log.info("hook_done", program=program, output=tail)

    def counts(self) -> Mapping[str, int]:
        return self.queue.counts()

    def close(self, timeout: float = 5.0) -> None:
        self.queue.close(timeout)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the hook leads its own session: its group id is its pid
    try:
        # Grandchildren are dead too, so the pipe closes; the bound is for a child stuck in the kernel.
        proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
