"""Fragmentation of PyTorch's caching allocator, and leak versus caching, from the agent's figures.

NVML sees a trainer's *reserved* memory: what the caching allocator took from CUDA. Inside it, the agent
reports *allocated* (what tensors use) and *inactive split* bytes (free pieces of segments that also hold
live tensors: cached, yet unusable for a request larger than the piece, and not returnable to CUDA by
`empty_cache()`). Reading them together:

- allocated rises: tensors are being kept alive, a **leak** (or a growing working set);
- reserved rises while allocated stays flat: **caching** (the pool grew to the peak of a step), or
  fragmentation when the cached memory comes in pieces that do not fit the next request;
- **fragmentation** proper: much of the card is reserved but unallocated and most of that sits in split
  blocks (whole cached segments would be reusable caching). A warning when the split blocks stay
  (the minimum over several samples, so a sample taken mid-step does not count) and the pool fills most
  of what the process can use; critical when `num_alloc_retries` or `num_ooms` rose (a cudaMalloc failed,
  the allocator freed its whole cache and retried: slow steps, the last stop before an OOM) and the
  unallocated memory is still mostly split blocks. PyTorch's own OOM message gives the remedy:
  `PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`. With expandable segments PyTorch does not count
  inactive split bytes at all, so the detector stays silent there: fragmentation is what they cure.

`total_bytes` is the memory the process can use: the card's total when it is alone, or (better) its
reserved memory plus the device's free memory when others hold part of the card. Pure functions: no I/O.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from ..model import Finding, FindingKind, ProcessKey, Severity, TorchStats
from ..units import size
from ._context import Tick
from ._settings import at_least, fraction, non_negative, setting, share, validate
from .base import Detector

MIB = 1 << 20

GrowthClass = Literal["leak", "caching", "unknown"]


@dataclass(frozen=True, slots=True)
class FragmentationConfig:
    """Thresholds of `detect_fragmentation`; shares are of `total_bytes` unless named otherwise.

    In `[detectors]` each key takes the prefix `fragmentation_` (`fragmentation_window_seconds = 60`).
    """

    window_seconds: float = setting(60.0, non_negative)  # how far back a rise of retries / OOMs counts
    sustain_seconds: float = setting(3.0, non_negative)  # the split blocks must stay over this long...
    min_samples: int = setting(3, at_least(1))  # ...across at least this many samples
    min_slack_bytes: int = setting(256 * MIB, non_negative)  # reserved - allocated, in bytes...
    min_slack_share: float = setting(0.10, fraction)  # ...and as a share of what the process can use
    min_split_share: float = setting(0.05, fraction)  # inactive split bytes, at every sample of the sustain period
    min_split_of_slack: float = setting(0.5, share)  # the unallocated memory is mostly split blocks, not whole segments
    min_reserved_share: float = setting(
        0.5, share
    )  # the pool fills at least this much: fragmentation only matters near full

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True, slots=True)
class GrowthConfig:
    """Thresholds of `classify_growth`: the floor of allocated memory must rise by `min_rise_bytes` over the
    window, and by at least `min_part_share` of that in each of `parts` equal parts of it."""

    min_samples: int = 5
    min_span_seconds: float = 10.0
    min_rise_bytes: int = 64 * MIB
    parts: int = 3
    min_part_share: float = 0.10


def _floor(values: Sequence[float]) -> list[float]:
    """Suffix minimum: at each sample, the least held from then on (spikes and mid-step samples vanish)."""
    out = list(values)
    for i in range(len(out) - 2, -1, -1):
        out[i] = min(out[i], out[i + 1])
    return out


def _floor_rise(points: list[tuple[float, float]], config: GrowthConfig, *, sustained: bool) -> float:
    """How much the floor rose over the window; with `sustained`, 0 unless it rose in every part."""
    if len(points) < config.min_samples or points[-1][0] - points[0][0] < config.min_span_seconds:
        return 0.0
    times = [t for t, _ in points]
    floor = _floor([v for _, v in points])
    total = floor[-1] - floor[0]
    if total < config.min_rise_bytes or not sustained:
        return max(0.0, total)
    t0, span = times[0], times[-1] - times[0]
    edges = [floor[bisect_left(times, t0 + k * span / config.parts)] for k in range(config.parts)] + [floor[-1]]
    # Warm-up (first step, optimizer state, first validation) is one bump: it fails this test; a leak
    # keeps taking memory in every part of the window.
    if any(b - a < config.min_part_share * total for a, b in itertools.pairwise(edges)):
        return 0.0
    return total


def classify_growth(
    times: Sequence[float],
    allocated: Sequence[int | None],
    reserved: Sequence[int | None],
    config: GrowthConfig = GrowthConfig(),
) -> GrowthClass:
    """ "leak" when allocated memory keeps rising, "caching" when only reserved memory rose, else "unknown".

    Time-ordered samples of one process on one device; None values are skipped. Allocated memory is read
    through its floor (see `_floor`): a sample taken mid-step is high, the floor is not. "unknown" covers
    too short a window and nothing growing.
    """
    if not (len(times) == len(allocated) == len(reserved)):
        raise ValueError("times, allocated and reserved must have the same length")
    alloc = [(t, float(a)) for t, a in zip(times, allocated, strict=True) if a is not None]
    pool = [(t, float(r)) for t, r in zip(times, reserved, strict=True) if r is not None]
    if _floor_rise(alloc, config, sustained=True) > 0:
        return "leak"
    if _floor_rise(pool, config, sustained=False) >= config.min_rise_bytes:
        return "caching"
    return "unknown"


def _rise(values: Sequence[int | None]) -> int:
    known = [v for v in values if v is not None]
    return known[-1] - known[0] if len(known) >= 2 else 0


def _sustain_set(times: Sequence[float], config: FragmentationConfig) -> int | None:
    """How many latest samples cover the sustain period (None: not enough history yet)."""
    now = times[-1]
    for k in range(1, len(times) + 1):
        if now - times[-k] >= config.sustain_seconds:
            return k if k >= config.min_samples else None
    return None


def detect_fragmentation(
    stats_window: Sequence[TorchStats],
    times: Sequence[float],
    total_bytes: int,
    config: FragmentationConfig = FragmentationConfig(),
    *,
    gpu_uuid: str | None = None,
    process: ProcessKey | None = None,
    process_name: str | None = None,
) -> Finding | None:
    """A "fragmentation" finding for one process on one device, or None.

    `stats_window` and `times` (monotonic seconds) are time-ordered samples of that pid and device;
    `total_bytes` is what the process can use (see the module docstring).
    """
    if len(stats_window) != len(times):
        raise ValueError("stats_window and times must have the same length")
    if not stats_window or total_bytes <= 0:
        return None
    latest = stats_window[-1]
    if latest.allocated_bytes is None or latest.reserved_bytes is None:
        return None
    now = times[-1]
    slack = max(0, latest.reserved_bytes - latest.allocated_bytes)
    if slack < config.min_slack_bytes or slack < config.min_slack_share * total_bytes:
        return None

    recent = [s for s, t in zip(stats_window, times, strict=True) if t >= now - config.window_seconds]
    retries = _rise([s.num_alloc_retries for s in recent])
    ooms = _rise([s.num_ooms for s in recent])
    split = latest.inactive_split_bytes

    k = _sustain_set(times, config)
    sustained_split: int | None = None
    if k is not None:
        splits = [s.inactive_split_bytes for s in stats_window[-k:]]
        sustained_split = None if any(v is None for v in splits) else min(v for v in splits if v is not None)
    # Unallocated memory in whole cached segments is caching (reusable, releasable); in split blocks it is
    # fragmentation. After an OOM unwinds, freed tensors leave whole segments: that alone is no finding.
    split_dominant = split is not None and split >= config.min_split_of_slack * slack
    split_held = (
        split_dominant and sustained_split is not None and sustained_split >= config.min_split_share * total_bytes
    )
    near_full = latest.reserved_bytes >= config.min_reserved_share * total_bytes

    if (retries > 0 or ooms > 0) and split_dominant:
        severity = Severity.CRITICAL
    elif split_held and near_full:
        severity = Severity.WARNING
    else:
        return None

    share = slack / total_bytes
    parts = [
        f"PyTorch holds {size(slack)} reserved but unallocated ({share:.0%} of the {size(total_bytes)} it can use)"
    ]
    if split is not None and split > 0:
        parts.append(f"{size(split)} of it in split blocks that larger requests cannot use")
    if retries > 0:
        parts.append(
            f"the allocator had to free its cache and retry {retries} time(s) in the last {config.window_seconds:.0f} s"
        )
    if ooms > 0:
        parts.append(f"{ooms} out-of-memory error(s) in the last {config.window_seconds:.0f} s")
    return Finding(
        kind=FindingKind.FRAGMENTATION,
        severity=severity,
        gpu_uuid=gpu_uuid,
        message="; ".join(parts),
        t=now,
        process=process if process is not None else ProcessKey(latest.pid, None),
        process_name=process_name,
        confidence=min(1.0, split / slack) if split is not None and slack else None,
        numbers={
            "device": latest.device,
            "allocated_bytes": latest.allocated_bytes,
            "reserved_bytes": latest.reserved_bytes,
            "reserved_unallocated_bytes": slack,
            "inactive_split_bytes": split,
            "sustained_inactive_split_bytes": sustained_split,
            "total_bytes": total_bytes,
            "reserved_unallocated_share": round(share, 4),
            "alloc_retries_in_window": retries,
            "ooms_in_window": ooms,
        },
    )


def detect(tick: Tick, own: FragmentationConfig) -> Iterator[Finding]:
    """Agent data only: one fragmentation check per (pid, device) that reported this tick.

    What the process can use is its reserved memory plus the card's free memory (not the card's total: the
    other tenants' memory is not this process's to fragment).
    """
    snap = tick.snapshot
    if not snap.torch:
        return  # no agent reported: no table of every process to build
    by_pid = {(p.pid, p.gpu_uuid): p for p in snap.processes}
    for ts in snap.torch:
        gpu = snap.gpu(ts.gpu_uuid) if ts.gpu_uuid else None
        if gpu is None or gpu.free_bytes is None or ts.reserved_bytes is None:
            continue
        ring = tick.history.torch.get((ts.pid, ts.device))
        if not ring:
            continue
        proc = by_pid.get((ts.pid, gpu.uuid))
        finding = detect_fragmentation(
            [s for _, s in ring],
            [t for t, _ in ring],
            ts.reserved_bytes + gpu.free_bytes,
            own,
            gpu_uuid=gpu.uuid,
            process=proc.key if proc else None,
            process_name=proc.meta.name if proc else None,
        )
        if finding is not None:
            yield finding


DETECTOR = Detector(
    kind=FindingKind.FRAGMENTATION,
    defaults=FragmentationConfig(),
    # The split blocks must stay for a few samples, and a pool that stays fragmented is one condition.
    raise_after=5,
    clear_after=30,
    per_tick=detect,
    advice="fragmentation",
    key_prefix="fragmentation_",  # `window_seconds` alone would be ambiguous in [detectors]
)
