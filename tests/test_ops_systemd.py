"""The shipped systemd unit: it verifies, it is hardened (exposure <= 2.0), and what it promises holds.

Needs `systemd-analyze` (Debian package `systemd`); the tests that call it skip with that reason where it
is absent. systemd need not be PID 1: `verify` and `security --offline=true` read files only.
"""

from __future__ import annotations

import re
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import terminate

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
    assert "ExecStart=/usr/bin/vramwatch " in text
    text = text.replace("ExecStart=/usr/bin/vramwatch ", f"ExecStart={sys.executable} -m vramwatch ")
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


def documented_dropins() -> list[tuple[str, str]]:
    """The ```ini drop-ins of docs/operations.md, as (first comment line, text)."""
    text = (REPO / "docs" / "operations.md").read_text()
    blocks = re.findall(r"```ini\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) >= 4
    return [(block.splitlines()[0], block) for block in blocks]


@needs_analyze
@pytest.mark.parametrize(("title", "dropin"), documented_dropins())
def test_documented_dropins_verify_and_score_as_documented(title: str, dropin: str, tmp_path: Path) -> None:
    """Each drop-in in docs/operations.md is clean for `systemd-analyze verify`, and where the doc states the
    exposure it yields ("Exposure 1.6 -> X"), the measured score is X."""
    assert SYSTEMD_ANALYZE is not None
    unit = runnable_copy(tmp_path)
    dropin = re.sub(r"ExecStart=/\S+/vramwatch ", f"ExecStart={sys.executable} -m vramwatch ", dropin)
    (tmp_path / "vramwatch.service.d").mkdir()
    (tmp_path / "vramwatch.service.d" / "50-doc.conf").write_text(dropin)
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stderr.strip()) == (0, ""), title
    claimed = re.search(r"Exposure (\d+\.\d) -> (\d+\.\d)", dropin)
    if claimed is not None:
        (tmp_path / "base").mkdir()
        assert float(claimed.group(1)) == exposure(runnable_copy(tmp_path / "base"))
        assert float(claimed.group(2)) == exposure(unit), title


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("WatchdogSec", "30"),
        ("Restart", "on-failure"),
        ("RestartPreventExitStatus", "2"),  # the CLI exits 2 on config errors: no restart loop
        ("ExecStart", "/usr/bin/vramwatch --config /etc/vramwatch/vramwatch.toml serve --require-gpu"),
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


def test_execstart_accepted_by_the_cli(tmp_path: Path) -> None:
    """The unit's command line parses with the real CLI and the shipped config passes its loader."""
    (execstart,) = unit_settings(UNIT.read_text())["ExecStart"]
    argv = shlex.split(execstart)
    assert argv[0] == "/usr/bin/vramwatch"
    config = tmp_path / "vramwatch.toml"
    config.write_text((REPO / "systemd" / "vramwatch.toml").read_text())
    args = [str(config) if a == "/etc/vramwatch/vramwatch.toml" else a for a in argv[1:]]
    assert str(config) in args
    result = subprocess.run(
        [sys.executable, "-m", "vramwatch", *args, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "--require-gpu" in result.stdout


def test_nvidia_devices_allowed_and_nothing_hides_dev() -> None:
    """NVML's device nodes stay reachable: both driver flavours' groups are allowed and /dev is the host's."""
    settings = unit_settings(UNIT.read_text())
    allowed = settings["DeviceAllow"]
    for group in ("char-nvidia-frontend rw", "char-nvidia rw", "char-nvidiactl rw"):
        assert group in allowed
    assert "PrivateDevices" not in settings
    assert not any("nvidia-uvm" in entry for entry in allowed)  # CUDA's, not NVML's: least privilege


# Switches W^X on (PR_SET_MDWE = 65, PR_MDWE_REFUSE_EXEC_GAIN = 1) and execs the real command: the flag survives
# execve, so the command runs under it from its first instruction. Exit 99: the kernel refused (Linux < 6.3).
_MDWE_LAUNCHER = (
    "import ctypes, os, sys\n"
    "if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0: sys.exit(99)\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


def under_mdwe(*argv: str) -> list[str]:
    """A command line that runs `argv` with MemoryDenyWriteExecute in force."""
    return [sys.executable, "-c", _MDWE_LAUNCHER, *argv]


def _mdwe_available() -> bool:
    return subprocess.run(under_mdwe(sys.executable, "-c", "pass"), timeout=60, check=False).returncode == 0


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
        under_mdwe(sys.executable, "-c", child),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_MDWE is Linux-only")
def test_serve_runs_under_memory_deny_write_execute(tmp_path: Path) -> None:
    """`vramwatch serve` itself (sampler thread, HTTP server, detectors) serves /metrics with W^X enforced.

    The same launcher as the test above, where a W+X mapping is shown to be refused, so W^X is in force here.
    """
    if not _mdwe_available():
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            under_mdwe(
                sys.executable, "-m", "vramwatch", "serve", "--simulate", "steady", "--listen", f"127.0.0.1:{port}"
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        body = ""
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                    body = response.read().decode()
                if "vramwatch_gpu_memory_used_bytes{" in body:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        assert "vramwatch_gpu_memory_used_bytes{" in body, log.read_text()
    finally:
        terminate(proc)
