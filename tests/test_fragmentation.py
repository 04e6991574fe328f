"""The fragmentation detector and the leak-versus-caching classifier, on hand-made allocator windows."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from vramwatch.detectors.fragmentation import (
    FragmentationConfig,
    GrowthConfig,
    classify_growth,
    detect_fragmentation,
)
from vramwatch.detectors.oom import fragmented_at_oom
from vramwatch.model import ProcessKey, Severity, TorchStats

GIB = 1 << 30
MIB = 1 << 20
TOTAL = 8 * GIB


def window(
    samples: list[tuple[float, float, float | None]],
    *,
    retries: list[int] | None = None,
    ooms: list[int] | None = None,
    dt: float = 1.0,
) -> tuple[list[TorchStats], list[float]]:
    """(allocated GiB, reserved GiB, inactive split GiB) per sample, one second apart."""
    stats = [
        TorchStats(
            pid=42,
            device=0,
            allocated_bytes=int(a * GIB),
            reserved_bytes=int(r * GIB),
            inactive_split_bytes=None if s is None else int(s * GIB),
            num_alloc_retries=(retries or [0] * len(samples))[i],
            num_ooms=(ooms or [0] * len(samples))[i],
        )
        for i, (a, r, s) in enumerate(samples)
    ]
    return stats, [100.0 + i * dt for i in range(len(samples))]


FRAGMENTED = [(2.0, 7.0, 4.5)] * 5

CASES = [
    pytest.param([(6.0, 6.5, 0.1)] * 5, {}, None, id="healthy-pool"),
    pytest.param(FRAGMENTED, {}, Severity.WARNING, id="split-blocks-held-near-full"),
    pytest.param([(0.5, 3.5, 2.5)] * 5, {}, None, id="fragmented-but-pool-far-from-full"),
    pytest.param([(2.0, 7.0, 0.2)] * 5, {}, None, id="cache-of-whole-segments-is-caching"),
    pytest.param([(2.0, 7.0, 0.2)] * 4 + [(2.0, 7.0, 4.5)], {}, None, id="split-spike-in-one-sample"),
    pytest.param(FRAGMENTED[:2], {}, None, id="too-little-history"),
    pytest.param([(2.0, 7.0, 4.5)] * 5, {"retries": [0, 0, 1, 1, 2]}, Severity.CRITICAL, id="retries-rise"),
    pytest.param([(2.0, 2.5, 0.1), (2.0, 7.0, 4.9)], {"retries": [0, 1]}, Severity.CRITICAL, id="flush-at-once"),
    pytest.param([(2.0, 7.0, 4.5)] * 5, {"ooms": [0, 0, 0, 0, 1]}, Severity.CRITICAL, id="oom-with-split-cache"),
    pytest.param([(0.1, 7.0, 0.0)] * 5, {"ooms": [0, 0, 0, 0, 1]}, None, id="oom-then-freed-whole-segments"),
    pytest.param([(2.0, 7.0, 0.1)] * 5, {"retries": [0, 0, 1, 1, 2]}, None, id="retries-with-whole-segments"),
    pytest.param([(6.9, 7.0, 0.05)] * 5, {"retries": [0, 1, 2, 3, 4]}, None, id="retries-but-cache-small"),
    pytest.param([(2.0, 7.0, 0.0)] * 5, {}, None, id="expandable-segments-count-no-split"),
    pytest.param([(2.0, 7.0, None)] * 5, {}, None, id="old-torch-without-split-figure"),
]


@pytest.mark.parametrize(("samples", "counters", "expected"), CASES)
def test_fragmentation_table(
    samples: list[tuple[float, float, float | None]], counters: dict, expected: Severity | None
):
    """Each allocator history gives the finding (and severity) the module docstring promises."""
    stats, times = window(samples, **counters)
    finding = detect_fragmentation(stats, times, TOTAL)
    assert (finding.severity if finding else None) == expected
    if finding is not None:
        assert finding.kind == "fragmentation"
        assert finding.t == times[-1]


def test_finding_carries_the_figures_and_subject():
    """The finding names the process and GPU given, and its numbers are the allocator's figures."""
    stats, times = window(FRAGMENTED)
    finding = detect_fragmentation(
        stats, times, TOTAL, gpu_uuid="GPU-x", process=ProcessKey(42, 1.5), process_name="python"
    )
    assert finding is not None
    assert finding.subject == ("fragmentation", "GPU-x", ProcessKey(42, 1.5))
    assert finding.numbers["reserved_unallocated_bytes"] == 5 * GIB
    assert finding.numbers["inactive_split_bytes"] == int(4.5 * GIB)
    assert finding.numbers["total_bytes"] == TOTAL
    assert "5.00 GiB reserved but unallocated" in finding.message


def test_default_process_is_the_pid_without_start_time():
    """Without a ProcessKey the finding still names the pid the stats came from."""
    stats, times = window(FRAGMENTED)
    finding = detect_fragmentation(stats, times, TOTAL)
    assert finding is not None
    assert finding.process == ProcessKey(42, None)


def test_retries_outside_the_window_do_not_count():
    """A cache flush long ago is history, not a current fragmentation emergency."""
    stats, times = window([(2.0, 7.0, 0.1)] * 5, retries=[0, 1, 1, 1, 1], dt=30.0)
    assert detect_fragmentation(stats, times, TOTAL, FragmentationConfig(window_seconds=60.0)) is None


def test_mismatched_lengths_are_refused():
    """Windows and times of different lengths are a caller bug, reported as such."""
    stats, times = window(FRAGMENTED)
    with pytest.raises(ValueError, match="same length"):
        detect_fragmentation(stats, times[:-1], TOTAL)


@pytest.mark.parametrize(
    ("allocated", "reserved", "expected"),
    [
        pytest.param([1 * GIB + i * 10 * MIB for i in range(30)], [4 * GIB] * 30, "leak", id="allocated-rises"),
        pytest.param([1 * GIB] * 30, [1 * GIB + i * 10 * MIB for i in range(30)], "caching", id="reserved-only"),
        pytest.param([1 * GIB] * 30, [2 * GIB] * 30, "unknown", id="nothing-grows"),
        pytest.param([1 * GIB + i * 100 * MIB for i in range(4)], [4 * GIB] * 4, "unknown", id="too-short"),
        pytest.param(
            [None if i % 3 else 1 * GIB + i * 10 * MIB for i in range(30)], [4 * GIB] * 30, "leak", id="gaps-skipped"
        ),
    ],
)
def test_classify_growth_table(allocated: list[int | None], reserved: list[int | None], expected: str):
    """Rising allocated is a leak, rising reserved alone is caching, flat or short is unknown."""
    times = [float(i) for i in range(len(allocated))]
    assert classify_growth(times, allocated, reserved) == expected


def test_sawtooth_allocated_is_not_a_leak():
    """Activations freed every step (a sawtooth over a flat floor) do not read as growth."""
    allocated = [(2 * GIB if i % 2 else 3 * GIB) for i in range(60)]
    assert classify_growth([float(i) for i in range(60)], allocated, [4 * GIB] * 60) != "leak"


def test_warm_up_bump_is_not_a_leak():
    """Optimizer state created at the first step is one rise, not a rise in every part of the window."""
    allocated = [GIB] * 3 + [3 * GIB] * 57
    assert classify_growth([float(i) for i in range(60)], allocated, [4 * GIB] * 60) != "leak"


def test_idle_then_mid_step_samples_are_not_a_leak():
    """Samples at rest, then samples taken mid-step (higher, varying): the floor stays, so no leak."""
    allocated = [2 * GIB] * 20 + [2 * GIB + (i * 7919 % 13) * 100 * MIB for i in range(40)]
    assert classify_growth([float(i) for i in range(60)], allocated, [6 * GIB] * 60) != "leak"


times_strategy = st.lists(st.floats(min_value=0.01, max_value=30.0, allow_nan=False), min_size=1, max_size=80).map(
    lambda gaps: [sum(gaps[: i + 1]) for i in range(len(gaps))]
)


@given(
    times=times_strategy,
    level=st.integers(min_value=0, max_value=80 * GIB),
    data=st.data(),
)
def test_flat_allocated_is_never_a_leak(times: list[float], level: int, data: st.DataObject):
    """Whatever reserved does, allocated memory that never changes is not classified as a leak."""
    reserved = data.draw(
        st.lists(st.one_of(st.none(), st.integers(0, 80 * GIB)), min_size=len(times), max_size=len(times))
    )
    assert classify_growth(times, [level] * len(times), reserved, GrowthConfig(min_span_seconds=0.0)) != "leak"


@given(times=times_strategy, data=st.data())
def test_falling_allocated_is_never_a_leak(times: list[float], data: st.DataObject):
    """Allocated memory that only goes down cannot be a leak."""
    steps = data.draw(st.lists(st.integers(0, GIB), min_size=len(times), max_size=len(times)))
    allocated = [80 * GIB - sum(steps[: i + 1]) for i in range(len(times))]
    assert classify_growth(times, allocated, [80 * GIB] * len(times), GrowthConfig(min_span_seconds=0.0)) != "leak"


@given(
    samples=st.lists(
        st.tuples(st.integers(0, TOTAL), st.integers(0, TOTAL), st.integers(0, 0)), min_size=1, max_size=40
    ),
)
def test_no_split_no_flush_no_finding(samples: list[tuple[int, int, int]]):
    """Without split blocks and without cache flushes or OOMs there is no fragmentation finding."""
    stats = [
        TorchStats(pid=1, device=0, allocated_bytes=a, reserved_bytes=r, inactive_split_bytes=s, num_alloc_retries=3)
        for a, r, s in samples
    ]
    assert detect_fragmentation(stats, [float(i) for i in range(len(stats))], TOTAL) is None


@pytest.mark.parametrize(
    ("requested", "reserved", "allocated", "free", "fragmented"),
    [
        (1 * GIB, 23 * GIB, 20 * GIB, 0, True),  # 3 GiB cached in pieces, a 1 GiB request failed
        (4 * GIB, 23 * GIB, 20 * GIB, 2 * GIB, True),  # the pieces plus the device's free would have held it
        (8 * GIB, 23 * GIB, 20 * GIB, 2 * GIB, False),  # not enough memory at all: the request did not fit
        (1 * GIB, 23 * GIB, 22 * GIB, 0, False),  # 1 GiB of slack is under a tenth of the pool: not to blame
        (None, 23 * GIB, 20 * GIB, None, True),  # request unknown: a real share of the pool in pieces
        (1 * GIB, None, 20 * GIB, 0, False),  # figures missing: no claim
    ],
)
def test_one_rule_says_whether_fragmentation_caused_an_oom(
    requested: int | None, reserved: int | None, allocated: int | None, free: int | None, fragmented: bool
) -> None:
    """Fragmentation is to blame when the cached pieces are a real share of the pool and, with the device's free
    memory, would have held the request."""
    got = fragmented_at_oom(
        requested_bytes=requested, reserved_bytes=reserved, allocated_bytes=allocated, device_free_bytes=free
    )
    assert got is fragmented


@given(
    requested=st.integers(1, 64 * GIB),
    reserved=st.integers(1, 64 * GIB),
    allocated=st.integers(0, 64 * GIB),
    free=st.integers(0, 64 * GIB),
)
def test_serve_and_run_agree_about_every_oom(requested: int, reserved: int, allocated: int, free: int) -> None:
    """`vramwatch run`'s monitor and the daemon's `oom` finding give the same verdict on the same OOM."""
    from vramwatch.agenthost.link import OomEvent
    from vramwatch.agenthost.monitor import _fragmented
    from vramwatch.detectors.oom import oom_finding

    ev = OomEvent(pid=1, device=0, requested_bytes=requested, capacity_bytes=None, device_free_bytes=free,
                  allocated_bytes=allocated, reserved_bytes=reserved, inactive_split_bytes=None,
                  num_alloc_retries=None, num_ooms=1, snapshot_path=None, observed=True)  # fmt: skip
    finding = oom_finding(pid=1, gpu_uuid=None, t=0.0, process=None, process_name=None, requested_bytes=requested,
                          allocated_bytes=allocated, reserved_bytes=reserved, inactive_split_bytes=None,
                          num_alloc_retries=None, device_free_bytes=free)  # fmt: skip
    assert finding.numbers["fragmented"] is _fragmented(ev)
