"""What a notification says: a finding rendered as JSON fields, as one line of chat text, as labels.

Shared by every notifier so that a webhook, an Alertmanager alert and a hook describe a finding the same
way. A finding carries the process identity (pid + start time) and short name only; the user, container
and command line come from a `ProcessLookup` the daemon passes (its attribution cache), called at notify
time. The command line is left out unless a notifier is configured to include it, and is then redacted:
training command lines routinely carry tokens (`--hf_token`, `WANDB_API_KEY=...`, `https://user:pw@host`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone

from ..model import Finding, ProcessKey, ProcessMeta
from ..redact import MASK
from ..redact import redact_cmdline as redact
from ..render import finding_context

#: Finds what the daemon knows about a process identity (user, container, command line), or None.
ProcessLookup = Callable[[ProcessKey], ProcessMeta | None]

# One definition of "secret" for traces and payloads alike: vramwatch.redact.
REDACTED = MASK


def redact_cmdline(argv: Sequence[str]) -> list[str]:
    """The command line with secret values masked (`--token X`, `--token=X`, `NAME_KEY=X`, URL credentials)."""
    return list(redact(argv))


def alertname(kind: str) -> str:
    """`oom_forecast` -> `VramwatchOomForecast`: Alertmanager's CamelCase alert names."""
    return "Vramwatch" + "".join(part[:1].upper() + part[1:] for part in kind.split("_") if part)


def rfc3339(wall: float) -> str:
    """Epoch seconds as RFC 3339 UTC with milliseconds (`2024-05-01T12:00:00.000Z`)."""
    return datetime.fromtimestamp(wall, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_duration(seconds: float) -> str:
    """`150.0` -> `2m 30s`; for humans in chat text."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def clean_numbers(numbers: Mapping[str, float | int | str | None]) -> dict[str, float | int | str | None]:
    """The finding's numbers with NaN/inf made None (JSON has no NaN; receivers reject it)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in numbers.items()}


def gpu_index(finding: Finding) -> int | None:
    """The GPU's index when the detector recorded it in `numbers["gpu_index"]` (a Finding keys GPUs by UUID)."""
    value = finding.numbers.get("gpu_index")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def process_fields(finding: Finding, meta: ProcessMeta | None, *, include_cmdline: bool) -> dict[str, object] | None:
    """The process part of a payload: identity, name, user, container; the redacted command line if asked."""
    key = finding.process
    if key is None:
        return None
    if meta is not None and (meta.pid != key.pid or meta.start_time != key.start_time):
        meta = None  # a lookup that answers for another identity (pid reused) says nothing about this one
    fields: dict[str, object] = {
        "pid": key.pid,
        "start_time": key.start_time,
        "name": finding.process_name or (meta.name if meta else None),
        "user": meta.user if meta else None,
        "container": meta.container_id if meta else None,
    }
    if include_cmdline:
        fields["cmdline"] = redact_cmdline(meta.cmdline) if meta and meta.cmdline else None
    return fields


def finding_fields(finding: Finding, *, wall_time: float | None) -> dict[str, object]:
    """The finding itself, JSON-ready; `wall_time` is when it was raised, as epoch seconds."""
    return {
        "kind": finding.kind,
        "severity": finding.severity.value,
        "gpu": gpu_index(finding),
        "gpu_uuid": finding.gpu_uuid,
        "eta_seconds": finding.eta_seconds,
        "confidence": finding.confidence,
        "message": finding.message,
        **finding_context(finding),
        "numbers": clean_numbers(finding.numbers),
        "t": finding.t,
        "wall_time": wall_time,
    }


def chat_text(finding: Finding, *, cleared: bool, host: str, process: Mapping[str, object] | None) -> str:
    """A few lines for Slack/Mattermost/Apprise. `&`, `<`, `>` are escaped as Slack requires."""
    head = "RESOLVED" if cleared else finding.severity.value.upper()
    where = f"GPU {gpu_index(finding)}" if gpu_index(finding) is not None else f"GPU {finding.gpu_uuid or '?'}"
    lines = [f"[{head}] vramwatch {finding.kind} on {host} {where}: {finding.message}"]
    if process is not None:
        who = f"{process.get('name') or 'process'} (pid {process['pid']}"
        who += f", user {process['user']})" if process.get("user") else ")"
        lines.append(f"Process: {who}")
    if finding.eta_seconds is not None and not cleared:
        lines.append(f"Full in about {format_duration(finding.eta_seconds)}")
    if finding.advice and not cleared:
        lines.append("Advice:")
        lines.extend(f"- {line}" for line in finding.advice)
    text = "\n".join(lines)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def wall_of(t: float, *, monotonic_now: float, wall_now: float) -> float:
    """The epoch time of monotonic instant `t`, given the two clocks read at the same moment."""
    return wall_now - (monotonic_now - t)
