"""Config: defaults < file < environment < command line, and every error names its source and key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from vramwatch.config import dataclass_from_table, load
from vramwatch.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "vramwatch.toml"
    p.write_text(text)
    return p


def test_precedence_file_env_cli(tmp_path: Path) -> None:
    """The command line beats the environment, which beats the file, which beats the defaults."""
    p = _write(tmp_path, '[daemon]\ninterval = 2.0\nlisten = "127.0.0.1:1111"\nseed = 3\n')
    cfg = load(p, {"listen": "127.0.0.1:3333"}, environ={"VRAMWATCH_INTERVAL": "0.5", "VRAMWATCH_LISTEN": "x:2"})
    assert cfg.daemon.listen == "127.0.0.1:3333"
    assert cfg.daemon.interval == 0.5
    assert cfg.daemon.seed == 3
    assert cfg.daemon.history_seconds == 3600.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[daemon]\ninterval = "fast"\n', r"\[daemon\] interval: expected a finite number > 0, got 'fast'"),
        ("[daemon]\ninterval = -1\n", r"interval: expected a finite number > 0"),
        ("[daemon]\nlisen = 1\n", r"unknown key 'lisen'"),
        ("[deamon]\n", r"unknown section \[deamon\]"),
        ("[daemon\n", r"not valid TOML"),
        ('[daemon]\nlog_format = "xml"\n', r"log_format: expected one of auto, console, json"),
        ('[daemon]\nprocess_metrics = "maybe"\n', r"process_metrics: expected true or false"),
        ("daemon = 3\n", r"\[daemon\] must be a table"),
    ],
)
def test_invalid_file_names_file_key_and_expectation(tmp_path: Path, text: str, message: str) -> None:
    """A broken config is rejected with the file, the key and what was expected."""
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load(p, environ={})
    assert str(p) in str(info.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    """A config path that does not exist says so, with the path."""
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(tmp_path / "nope.toml", environ={})


def test_bad_environment_value_names_the_variable() -> None:
    """VRAMWATCH_INTERVAL=abc is reported as that variable."""
    with pytest.raises(ConfigError, match="VRAMWATCH_INTERVAL"):
        load(None, environ={"VRAMWATCH_INTERVAL": "abc"})


def test_config_file_from_environment(tmp_path: Path) -> None:
    """VRAMWATCH_CONFIG names the file when --config is not given."""
    p = _write(tmp_path, "[daemon]\nseed = 9\n")
    assert load(None, environ={"VRAMWATCH_CONFIG": str(p)}).daemon.seed == 9


@dataclass(frozen=True)
class _Section:
    window_seconds: float = 600.0
    enabled: bool = True
    kinds: tuple[str, ...] = ("a",)


def test_sections_are_checked_against_their_dataclass() -> None:
    """Owned sections accept their fields with the right types and reject anything else."""
    ok = dataclass_from_table(_Section, {"window_seconds": 300, "kinds": ["x", "y"]}, "f: [s]")
    assert ok == _Section(300.0, True, ("x", "y"))
    with pytest.raises(ConfigError, match=r"f: \[s\] enabled: expected true or false"):
        dataclass_from_table(_Section, {"enabled": 1}, "f: [s]")
    with pytest.raises(ConfigError, match="unknown key 'windw'"):
        dataclass_from_table(_Section, {"windw": 1}, "f: [s]")


def test_detector_section_accepts_lists_and_tables() -> None:
    """[detectors] takes TOML lists for sets and tables for per-kind ticks, and rejects a bad value there."""
    from vramwatch.detectors import config_from_table, settings, stale

    cfg = config_from_table({"stale_statuses": ["zombie"], "enter_ticks": {"pressure": 5}}, "f: [detectors]")
    assert settings(cfg, stale.DETECTOR).stale_statuses == frozenset({"zombie"})
    assert cfg.enter_ticks["pressure"] == 5
    with pytest.raises(ConfigError, match=r"f: \[detectors.enter_ticks\] pressure: expected a whole number"):
        config_from_table({"enter_ticks": {"pressure": "many"}}, "f: [detectors]")
