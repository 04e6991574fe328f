"""Safe signalling: caught-mask parsing, identity checks, and real child processes that do or do not
handle the signal."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from conftest import Spawn
from vramwatch.actions.signals import Killer, parse_mask, parse_status, read_status, send_signal, verify_identity
from vramwatch.model import ProcessKey

CATCHES_USR1 = """
import signal, sys, time
signal.signal(signal.SIGUSR1, lambda s, f: print("got", s, flush=True))
print("ready", flush=True)
while True:
    time.sleep(0.02)
"""
NO_HANDLER = """
import time
print("ready", flush=True)
while True:
    time.sleep(0.02)
"""
IGNORES_TERM = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
while True:
    time.sleep(0.02)
"""


def key_of(child: subprocess.Popen[str]) -> ProcessKey:
    return ProcessKey(child.pid, psutil.Process(child.pid).create_time())


def still_running(child: subprocess.Popen[str], settle: float = 0.15) -> bool:
    time.sleep(settle)
    return child.poll() is None


@pytest.mark.parametrize(
    ("mask", "signals"),
    [
        ("0000000000000000", set()),
        ("0000000000000001", {1}),  # bit 0 is signal 1 (SIGHUP), not signal 0
        ("0000000000000200", {10}),  # SIGUSR1 is bit 9
        ("0000000000004a02", {2, 10, 12, 15}),
        ("8000000000000000", {64}),
        ("00000001" + "0" * 24, {97}),  # wider masks (MIPS has 128 signals)
        ("  0000000180004002\n", {2, 15, 32, 33}),
    ],
)
def test_parse_mask_maps_bit_n_minus_1_to_signal_n(mask: str, signals: set[int]) -> None:
    """A /proc status mask is hex; bit n-1 set means signal n."""
    assert parse_mask(mask) == signals


STATUS_TEXT = """Name:\tpython3
Umask:\t0022
State:\tS (sleeping)
Tgid:\t4242
Pid:\t4242
PPid:\t1
Uid:\t1000\t1000\t1000\t1000
Gid:\t1000\t1000\t1000\t1000
SigQ:\t0/62837
SigPnd:\t0000000000000000
ShdPnd:\t0000000000000000
SigBlk:\t0000000000000400
SigIgn:\t0000000001001000
SigCgt:\t0000000180000202
CapInh:\t0000000000000000
"""


def test_parse_status_reads_masks_and_uid() -> None:
    """SigCgt/SigBlk/SigIgn become signal sets, Uid the real uid; a status without SigCgt is an error."""
    status = parse_status(STATUS_TEXT)
    assert status.caught == {2, 10, 32, 33}
    assert status.blocked == {11}
    assert status.ignored == {13, 25}
    assert status.uid == 1000
    assert status.catches(signal.SIGUSR1)
    assert not status.catches(signal.SIGUSR2)
    with pytest.raises(ValueError, match="SigCgt"):
        parse_status("Name:\tx\nSigBlk:\t0\n")


def test_read_status_from_a_fixture_proc_tree(tmp_path: Path) -> None:
    """An injected proc root is read; a missing pid or a mangled file gives None, not an exception."""
    (tmp_path / "4242").mkdir()
    (tmp_path / "4242" / "status").write_text(STATUS_TEXT)
    (tmp_path / "5000").mkdir()
    (tmp_path / "5000" / "status").write_text("SigCgt:\tnot-hex\n")
    status = read_status(4242, tmp_path)
    assert status is not None
    assert status.caught == {2, 10, 32, 33}
    assert read_status(4243, tmp_path) is None
    assert read_status(5000, tmp_path) is None


def test_real_processes_masks_show_who_handles_sigusr1(spawn: Spawn) -> None:
    """A child with a SIGUSR1 handler shows it in SigCgt, one without does not; both catch SIGINT (Python's
    KeyboardInterrupt handler) and ignore SIGPIPE (Python sets SIG_IGN)."""
    catcher, plain = spawn(CATCHES_USR1), spawn(NO_HANDLER)
    with_handler, without = read_status(catcher.pid), read_status(plain.pid)
    assert with_handler is not None
    assert without is not None
    assert signal.SIGUSR1 in with_handler.caught
    assert signal.SIGUSR1 not in without.caught
    # Python installs its KeyboardInterrupt handler only where SIGINT was not ignored at start-up (a job started
    # in the background by a non-interactive shell inherits SIGINT ignored, and so do its children).
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        assert signal.SIGINT in with_handler.caught
        assert signal.SIGINT in without.caught
    assert signal.SIGPIPE in without.ignored


def test_a_signal_reaches_only_the_process_that_catches_it(spawn: Spawn, pidfds: str) -> None:
    """SIGUSR1 is sent to the child that handles it (which survives); the other is left alone, alive."""
    catcher, plain = spawn(CATCHES_USR1), spawn(NO_HANDLER)
    sent = send_signal(key_of(catcher), signal.SIGUSR1)
    withheld = send_signal(key_of(plain), signal.SIGUSR1)
    assert sent.done
    assert sent.signal == "SIGUSR1"
    assert catcher.stdout is not None
    assert catcher.stdout.readline().strip() == "got 10"
    assert not withheld.done
    assert "installs no handler for SIGUSR1" in withheld.reason
    assert still_running(plain)
    assert still_running(catcher)


def test_force_sends_anyway_and_the_default_action_kills(spawn: Spawn) -> None:
    """With force, SIGUSR1 reaches a process without a handler, and it dies: the danger the check prevents."""
    plain = spawn(NO_HANDLER)
    result = send_signal(key_of(plain), signal.SIGUSR1, force=True)
    assert result.done
    assert plain.wait(5) == -signal.SIGUSR1


def test_a_wrong_start_time_means_a_reused_pid_and_no_signal(spawn: Spawn) -> None:
    """An identity whose start time does not match the pid's is refused, whatever the masks say."""
    catcher = spawn(CATCHES_USR1)
    real = key_of(catcher)
    assert real.start_time is not None
    result = send_signal(ProcessKey(real.pid, real.start_time - 30.0), signal.SIGUSR1)
    assert not result.done
    assert "was reused" in result.reason
    assert not verify_identity(ProcessKey(real.pid, None)).ok
    assert verify_identity(ProcessKey(real.pid, real.start_time + 0.5)).ok  # within the tolerance


def test_dry_run_sends_nothing(spawn: Spawn) -> None:
    """In dry-run the result says what would be sent and the child receives nothing."""
    catcher = spawn(CATCHES_USR1)
    result = send_signal(key_of(catcher), signal.SIGUSR1, dry_run=True)
    assert (result.done, result.dry_run) == (False, True)
    assert result.reason.startswith("dry-run: would send SIGUSR1")
    catcher.send_signal(signal.SIGTERM)
    assert catcher.stdout is not None
    assert catcher.stdout.read() == ""


def test_a_vanished_process_is_not_signalled(spawn: Spawn) -> None:
    """Once the process has exited, the result says so."""
    plain = spawn(NO_HANDLER)
    key = key_of(plain)
    plain.kill()
    plain.wait(5)
    result = send_signal(key, signal.SIGUSR1)
    assert not result.done
    assert "has exited" in result.reason


@pytest.fixture(params=["pidfd", "plain kill"])
def pidfds(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with pidfds, and again as on a kernel before 5.3 (no os.pidfd_open)."""
    if request.param == "plain kill":
        monkeypatch.delattr("os.pidfd_open", raising=False)
    return str(request.param)


def test_killer_terminates_and_escalates_to_sigkill(spawn: Spawn, pidfds: str) -> None:
    """SIGTERM ends a plain child; a child that ignores SIGTERM gets SIGKILL once the grace period is over."""
    killer = Killer(grace_seconds=0.3)
    plain, stubborn = spawn(NO_HANDLER), spawn(IGNORES_TERM)
    first = killer.kill(key_of(plain))
    second = killer.kill(key_of(stubborn))
    assert first.done
    assert second.done
    assert plain.wait(5) == -signal.SIGTERM
    assert stubborn.wait(5) == -signal.SIGKILL
    killer.close(2)


def test_killer_refuses_a_reused_pid_and_dry_run(spawn: Spawn) -> None:
    """A mismatched start time or dry-run leaves the process alive."""
    killer = Killer(grace_seconds=0.1)
    plain = spawn(NO_HANDLER)
    key = key_of(plain)
    assert key.start_time is not None
    reused = killer.kill(ProcessKey(key.pid, key.start_time + 10))
    dry = killer.kill(key, dry_run=True)
    assert not reused.done
    assert "reused" in reused.reason
    assert dry.dry_run
    assert not dry.done
    assert still_running(plain)
