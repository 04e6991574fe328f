"""A simulated GPU host: scripted training runs on fake cards, for demos, tests and the detection benchmark.

`vramwatch serve --simulate leak` shows what the daemon does when a trainer leaks, on a laptop without a GPU.
Each scenario is a small story (a trainer warms up, leaks, runs out of memory and is restarted) told with the
physics NVML actually shows:

* a PyTorch process appears as its CUDA context (~500 MiB) plus what its caching allocator has *reserved*;
  the allocator takes memory in segments (2 MiB for small tensors, 20 MiB for medium ones, larger requests
  rounded to 2 MiB) and keeps it, so NVML sees a ratchet: the sawtooth of *allocated* memory inside a
  training step is invisible, only its peak shows, as a plateau; warm-up (weights, first step, optimizer
  state, first validation, first sample images) rises in steps;
* library workspaces (cuBLAS, cuDNN) come and go: a few 2 MiB segments of noise on top;
* a process whose next allocation does not fit in the free memory dies (a real OOM): it is absent from the
  next reading;
* device used = the processes' memory + a constant driver overhead; free = total - used - reserved, with
  `reserved` the driver/firmware reservation NVML's memory v2 reports.

The world advances in fixed steps of `STEP_SECONDS` of simulated time, whatever the read cadence, with one
seeded `random.Random`: the reading at simulated time s is a function of (scenario, seed, s) only. Simulated
time is `clock.monotonic() - start`, so the same scenario runs in real time under the system clock and
fast-forwarded under `vramwatch.testing.FakeClock`.

Ground truth (who leaks, when who ran out of memory, when contention started) comes from the same
simulation: `SimulatedBackend.ground_truth()` for a running backend, `ground_truth(scenario)` for a whole
story. It is JSON-able; every `t` in it is seconds since the scenario started (`origin` holds the clock's
monotonic and wall time at that instant, so snapshot t = origin.monotonic + t):

    {"scenario", "description", "seed", "step_seconds", "elapsed_seconds", "origin": {"monotonic", "wall"},
     "gpus": [{"index", "uuid", "name", "total_bytes", "lost_t"}],
     "processes": [{"pid", "start_time" (wall, with pid the identity), "start_t", "gpu", "name", "user",
                    "role" (trainer, worker, inference, intruder, stale, restart, client),
                    "behaviour" (flat, warmup, idle, leak, stepwise_leak, plateau, growth, spike, stale, churn),
                    "status", "leak_bytes_per_second", "leak_from_t", "end_t", "end" (null, oom, gpu_lost)}],
     "events": [{"t", "kind" (start, contention, oom, gpu_lost), "pid", "start_time", "gpu",
                 "used_bytes" (oom: last listed figure), "demand_bytes" (oom: what it asked for)}]}

Code: `engine.py` (the physics: cards, processes, the allocator's ratchet), `scenarios.py` (the catalogue of
stories), `backend.py` (the Backend over one running story, and its ground truth).
"""

from __future__ import annotations

from .backend import SimulatedBackend, ground_truth
from .engine import STEP_SECONDS, GiB, MiB
from .scenarios import SCENARIOS, Scenario, scenario_names

__all__ = ["SCENARIOS", "STEP_SECONDS", "GiB", "MiB", "Scenario", "SimulatedBackend", "ground_truth", "scenario_names"]
