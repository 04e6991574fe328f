"""The agent's wire format: versioned JSON, and allocator figures read across torch versions."""

from __future__ import annotations

import pytest
from vramwatch.agent import protocol
from vramwatch.model import nvml_uuid

NESTED = {
    "allocated_bytes": {"all": {"current": 10, "peak": 20}},
    "reserved_bytes": {"all": {"current": 30}},
    "num_alloc_retries": 2,
}
FLAT = {"allocated_bytes.all.current": 10, "reserved_bytes.all.current": 30, "num_alloc_retries": 2}


@pytest.mark.parametrize("stats", [NESTED, FLAT], ids=["nested", "flat"])
@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (("allocated_bytes", "all", "current"), 10),
        (("reserved_bytes", "all", "current"), 30),
        (("num_alloc_retries",), 2),
        (("requested_bytes", "all", "current"), None),  # older torch: absent, so unknown
    ],
)
def test_read_stat_handles_both_layouts_and_missing_keys(stats: dict, path: tuple[str, ...], expected: int | None):
    """A figure is read from memory_stats_as_nested_dict or the flat memory_stats; a missing one is None."""
    assert protocol.read_stat(stats, path) == expected


def test_read_stat_refuses_non_integers():
    """Booleans and floats are not byte counts."""
    assert protocol.read_stat({"num_ooms": True}, ("num_ooms",)) is None
    assert protocol.read_stat({"num_ooms": 1.5}, ("num_ooms",)) is None


def test_device_entry_lists_every_field_even_when_unknown():
    """Every stat field is present in a device entry, None when this torch does not report it."""
    entry = protocol.device_entry(1, NESTED, cuda_uuid="u", total_bytes=5, free_bytes=None)
    assert entry["device"] == 1
    assert entry["allocated_bytes"] == 10
    assert entry["inactive_split_bytes"] is None
    assert entry["free_bytes"] is None
    assert {name for name, _ in protocol.STAT_FIELDS} <= set(entry)


def test_messages_round_trip_and_stay_small():
    """A stats message of eight devices encodes to JSON well under one datagram and decodes back."""
    devices = [
        protocol.device_entry(d, NESTED, cuda_uuid="u" * 36, total_bytes=80 << 30, free_bytes=1) for d in range(8)
    ]
    message = protocol.stats_message(
        pid=1, seq=2, t=3.0, torch_version="2.11.0", devices=devices, sample_seconds=1e-4, dropped=0, signal=False
    )
    data = protocol.encode(message)
    assert len(data) < 4096
    assert protocol.decode(data) == message


@pytest.mark.parametrize(
    "data",
    [b"\xff\xfe", b"null", b'{"v": 1, "type": "nope"}', b'{"type": "stats"}'],
    ids=["binary", "not-object", "unknown-type", "no-version"],
)
def test_decode_rejects_what_it_does_not_understand(data: bytes):
    """Anything but a v1 object of a known type raises ProtocolError (never another exception)."""
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(data)


def test_abstract_socket_targets():
    """`@name` targets are Linux abstract sockets; anything else is a path."""
    assert protocol.socket_address("@vramwatch") == "\0vramwatch"
    assert protocol.socket_address("/run/vramwatch/agent.sock") == "/run/vramwatch/agent.sock"


def test_parse_report_reads_what_the_agent_builds():
    """A stats message built by the agent's functions parses back into the same figures, with no socket."""
    entry = protocol.device_entry(2, NESTED, cuda_uuid="abcd", total_bytes=80 << 30, free_bytes=1 << 30)
    data = protocol.encode(
        protocol.stats_message(
            pid=7, seq=1, t=0.0, torch_version="2.11.0", devices=[entry], sample_seconds=2e-4, dropped=3, signal=True
        )
    )
    report = protocol.parse_report(data)
    assert (report.kind, report.claimed_pid, report.torch_version) == ("stats", 7, "2.11.0")
    assert (report.sample_seconds, report.dropped, report.signal) == (2e-4, 3, True)
    (device,) = report.devices
    assert device.device == 2
    assert device.figures["allocated_bytes"] == 10
    assert device.figures["requested_bytes"] is None
    assert set(device.figures) == {name for name, _ in protocol.STAT_FIELDS}
    assert (device.cuda_uuid, device.total_bytes, device.free_bytes) == ("abcd", 80 << 30, 1 << 30)


def test_parse_report_reads_an_oom_with_the_request_and_the_cache():
    """An oom message parses into the failed request and the allocator's figures at that moment."""
    data = protocol.encode(
        protocol.oom_message(
            pid=7,
            t=0.0,
            torch_version=None,
            device=1,
            alloc_bytes=64,
            capacity_bytes=1 << 30,
            device_free_bytes=8,
            stats=NESTED,
            snapshot=None,
            observed=True,
        )
    )
    report = protocol.parse_report(data)
    assert (report.kind, report.claimed_pid) == ("oom", 7)
    oom = report.oom
    assert oom is not None
    assert (oom.device, oom.alloc_bytes, oom.device_free_bytes, oom.observed) == (1, 64, 8, True)
    assert (oom.figures["allocated_bytes"], oom.figures["reserved_bytes"]) == (10, 30)


@pytest.mark.parametrize(
    "message",
    [
        {"v": 1, "type": "pressure", "pid": 1},
        {"v": 1, "type": "hello"},
        {"v": 1, "type": "stats", "pid": 1, "devices": [{"allocated_bytes": 1}]},
        {"v": 1, "type": "stats", "pid": 1, "devices": "all"},
        {"v": 1, "type": "oom", "pid": 1},
    ],
    ids=["pressure", "no-pid", "device-without-index", "devices-not-a-list", "oom-without-device"],
)
def test_parse_report_refuses_malformed_reports(message: dict):
    """What cannot be a report raises ProtocolError, so the listener counts it as malformed."""
    with pytest.raises(protocol.ProtocolError):
        protocol.parse_report(protocol.encode(message))


def test_parse_pressure_reads_notices_and_passes_over_reports():
    """The agent reads a pressure notice (an unknown level as a warning) and ignores other well-formed messages."""
    notice = protocol.parse_pressure(protocol.encode(protocol.pressure_message(level="loud", reason="12 MiB left")))
    assert notice == protocol.Pressure(level="warning", reason="12 MiB left")
    assert protocol.parse_pressure(protocol.encode({"v": 1, "type": "hello", "pid": 1})) is None


def test_nvml_uuid_adds_the_prefix_once() -> None:
    """CUDA's uuid gains NVML's GPU- prefix; one that has it (or a MIG uuid) is kept."""
    assert nvml_uuid("abcd") == "GPU-abcd"
    assert nvml_uuid("GPU-abcd") == "GPU-abcd"
    assert nvml_uuid("MIG-x") == "MIG-x"
    assert nvml_uuid(None) is None


def test_allocator_figures_name_exactly_the_stat_fields():
    """The typed figures a report carries and the fields the agent sends are one list, in the same order."""
    assert list(protocol.AllocatorFigures.__annotations__) == [name for name, _ in protocol.STAT_FIELDS]


def test_steps_message_round_trips():
    """A steps message reads back entry by entry, in `STEP_FIELDS` order."""
    data = protocol.encode(
        protocol.steps_message(
            pid=7, t=5.0, device=1, entries=[[1, 1, 4.0, 0.5, 10, 20, 5, 20, 1], [2, 9, 5.0, 4.0, 11, 20, 5, 20, 2]]
        )
    )
    report = protocol.parse_report(data)
    assert (report.kind, report.claimed_pid, report.device) == ("steps", 7, 1)
    assert [(e.first_step, e.last_step, e.seconds, e.peak_allocated_bytes) for e in report.steps] == [
        (1, 1, 0.5, 10),
        (2, 9, 4.0, 11),
    ]


@pytest.mark.parametrize(
    "entry",
    [
        [1, 1, 4.0, 0.5, 10, 20, 5, 20],
        [2, 1, 4.0, 0.5, 10, 20, 5, 20, 0],
        [1, 1, 4.0, 0.5, -1, 20, 5, 20, 0],
        [1, 1, 4.0, 0.5, 1.5, 20, 5, 20, 0],
        "x",
    ],
)
def test_malformed_step_entries_are_refused(entry):
    """A step entry of the wrong length, steps out of order, or negative or fractional bytes refuses the message."""
    data = protocol.encode({"v": 1, "type": "steps", "pid": 7, "t": 1.0, "device": 0, "steps": [entry]})
    with pytest.raises(protocol.ProtocolError):
        protocol.parse_report(data)


def test_merge_keeps_the_largest_peak_of_each_range():
    """Merged step entries keep their range, the sum of their durations and the largest peaks."""
    from vramwatch.agent.steps import merge

    entries = [[k, k, float(k), 1.0, 100 + (k == 3) * 50, 200, 10 * k, 200, k] for k in range(1, 7)]
    merged = merge(entries, 2)
    assert [(e[0], e[1], e[3], e[4], e[6], e[8]) for e in merged] == [(1, 3, 3.0, 150, 30, 3), (4, 6, 3.0, 100, 60, 6)]


@pytest.mark.parametrize(("sent", "read"), [(3, 3), (None, None), (-1, None), (True, None)])
def test_stats_carry_the_step_hooks_errors(sent, read):
    """A stats message says how many exceptions the step hook swallowed; anything but a count reads as unknown."""
    message = protocol.stats_message(
        pid=7, seq=1, t=1.0, torch_version=None, devices=[], sample_seconds=0.0, dropped=0, signal=False
    )
    data = protocol.encode({**message, "step_errors": sent})
    assert protocol.parse_report(data).step_errors == read


@pytest.mark.parametrize(("steps", "expected"), [(True, True), (False, False), ("yes", None)])
def test_a_hello_says_whether_the_agent_counts_steps(steps: object, expected: bool | None) -> None:
    """A hello's `steps` flag is read (the probe stops at once when it is off); anything but a bool is unknown."""
    message = protocol.hello_message(
        pid=7, ppid=1, t=0.0, torch_version="2.4", agent_version="0", python="3.11", signal=True
    )
    report = protocol.parse_report(protocol.encode({**message, "steps": steps}))
    assert report.counts_steps is expected
