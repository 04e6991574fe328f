"""Every number vramwatch prints reads one way: sizes, rates, durations and GPU names from `vramwatch.units`."""

from __future__ import annotations

from dataclasses import replace

import pytest
from builders import gpu
from vramwatch import units


@pytest.mark.parametrize(
    ("bps", "signed", "text"),
    [
        (152e6, False, "152 MB/s"),
        (3.1e6, False, "3.1 MB/s"),
        (48e3, False, "48 kB/s"),
        (1e6, True, "+1.0 MB/s"),
        (-152e6, True, "-152 MB/s"),
        (None, False, "?"),
    ],
)
def test_rates_read_as_people_quote_disks(bps: float | None, signed: bool, text: str):
    """One rate style everywhere: precision by size, decimal units, a sign only on a trend."""
    assert units.rate(bps, signed=signed) == text


@pytest.mark.parametrize(
    ("seconds", "text"), [(40, "40 s"), (75, "75 s"), (125, "2 min"), (3900, "1 h 5 min"), (7200, "2 h"), (None, "?")]
)
def test_durations_read_as_a_person_says_them(seconds: float | None, text: str):
    """Durations round to what a person would say, in findings, the status table and attach alike."""
    assert units.duration(seconds) == text


def test_sizes_keep_allocator_precision():
    """Allocator amounts show two decimals of GiB, or MiB under one GiB; card memory one decimal of GiB."""
    assert units.size(1.76 * units.GIB) == "1.76 GiB"
    assert units.size(66 * units.MIB) == "66.0 MiB"
    assert units.size(None) == "?"
    assert units.gib(19.84 * units.GIB) == "19.8"


def test_one_gpu_label_for_metrics_and_sentences():
    """A card is its index; a MIG instance adds its UUID's tail, the same in a metric label and a message."""
    card = gpu(index=0, used=0)
    mig = replace(gpu(index=0, used=0, uuid="MIG-0000-1a2b3c4d"), parent_uuid="GPU-parent")
    assert (units.gpu_index_label(card), units.gpu_label(card)) == ("0", "GPU 0")
    assert (units.gpu_index_label(mig), units.gpu_label(mig)) == ("0/1a2b3c4d", "GPU 0/1a2b3c4d")
