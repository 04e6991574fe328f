"""quick_init: the same frozen dataclass, built through its slots' descriptors."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import InitVar, dataclass, field
from typing import Any

import pytest
from vramwatch.detectors._context import Tree
from vramwatch.detectors.stability import Stable
from vramwatch.frozen import quick_init
from vramwatch.model import ProcessKey, ProcessMeta, ProcessSample, ProcessUsage


@dataclass(frozen=True, slots=True)
class _Base:
    key: str
    n: int


@dataclass(frozen=True, slots=True)
class _Plain(_Base):
    size: int | None
    kinds: frozenset[str] = frozenset({"compute"})


@quick_init
@dataclass(frozen=True, slots=True)
class _Quick(_Base):
    size: int | None
    kinds: frozenset[str] = frozenset({"compute"})


def _fields(obj: object) -> tuple[object, ...]:
    return tuple(getattr(obj, f.name) for f in dataclasses.fields(obj))  # type: ignore[arg-type]


def test_quick_init_takes_the_generated_parameters_and_defaults() -> None:
    """Positional, keyword and defaulted arguments give the fields the dataclass's own __init__ would give."""
    cases: tuple[tuple[tuple[Any, ...], dict[str, Any]], ...] = (
        (("a", 1, 2), {}),
        (("a", 1, None, frozenset()), {}),
        ((), {"key": "b", "n": 3, "size": 4}),
        (("c",), {"n": 5, "size": 6, "kinds": frozenset({"mps"})}),
    )
    for args, kwargs in cases:
        assert _fields(_Quick(*args, **kwargs)) == _fields(_Plain(*args, **kwargs))
    assert list(inspect.signature(_Quick).parameters) == list(inspect.signature(_Plain).parameters)
    with pytest.raises(TypeError, match="missing"):
        _Quick("a")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword"):
        _Quick("a", 1, 2, colour="red")  # type: ignore[call-arg]


def test_a_quick_class_stays_a_frozen_dataclass() -> None:
    """Equality, hash, repr and replace are the dataclass's, and a field still cannot be assigned."""
    a, b = _Quick("a", 1, 2), _Quick("a", 1, 2)
    assert a == b
    assert hash(a) == hash(b)
    assert a != _Quick("a", 1, 3)
    assert repr(a) == "_Quick(key='a', n=1, size=2, kinds=frozenset({'compute'}))"
    assert dataclasses.replace(a, size=9) == _Quick("a", 1, 9)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.size = 3  # type: ignore[misc]


def test_quick_init_refuses_what_it_cannot_copy() -> None:
    """A class that is not frozen and slotted, or has a post-init, a factory or keyword-only fields, is refused."""

    @dataclass(slots=True)
    class Mutable:
        x: int

    @dataclass(frozen=True)
    class Unslotted:
        x: int

    @dataclass(frozen=True, slots=True)
    class Factory:
        xs: list[int] = field(default_factory=list)

    @dataclass(frozen=True, slots=True)
    class Post:
        x: int

        def __post_init__(self) -> None:
            pass

    @dataclass(frozen=True, slots=True, kw_only=True)
    class KeywordOnly:
        x: int

    @dataclass(frozen=True, slots=True)
    class WithInitVar:
        x: int
        y: InitVar[int] = 5

    @dataclass(frozen=True, slots=True)
    class NotInInit:
        x: int
        y: int = field(init=False, default=0)

    @dataclass(frozen=True, slots=True)
    class PostBase:
        x: int

        def __post_init__(self) -> None:
            pass

    @dataclass(frozen=True, slots=True)
    class PostChild(PostBase):
        y: int

    for cls in (Mutable, Unslotted, Factory, Post, KeywordOnly, WithInitVar, NotInInit, PostChild):
        with pytest.raises(TypeError, match="quick_init"):
            quick_init(cls)


def test_the_per_tick_classes_hold_what_they_were_given() -> None:
    """NVML's entry, a sample, a tree and a verdict built through quick_init hold each argument in its field, the
    defaults included, and their __init__'s annotations still resolve in their own modules."""
    assert _fields(ProcessUsage("GPU-0", 7, 1 << 30)) == ("GPU-0", 7, 1 << 30, frozenset({"compute"}))
    meta = ProcessMeta(pid=7, start_time=1.5, name="python")
    sample = ProcessSample("GPU-0", 1 << 30, meta)
    assert _fields(sample) == ("GPU-0", 1 << 30, meta, frozenset({"compute"}))
    tree = Tree(ProcessKey(7, 1.5), (sample,), 1 << 30)
    assert _fields(tree) == (ProcessKey(7, 1.5), (sample,), 1 << 30)
    stable = Stable(tree.key, "GPU-0", tree, 600.0, "GPU 0 at 1.0 of 24.0 GiB, 23.0 GiB headroom")
    assert _fields(stable) == (tree.key, "GPU-0", tree, 600.0, "GPU 0 at 1.0 of 24.0 GiB, 23.0 GiB headroom")
    assert typing.get_type_hints(ProcessSample.__init__)["meta"] is ProcessMeta
    assert ProcessSample.__init__.__module__ == ProcessSample.__module__
