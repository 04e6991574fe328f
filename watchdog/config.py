"""Configuration: one TOML file, `VRAMWATCH_*` environment variables, and command-line options.

Precedence, lowest first: built-in defaults, the config file, the environment, the command line. Every
daemon option has all three forms (`[daemon] interval = 1.0`, `VRAMWATCH_INTERVAL=1`, `--interval 1`). An invalid
value is rejected with where it came from, the key and what was expected, e.g.
`/etc/vramwatch/vramwatch.toml: [daemon] interval: expected a finite number > 0, got 'fast'`.
Sections other than [daemon] (detectors, policy, notify) are validated by the modules that own them;
here they are only checked to be tables, and unknown sections are an error (a typo must not pass silently).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .tables import check_keys, key_error
from .tables import dataclass_from_table as dataclass_from_table  # noqa: PLC0414 - re-exported for section owners

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

SECTIONS = ("daemon", "detectors", "policy", "notify")
#: Sections that earlier versions accepted and nothing ever read: ignored with a note (an upgrade must not stop a
#: service over a section that never did anything), and gone from `Config.sections`.
IGNORED_SECTIONS = ("agent",)


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """Options of `vramwatch serve` (section [daemon])."""

    listen: str = "127.0.0.1:9783"
    interval: float = 1.0
    history_seconds: float = 3600.0
    process_metrics: bool = True
    simulate: str | None = None
    seed: int = 0
    replay: str | None = None
    log_format: str = "auto"  # auto: pretty on a TTY, JSON otherwise
    log_level: str = "info"
    host_pids: str = "auto"  # auto | yes | no: whether NVML's host pids can be resolved here
    record: str | None = None  # also write a trace of what is sampled to this file


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration: the daemon's options plus the raw tables of the other sections."""

    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    source: str | None = None
    #: What was adjusted rather than refused (a section nothing reads, a history raised to its minimum): logged by
    #: the command line as `config_adjusted`, one line each.
    notes: tuple[str, ...] = ()

    def section(self, name: str) -> Mapping[str, Any]:
        return self.sections.get(name, {})


def _positive(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v < math.inf):
        raise ValueError("a finite number > 0")
    return float(v)


#: Faster than 100 Hz only floods the log with overruns: NVML and attribution take about a millisecond a tick.
MIN_INTERVAL_SECONDS = 0.01


def _interval(v: Any) -> float:
    seconds = _positive(v)
    if seconds < MIN_INTERVAL_SECONDS:
        raise ValueError(f"at least {MIN_INTERVAL_SECONDS} seconds")
    return seconds


#: The detectors look back up to ten minutes for most of what they judge (a growth rate's report window,
#: `rate_report_seconds`; a moving run's recent peaks and a plateau's hold, five): a shorter history would turn
#: them off without a word, so it is raised to this, with a note. The growth detector's longest windows (up to an
#: hour) see what the history holds.
MIN_HISTORY_SECONDS = 600.0


def split_listen(listen: str) -> tuple[str, int]:
    """`HOST:PORT`, `[IPv6]:PORT` or `:PORT` (loopback) -> (host, port); ValueError names the expected form."""
    host, sep, port = listen.rpartition(":")
    bracketed = len(host) > 2 and host[0] == "[" and host[-1] == "]"
    inner = host[1:-1] if bracketed else host
    if (
        not sep
        or not (port.isascii() and port.isdigit())
        or not 0 < int(port) < 65536
        or "[" in inner
        or "]" in inner
        or (":" in inner and not bracketed)
    ):
        raise ValueError("HOST:PORT, e.g. 127.0.0.1:9783 ([::1]:9783 for IPv6)")
    return inner or "127.0.0.1", int(port)


def local_address(listen: str) -> str:
    """Where a client on this machine reaches a daemon that listens on `listen`: a wildcard host (every address)
    is reached on loopback."""
    host, port = split_listen(listen)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104 - matching the wildcard, not binding
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _listen(v: Any) -> str:
    split_listen(_str(v))
    return str(v)


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
        return v.lower() in {"1", "true", "yes", "on"}
    raise ValueError("true or false")


def _str(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError("a non-empty string")
    return v


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError("an integer")  # noqa: TRY004 - caught and turned into a ConfigError naming the key
    return v


def _choice(*options: str) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if v not in options:
            raise ValueError("one of " + ", ".join(options))
        return str(v)

    return check


_VALIDATORS: dict[str, Callable[[Any], Any]] = {
    "listen": _listen,
    "interval": _interval,
    "history_seconds": _positive,
    "process_metrics": _bool,
    "simulate": _str,
    "seed": _int,
    "replay": _str,
    "log_format": _choice("auto", "console", "json"),
    "log_level": _choice("debug", "info", "warning", "error"),
    "host_pids": _choice("auto", "yes", "no"),
    "record": _str,
}
_FROM_ENV: dict[str, Callable[[str], Any]] = {"interval": float, "history_seconds": float, "seed": int}


def _apply(base: DaemonConfig, values: Mapping[str, Any], where: str) -> DaemonConfig:
    check_keys(values, where, [f.name for f in fields(DaemonConfig)])
    changes: dict[str, Any] = {}
    for key, raw in values.items():
        try:
            changes[key] = _VALIDATORS[key](raw)
        except ValueError as exc:
            raise key_error(where, key, str(exc), raw) from None
    return replace(base, **changes)


def load_file(path: Path) -> tuple[DaemonConfig, dict[str, Mapping[str, Any]], list[str]]:
    """Parse and validate a TOML config file: the [daemon] options, the other sections, and notes on what it
    ignored; every error names the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {exc.start}); TOML config files are UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for name, table in data.items():
        if name in IGNORED_SECTIONS:
            continue
        if name not in SECTIONS:
            raise ConfigError(f"{path}: unknown section [{name}] (known: {', '.join(SECTIONS)})")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{name}] must be a table")
    daemon = _apply(DaemonConfig(), data.get("daemon", {}), f"{path}: [daemon]")
    sections = {k: v for k, v in data.items() if k != "daemon" and k not in IGNORED_SECTIONS}
    notes = [
        f"{path}: [{name}] is read by nothing and is ignored: delete it" for name in IGNORED_SECTIONS if name in data
    ]
    return daemon, sections, notes


def from_env(base: DaemonConfig, environ: Mapping[str, str]) -> DaemonConfig:
    """Apply `VRAMWATCH_<OPTION>` variables (upper-case option names)."""
    values: dict[str, Any] = {}
    for f in fields(DaemonConfig):
        raw = environ.get("VRAMWATCH_" + f.name.upper())
        if raw is None:
            continue
        try:
            values[f.name] = _FROM_ENV.get(f.name, str)(raw)
        except ValueError:
            raise ConfigError(f"environment VRAMWATCH_{f.name.upper()}: expected a number, got {raw!r}") from None
    return _apply(base, values, "environment VRAMWATCH_*:")


def load(
    path: Path | None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Defaults < file < environment < `overrides` (the command line's explicitly given options)."""
    env = os.environ if environ is None else environ
    if path is None and env.get("VRAMWATCH_CONFIG"):
        path = Path(env["VRAMWATCH_CONFIG"])
    daemon, sections, notes = load_file(path) if path is not None else (DaemonConfig(), {}, [])
    daemon = from_env(daemon, env)
    if overrides:
        daemon = _apply(daemon, {k: v for k, v in overrides.items() if v is not None}, "command line:")
    if daemon.history_seconds < MIN_HISTORY_SECONDS:
        notes.append(f"history_seconds = {daemon.history_seconds:g} is raised to {MIN_HISTORY_SECONDS:g}: the "
                     "detectors look back up to ten minutes")  # fmt: skip
        daemon = replace(daemon, history_seconds=MIN_HISTORY_SECONDS)
    return Config(daemon=daemon, sections=sections, source=str(path) if path else None, notes=tuple(notes))
