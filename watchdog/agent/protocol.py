"""The wire format between the in-process agent and whoever listens (the daemon, or `vramwatch run`).

One JSON object per Unix datagram, small (a few hundred bytes a device) and versioned by `"v"`:

- agent -> listener: `hello` (once CUDA is up), `stats` (every second), `oom` (the allocator's state at the
  moment of an out-of-memory error);
- listener -> agent: `pressure` (save a checkpoint, free the cache), sent to the address the agent's
  datagrams came from.

Both ends use this one module: the agent builds with the `*_message` functions, the listener reads with the
pure `parse_report` (and the agent reads a notice with `parse_pressure`), so a field is named in one place.
The pid in a report is a claim; the listener checks it against the kernel's SCM_CREDENTIALS
(`credentials`) before it believes it.

This module runs inside the trainer's interpreter, possibly loaded by path without the rest of vramwatch
installed there: it imports nothing but the standard library.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, cast

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
ENV_STEPS = "VRAMWATCH_AGENT_STEPS"  # "1": count optimizer steps and report each one's peak (resets peak stats)

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


REPORT_TYPES = frozenset({"hello", "stats", "oom", "steps"})  # agent -> listener
MESSAGE_TYPES = REPORT_TYPES | {"pressure"}  # and listener -> agent
MAX_DEVICES = 64  # a stats message listing more devices than a host can have is refused
MAX_STEP_ENTRIES = 256  # a steps message carries at most this many entries (the agent merges beyond it)
#: The fields of one entry of a `steps` message, in order (a list, not an object: one number a field, ~100 bytes).
STEP_FIELDS = (
    "first_step",
    "last_step",
    "t",
    "seconds",
    "peak_allocated_bytes",
    "peak_reserved_bytes",
    "allocated_bytes",
    "reserved_bytes",
    "inactive_split_bytes",
)

UCRED = struct.Struct("iII")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}
CREDENTIALS_SPACE = socket.CMSG_SPACE(UCRED.size)  # ancillary buffer for recvmsg on a SO_PASSCRED socket


class AllocatorFigures(TypedDict):
    """The `STAT_FIELDS` of one device as read from a datagram; None where torch or the message lacks one."""

    allocated_bytes: int | None
    reserved_bytes: int | None
    active_bytes: int | None
    inactive_split_bytes: int | None
    requested_bytes: int | None
    num_alloc_retries: int | None
    num_ooms: int | None


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
    if message.get("type") not in MESSAGE_TYPES:
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
    *,
    pid: int,
    ppid: int,
    t: float,
    torch_version: str | None,
    agent_version: str,
    python: str,
    signal: bool,
    steps: bool = False,
) -> dict[str, Any]:
    """First message of a process once CUDA is up: who it is (never its command line), and whether it
    counts optimizer steps."""
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
        "steps": steps,
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
    step_errors: int | None = None,
) -> dict[str, Any]:
    """One sample of every device this process has allocated on; `sample_seconds` is what reading the
    allocator cost the agent this time (its own overhead, reported so nobody has to guess it).
    `step_errors`: exceptions the step hook swallowed so far (None when steps are not counted); it rides on
    every sample because a hook that always fails sends no `steps` message at all."""
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
        "step_errors": step_errors,
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


def steps_message(*, pid: int, t: float, device: int, entries: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Optimizer steps completed since the last message, each entry `STEP_FIELDS` in order.

    An entry covers the interval since the previous counted step ended: the forward and backward passes,
    the optimizer step, and whatever the trainer did in between (sample images, validation, a save). Its
    peaks are PyTorch's `max_memory_allocated/reserved` over that interval (the agent resets them at each
    step). An entry with `first_step < last_step` merges several steps (more than fit in one message).
    """
    return {"v": VERSION, "type": "steps", "pid": pid, "t": t, "device": device, "steps": [list(e) for e in entries]}


def pressure_message(*, level: str, reason: str | None) -> dict[str, Any]:
    """Listener -> agent: memory is about to run out; `level` is "warning" or "critical"."""
    return {"v": VERSION, "type": "pressure", "level": level, "reason": reason}


# -- reading --------------------------------------------------------------------------------------------


def credentials(ancdata: Sequence[tuple[int, int, bytes]]) -> tuple[int, int] | None:
    """(pid, uid) of the sender from SCM_CREDENTIALS ancillary data, which the kernel writes; None if absent."""
    for level, kind, blob in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(blob) >= UCRED.size:
            pid, uid, _gid = UCRED.unpack_from(blob)
            return int(pid), int(uid)
    return None


@dataclass(frozen=True, slots=True)
class DeviceReport:
    """One device of a `stats` message: the allocator figures (`STAT_FIELDS`, None when unknown) and the
    device as CUDA saw it."""

    device: int
    figures: AllocatorFigures
    cuda_uuid: str | None = None  # CUDA's uuid of the device, without NVML's "GPU-" prefix
    total_bytes: int | None = None  # the device's total memory
    free_bytes: int | None = None  # free on the device (cudaMemGetInfo) at the sample


@dataclass(frozen=True, slots=True)
class OomReport:
    """An `oom` message: the request that failed and the allocator's figures at that moment.

    `observed` is True when the allocator's OOM observer sent it (state at the failed request); False when
    the agent only saw `num_ooms` rise at its next sample (state of that moment).
    """

    device: int
    alloc_bytes: int | None  # the size of the request that failed
    capacity_bytes: int | None  # the device's total, or the per-process limit when one is set
    device_free_bytes: int | None
    figures: AllocatorFigures
    snapshot: str | None  # where the agent dumped a memory snapshot
    observed: bool


@dataclass(frozen=True, slots=True)
class StepEntry:
    """One entry of a `steps` message (see `steps_message`)."""

    first_step: int
    last_step: int
    t: float
    seconds: float
    peak_allocated_bytes: int
    peak_reserved_bytes: int
    allocated_bytes: int
    reserved_bytes: int
    inactive_split_bytes: int


@dataclass(frozen=True, slots=True)
class Report:
    """One agent datagram, checked field by field: what it says, not yet whether the sender is who it claims."""

    kind: str  # hello, stats, oom or steps
    claimed_pid: int  # the pid the message names; only SCM_CREDENTIALS can confirm it
    torch_version: str | None = None
    devices: tuple[DeviceReport, ...] = ()  # stats
    oom: OomReport | None = None  # oom
    sample_seconds: float | None = None  # what reading the allocator cost the agent for this sample
    dropped: int | None = None  # datagrams the agent could not deliver so far
    signal: bool | None = None  # the agent handles SIGUSR2 as a pressure notice; None when not said
    device: int | None = None  # steps: the device whose peaks the entries carry
    steps: tuple[StepEntry, ...] = ()  # steps
    step_errors: int | None = None  # stats: exceptions the step hook swallowed so far; None when not said
    counts_steps: bool | None = None  # hello: the agent counts optimizer steps; None when not said


@dataclass(frozen=True, slots=True)
class Pressure:
    """A `pressure` notice as the agent reads it."""

    level: str  # "warning" or "critical"
    reason: str | None


def _count(message: Mapping[str, Any], key: str) -> int | None:
    """A byte count or counter; anything that cannot be one (negative, boolean, float) is unknown."""
    value = message.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _text(message: Mapping[str, Any], key: str) -> str | None:
    value = message.get(key)
    return value if isinstance(value, str) and len(value) <= 200 else None


def _figures(message: Mapping[str, Any]) -> AllocatorFigures:
    # AllocatorFigures names exactly the STAT_FIELDS (a test pins it), so the comprehension builds one.
    return cast("AllocatorFigures", {name: _count(message, name) for name, _ in STAT_FIELDS})


def _device_report(entry: object) -> DeviceReport:
    if not isinstance(entry, dict):
        raise ProtocolError("a device entry is not an object")
    device = _count(entry, "device")
    if device is None:
        raise ProtocolError("a device entry has no device index")
    return DeviceReport(
        device=device,
        figures=_figures(entry),
        cuda_uuid=_text(entry, "cuda_uuid"),
        total_bytes=_count(entry, "total_bytes"),
        free_bytes=_count(entry, "free_bytes"),
    )


def _oom_report(message: Mapping[str, Any]) -> OomReport:
    device = _count(message, "device")
    if device is None:
        raise ProtocolError("an oom message has no device index")
    return OomReport(
        device=device,
        alloc_bytes=_count(message, "alloc_bytes"),
        capacity_bytes=_count(message, "capacity_bytes"),
        device_free_bytes=_count(message, "device_free_bytes"),
        figures=_figures(message),
        snapshot=_text(message, "snapshot"),
        observed=message.get("observed") is True,
    )


def _step_entry(entry: object) -> StepEntry:
    if not isinstance(entry, list) or len(entry) != len(STEP_FIELDS):
        raise ProtocolError(f"a step entry is not a list of {len(STEP_FIELDS)} numbers")
    if any(isinstance(x, bool) or not isinstance(x, int | float) or x < 0 for x in entry):
        raise ProtocolError("a step entry holds something other than non-negative numbers")
    first, last, t, seconds, *counts = entry
    if not all(isinstance(x, int) for x in (first, last, *counts)) or last < first:
        raise ProtocolError("a step entry's steps and bytes are not integers in order")
    return StepEntry(int(first), int(last), float(t), float(seconds), *(int(c) for c in counts))


def parse_report(data: bytes) -> Report:
    """Read one agent -> listener datagram; raises ProtocolError for anything but a well-formed report.

    Pure: no socket, no clock. Figures that cannot be byte counts become None rather than refusing the
    whole report; a report without a pid, a stats message whose devices are not a list of entries with a
    device index, or an oom message without one is refused.
    """
    message = decode(data)
    kind = str(message["type"])
    if kind not in REPORT_TYPES:
        raise ProtocolError(f"a {kind} message is not a report")
    pid = _count(message, "pid")
    if pid is None:
        raise ProtocolError("a report without a pid")
    devices: tuple[DeviceReport, ...] = ()
    oom = None
    sample_seconds = None
    if kind == "stats":
        entries = message.get("devices")
        if not isinstance(entries, list) or len(entries) > MAX_DEVICES:
            raise ProtocolError(f"devices is not a list of at most {MAX_DEVICES} entries")
        devices = tuple(_device_report(entry) for entry in entries)
        cost = message.get("sample_seconds")
        if isinstance(cost, int | float) and not isinstance(cost, bool):
            sample_seconds = float(cost)
    elif kind == "oom":
        oom = _oom_report(message)
    steps: tuple[StepEntry, ...] = ()
    device = None
    if kind == "steps":
        entries = message.get("steps")
        device = _count(message, "device")
        if device is None or not isinstance(entries, list) or len(entries) > MAX_STEP_ENTRIES:
            raise ProtocolError(f"a steps message needs a device and at most {MAX_STEP_ENTRIES} entries")
        steps = tuple(_step_entry(entry) for entry in entries)
    signal = message.get("signal")
    counts_steps = message.get("steps") if kind == "hello" else None
    return Report(
        kind=kind,
        claimed_pid=pid,
        torch_version=_text(message, "torch"),
        devices=devices,
        oom=oom,
        sample_seconds=sample_seconds,
        dropped=_count(message, "dropped") if kind == "stats" else None,
        signal=signal if isinstance(signal, bool) else None,
        device=device,
        steps=steps,
        step_errors=_count(message, "step_errors") if kind == "stats" else None,
        counts_steps=counts_steps if isinstance(counts_steps, bool) else None,
    )


def parse_pressure(data: bytes) -> Pressure | None:
    """Read one listener -> agent datagram: the notice, or None for a well-formed message of another type;
    raises ProtocolError for anything malformed. An unknown level reads as "warning"."""
    message = decode(data)
    if message["type"] != "pressure":
        return None
    level = message.get("level")
    reason = message.get("reason")
    return Pressure(
        level=level if level in {"warning", "critical"} else "warning",
        reason=reason if isinstance(reason, str) else None,
    )
