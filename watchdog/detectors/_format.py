"""How findings read: the shared units (`vramwatch.units`) and how a process is named in a message."""

from __future__ import annotations

from ..model import ProcessKey, ProcessMeta
from ..units import duration, gib, gpu_label, rate

__all__ = ["duration", "gib", "gpu_label", "process_label", "process_name", "rate"]


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
