"""Healthy warm-ups that NVML alone reads as fast growth: how many raise a finding, and which are critical.

    python benchmarks/detection/warmups.py            # both families, a line per run that raised anything
    python benchmarks/detection/warmups.py --quiet    # the totals only (about two minutes)
    python benchmarks/detection/warmups.py --family retake --family two-stage
    python benchmarks/detection/warmups.py --quiet --family afternoon --restart-at 300,900,1500

`--restart-at S,...` replays each case from S seconds on, once per S: a daemon (re)started then finds the runs
already on the card (their start times say how old they are), mid-load or mid-give-back as it happens. `--hidden`
replays each case as a daemon that cannot see the pids does (a container without the host's pid namespace): only the
card's own series is judged.

Synthetic runs on one 24 GiB card, read once a second, young (it appears at t = 0) unless said otherwise, and
healthy: it fits the card and ends flat or in a sawtooth, so every finding it raises is false. Six families, every
combination:

- `ramp`: the CUDA context, weights loaded linearly over R s to 60 % of the plateau, 5 s of setup, the first step
  up to the plateau, then a sawtooth of amplitude S read at random phases (`empty_cache()` each step, steps
  shorter than a second). Plateau 8-20 GiB, R 1-20 s, S 0-6 GiB, seeds 0-1.
- `llm`: a language-model fine-tune with dynamic padding: weights over L s, then 1 GiB of optimizer state and,
  per batch, activations in proportion to the longest sequence so far (the caching allocator keeps the largest
  block), lengths uniform in 64-4096 tokens. Weights 8-14 GiB, L 3-8 s, batches of 0.25-2 s, 1-3 MiB a token,
  seeds 0-2; combinations whose peak would not fit the card are left out.
- `afternoon`: forty minutes of a shared card, seeds 0-59: maybe a static server loaded before (4-8 GiB), then
  runs of three users arriving every 0.5-7 minutes. Each is sized to fit next to the peaks of every run it
  overlaps with 1 GiB to spare, warms up as a `ramp` does (a load of 2-10 s to 70 % of its plateau, 4 s of
  setup, its first step), holds flat or in a sawtooth of up to 3 GiB, and ends normally after 3-15 minutes.
  Nobody is squeezed and nobody runs out; a contention finding that hedges ("has not shown all it needs yet")
  counts as a finding too.
- `retake`: a run an hour old, on its plateau (8-21 GiB, a sawtooth of 0 or 2 GiB) when vramwatch starts, gives
  memory back at 300 s down to its context or 30 % of the plateau, holds there 90 s (sampling with its weights
  offloaded, a model server between two models), then takes it back linearly over 5-60 s, to where it was or 2 GiB
  more (a bigger model); ten minutes, seeds 0-1.
- `server`: a model server up for an hour, idle at its bare CUDA context when vramwatch starts, asked for a model
  (4-16 GiB) at 300 s, which it loads from disk over 5-60 s, then serves requests (a sawtooth of 0 or 1 GiB above
  the model); ten minutes, seeds 0-1.
- `two-stage`: a diffusion LoRA's start with cached text-encoder outputs: text encoders of 5 or 9.5 GiB loaded in
  5 s, held 10-60 s while the captions are encoded, freed, then the model (6 or 12 GiB) loaded over 5-30 s, 4 s
  of setup, its first step (1.3x the model) and a sawtooth of 0 or 2 GiB; seeds 0-1.

- `ceiling`: a run whose cache refills at the card's end (a sequence-length warm-up, bucketed shapes on a tight card):
  it needs 6-18 GiB, and its cache grows 30-300 MiB/s until cudaMalloc fails; PyTorch then gives its cache back (down
  to its needs, give or take 0 or 256 MiB of a step) and retries, and the run goes on (twenty minutes). Young (it
  loads from t = 0) or old (on its plateau when vramwatch starts, its cache growing from 60 s); seeds 0-1. Its first
  climb to the card's end cannot be told from a leak (and a settled run's second neither: docs/detection.md, "A
  cache that refills at the card's end"); every later critical is false.

Loads that last longer than the forecast's shortest window (15 s) at a rate that would fill the card within two
minutes are forecast critical by design (docs/detection.md, `oom_forecast`): the `ramp` runs with R = 20 s are
that case. The script is a precision check of the warm-up rules, not a proof: real recordings are
`score.py`'s corpus.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from vramwatch.detectors.testing import GIB, MIB, WALL0, Card, Rig, meta, replay, ticks
from vramwatch.model import Finding, Snapshot

CARD = Card()
CONTEXT = 520 * MIB
SECONDS = 300.0
PID = 4242
#: What a healthy run may peak at: the card less the driver's own use and the forecast's OOM margin.
ROOM = CARD.total_bytes - CARD.overhead_bytes - 256 * MIB
#: What an afternoon's runs may peak at together: 1 GiB stays free, so that `pressure` has nothing to say.
AFTERNOON_ROOM = CARD.total_bytes - CARD.overhead_bytes - GIB

Memory = Callable[[float, random.Random], float]


Row = tuple[float, dict[int, int]]


@dataclass(frozen=True, slots=True)
class Case:
    family: str
    label: str
    seed: int
    #: The ticks and the processes' metadata, or None when the case would not fit the card.
    build: Callable[[], tuple[list[Row], Rig] | None]


def ramp(
    plateau: float, load_seconds: float, saw: float, *, share: float = 0.6, context: float = 3.0, setup: float = 5.0
) -> Memory:
    """The CUDA context for `context` s, weights up to `share` of the plateau over `load_seconds`, `setup` s, then
    the first step up to the plateau and a sawtooth of amplitude `saw` read at random phases."""

    def memory(u: float, rng: random.Random) -> float:
        if u < context:
            return CONTEXT
        if u < context + load_seconds:
            return CONTEXT + share * plateau * (u - context) / load_seconds
        if u < context + load_seconds + setup:
            return CONTEXT + share * plateau
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


def retake(
    plateau: float, low: float, climb_seconds: float, saw: float, more: float, *, free_at: float = 300.0
) -> Memory:
    """A run on its plateau (a sawtooth of amplitude `saw` read at random phases) that gives memory back at
    `free_at` s, down to `low` above its context, holds there 90 s (sampling with its weights offloaded, a server
    between models), then takes it back over `climb_seconds`, `more` above where it was (a bigger model)."""
    back = free_at + 90.0

    def memory(u: float, rng: random.Random) -> float:
        if free_at <= u < back:
            return CONTEXT + low
        if back <= u < back + climb_seconds:
            return CONTEXT + low + (plateau + more - low) * (u - back) / climb_seconds
        return CONTEXT + plateau + (more if u >= back else 0.0) - saw * rng.random()

    return memory


def server(model: float, load_seconds: float, saw: float, *, at: float = 300.0) -> Memory:
    """A model server up for an hour, idle at its bare CUDA context, asked for a model at `at` s: it loads it
    from disk over `load_seconds`, then serves (requests coming and going: a sawtooth of amplitude `saw`)."""

    def memory(u: float, rng: random.Random) -> float:
        if u < at:
            return CONTEXT
        if u < at + load_seconds:
            return CONTEXT + model * (u - at) / load_seconds
        return CONTEXT + model + saw * rng.random()

    return memory


def two_stage(encoders: float, encode_seconds: float, model: float, load_seconds: float, saw: float) -> Memory:
    """A diffusion LoRA's start (Flux with cached text-encoder outputs): the text encoders loaded in 5 s, held while
    the captions are encoded, freed, then the model loaded from disk over `load_seconds`, its first step and a
    sawtooth of amplitude `saw`."""
    freed = 3.0 + 5.0 + encode_seconds
    stepping = freed + 2.0 + load_seconds + 4.0

    def memory(u: float, rng: random.Random) -> float:
        if u < 3.0:
            return CONTEXT
        if u < 8.0:
            return CONTEXT + encoders * (u - 3.0) / 5.0
        if u < freed:
            return CONTEXT + encoders
        if u < freed + 2.0:
            return CONTEXT
        if u < stepping:
            return CONTEXT + model * min(1.0, (u - freed - 2.0) / load_seconds)
        return CONTEXT + 1.3 * model - saw * rng.random()

    return memory


@dataclass(frozen=True, slots=True)
class Run:
    """One process of an afternoon: `memory` is read at the time since it started."""

    pid: int
    user: str
    start: float
    end: float | None
    peak: float
    memory: Memory


def afternoon(seed: int, seconds: float = 2400.0) -> tuple[list[Row], Rig]:
    rng = random.Random(seed)
    runs: list[Run] = []
    server = rng.choice((0, 4, 6, 8)) * GIB
    if server:
        runs.append(Run(1000, "root", -3600.0, None, CONTEXT + server, lambda u, g: CONTEXT + server))  # noqa: ARG005
    t = rng.uniform(0, 60)
    while t < seconds - 200:
        user = rng.choice(("alice", "bob", "carol"))
        lasts = rng.uniform(180, 900)
        # Sized against every run that may overlap it (the longest it may last, and half a minute either side).
        others = sum(r.peak for r in runs if r.start < t + 930 and (r.end is None or r.end > t - 30))
        room = AFTERNOON_ROOM - others - CONTEXT
        if room >= 1.5 * GIB:
            plateau = rng.uniform(1.5 * GIB, min(9 * GIB, room))
            saw = min(rng.choice((0, 0, 0.5, 1, 2, 3)) * GIB, 0.6 * plateau)
            load = rng.uniform(2, 10)
            warms = ramp(plateau, load, saw, share=0.7, context=2.0, setup=4.0)
            runs.append(Run(1001 + len(runs), user, t, t + lasts, CONTEXT + plateau, warms))
        t += rng.uniform(30, 400)
    noise = random.Random(seed + 1)
    table = []
    for now in ticks(0.0, seconds):
        usage = {
            r.pid: math.ceil(r.memory(now - r.start, noise) / (2 * MIB)) * 2 * MIB
            for r in runs
            if now >= max(r.start, 0.0) and (r.end is None or now < r.end)
        }
        table.append((now, usage))
    return table, Rig(cards=(CARD,), metas={r.pid: meta(r.pid, user=r.user, start_time=WALL0 + r.start) for r in runs})


def cases() -> Iterator[Case]:
    for plateau, load, saw, seed in itertools.product((8, 12, 16, 20), (1, 5, 10, 20), (0, 1, 3, 6), (0, 1)):
        if saw < plateau:
            label = f"plateau {plateau} GiB, load {load} s, sawtooth {saw} GiB"
            yield Case("ramp", label, seed, partial(alone, ramp(plateau * GIB, load, saw * GIB), seed))
    for weights, load, batch, per_token, seed in itertools.product(
        (8, 12, 14), (3, 8), (0.25, 0.5, 1.0, 2.0), (1, 2, 3), (0, 1, 2)
    ):
        label = f"weights {weights} GiB in {load} s, {batch} s a batch, {per_token} MiB a token"
        yield Case("llm", label, seed, partial(alone, llm(weights * GIB, load, batch, per_token * MIB, seed), seed))
    for seed in range(60):
        yield Case("afternoon", "a shared card", seed, partial(afternoon, seed))
    for plateau, low, climb, saw, more, seed in itertools.product(
        (8, 14, 18, 21), (0, 0.3), (5, 15, 30, 60), (0, 2), (0, 2), (0, 1)
    ):
        if saw < plateau:
            label = (
                f"plateau {plateau} GiB, back to {low:.0%}, taken back in {climb} s (+{more} GiB), sawtooth {saw} GiB"
            )
            memory = retake(plateau * GIB, low * plateau * GIB, climb, saw * GIB, more * GIB)
            yield Case("retake", label, seed, partial(alone, memory, seed, seconds=600.0, old=True))
    for model, load, saw, seed in itertools.product((4, 8, 12, 16), (5, 15, 30, 60), (0, 1), (0, 1)):
        label = f"a model of {model} GiB loaded in {load} s after an idle hour, requests of up to {saw} GiB"
        memory = server(model * GIB, load, saw * GIB)
        yield Case("server", label, seed, partial(alone, memory, seed, seconds=600.0, old=True))
    for encoders, encode, model, load, saw, seed in itertools.product(
        (5, 9.5), (10, 30, 60), (6, 12), (5, 15, 30), (0, 2), (0, 1)
    ):
        label = f"encoders {encoders} GiB for {encode} s, then the model {model} GiB in {load} s, sawtooth {saw} GiB"
        memory = two_stage(encoders * GIB, encode, model * GIB, load, saw * GIB)
        yield Case("two-stage", label, seed, partial(alone, memory, seed))
    for needs, creep, jitter, old, seed in itertools.product(
        (6, 10, 14, 18), (30, 100, 300), (0, 256), (False, True), (0, 1)
    ):
        label = f"needs {needs} GiB, cache +{creep} MiB/s, troughs +0-{jitter} MiB, {'old' if old else 'young'}"
        yield Case("ceiling", label, seed, partial(refills, needs * GIB, creep * MIB, jitter * MIB, seed, old=old))


def refills(
    needs: float,
    creep: float,
    jitter: float,
    seed: int,
    *,
    old: bool,
    seconds: float = 1200.0,
    leak: float = 0.0,
    leak_from: float = 0.0,
) -> tuple[list[Row], Rig]:
    """A run of `ceiling`: `needs` bytes, a cache growing `creep` bytes a second until the card's end, given back
    there (down to its needs and up to `jitter` more) as PyTorch does when a cudaMalloc fails, and grown again. With
    `leak` (bytes a second from `leak_from`), its needs grow beneath the cache, and the rows stop at its OOM (the
    tick at which its needs alone would not fit)."""
    rng = random.Random(seed)
    limit = CARD.total_bytes - CARD.overhead_bytes  # cudaMalloc fails past it
    start = 60.0 if old else 10.0
    cache, out = 0.0, []
    for t in ticks(0.0, seconds):
        # A young run: its CUDA context, then its weights loaded over 5 s.
        held = CONTEXT + needs * (1.0 if old else min(1.0, max(0.0, (t - 3.0) / 5.0)))
        held += leak * max(0.0, t - leak_from)
        if held > limit:
            break  # its needs alone: the OOM
        if t > start:
            cache += creep * rng.uniform(0.5, 1.5)
            if held + cache > limit:
                cache = rng.uniform(0.0, jitter)
        out.append((t, {PID: math.ceil((held + cache) / (2 * MIB)) * 2 * MIB}))
    return out, Rig(cards=(CARD,), metas={PID: meta(PID, start_time=WALL0 - (3600.0 if old else 0.0))})


def alone(memory: Memory, seed: int, *, seconds: float = SECONDS, old: bool = False) -> tuple[list[Row], Rig] | None:
    """One run alone on the card, its memory in 2 MiB segments; None when its peak would not fit. It starts at
    t = 0, or (`old`) an hour before, already on its plateau when vramwatch starts."""
    rng = random.Random(seed)
    out = []
    for t in ticks(0.0, seconds):
        held = math.ceil(memory(t, rng) / (2 * MIB)) * 2 * MIB
        if held > ROOM:
            return None
        out.append((t, {PID: held}))
    return out, Rig(cards=(CARD,), metas={PID: meta(PID, start_time=WALL0 - (3600.0 if old else 0.0))})


def tally(
    checks: Sequence[Callable[[list[Finding]], bool]],
    *,
    each: Callable[[Case, list[Finding]], None] | None = None,
    families: Sequence[str] = (),
    restarts: Sequence[float] = (),
    hidden: bool = False,
) -> dict[str, list[int]]:
    """Replay every case that fits the card (of `families`, or all): per family, the runs, then how many of them
    each check is true of (given the findings the run raised); `each` sees every run as it is replayed.

    With `restarts`, each case is replayed once per time S in it instead, from its first tick at or after S: a
    daemon (re)started then, which finds the runs already on the card (a row per family and S). `hidden`: the daemon
    cannot see the pids (`hide`)."""
    totals: dict[str, list[int]] = {}
    for case in cases():
        if families and case.family not in families:
            continue
        built = case.build()
        if built is None:
            continue
        rows, rig = built
        rig = hide(rig) if hidden else rig
        for at in restarts or (None,):
            seen = rows if at is None else [(t, usage) for t, usage in rows if t >= at]
            if len(seen) < RESTART_MIN_TICKS:
                continue
            raised = replay(seen, rig).raised
            key = case.family if at is None else f"{case.family}, restart at {at:g} s"
            row = totals.setdefault(key, [0] * (len(checks) + 1))
            row[0] += 1
            for i, check in enumerate(checks, 1):
                row[i] += check(raised)
            if each is not None:
                each(
                    case if at is None else dataclasses.replace(case, label=f"{case.label}, restart at {at:g} s"),
                    raised,
                )
    return totals


class _Hidden(Rig):
    """A rig whose snapshots list no process (`Rig.snapshot(visible=False)`, which older trees take too)."""

    def snapshot(self, t: float, usage: Any, *, visible: bool | None = None) -> Snapshot:  # noqa: ARG002
        return super().snapshot(t, usage, visible=False)


def hide(rig: Rig) -> Rig:
    """`rig` as a daemon sees it from a container without the host's pid namespace: NVML lists no process it can
    see, and only the card's own series is judged."""
    return _Hidden(**{f.name: getattr(rig, f.name) for f in dataclasses.fields(rig)})


#: A restart this close to a case's end leaves too little to judge: the case is left out for that restart.
RESTART_MIN_TICKS = 30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quiet", action="store_true", help="print the totals only")
    ap.add_argument("--family", action="append", default=[], help="only this family (repeatable)")
    ap.add_argument(
        "--restart-at",
        default="",
        metavar="S[,S...]",
        help="replay each case from S seconds on: a daemon restarted then, the runs already there",
    )
    ap.add_argument("--hidden", action="store_true", help="the daemon cannot see the pids: no process is listed")
    args = ap.parse_args()

    def say(case: Case, raised: list[Finding]) -> None:
        if raised and not args.quiet:
            said = "; ".join(
                f"t={f.t:.0f} {f.severity.value}{' (tentative)' if f.tentative else ''} {f.kind.value} "
                f"pid={f.process.pid if f.process else None} eta={f.eta_seconds}"
                for f in raised
            )
            print(f"{case.family}: {case.label}, seed {case.seed}: {said}")

    totals = tally(
        [
            bool,
            lambda raised: any(f.severity.value == "critical" for f in raised),
            lambda raised: any(f.severity.value == "critical" and f.tentative is None for f in raised),
        ],
        each=say,
        families=args.family,
        restarts=[float(v) for v in args.restart_at.split(",") if v],
        hidden=args.hidden,
    )
    print("| family | healthy runs | with a finding | with a critical one | with a firm critical one |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for family, (runs, noisy, critical, firm) in totals.items():
        print(f"| {family} | {runs} | {noisy} | {critical} | {firm} |")


if __name__ == "__main__":
    main()
