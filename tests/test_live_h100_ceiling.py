"""Runs that fill the card with their cache and live, live: benchmarks/detection/ceiling_gpu.py on a lent H100
(benchmarks/results/ceiling-h100-2026-12-06).

A ballast leaves 24 GiB. `R` (trainer.py `recycle`) is healthy: its sequence-length warm-up grows PyTorch's cache
until cudaMalloc fails at the card's end; PyTorch gives the cache back and retries, twice in 200 s, and R ends
normally. `L` does the same with a 100 MB/s leak beneath its cache and really runs out of memory. Each recording is
replayed through the detectors, the tracker and the policy of the live run (critical findings save and then end
`trainer.py`), in dry-run. Run 1's daemon was `8ae1336` (dry-run); run 2's was this change's, acting, with `8ae1336`
beside it in dry-run.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from _recorded import Decided, recorded, replay_with_policy
from vramwatch.model import FindingKind, Snapshot

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "ceiling-h100-2026-12-06"
#: Each run's folder and its pids: R (healthy), L (leaks).
RUNS = {"run 1": (RESULTS / "run1", 512, 618), "run 2": (RESULTS / "run2", 496, 602)}
GIB = 1 << 30


def _events(path: Path, name: str) -> list[dict[str, object]]:
    return [e for line in path.read_text().splitlines() if (e := json.loads(line)).get("event") == name]


@pytest.fixture(scope="module", params=list(RUNS))
def run(request: pytest.FixtureRequest) -> tuple[str, list[Snapshot], Decided]:
    folder = RUNS[request.param][0]
    snaps = recorded(folder / "ceiling.raw.jsonl.gz")
    return request.param, snaps, replay_with_policy(snaps, folder / "serve.toml")


def _falls(snaps: list[Snapshot], pid: int) -> list[float]:
    """When `pid` fell by more than a GiB from a card with less than 512 MiB free (and was still there after)."""
    out = []
    for a, b in itertools.pairwise(snaps):
        held = {p.pid: p.used_bytes or 0 for p in a.processes}
        after = {p.pid: p.used_bytes or 0 for p in b.processes}
        free = a.gpus[0].free_bytes
        if pid in held and pid in after and free is not None and free < 512 << 20 and held[pid] - after[pid] > GIB:
            out.append(a.t)
    return out


def test_the_healthy_run_lived_through_the_card_s_end(run: tuple[str, list[Snapshot], Decided]) -> None:
    """R filled the card twice, PyTorch gave its cache back (num_alloc_retries 2) and R ended normally (exit 0)."""
    name, snaps, _ = run
    folder, r, _l = RUNS[name]
    assert len(_falls(snaps, r)) == 2
    steps = _events(folder / "R.log", "step")
    assert steps[-1]["num_alloc_retries"] == 2
    assert _events(folder / "R.log", "exit")[0]["code"] == 0


def test_the_healthy_run_is_never_given_a_firm_critical_and_never_signalled(
    run: tuple[str, list[Snapshot], Decided],
) -> None:
    """About R, only its first climb (from its load, young) is forecast, tentatively: after it lived through the
    card's end nothing is forecast, the policy that ends runs never acts on it (`8ae1336` forecast its second climb
    firm, "full in ~21 s", and would have sent it SIGTERM), and its normal end mid-climb is no post-mortem."""
    name, snaps, (raised, decisions) = run
    _folder, r, _l = RUNS[name]
    first_fall = _falls(snaps, r)[0]
    about_r = [f for f in raised if f.kind == FindingKind.OOM_FORECAST and f.culprit and f.culprit.pid == r]
    assert about_r
    assert all(f.tentative is not None for f in about_r)
    assert all(f.t < first_fall for f in about_r)
    assert not [reason for f, reason, _ in decisions if f.culprit and f.culprit.pid == r and "waits" not in reason]
    # R ended normally, climbing (run 2: 5.6 GiB free); the recording has no exit status, and none is needed.
    assert not [f for f in raised if f.kind == FindingKind.PROBABLE_OOM and f.process and f.process.pid == r]


def test_the_leak_beneath_the_cache_is_forecast_ahead_of_its_oom(run: tuple[str, list[Snapshot], Decided]) -> None:
    """L's climb is forecast critical more than a minute before its real OOM (tentatively: it is young, and its
    first climb is all vramwatch can judge it by), and the post-mortem names it without its exit status (in run 2 it
    died a little below where it fell from: the rise into the ceiling counts from its low)."""
    name, _snaps, (raised, _decisions) = run
    folder, _r, leaker = RUNS[name]
    oom_t = float(str(_events(folder / "L.log", "oom")[0]["t"]))
    ahead = [f for f in raised if f.kind == FindingKind.OOM_FORECAST and f.culprit and f.culprit.pid == leaker]
    assert ahead
    assert oom_t - ahead[0].t >= 60.0
    assert any(f.kind == FindingKind.PROBABLE_OOM and f.process and f.process.pid == leaker for f in raised)


def test_the_live_daemons_said_so() -> None:
    """Run 2, live: this change's daemon (acting) raised no firm critical about R and signalled no one; `8ae1336`
    beside it (dry-run) forecast R's second climb firm and would have sent R SIGTERM."""
    summary = json.loads((RESULTS / "run2" / "summary.json").read_text())
    _folder, r, _l = RUNS["run 2"]
    live, base = summary["serve"], summary["serve-base"]
    assert not [f for f in live["findings_raised"] if f"(pid {r}," in f["message"] and f["severity"] == "critical"
                and f["tentative"] is None]  # fmt: skip
    assert not any(d["done"] for d in live["signal_decisions"])
    assert [d["pid"] for d in base["signal_decisions"] if d["dry_run"] and d["pid"] == r] == [r]
    assert summary["exit_codes"] == {"R": 0, "L": 3}
