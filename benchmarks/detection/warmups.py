"""Healthy warm-ups that NVML alone reads as fast growth: how many raise a finding, and which are critical.

    python benchmarks/detection/warmups.py            # both families, a line per run that raised anything
    python benchmarks/detection/warmups.py --quiet    # the totals only

Synthetic runs on one 24 GiB card, read once a second, each young (it appears at t = 0) and healthy: it fits the
card and ends flat or in a sawtooth, so every finding it raises is false. Two families, every combination:

- `ramp`: the CUDA context, weights loaded linearly over R s to 60 % of the plateau, 5 s of setup, the first step
  up to the plateau, then a sawtooth of amplitude S read at random phases (`empty_cache()` each step, steps
  shorter than a second). Plateau 8-20 GiB, R 1-20 s, S 0-6 GiB, seeds 0-1.
- `llm`: a language-model fine-tune with dynamic padding: weights over L s, then 1 GiB of optimizer state and,
  per batch, activations in proportion to the longest sequence so far (the caching allocator keeps the largest
  block), lengths uniform in 64-4096 tokens. Weights 8-14 GiB, L 3-8 s, batches of 0.25-2 s, 1-3 MiB a token,
  seeds 0-2; combinations whose peak would not fit the card are left out.

Loads that last longer than the forecast's shortest window (15 s) at a rate that would fill the card within two
minutes are forecast critical by design (docs/detection.md, `oom_forecast`): the `ramp` runs with R = 20 s are
that case. The script is a precision check of the warm-up rules, not a proof: real recordings are
`score.py`'s corpus.
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from vramwatch.detectors.testing import GIB, MIB, WALL0, Card, Rig, meta, replay, ticks

CARD = Card()
CONTEXT = 520 * MIB
SECONDS = 300.0
PID = 4242
#: What a healthy run may peak at: the card less the driver's own use and the forecast's OOM margin.
ROOM = CARD.total_bytes - CARD.overhead_bytes - 256 * MIB

Memory = Callable[[float, random.Random], float]


@dataclass(frozen=True, slots=True)
class Case:
    family: str
    label: str
    seed: int
    memory: Memory


def ramp(plateau: float, load_seconds: float, saw: float) -> Memory:
    def memory(u: float, rng: random.Random) -> float:
        if u < 3:
            return CONTEXT
        if u < 3 + load_seconds:
            return CONTEXT + 0.6 * plateau * (u - 3) / load_seconds
        if u < 8 + load_seconds:
            return CONTEXT + 0.6 * plateau
        return CONTEXT + plateau - saw * rng.random()

    return memory


def llm(weights: float, load_seconds: float, batch_seconds: float, per_token: float, seed: int) -> Memory:
    lengths = random.Random(seed)
    longest, grows = 0, []  # (t, longest sequence so far) at each batch that set a new longest
    for k in range(int((SECONDS - load_seconds) / batch_seconds) + 1):
        n = lengths.randint(64, 4096)
        if n > longest:
            longest = n
            grows.append((2 + load_seconds + k * batch_seconds, n))

    def memory(u: float, rng: random.Random) -> float:  # noqa: ARG001 - deterministic once the lengths are drawn
        if u < 2:
            return CONTEXT
        if u < 2 + load_seconds:
            return CONTEXT + weights * (u - 2) / load_seconds
        n = max((n for at, n in grows if at <= u), default=0)
        return CONTEXT + weights + GIB + n * per_token

    return memory


def cases() -> Iterator[Case]:
    for plateau, load, saw, seed in itertools.product((8, 12, 16, 20), (1, 5, 10, 20), (0, 1, 3, 6), (0, 1)):
        if saw < plateau:
            label = f"plateau {plateau} GiB, load {load} s, sawtooth {saw} GiB"
            yield Case("ramp", label, seed, ramp(plateau * GIB, load, saw * GIB))
    for weights, load, batch, per_token, seed in itertools.product(
        (8, 12, 14), (3, 8), (0.25, 0.5, 1.0, 2.0), (1, 2, 3), (0, 1, 2)
    ):
        label = f"weights {weights} GiB in {load} s, {batch} s a batch, {per_token} MiB a token"
        yield Case("llm", label, seed, llm(weights * GIB, load, batch, per_token * MIB, seed))


def rows(memory: Memory, seed: int) -> list[tuple[float, dict[int, int]]] | None:
    """The run's ticks, its memory in 2 MiB segments; None when its peak would not fit the card."""
    rng = random.Random(seed)
    out = []
    for t in ticks(0.0, SECONDS):
        held = math.ceil(memory(t, rng) / (2 * MIB)) * 2 * MIB
        if held > ROOM:
            return None
        out.append((t, {PID: held}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quiet", action="store_true", help="print the totals only")
    args = ap.parse_args()
    rig = Rig(cards=(CARD,), metas={PID: meta(PID, start_time=WALL0)})
    totals: dict[str, list[int]] = {}
    for case in cases():
        table = rows(case.memory, case.seed)
        if table is None:
            continue
        raised = replay(table, rig).raised
        runs, noisy, critical = totals.setdefault(case.family, [0, 0, 0])
        totals[case.family] = [
            runs + 1,
            noisy + bool(raised),
            critical + any(f.severity.value == "critical" for f in raised),
        ]
        if raised and not args.quiet:
            said = "; ".join(f"t={f.t:.0f} {f.severity.value} {f.kind.value} eta={f.eta_seconds}" for f in raised)
            print(f"{case.family}: {case.label}, seed {case.seed}: {said}")
    print("| family | healthy runs | with a finding | with a critical one |")
    print("| --- | ---: | ---: | ---: |")
    for family, (runs, noisy, critical) in totals.items():
        print(f"| {family} | {runs} | {noisy} | {critical} |")


if __name__ == "__main__":
    main()
