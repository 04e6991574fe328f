"""The simulated backend: deterministic, physically consistent scenarios whose ground truth is what happens."""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from vramwatch.backends.simulated import (
    SCENARIOS,
    STEP_SECONDS,
    GiB,
    MiB,
    SimulatedBackend,
    ground_truth,
    scenario_names,
)
from vramwatch.clock import SystemClock
from vramwatch.errors import ConfigError
from vramwatch.model import Reading
from vramwatch.testing import FakeClock
from vramwatch.typing import Backend

T0 = 1000.0  # FakeClock's default monotonic origin


def readings_at(scenario: str, times: Sequence[float], *, seed: int = 0) -> list[Reading]:
    """Readings of a fresh backend at the given scenario times (seconds since it started)."""
    clock = FakeClock()
    backend = SimulatedBackend(scenario, seed=seed, clock=clock)
    out = []
    for s in times:
        clock.now = T0 + s
        out.append(backend.read())
    return out


def at(backend: SimulatedBackend, clock: FakeClock, s: float) -> Reading:
    clock.now = backend.started_at + s
    return backend.read()


def used(reading: Reading, gpu: int = 0) -> int:
    value = reading.gpus[gpu].used_bytes
    assert value is not None
    return value


def pids_on(reading: Reading, uuid: str | None = None) -> set[int]:
    return {p.pid for p in reading.processes if uuid is None or p.gpu_uuid == uuid}


def test_is_a_backend() -> None:
    """The simulator satisfies the Backend protocol and says it is simulated."""
    backend = SimulatedBackend(clock=FakeClock())
    assert isinstance(backend, Backend)
    assert backend.kind == "simulated"
    info = backend.describe()
    assert info["backend"] == "simulated"
    assert info["scenario"] == "steady"
    assert info["seed"] == "0"
    backend.close()
    backend.close()


def test_registry_lists_every_scenario_with_one_line() -> None:
    """Every scenario the brief names is registered, in order, with a one-line description."""
    expected = {"steady", "warmup", "leak", "contention", "slow_leak", "fast_leak", "stepwise_leak"}
    expected |= {"plateau", "spike_oom", "stale", "lost_gpu", "scale", "scale512"}
    assert set(scenario_names()) == expected
    assert scenario_names() == tuple(SCENARIOS)
    for sc in SCENARIOS.values():
        assert sc.description
        assert "\n" not in sc.description


def test_unknown_scenario_is_a_config_error() -> None:
    """A typo in --simulate names the choices instead of crashing."""
    with pytest.raises(ConfigError, match="steady"):
        SimulatedBackend("nope", clock=FakeClock())


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s != "scale"])
def test_same_seed_same_run(scenario: str) -> None:
    """Two runs with one seed give identical readings and ground truth."""
    times = [0.0, 1.0, 7.5, 30.0, 61.0, 120.0, 240.25]
    assert readings_at(scenario, times, seed=7) == readings_at(scenario, times, seed=7)
    assert ground_truth(scenario, seed=7, horizon_seconds=300) == ground_truth(scenario, seed=7, horizon_seconds=300)


def test_different_seeds_differ() -> None:
    """Another seed gives other pids, UUIDs and figures."""
    times = [0.0, 30.0, 120.0]
    a, b = readings_at("steady", times, seed=1), readings_at("steady", times, seed=2)
    assert {g.uuid for g in a[0].gpus}.isdisjoint({g.uuid for g in b[0].gpus})
    assert pids_on(a[-1]) != pids_on(b[-1])
    assert [g.used_bytes for g in a[-1].gpus] != [g.used_bytes for g in b[-1].gpus]


def test_gpu_uuids_are_stable_per_seed_and_well_formed() -> None:
    """A seed names the same cards in every scenario, with NVML-shaped UUIDs."""
    steady = readings_at("steady", [0.0], seed=3)[0].gpus
    leak = readings_at("leak", [0.0], seed=3)[0].gpus
    assert [g.uuid for g in steady] == [g.uuid for g in leak]
    for g in steady:
        assert re.fullmatch(r"GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", g.uuid)
        assert g.name == "Simulated RTX 4090"
        assert g.total_bytes == 24 * GiB


def test_read_cadence_does_not_change_the_story() -> None:
    """Reading every step or jumping straight to a time gives the same reading (fast-forward is exact)."""
    fine_times = [k * STEP_SECONDS for k in range(int(200 / STEP_SECONDS) + 1)]
    fine = dict(zip(fine_times, readings_at("contention", fine_times, seed=5), strict=True))
    coarse_times = [0.0, 59.75, 60.0, 100.0, 149.75, 150.0, 200.0]
    for s, reading in zip(coarse_times, readings_at("contention", coarse_times, seed=5), strict=True):
        assert reading == fine[s]


@dataclass
class RecordingClock:
    """The system clock, remembering every monotonic value it handed out."""

    inner: SystemClock = field(default_factory=SystemClock)
    seen: list[float] = field(default_factory=list)

    def monotonic(self) -> float:
        now = self.inner.monotonic()
        self.seen.append(now)
        return now

    def wall(self) -> float:
        return self.inner.wall()

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


def test_real_time_equals_fast_forward() -> None:
    """Under the system clock the scenario runs in real time; a fake clock at the same instants agrees."""
    real = RecordingClock()
    backend = SimulatedBackend("steady", seed=4, clock=real)
    live = []
    give_up = time.monotonic() + 10.0
    while backend.elapsed() < 0.75 and time.monotonic() < give_up:
        live.append(backend.read())
        time.sleep(0.05)
    origin, instants = real.seen[0], real.seen[1:]
    assert backend.elapsed() >= 0.75  # the world moved with real time
    assert instants[-1] - origin >= 0.75
    fake = FakeClock()
    replica = SimulatedBackend("steady", seed=4, clock=fake)
    for now, reading in zip(instants, live, strict=True):
        fake.now = T0 + (now - origin)
        assert replica.read() == reading


def check_consistent(reading: Reading) -> None:
    """The invariants NVML's own figures obey."""
    up = {g.uuid for g in reading.gpus if g.up}
    for g in reading.gpus:
        if not g.up:
            assert (g.total_bytes, g.used_bytes, g.free_bytes) == (None, None, None)
            assert g.error
            continue
        assert g.total_bytes is not None
        assert g.used_bytes is not None
        assert g.free_bytes is not None
        assert g.reserved_bytes is not None
        assert 0 < g.used_bytes <= g.total_bytes
        assert g.free_bytes >= 0
        assert g.free_bytes + g.used_bytes + g.reserved_bytes == g.total_bytes
        procs = [p.used_bytes for p in reading.processes if p.gpu_uuid == g.uuid]
        assert all(u is not None and u > 0 for u in procs)
        assert sum(u for u in procs if u is not None) <= g.used_bytes
    assert {p.gpu_uuid for p in reading.processes} <= up
    keys = [(p.gpu_uuid, p.pid) for p in reading.processes]
    assert len(keys) == len(set(keys))
    assert reading.meta == ()
    assert reading.t is None


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_scenario_is_physically_consistent(scenario: str) -> None:
    """Through its whole story, every reading obeys used <= total, free + used + reserved == total, sum <= used."""
    clock = FakeClock()
    backend = SimulatedBackend(scenario, seed=11, clock=clock)
    inspector = backend.inspector()
    horizon = SCENARIOS[scenario].horizon_seconds
    step = max(1.0, horizon / 600)
    s = 0.0
    while s <= horizon:
        reading = at(backend, clock, s)
        check_consistent(reading)
        for p in reading.processes[:64]:
            meta = inspector.inspect(p.pid)
            assert meta.pid == p.pid
            assert meta.start_time is not None
            assert meta.start_time <= clock.wall()
        s += step
    assert inspector.pid_namespace_matches()


OOM_SCENARIOS = ["leak", "contention", "slow_leak", "fast_leak", "stepwise_leak", "spike_oom"]


@pytest.mark.parametrize("scenario", OOM_SCENARIOS)
def test_process_disappears_at_its_ground_truth_oom(scenario: str) -> None:
    """An OOM in the ground truth is a process listed one step before and gone at that instant, for want of room."""
    truth = ground_truth(scenario, seed=2)
    ooms = [e for e in truth["events"] if e["kind"] == "oom"]
    assert len(ooms) == 1
    oom = ooms[0]
    clock = FakeClock()
    backend = SimulatedBackend(scenario, seed=2, clock=clock)
    before = at(backend, clock, oom["t"] - STEP_SECONDS)
    after = at(backend, clock, oom["t"])
    assert oom["pid"] in pids_on(before, oom["gpu"])
    assert oom["pid"] not in pids_on(after, oom["gpu"])
    gpu = next(g for g in before.gpus if g.uuid == oom["gpu"])
    used = next(p.used_bytes for p in before.processes if p.pid == oom["pid"])
    assert used is not None
    assert gpu.free_bytes is not None
    assert used == oom["used_bytes"]
    # It wanted more than it held plus all that was free (give or take a transient workspace).
    assert oom["demand_bytes"] > used + gpu.free_bytes - 16 * MiB
    record = next(r for r in truth["processes"] if r["pid"] == oom["pid"] and r["end"] == "oom")
    assert record["end_t"] == oom["t"]


def test_leak_story_timeline() -> None:
    """The leak grows ~20 MB/s after warm-up, OOMs within minutes, and a restart reuses the pid."""
    truth = ground_truth("leak", seed=0)
    leaker = next(r for r in truth["processes"] if r["behaviour"] == "leak")
    assert 18e6 <= leaker["leak_bytes_per_second"] <= 22e6
    assert leaker["end"] == "oom"
    assert 300 < leaker["end_t"] < 800
    clock = FakeClock()
    backend = SimulatedBackend("leak", seed=0, clock=clock)
    u1 = next(p.used_bytes for p in at(backend, clock, 200.0).processes if p.pid == leaker["pid"])
    u2 = next(p.used_bytes for p in at(backend, clock, 300.0).processes if p.pid == leaker["pid"])
    assert u1 is not None
    assert u2 is not None
    rate = (u2 - u1) / 100.0
    assert abs(rate - leaker["leak_bytes_per_second"]) < 0.5e6  # 2 MiB segments and workspaces blur it a little


def test_pid_reuse_in_leak_gives_a_new_start_time() -> None:
    """After the OOM the restarted trainer has the dead one's pid and a later start time."""
    truth = ground_truth("leak", seed=0)
    runs = [r for r in truth["processes"] if r["gpu"] == truth["gpus"][0]["uuid"]]
    assert len(runs) == 2
    dead, fresh = runs
    assert dead["pid"] == fresh["pid"]
    assert fresh["start_time"] > dead["start_time"]
    assert fresh["start_t"] > dead["end_t"]
    clock = FakeClock()
    backend = SimulatedBackend("leak", seed=0, clock=clock)
    inspector = backend.inspector()
    at(backend, clock, dead["end_t"] - 1)
    old = inspector.inspect(dead["pid"])
    at(backend, clock, dead["end_t"] + 1)
    assert inspector.inspect(dead["pid"]).start_time is None  # in the pause: no such process
    reading = at(backend, clock, fresh["start_t"] + 5)
    new = inspector.inspect(dead["pid"])
    assert dead["pid"] in pids_on(reading)
    assert old.start_time == dead["start_time"]
    assert new.start_time == fresh["start_time"]
    assert new.start_time != old.start_time


def test_stale_processes_are_stopped_or_zombie_orphans_holding_6_gib() -> None:
    """The stale scenario's leftovers are stopped/zombie, re-parented to init, ~6 GiB each."""
    clock = FakeClock()
    backend = SimulatedBackend("stale", seed=0, clock=clock)
    reading = at(backend, clock, 60.0)
    inspector = backend.inspector()
    stale = {p.pid: p for p in reading.processes if inspector.inspect(p.pid).status in {"stopped", "zombie"}}
    assert {inspector.inspect(pid).status for pid in stale} == {"stopped", "zombie"}
    for pid, p in stale.items():
        meta = inspector.inspect(pid)
        assert meta.ppid == 1
        assert meta.start_time is not None
        assert meta.start_time < clock.wall() - 3 * 3600
        assert p.used_bytes is not None
        assert abs(p.used_bytes - 6 * GiB) < 0.4 * GiB
    truth = ground_truth("stale", seed=0)
    assert {r["pid"] for r in truth["processes"] if r["role"] == "stale"} == set(stale)


def test_lost_gpu_goes_down_at_30_seconds() -> None:
    """GPU 1 answers until 30 s, then reports up=False with no memory figures and no processes."""
    before, after = readings_at("lost_gpu", [29.75, 30.0])
    assert all(g.up for g in before.gpus)
    gpu0, gpu1 = after.gpus
    assert gpu0.up
    assert not gpu1.up
    assert gpu1.used_bytes is None
    assert gpu1.error
    assert pids_on(before, gpu1.uuid)
    assert not pids_on(after, gpu1.uuid)
    assert pids_on(after, gpu0.uuid) == pids_on(before, gpu0.uuid)
    events = ground_truth("lost_gpu")["events"]
    assert {"t": 30.0, "kind": "gpu_lost", "gpu": gpu1.uuid} in events


def test_contention_another_user_takes_the_room() -> None:
    """At 60 s another user's process appears and loads for 40 s; contention is dated when it took half the room."""
    truth = ground_truth("contention", seed=0)
    contention = next(e for e in truth["events"] if e["kind"] == "contention")
    start = next(e for e in truth["events"] if e["kind"] == "start" and e["pid"] == contention["pid"])
    oom = next(e for e in truth["events"] if e["kind"] == "oom")
    assert start["t"] == 60.0
    assert contention["t"] == 60.0 + 2.0 + 40.0 / 2
    assert oom["gpu"] == contention["gpu"]
    assert oom["pid"] != contention["pid"]
    assert oom["t"] > contention["t"]
    clock = FakeClock()
    backend = SimulatedBackend("contention", seed=0, clock=clock)
    sizes = []
    for s in (61.0, 80.0, 110.0):
        reading = at(backend, clock, s)
        sizes.append(next(p.used_bytes for p in reading.processes if p.pid == contention["pid"]))
    assert sizes == sorted(sizes)
    assert sizes[-1] is not None
    assert sizes[-1] > 4 * GiB
    users = {backend.inspector().inspect(pid).user for pid in (contention["pid"], oom["pid"])}
    assert len(users) == 2


def test_plateau_stops_short_of_the_card() -> None:
    """The plateau trainer grows, slows, and holds ~92% of the card without ever running out."""
    truth = ground_truth("plateau")
    assert not [e for e in truth["events"] if e["kind"] == "oom"]
    early, mid, late = (used(r) for r in readings_at("plateau", [60.0, 900.0, 1200.0]))
    total = 24 * GiB
    assert early < mid
    assert 0.90 * total <= late <= 0.93 * total
    assert abs(late - mid) < 64 * MiB


def test_warmup_rises_in_steps_then_stays_flat() -> None:
    """Warm-up climbs through several distinct levels in the first minutes, then never moves beyond noise."""
    times = [float(s) for s in range(0, 900, 2)]
    series = [sum(p.used_bytes or 0 for p in r.processes) for r in readings_at("warmup", times)]
    early = [u for s, u in zip(times, series, strict=True) if s < 300 and u]
    late = [u for s, u in zip(times, series, strict=True) if s >= 300]
    assert len({u // (256 * MiB) for u in early}) >= 5  # weights, step, optimizer, validation, samples
    assert min(late) > 20 * GiB * 0.7
    assert max(late) - min(late) <= 16 * MiB


def test_spike_oom_jumps_from_context_only() -> None:
    """The spike trainer is a bare CUDA context until its first step asks for more than the card."""
    truth = ground_truth("spike_oom")
    oom = next(e for e in truth["events"] if e["kind"] == "oom")
    reading = readings_at("spike_oom", [oom["t"] - 1.0])[0]
    used = next(p.used_bytes for p in reading.processes if p.pid == oom["pid"])
    assert used is not None
    assert used <= 520 * MiB
    assert oom["demand_bytes"] > 24 * GiB


def test_steady_has_a_launcher_tree_across_two_gpus_and_a_container() -> None:
    """accelerate's two workers sit on different GPUs under one root; the inference server is containerised."""
    clock = FakeClock()
    backend = SimulatedBackend("steady", seed=0, clock=clock)
    reading = at(backend, clock, 60.0)
    inspector = backend.inspector()
    metas = [inspector.inspect(p.pid) for p in reading.processes]
    workers = [m for m in metas if m.root_name == "accelerate"]
    assert len(workers) == 2
    assert len({p.gpu_uuid for p in reading.processes if p.pid in {m.pid for m in workers}}) == 2
    root = inspector.inspect(workers[0].root_pid or 0)
    assert root.name == "accelerate"
    assert root.start_time == workers[0].root_start_time
    assert all(m.ppid == root.pid for m in workers)
    assert workers[0].cmdline is not None
    assert "--train_batch_size" in workers[0].cmdline
    assert sum(1 for m in metas if m.container_id) == 1


def test_scale_read_is_cheap() -> None:
    """8 GPUs x 512 processes read in well under a few milliseconds, so a tick + scrape can be measured."""
    clock = FakeClock()
    backend = SimulatedBackend("scale", seed=0, clock=clock)
    reading = backend.read()
    assert len(reading.gpus) == 8
    assert len(reading.processes) == 8 * 512
    assert all(10 * MiB <= (p.used_bytes or 0) <= 100 * MiB for p in reading.processes)
    durations = []
    for _ in range(50):
        clock.advance(1.0)
        t0 = time.perf_counter()
        backend.read()
        durations.append(time.perf_counter() - t0)
    assert statistics.median(durations) < 0.005


def test_ground_truth_is_json_and_maps_to_the_clock() -> None:
    """Ground truth serialises to JSON, with an origin that maps scenario seconds to the backend's clock."""
    import json

    clock = FakeClock(now=5000.0)
    backend = SimulatedBackend("leak", seed=0, clock=clock)
    clock.advance(100.0)
    truth = backend.ground_truth()
    assert json.loads(json.dumps(truth)) == truth
    assert truth["origin"] == {"monotonic": 5000.0, "wall": clock.wall_offset + 5000.0}
    assert truth["elapsed_seconds"] == 100.0
    assert backend.events() == truth["events"]
    assert [e["kind"] for e in truth["events"]] == ["start"]
