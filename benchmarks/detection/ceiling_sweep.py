"""Runs whose cache refills at the card's end, drawn at random: how many healthy ones are still forecast or claimed
once their troughs compare, and how early a leak beneath such a cache is claimed and forecast.

    python benchmarks/detection/ceiling_sweep.py                    # this tree (about four minutes on 2 cores)
    PYTHONPATH=OLDTREE python benchmarks/detection/ceiling_sweep.py  # a tree to compare (a `vramwatch` package dir)
    python benchmarks/detection/ceiling_sweep.py --healthy 400 --max-share 0.5 --seed 3

Healthy runs (`--healthy`, drawn from `--seed`): `warmups.refills` on a 24 GiB card for fifteen minutes, needs 4-18
GiB, cache growing 20-400 MiB/s, troughs varying by up to `--max-share` of the room the cache refills (a flush caught
mid-step, with the step's activations live), old (on its plateau when vramwatch starts) or young (it loads at t = 0),
alternately. Every finding about one after its second fall from the card's end is false; the table counts the runs
with at least one, by the worst. Leaks: an old run whose needs grow 5-50 MB/s from 300 s beneath a cache that
refills (100 or 300 MiB/s), troughs varying by 0-2 GiB, until its needs alone fill the card (its OOM): the median
lead of its first growth claim, of its first critical forecast after its second fall (when its troughs compare) and
of its first firm one, and how many had none.
The cases are the script's own draws, not a recording: `score.py`'s corpus is the real one.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import statistics
from concurrent.futures import ProcessPoolExecutor

import warmups
from vramwatch.detectors.testing import GIB, MIB, replay
from vramwatch.model import Finding

LIMIT = warmups.CARD.total_bytes - warmups.CARD.overhead_bytes
WORST = ("firm critical", "tentative critical", "warning")


def falls(rows: list[warmups.Row]) -> list[float]:
    """When the run fell from the card's end (by more than 128 MiB from within 512 MiB of it)."""
    pid = warmups.PID
    return [
        t for (t, a), (_, b) in itertools.pairwise(rows) if a[pid] - b[pid] > 128 * MIB and a[pid] >= LIMIT - 512 * MIB
    ]


def worst(found: list[Finding]) -> str | None:
    if any(f.severity.value == "critical" and f.tentative is None for f in found):
        return WORST[0]
    if any(f.severity.value == "critical" for f in found):
        return WORST[1]
    return WORST[2] if found else None


def healthy(case: tuple[float, float, float, bool, int]) -> tuple[bool, str | None, str]:
    """(it fell twice, the worst finding after its second fall, the case and what was raised)."""
    needs, creep, share, old, seed = case
    jitter = share * (LIMIT - warmups.CONTEXT - needs * GIB)
    rows, rig = warmups.refills(needs * GIB, creep * MIB, jitter, seed, old=old, seconds=900.0)
    fell = falls(rows)
    if len(fell) < 2:
        return False, None, ""
    late = [f for f in replay(rows, rig).raised if f.t > fell[1] and f.kind.value in ("oom_forecast", "growth")]
    said = "; ".join(
        f"t={f.t:.0f} {f.severity.value}{' (tentative)' if f.tentative else ''} {f.kind.value}" for f in late
    )
    age = "old" if old else "young"
    label = f"needs {needs:.2f} GiB, cache {creep:.0f} MiB/s, troughs {share:.3f} of the room, {age}, seed {seed}"
    return True, worst(late), f"{label}: {said} (healthy{case!r} replays it)"


def leaky(case: tuple[float, float, float, float, int]) -> tuple[float | None, float | None, float | None]:
    """The leads (seconds before the OOM) of the first growth claim, critical forecast and firm one, None: none."""
    leak, jitter, needs, creep, seed = case
    rows, rig = warmups.refills(
        needs * GIB, creep * MIB, jitter * GIB, seed, old=True, seconds=7200.0, leak=leak * 1e6, leak_from=300.0
    )
    oom = rows[-1][0] + 1.0
    fell = falls(rows)
    # From its second fall on: before it, a settled run's climb is forecast whatever its troughs (one fall: nothing
    # to compare), which says nothing of the leak.
    since = max(300.0, fell[1]) if len(fell) >= 2 else oom
    raised = replay(rows, rig).raised
    claims = [f.t for f in raised if f.kind.value == "growth" and f.process is not None and f.t > 300.0]
    critical = [f for f in raised if f.kind.value == "oom_forecast" and f.severity.value == "critical" and f.t > since]
    return first_leads(oom, claims, critical)


def first_leads(
    oom: float, claims: list[float], critical: list[Finding]
) -> tuple[float | None, float | None, float | None]:
    """The leads (seconds before `oom`) of the first growth claim, critical forecast and firm one (None: none)."""
    firm = [f.t for f in critical if f.tentative is None]
    return tuple(None if not ts else oom - ts[0] for ts in (claims, [f.t for f in critical], firm))  # type: ignore[return-value]


#: The columns `lead_cells` fills, after the case's own.
LEAD_HEADS = " | ".join(f"{h}: median lead (none)" for h in ("growth claim", "critical forecast", "firm critical"))


def lead_cells(mine: list[tuple[float | None, float | None, float | None]]) -> str:
    """Each of `first_leads`' three columns over some cases: the median lead, and how many had none."""
    cells = []
    for k in range(3):
        got = [m[k] for m in mine if m[k] is not None]
        median = f"{statistics.median(got):.0f} s" if got else "-"
        cells.append(f"{median} ({len(mine) - len(got)})")
    return " | ".join(cells)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--healthy", type=int, default=300, help="healthy runs to draw")
    ap.add_argument("--max-share", type=float, default=0.25, help="troughs vary by up to this share of the room")
    ap.add_argument("--seed", type=int, default=0, help="the draws' seed")
    ap.add_argument("--quiet", action="store_true", help="the tables only, not each healthy run with a finding")
    ap.add_argument("--no-leaks", action="store_true", help="the healthy runs only")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    cases = [
        (rng.uniform(4, 18), rng.uniform(20, 400), rng.uniform(0, args.max_share), k % 2 == 0, rng.randint(0, 3))
        for k in range(args.healthy)
    ]
    leaks = (
        []
        if args.no_leaks
        else list(itertools.product((5, 10, 20, 50), (0.0, 0.5, 1.0, 2.0), (6, 10), (100, 300), (0, 1)))
    )
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        judged = list(pool.map(healthy, cases, chunksize=4))
        leads = list(pool.map(leaky, leaks, chunksize=2))
    fell = [(w, said) for ok, w, said in judged if ok]
    if not args.quiet:
        for w, said in fell:
            if w is not None:
                print(said)
    print(
        f"| healthy runs that fell twice (troughs up to {args.max_share:g} of the room) | {' | '.join(WORST)} | any |"
    )
    print("| ---: |" + " ---: |" * (len(WORST) + 1))
    counts = [sum(1 for w, _ in fell if w == name) for name in WORST]
    print(f"| {len(fell)} | {' | '.join(map(str, counts))} | {sum(counts)} |")
    if not leaks:
        return
    print()
    print(f"| leak beneath the cache | cases | {LEAD_HEADS} |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for rate in sorted({c[0] for c in leaks}):
        mine = [lead for c, lead in zip(leaks, leads, strict=True) if c[0] == rate]
        print(f"| {rate} MB/s | {len(mine)} | {lead_cells(mine)} |")


if __name__ == "__main__":
    main()
