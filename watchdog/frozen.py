"""`quick_init`: a cheaper constructor for the few frozen dataclasses built once per process at every tick.

A frozen dataclass's generated `__init__` sets each field through `object.__setattr__(self, "name", value)`, which
looks the attribute up by name every time: about 0.2 µs a field. The value objects of `model.py` stay frozen and
slotted; for the classes built for every process at every tick (NVML's entry, a sample, a tree, a verdict), that is
several microseconds a process at a 1 Hz tick, a tenth of the whole tick on a node with thousands of processes
(docs/benchmarks.md, 2026-12-07 (h)). `quick_init` gives such a class an `__init__` that stores each field through
its slot's own descriptor, with the same parameters, the same defaults and the same object at the end: the class
is still the dataclass it was (fields, equality, hash, repr, `dataclasses.replace`), and assigning to a field
still raises `FrozenInstanceError`.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from typing import Any, TypeVar

C = TypeVar("C", bound=type)


def quick_init(cls: C) -> C:
    """`cls` (a frozen, slotted dataclass whose `__init__` takes exactly its fields, positional or keyword, with no
    `__post_init__` and no default factory) with an `__init__` that sets its slots directly."""
    if not (dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen and "__slots__" in cls.__dict__):  # type: ignore[attr-defined]
        raise TypeError(f"{cls.__name__}: quick_init is for frozen, slotted dataclasses")
    generated = cls.__init__
    names = [f.name for f in dataclasses.fields(cls)]
    params = list(inspect.signature(generated).parameters.values())[1:]  # (after self)
    if (
        hasattr(cls, "__post_init__")
        or [p.name for p in params] != names  # an InitVar, an init=False field
        or any(p.kind is not p.POSITIONAL_OR_KEYWORD for p in params)  # keyword-only fields
        or any(f.default_factory is not dataclasses.MISSING for f in dataclasses.fields(cls))
    ):
        raise TypeError(f"{cls.__name__}: quick_init keeps only plain positional fields (no post-init, no factories)")
    # Built in the class's own module, so that its annotations resolve there (typing.get_type_hints, st.builds), and
    # handed the slots' descriptors (found along the bases, as attribute lookup finds them) as a closure.
    setters = ", ".join(f"_s{i}" for i in range(len(names)))
    body = "".join(f"        _s{i}(self, {name})\n" for i, name in enumerate(names)) or "        pass\n"
    source = f"def _make({setters}):\n    def __init__(self, {', '.join(names)}):\n{body}    return __init__\n"
    scope: dict[str, Any] = {}
    exec(source, sys.modules[cls.__module__].__dict__, scope)  # noqa: S102 - the text is built from the fields' names
    init = scope["_make"](*(getattr(cls, name).__set__ for name in names))
    init.__defaults__ = generated.__defaults__
    init.__annotations__ = dict(generated.__annotations__)
    init.__module__ = cls.__module__
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = generated.__doc__
    setattr(cls, "__init__", init)  # noqa: B010 - (mypy refuses assigning a method)
    return cls
