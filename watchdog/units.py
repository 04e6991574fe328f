"""Units, and how every number vramwatch prints reads: one module, one style.

- memory on a card: GiB with one decimal, as people read nvidia-smi in their heads (`gib`: "19.8");
- allocator-sized amounts (a request, a cache): two decimals of GiB, or MiB under one GiB (`size`);
- rates: decimal units as people quote disks, precision by size ("152 MB/s", "3.1 MB/s", "48 kB/s"), with
  an explicit sign for a trend that may go either way (`rate(..., signed=True)`: "+152 MB/s");
- durations: rounded the way a person says them ("40 s", "2 min", "1 h 5 min");
- a GPU: its NVML index, as nvidia-smi shows it, plus the UUID's tail for a MIG instance (which shares its
  parent's index): "0" or "0/1a2b3c4d" as the metrics' `gpu` label, "GPU 0" in a sentence.

Unknown values read "?". JSON output carries bytes and seconds, never these strings.
"""

from __future__ import annotations

from .model import GpuSample

MIB = 1 << 20
GIB = 1 << 30


def gib(n: float | None) -> str:
    """Bytes as GiB with one decimal ("19.8"), the unit left to the sentence; "?" when unknown."""
    return "?" if n is None else f"{n / GIB:.1f}"


def size(n: float | None) -> str:
    """An allocator-sized amount with its unit: "1.76 GiB", "66.0 MiB"; "?" when unknown."""
    if n is None:
        return "?"
    if abs(n) >= GIB:
        return f"{n / GIB:.2f} GiB"
    return f"{n / MIB:.1f} MiB"


def rate(bytes_per_second: float | None, *, signed: bool = False) -> str:
    """A growth rate: "152 MB/s", "3.1 MB/s", "48 kB/s" (decimal units); `signed` adds "+" to a rise."""
    if bytes_per_second is None:
        return "?"
    sign = "+" if signed and bytes_per_second >= 0 else ""
    mb = bytes_per_second / 1e6
    if abs(mb) >= 10:
        return f"{sign}{mb:.0f} MB/s"
    if abs(mb) >= 0.1:
        return f"{sign}{mb:.1f} MB/s"
    return f"{sign}{bytes_per_second / 1e3:.0f} kB/s"


def duration(seconds: float | None) -> str:
    """A duration rounded the way a person says it: "40 s", "2 min", "1 h 5 min"; "?" when unknown."""
    if seconds is None:
        return "?"
    s = max(0.0, seconds)
    if s < 90:
        return f"{s:.0f} s"
    minutes = round(s / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, rest = divmod(minutes, 60)
    return f"{hours} h {rest} min" if rest else f"{hours} h"


def gpu_index_label(gpu: GpuSample) -> str:
    """The GPU as the metrics' `gpu` label names it: the NVML index ("0"), or `<index>/<uuid tail>` for a
    MIG instance, which shares its parent's index ("0/1a2b3c4d")."""
    return f"{gpu.index}/{gpu.uuid[-8:]}" if gpu.parent_uuid else str(gpu.index)


def gpu_label(gpu: GpuSample) -> str:
    """The GPU in a sentence: "GPU 0" (the index users see in nvidia-smi), "GPU 0/1a2b3c4d" for MIG."""
    return f"GPU {gpu_index_label(gpu)}"
