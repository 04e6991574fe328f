"""`probe --try` on a change that lives in a config file: each trainer's file copied with the change, the
command pointed at the copy, the original untouched, and the copy gone after the test run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from vramwatch.advice import Suggestion, TrainerSettings, advise, recognize
from vramwatch.probing import ConfigChange, config_change, written_copy

Setup = Callable[[Path], tuple[list[str], dict[str, str], Path]]  # tmp dir -> (argv, env, the config file)


def _ai_toolkit(tmp: Path) -> tuple[list[str], dict[str, str], Path]:
    job = tmp / "job.yaml"
    job.write_text(
        "job: extension\nconfig:\n  name: x\n  process:\n    - type: sd_trainer\n"
        "      train: {batch_size: 4, gradient_checkpointing: false, dtype: fp32, lr: 1e-4}\n"
        "      model: {name_or_path: black-forest-labs/FLUX.1-dev, is_flux: true}\n"
        "      datasets:\n        - {folder_path: imgs, resolution: [1024, 768]}\n        - {folder_path: more}\n",
        encoding="utf-8",
    )
    return ["python", "ai-toolkit/run.py", "job.yaml"], {}, job


def _onetrainer(tmp: Path) -> tuple[list[str], dict[str, str], Path]:
    config = tmp / "cfg.json"
    config.write_text(
        json.dumps({"batch_size": 4, "gradient_checkpointing": "OFF", "train_dtype": "FLOAT_32", "resolution": "1024"}),
        encoding="utf-8",
    )
    return ["python", "scripts/train.py", "--config-path=cfg.json"], {}, config


def _onetrainer_parts(tmp: Path) -> tuple[list[str], dict[str, str], Path]:
    config = tmp / "cfg.json"
    part = {"train": True, "weight_dtype": "BFLOAT_16", "gradient_checkpointing": False, "offload_fraction": 0.0}
    data = {"__version": 11, "model_type": "FLUX_DEV_1", "batch_size": 2, "transformer": part}
    config.write_text(json.dumps(data), encoding="utf-8")
    return ["python", "scripts/train.py", "--config-path=cfg.json"], {}, config


def _simpletuner(fmt: str, env_dir: str = "") -> Setup:
    def setup(tmp: Path) -> tuple[list[str], dict[str, str], Path]:
        folder = tmp / "config" / env_dir if env_dir else tmp / "config"
        folder.mkdir(parents=True)
        path = folder / f"config.{fmt}"
        if fmt == "json":
            path.write_text(json.dumps({"--train_batch_size": 4, "gradient_checkpointing": False, "resolution": 1024}))
        else:
            path.write_text("train_batch_size = 4\nresolution = 1024\n", encoding="utf-8")
        # Its one dataset sets no resolution of its own: the main config's applies, and is the one to change.
        (folder / "multidatabackend.json").write_text(json.dumps([{"id": "imgs", "instance_data_dir": "imgs"}]))
        env = {"SIMPLETUNER_CONFIG_BACKEND": fmt, **({"SIMPLETUNER_ENVIRONMENT": env_dir} if env_dir else {})}
        return ["python", "train.py"], env, path

    return setup


def _kohya(fmt: str) -> Setup:
    def setup(tmp: Path) -> tuple[list[str], dict[str, str], Path]:
        path = tmp / f"ds.{fmt}"
        data = {"general": {"batch_size": 4}, "datasets": [{"resolution": 1024, "subsets": [{"image_dir": "imgs"}]}]}
        if fmt == "json":
            path.write_text(json.dumps(data), encoding="utf-8")
        else:
            path.write_text(
                "[general]\nbatch_size = 4\n\n[[datasets]]\nresolution = 1024\n\n"
                '[[datasets.subsets]]\nimage_dir = "imgs"\n',
                encoding="utf-8",
            )
        return ["accelerate", "launch", "flux_train_network.py", "--dataset_config", path.name, "--lr", "1"], {}, path

    return setup


@pytest.mark.parametrize(
    ("setup", "rule", "written", "read_back"),
    [
        pytest.param(_ai_toolkit, "gradient_checkpointing", {"train.gradient_checkpointing": True},
                     {"gradient_checkpointing": True}, id="ai-toolkit-yaml-checkpointing"),
        pytest.param(_ai_toolkit, "batch_to_accumulation",
                     {"train.batch_size": 1, "train.gradient_accumulation_steps": 4},
                     {"batch_size": 1, "grad_accum": 4}, id="ai-toolkit-yaml-batch"),
        pytest.param(_ai_toolkit, "resolution_512", {"datasets[0].resolution": [512], "datasets[1].resolution": [512]},
                     {"resolution": (512, 512)}, id="ai-toolkit-yaml-every-dataset"),
        pytest.param(_onetrainer, "gradient_checkpointing", {"gradient_checkpointing": "ON"},
                     {"gradient_checkpointing": True}, id="onetrainer-json-checkpointing"),
        pytest.param(_onetrainer, "mixed_precision_bf16", {"train_dtype": "BFLOAT_16"}, {"mixed_precision": "bf16"},
                     id="onetrainer-json-precision"),
        pytest.param(_onetrainer_parts, "gradient_checkpointing", {"transformer.gradient_checkpointing": True},
                     {"gradient_checkpointing": True}, id="onetrainer-json-per-part-checkpointing"),
        pytest.param(_simpletuner("json"), "batch_to_accumulation",
                     {"--train_batch_size": 1, "gradient_accumulation_steps": 4,
                      "data_backend_config": "config/multidatabackend.json"},
                     {"batch_size": 1, "grad_accum": 4}, id="simpletuner-json-batch"),
        pytest.param(_simpletuner("toml", "flux"), "resolution_512",
                     {"resolution": 512, "data_backend_config": "config/flux/multidatabackend.json"},
                     {"resolution": (512, 512)}, id="simpletuner-toml-in-an-environment"),
        pytest.param(_kohya("toml"), "batch_to_accumulation", {"datasets[0].batch_size": 1},
                     {"batch_size": 1, "grad_accum": 4}, id="kohya-dataset-toml-batch"),
        pytest.param(_kohya("json"), "resolution_512", {"datasets[0].resolution": [512, 512]},
                     {"resolution": (512, 512)}, id="kohya-dataset-json-resolution"),
    ],
)  # fmt: skip
def test_a_config_change_runs_on_a_copy_and_leaves_the_original_alone(
    tmp_path: Path, setup: Setup, rule: str, written: dict[str, Any], read_back: dict[str, Any]
) -> None:
    """The copy holds the change, the command reads the copy (its settings say so), the original is byte-identical,
    and the copy is gone afterwards."""
    argv, env, original = setup(tmp_path)
    before = original.read_bytes()
    settings = recognize(argv, cwd=str(tmp_path), env=env)
    change = config_change(argv, _suggestion(settings, rule), settings, cwd=str(tmp_path), env=env)
    assert isinstance(change, ConfigChange), change
    with written_copy(change) as made:
        assert not isinstance(made, str), made
        new_argv, variables, copied = made
        copy = Path(copied.copy)
        assert copy.is_file()
        assert copy.name == original.name
        assert copied.original == str(original)
        assert dict(copied.set) == written
        assert original.read_bytes() == before
        again = recognize(new_argv, cwd=str(tmp_path), env={**env, **variables})
        assert str(copy) in again.config_files
        assert str(original) not in again.config_files
        assert {name: getattr(again, name) for name in read_back} == read_back
    assert not copy.exists()
    assert not copy.parent.exists()
    assert original.read_bytes() == before


def _suggestion(settings: TrainerSettings, rule: str) -> Suggestion:
    return next(s for s in advise(settings, "spike").suggestions if s.rule_id == rule)


def test_simpletuners_copy_sits_beside_its_config_and_is_named_by_its_environment(tmp_path: Path) -> None:
    """SimpleTuner finds only config/<env>/config.json: the copy is in a hidden directory there, named by
    SIMPLETUNER_ENVIRONMENT; the others' copies go to a temporary directory outside the user's tree."""
    argv, env, original = _simpletuner("json")(tmp_path)
    settings = recognize(argv, cwd=str(tmp_path), env=env)
    change = config_change(argv, _suggestion(settings, "gradient_checkpointing"), settings, cwd=str(tmp_path), env=env)
    assert isinstance(change, ConfigChange)
    with written_copy(change) as made:
        assert not isinstance(made, str), made
        new_argv, variables, copied = made
        assert new_argv == tuple(argv)
        assert Path(copied.copy).parent.parent == original.parent
        assert Path(copied.copy).parent.name.startswith(".vramwatch-try-")
        assert variables == {"SIMPLETUNER_ENVIRONMENT": Path(copied.copy).parent.name}
    argv, env, original = _kohya("toml")(tmp_path)
    settings = recognize(argv, cwd=str(tmp_path), env=env)
    change = config_change(argv, _suggestion(settings, "batch_to_accumulation"), settings, cwd=str(tmp_path), env=env)
    assert isinstance(change, ConfigChange)
    with written_copy(change) as made:
        assert not isinstance(made, str), made
        new_argv, _, copied = made
        assert not Path(copied.copy).is_relative_to(tmp_path)
        assert new_argv[:3] == ("accelerate", "launch", "flux_train_network.py")
        assert new_argv[3:] == ("--dataset_config", copied.copy, "--lr", "1", "--gradient_accumulation_steps", "4")


def _env_file(tmp: Path) -> tuple[list[str], dict[str, str], Path]:
    (tmp / "config").mkdir()
    path = tmp / "config" / "config.env"
    path.write_text("TRAIN_BATCH_SIZE=4\nUSE_GRADIENT_CHECKPOINTING=false\n", encoding="utf-8")
    return ["python", "train.py"], {"SIMPLETUNER_CONFIG_BACKEND": "env"}, path


def _named_environment(tmp: Path) -> tuple[list[str], dict[str, str], Path]:
    argv, env, path = _simpletuner("json")(tmp)
    return [*argv, "env=other"], env, path


def _onetrainer_adamw(tmp: Path) -> tuple[list[str], dict[str, str], Path]:
    argv, env, path = _onetrainer(tmp)
    path.write_text(json.dumps({**json.loads(path.read_text()), "optimizer": {"optimizer": "ADAMW"}}))
    return argv, env, path


def _no_datasets(tmp: Path) -> tuple[list[str], dict[str, str], Path]:
    (tmp / "ds.toml").write_text("[general]\nbatch_size = 4\n", encoding="utf-8")
    return ["python", "flux_train_network.py", "--dataset_config", "ds.toml"], {}, tmp / "ds.toml"


@pytest.mark.parametrize(
    ("setup", "rule", "why"),
    [
        pytest.param(_env_file, "gradient_checkpointing", "config.env is not rewritten", id="simpletuner-env-file"),
        pytest.param(_named_environment, "gradient_checkpointing", "names its environment", id="env-in-the-argv"),
        pytest.param(_onetrainer_adamw, "optimizer_8bit", "the name alone is not the whole change", id="rules-say"),
        pytest.param(_no_datasets, "batch_to_accumulation", "datasets is not a list", id="nowhere-to-write-it"),
    ],
)  # fmt: skip
def test_a_config_change_that_cannot_be_copied_is_not_tried_and_says_why(
    tmp_path: Path, setup: Setup, rule: str, why: str
) -> None:
    """A config file's change is tried only through a copy: config.env lines are not set as variables, and a
    change the file cannot take is passed over with its reason."""
    argv, env, _ = setup(tmp_path)
    settings = recognize(argv, cwd=str(tmp_path), env=env)
    change = config_change(argv, _suggestion(settings, rule), settings, cwd=str(tmp_path), env=env)
    assert isinstance(change, str)
    assert why in change


def test_a_flag_or_variable_change_is_not_a_config_files() -> None:
    """Changes spelt as flags (kohya's --config_file is overridden by them) or variables are left to `applied`."""
    settings = recognize(["python", "flux_train_network.py", "--train_batch_size", "4"], cwd="/")
    for s in advise(settings, "spike").suggestions:
        assert config_change(["python", "flux_train_network.py"], s, settings, cwd="/", env={}) is None
