"""The advice knowledge as data: loading `rules.toml`, checking it, and matching rules against settings.

The rules are data so that adding one (or a trainer's spelling of one) is a table edit with a source, not
code. This module validates the table strictly on load (an unknown setting name or operator is a
ConfigError naming the rule: a typo would otherwise silently never fire), then answers one question per
rule: does it apply to these settings, and how confidently (did it fire on an unreadable setting)?

Scoring is deterministic and explained in rules.toml: weight x factor, where the factor says how much of
the rule's saving this run can still get (batch 4 -> 1 saves more than 2 -> 1).
"""

from __future__ import annotations

import functools
import importlib.resources
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..model import FindingKind
from .configcopy import FLAG, KEY, ConfigEdit, Value
from .settings import TrainerSettings
from .trainers import TRAINER_IDS as TRAINERS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

#: The situations advice is written for: what rules.toml's `kinds` may name. They are not the finding kinds:
#: most findings get the advice of their own kind (each detector names it, `Detector.advice`), the agent's `oom`
#: gets `spike` or `fragmentation`, and two situations are no finding at all: `spike` (an OOM at the first
#: step: the size of one step) and `plateau` (running near capacity, asked for by hand: `advise --kind plateau`),
#: and `sampling`: a run whose training steps fit but whose sample images do not (`vramwatch probe`, `steps.py`).
ADVICE_KINDS = frozenset(
    {
        *(
            k.value
            for k in (
                FindingKind.OOM_FORECAST,
                FindingKind.PRESSURE,
                FindingKind.GROWTH,
                FindingKind.PROBABLE_OOM,
                FindingKind.FRAGMENTATION,
                FindingKind.CONTENTION,
                FindingKind.STALE_HOLDER,
            )
        ),
        "spike",
        "plateau",
        "sampling",
    }
)
OPS = frozenset({"eq", "ne", "gt", "ge", "lt", "le", "in", "not_in", "version_ge", "version_lt"})
SCALES = frozenset({"none", "batch", "resolution", "dim"})
DYNAMIC = frozenset({"others", "stale"})
CONTEXT_SETTINGS = frozenset({"torch_version", "trainer"})
UNKNOWN_FACTOR = 0.5  # a rule fired on a setting nobody could read: suggest it, below the certain ones
REFERENCE_SAVING = 0.75  # the guide's reference case (batch 4 -> 1, 1024 -> 512) normalises to factor 1
TARGET_RESOLUTION = 512
TARGET_DIM = 16


def _setting_names() -> frozenset[str]:
    props = {name for name, value in vars(TrainerSettings).items() if isinstance(value, property)}
    return frozenset(TrainerSettings.__dataclass_fields__) | props | CONTEXT_SETTINGS


SETTING_NAMES = _setting_names()


@dataclass(frozen=True, slots=True)
class Condition:
    """One test on a setting; `if_unknown` is "match" or "skip" for a setting that could not be read."""

    setting: str
    op: str
    value: Any
    if_unknown: str = "match"


@dataclass(frozen=True, slots=True)
class Rule:
    """One piece of advice: when it applies, how much it saves, how each trainer spells it, and why."""

    id: str
    kinds: frozenset[str]
    setting: str | None
    when: tuple[Condition, ...]
    weight: float
    kind_weights: tuple[tuple[str, float], ...]
    scale: str
    why: str
    saving: str
    source: str
    syntax: tuple[tuple[str, str], ...]
    dynamic: str | None = None
    # `[rule.apply]`: for a syntax key whose change is a config file's, the change as data (`probe --try` writes
    # it in a copy of the file), or why it is not applied.
    apply: tuple[tuple[str, ConfigEdit | str], ...] = ()

    def weight_for(self, kind: str) -> float:
        """The rule's weight for a finding kind (`kind_weights` overrides `weight`)."""
        return dict(self.kind_weights).get(kind, self.weight)

    def syntax_key(self, trainer: str, variants: tuple[str, ...]) -> str | None:
        """Which `[rule.syntax]` key speaks for this run: the first of `trainer@variant`..., `trainer`, `default`."""
        table = dict(self.syntax)
        for key in (*(f"{trainer}@{v}" for v in variants), trainer, "default"):
            if key in table:
                return key
        return None

    def syntax_for(self, trainer: str, variants: tuple[str, ...]) -> str | None:
        """The change in the trainer's words (`syntax_key`'s text)."""
        key = self.syntax_key(trainer, variants)
        return None if key is None else dict(self.syntax)[key]

    def apply_for(self, key: str) -> ConfigEdit | str | None:
        """The `[rule.apply]` entry for a syntax key: the change as data, why it is not applied, or None."""
        return dict(self.apply).get(key)


@dataclass(frozen=True, slots=True)
class Note:
    """A sentence said once for a finding kind, above the ranked suggestions."""

    kinds: frozenset[str]
    text: str
    source: str


@dataclass(frozen=True, slots=True)
class RuleBook:
    """Every rule and note, in file order (the tie-break of the ranking)."""

    rules: tuple[Rule, ...]
    notes: tuple[Note, ...]
    syntax_sources: tuple[tuple[str, str], ...]

    def syntax_source(self, trainer: str) -> str | None:
        """Where the trainer's flags and keys were checked."""
        return dict(self.syntax_sources).get(trainer)


@dataclass(frozen=True, slots=True)
class Match:
    """A rule that applies: `unverified` when it fired only because a setting could not be read."""

    rule: Rule
    unverified: bool
    unknown_settings: tuple[str, ...]


def _fail(where: str, message: str) -> ConfigError:
    return ConfigError(f"advice rules: {where}: {message}")


def _str(table: Mapping[str, Any], key: str, where: str, required: bool = True) -> str | None:
    value = table.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, f"'{key}' must be a non-empty string")
    return value


def _kinds(table: Mapping[str, Any], where: str) -> frozenset[str]:
    kinds = table.get("kinds")
    if not isinstance(kinds, list) or not kinds or not all(isinstance(k, str) for k in kinds):
        raise _fail(where, "'kinds' must be a non-empty list of advice kinds")
    unknown = set(kinds) - ADVICE_KINDS
    if unknown:
        raise _fail(where, f"unknown advice kinds {sorted(unknown)}; expected some of {sorted(ADVICE_KINDS)}")
    return frozenset(kinds)


def _condition(raw: Any, where: str) -> Condition:
    if not isinstance(raw, Mapping):
        raise _fail(where, "each 'when' entry must be a table")
    setting, op = raw.get("setting"), raw.get("op")
    if setting not in SETTING_NAMES:
        raise _fail(where, f"unknown setting {setting!r}")
    if op not in OPS:
        raise _fail(where, f"unknown op {op!r}; expected one of {sorted(OPS)}")
    if "value" not in raw:
        raise _fail(where, f"condition on {setting} has no 'value'")
    if op in ("in", "not_in") and not isinstance(raw["value"], list):
        raise _fail(where, f"'{op}' needs a list value")
    unknown = raw.get("unknown", "match")
    if unknown not in ("match", "skip"):
        raise _fail(where, "'unknown' must be 'match' or 'skip'")
    return Condition(str(setting), str(op), raw["value"], str(unknown))


def _value(raw: Any) -> Value | None:
    """A config value `[rule.apply]` may set: a string, number or boolean, or a list of them; None otherwise."""
    if isinstance(raw, str | int | float | bool):
        return raw
    if isinstance(raw, list) and all(isinstance(v, str | int | float | bool) for v in raw):
        return list(raw)
    return None


def _apply(raw: Any, syntax: Mapping[str, Any], where: str) -> tuple[tuple[str, ConfigEdit | str], ...]:
    """`[rule.apply]`: per syntax key, a table of config keys (dotted, `[]` for every item of a list) and `--flags`
    with their values, or a string saying why the change is not applied."""
    if not isinstance(raw, Mapping):
        raise _fail(where, "'apply' must be a table")
    out: list[tuple[str, ConfigEdit | str]] = []
    for key, entry in raw.items():
        if key not in syntax:
            raise _fail(where, f"apply key {key!r} has no syntax entry: the change it applies must be spelt too")
        if isinstance(entry, str):
            if not entry.strip():
                raise _fail(where, f"apply {key!r}: the reason it is not applied must be a non-empty string")
            out.append((str(key), entry))
            continue
        if not isinstance(entry, Mapping) or not entry:
            raise _fail(where, f"apply {key!r} must be a non-empty table (or a string saying why not)")
        values: list[tuple[str, Value]] = []
        flags: list[tuple[str, str | None]] = []
        for name, value in entry.items():
            if FLAG.fullmatch(name):
                if value is True or (isinstance(value, str | int) and not isinstance(value, bool)):
                    flags.append((str(name), None if value is True else str(value)))
                    continue
                raise _fail(where, f"apply {key!r}: flag {name} takes true (a switch), a string or an integer")
            checked = _value(value)
            if not KEY.fullmatch(name) or checked is None:
                why = "must be a dotted config key set to a string, number, boolean or a list of them, or a --flag"
                raise _fail(where, f"apply {key!r}: {name!r} {why}")
            values.append((str(name), checked))
        if not values:
            raise _fail(where, f"apply {key!r} sets no config key: a change of flags alone is the syntax's")
        out.append((str(key), ConfigEdit(str(key), tuple(values), tuple(flags))))
    return tuple(out)


def _rule(raw: Any, index: int) -> Rule:
    if not isinstance(raw, Mapping):
        raise _fail(f"rule #{index + 1}", "must be a table")
    rule_id = _str(raw, "id", f"rule #{index + 1}") or ""
    where = f"rule {rule_id!r}"
    when = raw.get("when", [])
    if not isinstance(when, list):
        raise _fail(where, "'when' must be a list")
    weight = raw.get("weight")
    if isinstance(weight, bool) or not isinstance(weight, int | float) or weight <= 0:
        raise _fail(where, "'weight' must be a positive number")
    kind_weights = raw.get("kind_weights", {})
    if not isinstance(kind_weights, Mapping) or not all(
        k in ADVICE_KINDS and isinstance(v, int | float) and not isinstance(v, bool) and v > 0
        for k, v in kind_weights.items()
    ):
        raise _fail(where, "'kind_weights' must map advice kinds to positive numbers")
    scale = raw.get("scale", "none")
    if scale not in SCALES:
        raise _fail(where, f"'scale' must be one of {sorted(SCALES)}")
    syntax = raw.get("syntax")
    if not isinstance(syntax, Mapping) or not syntax:
        raise _fail(where, "'syntax' must be a non-empty table")
    for key, text in syntax.items():
        trainer = str(key).split("@", 1)[0]
        if trainer not in (*TRAINERS, "default") or not isinstance(text, str) or not text.strip():
            raise _fail(where, f"syntax key {key!r} must be a trainer id (or 'default') with a non-empty string")
    dynamic = raw.get("dynamic")
    if dynamic is not None and (dynamic not in DYNAMIC or "default" not in syntax):
        raise _fail(where, f"'dynamic' must be one of {sorted(DYNAMIC)}, with a 'default' syntax")
    setting = _str(raw, "setting", where, required=False)
    if setting is not None and setting not in SETTING_NAMES:
        raise _fail(where, f"unknown setting {setting!r}")
    return Rule(
        id=rule_id,
        kinds=_kinds(raw, where),
        setting=setting,
        when=tuple(_condition(c, where) for c in when),
        weight=float(weight),
        kind_weights=tuple((str(k), float(v)) for k, v in kind_weights.items()),
        scale=str(scale),
        why=_str(raw, "why", where) or "",
        saving=_str(raw, "saving", where) or "",
        source=_str(raw, "source", where) or "",
        syntax=tuple((str(k), str(v)) for k, v in syntax.items()),
        dynamic=dynamic,
        apply=_apply(raw.get("apply", {}), syntax, where),
    )


def parse_rules(text: str) -> RuleBook:
    """Parse and validate a rules file; ConfigError names the first bad rule and what is wrong with it."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"advice rules: cannot parse TOML: {exc}") from exc
    if data.get("schema_version") != 1:
        raise ConfigError("advice rules: schema_version must be 1")
    raw_rules = data.get("rule", [])
    if not isinstance(raw_rules, list) or not raw_rules:
        raise ConfigError("advice rules: no [[rule]] tables")
    rules = tuple(_rule(raw, i) for i, raw in enumerate(raw_rules))
    seen: set[str] = set()
    for rule in rules:
        if rule.id in seen:
            raise _fail(f"rule {rule.id!r}", "duplicate id")
        seen.add(rule.id)
    notes = []
    for i, raw in enumerate(data.get("note", [])):
        where = f"note #{i + 1}"
        if not isinstance(raw, Mapping):
            raise _fail(where, "must be a table")
        notes.append(Note(_kinds(raw, where), _str(raw, "text", where) or "", _str(raw, "source", where) or ""))
    sources = data.get("syntax_sources", {})
    if not isinstance(sources, Mapping):
        raise ConfigError("advice rules: [syntax_sources] must be a table")
    return RuleBook(rules, tuple(notes), tuple((str(k), str(v)) for k, v in sources.items()))


@functools.cache
def default_rules() -> RuleBook:
    """The rules shipped with vramwatch (vramwatch/advice/rules.toml), parsed once."""
    text = importlib.resources.files(__package__).joinpath("rules.toml").read_text(encoding="utf-8")
    return parse_rules(text)


def version_tuple(text: object) -> tuple[int, ...] | None:
    """ "2.1.0+cu121" -> (2, 1, 0); None when it does not start with a number."""
    match = re.match(r"^\s*v?(\d+(?:\.\d+)*)", str(text)) if text is not None else None
    return tuple(int(p) for p in match.group(1).split(".")) if match else None


def setting_value(settings: TrainerSettings, name: str, context: Mapping[str, object]) -> object:
    """A setting, property, or context value by the name rules use."""
    if name == "torch_version":
        return context.get("torch_version")
    return getattr(settings, name)


def _holds(cond: Condition, value: object) -> bool:
    op, target = cond.op, cond.value
    if op in ("version_ge", "version_lt"):
        have, want = version_tuple(value), version_tuple(target)
        if have is None or want is None:
            return False
        return have >= want if op == "version_ge" else have < want
    if op == "eq":
        return bool(value == target)
    if op == "ne":
        return bool(value != target)
    if op == "in":
        return value in target
    if op == "not_in":
        return value not in target
    if isinstance(value, bool) or not isinstance(value, int | float) or not isinstance(target, int | float):
        return False
    return {"gt": value > target, "ge": value >= target, "lt": value < target, "le": value <= target}[op]


def match(rule: Rule, settings: TrainerSettings, context: Mapping[str, object]) -> Match | None:
    """Whether `rule` applies to `settings`; None when a condition is false or an unknown setting skips it."""
    unknown: list[str] = []
    for cond in rule.when:
        value = setting_value(settings, cond.setting, context)
        if value is None:
            if cond.if_unknown == "skip":
                return None
            unknown.append(cond.setting)
            continue
        if not _holds(cond, value):
            return None
    return Match(rule, bool(unknown), tuple(unknown))


def saved_fraction(rule: Rule, settings: TrainerSettings) -> float | None:
    """The share of the scaled memory the change saves for this run (batch 4 -> 1: 0.75); None if unscaled."""
    if rule.scale == "batch" and settings.batch_size:
        return 1 - 1 / settings.batch_size
    if rule.scale == "resolution" and settings.resolution_max:
        return 1 - (TARGET_RESOLUTION / settings.resolution_max) ** 2
    if rule.scale == "dim" and settings.network_dim:
        return 1 - TARGET_DIM / settings.network_dim
    return None


def factor(rule: Rule, settings: TrainerSettings) -> float:
    """How much of the rule's reference saving this run can still get, in (0, 1]."""
    saved = saved_fraction(rule, settings)
    if saved is None:
        return 1.0
    return max(0.01, min(1.0, saved / REFERENCE_SAVING))


def score(found: Match, kind: str, settings: TrainerSettings) -> float:
    """The ranking key: weight for this kind x factor, halved when the rule fired on an unread setting."""
    value = found.rule.weight_for(kind) * factor(found.rule, settings)
    return value * (UNKNOWN_FACTOR if found.unverified else 1.0)
