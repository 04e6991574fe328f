"""The Lightning and transformers pressure callbacks, against small fakes of the two frameworks."""

from __future__ import annotations

import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from vramwatch.agent import adapters, core
from vramwatch.agent.core import Agent, AgentConfig, PressureNotice


@pytest.fixture
def fake_lightning(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("fake_lightning")

    class Callback:
        pass

    module.Callback = Callback  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_lightning", module)
    return module


@pytest.fixture
def fake_transformers(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("transformers")

    class TrainerCallback:
        pass

    module.TrainerCallback = TrainerCallback  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "transformers", module)
    return module


@pytest.fixture
def pressure(tmp_path: Path) -> Iterator[Agent]:
    """An agent (no thread) whose handle_pressure runs the process-wide callbacks, as the real one does."""
    agent = Agent(AgentConfig(targets=(str(tmp_path / "none.sock"),)))
    yield agent
    agent.stop()


def notice() -> PressureNotice:
    return PressureNotice("critical", "test", "socket", 0.0)


class Strategy:
    def __init__(self, elsewhere: bool) -> None:
        self.elsewhere = elsewhere
        self.calls: list[tuple[bool, bool]] = []

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        self.calls.append((decision, all))
        return decision or self.elsewhere


class Trainer:
    def __init__(self, world_size: int = 1, elsewhere: bool = False) -> None:
        self.world_size = world_size
        self.global_step = 12
        self.current_epoch = 1
        self.is_global_zero = True
        self.strategy = Strategy(elsewhere)
        self.saved: list[str] = []

    def save_checkpoint(self, path: str) -> None:
        Path(path).write_text("checkpoint")
        self.saved.append(path)


def test_lightning_saves_once_at_the_next_batch_end(fake_lightning, pressure, tmp_path: Path):
    """After a pressure notice the next batch end saves one checkpoint; later batches do not save again."""
    callback = adapters.lightning_callback(tmp_path, module="fake_lightning", start_agent=False)
    assert isinstance(callback, fake_lightning.Callback)
    trainer = Trainer()
    callback.on_train_batch_end(trainer, None, None, None, 0)
    assert trainer.saved == []
    pressure.handle_pressure(notice())
    callback.on_train_batch_end(trainer, None, None, None, 1)
    callback.on_train_batch_end(trainer, None, None, None, 2)
    assert trainer.saved == [str(tmp_path / "vramwatch-pressure-step12.ckpt")]
    assert (tmp_path / "vramwatch-pressure-step12.ckpt").read_text() == "checkpoint"
    callback.teardown(trainer, None, stage="fit")


def test_lightning_ranks_agree_before_saving(fake_lightning, pressure, tmp_path: Path):
    """With several ranks, a notice on any rank makes every rank save, at the agreement step only."""
    callback = adapters.lightning_callback(tmp_path, module="fake_lightning", sync_every=4, start_agent=False)
    trainer = Trainer(world_size=2, elsewhere=True)
    callback.on_train_batch_end(trainer, None, None, None, 3)
    assert trainer.strategy.calls == []  # not an agreement step: no collective
    callback.on_train_batch_end(trainer, None, None, None, 4)
    assert trainer.strategy.calls == [(False, False)]
    assert len(trainer.saved) == 1
    callback.teardown(trainer, None, stage="fit")


def test_teardown_unregisters_the_callback(fake_lightning, pressure, tmp_path: Path):
    """After teardown a pressure notice no longer reaches the finished run's callback."""
    callback = adapters.lightning_callback(tmp_path, module="fake_lightning", start_agent=False)
    callback.teardown(Trainer(), None, stage="fit")
    pressure.handle_pressure(notice())
    assert callback.flag.notices == 0
    assert core._registered_callbacks() == []


def test_transformers_asks_the_trainer_to_save(fake_transformers, pressure):
    """On pressure the next step end sets control.should_save, once."""
    callback = adapters.transformers_callback(start_agent=False)
    assert isinstance(callback, fake_transformers.TrainerCallback)
    args, state = types.SimpleNamespace(world_size=1), types.SimpleNamespace(global_step=3)
    control = types.SimpleNamespace(should_save=False)
    assert callback.on_step_end(args, state, control).should_save is False
    pressure.handle_pressure(notice())
    assert callback.on_step_end(args, state, control).should_save is True
    control.should_save = False
    assert callback.on_step_end(args, state, control).should_save is False
    callback.on_train_end(args, state, control)


def test_frameworks_are_imported_only_when_a_callback_is_built():
    """Importing the adapters needs neither framework; building one without it installed says so."""
    frameworks = "('torch', 'transformers', 'lightning', 'pytorch_lightning')"
    probe = f"import sys, vramwatch.agent.adapters; print([m for m in {frameworks} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    with pytest.raises(ImportError):
        adapters.lightning_callback(module="no_such_lightning_namespace", start_agent=False)
