"""Trace files: what the daemon saw, one JSON object per tick, to replay later (format version 1).

A trace is JSON Lines: a header line (`{"vramwatch_trace": 1, ...}`: who recorded it, on what, at which
interval), then one line per tick with the GPUs, the processes and their metadata, and the in-process
allocator figures when the agent reported them. Users attach traces to bug reports; we keep recorded runs as
test data. `docs/trace-format.md` is the user-facing specification; this module is the single place that maps
model objects to and from that JSON (`snapshot_to_dict`, `reading_from_dict`).

Reading is forgiving: unknown keys are ignored (newer writers may add fields), and a malformed line is reported
through `on_error(lineno, message)` and skipped; only a missing file or a missing/unsupported header raises
`TraceError`. Files compressed with gzip are read transparently (detected by their magic bytes), and a `.gz`
path is written compressed. Command lines are redacted on the way out (`vramwatch.redact`), or dropped.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import zlib
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from ._version import __version__
from .errors import TraceError
from .model import GpuSample, ProcessExit, ProcessMeta, ProcessUsage, Reading, Snapshot, TorchStats
from .redact import redact_cmdline
from .typing import Backend, described

FORMAT_VERSION = 1
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_HEADER_BYTES = 1 << 20
_COMPUTE = frozenset({"compute"})
_TORCH_FIELDS = (
    "allocated_bytes",
    "reserved_bytes",
    "active_bytes",
    "inactive_split_bytes",
    "requested_bytes",
    "num_alloc_retries",
    "num_ooms",
)

OnError = Callable[[int, str], None]
PathLike = str | os.PathLike[str]


class TraceLineError(ValueError):
    """One tick line does not follow the format; the reader reports it and moves on."""


# -- objects -> JSON ---------------------------------------------------------------------------------------


def _finite(x: float | None) -> float | None:
    """JSON has no NaN or infinity (and jq rejects Python's extension): a non-finite figure is unknown."""
    return x if x is None or math.isfinite(x) else None


def _put(d: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        d[key] = value


def gpu_to_dict(g: GpuSample) -> dict[str, Any]:
    d: dict[str, Any] = {
        "index": g.index,
        "uuid": g.uuid,
        "name": g.name,
        "total_bytes": g.total_bytes,
        "used_bytes": g.used_bytes,
        "free_bytes": g.free_bytes,
    }
    _put(d, "reserved_bytes", g.reserved_bytes)
    _put(d, "pci_bus_id", g.pci_bus_id)
    _put(d, "parent_uuid", g.parent_uuid)
    if not g.up:
        d["up"] = False
    _put(d, "error", g.error)
    return d


def _process_to_dict(
    gpu_uuid: str, used_bytes: int | None, kinds: frozenset[str], m: ProcessMeta, *, cmdline: bool
) -> dict[str, Any]:
    d: dict[str, Any] = {"gpu": gpu_uuid, "pid": m.pid, "used_bytes": used_bytes}
    _put(d, "start_time", _finite(m.start_time))
    _put(d, "name", m.name)
    _put(d, "user", m.user)
    _put(d, "ppid", m.ppid)
    _put(d, "root_pid", m.root_pid)
    _put(d, "root_start_time", _finite(m.root_start_time))
    _put(d, "root_name", m.root_name)
    _put(d, "container", m.container_id)
    _put(d, "pod", m.pod_uid)
    _put(d, "status", m.status)
    if cmdline:
        # cwd only serves to resolve the command line's relative paths: it goes when the command line goes.
        _put(d, "cmdline", list(redact_cmdline(m.cmdline)) if m.cmdline is not None else None)
        _put(d, "cwd", m.cwd)
    if kinds != _COMPUTE:
        d["kinds"] = sorted(kinds)
    return d


def _torch_to_dict(s: TorchStats) -> dict[str, Any]:
    d: dict[str, Any] = {"pid": s.pid, "device": s.device}
    _put(d, "gpu", s.gpu_uuid)
    for name in _TORCH_FIELDS:
        _put(d, name, getattr(s, name))
    return d


def snapshot_to_dict(snapshot: Snapshot, *, cmdline: bool = True) -> dict[str, Any]:
    """One tick line's object; `cmdline=False` leaves command lines (and working directories) out."""
    d: dict[str, Any] = {
        "t": snapshot.t,
        "wall": snapshot.wall_time,
        "gpus": [gpu_to_dict(g) for g in snapshot.gpus],
        "processes": [
            _process_to_dict(p.gpu_uuid, p.used_bytes, p.kinds, p.meta, cmdline=cmdline) for p in snapshot.processes
        ],
    }
    if not snapshot.processes_visible:
        d["processes_visible"] = False
    if snapshot.torch:
        d["torch"] = [_torch_to_dict(s) for s in snapshot.torch]
    if snapshot.exits:
        d["exits"] = [
            {"pid": e.pid, "start_time": e.start_time, "exit_code": e.exit_code, "signal": e.signal}
            for e in snapshot.exits
        ]
    return d


def dumps(obj: Mapping[str, Any]) -> str:
    """Compact, ASCII-only JSON: undecodable argv bytes (surrogate escapes) survive as \\udcXX escapes."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


# -- JSON -> objects ---------------------------------------------------------------------------------------


def _type_error(where: str, expected: str, value: Any) -> TraceLineError:
    return TraceLineError(f"{where}: expected {expected}, got {type(value).__name__}")


def _missing(where: str, key: str) -> TraceLineError:
    return TraceLineError(f"{where}: missing {key!r}")


def _as_int(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _type_error(where, "an integer", v)
    return v


def _as_float(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _type_error(where, "a number", v)
    if not math.isfinite(v):
        raise TraceLineError(f"{where}: not a finite number")
    return float(v)


def _as_str(v: Any, where: str) -> str:
    if not isinstance(v, str):
        raise _type_error(where, "a string", v)
    return v


def _req_int(obj: Mapping[str, Any], key: str, where: str) -> int:
    if obj.get(key) is None:
        raise _missing(where, key)
    return _as_int(obj[key], f"{where}.{key}")


def _req_float(obj: Mapping[str, Any], key: str, where: str) -> float:
    if obj.get(key) is None:
        raise _missing(where, key)
    return _as_float(obj[key], f"{where}.{key}")


def _req_str(obj: Mapping[str, Any], key: str, where: str) -> str:
    if obj.get(key) is None:
        raise _missing(where, key)
    return _as_str(obj[key], f"{where}.{key}")


def _int(obj: Mapping[str, Any], key: str, where: str) -> int | None:
    v = obj.get(key)
    return None if v is None else _as_int(v, f"{where}.{key}")


def _nullable_int(obj: Mapping[str, Any], key: str, where: str) -> int | None:
    """A key that must be present but may be null (`used_bytes: null` is 'unknown')."""
    if key not in obj:
        raise _missing(where, key)
    return _int(obj, key, where)


def _float(obj: Mapping[str, Any], key: str, where: str) -> float | None:
    v = obj.get(key)
    return None if v is None else _as_float(v, f"{where}.{key}")


def _str(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    v = obj.get(key)
    return None if v is None else _as_str(v, f"{where}.{key}")


def _list(obj: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> list[Any]:
    v = obj.get(key)
    if v is None:
        if required:
            raise _missing(where, key)
        return []
    if not isinstance(v, list):
        raise _type_error(f"{where}.{key}", "a list", v)
    return v


def _obj(v: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(v, dict):
        raise _type_error(where, "an object", v)
    return v


def _strings(v: list[Any], where: str) -> tuple[str, ...]:
    if not all(isinstance(x, str) for x in v):
        raise TraceLineError(f"{where}: expected a list of strings")
    return tuple(v)


def _gpu_from_dict(obj: Mapping[str, Any], where: str) -> GpuSample:
    up = obj.get("up", True)
    if not isinstance(up, bool):
        raise _type_error(f"{where}.up", "true or false", up)
    return GpuSample(
        index=_req_int(obj, "index", where),
        uuid=_req_str(obj, "uuid", where),
        name=_req_str(obj, "name", where),
        total_bytes=_nullable_int(obj, "total_bytes", where),
        used_bytes=_nullable_int(obj, "used_bytes", where),
        free_bytes=_nullable_int(obj, "free_bytes", where),
        reserved_bytes=_int(obj, "reserved_bytes", where),
        pci_bus_id=_str(obj, "pci_bus_id", where),
        parent_uuid=_str(obj, "parent_uuid", where),
        up=up,
        error=_str(obj, "error", where),
    )


def _process_from_dict(obj: Mapping[str, Any], where: str) -> tuple[ProcessUsage, ProcessMeta]:
    pid = _req_int(obj, "pid", where)
    gpu = _req_str(obj, "gpu", where)
    kinds = frozenset(_strings(_list(obj, "kinds", where), f"{where}.kinds")) if "kinds" in obj else _COMPUTE
    cmdline = _strings(_list(obj, "cmdline", where), f"{where}.cmdline") if obj.get("cmdline") is not None else None
    meta = ProcessMeta(
        pid=pid,
        start_time=_float(obj, "start_time", where),
        name=_str(obj, "name", where),
        user=_str(obj, "user", where),
        ppid=_int(obj, "ppid", where),
        root_pid=_int(obj, "root_pid", where),
        root_name=_str(obj, "root_name", where),
        root_start_time=_float(obj, "root_start_time", where),
        container_id=_str(obj, "container", where),
        pod_uid=_str(obj, "pod", where),
        cmdline=cmdline,
        status=_str(obj, "status", where),
        cwd=_str(obj, "cwd", where),
    )
    return ProcessUsage(gpu, pid, _nullable_int(obj, "used_bytes", where), kinds), meta


def _torch_from_dict(obj: Mapping[str, Any], where: str) -> TorchStats:
    figures = {name: _int(obj, name, where) for name in _TORCH_FIELDS}
    return TorchStats(
        _req_int(obj, "pid", where), _req_int(obj, "device", where), **figures, gpu_uuid=_str(obj, "gpu", where)
    )


def tick_from_dict(obj: Any) -> tuple[Reading, bool]:
    """One tick line's object as a Reading plus its `processes_visible` flag; TraceLineError when malformed."""
    tick = _obj(obj, "line")
    t = _req_float(tick, "t", "tick")
    wall = _req_float(tick, "wall", "tick")
    visible = tick.get("processes_visible", True)
    if not isinstance(visible, bool):
        raise _type_error("tick.processes_visible", "true or false", visible)
    gpus = tuple(
        _gpu_from_dict(_obj(g, f"gpus[{i}]"), f"gpus[{i}]")
        for i, g in enumerate(_list(tick, "gpus", "tick", required=True))
    )
    usages: list[ProcessUsage] = []
    metas: dict[int, ProcessMeta] = {}
    for i, p in enumerate(_list(tick, "processes", "tick", required=True)):
        usage, meta = _process_from_dict(_obj(p, f"processes[{i}]"), f"processes[{i}]")
        usages.append(usage)
        metas.setdefault(meta.pid, meta)  # a process on two GPUs is listed twice with the same metadata
    torch = tuple(
        _torch_from_dict(_obj(s, f"torch[{i}]"), f"torch[{i}]") for i, s in enumerate(_list(tick, "torch", "tick"))
    )
    exits = tuple(
        _exit_from_dict(_obj(e, f"exits[{i}]"), f"exits[{i}]") for i, e in enumerate(_list(tick, "exits", "tick"))
    )
    reading = Reading(
        gpus=gpus, processes=tuple(usages), t=t, wall_time=wall, torch=torch, meta=tuple(metas.values()), exits=exits
    )
    return reading, visible


def _exit_from_dict(obj: Mapping[str, Any], where: str) -> ProcessExit:
    return ProcessExit(
        pid=_req_int(obj, "pid", where),
        start_time=_float(obj, "start_time", where),
        exit_code=_nullable_int(obj, "exit_code", where),
        signal=_nullable_int(obj, "signal", where),
    )


def reading_from_dict(obj: Any) -> Reading:
    """One tick line's object as the Reading a replay backend returns; TraceLineError when malformed."""
    return tick_from_dict(obj)[0]


# -- header ------------------------------------------------------------------------------------------------

_HEADER_KEYS = ("host", "backend", "driver_version", "nvml_version")


def make_header(describe: Mapping[str, str], interval_seconds: float, gpus: Sequence[GpuSample] = ()) -> dict[str, Any]:
    """The header line's object: format version, who recorded it, the backend's own description, the GPUs."""
    header: dict[str, Any] = {
        "vramwatch_trace": FORMAT_VERSION,
        "version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    for key in _HEADER_KEYS:
        header[key] = describe.get(key)
    header["interval_seconds"] = interval_seconds
    # Anything else the backend says about itself (a scenario, a seed) travels along; readers ignore it.
    for key, value in describe.items():
        header.setdefault(key, value)
    if gpus:
        header["gpus"] = [_header_gpu(g) for g in gpus]
    return header


def _header_gpu(g: GpuSample) -> dict[str, Any]:
    return {"index": g.index, "uuid": g.uuid, "name": g.name, "total_bytes": g.total_bytes}


def _check_header(obj: Any, source: str) -> dict[str, Any]:
    if not isinstance(obj, dict) or "vramwatch_trace" not in obj:
        raise TraceError(f"{source}: not a vramwatch trace (the first line is not a trace header)")
    version = obj["vramwatch_trace"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise TraceError(f"{source}: invalid trace format version {version!r}")
    if version > FORMAT_VERSION:
        raise TraceError(
            f"{source}: trace format version {version} is newer than this vramwatch reads ({FORMAT_VERSION});"
            " upgrade vramwatch to read it"
        )
    return obj


# -- writing -----------------------------------------------------------------------------------------------


class TraceWriter:
    """Writes a header, then one line per snapshot; the header is written with the first tick when it lacks
    the GPU list (which only a reading knows), or on `close()` for a trace with no tick at all.
    """

    def __init__(self, fp: TextIO, header: Mapping[str, Any], *, owns_fp: bool = False) -> None:
        self._fp = fp
        self._header = dict(header)
        self._owns_fp = owns_fp
        self._header_written = False
        self.ticks = 0
        if "gpus" in self._header:
            self._write_header()

    def _write_header(self) -> None:
        self._fp.write(dumps(self._header) + "\n")
        self._header_written = True

    def write(self, snapshot: Snapshot, *, cmdline: bool = True) -> None:
        """Append one tick; command lines are redacted, or left out with `cmdline=False`."""
        if not self._header_written:
            self._header["gpus"] = [_header_gpu(g) for g in snapshot.gpus]
            self._write_header()
        self._fp.write(dumps(snapshot_to_dict(snapshot, cmdline=cmdline)) + "\n")
        self.ticks += 1

    def flush(self) -> None:
        """Push what was written to the OS (a gzip stream is sync-flushed: readable up to here)."""
        self._fp.flush()

    def close(self) -> None:
        if self._fp.closed:
            return
        if not self._header_written:
            self._header.setdefault("gpus", [])
            self._write_header()
        if self._owns_fp:
            self._fp.close()
        else:
            self._fp.flush()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_text_for_write(path: Path) -> TextIO:
    if path.suffix == ".gz":
        return gzip.open(path, "wt", encoding="utf-8", newline="\n")
    return path.open("w", encoding="utf-8", newline="\n")


def open_trace_writer(path: PathLike, backend: Backend, interval: float) -> TraceWriter:
    """A writer to `path` (gzip-compressed when it ends in `.gz`) with a header from `described(backend)`."""
    p = Path(path)
    try:
        fp = _open_text_for_write(p)
    except OSError as exc:
        raise TraceError(f"{p}: cannot write the trace: {exc.strerror or exc}") from exc
    return TraceWriter(fp, make_header(described(backend), interval), owns_fp=True)


# -- reading -----------------------------------------------------------------------------------------------


def _open_binary(path: Path) -> io.BufferedIOBase:
    """The file's bytes, decompressed when it starts with the gzip magic whatever its name."""
    raw = path.open("rb")
    try:
        magic = raw.read(2)
        raw.seek(0)
    except OSError:
        raw.close()
        raise
    if magic == _GZIP_MAGIC:
        return gzip.GzipFile(fileobj=raw, mode="rb")  # closing it leaves `raw` open: see _close
    return raw


def _close(f: io.BufferedIOBase) -> None:
    inner = getattr(f, "fileobj", None)
    f.close()
    if isinstance(inner, io.IOBase):
        inner.close()


# Decompression failures of a damaged or truncated gzip stream (a recorder killed mid-write).
_STREAM_ERRORS = (EOFError, OSError, zlib.error)


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    f = _open_binary(path)
    try:
        yield from enumerate(f, start=1)
    finally:
        _close(f)


def read_header(path: PathLike) -> dict[str, Any]:
    """The validated header of the trace at `path`; TraceError when there is none to read."""
    p = Path(path)
    try:
        f = _open_binary(p)
    except OSError as exc:
        raise TraceError(f"{p}: cannot open the trace: {exc.strerror or exc}") from exc
    try:
        # Bounded reads: a model checkpoint passed by mistake must not be slurped whole as one "line".
        while raw := f.readline(_MAX_HEADER_BYTES):
            if not raw.strip():
                continue
            if len(raw) >= _MAX_HEADER_BYTES and not raw.endswith(b"\n"):
                raise TraceError(f"{p}: not a vramwatch trace (no header line in its first MiB)")
            try:
                obj = json.loads(raw)
            except (ValueError, RecursionError) as exc:
                raise TraceError(f"{p}: not a vramwatch trace (the first line is not JSON: {exc})") from exc
            return _check_header(obj, str(p))
    except _STREAM_ERRORS as exc:
        raise TraceError(f"{p}: cannot read the trace: {exc}") from exc
    finally:
        _close(f)
    raise TraceError(f"{p}: empty file, not a vramwatch trace")


def iter_ticks(path: PathLike, on_error: OnError | None = None) -> Generator[tuple[Reading, bool], None, None]:
    """Each valid tick of the trace as (Reading, processes_visible); bad lines go to `on_error` and are skipped.

    Opens the file itself when first advanced and closes it when exhausted or closed: an iterator dropped
    half-way leaks nothing.
    """
    p = Path(path)
    report: OnError = on_error if on_error is not None else (lambda _n, _m: None)
    seen_header = False
    last_t = -math.inf
    lineno = 0
    try:
        for lineno, raw in _lines(p):
            if not raw.strip():
                continue
            if not seen_header:
                seen_header = True  # validated by read_header before iteration starts
                continue
            try:
                reading, visible = tick_from_dict(json.loads(raw))
            except RecursionError:
                report(lineno, "nesting too deep")
                continue
            except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError and TraceLineError
                report(lineno, str(exc))
                continue
            if reading.t is not None and reading.t < last_t:
                report(lineno, f"t={reading.t} goes back in time (previous tick at t={last_t}); skipped")
                continue
            last_t = reading.t if reading.t is not None else last_t
            yield reading, visible
    except _STREAM_ERRORS as exc:
        report(lineno + 1, f"the trace ends early (damaged or truncated): {exc}")


def read_trace(path: PathLike, on_error: OnError | None = None) -> tuple[dict[str, Any], Iterator[Reading]]:
    """The trace's header (validated now) and a lazy iterator over its ticks as Readings.

    Raises TraceError when the file cannot be opened or has no valid header; a malformed tick line is passed
    to `on_error(lineno, message)` (1-based line numbers; the header is line 1) and skipped.
    """
    header = read_header(path)
    return header, (reading for reading, _visible in iter_ticks(path, on_error))
