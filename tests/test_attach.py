"""`vramwatch attach`: a live view of one run that ends with a summary saying how the run ended."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from vramwatch.attach import sparkline
from vramwatch.backends.simulated import ground_truth
from vramwatch.cli import main


def _leaker() -> int:
    (pid,) = {p["pid"] for p in ground_truth("fast_leak")["processes"] if p.get("behaviour") == "leak"}
    return int(pid)


def test_attach_follows_a_leak_to_its_oom_and_exits_3() -> None:
    """Attached to a leaking run: ticks with trend and ETA, a critical forecast with advice, then an OOM summary."""
    pid = _leaker()
    res = CliRunner().invoke(main, ["attach", str(pid), "--simulate", "fast_leak", "--fast-forward", "--json"])
    assert res.exit_code == 3, res.output
    events = [json.loads(line) for line in res.stdout.splitlines()]
    ticks = [e for e in events if e["event"] == "tick"]
    assert ticks
    assert any(e["oom_eta_seconds"] is not None for e in ticks)
    findings = [f for e in ticks for f in e["findings"]]
    critical = [f for f in findings if f["kind"] == "oom_forecast" and f["severity"] == "critical"]
    assert critical
    assert critical[0]["advice"], "a forecast carries the advisor's suggestions"
    summary = events[-1]
    assert summary["event"] == "summary"
    assert summary["probable_oom"] is True
    assert summary["ended"] == "probable OOM"
    assert summary["peak_bytes"] > 20 * 1024**3


def test_attach_to_a_pid_that_never_uses_a_gpu_gives_up_with_a_reason() -> None:
    """A pid that never shows up on a GPU is waited for, said so, and given up on after the wait."""
    res = CliRunner().invoke(main, ["attach", "4", "--simulate", "steady", "--fast-forward", "--json"])
    assert res.exit_code == 0
    events = [json.loads(line) for line in res.stdout.splitlines()]
    assert events[0] == {"event": "waiting", "pid": 4}
    assert events[-1]["ended"] == "never used a GPU while watched"


def test_attach_to_a_missing_pid_on_a_real_host_is_a_clear_error() -> None:
    """On NVML, a pid that does not exist is refused at once (checked before sampling)."""
    from vramwatch.attach import check_pid
    from vramwatch.errors import VramwatchError
    from vramwatch.testing import ScriptedBackend

    with pytest.raises(VramwatchError, match="no process with pid 999999999"):
        check_pid(999_999_999, ScriptedBackend([], kind="nvml"))


def test_sparkline_scales_between_min_and_max() -> None:
    """The sparkline spans the block characters from the lowest to the highest value."""
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([5, 5, 5]) == "▁▁▁"
    assert sparkline([]) == ""
