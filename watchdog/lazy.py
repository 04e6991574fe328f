"""A read-only mapping whose keys are known at once and whose values are computed when first read.

For figures that cost far more than their keys and that most ticks nobody reads: every process's growth rate is
shown by the metrics and the live page, which read it once per scrape or page refresh, while the daemon ticks
every second (docs/benchmarks.md, the tick at scale).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

K = TypeVar("K")
X = TypeVar("X")
V = TypeVar("V")


class LazyMapping(Mapping[K, V], Generic[K, X, V]):
    """`{key: compute(inputs[key])}`, each value computed on its first read and kept.

    `compute` must be pure and `inputs` must not change: then reading from several threads at once is safe (two
    readers may both compute a value; they get the same one), and a value is the same whenever it is read.
    `key in mapping`, `len` and iteration compute nothing.
    """

    __slots__ = ("_compute", "_inputs", "_values")

    def __init__(self, inputs: Mapping[K, X], compute: Callable[[X], V]) -> None:
        self._inputs = inputs
        self._compute = compute
        self._values: dict[K, V] = {}

    def __getitem__(self, key: K) -> V:
        try:
            return self._values[key]
        except KeyError:
            pass
        value = self._compute(self._inputs[key])  # an unknown key raises KeyError, as a dict does
        self._values[key] = value
        return value

    def __contains__(self, key: object) -> bool:
        return key in self._inputs

    def __iter__(self) -> Iterator[K]:
        return iter(self._inputs)

    def __len__(self) -> int:
        return len(self._inputs)

    def __repr__(self) -> str:
        return f"LazyMapping({len(self._inputs)} keys, {len(self._values)} computed)"
