"""A change written into a copy of a config file: keys set where the rules say, the rest of the file kept as it was."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from vramwatch.advice.configcopy import ConfigEdit, ConfigTarget, CopyError, copy_text, set_key

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def _target(fmt: str, **fields: Any) -> ConfigTarget:
    return ConfigTarget(Path(f"/nowhere/config.{fmt}"), fmt, lambda copy: ((str(copy),), {}), **fields)


@pytest.mark.parametrize(
    ("doc", "key", "value", "spellings", "expected"),
    [
        pytest.param({"train": {"lr": 1}}, "train.batch_size", 1, ("",),
                     (["train.batch_size"], {"train": {"lr": 1, "batch_size": 1}}), id="a-new-last-key"),
        pytest.param({"a": {"b": 4}}, "a.b", 1, ("",), (["a.b"], {"a": {"b": 1}}), id="an-existing-key"),
        pytest.param({"datasets": [{"r": 1}, {"r": 2, "x": 0}]}, "datasets[].r", [512], ("",),
                     (["datasets[0].r", "datasets[1].r"], {"datasets": [{"r": [512]}, {"r": [512], "x": 0}]}),
                     id="every-item-of-a-list"),
        pytest.param({"--batch": 4}, "batch", 1, ("", "--"), (["--batch"], {"--batch": 1}), id="the-spelling-in-use"),
        pytest.param({"--b": 4, "b": 4}, "b", 1, ("", "--"), (["b", "--b"], {"--b": 1, "b": 1}), id="both-spellings"),
        pytest.param({}, "b", 1, ("", "--"), (["b"], {"b": 1}), id="a-new-key-spelt-plainly"),
    ],
)  # fmt: skip
def test_a_key_is_set_where_it_is_spelt(doc, key, value, spellings, expected) -> None:
    """A dotted key sets its last name (added where missing), in every item for `[]`, under each spelling in use."""
    paths, after = expected
    assert set_key(doc, key, value, spellings) == paths
    assert doc == after


@pytest.mark.parametrize(
    ("doc", "key", "message"),
    [
        pytest.param({}, "train.batch_size", "no train in the file", id="no-section"),
        pytest.param({"train": 3}, "train.batch_size", "train is not a table", id="not-a-table"),
        pytest.param({}, "datasets[].r", "datasets is not a list with items", id="no-list"),
        pytest.param({"datasets": []}, "datasets[].r", "not a list with items", id="empty-list"),
        pytest.param({"datasets": ["x"]}, "datasets[].r", "not tables", id="items-not-tables"),
    ],
)
def test_a_change_that_would_invent_a_section_is_refused(doc, key, message) -> None:
    """A missing section or dataset is never created: the copy would no longer be the user's run."""
    with pytest.raises(CopyError, match=message):
        set_key(doc, key, 1)


def test_a_lone_placeholder_stays_a_number_and_text_is_filled() -> None:
    """`$new_accum` alone becomes the integer 4; placeholders in longer text fill it; flags carry text."""
    edit = ConfigEdit(
        "k", (("a", "$new_accum"), ("b", "x$new_accum"), ("c", ["$new_accum", 1])), (("--n", "$new_accum"),)
    )
    filled = edit.filled({"new_accum": "4"}, "/f.toml")
    assert filled.values == (("a", 4), ("b", "x4"), ("c", [4, 1]))
    assert filled.flags == (("--n", "4"),)
    assert filled.file == "/f.toml"
    assert ConfigEdit("kohya@dataset_config", ()).variant == "dataset_config"
    assert ConfigEdit("ai-toolkit", ()).variant is None


_YAML = """\
job: extension
config:
  name: my_lora  # a comment, lost in the copy
  process:
    - type: sd_trainer
      train:
        lr: 1e-4
        batch_size: 4
        gradient_checkpointing: false
      datasets:
        - folder_path: ${DATA}/imgs
          resolution: [1024]
"""


def _load(text: str, fmt: str) -> dict[str, Any]:
    if fmt == "yaml":
        return yaml.safe_load(text)
    return json.loads(text) if fmt == "json" else tomllib.loads(text)


@pytest.mark.parametrize(
    ("fmt", "text", "root"),
    [
        pytest.param("yaml", _YAML, ("config", "process", 0), id="yaml"),
        pytest.param("json", json.dumps({"config": {"process": [{"train": {"batch_size": 4}, "n": 1.5}]}}),
                     ("config", "process", 0), id="json"),
        pytest.param("toml", '[general]\nbatch_size = 4\n\n[train]\nbatch_size = 4\nlr = 1e-4\n', (), id="toml"),
    ],
)  # fmt: skip
def test_the_copy_is_the_same_format_with_the_change_and_every_other_value_kept(fmt, text, root) -> None:
    """Parsed back, the copy differs from the original only in the keys set, whatever the format."""
    edit = ConfigEdit("k", (("train.batch_size", 1), ("train.gradient_accumulation_steps", 4)))
    written, done = copy_text(text, _target(fmt, root=root), edit)
    before, after = _load(text, fmt), _load(written, fmt)
    node = after
    for part in root:
        node = node[part]
    assert node["train"]["batch_size"] == 1
    assert node["train"]["gradient_accumulation_steps"] == 4
    assert done == (("train.batch_size", 1), ("train.gradient_accumulation_steps", 4))
    node["train"]["batch_size"] = 4
    del node["train"]["gradient_accumulation_steps"]
    if fmt == "yaml":  # PyYAML reads 1e-4 as a string; ai-toolkit's loader, and so the copy, as a float
        before["config"]["process"][0]["train"]["lr"] = 1e-4
    assert after == before


def test_a_yaml_exponent_float_stays_a_float_for_ai_toolkit() -> None:
    """`lr: 1e-4` is a float to ai-toolkit's loader; the copy writes it so that any YAML loader reads a float."""
    written, _ = copy_text(_YAML, _target("yaml", root=("config", "process", 0)), ConfigEdit("k", (("train.x", 1),)))
    assert yaml.safe_load(written)["config"]["process"][0]["train"]["lr"] == pytest.approx(1e-4)


def test_environment_references_are_filled_first_where_the_trainer_does() -> None:
    """ai-toolkit replaces ${VAR} in the text before parsing: the copy holds the value, an unknown one stays."""
    target = _target("yaml", root=("config", "process", 0), expand_env=True)
    written, _ = copy_text(
        _YAML.replace("lr: 1e-4", "lr: ${LR}"), target, ConfigEdit("k", (("train.x", 1),)), {"DATA": "/d"}
    )
    job = yaml.safe_load(written)["config"]["process"][0]
    assert job["datasets"][0]["folder_path"] == "/d/imgs"
    assert job["train"]["lr"] == "${LR}"


def test_an_adjustment_is_made_and_reported_after_the_change() -> None:
    """A target's `adjust` writes what the original's place implied, and says what it set."""

    def adjust(doc: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
        doc["data_backend_config"] = "config/multidatabackend.json"
        return (("data_backend_config", "config/multidatabackend.json"),)

    written, done = copy_text(
        '{"resolution": 1024}', _target("json", adjust=adjust), ConfigEdit("k", (("resolution", 512),))
    )
    assert json.loads(written) == {"resolution": 512, "data_backend_config": "config/multidatabackend.json"}
    assert done == (("resolution", 512), ("data_backend_config", "config/multidatabackend.json"))


@pytest.mark.parametrize(
    ("fmt", "text", "root", "message"),
    [
        pytest.param("yaml", "a: [", (), "cannot parse YAML", id="broken-yaml"),
        pytest.param("yaml", "- 1\n", (), "not a table", id="yaml-list"),
        pytest.param("json", "{", (), "cannot parse JSON", id="broken-json"),
        pytest.param("yaml", "config: {process: []}\n", ("config", "process", 0), "no config.process.0", id="no-root"),
    ],
)
def test_a_file_that_cannot_take_the_change_is_refused(fmt, text, root, message) -> None:
    """A broken file or one without the trainer's root is a CopyError saying why, never a half-written copy."""
    with pytest.raises(CopyError, match=message):
        copy_text(text, _target(fmt, root=root), ConfigEdit("k", (("a", 1),)))
