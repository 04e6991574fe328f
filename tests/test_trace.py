"""Trace files (JSON Lines, version 1) and the replay backend that reads them back."""

from __future__ import annotations

import dataclasses
import gc
import gzip
import io
import json
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vramwatch.backends.replay import ReplayBackend
from vramwatch.backends.simulated import SimulatedBackend
from vramwatch.errors import TraceError
from vramwatch.model import (
    GpuSample,
    ProcessExit,
    ProcessMeta,
    ProcessSample,
    ProcessUsage,
    Reading,
    Snapshot,
    TorchStats,
)
from vramwatch.redact import redact_cmdline
from vramwatch.testing import FakeClock
from vramwatch.trace import (
    FORMAT_VERSION,
    TraceWriter,
    dumps,
    make_header,
    open_trace_writer,
    read_header,
    read_trace,
    reading_from_dict,
    snapshot_to_dict,
    tick_from_dict,
)
from vramwatch.typing import Backend, described

GIB = 1024**3
UUID = "GPU-5173d0a1-0d5e-6f1c-8a4b-1f0e2d3c4b5a"
DESCRIBE = {"backend": "nvml", "host": "box", "driver_version": "550.54.14", "nvml_version": "12.550"}

# -- building snapshots --------------------------------------------------------------------------------------


def meta(pid: int, **changes: object) -> ProcessMeta:
    full = ProcessMeta(
        pid=pid,
        start_time=1_700_000_000.0 + pid,
        name="python",
        user="alice",
        ppid=1,
        root_pid=pid,
        root_name="python",
        root_start_time=1_700_000_000.0 + pid,
        status="running",
        cmdline=("python", "train.py", "--train_batch_size", "4"),
        cwd="/home/alice",
    )
    return dataclasses.replace(full, **changes)


def snap(t: float, used: dict[int, int], *, metas: dict[int, ProcessMeta] | None = None) -> Snapshot:
    metas = metas or {}
    total = 24 * GIB
    dev = sum(used.values()) + 400 * 1024**2
    gpu = GpuSample(0, UUID, "NVIDIA GeForce RTX 4090", total, dev, total - dev, reserved_bytes=0)
    procs = tuple(ProcessSample(UUID, b, metas.get(pid, meta(pid))) for pid, b in used.items())
    return Snapshot(t=t, wall_time=1_700_000_000.0 + t, gpus=(gpu,), processes=procs)


def expected_reading(s: Snapshot, *, cmdline: bool = True) -> Reading:
    """What a snapshot must read back as: the raw usages, each pid's metadata once, command lines redacted."""
    metas: dict[int, ProcessMeta] = {}
    for p in s.processes:
        m = p.meta
        if cmdline:
            m = dataclasses.replace(m, cmdline=redact_cmdline(m.cmdline) if m.cmdline is not None else None)
        else:
            m = dataclasses.replace(m, cmdline=None, cwd=None)
        metas.setdefault(m.pid, m)
    return Reading(
        gpus=s.gpus,
        processes=tuple(ProcessUsage(p.gpu_uuid, p.pid, p.used_bytes, p.kinds) for p in s.processes),
        t=s.t,
        wall_time=s.wall_time,
        torch=s.torch,
        meta=tuple(metas.values()),
        exits=s.exits,
    )


def sampled(backend: Backend, clock: FakeClock) -> Snapshot:
    """What the sampler makes of one reading (built here so these tests do not depend on the sampler)."""
    reading = backend.read()
    inspector = backend.inspector()
    processes = tuple(
        ProcessSample(p.gpu_uuid, p.used_bytes, inspector.inspect(p.pid), p.kinds) for p in reading.processes
    )
    return Snapshot(t=clock.monotonic(), wall_time=clock.wall(), gpus=reading.gpus, processes=processes)


def write_trace(path: Path, snapshots: list[Snapshot], **header: object) -> None:
    with path.open("w", encoding="utf-8") as fp:
        writer = TraceWriter(fp, {**make_header(DESCRIBE, 1.0), **header})
        for s in snapshots:
            writer.write(s)
        writer.close()


# -- Hypothesis: any snapshot survives the trip through a line ---------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)
opt_bytes = st.none() | st.integers(min_value=0, max_value=2**50)
opt_text = st.none() | st.text(max_size=12)


@st.composite
def snapshot_strategy(draw: st.DrawFn) -> Snapshot:
    uuids = draw(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=3, unique=True))
    gpus = tuple(
        GpuSample(
            index=draw(st.integers(-1, 16)),
            uuid=u,
            name=draw(st.text(max_size=12)),
            total_bytes=draw(opt_bytes),
            used_bytes=draw(opt_bytes),
            free_bytes=draw(opt_bytes),
            reserved_bytes=draw(opt_bytes),
            pci_bus_id=draw(opt_text),
            parent_uuid=draw(opt_text),
            up=draw(st.booleans()),
            error=draw(opt_text),
        )
        for u in uuids
    )
    pids = draw(st.lists(st.integers(0, 2**22), max_size=5, unique=True))
    processes = []
    for pid in pids:
        m = ProcessMeta(
            pid=pid,
            start_time=draw(st.none() | finite),
            name=draw(opt_text),
            user=draw(opt_text),
            ppid=draw(st.none() | st.integers(0, 2**22)),
            root_pid=draw(st.none() | st.integers(0, 2**22)),
            root_name=draw(opt_text),
            root_start_time=draw(st.none() | finite),
            container_id=draw(opt_text),
            pod_uid=draw(opt_text),
            cmdline=draw(st.none() | st.lists(st.text(max_size=16), max_size=6).map(tuple)),
            status=draw(opt_text),
            cwd=draw(opt_text),
        )
        kinds = draw(st.frozensets(st.sampled_from(["compute", "graphics", "mps"])))
        for u in draw(st.lists(st.sampled_from(uuids), min_size=1, max_size=len(uuids), unique=True)):
            processes.append(ProcessSample(u, draw(opt_bytes), m, kinds))
    torch = tuple(
        TorchStats(
            pid=draw(st.integers(0, 2**22)),
            device=draw(st.integers(0, 8)),
            allocated_bytes=draw(opt_bytes),
            reserved_bytes=draw(opt_bytes),
            active_bytes=draw(opt_bytes),
            inactive_split_bytes=draw(opt_bytes),
            requested_bytes=draw(opt_bytes),
            num_alloc_retries=draw(st.none() | st.integers(0, 1000)),
            num_ooms=draw(st.none() | st.integers(0, 1000)),
        )
        for _ in range(draw(st.integers(0, 2)))
    )
    exits = tuple(
        ProcessExit(
            pid=draw(st.integers(1, 2**22)),
            start_time=draw(st.none() | finite),
            exit_code=draw(st.none() | st.integers(0, 255)),
            signal=draw(st.none() | st.integers(1, 64)),
        )
        for _ in range(draw(st.integers(0, 2)))
    )
    return Snapshot(
        t=draw(finite),
        wall_time=draw(finite),
        gpus=gpus,
        processes=tuple(processes),
        processes_visible=draw(st.booleans()),
        torch=torch,
        exits=exits,
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snapshot_strategy(), st.booleans())
def test_snapshot_round_trips_through_one_line(s: Snapshot, cmdline: bool) -> None:
    """snapshot -> one compact line -> Reading gives back every recorded field (command lines redacted)."""
    line = dumps(snapshot_to_dict(s, cmdline=cmdline))
    assert "\n" not in line
    reading, visible = tick_from_dict(json.loads(line))
    assert reading == expected_reading(s, cmdline=cmdline)
    assert visible is s.processes_visible
    assert reading_from_dict(json.loads(line)) == reading


def test_lines_are_compact_and_omit_unknown_optional_keys() -> None:
    """No indentation, no null optional keys; required keys stay, with null meaning unknown."""
    s = Snapshot(
        t=1.0,
        wall_time=2.0,
        gpus=(GpuSample(0, UUID, "x", 10, None, None),),
        processes=(ProcessSample(UUID, None, ProcessMeta(pid=7, start_time=None)),),
    )
    line = dumps(snapshot_to_dict(s))
    assert line == (
        '{"t":1.0,"wall":2.0,"gpus":[{"index":0,"uuid":"' + UUID + '","name":"x","total_bytes":10,'
        '"used_bytes":null,"free_bytes":null}],"processes":[{"gpu":"' + UUID + '","pid":7,"used_bytes":null}]}'
    )


def test_non_finite_times_are_written_as_unknown() -> None:
    """A NaN start time becomes an absent key (valid JSON), not NaN."""
    s = snap(1.0, {5: GIB}, metas={5: meta(5, start_time=float("nan"))})
    line = dumps(snapshot_to_dict(s))
    assert "NaN" not in line
    assert json.loads(line)["processes"][0].get("start_time") is None


def test_undecodable_argv_bytes_survive(tmp_path: Path) -> None:
    """psutil's surrogate-escaped argv bytes are written as ASCII escapes and read back identical."""
    weird = "caf\udce9.yaml"
    s = snap(1.0, {5: GIB}, metas={5: meta(5, cmdline=("python", weird))})
    path = tmp_path / "t.jsonl"
    write_trace(path, [s])
    path.read_text(encoding="ascii")  # pure ASCII on disk
    _, ticks = read_trace(path)
    assert next(iter(ticks)).meta[0].cmdline == ("python", weird)


# -- reading files -------------------------------------------------------------------------------------------


def test_malformed_lines_are_reported_with_line_numbers_and_skipped(tmp_path: Path) -> None:
    """Bad JSON, missing keys, wrong types, non-objects and time going back are skipped with their line."""
    good1 = dumps(snapshot_to_dict(snap(10.0, {1: GIB})))
    good2 = dumps(snapshot_to_dict(snap(12.0, {1: 2 * GIB})))
    bad_type = json.loads(good1)
    bad_type["gpus"][0]["used_bytes"] = "lots"
    missing = json.loads(good1)
    del missing["processes"][0]["pid"]
    backwards = json.loads(good1)
    backwards["t"] = 5.0
    lines = [
        dumps(make_header(DESCRIBE, 1.0)),  # 1
        good1,  # 2
        "{not json",  # 3
        json.dumps(bad_type),  # 4
        json.dumps(missing),  # 5
        "[1, 2, 3]",  # 6
        json.dumps(backwards),  # 7
        "",  # 8: blank lines are not errors
        json.dumps({"t": True, "wall": 1.0, "gpus": [], "processes": []}),  # 9
        "[" * 100_000,  # 10: absurd nesting must not crash the reader
        good2,  # 11
        good2[: len(good2) // 2],  # 12: cut short (recorder killed mid-line)
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    errors: list[tuple[int, str]] = []
    header, ticks = read_trace(path, on_error=lambda n, m: errors.append((n, m)))
    readings = list(ticks)
    assert header["vramwatch_trace"] == 1
    assert [r.t for r in readings] == [10.0, 12.0]
    assert [n for n, _ in errors] == [3, 4, 5, 6, 7, 9, 10, 12]
    messages = dict(errors)
    assert "used_bytes" in messages[4]
    assert "pid" in messages[5]
    assert "back in time" in messages[7]


def test_reading_without_on_error_still_skips_bad_lines(tmp_path: Path) -> None:
    """With no callback, bad lines are skipped silently rather than raising."""
    path = tmp_path / "t.jsonl"
    path.write_text(dumps(make_header(DESCRIBE, 1.0)) + "\ngarbage\n", encoding="utf-8")
    _, ticks = read_trace(path)
    assert list(ticks) == []


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "cannot open"),
        ("", "empty"),
        ("\n\n", "empty"),
        ('{"t": 1.0, "wall": 1.0, "gpus": [], "processes": []}\n', "not a vramwatch trace"),
        ("hello\n", "not JSON"),
        ('{"vramwatch_trace": "1"}\n', "invalid trace format version"),
        ('{"vramwatch_trace": 99}\n', "newer than this vramwatch"),
        ("x" * (2 << 20), "first MiB"),  # a big file without lines (a checkpoint passed by mistake)
        ("\udcff\udcfe\n", "not JSON"),  # binary junk
    ],
)
def test_unusable_file_is_a_trace_error_naming_it(tmp_path: Path, content: str | None, match: str) -> None:
    """A missing file, an empty one, or one without a valid header raises TraceError with the path."""
    path = tmp_path / "run.jsonl"
    if content is not None:
        path.write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(TraceError, match=match) as info:
        read_trace(path)
    assert str(path) in str(info.value)
    with pytest.raises(TraceError):
        ReplayBackend(path)


def test_unknown_keys_are_ignored(tmp_path: Path) -> None:
    """Keys a newer writer adds, at any level, do not change what is read."""
    s = snap(3.0, {1: GIB}, metas={1: meta(1)})
    s = dataclasses.replace(s, torch=(TorchStats(pid=1, device=0, allocated_bytes=GIB),))
    plain = snapshot_to_dict(s)
    extended = json.loads(json.dumps(plain))
    extended["future"] = {"x": 1}
    extended["gpus"][0]["temperature_c"] = 61
    extended["processes"][0]["nice"] = 5
    extended["torch"][0]["segments"] = 12
    header = {**make_header(DESCRIBE, 1.0), "compression_hint": "zstd"}
    path = tmp_path / "t.jsonl"
    path.write_text(dumps(header) + "\n" + dumps(extended) + "\n", encoding="utf-8")
    _, ticks = read_trace(path)
    assert list(ticks) == [reading_from_dict(plain)]
    assert reading_from_dict(plain) == expected_reading(s)


def test_gzip_round_trip_through_open_trace_writer(tmp_path: Path) -> None:
    """A .gz path is written compressed and read back transparently, header built from describe()."""
    clock = FakeClock()
    backend = SimulatedBackend("steady", seed=1, clock=clock)
    path = tmp_path / "run.jsonl.gz"
    snapshots = []
    writer = open_trace_writer(path, backend, 1.0)
    for _ in range(30):
        clock.advance(1.0)
        s = sampled(backend, clock)
        snapshots.append(s)
        writer.write(s)
    writer.close()
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    header, ticks = read_trace(path)
    assert header["backend"] == "simulated"
    assert header["scenario"] == "steady"
    assert header["interval_seconds"] == 1.0
    assert [g["uuid"] for g in header["gpus"]] == [g.uuid for g in snapshots[0].gpus]
    assert list(ticks) == [expected_reading(s) for s in snapshots]


def test_gzip_is_detected_by_content_not_name(tmp_path: Path) -> None:
    """A gzip stream named .jsonl is still read as gzip."""
    path = tmp_path / "run.jsonl"
    body = dumps(make_header(DESCRIBE, 1.0)) + "\n" + dumps(snapshot_to_dict(snap(1.0, {1: GIB}))) + "\n"
    path.write_bytes(gzip.compress(body.encode()))
    _, ticks = read_trace(path)
    assert [r.t for r in ticks] == [1.0]


def test_truncated_gzip_keeps_the_complete_ticks(tmp_path: Path) -> None:
    """A .gz cut short (recorder killed) yields the ticks before the cut and reports the damage once."""
    path = tmp_path / "run.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fp:
        writer = TraceWriter(fp, make_header(DESCRIBE, 1.0))
        for k in range(200):
            writer.write(snap(float(k), {1: GIB + k * 1024**2}))
            writer.flush()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    errors: list[tuple[int, str]] = []
    _, ticks = read_trace(path, on_error=lambda n, m: errors.append((n, m)))
    readings = list(ticks)
    assert 50 < len(readings) < 200
    assert [r.t for r in readings] == [float(k) for k in range(len(readings))]
    assert len(errors) in {1, 2}  # the cut, plus a half line when the cut fell inside one
    assert "ends early" in errors[-1][1]


def test_cmdline_is_redacted_by_default_and_droppable(tmp_path: Path) -> None:
    """Secrets in a command line never reach the file; cmdline=False leaves command line and cwd out."""
    secret = ("python", "train.py", "--hf_token", "hf_supersecretvalue", "--train_batch_size", "4")
    s = snap(1.0, {1: GIB}, metas={1: meta(1, cmdline=secret)})
    buf = io.StringIO()
    writer = TraceWriter(buf, make_header(DESCRIBE, 1.0))
    writer.write(s)
    writer.write(dataclasses.replace(s, t=2.0), cmdline=False)
    text = buf.getvalue()
    assert "hf_supersecretvalue" not in text
    redacted, dropped = (json.loads(line)["processes"][0] for line in text.splitlines()[1:])
    assert redacted["cmdline"] == ["python", "train.py", "--hf_token", "***", "--train_batch_size", "4"]
    assert "cmdline" not in dropped
    assert "cwd" not in dropped
    assert dropped["user"] == "alice"


def test_header_is_written_with_the_first_tick_or_on_close(tmp_path: Path) -> None:
    """The header takes its GPU list from the first tick; a trace closed without ticks is still readable."""
    path = tmp_path / "empty.jsonl"
    backend = SimulatedBackend("steady", clock=FakeClock())
    open_trace_writer(path, backend, 2.5).close()
    header, ticks = read_trace(path)
    assert header["gpus"] == []
    assert header["interval_seconds"] == 2.5
    assert header["version"]
    assert header["created"]
    assert header["vramwatch_trace"] == FORMAT_VERSION
    assert list(ticks) == []
    buf = io.StringIO()
    writer = TraceWriter(buf, make_header(DESCRIBE, 1.0))
    assert buf.getvalue() == ""
    writer.write(snap(1.0, {1: GIB}))
    first = json.loads(buf.getvalue().splitlines()[0])
    assert first["gpus"] == [{"index": 0, "uuid": UUID, "name": "NVIDIA GeForce RTX 4090", "total_bytes": 24 * GIB}]


def test_unwritable_path_is_a_trace_error(tmp_path: Path) -> None:
    """Recording into a missing directory fails with a TraceError naming the path."""
    with pytest.raises(TraceError, match="cannot write"):
        open_trace_writer(tmp_path / "no" / "such" / "dir.jsonl", SimulatedBackend(clock=FakeClock()), 1.0)


def test_abandoned_iterator_leaks_no_file(tmp_path: Path) -> None:
    """Dropping a tick iterator half-way (or before starting it) closes the file: no ResourceWarning."""
    path = tmp_path / "t.jsonl"
    write_trace(path, [snap(float(k), {1: GIB}) for k in range(5)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, started = read_trace(path)
        next(iter(started))
        _, never = read_trace(path)
        del started, never
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


# -- the replay backend -----------------------------------------------------------------------------------


def recorded(tmp_path: Path, n: int = 5, *, visible: bool = True) -> tuple[Path, list[Snapshot]]:
    snapshots = [
        dataclasses.replace(snap(100.0 + 2 * k, {1: GIB + k, 2: GIB}), processes_visible=visible) for k in range(n)
    ]
    path = tmp_path / "run.jsonl"
    write_trace(path, snapshots, interval_seconds=2.0)
    return path, snapshots


def test_replay_returns_each_tick_then_eof(tmp_path: Path) -> None:
    """read() returns the recorded ticks in order with their t, next_t() peeks, then EOFError."""
    path, snapshots = recorded(tmp_path)
    backend = ReplayBackend(path)
    assert isinstance(backend, Backend)
    assert backend.kind == "replay"
    got = []
    while (t := backend.next_t()) is not None:
        assert backend.next_t() == t  # peeking does not consume
        reading = backend.read()
        assert reading.t == t
        got.append(reading)
    assert got == [expected_reading(s) for s in snapshots]
    with pytest.raises(EOFError):
        backend.read()
    backend.close()
    backend.close()


def test_replay_loop_keeps_time_moving_forward(tmp_path: Path) -> None:
    """Looping starts the trace again one interval later, with start times shifted: new runs, not time travel."""
    path, _snapshots = recorded(tmp_path, n=3)
    backend = ReplayBackend(path, loop=True)
    readings = [backend.read() for _ in range(7)]
    ts = [r.t for r in readings]
    assert ts == [100.0, 102.0, 104.0, 106.0, 108.0, 110.0, 112.0]
    shift = 6.0
    first, again = readings[0], readings[3]
    assert first.wall_time is not None
    assert first.meta[0].start_time is not None
    assert again.wall_time == first.wall_time + shift
    assert again.processes == first.processes
    assert again.meta[0].start_time == first.meta[0].start_time + shift
    assert backend.inspector().inspect(1).start_time == readings[-1].meta[0].start_time


def test_replay_of_a_trace_without_ticks_does_not_loop_forever(tmp_path: Path) -> None:
    """loop=True over an empty trace ends with EOFError instead of spinning."""
    path = tmp_path / "empty.jsonl"
    path.write_text(dumps(make_header(DESCRIBE, 1.0)) + "\n", encoding="utf-8")
    backend = ReplayBackend(path, loop=True)
    assert backend.next_t() is None
    with pytest.raises(EOFError):
        backend.read()


def test_replay_inspector_serves_recorded_metadata(tmp_path: Path) -> None:
    """The inspector answers with the latest metadata recorded for a pid, and Nones for unknown pids."""
    a = snap(1.0, {1: GIB}, metas={1: meta(1, status="running")})
    b = snap(2.0, {1: GIB}, metas={1: meta(1, status="stopped")})
    path = tmp_path / "t.jsonl"
    write_trace(path, [a, b])
    backend = ReplayBackend(path)
    inspector = backend.inspector()
    backend.read()
    assert inspector.inspect(1).status == "running"
    backend.read()
    assert inspector.inspect(1).status == "stopped"
    assert inspector.inspect(999) == ProcessMeta(pid=999, start_time=None)
    assert inspector.pid_namespace_matches()


def test_a_re_recorded_trace_says_replay_and_keeps_its_origin(tmp_path: Path) -> None:
    """Recording a replay writes `backend: replay` in the header, with the source's backend as `recorded_backend`
    (a writer labels a trace by the backend's kind, also where its description names none: NVML's)."""
    path, _ = recorded(tmp_path)
    again = tmp_path / "again.jsonl"
    open_trace_writer(again, ReplayBackend(path), 1.0).close()
    header, _ = read_trace(again)
    assert header["backend"] == "replay"
    assert header["recorded_backend"] == "nvml"


def test_replay_keeps_recorded_pid_visibility(tmp_path: Path) -> None:
    """A trace recorded without host pids replays with pid_namespace_matches() False."""
    path, _ = recorded(tmp_path, n=1, visible=False)
    backend = ReplayBackend(path)
    backend.read()
    assert not backend.inspector().pid_namespace_matches()


def test_replay_describe_is_the_header_as_strings_plus_source(tmp_path: Path) -> None:
    """describe() gives the recorded header's scalar fields as strings and the file it reads, the header's own
    backend as `recorded_backend`; described() names it `replay` (a trace recorded on a GPU is not a live card)."""
    path, _ = recorded(tmp_path)
    backend = ReplayBackend(path)
    info = backend.describe()
    assert info["source"] == str(path)
    assert info["driver_version"] == "550.54.14"
    assert "backend" not in info
    assert info["recorded_backend"] == "nvml"
    assert described(backend)["backend"] == "replay"
    assert info["interval_seconds"] == "2.0"
    assert "gpus" not in info
    assert all(isinstance(v, str) for v in info.values())
    assert read_header(path)["host"] == "box"


def test_replay_reports_bad_lines_once_across_loops(tmp_path: Path) -> None:
    """on_error hears about a bad line on the first pass only, however many times the trace loops."""
    path, _ = recorded(tmp_path, n=2)
    with path.open("a", encoding="utf-8") as fp:
        fp.write("oops\n")
    errors: list[tuple[int, str]] = []
    backend = ReplayBackend(path, on_error=lambda n, m: errors.append((n, m)), loop=True)
    for _ in range(9):
        backend.read()
    assert [n for n, _ in errors] == [4]
