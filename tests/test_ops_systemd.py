"""The shipped systemd unit: it verifies, it is hardened (exposure <= 2.0), and what it promises holds.

Needs `systemd-analyze` (Debian package `systemd`); the tests that call it skip with that reason where it
is absent. systemd need not be PID 1: `verify` and `security --offline=true` read files only.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "vramwatch.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (Debian/Ubuntu: apt-get install systemd)"
)
MAX_EXPOSURE = 2.0


def unit_settings(text: str) -> dict[str, list[str]]:
    """Every `Key=value` of a unit, in order, repeated keys kept (section names are not needed here)."""
    settings: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key, []).append(value)
    return settings


def runnable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointed at this interpreter, so verify can check that the command exists."""
    text = UNIT.read_text()
    assert "ExecStart=/usr/bin/vramwatch serve" in text
    text = text.replace("ExecStart=/usr/bin/vramwatch serve", f"ExecStart={sys.executable} -m vramwatch serve")
    copy = tmp_path / "vramwatch.service"
    copy.write_text(text)
    return copy


@pytest.mark.parametrize("name", ["vramwatch.service", "vramwatch.toml"])
def test_packaged_copy_identical(name: str) -> None:
    """The copies shipped in the package (watchdog/data/) are byte-identical to the canonical systemd/ files."""
    assert (REPO / "watchdog" / "data" / name).read_bytes() == (REPO / "systemd" / name).read_bytes()


@needs_analyze
def test_verify_clean(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit with no warning at all (unknown keys only warn, so output counts)."""
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(runnable_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
    assert result.stderr.strip() == ""


@needs_analyze
def test_verify_catches_a_typo(tmp_path: Path) -> None:
    """The verify check above is live: a misspelt directive produces a warning it would fail on."""
    assert SYSTEMD_ANALYZE is not None
    unit = runnable_copy(tmp_path)
    unit.write_text(unit.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert "NoNewPrivilege" in result.stderr


def exposure(path: Path) -> float:
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    return float(match.group(1))


@needs_analyze
def test_security_exposure_at_most_two(tmp_path: Path) -> None:
    """`systemd-analyze security --offline=true` scores the unit's exposure <= 2.0 ("OK")."""
    assert exposure(runnable_copy(tmp_path)) <= MAX_EXPOSURE


@needs_analyze
def test_security_score_reacts_to_hardening(tmp_path: Path) -> None:
    """The score is measured, not assumed: stripping the hardening block pushes it well above 2.0."""
    unit = tmp_path / "bare.service"
    unit.write_text(f"[Service]\nType=notify\nExecStart={sys.executable} -m vramwatch serve\n")
    assert exposure(unit) > 5.0


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("WatchdogSec", "30"),
        ("Restart", "on-failure"),
        ("ExecStart", "/usr/bin/vramwatch serve --config /etc/vramwatch/vramwatch.toml"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("DevicePolicy", "closed"),
        ("CapabilityBoundingSet", ""),
        ("ProtectProc", "default"),  # invisible would hide other users' GPU processes from attribution
        ("ProcSubset", "all"),  # pid would hide /proc/driver/nvidia from NVML
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("MemoryDenyWriteExecute", "yes"),
        ("DynamicUser", "yes"),
    ],
)
def test_unit_contract(key: str, value: str) -> None:
    """The unit keeps the settings the daemon and docs/operations.md rely on."""
    assert value in unit_settings(UNIT.read_text()).get(key, [])


def test_nvidia_devices_allowed_and_nothing_hides_dev() -> None:
    """NVML's device nodes stay reachable: both driver flavours' groups are allowed and /dev is the host's."""
    settings = unit_settings(UNIT.read_text())
    allowed = settings["DeviceAllow"]
    for group in ("char-nvidia-frontend rw", "char-nvidia rw", "char-nvidiactl rw"):
        assert group in allowed
    assert "PrivateDevices" not in settings
    assert not any("nvidia-uvm" in entry for entry in allowed)  # CUDA's, not NVML's: least privilege


def _enforce_mdwe() -> None:
    """Switch on W^X for the calling process; runs in the child between fork and exec."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE)")


def _mdwe_available() -> bool:
    try:
        subprocess.run([sys.executable, "-c", "pass"], preexec_fn=_enforce_mdwe, check=True, timeout=60)
    except subprocess.SubprocessError:
        return False
    return True


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_MDWE is Linux-only")
def test_python_runs_under_memory_deny_write_execute() -> None:
    """CPython, ctypes callbacks and the daemon's imports work with W^X enforced by the kernel (PR_SET_MDWE).

    systemd >= 253 implements MemoryDenyWriteExecute= with this prctl (older ones with an equivalent seccomp
    filter); the W+X mmap in the child must be refused, or the check proves nothing.
    """
    if not _mdwe_available():
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3)")
    child = textwrap.dedent(
        """
        import ctypes, mmap
        assert ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 7)() == 7
        try:
            mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        except OSError:
            pass
        else:
            raise SystemExit("W+X mapping allowed: MDWE not in force")
        import pynvml, psutil, prometheus_client, structlog, click, vramwatch
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", child],
        preexec_fn=_enforce_mdwe,  # between fork and exec: binds the child only
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
