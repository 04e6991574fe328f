"""The wire format between the in-process agent and whoever listens (the daemon, or `vramwatch run`).

One JSON object per Unix datagram, small (a few hundred bytes a device) and versioned by `"v"`:

- agent -> listener: `hello` (once CUDA is up), `stats` (every second), `oom` (the allocator's state at the
  moment of an out-of-memory error);
- listener -> agent: `pressure` (save a checkpoint, free the cache), sent to the address the agent's
  datagrams came from.

The pid in a message is a claim; the listener checks it against the kernel's SCM_CREDENTIALS.

This module runs inside the trainer's interpreter, possibly loaded by path without the rest of vramwatch
installed there: it imports nothing but the standard library.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

VERSION = 1
MAX_DATAGRAM_BYTES = 65536  # listeners read this much; agents keep far below it

# Environment variables the runner sets for every Python process it starts (and users may set by hand).
ENV_AGENT = "VRAMWATCH_AGENT"  # "1": sitecustomize starts the agent
ENV_SOCKET = "VRAMWATCH_SOCKET"  # listener socket path(s), os.pathsep-separated; "@name" is abstract
ENV_SNAPSHOT_DIR = "VRAMWATCH_SNAPSHOT_DIR"  # record allocator history and dump a snapshot on OOM here
ENV_SNAPSHOT_MAX_ENTRIES = "VRAMWATCH_SNAPSHOT_MAX_ENTRIES"
ENV_EMPTY_CACHE_ON_PRESSURE = "VRAMWATCH_EMPTY_CACHE_ON_PRESSURE"
ENV_INTERVAL = "VRAMWATCH_AGENT_INTERVAL"  # seconds between samples (default 1)
ENV_SIGNAL = "VRAMWATCH_AGENT_SIGNAL"  # "0": do not install the SIGUSR2 pressure handler
ENV_MEMINFO = "VRAMWATCH_AGENT_MEMINFO"  # "0": do not call cudaMemGetInfo each sample

SYSTEM_SOCKET = Path("/run/vramwatch/agent.sock")

# The allocator statistics reported per device, as (message field, nested memory_stats path).
STAT_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("allocated_bytes", ("allocated_bytes", "all", "current")),
    ("reserved_bytes", ("reserved_bytes", "all", "current")),
    ("active_bytes", ("active_bytes", "all", "current")),
    ("inactive_split_bytes", ("inactive_split_bytes", "all", "current")),
    ("requested_bytes", ("requested_bytes", "all", "current")),  # torch >= 2.1
    ("num_alloc_retries", ("num_alloc_retries",)),
    ("num_ooms", ("num_ooms",)),
)


class ProtocolError(ValueError):
    """A datagram that is not a well-formed message of a version this side understands."""


def default_socket_path(environ: Mapping[str, str] | None = None, *, system: bool = False) -> Path:
    """Where a listener binds: `$VRAMWATCH_SOCKET` (its first entry), else the system path for a system
    service, else `$XDG_RUNTIME_DIR/vramwatch/agent.sock`, else the system path."""
    env = os.environ if environ is None else environ
    configured = [p for p in env.get(ENV_SOCKET, "").split(os.pathsep) if p]
    if configured:
        return Path(configured[0])
    if system:
        return SYSTEM_SOCKET
    xdg = env.get("XDG_RUNTIME_DIR")
    return Path(xdg) / "vramwatch" / "agent.sock" if xdg else SYSTEM_SOCKET


def agent_targets(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Where an agent sends: every entry of `$VRAMWATCH_SOCKET`, else the per-user and the system path
    (a datagram to a path nobody listens on costs one failed syscall)."""
    env = os.environ if environ is None else environ
    configured = tuple(p for p in env.get(ENV_SOCKET, "").split(os.pathsep) if p)
    if configured:
        return configured
    xdg = env.get("XDG_RUNTIME_DIR")
    candidates = [str(Path(xdg) / "vramwatch" / "agent.sock")] if xdg else []
    candidates.append(str(SYSTEM_SOCKET))
    return tuple(dict.fromkeys(candidates))


def socket_address(target: str) -> str:
    """A target as `socket.sendto` wants it: `@name` is a Linux abstract socket, anything else a path."""
    return "\0" + target[1:] if target.startswith("@") else target


def encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()


def decode(data: bytes) -> dict[str, Any]:
    """Parse one datagram; raises ProtocolError for anything but a v1 object with a known type."""
    try:
        message = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("not a JSON object")
    if message.get("v") != VERSION:
        raise ProtocolError(f"unsupported version {message.get('v')!r}")
    if message.get("type") not in {"hello", "stats", "oom", "pressure"}:
        raise ProtocolError(f"unknown type {message.get('type')!r}")
    return message


def read_stat(stats: Mapping[str, Any], path: Sequence[str]) -> int | None:
    """One figure from `torch.cuda.memory_stats_as_nested_dict()` (or the flat `memory_stats()`), None
    when this torch version does not have it."""
    node: Any = stats
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            node = stats.get(".".join(path)) if isinstance(stats, Mapping) else None
            break
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, int):
        return None
    return node


def device_entry(
    device: int,
    stats: Mapping[str, Any],
    *,
    cuda_uuid: str | None = None,
    total_bytes: int | None = None,
    free_bytes: int | None = None,
) -> dict[str, Any]:
    """The per-device part of a `stats` message."""
    entry: dict[str, Any] = {"device": device}
    for name, path in STAT_FIELDS:
        entry[name] = read_stat(stats, path)
    entry["cuda_uuid"] = cuda_uuid
    entry["total_bytes"] = total_bytes
    entry["free_bytes"] = free_bytes
    return entry


def hello_message(
    *, pid: int, ppid: int, t: float, torch_version: str | None, agent_version: str, python: str, signal: bool
) -> dict[str, Any]:
    """First message of a process once CUDA is up: who it is (never its command line)."""
    return {
        "v": VERSION,
        "type": "hello",
        "pid": pid,
        "ppid": ppid,
        "t": t,
        "torch": torch_version,
        "agent": agent_version,
        "python": python,
        "signal": signal,
    }


def stats_message(
    *,
    pid: int,
    seq: int,
    t: float,
    torch_version: str | None,
    devices: Sequence[Mapping[str, Any]],
    sample_seconds: float,
    dropped: int,
    signal: bool,
) -> dict[str, Any]:
    """One sample of every device this process has allocated on; `sample_seconds` is what reading the
    allocator cost the agent this time (its own overhead, reported so nobody has to guess it)."""
    return {
        "v": VERSION,
        "type": "stats",
        "pid": pid,
        "seq": seq,
        "t": t,
        "torch": torch_version,
        "devices": list(devices),
        "sample_seconds": sample_seconds,
        "dropped": dropped,
        "signal": signal,
    }


def oom_message(
    *,
    pid: int,
    t: float,
    torch_version: str | None,
    device: int,
    alloc_bytes: int | None,
    capacity_bytes: int | None,
    device_free_bytes: int | None,
    stats: Mapping[str, Any],
    snapshot: str | None,
    observed: bool,
) -> dict[str, Any]:
    """An out-of-memory error with the allocator state at that moment.

    `observed` is True when it came from the allocator's OOM observer (exact, before any memory was
    released while unwinding); False when the agent only saw `num_ooms` rise at its next sample.
    `alloc_bytes` is the size of the request that failed (the allocator's stats follow, under their own
    names); `capacity_bytes` is the device's total memory, or the per-process limit when one is set.
    """
    message: dict[str, Any] = {
        "v": VERSION,
        "type": "oom",
        "pid": pid,
        "t": t,
        "torch": torch_version,
        "device": device,
        "alloc_bytes": alloc_bytes,
        "capacity_bytes": capacity_bytes,
        "device_free_bytes": device_free_bytes,
        "snapshot": snapshot,
        "observed": observed,
    }
    for name, path in STAT_FIELDS:
        message[name] = read_stat(stats, path)
    return message


def pressure_message(*, level: str, reason: str | None) -> dict[str, Any]:
    """Listener -> agent: memory is about to run out; `level` is "warning" or "critical"."""
    return {"v": VERSION, "type": "pressure", "level": level, "reason": reason}
