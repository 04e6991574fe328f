"""Hooks: the finding in the environment, argv without a shell, timeouts that kill the whole group."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import wait_for
from vramwatch.actions.hooks import HookRunner, hook_environment
from vramwatch.actions.policy import HookCommand
from vramwatch.model import Finding, ProcessKey, ProcessMeta, Severity

KEY = ProcessKey(31337, 1_700_000_123.5)
DUMP_ENV = "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], 'w'))"


def finding(**overrides: object) -> Finding:
    base: dict[str, object] = {
        "kind": "oom_forecast",
        "severity": Severity.CRITICAL,
        "gpu_uuid": "GPU-beef",
        "message": "fills in 90 s; $(touch /tmp/pwned) `id`",
        "t": 10.0,
        "process": KEY,
        "process_name": "python3",
        "eta_seconds": 90.0,
        "confidence": 0.75,
        "numbers": {"gpu_index": 2, "used_bytes": 23_000_000_000, "free_bytes": 1_000_000_000, "growth rate": 1.5},
        "advice": ("one", "two"),
    }
    base.update(overrides)
    return Finding(**base)  # type: ignore[arg-type]


def test_hook_sees_the_finding_in_its_environment(tmp_path: Path) -> None:
    """A real hook process receives the VRAMWATCH_* variables, the hook's own env, and no daemon secrets."""
    out = tmp_path / "env.json"
    runner = HookRunner(
        [HookCommand(argv=(sys.executable, "-S", "-c", DUMP_ENV, str(out)), env=(("TEAM", "ml"),))],
        host="box", base_env={"PATH": "/usr/bin:/bin", "VRAMWATCH_WEBHOOK_SECRET": "s3cret", "HOME": "/root"},
    )  # fmt: skip
    meta = ProcessMeta(pid=KEY.pid, start_time=KEY.start_time, user="alice", container_id="c0ffee")
    try:
        (result,) = runner.run(finding(), meta=meta)
        assert result.done
        assert result.action == "hook"
        assert wait_for(lambda: runner.counts()["sent"] == 1)
    finally:
        runner.close(5)
    env = json.loads(out.read_text())
    assert {k: v for k, v in env.items() if k.startswith("VRAMWATCH_")} == {
        "VRAMWATCH_STATUS": "firing",
        "VRAMWATCH_KIND": "oom_forecast",
        "VRAMWATCH_SEVERITY": "critical",
        "VRAMWATCH_MESSAGE": "fills in 90 s; $(touch /tmp/pwned) `id`",  # passed as data, never to a shell
        "VRAMWATCH_GPU": "2",
        "VRAMWATCH_GPU_UUID": "GPU-beef",
        "VRAMWATCH_ETA_SECONDS": "90.000",
        "VRAMWATCH_CONFIDENCE": "0.750",
        "VRAMWATCH_USED_BYTES": "23000000000",
        "VRAMWATCH_FREE_BYTES": "1000000000",
        "VRAMWATCH_HOST": "box",
        "VRAMWATCH_ADVICE": "one\ntwo",
        "VRAMWATCH_PID": "31337",
        "VRAMWATCH_START_TIME": "1700000123.500",
        "VRAMWATCH_PROCESS_NAME": "python3",
        "VRAMWATCH_USER": "alice",
        "VRAMWATCH_CONTAINER": "c0ffee",
        "VRAMWATCH_NUMBER_GPU_INDEX": "2",
        "VRAMWATCH_NUMBER_USED_BYTES": "23000000000",
        "VRAMWATCH_NUMBER_FREE_BYTES": "1000000000",
        "VRAMWATCH_NUMBER_GROWTH_RATE": "1.500",
    }
    assert env["TEAM"] == "ml"
    assert env["PATH"] == "/usr/bin:/bin"
    assert "VRAMWATCH_WEBHOOK_SECRET" not in env


def test_unknown_values_are_absent_not_empty() -> None:
    """A finding without process, ETA or numbers leaves those variables out entirely."""
    env = hook_environment(finding(process=None, eta_seconds=None, numbers={}, confidence=None), base={})
    assert "VRAMWATCH_PID" not in env
    assert "VRAMWATCH_ETA_SECONDS" not in env
    assert "VRAMWATCH_GPU" not in env
    assert env["VRAMWATCH_KIND"] == "oom_forecast"


def test_a_hook_past_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    """A hook that sleeps (in a child of its own) is killed, group and all, at the timeout; counted failed."""
    pidfile = tmp_path / "child.pid"
    script = "import subprocess, sys, time; c = subprocess.Popen(['sleep', '30']); " \
             "open(sys.argv[1], 'w').write(str(c.pid)); time.sleep(30)"  # fmt: skip
    runner = HookRunner([HookCommand(argv=(sys.executable, "-S", "-c", script, str(pidfile)), timeout_seconds=0.5)])
    t0 = time.monotonic()
    try:
        runner.run(finding())
        assert wait_for(lambda: runner.counts()["failed"] == 1, timeout=5)
    finally:
        runner.close(5)
    assert time.monotonic() - t0 < 3
    grandchild = int(pidfile.read_text())
    assert wait_for(lambda: not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == "zombie")


def test_failing_hooks_are_counted_and_not_retried(tmp_path: Path) -> None:
    """A non-zero exit is `failed` after one run; a missing program too."""
    marker = tmp_path / "runs"
    script = "import sys; open(sys.argv[1], 'a').write('x'); sys.exit(3)"
    runner = HookRunner([
        HookCommand(argv=(sys.executable, "-S", "-c", script, str(marker))),
        HookCommand(argv=(str(tmp_path / "no-such-program"),)),
    ])  # fmt: skip
    try:
        runner.run(finding())
        assert wait_for(lambda: runner.counts()["failed"] == 2)
    finally:
        runner.close(5)
    assert marker.read_text() == "x"


@pytest.mark.parametrize(("cleared", "on_resolved", "runs"), [(True, False, 0), (True, True, 1), (False, False, 1)])
def test_resolved_findings_reach_only_opted_in_hooks(
    tmp_path: Path, cleared: bool, on_resolved: bool, runs: int
) -> None:
    """Resolved findings run a hook only if it set on_resolved; firing ones run every hook."""
    out = tmp_path / "env.json"
    runner = HookRunner([HookCommand(argv=(sys.executable, "-S", "-c", DUMP_ENV, str(out)), on_resolved=on_resolved)])
    try:
        results = runner.run(finding(), cleared=cleared)
        assert len(results) == runs
        runner.close(5)
        assert out.exists() == bool(runs)
        if runs:
            assert json.loads(out.read_text())["VRAMWATCH_STATUS"] == ("resolved" if cleared else "firing")
    finally:
        runner.close(1)


def test_dry_run_runs_no_hook(tmp_path: Path) -> None:
    """In dry-run the result says which hook would run, and it does not."""
    out = tmp_path / "env.json"
    runner = HookRunner([HookCommand(argv=(sys.executable, "-S", "-c", DUMP_ENV, str(out)))])
    try:
        (result,) = runner.run(finding(), dry_run=True)
        assert result.dry_run
        assert not result.done
        assert "would run" in result.reason
    finally:
        runner.close(2)
    assert not out.exists()
    assert runner.counts()["sent"] == 0
