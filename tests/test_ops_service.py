"""`install_service`: copies the packaged unit and config under a prefix, safely and idempotently."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from vramwatch.config import DaemonConfig, load_file
from vramwatch.errors import ConfigError
from vramwatch.service import UNIT_NAME, install_service, installed_executable, packaged_file, unit_cannot_see

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parent.parent


def test_fresh_install_writes_unit_and_config(tmp_path: Path) -> None:
    """A fresh prefix gets the unit in etc/systemd/system and the config in etc/vramwatch, both 0644."""
    written = install_service(tmp_path)
    unit = tmp_path / "etc/systemd/system" / UNIT_NAME
    conf = tmp_path / "etc/vramwatch/vramwatch.toml"
    assert written == [unit, conf]
    assert unit.read_text() == (REPO / "systemd/vramwatch.service").read_text()
    assert conf.read_text() == (REPO / "systemd/vramwatch.toml").read_text()
    assert {stat.S_IMODE(p.stat().st_mode) for p in written} == {0o644}
    assert not list(tmp_path.rglob(".*.tmp*"))


def test_second_install_is_a_noop(tmp_path: Path) -> None:
    """Running install-service twice writes nothing the second time."""
    install_service(tmp_path)
    assert install_service(tmp_path) == []


def test_changed_unit_needs_force(tmp_path: Path) -> None:
    """A locally edited unit is not clobbered without force; with force it is replaced."""
    install_service(tmp_path)
    unit = tmp_path / "etc/systemd/system" / UNIT_NAME
    unit.write_text("[Service]\nExecStart=/bin/true\n")
    with pytest.raises(ConfigError, match="--force"):
        install_service(tmp_path)
    assert install_service(tmp_path, force=True) == [unit]
    assert unit.read_text() == packaged_file(UNIT_NAME)


def test_force_never_overwrites_config(tmp_path: Path) -> None:
    """An admin's config survives even a forced reinstall."""
    conf = tmp_path / "etc/vramwatch/vramwatch.toml"
    conf.parent.mkdir(parents=True)
    conf.write_text('listen = "0.0.0.0:9783"\n')
    written = install_service(tmp_path, force=True)
    assert conf not in written
    assert conf.read_text() == 'listen = "0.0.0.0:9783"\n'


def test_custom_locations(tmp_path: Path) -> None:
    """unit_dir and config_path, absolute or relative, are placed under the prefix."""
    written = install_service(tmp_path, unit_dir=Path("/usr/lib/systemd/system"), config_path=Path("opt/vw.toml"))
    assert written == [tmp_path / "usr/lib/systemd/system" / UNIT_NAME, tmp_path / "opt/vw.toml"]


def test_executable_rewrites_execstart(tmp_path: Path) -> None:
    """A venv/pipx install points ExecStart at its own vramwatch, keeping the arguments."""
    install_service(tmp_path, executable=Path("/opt/venvs/vramwatch/bin/vramwatch"))
    text = (tmp_path / "etc/systemd/system" / UNIT_NAME).read_text()
    assert "ExecStart=/opt/venvs/vramwatch/bin/vramwatch --config /etc/vramwatch/vramwatch.toml serve" in text
    assert "ExecStart=/usr/bin/vramwatch" not in text


@pytest.mark.parametrize("bad", [Path("bin/vramwatch"), Path("/opt/my venv/bin/vramwatch")])
def test_bad_executable_rejected(tmp_path: Path, bad: Path) -> None:
    """A relative path or one with spaces would make a broken ExecStart; it is refused with a clear error."""
    with pytest.raises(ConfigError, match="install-service"):
        install_service(tmp_path, executable=bad)
    assert not (tmp_path / "etc").exists()


def test_default_config_loads_as_shipped(tmp_path: Path) -> None:
    """The shipped config is accepted by the daemon's loader and changes nothing (all settings commented)."""
    path = tmp_path / "vramwatch.toml"
    path.write_text(packaged_file("vramwatch.toml"))
    daemon, sections, _ = load_file(path)
    assert daemon == DaemonConfig()
    assert sections == {}


def test_default_config_keys_are_real(tmp_path: Path) -> None:
    """Every commented setting, once uncommented, is a valid key with its documented default value."""
    lines = packaged_file("vramwatch.toml").splitlines()
    settings = [line[2:] for line in lines if re.match(r"# [a-z_]+ = ", line)]
    assert len(settings) >= 5
    path = tmp_path / "vramwatch.toml"
    path.write_text("\n".join(line if not re.match(r"# [a-z_]+ = ", line) else line[2:] for line in lines))
    daemon, _, _ = load_file(path)
    assert daemon == DaemonConfig()  # the comments show the defaults, not other values
    assert tomllib.loads(path.read_text())["daemon"].keys() == {s.split(" = ")[0] for s in settings}


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (apt: systemd)")
def test_installed_unit_verifies(tmp_path: Path) -> None:
    """The unit as installed for a venv (ExecStart rewritten to a real file) passes systemd-analyze verify."""
    install_service(tmp_path, executable=Path(sys.executable))
    unit = tmp_path / "etc/systemd/system" / UNIT_NAME
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stderr.strip()) == (0, "")


def _script(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_the_unit_runs_the_vramwatch_beside_the_interpreter_then_argv0_then_path(tmp_path: Path) -> None:
    """ExecStart's command: the venv's own script (sudo's PATH leaves the venv out), else the one started, else
    PATH's, else none."""
    venv = tmp_path / "venv/bin"
    beside = _script(venv / "vramwatch")
    started = _script(tmp_path / "pipx/bin/vramwatch")
    python = str(venv / "python")
    assert installed_executable(python, str(started), "/usr/bin/vramwatch") == beside
    bare = str(tmp_path / "bare/bin/python")
    assert installed_executable(bare, str(started), "/usr/bin/vramwatch") == started
    assert installed_executable(bare, "/x/vramwatch/__main__.py", "/usr/local/bin/vramwatch") == Path(
        "/usr/local/bin/vramwatch"
    )
    assert installed_executable(bare, "/x/vramwatch/__main__.py", None) is None
    beside.chmod(0o644)  # not executable: not a command
    assert installed_executable(python, str(started), None) == started


def test_install_service_from_a_venv_without_it_on_path_points_the_unit_at_the_venv(tmp_path: Path) -> None:
    """`<venv>/bin/vramwatch install-service` with a PATH that lacks the venv (as under sudo) still writes the
    venv's vramwatch into ExecStart, and says which."""
    exe = Path(sys.executable).parent / "vramwatch"
    if not exe.exists():
        pytest.skip("no vramwatch script beside this interpreter (not an installed environment)")
    out = subprocess.run(
        [sys.executable, "-m", "vramwatch", "install-service", "--prefix", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    unit = (tmp_path / "etc/systemd/system" / UNIT_NAME).read_text()
    assert f"ExecStart={exe} " in unit
    assert f"ExecStart runs {exe}" in out.stdout
    # This venv may itself lie where the unit cannot see it (CI clones under /tmp): then, and only then, it warns.
    assert ("warning: the unit hides" in out.stderr) == (unit_cannot_see(exe) is not None)


@pytest.mark.parametrize(
    ("exe", "hidden"),
    [
        ("/home/ana/.venv/bin/vramwatch", "/home"),
        ("/tmp/walk/.venv/bin/vramwatch", "/tmp"),
        ("/root/.local/bin/vramwatch", "/root"),
        ("/opt/vramwatch/bin/vramwatch", None),
        ("/usr/local/bin/vramwatch", None),
        ("/homework/bin/vramwatch", None),
    ],
)
def test_a_vramwatch_the_unit_cannot_see_is_named(exe: str, hidden: str | None) -> None:
    """ProtectHome=yes and PrivateTmp=yes hide /home, /root and /tmp from the service: a vramwatch there is named
    (install-service warns), one under /opt or /usr/local is not."""
    assert unit_cannot_see(Path(exe)) == (Path(hidden) if hidden else None)
