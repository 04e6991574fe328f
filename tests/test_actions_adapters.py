"""Save-now adapters: which trainer gets which mechanism, the SimpleTuner counter file, the agent signal."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from vramwatch.actions.adapters import (
    ADAPTERS,
    adapter,
    bump_counter,
    choose_adapter,
    resumability_hint,
)
from vramwatch.environ import read_environ
from vramwatch.model import ProcessKey, ProcessMeta


def meta(*cmdline: str, cwd: str | None = None) -> ProcessMeta:
    return ProcessMeta(pid=1234, start_time=1.0, cmdline=cmdline, cwd=cwd)


@pytest.mark.parametrize(
    ("process", "env", "expected"),
    [
        (meta("python", "train.py"), {"VRAMWATCH_AGENT": "1"}, "agent"),
        (meta("python", "train.py"), {"VRAMWATCH_AGENT": "0"}, None),
        (meta("python", "-m", "simpletuner.train"), {"SIMPLETUNER_ACCELERATE_SIGNAL_FILE": "/tmp/x"}, "simpletuner"),
        (meta("python", "scripts/train.py", "--config-path", "c.json", cwd="/home/a/OneTrainer"), {}, "onetrainer"),
        (meta("python", "scripts/train.py", "--config-path", "c.json", cwd="/home/a/other"), {}, None),
        (meta("python", "run_clm.py", "--enable_jit_checkpoint"), {}, "transformers_jit"),
        (meta("python", "run_clm.py", "--enable_jit_checkpoint", "False"), {}, None),
        (meta("python", "run_clm.py", "--enable_jit_checkpoint=true"), {}, "transformers_jit"),
        (meta("python", "fit_lightning.py"), {"SLURM_JOB_ID": "991"}, "lightning_slurm"),
        (meta("python", "fit_lightning.py"), {}, None),
        (meta("python", "train_network.py"), None, None),
        # the agent wins over a stopping adapter: it saves without ending the run
        (meta("python", "run.py", "--enable_jit_checkpoint"), {"VRAMWATCH_AGENT": "1"}, "agent"),
    ],
)
def test_choose_adapter(process: ProcessMeta, env: dict[str, str] | None, expected: str | None) -> None:
    """Each trainer is recognised by its command line or environment; unknown ones get no adapter."""
    chosen = choose_adapter(process, env)
    assert (chosen.name if chosen else None) == expected


def test_overrides_win_and_allowed_restricts() -> None:
    """A cmdline override picks its adapter first; adapters outside `allowed` are never auto-chosen."""
    process = meta("python", "my_trainer.py")
    chosen = choose_adapter(process, {}, overrides=[(re.compile(r"my_trainer"), "agent")])
    assert chosen is not None
    assert chosen.name == "agent"
    assert choose_adapter(meta("x"), {"VRAMWATCH_AGENT": "1"}, allowed=("simpletuner",)) is None


def test_adapter_table_is_consistent() -> None:
    """Every adapter has exactly one mechanism; the ones that end the run are the signal-on-stop trainers."""
    for a in ADAPTERS:
        assert (a.signum is None) != (a.signal_file_env is None), a.name
    assert {a.name for a in ADAPTERS if a.stops_run} == {"onetrainer", "transformers_jit", "lightning_slurm"}
    assert adapter("agent").signum == signal.SIGUSR2


def test_read_environ_returns_only_the_keys_asked_for(tmp_path: Path) -> None:
    """Only adapter keys come back from /proc/<pid>/environ; an unreadable one gives None."""
    (tmp_path / "55").mkdir()
    (tmp_path / "55" / "environ").write_bytes(
        b"HF_TOKEN=hf_secret\0SLURM_JOB_ID=12\0VRAMWATCH_AGENT=1\0weird\0PATH=/usr/bin\0"
    )
    assert read_environ(55, tmp_path) == {"SLURM_JOB_ID": "12", "VRAMWATCH_AGENT": "1"}
    assert read_environ(56, tmp_path) is None


# A stand-in for SimpleTuner's poller (simpletuner/train.py, _build_signal_consumer): it re-reads the JSON
# file only when its mtime moved, and fires once per increase of the manual_checkpoint counter.
POLLER = """
import json, os, sys, time
path = sys.argv[1]
seen = json.load(open(path)).get("manual_checkpoint", 0)
last = os.stat(path).st_mtime
print("ready", flush=True)
while True:
    mtime = os.stat(path).st_mtime
    if mtime > last:
        last = mtime
        count = int(json.load(open(path)).get("manual_checkpoint", 0))
        if count > seen:
            seen = count
            print("checkpoint", count, flush=True)
    time.sleep(0.01)
"""


@pytest.fixture
def poller(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    signal_file = tmp_path / "signal.json"
    signal_file.write_text(json.dumps({"manual_validation": 2, "manual_checkpoint": 1}))
    env = {**os.environ, "SIMPLETUNER_ACCELERATE_SIGNAL_FILE": str(signal_file)}
    child = subprocess.Popen(
        [sys.executable, "-S", "-c", POLLER, str(signal_file)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    yield child, signal_file
    child.kill()
    child.wait(5)
    child.stdout.close()


def test_simpletuner_adapter_bumps_the_counter_its_poller_watches(poller) -> None:
    """The adapter, reading the file path from the process's environment, raises manual_checkpoint by one
    (keeping other keys and the file's mode); a poller that works like SimpleTuner's sees it and fires once."""
    child, signal_file = poller
    signal_file.chmod(0o640)
    key = ProcessKey(child.pid, psutil.Process(child.pid).create_time())
    env = read_environ(child.pid)
    assert env is not None
    assert env["SIMPLETUNER_ACCELERATE_SIGNAL_FILE"] == str(signal_file)
    chosen = choose_adapter(ProcessMeta(pid=child.pid, start_time=key.start_time), env)
    assert chosen is not None
    assert chosen.name == "simpletuner"
    result = chosen.trigger(key, env=env)
    assert result.done, result.reason
    assert json.loads(signal_file.read_text()) == {"manual_validation": 2, "manual_checkpoint": 2}
    assert signal_file.stat().st_mode & 0o777 == 0o640
    assert child.stdout is not None
    assert child.stdout.readline().split() == ["checkpoint", "2"]
    assert not any(p.name.startswith(".signal.json.vramwatch") for p in signal_file.parent.iterdir())


def test_simpletuner_adapter_checks_identity_and_honours_dry_run(poller) -> None:
    """A reused pid or dry-run leaves the file untouched."""
    child, signal_file = poller
    start = psutil.Process(child.pid).create_time()
    env = read_environ(child.pid)
    before = signal_file.read_bytes()
    simpletuner = adapter("simpletuner")
    reused = simpletuner.trigger(ProcessKey(child.pid, start - 100), env=env)
    dry = simpletuner.trigger(ProcessKey(child.pid, start), env=env, dry_run=True)
    assert not reused.done
    assert "reused" in reused.reason
    assert dry.dry_run
    assert not dry.done
    assert signal_file.read_bytes() == before


def test_bump_counter_refuses_untrusted_paths(tmp_path: Path) -> None:
    """Symlinks, files of another owner, non-object JSON and missing files are refused and left unchanged."""
    uid = os.getuid()
    target = tmp_path / "real.json"
    target.write_text('{"manual_checkpoint": 5}')
    link = tmp_path / "link.json"
    link.symlink_to(target)
    with pytest.raises(ValueError, match="not a regular file"):
        bump_counter(link, "manual_checkpoint", owner_uid=uid)
    with pytest.raises(ValueError, match="not owned"):
        bump_counter(target, "manual_checkpoint", owner_uid=uid + 1)
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2]")
    with pytest.raises(TypeError, match="JSON object"):
        bump_counter(listing, "manual_checkpoint", owner_uid=uid)
    with pytest.raises(FileNotFoundError):
        bump_counter(tmp_path / "absent.json", "manual_checkpoint", owner_uid=uid)
    assert target.read_text() == '{"manual_checkpoint": 5}'
    assert listing.read_text() == "[1, 2]"
    assert bump_counter(target, "manual_checkpoint", owner_uid=uid) == 6


AGENT_CHILD = """
import signal, time
signal.signal(signal.SIGUSR2, lambda s, f: print("save", flush=True))
print("ready", flush=True)
while True:
    time.sleep(0.02)
"""


def test_agent_adapter_sends_sigusr2_to_an_agent_process() -> None:
    """A process with VRAMWATCH_AGENT set and a SIGUSR2 handler is chosen as `agent` and receives SIGUSR2."""
    env = {**os.environ, "VRAMWATCH_AGENT": "1"}
    child = subprocess.Popen([sys.executable, "-S", "-c", AGENT_CHILD], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        key = ProcessKey(child.pid, psutil.Process(child.pid).create_time())
        chosen = choose_adapter(ProcessMeta(pid=child.pid, start_time=key.start_time), read_environ(child.pid))
        assert chosen is not None
        assert chosen.name == "agent"
        result = chosen.trigger(key)
        assert result.done
        assert result.signal == "SIGUSR2"
        assert result.adapter == "agent"
        assert child.stdout.readline().strip() == "save"
    finally:
        child.kill()
        child.wait(5)
        if child.stdout:
            child.stdout.close()


@pytest.mark.parametrize(
    ("process", "hinted"),
    [
        (meta("accelerate", "launch", "/opt/sd-scripts/flux_train_network.py", "--save_every_n_epochs", "1"), True),
        (meta("python", "sdxl_train_network.py", cwd="/home/u/kohya_ss"), True),
        (meta("python", "/opt/sd-scripts/train_network.py", "--save_every_n_steps=200", "--save_state"), False),
        (meta("python", "scripts/train.py", cwd="/home/u/OneTrainer"), False),
    ],
)
def test_kohya_runs_get_a_resumability_hint(process: ProcessMeta, hinted: bool) -> None:
    """sd-scripts runs without periodic state saves get the --save_every_n_steps/--save_state advice."""
    hint = resumability_hint(process)
    assert (hint is not None) == hinted
    if hint:
        assert "--save_every_n_steps" in hint
        assert "--save_state" in hint
