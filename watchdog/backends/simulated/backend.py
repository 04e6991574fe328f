"""`SimulatedBackend`: a Backend whose GPUs and processes come from a scenario, and the story's ground truth."""

from __future__ import annotations

import math
import socket
from typing import Any

from ...clock import SystemClock
from ...errors import ConfigError
from ...model import ProcessMeta, ProcessUsage, Reading
from ...testing import FakeClock
from ...typing import Clock, ProcessInspector
from .engine import STEP_SECONDS, World
from .scenarios import SCENARIOS


class _SimInspector:
    """What the simulated OS says about a pid: the latest process with that pid, or Nones once it died."""

    def __init__(self, world: World) -> None:
        self._world = world

    def inspect(self, pid: int) -> ProcessMeta:
        return self._world.meta(pid)

    def pid_namespace_matches(self) -> bool:
        return True


class SimulatedBackend:
    """A Backend whose GPUs and processes come from a scenario; see the module docstring."""

    kind = "simulated"

    def __init__(self, scenario: str = "steady", *, seed: int = 0, clock: Clock | None = None) -> None:
        spec = SCENARIOS.get(scenario)
        if spec is None:
            raise ConfigError(f"unknown scenario {scenario!r}; choose one of: {', '.join(SCENARIOS)}")
        self.scenario = spec
        self.seed = seed
        self._clock: Clock = clock if clock is not None else SystemClock()
        self.started_at = self._clock.monotonic()
        self.wall_origin = self._clock.wall()
        self._world = World(seed, self.wall_origin)
        spec.build(self._world)
        self._steps = 0
        self._world.step(0.0)
        self._inspector = _SimInspector(self._world)

    def elapsed(self) -> float:
        """Simulated seconds the world has been advanced to (a multiple of STEP_SECONDS)."""
        return self._steps * STEP_SECONDS

    def _advance(self) -> None:
        target = math.floor((self._clock.monotonic() - self.started_at) / STEP_SECONDS)
        while self._steps < target:
            self._steps += 1
            self._world.step(self._steps * STEP_SECONDS)

    def read(self) -> Reading:
        self._advance()
        gpus = tuple(g.sample() for g in self._world.gpus)
        procs: list[ProcessUsage] = []
        for g in self._world.gpus:
            if not g.lost:
                procs.extend(g.usages())
        return Reading(gpus=gpus, processes=tuple(procs))

    def inspector(self) -> ProcessInspector:
        return self._inspector

    def describe(self) -> dict[str, str]:
        return {
            "backend": self.kind,
            "scenario": self.scenario.name,
            "seed": str(self.seed),
            "host": socket.gethostname(),
            "driver_version": "simulated",
            "nvml_version": "simulated",
        }

    def close(self) -> None:
        """Nothing to release."""

    def events(self) -> list[dict[str, Any]]:
        """What happened so far (starts, OOMs, contention, lost GPUs), JSON-able, `t` in scenario seconds."""
        self._advance()
        return [dict(e) for e in self._world.events]

    def ground_truth(self) -> dict[str, Any]:
        """The story up to now as JSON-able data: GPUs, every GPU process's role and fate, and the events."""
        self._advance()
        w = self._world
        return {
            "scenario": self.scenario.name,
            "description": self.scenario.description,
            "seed": self.seed,
            "step_seconds": STEP_SECONDS,
            "elapsed_seconds": self.elapsed(),
            "origin": {"monotonic": self.started_at, "wall": self.wall_origin},
            "gpus": [
                {
                    "index": g.index,
                    "uuid": g.uuid,
                    "name": g.name,
                    "total_bytes": g.total_bytes,
                    "lost_t": g.lost_at if g.lost else None,
                }
                for g in w.gpus
            ],
            "processes": [dict(r) for r in w.records if r["start_t"] <= self.elapsed()],
            "events": [dict(e) for e in w.events],
        }


def ground_truth(scenario: str, *, seed: int = 0, horizon_seconds: float | None = None) -> dict[str, Any]:
    """Run `scenario` fast-forwarded to its horizon (or `horizon_seconds`) and return its ground truth.

    The clock is a fake one starting at monotonic 1000.0 and wall 1_700_001_000.0 (see `origin`): compare
    runs by `t` (scenario seconds), or map with `origin` when the clocks differ.
    """
    spec = SCENARIOS.get(scenario)
    if spec is None:
        raise ConfigError(f"unknown scenario {scenario!r}; choose one of: {', '.join(SCENARIOS)}")
    clock = FakeClock()
    backend = SimulatedBackend(scenario, seed=seed, clock=clock)
    clock.advance(spec.horizon_seconds if horizon_seconds is None else horizon_seconds)
    return backend.ground_truth()
