"""Runs that saw in a band (`empty_cache()` every step, read at random phases), drawn at random: how many healthy ones
raise a finding in an hour, and how early a leak beneath such a sawtooth is claimed and forecast.

    python benchmarks/detection/sawtooth_sweep.py                    # this tree (about eight minutes on 2 cores)
    PYTHONPATH=OLDTREE python benchmarks/detection/sawtooth_sweep.py  # a tree to compare (a `vramwatch` package dir)
    python benchmarks/detection/sawtooth_sweep.py --healthy 400 --seed 3 --no-leaks

Healthy runs (`--healthy`, drawn from `--seed`): one run alone on a 24 GiB card for an hour, peaking at 4 GiB to
1 GiB below the card's end (`pressure` has nothing to say), its memory falling back by up to 0.25-4 GiB (at most 80 %
of what it holds above its context) at every step of 0.3-8 s (each step 10 % longer or shorter than the last), read
once a second; old (on its band when vramwatch starts) or young (it loads over 5 s at t = 0, its findings counted
from 300 s on), alternately. A run that saws and neither grows nor runs out is healthy: every finding about it is
false, and the table counts the runs with at least one, by the worst.

Leaks: an old run peaking at 8 or 12 GiB that saws by 0.5-3 GiB with steps of 0.5 s, its peaks and troughs rising
5-100 MB/s from 600 s on, until its peak no longer fits (its OOM); with or without a validation (2 GiB above its
peak for 20 s) that ends as the leak begins. The median lead (seconds before the OOM) of its first growth claim, of
its first critical forecast and of its first firm one, and how many had none; and what that first critical forecast
claimed against the truth (its rate over the leak's, its ETA over the time that was left: a rate many times the
leak's is a chance window, a critical that a policy acts on half an hour early).
`--hidden`: the same draws where the daemon cannot see the pids (a container without the host's pid namespace): NVML
lists no process, and only the card's own series is judged.
The cases are the script's own draws, not a recording: `score.py`'s corpus is the real one.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import random
import statistics
from concurrent.futures import ProcessPoolExecutor

import warmups
from ceiling_sweep import LEAD_HEADS, WORST, first_leads, lead_cells, worst
from vramwatch.detectors.testing import GIB, MIB, WALL0, Rig, meta, replay, ticks

LIMIT = warmups.CARD.total_bytes - warmups.CARD.overhead_bytes
LEAK_FROM = 600.0


def sawing(
    peak: float, amplitude: float, step: float, seed: int, *, seconds: float, young: bool = False
) -> list[warmups.Row]:
    """A run at `peak` bytes that falls back by `amplitude` at every step of about `step` seconds and climbs again
    through the step (its activations), read once a second at whatever phase a step is in."""
    rng = random.Random(seed)
    edge, period, out = -rng.uniform(0.0, step), step, []
    for t in ticks(0.0, seconds):
        while edge + period <= t:
            edge += period
            period = step * rng.uniform(0.9, 1.1)
        load = min(1.0, max(0.0, (t - 3.0) / 5.0)) if young else 1.0
        held = warmups.CONTEXT + load * (peak - warmups.CONTEXT - amplitude * (1.0 - (t - edge) / period))
        out.append((t, {warmups.PID: math.ceil(held / (2 * MIB)) * 2 * MIB}))
    return out


def rig(*, old: bool, hidden: bool = False) -> Rig:
    made = Rig(cards=(warmups.CARD,), metas={warmups.PID: meta(warmups.PID, start_time=WALL0 - (3600.0 if old else 0))})
    return warmups.hide(made) if hidden else made


def healthy(case: tuple[float, float, float, bool, int, bool]) -> tuple[str | None, str]:
    """(the worst finding about the run, the case and what was raised)."""
    peak, amplitude, step, old, seed, hidden = case
    rows = sawing(peak * GIB, amplitude * GIB, step, seed, seconds=3600.0, young=not old)
    found = [f for f in replay(rows, rig(old=old, hidden=hidden)).raised if old or f.t >= 300.0]
    said = "; ".join(
        f"t={f.t:.0f} {f.severity.value}{' (tentative)' if f.tentative else ''} {f.kind.value}: {f.message}"
        for f in found
    )
    age = "old" if old else "young"
    label = f"peak {peak:.2f} GiB, falling back {amplitude:.2f} GiB every {step:.2f} s, {age}, seed {seed}"
    return worst(found), f"{label}: {said} (healthy{case!r} replays it)"


Leads = tuple[float | None, float | None, float | None]


def leaky(case: tuple[float, float, float, bool, int, bool]) -> tuple[Leads, tuple[float, float] | None]:
    """The leads (seconds before the OOM) of the first growth claim, critical forecast and firm one (None: none), and
    what the first critical forecast said: its rate over the leak's, its ETA over the time that was left."""
    rate, amplitude, peak, validation, seed, hidden = case
    rows = []
    for t, usage in sawing(peak * GIB, amplitude * GIB, 0.5, seed, seconds=7200.0):
        held = usage[warmups.PID] + rate * 1e6 * max(0.0, t - LEAK_FROM)
        if validation and LEAK_FROM - 20.0 <= t < LEAK_FROM:
            held = warmups.CONTEXT + (peak + 2.0) * GIB
        if held > LIMIT:
            break  # the OOM: this step's peak does not fit
        rows.append((t, {warmups.PID: math.ceil(held / (2 * MIB)) * 2 * MIB}))
    oom = rows[-1][0] + 1.0
    raised = [f for f in replay(rows, rig(old=True, hidden=hidden)).raised if f.t >= LEAK_FROM]
    claims = [f.t for f in raised if f.kind.value == "growth"]
    critical = [f for f in raised if f.kind.value == "oom_forecast" and f.severity.value == "critical"]
    said = None
    if critical:
        first = critical[0]
        said = (first.numbers["rate_bytes_per_second"] / (rate * 1e6), (first.eta_seconds or 0.0) / (oom - first.t))
    return first_leads(oom, claims, critical), said


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--healthy", type=int, default=240, help="healthy runs to draw")
    ap.add_argument("--seed", type=int, default=0, help="the draws' seed")
    ap.add_argument("--quiet", action="store_true", help="the tables only, not each healthy run with a finding")
    ap.add_argument("--no-leaks", action="store_true", help="the healthy runs only")
    ap.add_argument("--hidden", action="store_true", help="the daemon cannot see the pids: no process is listed")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    cases = []
    for k in range(args.healthy):
        peak = rng.uniform(4, warmups.AFTERNOON_ROOM / GIB)
        amplitude = min(rng.uniform(0.25, 4), 0.8 * (peak - warmups.CONTEXT / GIB))
        cases.append((peak, amplitude, rng.uniform(0.3, 8), k % 2 == 0, rng.randint(0, 999), args.hidden))
    leaks = (
        []
        if args.no_leaks
        else list(itertools.product((5, 20, 100), (0.5, 1.0, 2.0, 3.0), (8, 12), (False, True), (0, 1), (args.hidden,)))
    )
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        judged = list(pool.map(healthy, cases, chunksize=4))
        leads = list(pool.map(leaky, leaks, chunksize=2))
    if not args.quiet:
        for w, said in judged:
            if w is not None:
                print(said)
    hidden = ", pids hidden" if args.hidden else ""
    print(f"| healthy sawing runs, an hour each (`--seed {args.seed}`{hidden}) | {' | '.join(WORST)} | any |")
    print("| ---: |" + " ---: |" * (len(WORST) + 1))
    counts = [sum(1 for w, _ in judged if w == name) for name in WORST]
    print(f"| {len(judged)} | {' | '.join(map(str, counts))} | {sum(counts)} |")
    if not leaks:
        return
    print()
    print(f"| leak beneath the sawtooth | validation before | cases | {LEAD_HEADS} |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for rate, validation in itertools.product(sorted({c[0] for c in leaks}), (False, True)):
        mine = [lead for c, (lead, _) in zip(leaks, leads, strict=True) if c[0] == rate and c[3] == validation]
        print(f"| {rate} MB/s | {'yes' if validation else 'no'} | {len(mine)} | {lead_cells(mine)} |")
    # What the first critical forecast claimed, against the truth: a rate several times the leak's, an ETA a small
    # share of the time left, is a critical raised on a chance window (a policy ends a run that had half an hour).
    print()
    print(
        "| leak beneath the sawtooth | first critical's rate / the leak's: median, max "
        "| its ETA / the time left: median, min |"
    )
    print("| ---: | ---: | ---: |")
    for rate in sorted({c[0] for c in leaks}):
        said = [s for c, (_, s) in zip(leaks, leads, strict=True) if c[0] == rate and s is not None]
        if not said:
            print(f"| {rate} MB/s | - | - |")
            continue
        rates, etas = [r for r, _ in said], [e for _, e in said]
        print(
            f"| {rate} MB/s | {statistics.median(rates):.1f}x, {max(rates):.1f}x | "
            f"{statistics.median(etas):.2f}, {min(etas):.2f} |"
        )


if __name__ == "__main__":
    main()
