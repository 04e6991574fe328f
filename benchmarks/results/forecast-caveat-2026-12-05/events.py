"""Every raised finding (t, kind, severity, pid, message) of one tree, replayed as score.py replays it.

    python events.py TREE OUT.json traces      # the recorded traces, ballast out and in
    python events.py TREE OUT.json simulated   # every simulated scenario but the two scale ones, seeds 0, 1, 2
    python events.py --compare OLD.json NEW.json

TREE is a checkout; import its `watchdog` as `vramwatch` through PYTHONPATH (a directory holding a `vramwatch`
link to TREE/watchdog) to replay an older tree.
"""

import json
import sys
from pathlib import Path


def replay(tree: str, out: str, which: str) -> None:
    sys.path.insert(0, tree + "/benchmarks/detection")
    import score
    from vramwatch.backends.simulated import SCENARIOS
    from vramwatch.detectors.analysis import DEFAULT_CONFIG

    if which == "traces":
        cases = [c for d in ("traces", "traces/raw") for c in score.trace_cases(Path(tree, "benchmarks/detection", d))]
    else:
        cases = list(score.simulated_cases([n for n in SCENARIOS if not n.startswith("scale")], [0, 1, 2]))
    found = {}
    for name, truth, snaps, interval in cases:
        run = score.replay(name, truth, snaps, DEFAULT_CONFIG, interval)
        found.setdefault(name, []).append([(e.t, e.kind, e.severity, e.pid, e.message) for e in run.ours])
    Path(out).write_text(json.dumps(found))


def compare(old_path: str, new_path: str) -> None:
    old, new = json.loads(Path(old_path).read_text()), json.loads(Path(new_path).read_text())
    assert old.keys() == new.keys()
    for name in old:
        for a, b in zip(old[name], new[name], strict=True):
            if [e[:4] for e in a] != [e[:4] for e in b]:
                print("FINDINGS DIFFER", name)
            for x, y in zip(a, b, strict=False):
                if x[4] != y[4]:
                    print(name, x[0], x[1], x[2], "\n   old:", x[4], "\n   new:", y[4])
    print("compared", sum(len(v) for v in old.values()), "replays")


if __name__ == "__main__":
    if sys.argv[1] == "--compare":
        compare(sys.argv[2], sys.argv[3])
    else:
        replay(sys.argv[1], sys.argv[2], sys.argv[3])
