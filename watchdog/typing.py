"""The seams of vramwatch: every dependency on the outside world is one of these Protocols.

Production code gets the real implementation (NVML, the OS clock, psutil); tests get a fake from
`vramwatch.testing`. Nothing here imports an implementation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

from .model import ActionResult, Finding, ProcessMeta, ProcessSample, Reading


class Clock(Protocol):
    """Time as the daemon sees it: monotonic for deadlines and windows, wall time for display only."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never goes backwards (time.monotonic)."""

    def wall(self) -> float:
        """Seconds since the epoch (time.time), for traces and humans."""

    def sleep(self, seconds: float) -> None:
        """Block for `seconds` (a fake clock advances instead)."""


@runtime_checkable
class ProcessInspector(Protocol):
    """Looks up what the OS knows about a pid (name, user, tree root, container)."""

    def inspect(self, pid: int) -> ProcessMeta:
        """Return what is known; a vanished or forbidden pid yields a ProcessMeta of Nones, never raises."""

    def pid_namespace_matches(self) -> bool:
        """False when NVML's host pids cannot be resolved here (a container without the host pid namespace)."""


@runtime_checkable
class Backend(Protocol):
    """A source of GPU memory readings: NVML on a real host, the simulator, or a recorded trace."""

    #: "nvml", "simulated" or "replay"; shown on the first line of every command's output.
    kind: str

    def read(self) -> Reading:
        """One reading of every GPU and its processes.

        A GPU that fails mid-read is returned with `up=False`; only a failure of the whole library raises
        `BackendUnavailable`. A replay backend raises `EOFError` after its last tick.
        """

    def inspector(self) -> ProcessInspector:
        """The process inspector that matches this backend's pids (psutil for NVML, fakes for the others)."""

    def describe(self) -> dict[str, str]:
        """Driver version, NVML version, host: the header of a trace and the `build_info`/`status` lines."""

    def close(self) -> None:
        """Release the library (nvmlShutdown); safe to call twice."""


def described(backend: Backend) -> dict[str, str]:
    """`backend.describe()` with `backend` set to its kind (`nvml`, `simulated`, `replay`): what the daemon exports,
    the page shows and a trace's header says. The kind is what is read now, whatever a description carries (a replayed
    trace's header names what it was recorded from as `recorded_backend`)."""
    return {**backend.describe(), "backend": backend.kind}


class Notifier(Protocol):
    """Somewhere findings go: a log, a webhook, Alertmanager, a terminal."""

    def notify(self, finding: Finding, *, cleared: bool = False) -> None:
        """Deliver or enqueue; must never block the sampler and never raise."""


class ActionHandler(Protocol):
    """The action layer as its callers see it (`vramwatch.actions.ActionDispatcher`): act on a tick's findings
    per the policy and say what was done, or why not. Never raises."""

    def handle(
        self,
        raised: Iterable[Finding],
        cleared: Iterable[Finding],
        attached: frozenset[int] = ...,
        processes: Sequence[ProcessSample] = ...,
    ) -> list[ActionResult]: ...
