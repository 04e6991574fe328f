"""The advisor: recognise the trainer behind a process and suggest the setting change in its own words.

Reading order: `settings` (what is known about a run), `recognize` (from a command line and its config
files to settings, asking each module of `trainers/`, one per trainer; `argv`, `configfile` and `extract`
are their shared helpers), `rules` + `rules.toml` (the knowledge, as data, with sources), `render`
(ranked advice for a finding, as text or JSON).
"""

from __future__ import annotations

from .recognize import recognize
from .render import (
    Advice,
    Suggestion,
    advice_lines,
    advice_to_dict,
    advise,
    advise_cmdline,
    advise_process,
    holder_of,
    render_text,
)
from .rules import RuleBook, default_rules, parse_rules
from .settings import SettingSource, TrainerSettings

__all__ = [
    "Advice",
    "RuleBook",
    "SettingSource",
    "Suggestion",
    "TrainerSettings",
    "advice_lines",
    "advice_to_dict",
    "advise",
    "advise_cmdline",
    "advise_process",
    "default_rules",
    "holder_of",
    "parse_rules",
    "recognize",
    "render_text",
]
