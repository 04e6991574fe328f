"""The built-in check of `vramwatch run`: what it prints, records and asks of the trainer."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from vramwatch.agenthost.link import AgentDevice, AgentReport, OomEvent
from vramwatch.agenthost.monitor import AdviseVerdict, MonitorConfig, RunMonitor, format_oom
from vramwatch.model import TorchStats
from vramwatch.steps import Schedule

MIB = 1 << 20
GIB = 1 << 30


def stats_report(
    t: float,
    allocated: int,
    reserved: int,
    *,
    free: int,
    split: int = 0,
    retries: int = 0,
    pid: int = 7,
) -> AgentReport:
    stats = TorchStats(
        pid=pid,
        device=0,
        allocated_bytes=allocated,
        reserved_bytes=reserved,
        inactive_split_bytes=split,
        num_alloc_retries=retries,
        num_ooms=0,
    )
    device = AgentDevice(stats=stats, cuda_uuid="u-0", total_bytes=80 * GIB, free_bytes=free)
    return AgentReport("stats", pid, 0, t, torch_version="2.11", devices=(device,), sample_seconds=1e-4)


class Recorder:
    def __init__(self, sent: bool = True) -> None:
        self.calls: list[tuple[int, str, str]] = []
        self.sent = sent

    def __call__(self, pid: int, level: str, reason: str) -> bool:
        self.calls.append((pid, level, reason))
        return self.sent


def make(config: MonitorConfig | None = None) -> tuple[RunMonitor, io.StringIO, io.StringIO, Recorder]:
    out, events, pressure = io.StringIO(), io.StringIO(), Recorder()
    return RunMonitor(out=out, events=events, send_pressure=pressure, config=config), out, events, pressure


def event_kinds(events: io.StringIO) -> list[str]:
    return [json.loads(line)["event"] for line in events.getvalue().splitlines()]


def test_fragmentation_is_said_once_per_episode():
    """A held fragmentation state is printed once with the remedy, not at every sample."""
    monitor, out, events, _ = make()
    for i in range(8):
        monitor.on_report(stats_report(float(i), 100 * MIB, 1900 * MIB, free=100 * MIB, split=1700 * MIB))
    text = out.getvalue()
    assert text.count("fragmentation in pid 7") == 1
    assert "expandable_segments:True" in text
    findings = [json.loads(line) for line in events.getvalue().splitlines() if '"finding"' in line]
    assert [f["severity"] for f in findings] == ["warning"]


def test_cache_flushes_escalate_to_critical():
    """Once the allocator starts flushing its cache, the warning escalates to critical, once."""
    monitor, out, _, _ = make()
    for i in range(5):
        monitor.on_report(stats_report(float(i), 100 * MIB, 1900 * MIB, free=100 * MIB, split=1700 * MIB))
    for i in range(5, 9):
        monitor.on_report(stats_report(float(i), 100 * MIB, 1900 * MIB, free=100 * MIB, split=1700 * MIB, retries=i))
    text = out.getvalue()
    assert text.count("warning: fragmentation") == 1
    assert text.count("critical: fragmentation") == 1


def test_leak_is_told_apart_from_caching():
    """Allocated memory rising is called a leak; reserved rising alone is not."""
    monitor, out, events, _ = make()
    for i in range(20):
        monitor.on_report(stats_report(float(i), GIB + i * 20 * MIB, 8 * GIB, free=60 * GIB))
    assert "a leak" in out.getvalue()
    assert "growth" in event_kinds(events)

    monitor, out, events, _ = make()
    for i in range(20):
        monitor.on_report(stats_report(float(i), GIB, 2 * GIB + i * 20 * MIB, free=60 * GIB))
    assert "leak" not in out.getvalue()


def test_pressure_is_sent_once_until_headroom_recovers():
    """Under 10 % headroom the process is notified once; it is re-armed only after recovering past 20 %."""
    monitor, out, _, pressure = make()
    low = {"free": 500 * MIB}
    monitor.on_report(stats_report(0.0, 9 * GIB, 9 * GIB + 200 * MIB, **low))
    monitor.on_report(stats_report(1.0, 9 * GIB, 9 * GIB + 200 * MIB, **low))
    assert [(pid, level) for pid, level, _ in pressure.calls] == [(7, "warning")]
    assert "memory pressure in pid 7" in out.getvalue()
    monitor.on_report(stats_report(2.0, 4 * GIB, 4 * GIB, free=5 * GIB))  # recovered (headroom 55 %)
    monitor.on_report(stats_report(3.0, 9 * GIB, 9 * GIB + 10 * MIB, free=10 * MIB))
    assert [level for _, level, _ in pressure.calls] == ["warning", "critical"]


def test_no_pressure_without_device_free_figure():
    """Without the device's free memory the headroom is unknown: nobody is notified on a guess."""
    monitor, _, _, pressure = make()
    report = stats_report(0.0, 9 * GIB, 9 * GIB, free=0)
    device = report.devices[0]
    blind = AgentReport("stats", 7, 0, 0.0, devices=(AgentDevice(device.stats, "u-0", 80 * GIB, None),))
    monitor.on_report(blind)
    assert pressure.calls == []


def oom(**overrides: object) -> OomEvent:
    values: dict[str, object] = {
        "pid": 7,
        "device": 0,
        "requested_bytes": 66 * MIB,
        "capacity_bytes": 80 * GIB,
        "device_free_bytes": 10 * MIB,
        "allocated_bytes": 100 * MIB,
        "reserved_bytes": 1900 * MIB,
        "inactive_split_bytes": 1700 * MIB,
        "num_alloc_retries": 1,
        "num_ooms": 1,
        "snapshot_path": "/s/oom-7-1-cuda0.pickle",
        "observed": True,
        "cuda_uuid": "abc",
    }
    values.update(overrides)
    return OomEvent(**values)  # type: ignore[arg-type]


def test_oom_post_mortem_blames_fragmentation_when_the_cache_would_have_held_it():
    """Reserved-but-unallocated memory that would have fit the request is called fragmentation."""
    text = "\n".join(format_oom(oom()))
    assert "ran out of GPU memory on cuda:0 (GPU-abc): asked for 66.0 MiB" in text
    assert "1.76 GiB reserved but unallocated" in text
    assert "expandable_segments:True" in text
    assert "memory_viz" in text


def test_oom_post_mortem_blames_the_tensors_when_they_fill_the_card():
    """When the cache is small the tensors themselves are what does not fit."""
    text = "\n".join(format_oom(oom(allocated_bytes=1890 * MIB, inactive_split_bytes=5 * MIB, snapshot_path=None)))
    assert "tensors themselves fill the memory" in text
    assert "expandable_segments" not in text
    assert "memory_viz" not in text


def test_oom_post_mortem_ignores_crumbs_of_cache():
    """A few MiB of cache next to a full card of tensors is not fragmentation, even if they would fit."""
    full = oom(
        requested_bytes=16 * MIB, device_free_bytes=15 * MIB, allocated_bytes=3300 * MIB, reserved_bytes=3315 * MIB
    )
    text = "\n".join(format_oom(full))
    assert "tensors themselves fill the memory" in text


def test_oom_report_is_printed_and_recorded():
    """An OOM report is printed as a post-mortem and written to the events file."""
    monitor, out, events, _ = make()
    monitor.on_report(AgentReport("oom", 7, 0, 5.0, oom=oom()))
    assert "ran out of GPU memory" in out.getvalue()
    (event,) = [json.loads(line) for line in events.getvalue().splitlines()]
    assert event["event"] == "oom"
    assert event["reserved_unallocated_bytes"] == 1800 * MIB


def step_report(t: float, first: int, last: int, peak: int, *, pid: int = 7) -> AgentReport:
    from vramwatch.model import StepRecord

    records = tuple(
        StepRecord(pid, 0, k, k, t, 0.5, peak if k == last else 8 * GIB, peak, 4 * GIB, peak)
        for k in range(first, last + 1)
    )
    return AgentReport("steps", pid, 0, t, steps=records)


def scheduled(
    schedule: Schedule, advise: AdviseVerdict | None = None, **config: Any
) -> tuple[RunMonitor, io.StringIO, io.StringIO, Recorder]:
    """A monitor forecasting against `schedule` at every report (`forecast_every_seconds` 0 unless given), with
    its output, its events and the pressure notices it sends."""
    out, events, pressure = io.StringIO(), io.StringIO(), Recorder()
    config = {"forecast_every_seconds": 0.0, **config}
    monitor = RunMonitor(
        out=out, events=events, send_pressure=pressure, schedule=schedule, advise=advise, config=MonitorConfig(**config)
    )
    return monitor, out, events, pressure


def test_step_forecast_warns_once_ahead_of_a_sampling_phase_that_will_not_fit():
    """Steps fit, the sampling measured after step 100 does not fit again: said once, critical as it is next."""
    monitor, out, events, pressure = scheduled(
        Schedule(max_steps=1000, sample_every=100), advise=lambda verdict: ["try: smaller samples"]
    )
    # 20 GiB usable (reserved + free); the first sampling peaked at 19.9 GiB, and then another process took
    # 1 GiB of the card: the sampling that ran cannot run again.
    monitor.on_report(stats_report(1.0, 4 * GIB, 10 * GIB, free=10 * GIB))
    monitor.on_report(step_report(2.0, 1, 100, 8 * GIB))
    monitor.on_report(step_report(3.0, 101, 101, int(19.9 * GIB)))
    monitor.on_report(stats_report(3.5, 4 * GIB, 10 * GIB, free=9 * GIB))
    monitor.on_report(step_report(4.0, 102, 150, 8 * GIB))
    monitor.on_report(step_report(5.0, 151, 160, 8 * GIB))
    said = out.getvalue()
    assert said.count("will run out at sampling after step 200") == 1, said
    assert "critical: pid 7" in said
    assert "try: smaller samples" in said
    assert [c[1] for c in pressure.calls] == ["critical"]
    forecasts = [json.loads(line) for line in events.getvalue().splitlines() if '"step_forecast"' in line]
    assert forecasts[-1]["outcome"] == "phase"
    assert forecasts[-1]["at_step"] == 200


def test_step_forecast_is_silent_for_a_run_that_fits():
    """A run whose steps and sampling fit with room says nothing, and logs its forecast as fitting."""
    monitor, out, events, _ = scheduled(Schedule(max_steps=1000, sample_every=100))
    monitor.on_report(stats_report(1.0, 4 * GIB, 10 * GIB, free=10 * GIB))
    monitor.on_report(step_report(2.0, 1, 100, 8 * GIB))
    monitor.on_report(step_report(3.0, 101, 101, 12 * GIB))
    monitor.on_report(step_report(4.0, 102, 150, 8 * GIB))
    assert out.getvalue() == ""
    forecasts = [json.loads(line) for line in events.getvalue().splitlines() if '"step_forecast"' in line]
    assert forecasts[-1]["outcome"] == "fits"


def leak_report(
    t: float,
    first: int,
    last: int,
    *,
    per_step: int,
    pid: int = 7,
    device: int = 0,
    noise: int = 0,
    activations: int = 4 * GIB,
) -> AgentReport:
    """Steps whose retained memory grows `per_step` a step, give or take `noise` (a noisy leak)."""
    import random

    from vramwatch.model import StepRecord

    rng = random.Random(first)  # noqa: S311 - reproducible noise, not secrets
    records = []
    for k in range(first, last + 1):
        kept = 4 * GIB + per_step * k + rng.randint(-noise, noise)
        peak = kept + activations
        records.append(StepRecord(pid, device, k, k, t, 0.5, peak, peak + GIB, kept, kept + GIB))
    return AgentReport("steps", pid, 0, t, steps=tuple(records))


def forecast_monitor(**config: object) -> tuple[RunMonitor, io.StringIO, Recorder]:
    monitor, out, _, pressure = scheduled(Schedule(max_steps=100_000), **config)
    return monitor, out, pressure


def test_a_noisy_leak_is_said_once_not_at_every_redo():
    """The failing step of a noisy leak moves a little at each forecast; it is said once, not at each redo."""
    monitor, out, _ = forecast_monitor()
    monitor.on_report(stats_report(0.0, 4 * GIB, 10 * GIB, free=10 * GIB))  # 20 GiB usable
    noisy = {"per_step": MIB, "noise": 32 * MIB, "activations": 8 * GIB}
    monitor.on_report(leak_report(1.0, 1, 200, **noisy))  # type: ignore[arg-type]
    for i in range(10, 50):
        monitor.on_report(leak_report(1.0 + i, 20 * i + 1, 20 * i + 20, **noisy))  # type: ignore[arg-type]
    said = out.getvalue()
    assert said.count("will run out at step") == 1, said


def test_a_forecast_said_again_when_its_failing_step_comes_much_closer():
    """Same outcome and severity, but the failing step comes far closer (the leak sped up): said again."""
    monitor, out, _ = forecast_monitor(critical_seconds=0.0)
    monitor.on_report(stats_report(0.0, 4 * GIB, 10 * GIB, free=10 * GIB))
    for i in range(20):
        monitor.on_report(leak_report(1.0 + i, 20 * i + 1, 20 * i + 20, per_step=MIB))
    assert out.getvalue().count("will run out at step") == 1
    base = 4 * GIB + 400 * MIB
    for i in range(20, 40):  # from step 401 the leak is four times as fast
        report = leak_report(1.0 + i, 20 * i + 1, 20 * i + 20, per_step=4 * MIB)
        shifted = tuple(
            type(r)(
                r.pid,
                r.device,
                r.first_step,
                r.last_step,
                r.t,
                r.seconds,
                base + 4 * MIB * (r.last_step - 400) + 4 * GIB,
                r.peak_reserved_bytes,
                base + 4 * MIB * (r.last_step - 400),
                r.reserved_bytes,
            )
            for r in report.steps
        )
        monitor.on_report(AgentReport("steps", 7, 0, report.t, steps=shifted))
    steps = [int(line.split("will run out at step ")[1].split(":")[0].replace(",", ""))
             for line in out.getvalue().splitlines() if "will run out at step" in line]  # fmt: skip
    assert len(steps) >= 2
    assert steps == sorted(steps, reverse=True)  # each repeat is news: sooner than the last said


def test_no_pressure_notice_when_the_failing_phase_is_a_save():
    """A save that will not fit is said as critical, but the trainer is not asked to save: that would OOM."""
    monitor, out, _, pressure = scheduled(Schedule(max_steps=1000, save_every=100))
    # The save peaked at 19.9 GiB of 20 GiB usable, then another process took 1 GiB: it cannot run again.
    monitor.on_report(stats_report(1.0, 4 * GIB, 10 * GIB, free=10 * GIB))
    monitor.on_report(step_report(2.0, 1, 100, 8 * GIB))
    monitor.on_report(step_report(3.0, 101, 101, int(19.9 * GIB)))
    monitor.on_report(stats_report(3.5, 4 * GIB, 10 * GIB, free=9 * GIB))
    monitor.on_report(step_report(4.0, 102, 150, 8 * GIB))
    said = out.getvalue()
    assert "critical: pid 7" in said
    assert "will run out at saving after step 200" in said
    assert "not asking it to save" in said
    assert pressure.calls == []


def test_capacity_is_that_of_the_device_the_steps_ran_on():
    """A process on two devices is forecast against the room of the device its steps ran on, not the last one."""
    out = io.StringIO()
    monitor = RunMonitor(
        out=out, schedule=Schedule(max_steps=1000, sample_every=100), config=MonitorConfig(forecast_every_seconds=0.0)
    )
    small = stats_report(1.0, 4 * GIB, 10 * GIB, free=10 * GIB).devices[0]  # cuda:0, 20 GiB usable
    big_stats = TorchStats(pid=7, device=1, allocated_bytes=GIB, reserved_bytes=GIB, inactive_split_bytes=0,
                           num_alloc_retries=0, num_ooms=0)  # fmt: skip
    big = AgentDevice(stats=big_stats, cuda_uuid="u-1", total_bytes=80 * GIB, free_bytes=79 * GIB)
    monitor.on_report(AgentReport("stats", 7, 0, 1.0, devices=(small, big)))
    monitor.on_report(step_report(2.0, 1, 100, 8 * GIB))
    monitor.on_report(step_report(3.0, 101, 101, int(19.9 * GIB)))
    # Then another process takes 1 GiB of cuda:0: the sampling that peaked at 19.9 GiB there cannot run again.
    smaller = stats_report(3.5, 4 * GIB, 10 * GIB, free=9 * GIB).devices[0]
    monitor.on_report(AgentReport("stats", 7, 0, 3.5, devices=(smaller, big)))
    monitor.on_report(step_report(4.0, 102, 150, 8 * GIB))
    assert "will run out at sampling after step 200" in out.getvalue()
    assert monitor.verdicts[(7, 0)].capacity_bytes == 19 * GIB


def test_every_rank_is_forecast_and_the_worst_is_said_once():
    """DDP ranks on one box are each forecast; the one that runs out first is said, naming the others."""
    monitor, out, _ = forecast_monitor()
    for pid in (7, 8):
        monitor.on_report(stats_report(0.0, 4 * GIB, 10 * GIB, free=10 * GIB, pid=pid))
    for i in range(20):
        monitor.on_report(leak_report(1.0 + i, 20 * i + 1, 20 * i + 20, per_step=4 * MIB, pid=8))
        monitor.on_report(leak_report(1.0 + i, 20 * i + 1, 20 * i + 20, per_step=2 * MIB, pid=7))
    said = out.getvalue()
    assert said.count("will run out at step") == 1, said
    assert "pid 8 at step" in said
    assert set(monitor.verdicts) == {(7, 0), (8, 0)}
    assert monitor.verdicts[(8, 0)].step < monitor.verdicts[(7, 0)].step  # type: ignore[operator]


def test_step_records_stay_bounded_in_a_long_run():
    """A long run's records per process stay under the configured bound; the phases are all kept."""
    monitor = RunMonitor(
        out=io.StringIO(),
        schedule=Schedule(sample_every=500),
        config=MonitorConfig(forecast_every_seconds=1e9, max_step_records=256, recent_step_records=64),
    )
    monitor.on_report(stats_report(0.0, 4 * GIB, 10 * GIB, free=60 * GIB))
    for i in range(200):
        monitor.on_report(step_report(1.0 + i, 50 * i + 1, 50 * i + 50, 8 * GIB))
    history = monitor.step_history(7, 0)
    assert history is not None
    assert len(history) <= 256
    assert history.last_step == 10_000
    kept = {r.last_step for r in history.records}
    assert {k + 1 for k in range(500, 10_000, 500)} <= kept  # every sampling interval is kept whole


def step_errors_report(t: float, count: int | None, pid: int = 7) -> AgentReport:
    """A stats report whose agent says its step hook has swallowed `count` exceptions so far."""
    import dataclasses

    return dataclasses.replace(stats_report(t, 4 * GIB, 10 * GIB, free=10 * GIB, pid=pid), step_errors=count)


@pytest.mark.parametrize(
    ("counts", "said"),
    [
        ([None, None], 0),  # an agent that does not count steps, or an older one
        ([0, 0, 0], 0),
        ([1, 2, 5], 1),  # the count grows at every stats message: still one warning
        ([None, 3, 3, 4], 1),
    ],
)
def test_a_failing_step_hook_is_said_once(counts: list[int | None], said: int) -> None:
    """The agent's step hook errors ride on every stats message; the run's output says them once, not each tick."""
    monitor, out, events, _ = make()
    for i, count in enumerate(counts):
        monitor.on_report(step_errors_report(float(i), count))
    assert out.getvalue().count("optimizer step hook failed") == said
    assert event_kinds(events).count("step_errors") == said


def test_a_failing_step_hook_is_said_once_for_each_process() -> None:
    """Two ranks whose step hooks fail are each named once."""
    monitor, out, _, _ = make()
    for i in range(3):
        for pid in (7, 8):
            monitor.on_report(step_errors_report(float(i), i + 1, pid=pid))
    lines = [line for line in out.getvalue().splitlines() if "step hook failed" in line]
    assert [line.split(":")[2].strip() for line in lines] == ["pid 7", "pid 8"]


@pytest.mark.parametrize(
    ("sample_every", "sampled_after", "severity", "upper_bound"),
    [
        # Sampling seen only before step 1 (with the start-up): it may run out at step 500: a warning.
        (500, [0], "warning", True),
        # Sampling measured after step 100 too: it will run out at step 200, the next one: critical.
        (100, [0, 100], "critical", False),
    ],
    ids=["upper-bound", "measured-after-a-step"],
)
def test_a_forecast_on_an_upper_bound_is_a_warning_never_critical(
    sample_every: int, sampled_after: list[int], severity: str, upper_bound: bool
) -> None:
    """A failing phase measured only with the start-up may run out: a warning, no pressure notice; step_forecast
    events carry `upper_bound`."""
    monitor, out, events, pressure = scheduled(
        Schedule(max_steps=1000, sample_every=sample_every, sample_at_first=True)
    )
    # The sampling peaked at 19.9 GiB of 20 GiB usable, then another process took 1 GiB.
    monitor.on_report(stats_report(1.0, 4 * GIB, 10 * GIB, free=10 * GIB))
    last = 0
    for after in sampled_after:
        if after > last:
            monitor.on_report(step_report(2.0 + after, last + 1, after, 8 * GIB))
        monitor.on_report(step_report(2.5 + after, after + 1, after + 1, int(19.9 * GIB)))
        last = after + 1
    monitor.on_report(stats_report(200.0, 4 * GIB, 10 * GIB, free=9 * GIB))
    monitor.on_report(step_report(201.0, last + 1, 150, 8 * GIB))
    said = out.getvalue()
    assert f"{severity}: pid 7" in said, said
    assert ("may run out at sampling" in said) is upper_bound
    assert [c[1] for c in pressure.calls] == (["critical"] if severity == "critical" else [])
    forecasts = [json.loads(line) for line in events.getvalue().splitlines() if '"step_forecast"' in line]
    assert forecasts[-1]["outcome"] == "phase"
    assert forecasts[-1]["upper_bound"] is upper_bound


def saving_leak_report(
    t: float,
    first: int,
    last: int,
    *,
    pid: int = 7,
    per_step: int = 4 * MIB,
    save_extra: int = 2 * GIB,
    save_after: int = 2000,
) -> AgentReport:
    """Steps that keep `per_step` more each (a leak) and peak 4 GiB above what they keep; the interval after step
    `save_after` holds a save `save_extra` above a step."""
    from vramwatch.model import StepRecord

    records = []
    for k in range(first, last + 1):
        kept = 4 * GIB + per_step * k
        peak = kept + 4 * GIB + (save_extra if k == save_after + 1 else 0)
        records.append(StepRecord(pid, 0, k, k, t, 0.5, peak, peak + GIB, kept, kept + GIB))
    return AgentReport("steps", pid, 0, t, steps=tuple(records))


def saving_monitor(
    *, sample_every: int | None = None, save_every: int = 2000, room: bool = True
) -> tuple[RunMonitor, io.StringIO, io.StringIO, Recorder]:
    """A run of 100,000 steps saving every `save_every` (and sampling every `sample_every`), against 20 GiB
    usable (told now with `room`, else by the test)."""
    monitor, out, events, pressure = scheduled(
        Schedule(max_steps=100_000, save_every=save_every, sample_every=sample_every)
    )
    if room:
        monitor.on_report(stats_report(0.0, 4 * GIB, 10 * GIB, free=10 * GIB))
    return monitor, out, events, pressure


def drive(monitor: RunMonitor, pressure: Recorder, first: int, last: int, **run: int) -> int | None:
    """Report steps `first`..`last` (`saving_leak_report`'s `run`) in reports of 20 steps; the last step reported
    when the first pressure notice went out (None: none did)."""
    for start in range(first, last + 1, 20):
        end = min(start + 19, last)
        monitor.on_report(saving_leak_report(float(start), start, end, **run))
        if pressure.calls:
            return end
    return None


def records_of(events: io.StringIO, kind: str) -> list[dict[str, object]]:
    found = [json.loads(line) for line in events.getvalue().splitlines()]
    return [e for e in found if e["event"] == kind]


def test_a_save_is_asked_for_while_it_still_fits_not_when_the_failing_step_is_near():
    """A leak makes a save (+2 GiB) stop fitting ~500 steps before the training steps run out: the notice goes out
    a lead (2 min of steps) before the last step a save fits, not 2 min before the failing step."""
    monitor, out, events, pressure = saving_monitor(room=False)
    drive(monitor, pressure, 1, 2040)
    monitor.on_report(stats_report(2041.0, 4 * GIB, 10 * GIB, free=10 * GIB))  # forecast from here: save measured
    asked_at = drive(monitor, pressure, 2041, 2900)
    forecast = records_of(events, "step_forecast")[-1]
    last_save_step, fail_step = forecast["last_save_step"], forecast["at_step"]
    assert isinstance(last_save_step, int)
    assert isinstance(fail_step, int)
    assert forecast["outcome"] == "growth"
    assert 400 < fail_step - last_save_step < 600  # 2 GiB at 4 MiB a step
    assert asked_at is not None
    lead = 240  # 120 s at 0.5 s a step, more than save_lead_steps
    assert last_save_step - lead <= asked_at <= last_save_step - lead + 20  # the first forecast past it
    assert (fail_step - asked_at) * 0.5 > monitor.config.critical_seconds  # the old rule would still wait
    said = out.getvalue()
    assert "warning: pid 7 at step 2,060" in said
    assert f"it fits only until step {last_save_step:,}: it will be asked to save from step" in said
    assert f"save needs +2.00 GiB beyond a training step; it fits only until step {last_save_step:,}" in said
    assert "asking it to save now" in said
    assert [c[1] for c in pressure.calls] == ["critical"]
    (event,) = records_of(events, "pressure")
    assert (event["source"], event["sent"], event["withheld"]) == ("forecast", True, False)
    assert event["last_save_step"] is not None


@pytest.mark.parametrize(
    ("sample_every", "asked", "words"),
    [
        # The save's figure is its own: it would itself run out, so the trainer is not asked.
        (None, False, "it no longer fits: not asking it to save: the save itself would run out of memory"),
        # Measured only in the sampling's interval, the figure is a bound: the save may fit, and is asked for.
        (2000, True, "(measured only together with sampling); it may no longer fit: asking it to save now all"),
    ],
    ids=["measured", "upper-bound"],
)
def test_a_save_that_no_longer_fits_is_not_asked_for(sample_every: int | None, asked: bool, words: str) -> None:
    """Another process takes room after the save ran: a save no longer fits though the steps do for ~300 steps;
    said as critical at once, and the trainer is asked to save only when the save's figure is a bound."""
    monitor, out, events, pressure = saving_monitor(sample_every=sample_every)
    drive(monitor, pressure, 1, 2040)
    assert pressure.calls == []
    monitor.on_report(stats_report(2041.0, 4 * GIB, 10 * GIB, free=8 * GIB))  # 18 GiB usable
    drive(monitor, pressure, 2041, 2100)
    said = out.getvalue()
    assert "critical: pid 7" in said, said
    assert words in said
    assert [c[1] for c in pressure.calls] == (["critical"] if asked else [])
    forecast = records_of(events, "step_forecast")[-1]
    assert forecast["outcome"] == "growth"
    assert forecast["last_save_step"] is None
    assert forecast["save_needed_bytes"] is not None
    (event,) = records_of(events, "pressure")
    assert (event["withheld"], event["sent"]) == (not asked, asked)


def test_a_headroom_notice_is_withheld_when_the_save_no_longer_fits():
    """The headroom notice asks for a checkpoint too: not one the step forecast says would itself run out."""
    monitor, out, events, pressure = saving_monitor()
    drive(monitor, pressure, 1, 2040)
    monitor.on_report(stats_report(2041.0, 4 * GIB, 10 * GIB, free=8 * GIB))
    drive(monitor, pressure, 2041, 2100)
    monitor.on_report(stats_report(2101.0, 17 * GIB, 17 * GIB + 100 * MIB, free=900 * MIB))  # 5.5 % headroom
    assert pressure.calls == []
    assert "memory pressure in pid 7: 1000.0 MiB of 17.98 GiB left on cuda:0; not notifying it" in out.getvalue()
    headroom = [e for e in records_of(events, "pressure") if e["source"] == "headroom"]
    assert len(headroom) == 1
    assert (headroom[0]["withheld"], headroom[0]["sent"], headroom[0]["last_save_step"]) == (True, False, None)


def test_a_rank_whose_save_would_run_out_holds_back_the_collective_save():
    """With several ranks saving is collective: one rank whose save would run out means no rank is asked."""
    monitor, out, events, pressure = saving_monitor()
    monitor.on_report(stats_report(0.0, 4 * GIB, 10 * GIB, free=10 * GIB, pid=8))
    drive(monitor, pressure, 1, 2040, pid=8)
    drive(monitor, pressure, 1, 2040, pid=7)
    monitor.on_report(stats_report(2041.0, 4 * GIB, 10 * GIB, free=8 * GIB, pid=8))  # only rank 8's card shrank
    drive(monitor, pressure, 2041, 2100, pid=7)
    drive(monitor, pressure, 2041, 2100, pid=8)
    assert pressure.calls == []
    said = out.getvalue()
    assert "critical: pid 8" in said
    assert {e["pid"] for e in records_of(events, "pressure") if e["withheld"]} == {7, 8}


def test_without_a_save_measured_the_notice_says_its_cost_is_unknown():
    """No save in the records: the notice goes out when the failing step is near, as before, saying that what a
    save needs is not known."""
    monitor, out, _ = forecast_monitor()
    monitor.on_report(stats_report(0.0, 4 * GIB, 10 * GIB, free=10 * GIB))  # 20 GiB usable
    for i in range(150):
        monitor.on_report(leak_report(1.0 + i, 20 * i + 1, 20 * i + 20, per_step=4 * MIB))
    said = out.getvalue()
    assert "critical: pid 7" in said, said
    assert "asking it to save now (what a save needs is not known: none has been measured yet)" in said


def test_a_failing_save_is_preceded_by_one_asked_for_while_it_fits():
    """Growth makes the save after step 3,000 run out; a save asked for before its last fitting step (~2,765) still
    fits, so it is asked for then rather than refused because the failing phase is a save."""
    monitor, out, events, pressure = saving_monitor(save_every=1000)
    run = {"per_step": 2 * MIB, "save_extra": 6 * GIB, "save_after": 1000}
    asked_at = drive(monitor, pressure, 1, 2800, **run)
    forecast = records_of(events, "step_forecast")[-1]
    assert (forecast["outcome"], forecast["phase"], forecast["at_step"]) == ("phase", "save", 3000)
    last_save_step = forecast["last_save_step"]
    assert isinstance(last_save_step, int)
    assert 2700 < last_save_step < 2800
    assert asked_at is not None
    assert asked_at <= last_save_step - 240
    assert "asking it to save now" in out.getvalue()
    assert [c[1] for c in pressure.calls] == ["critical"]


# The 1 Hz allocated figures (MiB) of a healthy run on the H200 (`benchmarks/results/probe-h200-2026-12-04b`,
# `fits`): the ramp of its first buckets, then samples that fall anywhere in a 38 ms step. It ended normally.
HEALTHY_SAMPLES_MIB = (14499, 14572, 14572, 14572, 14572, 14572, 14572, 14719, 14766, 14684, 14696, 14807)


def _hello(pid: int = 7, *, counts_steps: bool | None = True) -> AgentReport:
    return AgentReport("hello", pid, 0, 0.0, torch_version="2.11", counts_steps=counts_steps)


def test_a_healthy_run_s_mid_step_samples_are_a_leak_only_to_the_samples() -> None:
    """The samples of a healthy run, rising in every part of 11 s as they fall mid-step, read as a leak to the
    samples' floor; a process that counts steps is judged by its steps, which keep nothing: no leak said."""
    monitor, out, _, _ = make()
    for i, mib in enumerate(HEALTHY_SAMPLES_MIB):
        monitor.on_report(stats_report(float(i), mib * MIB, 15 * GIB, free=9 * GIB))
    assert "a leak" in out.getvalue()  # what `run` said on the H200 before it asked the steps

    monitor, out, events, _ = make()
    monitor.on_report(_hello())
    for i, mib in enumerate(HEALTHY_SAMPLES_MIB):
        monitor.on_report(leak_report(float(i), 26 * i + 1, 26 * i + 26, per_step=0))
        monitor.on_report(stats_report(float(i), mib * MIB, 15 * GIB, free=9 * GIB))
    assert "leak" not in out.getvalue()
    assert "growth" not in event_kinds(events)


def test_a_step_counting_leak_is_said_per_step() -> None:
    """A process whose steps keep 4 MiB each is said to leak, in MiB a step, once that adds up to the rule's
    least rise, whether or not its agent's hello said it counts steps."""
    for hello in (_hello(), _hello(counts_steps=None)):
        monitor, out, events, _ = make()
        monitor.on_report(hello)
        for i in range(12):
            monitor.on_report(leak_report(float(i), 20 * i + 1, 20 * i + 20, per_step=4 * MIB))
            monitor.on_report(stats_report(float(i), 4 * GIB + 80 * i * MIB, 12 * GIB, free=60 * GIB))
        text = out.getvalue()
        assert text.count("a leak") == 1
        assert "grows 4.0 MiB a step" in text
        growth = [e for e in map(json.loads, events.getvalue().splitlines()) if e["event"] == "growth"]
        assert [g["source"] for g in growth] == ["steps"]


def test_a_leak_in_a_loop_without_optimizer_steps_is_judged_by_its_samples() -> None:
    """An agent counts steps but the loop never calls `torch.optim` (benchmarks/agent/leak.py): with no step
    reported, the samples' floor decides, and a steady rise is a leak."""
    monitor, out, events, _ = make()
    monitor.on_report(_hello())
    for i in range(20):
        monitor.on_report(stats_report(float(i), GIB + i * 160 * MIB, 8 * GIB, free=60 * GIB))
    assert "a leak" in out.getvalue()
    growth = [e for e in map(json.loads, events.getvalue().splitlines()) if e["event"] == "growth"]
    assert [g["source"] for g in growth] == ["samples"]


def test_a_short_run_s_first_buckets_are_no_leak() -> None:
    """Steps whose kept memory rises over their first 17 buckets (each new shape's caches) and then holds: a
    30-step run is not called a leak, though its profile may still read the ramp as growth."""
    from vramwatch.model import StepRecord

    monitor, out, events, _ = make(MonitorConfig(forecast_every_seconds=0.0))
    records = []
    for k in range(1, 31):
        kept = 4 * GIB + min(k, 17) * 16 * MIB
        records.append(StepRecord(7, 0, k, k, float(k), 0.5, kept + 4 * GIB, kept + 5 * GIB, kept, kept + GIB))
    for i in range(0, 30, 5):
        monitor.on_report(AgentReport("steps", 7, 0, float(i), steps=tuple(records[i : i + 5])))
        monitor.on_report(stats_report(float(i), 4 * GIB + min(i + 5, 17) * 16 * MIB, 12 * GIB, free=60 * GIB))
    assert "leak" not in out.getvalue()
    assert "growth" not in event_kinds(events)
