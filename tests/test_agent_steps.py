"""The step counter in the training thread: which optimizer steps count, and how the numbers stay the trainer's."""

from __future__ import annotations

import gc
import sys
import types
import weakref
from collections.abc import Callable
from typing import Any

import pytest
from vramwatch.agent import probe as probe_module
from vramwatch.agent.probe import RealTorchProbe
from vramwatch.agent.steps import StepCounter

MIB = 1 << 20
PEAKS = (900 * MIB, 1024 * MIB, 300 * MIB, 512 * MIB, 20 * MIB)


class FakeOptimizer:
    """An optimizer as the hook sees one: an object that can be weakly referenced (a bare `object()` cannot)."""

    def __init__(self, name: str = "opt") -> None:
        self.name = name


class FakeStepProbe:
    """The torch side of the counter: CUDA up or not, peaks readable or not, or raising."""

    def __init__(self, *, cuda: bool = True, peaks: tuple[int, int, int, int, int] | None = PEAKS) -> None:
        self.cuda = cuda
        self.peaks = peaks
        self.error: str | None = None  # the message of a RuntimeError raised afresh at each read
        self.reads = 0

    def cuda_initialized(self) -> bool:
        return self.cuda

    def current_device(self) -> int | None:
        return 0

    def take_step_peaks(self, device: int) -> tuple[int, int, int, int, int] | None:
        self.reads += 1
        if self.error is not None:
            raise RuntimeError(self.error)
        return self.peaks


class Clock:
    """A monotonic clock the test moves: one second a call."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def ranges(counter: StepCounter) -> list[tuple[int, int]]:
    _, entries = counter.drain()
    return [(int(e[0]), int(e[1])) for e in entries]


def test_a_second_optimizer_in_the_same_iteration_adds_no_step() -> None:
    """Two optimizers stepping each iteration (a GAN, a text encoder's) count one step: the first one's."""
    counter = StepCounter(FakeStepProbe(), Clock())
    generator, discriminator = FakeOptimizer("g"), FakeOptimizer("d")
    for _ in range(3):
        counter.on_step(discriminator)
        counter.on_step(generator)
    assert counter.steps == 3
    assert ranges(counter) == [(1, 1), (2, 2), (3, 3)]


def test_a_collected_primary_hands_over_to_the_next_optimizer_to_step() -> None:
    """When the primary optimizer is garbage-collected, the next one to step is counted and the numbers go on."""
    counter = StepCounter(FakeStepProbe(), Clock())
    first, other = FakeOptimizer("first"), FakeOptimizer("other")
    counter.on_step(first)
    counter.on_step(other)
    del first
    gc.collect()
    counter.on_step(other)
    counter.on_step(other)
    assert counter.steps == 3
    assert ranges(counter) == [(1, 1), (2, 2), (3, 3)]


def test_the_counter_does_not_keep_the_optimizer_alive() -> None:
    """The primary optimizer (and the GPU state it holds) is held weakly: counting never delays its collection."""
    counter = StepCounter(FakeStepProbe(), Clock())
    optimizer = FakeOptimizer()
    counter.on_step(optimizer)
    ref = weakref.ref(optimizer)
    del optimizer
    gc.collect()
    assert ref() is None


def test_steps_without_peaks_are_counted_and_the_next_entry_covers_them() -> None:
    """Steps before CUDA is up, or whose peaks cannot be read, still count; the next entry spans them."""
    probe = FakeStepProbe(cuda=False)
    counter = StepCounter(probe, Clock())
    optimizer = FakeOptimizer()
    counter.on_step(optimizer)
    counter.on_step(optimizer)
    assert (counter.steps, probe.reads) == (2, 0)  # no peaks read: that would have initialised CUDA
    probe.cuda = True
    probe.peaks = None
    counter.on_step(optimizer)
    probe.peaks = PEAKS
    counter.on_step(optimizer)
    counter.on_step(optimizer)
    assert counter.steps == 5
    assert ranges(counter) == [(1, 4), (5, 5)]


def test_a_step_the_grad_scaler_skips_is_not_seen() -> None:
    """GradScaler skips `optimizer.step()` on inf/nan gradients: no hook runs, so that iteration is not counted
    and its time and peaks fall into the next counted step's entry (documented drift)."""
    clock = Clock()
    counter = StepCounter(FakeStepProbe(), clock)
    optimizer = FakeOptimizer()

    def scaler_step(found_inf: bool) -> None:
        """torch.amp.GradScaler.step: `optimizer.step()` (and so the post-step hooks) only without inf/nan."""
        clock()  # the iteration's forward and backward take a second either way
        if not found_inf:
            counter.on_step(optimizer)

    for found_inf in (False, True, False):
        scaler_step(found_inf)
    _, entries = counter.drain()
    assert counter.steps == 2
    assert [(int(e[0]), int(e[1])) for e in entries] == [(1, 1), (2, 2)]
    assert entries[1][3] > entries[0][3]  # the skipped iteration's time is in the second entry


def test_hook_errors_are_counted_and_the_step_still_is() -> None:
    """A probe that raises never reaches the trainer: the error is counted with its first repr, the step too."""
    probe = FakeStepProbe()
    probe.error = "stats gone"
    counter = StepCounter(probe, Clock())
    optimizer = FakeOptimizer()
    counter.on_step(optimizer)
    counter.on_step(optimizer)
    assert (counter.steps, counter.errors) == (2, 2)
    assert counter.first_error == "RuntimeError('stats gone')"


def test_a_disabled_counter_leaves_the_peaks_alone() -> None:
    """Once its agent stops, a hook still registered neither counts nor resets the peaks."""
    probe = FakeStepProbe()
    counter = StepCounter(probe, Clock())
    counter.disabled = True
    counter.on_step(FakeOptimizer())
    assert (counter.steps, probe.reads) == (0, 0)


class FakeOptimModule(types.ModuleType):
    """`torch.optim.optimizer` as far as the hook goes: a global hook registry read at every step."""

    def __init__(self) -> None:
        super().__init__("torch.optim.optimizer")
        self.hooks: dict[int, Callable[[object, Any, Any], None]] = {}
        self._next = 0

    def register_optimizer_step_post_hook(self, hook: Callable[[object, Any, Any], None]) -> Any:
        key, self._next = self._next, self._next + 1
        self.hooks[key] = hook
        return types.SimpleNamespace(remove=lambda: self.hooks.pop(key, None))

    def step(self, optimizer: object) -> None:
        """What `Optimizer.step` does after the update: every global post-step hook, whenever it was added."""
        for hook in list(self.hooks.values()):
            hook(optimizer, (), {})


@pytest.fixture
def optim(monkeypatch: pytest.MonkeyPatch) -> FakeOptimModule:
    module = FakeOptimModule()
    monkeypatch.setitem(sys.modules, "torch.optim.optimizer", module)
    monkeypatch.setattr(probe_module, "_STEP_HOOK_HANDLE", None)
    return module


def test_an_optimizer_made_before_registration_is_counted(optim: FakeOptimModule) -> None:
    """The hook is global: an optimizer created before the agent registered it is counted from its next step."""
    early = FakeOptimizer()
    counter = StepCounter(FakeStepProbe(), Clock())
    assert RealTorchProbe().register_step_hook(counter.on_step)
    optim.step(early)
    assert counter.steps == 1


def test_registering_again_replaces_the_hook(optim: FakeOptimModule) -> None:
    """A second registration (an agent started again) replaces the first hook: each step is seen once."""
    first, second = StepCounter(FakeStepProbe(), Clock()), StepCounter(FakeStepProbe(), Clock())
    assert RealTorchProbe().register_step_hook(first.on_step)
    assert RealTorchProbe().register_step_hook(second.on_step)
    optimizer = FakeOptimizer()
    optim.step(optimizer)
    optim.step(optimizer)
    assert len(optim.hooks) == 1
    assert (first.steps, second.steps) == (0, 2)


def test_no_hook_before_torch_is_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without `torch.optim.optimizer` in sys.modules the probe registers nothing and says so (the agent retries)."""
    monkeypatch.delitem(sys.modules, "torch.optim.optimizer", raising=False)
    assert RealTorchProbe().register_step_hook(lambda _opt: None) is False
