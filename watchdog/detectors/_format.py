"""How findings read: sizes in GiB with one decimal, rates in MB/s, durations rounded for humans."""

from __future__ import annotations

from ..model import GpuSample, ProcessKey, ProcessMeta

GIB = float(1 << 30)


def gib(value: float | None) -> str:
    """Bytes as GiB with one decimal ("19.8"); "?" when unknown."""
    return "?" if value is None else f"{value / GIB:.1f}"


def rate(bytes_per_second: float) -> str:
    """A growth rate as people quote disks: "152 MB/s", "3.1 MB/s", "48 kB/s" (decimal units)."""
    mb = bytes_per_second / 1e6
    if abs(mb) >= 10:
        return f"{mb:.0f} MB/s"
    if abs(mb) >= 0.1:
        return f"{mb:.1f} MB/s"
    return f"{bytes_per_second / 1e3:.0f} kB/s"


def duration(seconds: float) -> str:
    """A duration rounded the way a person says it: "40 s", "2 min", "1 h 5 min"."""
    s = max(0.0, seconds)
    if s < 90:
        return f"{s:.0f} s"
    minutes = round(s / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, rest = divmod(minutes, 60)
    return f"{hours} h {rest} min" if rest else f"{hours} h"


def gpu_label(gpu: GpuSample) -> str:
    """ "GPU 0" (the index users see in nvidia-smi); MIG instances keep their UUID's tail."""
    if gpu.parent_uuid is not None:
        return f"GPU {gpu.index} (MIG {gpu.uuid[-8:]})"
    return f"GPU {gpu.index}"


def process_label(meta: ProcessMeta | None, key: ProcessKey, *, tree: bool = False, members: int = 1) -> str:
    """ "python (pid 4242, alice)"; a launcher tree names its root: "accelerate (pid 4200, alice, 2 processes)"."""
    if meta is None:
        return f"pid {key.pid}"
    if tree and meta.root_pid is not None and meta.root_pid != meta.pid:
        name = meta.root_name or "launcher"
    else:
        name = meta.name or "process"
    who = [f"pid {key.pid}"]
    if meta.user:
        who.append(meta.user)
    if members > 1:
        who.append(f"{members} processes")
    return f"{name} ({', '.join(who)})"


def process_name(meta: ProcessMeta | None, *, tree: bool = False) -> str | None:
    if meta is None:
        return None
    if tree and meta.root_pid is not None and meta.root_pid != meta.pid:
        return meta.root_name or meta.name
    return meta.name
