"""Advice for one finding: the rules that apply to this run, ranked, in the trainer's own words.

`advise()` is pure: settings + finding kind (+ context: torch version, GPU size, the other processes on
the GPU) in, `Advice` out. The finding kind picks the kind of advice: a leak (`growth`) gets what to look
for in the code, not memory settings, which would only delay the OOM; `fragmentation` gets allocator
options; `contention` names the other processes and what they hold; near-capacity kinds get the memory
settings this run has not applied yet, biggest expected saving first.

`render_text` is for terminals; `advice_to_dict` is for JSON and webhooks and carries no command line, no
environment value and no config path beyond a file name.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from string import Template
from typing import Any

from ..errors import ConfigError
from ..model import Finding, ProcessMeta
from ..units import GIB, gib
from .configcopy import ConfigEdit
from .configfile import ReadFile, read_text_file
from .recognize import recognize
from .rules import ADVICE_KINDS, Match, Rule, RuleBook, default_rules, match, saved_fraction, score
from .settings import TrainerSettings
from .trainers import TRAINER_NAMES, kohya

DEFAULT_ALLOC_VAR = "PYTORCH_CUDA_ALLOC_CONF"  # honoured by every PyTorch; PYTORCH_ALLOC_CONF only by newer
MAX_HOLDERS = 5


@dataclass(frozen=True, slots=True)
class Suggestion:
    """One ranked change: `change` is in the trainer's syntax, `source` says where the knowledge is from.

    `syntax_key` is the `[rule.syntax]` key `change` was written from ("kohya@dataset_config"); `edit` the same
    change as data where it is a config file's (`[rule.apply]`, placeholders filled: `probe --try` writes it
    in a copy of the file), or the rule's reason why it is not applied.
    """

    rule_id: str
    change: str
    why: str
    expected_saving: str
    source: str
    rank: int
    syntax_key: str | None = None
    edit: ConfigEdit | str | None = None


@dataclass(frozen=True, slots=True)
class Advice:
    """Everything the advisor says about one finding for one run."""

    trainer: str
    settings: TrainerSettings
    finding_kind: str
    suggestions: tuple[Suggestion, ...]
    notes: tuple[str, ...]


# --- template variables --------------------------------------------------------------------------------


#: The most blocks the table below may ask of a model other than Flux: sd-scripts refuses more than its blocks less
#: two (`enable_block_swap`), and the smaller DiTs it trains have 24 (SD3 medium) to 28 (Anima).
NON_FLUX_MAX_BLOCKS = 18


def _blocks_to_swap(context: Mapping[str, object], family: str | None) -> int:
    """Blocks to swap for the card's size, from the sd-scripts FLUX table; 18 (its example) otherwise. The table is
    Flux's: another family is asked for at most `NON_FLUX_MAX_BLOCKS`."""
    blocks = 18
    total = context.get("gpu_total_bytes")
    if isinstance(total, int) and not isinstance(total, bool) and total > 0:
        for limit_gib, table_blocks in ((8.5, 28), (10.5, 22), (12.5, 16)):
            if total <= limit_gib * GIB:
                blocks = table_blocks
                break
    return blocks if family == "flux" else min(blocks, NON_FLUX_MAX_BLOCKS)


def _pct(rule: Rule, settings: TrainerSettings) -> str:
    saved = saved_fraction(rule, settings)
    return "?" if saved is None else str(round(saved * 100))


def _variables(rule: Rule, settings: TrainerSettings, context: Mapping[str, object]) -> dict[str, str]:
    batch = settings.batch_size or 1
    accum = settings.grad_accum or 1
    source = settings.source_of(rule.setting) if rule.setting else None
    res = settings.resolution
    return {
        "batch_size": str(settings.batch_size if settings.batch_size is not None else "?"),
        "new_accum": str(batch * accum),
        "effective": str(batch * accum),
        "pct": _pct(rule, settings),
        "side": str(settings.resolution_max or "?"),
        "res_w": str(res[0]) if res else "?",
        "res_h": str(res[1]) if res else "?",
        "dim": str(settings.network_dim or "?"),
        "blocks": str(_blocks_to_swap(context, settings.model_family)),
        "alloc_var": settings.alloc_conf_var or DEFAULT_ALLOC_VAR,
        "file": PurePath(source.file).name if source and source.file else "the config file",
        "trainer_name": TRAINER_NAMES.get(settings.trainer, settings.trainer),
        # 8-bit moments: a quarter of fp32 ones (bitsandbytes: "75% less memory"), half of bf16 ones.
        "state_saving": {32: "75", 16: "50"}.get(settings.optimizer_state_bits or 0, "50-75"),
    }


# How an unreadable setting is named to the user; "" for context the user cannot "already have set".
_READABLE = {
    "alloc_expandable": "the allocator configuration",
    "alloc_max_split": "the allocator configuration",
    "optimizer_adam_unquantized": "the optimizer",
    "resolution_max": "the resolution",
    "offloading": "the offload settings",
    "torch_version": "",
    "trainer": "",
}


def _fill(text: str, variables: Mapping[str, str]) -> str:
    return Template(text).safe_substitute(variables)


# --- building suggestions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Candidate:
    score: float
    order: int
    change: str
    why: str
    saving: str
    source: str
    rule_id: str
    syntax_key: str | None = None
    edit: ConfigEdit | str | None = None


def _source_text(rule: Rule, book: RuleBook, trainer: str, uses_trainer_syntax: bool) -> str:
    syntax = book.syntax_source(trainer) if uses_trainer_syntax else None
    return f"{rule.source}; syntax: {syntax}" if syntax else rule.source


def _from_rule(
    found: Match, kind: str, settings: TrainerSettings, *, context: Mapping[str, object], book: RuleBook, order: int
) -> _Candidate | None:
    rule = found.rule
    source = settings.source_of(rule.setting) if rule.setting else None
    variants = tuple(v for v in ((source.kind if source else None), settings.config_format) if v)
    key = rule.syntax_key(settings.trainer, variants)
    if key is None:
        return None  # no verified spelling for this trainer: never invent a flag
    variables = _variables(rule, settings, context)
    change = _fill(dict(rule.syntax)[key], variables)
    how = rule.apply_for(key)
    edit = how.filled(variables, source.file if source else None) if isinstance(how, ConfigEdit) else how
    if settings.trainer == kohya.ID and source is not None and source.kind == "config" and source.file:
        change += f"  (on the command line; it overrides {PurePath(source.file).name})"
    why = _fill(rule.why, variables)
    unread = sorted({_READABLE.get(name, name.replace("_", " ")) for name in found.unknown_settings} - {""})
    if unread:
        why += f" vramwatch could not read {' or '.join(unread)}: skip this if it is already set."
    uses_trainer_syntax = settings.trainer in dict(rule.syntax) or any(
        key.startswith(f"{settings.trainer}@") for key, _ in rule.syntax
    )
    return _Candidate(
        score(found, kind, settings),
        order,
        change,
        why,
        _fill(rule.saving, variables),
        _source_text(rule, book, settings.trainer, uses_trainer_syntax),
        rule.id,
        key,
        edit,
    )


def _holder_label(holder: Mapping[str, object]) -> str:
    name = str(holder.get("name") or "process")
    parts = [f"pid {holder['pid']}"] if holder.get("pid") is not None else []
    if holder.get("user"):
        parts.append(str(holder["user"]))
    return f"{name} ({', '.join(parts)})" if parts else name


def _holders(context: Mapping[str, object], key: str) -> list[Mapping[str, object]]:
    raw = context.get(key)
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes):
        return []
    holders = [h for h in raw if isinstance(h, Mapping)]

    def held(h: Mapping[str, object]) -> int:
        used = h.get("used_bytes")
        return used if isinstance(used, int) and not isinstance(used, bool) else -1

    return sorted(holders, key=held, reverse=True)[:MAX_HOLDERS]


def _from_dynamic(
    rule: Rule, kind: str, settings: TrainerSettings, *, context: Mapping[str, object], order: int
) -> list[_Candidate]:
    key = rule.syntax_key(settings.trainer, ())
    if rule.dynamic is None or key is None:  # parse_rules guarantees both for dynamic rules
        return []
    template = dict(rule.syntax)[key]
    out = []
    for i, holder in enumerate(_holders(context, rule.dynamic)):
        used = holder.get("used_bytes")
        held = gib(used if isinstance(used, int) and not isinstance(used, bool) else None)
        variables = {
            **_variables(rule, settings, context),
            "holder": _holder_label(holder),
            "holder_gib": held,
            "pid": str(holder.get("pid", "?")),
        }
        # Holders are sorted by memory held; the tiny decrement keeps that order within the rule.
        out.append(
            _Candidate(
                rule.weight_for(kind) - i * 1e-3,
                order,
                _fill(template, variables),
                _fill(rule.why, variables),
                _fill(rule.saving, variables),
                rule.source,
                rule.id,
                key,
            )
        )
    return out


def advise(
    settings: TrainerSettings,
    finding_kind: str,
    *,
    context: Mapping[str, object] | None = None,
    rules: RuleBook | None = None,
) -> Advice:
    """Ranked changes for a finding, only those this run has not applied, in the trainer's own syntax.

    `context` may hold `torch_version` (str), `gpu_total_bytes` (int), and for `contention` / stale holders
    `others` / `stale`: sequences of mappings with `pid`, `name`, `user`, `used_bytes`. Raises ConfigError
    for a kind no advice is written for (`rules.ADVICE_KINDS`).
    """
    if finding_kind not in ADVICE_KINDS:
        raise ConfigError(f"unknown advice kind {finding_kind!r}; expected one of {', '.join(sorted(ADVICE_KINDS))}")
    book = rules or default_rules()
    ctx: Mapping[str, object] = context or {}
    candidates: list[_Candidate] = []
    for order, rule in enumerate(book.rules):
        if finding_kind not in rule.kinds:
            continue
        if rule.dynamic is not None:
            candidates.extend(_from_dynamic(rule, finding_kind, settings, context=ctx, order=order))
            continue
        found = match(rule, settings, ctx)
        if found is not None:
            candidate = _from_rule(found, finding_kind, settings, context=ctx, book=book, order=order)
            if candidate is not None:
                candidates.append(candidate)
    candidates.sort(key=lambda c: (-c.score, c.order))
    suggestions = tuple(
        Suggestion(c.rule_id, c.change, c.why, c.saving, c.source, rank, c.syntax_key, c.edit)
        for rank, c in enumerate(candidates, start=1)
    )
    notes = [note.text for note in book.notes if finding_kind in note.kinds]
    if finding_kind == "contention" and not suggestions:
        notes.append("vramwatch was not told which other processes share this GPU.")
    notes.extend(settings.notes)
    return Advice(settings.trainer, settings, finding_kind, suggestions, tuple(dict.fromkeys(notes)))


def advise_process(
    meta: ProcessMeta,
    finding_kind: str,
    *,
    tree_argvs: Sequence[Sequence[str]] = (),
    env: Mapping[str, str] | None = None,
    context: Mapping[str, object] | None = None,
    read_file: ReadFile = read_text_file,
) -> Advice:
    """Recognise the process's trainer from what the inspector knows about it, then advise."""
    if meta.cmdline is None:
        settings = TrainerSettings(notes=("the process's command line could not be read",))
    else:
        settings = recognize(meta.cmdline, cwd=meta.cwd, tree_argvs=tree_argvs, env=env, read_file=read_file)
    return advise(settings, finding_kind, context=context)


def advise_cmdline(
    cmdline: str,
    finding_kind: str = "oom_forecast",
    cwd: str | None = None,
    *,
    context: Mapping[str, object] | None = None,
    read_file: ReadFile = read_text_file,
) -> Advice:
    """Advice for a command line typed by the user (`vramwatch advise --cmdline "..."`).

    Leading `VAR=value` words are taken as the environment (only the allow-listed variables are read);
    without them the environment is unknown.
    """
    try:
        words = shlex.split(cmdline)
    except ValueError as exc:
        raise ConfigError(f"--cmdline: cannot split the command line: {exc}") from exc
    env: dict[str, str] = {}
    while words and "=" in words[0] and words[0].split("=", 1)[0].isidentifier():
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    if not words:
        raise ConfigError("--cmdline: no command given")
    settings = recognize(words, cwd=cwd, env=env or None, read_file=read_file)
    return advise(settings, finding_kind, context=context)


# --- output --------------------------------------------------------------------------------------------


def render_text(advice: Advice, *, limit: int = 5) -> str:
    """Numbered, ranked suggestions for a terminal: the change on one line, expected saving and why below."""
    settings = advice.settings
    who = TRAINER_NAMES.get(advice.trainer, advice.trainer)
    if settings.script:
        who += f" ({settings.script})"
    lines = [f"{who}: advice for {advice.finding_kind}"]
    shown = advice.suggestions[: max(0, limit)]
    width = len(str(len(shown))) if shown else 1
    for suggestion in shown:
        lines.append(f"  {suggestion.rank:>{width}}. {suggestion.change}")
        pad = " " * (width + 4)
        lines.append(f"{pad}saves: {suggestion.expected_saving}")
        lines.append(f"{pad}why: {suggestion.why}")
    if not advice.suggestions:
        lines.append("  no change to suggest from what vramwatch could read")
    elif len(advice.suggestions) > len(shown):
        lines.append(f"  (+{len(advice.suggestions) - len(shown)} more)")
    for note in advice.notes:
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def advice_lines(advice: Advice, *, limit: int = 3) -> tuple[str, ...]:
    """One line per top suggestion (`1. change  [expected effect]`), the shape of `Finding.advice`."""
    return tuple(f"{s.rank}. {s.change}  [{s.expected_saving}]" for s in advice.suggestions[: max(0, limit)])


def holder_of(finding: Finding) -> dict[str, object]:
    """The `others` / `stale` context entry for a contention or stale_holder finding's process."""
    numbers = finding.numbers
    return {
        "pid": numbers.get("pid", finding.process.pid if finding.process else None),
        "name": finding.process_name,
        "user": numbers.get("user"),
        "used_bytes": numbers.get("used_bytes"),
    }


_HIDDEN = frozenset({"alloc_conf", "config_files", "sources", "notes"})


def advice_to_dict(advice: Advice) -> dict[str, Any]:
    """JSON-ready advice: settings as values and origins (file names only), no argv, no environment values."""
    settings = advice.settings
    known: dict[str, Any] = {}
    for name in TrainerSettings.__dataclass_fields__:
        value = getattr(settings, name)
        if name in _HIDDEN or value is None:
            continue
        known[name] = list(value) if isinstance(value, tuple) else value
    known["allocator"] = {
        "expandable_segments": settings.alloc_expandable,
        "max_split_size_mb": settings.alloc_max_split,
    }
    sources = {
        src.setting: {"from": src.kind, "detail": src.detail, "file": PurePath(src.file).name if src.file else None}
        for src in settings.sources
        if src.setting != "alloc_conf"
    }
    return {
        "trainer": advice.trainer,
        "trainer_name": TRAINER_NAMES.get(advice.trainer, advice.trainer),
        "script": settings.script,
        "finding_kind": advice.finding_kind,
        "settings": known,
        "sources": sources,
        "config_files": [PurePath(p).name for p in settings.config_files],
        "suggestions": [
            {
                "rank": s.rank,
                "rule_id": s.rule_id,
                "change": s.change,
                "why": s.why,
                "expected_saving": s.expected_saving,
                "source": s.source,
            }
            for s in advice.suggestions
        ],
        "notes": list(advice.notes),
    }


__all__ = [
    "Advice",
    "Suggestion",
    "advice_lines",
    "advice_to_dict",
    "advise",
    "advise_cmdline",
    "advise_process",
    "holder_of",
    "render_text",
]
