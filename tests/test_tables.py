"""Every section of the config file is read by one module, so unknown keys and bad values read alike."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from vramwatch.config import load
from vramwatch.errors import ConfigError
from vramwatch.tables import TableReader, dataclass_from_table


@dataclass(frozen=True)
class _Toy:
    window_seconds: float = 60.0
    enabled: bool = True


def test_unknown_keys_read_the_same_in_every_section(tmp_path):
    """[daemon], a dataclass-backed section and a TableReader section all name the stray key and the known ones."""
    path = tmp_path / "vramwatch.toml"
    path.write_text("[daemon]\nlisen = 1\n")
    with pytest.raises(ConfigError, match=re.escape("[daemon]: unknown key 'lisen' (known: history_seconds, ")):
        load(path, environ={})
    with pytest.raises(ConfigError, match=re.escape("[toy]: unknown key 'windw' (known: enabled, window_seconds)")):
        dataclass_from_table(_Toy, {"windw": 1}, "[toy]")
    with pytest.raises(ConfigError, match=re.escape("[toy]: unknown key 'windw' (known: enabled, window_seconds)")):
        TableReader({"windw": 1}, "[toy]", ("window_seconds", "enabled"))


def test_bad_values_read_the_same_in_every_section():
    """A value of the wrong type is `<where> <key>: expected <what>, got <value>` whichever reader saw it."""
    with pytest.raises(ConfigError, match=re.escape("[toy] enabled: expected true or false, got 'yes'")):
        dataclass_from_table(_Toy, {"enabled": "yes"}, "[toy]")
    with pytest.raises(ConfigError, match=re.escape("[toy] enabled: expected true or false, got 'yes'")):
        TableReader({"enabled": "yes"}, "[toy]", ("enabled",)).boolean("enabled", True)
