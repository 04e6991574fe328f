"""The trainer registry: one module per trainer, found without a list to edit, and known to the rules."""

from __future__ import annotations

import pkgutil

from vramwatch.actions.adapters import ADAPTERS
from vramwatch.advice import recognize, trainers
from vramwatch.advice.rules import default_rules
from vramwatch.advice.trainers import REGISTRY, TRAINER_IDS, by_id


def test_every_trainer_module_is_registered_once_in_a_clear_order():
    """Each public module of advice/trainers declares one Trainer; ids and recognition orders never collide."""
    modules = {m.name for m in pkgutil.iter_modules(trainers.__path__) if not m.name.startswith("_")}
    assert len(REGISTRY) == len(modules)
    assert len({t.id for t in REGISTRY}) == len(REGISTRY)
    assert len({t.order for t in REGISTRY}) == len(REGISTRY)
    assert [t.order for t in REGISTRY] == sorted(t.order for t in REGISTRY)
    assert TRAINER_IDS[-1] == "unknown"


def test_the_rules_speak_every_trainers_language():
    """Every registered trainer has its own spelling in at least one rule (its "plus its rules")."""
    spelled = {key.split("@", 1)[0] for rule in default_rules().rules for key, _ in rule.syntax}
    assert {t.id for t in REGISTRY} <= spelled


def test_recognition_asks_trainers_in_their_order():
    """A distinctive script name wins over generic marks, and a plain script falls through to pytorch."""
    assert recognize(["python", "flux_train_network.py", "--trainer.precision", "bf16"]).trainer == "kohya"
    assert recognize(["python", "train.py", "--config-path", "c.json"], read_file=lambda _p: None).trainer == (
        "onetrainer"
    )
    assert recognize(["python", "mine.py"]).trainer == by_id("pytorch").id


def test_save_now_adapters_come_from_the_trainers_and_save_before_they_stop():
    """The agent first, then the trainers' own adapters, those that keep the run going before those that end it."""
    assert [a.name for a in ADAPTERS] == ["agent", "simpletuner", "onetrainer", "lightning_slurm", "transformers_jit"]
    assert {a.name for a in ADAPTERS[1:]} == {t.save_now.name for t in REGISTRY if t.save_now is not None}
