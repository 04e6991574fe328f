"""The agent's wire format: versioned JSON, and allocator figures read across torch versions."""

from __future__ import annotations

import pytest
from vramwatch.agent import protocol

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
