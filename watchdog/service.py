"""Install vramwatch as a systemd service: copy the shipped unit and default config into place.

The canonical files live in the repository's `systemd/` folder; identical copies ship inside the package
(`vramwatch/data/`) so `vramwatch install-service` works from a wheel. This module only copies files: it
never runs systemctl (the caller prints the next steps), so it is testable against a temporary root via
`prefix`.

Rules: an existing unit is replaced only with `force=True` (an identical one is left alone); an existing
config is never replaced, because admins edit it. `executable` rewrites the unit's ExecStart to the
vramwatch that is actually installed (pipx and venv installs do not live in /usr/bin).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from .errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_UNIT_DIR",
    "NEXT_STEPS",
    "UNIT_NAME",
    "install_service",
    "installed_executable",
    "packaged_file",
    "unit_cannot_see",
]

UNIT_NAME = "vramwatch.service"
#: Relative to `prefix`: the admin's unit directory, which takes precedence over packaged units.
DEFAULT_UNIT_DIR = Path("etc/systemd/system")
DEFAULT_CONFIG_PATH = Path("etc/vramwatch/vramwatch.toml")
_DEFAULT_EXEC = "/usr/bin/vramwatch"
NEXT_STEPS = "systemctl daemon-reload && systemctl enable --now vramwatch"


def installed_executable(python: str, argv0: str, on_path: str | None) -> Path | None:
    """The `vramwatch` command that belongs to the running vramwatch, for the unit's ExecStart (None: none found).

    First the script beside the running interpreter (`<venv>/bin/vramwatch` for `<venv>/bin/python`; pipx alike),
    which holds under `sudo`, whose PATH leaves the venv out; then the script this process was started as; then
    `on_path`, what PATH finds (`shutil.which`). The interpreter's path is not resolved: a venv's python is a link to
    the system's, whose directory holds no vramwatch of this install."""
    beside = Path(python).parent / "vramwatch" if python else None
    if beside is not None and beside.is_absolute() and os.access(beside, os.X_OK):
        return beside
    started = Path(argv0)
    if started.name == "vramwatch" and os.access(started, os.X_OK):
        return started.absolute()
    return Path(on_path) if on_path else None


#: Where the packaged unit cannot see a file (ProtectHome=yes hides these, PrivateTmp=yes gives /tmp a fresh empty
#: tree): a vramwatch installed there cannot start as the service.
HIDDEN_FROM_UNIT = (
    Path("/home"),
    Path("/root"),
    Path("/run/user"),
    Path("/tmp"),  # noqa: S108 - names the directory, writes nothing there
    Path("/var/tmp"),  # noqa: S108
)


def unit_cannot_see(executable: Path) -> Path | None:
    """The directory of `HIDDEN_FROM_UNIT` that holds `executable` (None: the unit can run it)."""
    return next((d for d in HIDDEN_FROM_UNIT if executable.is_relative_to(d)), None)


def packaged_file(name: str) -> str:
    """The text of a file shipped in `vramwatch/data/` (`vramwatch.service` or `vramwatch.toml`)."""
    return (resources.files("vramwatch") / "data" / name).read_text(encoding="utf-8")


def _unit_text(executable: Path | None) -> str:
    text = packaged_file(UNIT_NAME)
    if executable is None:
        return text
    if not executable.is_absolute():
        raise ConfigError(f"install-service: the executable must be an absolute path, got {executable}")
    if any(ch.isspace() for ch in str(executable)):
        # systemd would split the path at the space; quoting it is possible but a venv there is rare.
        raise ConfigError(f"install-service: the executable path must not contain spaces: {executable}")
    old = f"ExecStart={_DEFAULT_EXEC} "
    if old not in text:
        raise ConfigError(f"install-service: the packaged unit has no '{old.strip()}' line to rewrite")
    return text.replace(old, f"ExecStart={executable} ", 1)


def _resolve(prefix: Path, path: Path) -> Path:
    # Absolute paths are taken relative to the prefix, like DESTDIR: prefix=/tmp/root puts /etc there.
    return prefix / path.relative_to(path.anchor) if path.is_absolute() else prefix / path


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(mode)
    # Atomic: systemd or a concurrent reader never sees half a unit.
    tmp.replace(path)


def install_service(
    prefix: Path = Path("/"),
    *,
    unit_dir: Path = DEFAULT_UNIT_DIR,
    config_path: Path = DEFAULT_CONFIG_PATH,
    force: bool = False,
    executable: Path | None = None,
) -> list[Path]:
    """Copy the unit into `prefix/unit_dir` and the default config to `prefix/config_path`.

    Returns the files written (empty when everything was already in place). Raises ConfigError when a
    different unit exists and `force` is False, naming the file, so the CLI prints one clear line.
    The config is written only when absent; `force` never overwrites an admin's config.
    """
    unit_path = _resolve(prefix, unit_dir) / UNIT_NAME
    conf_path = _resolve(prefix, config_path)
    unit = _unit_text(executable)
    written: list[Path] = []

    current = unit_path.read_text(encoding="utf-8", errors="replace") if unit_path.exists() else None
    if current is not None and current != unit and not force:
        raise ConfigError(f"{unit_path} exists and differs from the packaged unit; pass --force to replace it")
    if current != unit:
        # 0644: systemd reads units as root, but admins and `systemd-analyze` read them unprivileged.
        _write(unit_path, unit, 0o644)
        written.append(unit_path)

    if not conf_path.exists():
        # World-readable: the service runs as a DynamicUser that owns nothing on disk.
        _write(conf_path, packaged_file("vramwatch.toml"), 0o644)
        written.append(conf_path)
    return written
