"""`quick_init`: a cheaper constructor for the few frozen dataclasses built once per process at every tick.

A frozen dataclass's generated `__init__` sets each field through `object.__setattr__(self, "name", value)`, which
looks the attribute up by name every time: about 0.2 µs a field. The value objects of `model.py` stay frozen and
slotted; for a class that is built for every process at every tick (a sample, a tree, a verdict), that is several
microseconds a process at a 1 Hz tick, a tenth of the whole tick on a node with thousands of processes
(docs/benchmarks.md, 2026-12-07 (h)). `quick_init` gives such a class an `__init__` that stores each field through
its slot's own descriptor, with the same parameters, the same defaults and the same object at the end: the class
is still the dataclass it was (fields, equality, hash, repr, `dataclasses.replace`), and assigning to a field
still raises `FrozenInstanceError`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

C = TypeVar("C", bound=type)


def quick_init(cls: C) -> C:
    """`cls` (a frozen, slotted dataclass whose fields are all `__init__` parameters, with no `__post_init__` and no
    default factory) with an `__init__` that sets its slots directly."""
    if not (dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen and "__slots__" in cls.__dict__):  # type: ignore[attr-defined]
        raise TypeError(f"{cls.__name__}: quick_init is for frozen, slotted dataclasses")
    params = dataclasses.fields(cls)
    if hasattr(cls, "__post_init__") or any(
        not f.init or f.default_factory is not dataclasses.MISSING or f.kw_only for f in params
    ):
        raise TypeError(f"{cls.__name__}: quick_init keeps only plain positional fields (no post-init, no factories)")
    generated = cls.__init__
    names = [f.name for f in params]
    # The slots' descriptors, found along the class's bases as attribute lookup finds them.
    setters = {f"_set_{name}": getattr(cls, name).__set__ for name in names}
    body = "".join(f"    _set_{name}(self, {name})\n" for name in names) or "    pass\n"
    source = f"def __init__(self, {', '.join(names)}):\n{body}"
    scope: dict[str, Any] = {}
    exec(source, setters, scope)  # noqa: S102 - the text is built from the class's own field names
    init = scope["__init__"]
    # The dataclass's own defaults, so that the signature is the one it generated.
    init.__defaults__ = generated.__defaults__
    init.__annotations__ = dict(generated.__annotations__)
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = generated.__doc__
    setattr(cls, "__init__", init)  # noqa: B010 - (mypy refuses assigning a method)
    return cls
