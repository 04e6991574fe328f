"""Where the findings about `warmups.py`'s `ceiling` runs fall: before the run's first fall from the card's end,
between its first and second, or after its second (when its troughs compare). Every one of them is false: the runs
are healthy, their cache refills at the card's end and PyTorch gives it back there (docs/detection.md, "A cache that
refills at the card's end lived there").

    python benchmarks/detection/ceiling_falls.py                   # this tree
    PYTHONPATH=OLDTREE python benchmarks/detection/ceiling_falls.py  # a tree to compare (a `vramwatch` package dir)
"""

from __future__ import annotations

from collections import Counter

import ceiling_sweep
import warmups
from vramwatch.detectors.testing import replay

WHERE = ("on its first climb", "between its first and second fall", "after its second fall")


def main() -> None:
    counts: Counter[tuple[str, str]] = Counter()
    runs: Counter[str] = Counter()
    for case in warmups.cases():
        if case.family != "ceiling":
            continue
        built = case.build()
        assert built is not None
        rows, rig = built
        falls = ceiling_sweep.falls(rows)
        firm = False
        for f in replay(rows, rig).raised:
            if f.kind.value not in ("oom_forecast", "growth"):
                continue
            what = f"{f.severity.value}{' (tentative)' if f.tentative else ''} {f.kind.value}"
            counts[(what, WHERE[min(2, sum(1 for x in falls if x < f.t))])] += 1
            firm = firm or (f.severity.value == "critical" and f.tentative is None)
        runs["runs"] += 1
        runs["with a firm critical forecast"] += firm
    print(f"| finding | {' | '.join(WHERE)} |")
    print(f"| --- |{' ---: |' * len(WHERE)}")
    for what in sorted({w for w, _ in counts}):
        print(f"| {what} | {' | '.join(str(counts[(what, where)]) for where in WHERE)} |")
    print(f"\n{runs['runs']} healthy runs, {runs['with a firm critical forecast']} with a firm critical forecast")


if __name__ == "__main__":
    main()
