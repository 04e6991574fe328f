"""Which raised findings a policy that acts would act on, true and false: the recorded corpus, the simulator and
the healthy warm-ups of warmups.py (about two minutes, no GPU):

    python benchmarks/detection/acted.py                        # this tree
    PYTHONPATH=BASE_PKG python benchmarks/detection/acted.py    # another (a directory holding its `vramwatch`)

The policy is the one docs/actions.md shows, acting on critical findings of the kinds in `act_on_kinds`, with the
default `on_tentative = "save"`. Two counts per finding: *asked to save* (a signal through an adapter that saves
and goes on: the agent, SimpleTuner, a fallback signal) and *may end a run* (a kill, a hook, or an adapter that
saves and then stops: what `allow_stop` allows). A tree from before tentative findings does both on every critical
finding of those kinds. Each acted finding of the corpus and the simulator is judged by score.py's truth (true,
allowed or false); every one raised on a healthy warm-up is false. For each out-of-memory the truth foresees (a
leak), the report gives how long before it the policy first acted, or that it never did.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import score  # noqa: E402
import vramwatch  # noqa: E402
import warmups  # noqa: E402
from vramwatch.actions.policy import DEFAULT_ACT_ON_KINDS, parse_policy  # noqa: E402
from vramwatch.backends.simulated import SCENARIOS  # noqa: E402
from vramwatch.detectors.analysis import DEFAULT_CONFIG  # noqa: E402
from vramwatch.detectors.lifecycle import FindingTracker  # noqa: E402
from vramwatch.history import History  # noqa: E402
from vramwatch.model import Finding, Snapshot  # noqa: E402

POLICY = parse_policy({"actions": {"critical": ["notify", "signal"]}, "targets": {"users": ["alice"]}})


def acts(finding: Finding, *, ending: bool) -> bool:
    """Would the policy ask to save on `finding` (`ending`: may it end a run)? Before the targets and the re-check,
    which do not depend on the finding's doubt."""
    intrusive = getattr(POLICY, "intrusive", None)
    if intrusive is None:  # a tree from before tentative findings
        return finding.severity.value == "critical" and finding.kind in DEFAULT_ACT_ON_KINDS
    allowed = [action for action, refused in intrusive(finding) if refused is None]
    return "signal" in allowed and (not ending or POLICY.held(finding) is None)


def raised(snapshots: Iterable[Snapshot], interval: float) -> list[Finding]:
    history = History(window_seconds=3600.0, interval_seconds=interval)
    tracker = FindingTracker(DEFAULT_CONFIG)
    out: list[Finding] = []
    for snap in snapshots:
        history.add(snap)
        out += tracker.update(score.analyze(history, DEFAULT_CONFIG))[0]
    return out


def judged(found: list[Finding], truth: score.Truth, *, ending: bool) -> dict[str, Any]:
    """What the policy did with the findings raised on one trace: how many it acted on, the false ones, and how long
    before each foreseen OOM it first acted (None: never)."""
    events = [(f, score.classify(score.Event.of(f), truth)) for f in found if acts(f, ending=ending)]
    leads = []
    for e in truth.expectations():
        if e.kind == "oom" and e.gradual and e.t is not None:
            before = [f.t for f, v in events if v in ("true", "allowed") and f.t <= e.t]
            leads.append(None if not before else e.t - min(before))
    return {
        "acted": len(events),
        "false": sum(v == "false" for _, v in events),
        "false_what": [f"t={f.t:.0f} {f.kind}: {f.message}" for f, v in events if v == "false"],
        "leads": leads,
    }


def _leads(leads: list[float | None]) -> str:
    acted = sorted(x for x in leads if x is not None)
    return f"{len(acted)} of {len(leads)}" + (f" ({', '.join(f'{x:.0f}' for x in acted)} s)" if acted else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quiet", action="store_true", help="the tables only")
    args = ap.parse_args()
    print(f"tree: {Path(vramwatch.__file__).parent}")
    rows: list[tuple[str, int, dict[str, Any], dict[str, Any]]] = []
    for label, cases in (
        ("corpus, 24 GiB", score.trace_cases(HERE / "traces")),
        ("corpus, ballast in", score.trace_cases(HERE / "traces" / "raw")),
        ("simulator, seeds 0-2", score.simulated_cases([n for n in SCENARIOS if n != "scale"], (0, 1, 2))),
    ):
        for name, truth, snapshots, interval in cases:
            found = raised(snapshots, interval)
            critical = sum(f.severity.value == "critical" for f in found)
            save, end = judged(found, truth, ending=False), judged(found, truth, ending=True)
            rows.append((label, critical, save, end))
            if not args.quiet and (save["acted"] or end["acted"]):
                print(
                    f"{label}: {name}: asked to save on {save['acted']} ({save['false']} false), may end a run on "
                    f"{end['acted']} ({end['false']} false); leaks acted on before their OOM: asked to save "
                    f"{_leads(save['leads'])}, may end {_leads(end['leads'])}"
                )
                for what in dict.fromkeys(save["false_what"] + end["false_what"]):
                    print(f"    false: {what}")
    print(
        "\n| set | runs | criticals raised | asked to save on (false) | may end a run on (false) "
        "| leaks asked to save before their OOM | leaks a run may be ended for before their OOM |"
    )
    print("| --- | ---: | ---: | ---: | ---: | --- | --- |")
    for label in dict.fromkeys(label for label, *_ in rows):
        mine = [r for r in rows if r[0] == label]
        save_leads = [x for r in mine for x in r[2]["leads"]]
        end_leads = [x for r in mine for x in r[3]["leads"]]
        print(
            f"| {label} | {len(mine)} | {sum(r[1] for r in mine)} "
            f"| {sum(r[2]['acted'] for r in mine)} ({sum(r[2]['false'] for r in mine)}) "
            f"| {sum(r[3]['acted'] for r in mine)} ({sum(r[3]['false'] for r in mine)}) "
            f"| {_leads(save_leads)} | {_leads(end_leads)} |"
        )
    print("\n| healthy warm-ups (warmups.py) | runs | with a critical finding | asked to save | may end a run |")
    print("| --- | ---: | ---: | ---: | ---: |")
    totals = warmups.tally(
        [
            lambda found: any(f.severity.value == "critical" for f in found),
            lambda found: any(acts(f, ending=False) for f in found),
            lambda found: any(acts(f, ending=True) for f in found),
        ]
    )
    for family, (runs, critical, save, end) in totals.items():
        print(f"| {family} | {runs} | {critical} | {save} | {end} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
