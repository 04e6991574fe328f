"""The advice rules as data: the shipped table is valid and sourced, and bad tables are refused clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
from vramwatch.advice import TrainerSettings, parse_rules
from vramwatch.advice.configcopy import ConfigEdit
from vramwatch.advice.rules import ADVICE_KINDS, default_rules, factor, match, version_tuple
from vramwatch.advice.trainers import REGISTRY
from vramwatch.errors import ConfigError

SETTINGS_KINDS = ("oom_forecast", "pressure", "probable_oom", "spike", "plateau")

_VALID = """
schema_version = 1
[[rule]]
id = "r"
kinds = ["pressure"]
when = [{ setting = "batch_size", op = "gt", value = 1 }]
weight = 10
why = "w"
saving = "s"
source = "src"
[rule.syntax]
kohya = "--x"
"""


def test_shipped_rules_load_and_every_rule_is_sourced() -> None:
    """rules.toml parses, and every rule names a source and the finding kinds it answers."""
    book = default_rules()
    assert len(book.rules) >= 15
    for rule in book.rules:
        assert rule.source.strip()
        assert rule.kinds <= ADVICE_KINDS
        assert rule.why.strip()
        assert rule.saving.strip()


def test_every_trainer_spelling_has_a_syntax_source() -> None:
    """Each trainer a rule speaks for appears in [syntax_sources], so its flags can be traced."""
    book = default_rules()
    trainers = {key.split("@")[0] for rule in book.rules for key, _ in rule.syntax} - {"default"}
    assert trainers <= {name for name, _ in book.syntax_sources}


@pytest.mark.parametrize("kind", SETTINGS_KINDS)
def test_memory_setting_kinds_share_the_core_rules(kind: str) -> None:
    """Near-capacity kinds all offer checkpointing, batch, resolution, precision and 8-bit optimizer."""
    ids = {rule.id for rule in default_rules().rules if kind in rule.kinds}
    assert {
        "gradient_checkpointing",
        "batch_to_accumulation",
        "resolution_512",
        "mixed_precision_bf16",
        "optimizer_8bit",
    } <= ids


def test_growth_rules_are_bug_hunting_not_memory_settings() -> None:
    """A leak is answered with what to look for; no memory-setting rule answers `growth`."""
    ids = {rule.id for rule in default_rules().rules if "growth" in rule.kinds}
    assert "leak_loss_accumulation" in ids
    assert not ids & {"gradient_checkpointing", "batch_to_accumulation", "resolution_512", "mixed_precision_bf16"}


@pytest.mark.parametrize(
    ("replace", "by", "message"),
    [
        pytest.param('setting = "batch_size"', 'setting = "batchsize"', "unknown setting 'batchsize'", id="setting"),
        pytest.param('op = "gt"', 'op = "bigger"', "unknown op 'bigger'", id="op"),
        pytest.param('kinds = ["pressure"]', 'kinds = ["oom"]', "unknown advice kinds", id="kind"),
        pytest.param("weight = 10", "weight = -1", "'weight' must be a positive number", id="weight"),
        pytest.param('kohya = "--x"', 'kohyaa = "--x"', "syntax key 'kohyaa'", id="trainer"),
        pytest.param('source = "src"', "", "'source' must be a non-empty string", id="source"),
        pytest.param("schema_version = 1", "schema_version = 2", "schema_version", id="schema"),
        pytest.param("[[rule]]", "[[rule]", "cannot parse TOML", id="toml"),
    ],
)
def test_bad_rule_tables_are_refused_with_the_rule_named(replace: str, by: str, message: str) -> None:
    """A typo in the rules is a ConfigError that says what is wrong, not a rule that silently never fires."""
    assert parse_rules(_VALID).rules[0].id == "r"
    with pytest.raises(ConfigError, match=message):
        parse_rules(_VALID.replace(replace, by))


@pytest.mark.parametrize(
    ("apply", "message"),
    [
        pytest.param("kohyaa = { a = 1 }", "apply key 'kohyaa' has no syntax entry", id="no-syntax"),
        pytest.param('kohya = { "a..b" = 1 }', "must be a dotted config key", id="bad-key"),
        pytest.param("kohya = { a = { b = 1 } }", "must be a dotted config key", id="table-value"),
        pytest.param('kohya = { "--x" = false }', "flag --x takes true", id="flag-false"),
        pytest.param('kohya = { "--x" = true }', "sets no config key", id="flags-only"),
        pytest.param('kohya = ""', "non-empty string", id="empty-reason"),
        pytest.param("kohya = 3", "must be a non-empty table", id="number"),
    ],
)
def test_bad_apply_tables_are_refused_with_the_rule_named(apply: str, message: str) -> None:
    """A change-as-data entry that is not a config key, a flag or a reason is a ConfigError naming the rule."""
    assert parse_rules(_VALID + "[rule.apply]\nkohya = { a = 1 }\n").rules[0].apply == (
        ("kohya", ConfigEdit("kohya", (("a", 1),))),
    )
    with pytest.raises(ConfigError, match=f"rule 'r'.*{message}"):
        parse_rules(_VALID + "[rule.apply]\n" + apply + "\n")


def test_every_config_file_spelling_has_its_change_as_data() -> None:
    """A rule spelt for a config file a trainer can copy has an apply entry (or says why not); no other key has one."""
    copyable = {key for t in REGISTRY if t.config_copy is not None for key in t.config_copy.keys}
    never = {key for t in REGISTRY if t.config_copy is not None for key, _ in t.config_copy.not_copied}
    assert copyable
    for rule in default_rules().rules:
        spelt = {key for key, _ in rule.syntax}
        applied = {key for key, _ in rule.apply}
        assert spelt & copyable == applied & copyable, rule.id
        assert applied <= copyable, rule.id
        assert not applied & never, rule.id


def _words(value: object) -> str:
    """A value as a rule's syntax text writes it: true, 512, "ON" (unquoted is fine), [512, 512]."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_words(v) for v in value) + "]"
    return str(value)


def test_each_change_as_data_says_what_its_syntax_says() -> None:
    """Every key, value and flag an apply entry writes appears in the same key's syntax text: one change, said twice."""
    for rule in default_rules().rules:
        syntax = dict(rule.syntax)
        for key, edit in rule.apply:
            if isinstance(edit, str):
                continue
            text = syntax[key]
            for name, value in edit.values:
                assert name.split(".")[-1].removesuffix("[]") in text, (rule.id, key, name)
                assert _words(value) in text, (rule.id, key, name, value)
            for flag, value in edit.flags:
                assert flag in text, (rule.id, key, flag)
                assert value is None or value in text, (rule.id, key, flag, value)


def test_duplicate_rule_ids_are_refused() -> None:
    """Two rules with one id would make ranks and docs ambiguous."""
    with pytest.raises(ConfigError, match="duplicate id"):
        parse_rules(_VALID + _VALID.split("schema_version = 1", 1)[1])


@pytest.mark.parametrize(
    ("settings", "unknown", "fires", "unverified"),
    [
        pytest.param(TrainerSettings(batch_size=4), "match", True, False, id="known-true"),
        pytest.param(TrainerSettings(batch_size=1), "match", False, False, id="known-false"),
        pytest.param(TrainerSettings(), "match", True, True, id="unknown-match"),
        pytest.param(TrainerSettings(), "skip", False, False, id="unknown-skip"),
    ],
)
def test_condition_on_unknown_settings(settings: TrainerSettings, unknown: str, fires: bool, unverified: bool) -> None:
    """An unreadable setting either matches (marked unverified) or skips the rule, as the rule says."""
    book = parse_rules(_VALID.replace("value = 1 }", f'value = 1, unknown = "{unknown}" }}'))
    found = match(book.rules[0], settings, {})
    assert (found is not None) == fires
    if found is not None:
        assert found.unverified is unverified


def test_torch_version_conditions() -> None:
    """version_ge / version_lt compare dotted versions, ignoring local tags like +cu121."""
    book = default_rules()
    expandable = next(r for r in book.rules if r.id == "allocator_expandable_segments")
    max_split = next(r for r in book.rules if r.id == "allocator_max_split_size")
    unset = TrainerSettings(alloc_conf="")
    assert match(expandable, unset, {"torch_version": "2.3.1+cu121"}) is not None
    assert match(max_split, unset, {"torch_version": "2.3.1+cu121"}) is None
    assert match(expandable, unset, {"torch_version": "2.0.1"}) is None
    assert match(max_split, unset, {"torch_version": "2.0.1"}) is not None
    assert version_tuple("2.10.0a0") == (2, 10, 0)


@pytest.mark.parametrize(
    ("batch", "expected"),
    [pytest.param(2, 0.5 / 0.75, id="2"), pytest.param(4, 1.0, id="4"), pytest.param(16, 1.0, id="16-capped")],
)
def test_batch_factor_scales_with_what_can_still_be_saved(batch: int, expected: float) -> None:
    """Batch 2 -> 1 saves half the activations, 4 -> 1 three quarters (the guide's reference, factor 1)."""
    rule = next(r for r in default_rules().rules if r.id == "batch_to_accumulation")
    assert factor(rule, TrainerSettings(batch_size=batch)) == pytest.approx(expected)


def test_docs_list_every_rule() -> None:
    """docs/advice.md renders the rules table: a rule added to rules.toml must be documented there."""
    doc = (Path(__file__).parent.parent / "docs" / "advice.md").read_text(encoding="utf-8")
    missing = [rule.id for rule in default_rules().rules if f"`{rule.id}`" not in doc]
    assert missing == []
