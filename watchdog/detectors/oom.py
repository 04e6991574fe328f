"""The agent's OOM: a certain post-mortem, and the one rule that says whether fragmentation caused it.

When a trainer runs under `vramwatch run`, its in-process agent reports an out-of-memory error with the
allocator's state at the failed request. Nothing is guessed: the finding is raised at once (no hysteresis),
by `serve` from the agent socket, and the same rule is told to the user by `vramwatch run`'s own monitor,
so the two can never disagree about why the same OOM happened.

As a detector it reads the reports that arrived since the previous tick (`Tick.ooms`): each is an event,
raised once on the tick it arrived and never cleared. Its advice is that of an OOM at the first step (`spike`:
the size of one step) unless fragmentation is to blame (see enrich.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ..model import Finding, FindingKind, OomEvent, ProcessKey, Severity
from . import _format as fmt
from ._context import Tick
from .base import Detector

#: The pieces still cached at an OOM must be at least this share of what PyTorch reserved to be blamed.
FRAGMENTED_MIN_SHARE = 0.1


def fragmented_at_oom(
    *,
    requested_bytes: int | None,
    reserved_bytes: int | None,
    allocated_bytes: int | None,
    device_free_bytes: int | None,
) -> bool:
    """Did the request fail for want of a contiguous block rather than of memory?

    At an OOM the allocator has already given every whole cached segment back to the driver, so what is still
    reserved but unallocated sits in pieces. Fragmentation is to blame when those pieces are a real share of
    the pool (`FRAGMENTED_MIN_SHARE`) and, with the device's free memory, would have held the request.
    """
    if reserved_bytes is None or allocated_bytes is None or not reserved_bytes:
        return False
    slack = max(0, reserved_bytes - allocated_bytes)
    if slack < FRAGMENTED_MIN_SHARE * reserved_bytes:
        return False
    return requested_bytes is None or slack + (device_free_bytes or 0) >= requested_bytes


def oom_finding(
    *,
    pid: int,
    gpu_uuid: str | None,
    t: float,
    process: ProcessKey | None,
    process_name: str | None,
    requested_bytes: int | None,
    allocated_bytes: int | None,
    reserved_bytes: int | None,
    inactive_split_bytes: int | None,
    num_alloc_retries: int | None,
    device_free_bytes: int | None,
    snapshot_path: str | None = None,
) -> Finding:
    """The critical `oom` finding of one agent report; `numbers["fragmented"]` chooses its advice."""
    fragmented = fragmented_at_oom(
        requested_bytes=requested_bytes,
        reserved_bytes=reserved_bytes,
        allocated_bytes=allocated_bytes,
        device_free_bytes=device_free_bytes,
    )
    slack = None if reserved_bytes is None or allocated_bytes is None else max(0, reserved_bytes - allocated_bytes)
    what = (
        "enough memory was cached but fragmented (expandable_segments would have helped)"
        if fragmented
        else "the request did not fit"
    )
    return Finding(
        kind=FindingKind.OOM,
        severity=Severity.CRITICAL,
        gpu_uuid=gpu_uuid,
        message=(
            f"pid {pid} ran out of GPU memory: asked for {fmt.gib(requested_bytes)} GiB with "
            f"{fmt.gib(allocated_bytes)} GiB allocated and {fmt.gib(reserved_bytes)} GiB reserved by PyTorch; "
            f"{what}" + (f"; memory snapshot: {snapshot_path}" if snapshot_path else "")
        ),
        t=t,
        process=process,
        process_name=process_name,
        numbers={
            "requested_bytes": requested_bytes,
            "allocated_bytes": allocated_bytes,
            "reserved_bytes": reserved_bytes,
            "reserved_unallocated_bytes": slack,
            "inactive_split_bytes": inactive_split_bytes,
            "num_alloc_retries": num_alloc_retries,
            "device_free_bytes": device_free_bytes,
            "fragmented": fragmented,
        },
    )


@dataclass(frozen=True, slots=True)
class OomConfig:
    """Nothing to tune: an agent's OOM report is a fact, not a threshold crossed."""


def detect(tick: Tick, own: OomConfig) -> Iterator[Finding]:  # noqa: ARG001 - the detector signature
    """One critical `oom` finding per report an agent sent since the previous tick."""
    for ev in tick.ooms:
        yield from_report(ev, tick)


def from_report(ev: OomEvent, tick: Tick) -> Finding:
    """The `oom` finding of one agent report, about the process as this tick's snapshot knows it."""
    proc = next((p for p in tick.snapshot.processes if p.pid == ev.pid), None)
    return oom_finding(
        pid=ev.pid,
        gpu_uuid=ev.gpu_uuid,
        t=tick.now,
        process=proc.key if proc else None,
        process_name=proc.meta.name if proc else None,
        requested_bytes=ev.requested_bytes,
        allocated_bytes=ev.allocated_bytes,
        reserved_bytes=ev.reserved_bytes,
        inactive_split_bytes=ev.inactive_split_bytes,
        num_alloc_retries=ev.num_alloc_retries,
        device_free_bytes=ev.device_free_bytes,
        snapshot_path=ev.snapshot_path,
    )


DETECTOR = Detector(
    kind=FindingKind.OOM,
    defaults=OomConfig(),
    raise_after=1,
    clear_after=None,  # it happened: raised once, at once, with nothing to clear
    per_tick=detect,
    advice="spike",
)
