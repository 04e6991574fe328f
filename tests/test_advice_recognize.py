"""Trainer recognition: from command lines, process trees, config files and the environment to settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vramwatch.advice import TrainerSettings, advise, recognize
from vramwatch.advice.argv import parse_flags, split_invocation, to_bool
from vramwatch.advice.configfile import MAX_CONFIG_BYTES, parse_env_file, read_text_file
from vramwatch.environ import filter_env

DATA = Path(__file__).parent / "data" / "advice"


def _no_files(_path: Path) -> str | None:
    return None


# (id, argv, cwd below DATA or None, tree argvs, env, expected trainer, expected script)
RECOGNITION = [
    (
        "kohya-flux-accelerate",
        ["/venv/bin/python", "-u", "flux_train_network.py", "--config_file", "flux_lora.toml"],
        "kohya",
        [["accelerate", "launch", "--mixed_precision", "bf16", "flux_train_network.py", "--config_file", "x"]],
        None,
        "kohya",
        "flux_train_network.py",
    ),
    (
        "kohya-sdxl-path",
        ["python", "sd-scripts/sdxl_train_network.py", "--train_batch_size", "2"],
        None,
        [],
        None,
        "kohya",
        "sdxl_train_network.py",
    ),
    ("kohya-sd3", ["python", "sd3_train_network.py"], None, [], None, "kohya", "sd3_train_network.py"),
    ("kohya-flux-full", ["python3.11", "flux_train.py"], None, [], None, "kohya", "flux_train.py"),
    ("kohya-sd1", ["accelerate", "launch", "train_network.py"], None, [], None, "kohya", "train_network.py"),
    (
        "diffusers-flux",
        ["accelerate", "launch", "train_dreambooth_lora_flux.py", "--use_8bit_adam"],
        None,
        [],
        None,
        "diffusers",
        "train_dreambooth_lora_flux.py",
    ),
    (
        "diffusers-sdxl",
        ["python", "examples/dreambooth/train_dreambooth_lora_sdxl.py"],
        None,
        [],
        None,
        "diffusers",
        "train_dreambooth_lora_sdxl.py",
    ),
    (
        "diffusers-t2i-lora",
        ["python", "train_text_to_image_lora.py"],
        None,
        [],
        None,
        "diffusers",
        "train_text_to_image_lora.py",
    ),
    (
        "ai-toolkit",
        ["python", "run.py", "config/flux_lora_24gb.yaml"],
        "ai-toolkit",
        [],
        None,
        "ai-toolkit",
        "run.py",
    ),
    (
        "onetrainer",
        ["python", "scripts/train.py", "--config-path", "flux_lora.json"],
        "onetrainer",
        [],
        None,
        "onetrainer",
        "train.py",
    ),
    (
        "simpletuner-json",
        ["python", "train.py"],
        "simpletuner_json",
        [["bash", "train.sh"]],
        {"SIMPLETUNER_CONFIG_BACKEND": "json"},
        "simpletuner",
        "train.py",
    ),
    (
        "simpletuner-env",
        ["python", "train.py"],
        "simpletuner_env",
        [],
        {"SIMPLETUNER_CONFIG_BACKEND": "env"},
        "simpletuner",
        "train.py",
    ),
    (
        "transformers",
        ["python", "run_clm.py", "--per_device_train_batch_size", "8", "--output_dir", "out"],
        None,
        [],
        None,
        "transformers",
        "run_clm.py",
    ),
    ("trl-module", ["python", "-m", "trl.scripts.sft"], None, [], None, "transformers", "trl.scripts.sft"),
    ("lightning-module", ["python", "-m", "lightning", "run", "model"], None, [], None, "lightning", "lightning"),
    (
        "lightning-cli",
        ["python", "main.py", "fit", "--trainer.precision", "bf16-mixed"],
        None,
        [],
        None,
        "lightning",
        "main.py",
    ),
    ("plain-pytorch", ["python", "my_train.py", "--batch-size", "16"], None, [], None, "pytorch", "my_train.py"),
    ("not-python", ["/usr/bin/Xorg", ":0"], None, [], None, "unknown", None),
    ("empty-argv", [], None, [], None, "unknown", None),
]


@pytest.mark.parametrize(
    ("argv", "cwd", "tree", "env", "expected"),
    [pytest.param(*case[1:5], case[5:], id=case[0]) for case in RECOGNITION],
)
def test_trainer_recognised_from_realistic_command_lines(
    argv: list[str],
    cwd: str | None,
    tree: list[list[str]],
    env: dict[str, str] | None,
    expected: tuple[str, str | None],
) -> None:
    """Each trainer is told apart by its script name, launcher, flags, directory or config layout."""
    settings = recognize(argv, cwd=str(DATA / cwd) if cwd else None, tree_argvs=tree, env=env)
    assert (settings.trainer, settings.script) == expected


def test_spawned_worker_is_recognised_from_its_launcher() -> None:
    """A `python -c spawn_main` worker has no script; the launcher in the tree names the trainer and flags."""
    settings = recognize(
        ["python", "-c", "from multiprocessing.spawn import spawn_main; spawn_main()"],
        tree_argvs=[["accelerate", "launch", "--num_processes", "2", "train_network.py", "--train_batch_size", "3"]],
        read_file=_no_files,
    )
    assert (settings.trainer, settings.batch_size) == ("kohya", 3)


def test_kohya_settings_from_flags_with_defaults_from_its_source() -> None:
    """Flags are read; absent flags take sd-scripts' own defaults, marked as such."""
    settings = recognize(
        [
            *("python", "flux_train_network.py", "--train_batch_size", "4", "--resolution", "1024,768"),
            *("--mixed_precision", "no", "--optimizer_type", "AdamW", "--network_dim=32", "--sdpa", "--fp8_base"),
        ],
        read_file=_no_files,
    )
    assert settings.batch_size == 4
    assert settings.resolution == (1024, 768)
    assert settings.mixed_precision == "no"
    assert settings.optimizer == "AdamW"
    assert settings.network_dim == 32
    assert settings.attention == "sdpa"
    assert settings.fp8_base is True
    assert settings.gradient_checkpointing is False
    assert settings.grad_accum == 1
    assert settings.model_family == "flux"
    checkpointing = settings.source_of("gradient_checkpointing")
    assert checkpointing is not None
    assert checkpointing.kind == "default"
    batch = settings.source_of("batch_size")
    assert batch is not None
    assert (batch.kind, batch.detail) == ("flag", "--train_batch_size")


def test_kohya_use_8bit_adam_counts_as_8bit_optimizer() -> None:
    """The legacy `--use_8bit_adam` switch means AdamW8bit in sd-scripts' get_optimizer()."""
    settings = recognize(["python", "train_network.py", "--use_8bit_adam"], read_file=_no_files)
    assert settings.optimizer == "AdamW8bit"
    assert settings.optimizer_8bit is True


def test_kohya_config_file_and_dataset_config_with_their_precedence() -> None:
    """--config_file values apply unless the command line overrides; [[datasets]] wins for resolution/batch."""
    settings = recognize(
        ["python", "flux_train_network.py", "--config_file", "flux_lora", "--gradient_checkpointing"],
        cwd=str(DATA / "kohya"),
        tree_argvs=[["accelerate", "launch", "--mixed_precision", "bf16", "flux_train_network.py"]],
    )
    assert settings.mixed_precision == "bf16"
    assert settings.gradient_checkpointing is True
    assert settings.network_dim == 64
    assert settings.attention == "sdpa"
    assert settings.cache_latents is True
    assert settings.grad_accum == 2
    # The dataset config overrides both train_batch_size = 2 in the config file and [general].
    assert settings.batch_size == 4
    assert settings.resolution == (1024, 1024)
    resolution = settings.source_of("resolution")
    assert resolution is not None
    assert resolution.kind == "dataset_config"
    assert resolution.file is not None
    assert Path(resolution.file).name == "dataset.toml"
    assert [Path(p).name for p in settings.config_files] == ["flux_lora.toml", "dataset.toml"]


def test_kohya_ignores_accelerate_mixed_precision_and_says_so() -> None:
    """sd-scripts passes its own --mixed_precision (default no) to Accelerator: the launcher's bf16 is moot."""
    settings = recognize(
        ["python", "flux_train_network.py", "--train_batch_size", "1"],
        tree_argvs=[["accelerate", "launch", "--mixed_precision", "bf16", "flux_train_network.py"]],
        read_file=_no_files,
    )
    assert settings.mixed_precision == "no"
    assert any("accelerate launch --mixed_precision bf16" in note for note in settings.notes)


def test_kohya_resumability_read_from_config() -> None:
    """--save_state with a save interval makes a kohya run resumable."""
    resumable = recognize(["python", "train_network.py", "--config_file", "resumable.toml"], cwd=str(DATA / "kohya"))
    plain = recognize(["python", "train_network.py"], read_file=_no_files)
    assert (resumable.resumable, plain.resumable) == (True, False)


def test_diffusers_flags_and_launcher_precision() -> None:
    """diffusers: --use_8bit_adam, --rank; mixed precision falls back to accelerate launch's option."""
    settings = recognize(
        [
            *("python", "train_dreambooth_lora_flux.py", "--use_8bit_adam", "--rank", "32", "--resolution", "1024"),
            *("--train_batch_size", "1", "--gradient_checkpointing"),
        ],
        tree_argvs=[["accelerate", "launch", "--mixed_precision=fp16", "train_dreambooth_lora_flux.py"]],
        read_file=_no_files,
    )
    assert settings.optimizer == "AdamW8bit"
    assert settings.network_dim == 32
    assert settings.resolution == (1024, 1024)
    assert settings.gradient_checkpointing is True
    assert settings.mixed_precision == "fp16"
    precision = settings.source_of("mixed_precision")
    assert precision is not None
    assert precision.kind == "launcher"


def test_diffusers_precision_unknown_without_flag_or_launcher() -> None:
    """Without any precision source, accelerate's own config decides, which vramwatch does not read."""
    settings = recognize(["python", "train_dreambooth_lora_sdxl.py"], read_file=_no_files)
    assert settings.mixed_precision is None


def test_ai_toolkit_settings_from_yaml() -> None:
    """ai-toolkit: train/model/network/datasets of config.process[0]; the largest of several resolutions."""
    settings = recognize(["python", "run.py", "flux_lora_24gb"], cwd=str(DATA / "ai-toolkit"))
    assert settings.trainer == "ai-toolkit"
    assert settings.batch_size == 2
    assert settings.gradient_checkpointing is False
    assert settings.resolution == (1024, 1024)
    assert settings.mixed_precision == "bf16"
    assert settings.optimizer == "adamw"
    assert settings.fp8_base is False
    assert settings.network_dim == 32
    assert settings.cache_latents is True
    assert settings.model_family == "flux"


def test_onetrainer_settings_from_json() -> None:
    """OneTrainer: enum spellings (OFF, FLOAT_32, SDP, ADAMW) are normalised."""
    settings = recognize(
        ["python", "scripts/train.py", "--config-path", "flux_lora.json"], cwd=str(DATA / "onetrainer")
    )
    assert settings.batch_size == 2
    assert settings.gradient_checkpointing is False
    assert settings.resolution == (1024, 1024)
    assert settings.mixed_precision == "no"
    assert settings.attention == "sdpa"
    assert settings.optimizer == "ADAMW"
    assert settings.network_dim == 64
    assert settings.fp8_base is False
    assert settings.offloading is False
    assert settings.model_family == "flux"


@pytest.mark.parametrize(
    ("config", "attention", "fp8_base"),
    [
        pytest.param({"attention_mechanism": "DEFAULT"}, "sdpa", None, id="default-is-sdp-since-it-was-dropped"),
        pytest.param({"attention_mechanism": "SPLIT"}, "sdpa", None, id="split"),
        pytest.param({"attention_mechanism": "FLASH_SPLIT"}, "flash", None, id="flash-split"),
        pytest.param({"transformer": {"weight_dtype": "INT_W8A8"}}, None, True, id="w8a8-is-quantised"),
        pytest.param({"transformer": {"weight_dtype": "GGUF"}}, None, True, id="gguf"),
        pytest.param({"transformer": {"weight_dtype": "BFLOAT_16"}}, None, False, id="bf16"),
    ],
)
def test_onetrainer_attention_and_base_dtypes_as_current_onetrainer_reads_them(
    tmp_path: Path, config: dict[str, object], attention: str | None, fp8_base: bool | None
) -> None:
    """Every attention OneTrainer has today is memory-efficient, and one it dropped loads as SDP (so no run is told to
    set "SDP"); a W8A8 or GGUF base is stored quantised (so no run is told FLOAT_8)."""
    (tmp_path / "cfg.json").write_text(json.dumps({"training_method": "LORA", **config}))
    settings = recognize(["python", "scripts/train.py", "--config-path", "cfg.json"], cwd=str(tmp_path))
    assert settings.trainer == "onetrainer"
    assert settings.attention == attention
    assert settings.fp8_base is fp8_base


def test_onetrainer_per_part_config_is_read_from_its_main_part(tmp_path: Path) -> None:
    """A config of newer OneTrainer's per-part shape keeps checkpointing and layer offload in each model part (the
    top-level keys are migrated away): they are read from the trained network's part, and the changes named for it."""
    part = {"train": True, "weight_dtype": "FLOAT_8", "gradient_checkpointing": False, "offload_fraction": 0.25}
    (tmp_path / "cfg.json").write_text(
        json.dumps({"__version": 11, "model_type": "FLUX_DEV_1", "training_method": "LORA", "transformer": part})
    )
    settings = recognize(["python", "scripts/train.py", "--config-path", "cfg.json"], cwd=str(tmp_path))
    assert settings.config_format == "transformer"
    assert settings.gradient_checkpointing is False
    assert settings.layer_offload_fraction == 0.25
    assert settings.offloading is True
    assert settings.fp8_base is True
    changes = [s.change for s in advise(settings, "oom_forecast").suggestions]
    assert '"transformer": {"gradient_checkpointing": true}' in changes
    assert not any('"gradient_checkpointing": "ON"' in c for c in changes)


@pytest.mark.parametrize(
    ("model_type", "part"),
    [("STABLE_DIFFUSION_XL_10_BASE", "unet"), (None, "unet"), ("STABLE_CASCADE_1", "prior"),
     ("STABLE_DIFFUSION_35", "transformer")],
)  # fmt: skip
def test_onetrainer_per_part_config_is_read_from_its_model_types_network(
    tmp_path: Path, model_type: str | None, part: str
) -> None:
    """A saved per-part config holds every part (unet, prior, transformer): the one read and named is the model
    type's network (TrainConfig's default type is SD 1.5), not the first found."""
    parts = {name: {"train": True, "gradient_checkpointing": name != part, "offload_fraction": 0.0}
             for name in ("transformer", "unet", "prior", "text_encoder")}  # fmt: skip
    config = {"__version": 11, "training_method": "LORA", **parts}
    if model_type is not None:
        config["model_type"] = model_type
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    settings = recognize(["python", "scripts/train.py", "--config-path", "cfg.json"], cwd=str(tmp_path))
    assert settings.config_format == part
    assert settings.gradient_checkpointing is False
    changes = [s.change for s in advise(settings, "oom_forecast").suggestions]
    assert f'"{part}": {{"gradient_checkpointing": true}}' in changes


@pytest.mark.parametrize(("optimizer", "plain"), [("ADAMW", True), ("ADAM", True), ("ADAMW_ADV", False),
                                                   ("ADAMW_8BIT", False), ("SCHEDULE_FREE_ADAMW", False)])  # fmt: skip
def test_onetrainer_advanced_adam_is_not_told_8_bit_adam(tmp_path: Path, optimizer: str, plain: bool) -> None:
    """OneTrainer's "Advanced" AdamW (adv_optm, which may keep its states factored or in low precision) is no plain
    Adam for the 8-bit advice; ADAM and ADAMW are."""
    (tmp_path / "cfg.json").write_text(json.dumps({"optimizer": {"optimizer": optimizer}}))
    settings = recognize(["python", "scripts/train.py", "--config-path", "cfg.json"], cwd=str(tmp_path))
    assert settings.optimizer_adam_unquantized is plain
    told = {s.rule_id for s in advise(settings, "oom_forecast").suggestions}
    assert ("optimizer_8bit" in told) is plain


@pytest.mark.parametrize(
    ("precision", "quantised"),
    [("int8-quanto", True), ("nf4-bnb", True), ("no_change", False), ("int16-sdnq", False), ("fp16-sdnq", False)],
)
def test_simpletuner_base_precision_counts_as_quantised_below_16_bits(
    tmp_path: Path, precision: str, quantised: bool
) -> None:
    """A 16-bit `base_model_precision` preset stores the base as large as bf16: the fp8 advice still applies to it."""
    settings = _simpletuner_json(tmp_path, {"--base_model_precision": precision}, None)
    assert settings.fp8_base is quantised


@pytest.mark.parametrize(
    ("folder", "env", "expected"),
    [
        pytest.param(
            "simpletuner_json",
            {"SIMPLETUNER_CONFIG_BACKEND": "json"},
            {"config_format": "json", "batch_size": 4, "mixed_precision": "bf16", "fp8_base": False, "network_dim": 16},
            id="json",
        ),
        pytest.param(
            "simpletuner_env",
            {"SIMPLETUNER_CONFIG_BACKEND": "env"},
            {
                "config_format": "env",
                "batch_size": 2,
                "gradient_checkpointing": True,
                "fp8_base": True,
                "network_dim": 64,
            },
            id="env",
        ),
        pytest.param(
            "simpletuner_toml",
            {"SIMPLETUNER_LOG_LEVEL": "INFO"},
            {"config_format": "toml", "batch_size": 1, "mixed_precision": "no", "optimizer": "bnb-adamw8bit"},
            id="toml-probed",
        ),
    ],
)
def test_simpletuner_settings_from_each_config_backend(
    folder: str, env: dict[str, str], expected: dict[str, object]
) -> None:
    """SimpleTuner's config.json (keys with or without `--`), config.env and config.toml are all read."""
    settings = recognize(["python", "train.py"], cwd=str(DATA / folder), env=env)
    assert settings.trainer == "simpletuner"
    assert {key: getattr(settings, key) for key in expected} == expected


@pytest.mark.parametrize(
    ("folder", "backend", "resolution", "detail"),
    [
        pytest.param("simpletuner_json", "json", (1024, 1024), "multidatabackend.json: dataset portraits resolution",
                     id="a-dataset-sets-it"),
        pytest.param("simpletuner_toml", "toml", (1024, 1024), "multidatabackend.json: dataset wide resolution",
                     id="the-largest-enabled-training-dataset"),
        pytest.param("simpletuner_env", "env", (1024, 1024), "config.env: resolution",
                     id="no-dataset-sets-it-DATALOADER_CONFIG"),
    ],
)  # fmt: skip
def test_simpletuner_resolution_is_its_datasets_where_they_set_one(
    folder: str, backend: str, resolution: tuple[int, int], detail: str
) -> None:
    """A dataset's own `resolution` in the dataloader config wins over the main config's (SimpleTuner image.py): the
    run trains at the largest of its enabled image datasets' (not a disabled one's, not a conditioning set's), and
    at the main config's where no dataset sets its own."""
    settings = recognize(["python", "train.py"], cwd=str(DATA / folder), env={"SIMPLETUNER_CONFIG_BACKEND": backend})
    _assert_resolution(settings, resolution, detail)


@pytest.mark.parametrize(
    ("datasets", "resolution", "detail"),
    [
        pytest.param([{"id": "a"}, {"id": "b", "resolution": 1024}], (1024, 1024),
                     "multidatabackend.json: dataset b resolution", id="a-tie-goes-to-the-dataset"),
        pytest.param([{"id": "a"}, {"id": "b", "resolution": 768}], (1024, 1024), "config.json: resolution",
                     id="the-main-configs-alone-is-larger"),
        pytest.param([{"id": "big", "resolution": 2048, "disabled": "false"}, {"id": "s", "resolution": 640}],
                     (640, 640), "multidatabackend.json: dataset s resolution", id="any-true-disabled-is-off"),
        pytest.param([{"id": "f", "resolution": 896.0}], (896, 896), "multidatabackend.json: dataset f resolution",
                     id="a-whole-float"),
    ],
)  # fmt: skip
def test_simpletuner_resolution_change_goes_where_the_largest_is_set(
    tmp_path: Path, datasets: list[dict[str, object]], resolution: tuple[int, int], detail: str
) -> None:
    """The change is said for the dataloader config unless the main config's resolution alone is the largest: on a
    tie, lowering the main config's would leave a dataset's own at the peak. A dataset is off as SimpleTuner tests
    it (any true `disabled`/`disable`, a non-empty string included)."""
    settings = _simpletuner_json(tmp_path, {"resolution": 1024}, json.dumps(datasets))
    _assert_resolution(settings, resolution, detail)


def _simpletuner_json(tmp: Path, main: dict[str, object], datasets: str | None) -> TrainerSettings:
    """A SimpleTuner run in `tmp` with `config/config.json` holding `main` and, unless None, `datasets` as the text
    of `config/multidatabackend.json`."""
    folder = tmp / "config"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(main))
    if datasets is not None:
        (folder / "multidatabackend.json").write_text(datasets)
    return recognize(["python", "train.py"], cwd=str(tmp), env={"SIMPLETUNER_CONFIG_BACKEND": "json"})


def _assert_resolution(settings: TrainerSettings, resolution: tuple[int, int], detail: str) -> None:
    assert settings.resolution == resolution
    source = settings.source_of("resolution")
    assert source is not None
    assert source.detail == detail


@pytest.mark.parametrize(
    ("datasets", "main_type", "why"),
    [
        pytest.param(None, None, "multidatabackend.json sets it per dataset and could not be read",
                     id="no-dataloader-config"),
        pytest.param('[{"id": "x", ', None, "multidatabackend.json sets it per dataset and could not be read",
                     id="truncated"),
        pytest.param([{"id": "mp", "resolution": 1.0, "resolution_type": "area"}], None, "does not give it in pixels",
                     id="megapixels"),
        pytest.param([{"id": "plain"}], "area", "does not give it in pixels", id="falls-back-to-an-area-main-config"),
    ],
)  # fmt: skip
def test_simpletuner_resolution_is_unknown_when_its_datasets_cannot_say(
    tmp_path: Path, datasets: object, main_type: str | None, why: str
) -> None:
    """No resolution is trusted (so none is advised) when the dataloader config cannot be read or counts megapixels:
    `--resolution 512` would change nothing where the datasets set their own."""
    main: dict[str, object] = {"resolution": 1024, "train_batch_size": 2}
    if main_type is not None:
        main["resolution_type"] = main_type
    text = datasets if isinstance(datasets, str) or datasets is None else json.dumps(datasets)
    settings = _simpletuner_json(tmp_path, main, text)
    assert settings.trainer == "simpletuner"
    assert settings.batch_size == 2
    assert settings.resolution is None
    assert any(why in note for note in settings.notes)


def test_a_simpletuner_run_of_flags_alone_reads_the_default_dataloader_config(tmp_path: Path) -> None:
    """Without `--data_backend_config`, SimpleTuner reads `multidatabackend.json` in its config path (`config/`):
    so does vramwatch for a run configured by flags alone, and without it the resolution is unknown."""
    argv, env = (
        ["python", "train.py", "--resolution", "1024", "--train_batch_size", "2"],
        {"SIMPLETUNER_LOG_LEVEL": "INFO"},
    )
    assert recognize(argv, cwd=str(tmp_path), env=env).resolution is None
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "multidatabackend.json").write_text(json.dumps([{"id": "faces", "resolution": 768}]))
    settings = recognize(argv, cwd=str(tmp_path), env=env)
    assert settings.config_format == "cmd"
    assert settings.batch_size == 2
    _assert_resolution(settings, (768, 768), "multidatabackend.json: dataset faces resolution")


def test_simpletuner_reads_the_interval_names_its_ui_writes(tmp_path: Path) -> None:
    """`checkpoint_step_interval` and `validation_step_interval` (the names newer SimpleTuner writes; the old ones are
    aliases) give the save and sampling schedule."""
    main = {"--checkpoint_step_interval": 250, "--validation_step_interval": 100, "--max_train_steps": 3000}
    settings = _simpletuner_json(tmp_path, main, None)
    assert settings.save_every_n_steps == 250
    assert settings.sample_every_n_steps == 100
    assert settings.resumable is True


@pytest.mark.parametrize(
    ("argv", "cwd"),
    [
        pytest.param(["python", "flux_train_network.py", "--config_file", "broken.toml"], "broken", id="kohya-toml"),
        pytest.param(["python", "run.py", "../broken/broken.yaml"], "ai-toolkit", id="ai-toolkit-yaml"),
        pytest.param(["python", "scripts/train.py", "--config-path", "broken.json"], "broken", id="onetrainer-json"),
        pytest.param(["python", "scripts/train.py", "--config-path", "truncated.json"], "broken", id="truncated"),
        pytest.param(["python", "flux_train_network.py", "--config_file", "missing.toml"], "broken", id="missing"),
        pytest.param(["python", "flux_train_network.py", "--config_file", "cfg.toml"], None, id="relative-no-cwd"),
    ],
)
def test_broken_or_missing_config_means_unknown_not_crash(argv: list[str], cwd: str | None) -> None:
    """A config that cannot be read leaves its settings unknown (None, no guessed default) and says why."""
    settings = recognize(argv, cwd=str(DATA / cwd) if cwd else None)
    assert settings.batch_size is None
    assert settings.gradient_checkpointing is None
    assert settings.mixed_precision is None
    assert any("unknown" in note for note in settings.notes)


def test_unreadable_dataset_config_makes_resolution_unknown() -> None:
    """The dataset TOML overrides --resolution, so when it cannot be read the flag's value is not trusted."""
    settings = recognize(
        ["python", "flux_train_network.py", "--resolution", "512", "--dataset_config", "gone.toml"],
        cwd="/nonexistent",
    )
    assert settings.resolution is None
    assert settings.batch_size is None


def test_environment_is_filtered_to_the_allow_list() -> None:
    """Only allocator, accelerate precision and SIMPLETUNER_* variables are kept; secrets never are."""
    env = {
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
        "HF_TOKEN": "hf_abcdefghijklmnopqrstuvwxyz0123456789",
        "WANDB_API_KEY": "secret",
        "SIMPLETUNER_ENV": "default",
        "PATH": "/usr/bin",
    }
    assert filter_env(env) == {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "SIMPLETUNER_ENV": "default"}
    settings = recognize(["python", "train_network.py"], env=env, read_file=_no_files)
    assert "hf_" not in repr(settings)
    assert "secret" not in repr(settings)
    assert settings.alloc_expandable is True


@pytest.mark.parametrize(
    ("env", "expandable", "max_split", "var"),
    [
        pytest.param(None, None, None, None, id="env-unknown"),
        pytest.param({}, False, False, None, id="env-read-unset"),
        pytest.param(
            {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128"}, False, True, "PYTORCH_CUDA_ALLOC_CONF", id="max-split"
        ),
        pytest.param(
            {"PYTORCH_ALLOC_CONF": "expandable_segments:True"}, True, False, "PYTORCH_ALLOC_CONF", id="new-name"
        ),
        pytest.param(
            {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:False"},
            False,
            False,
            "PYTORCH_CUDA_ALLOC_CONF",
            id="false",
        ),
    ],
)
def test_allocator_configuration_read_from_either_variable(
    env: dict[str, str] | None, expandable: bool | None, max_split: bool | None, var: str | None
) -> None:
    """Both allocator variable names are read; an unreadable environment stays unknown rather than 'unset'."""
    settings = recognize(["python", "x.py"], env=env, read_file=_no_files)
    assert (settings.alloc_expandable, settings.alloc_max_split, settings.alloc_conf_var) == (
        expandable,
        max_split,
        var,
    )


def test_unrecognised_process_has_unknown_settings() -> None:
    """Nothing is guessed for a process that is not a recognised trainer."""
    settings = recognize(["/usr/bin/Xorg", ":0"], read_file=_no_files)
    assert settings == TrainerSettings(trainer="unknown", script=None)


def test_split_invocation_finds_script_after_launcher_options() -> None:
    """Launcher options (with values) are not mistaken for the script or its flags."""
    inv = split_invocation(
        ["accelerate", "launch", "--config_file", "acc.yaml", "--num_processes", "2", "train.py", "--lr", "1e-4"]
    )
    assert (inv.launcher, inv.script, inv.args) == ("accelerate", "train.py", ("--lr", "1e-4"))
    assert inv.launcher_args == ("--config_file", "acc.yaml", "--num_processes", "2")


def test_parse_flags_follows_argparse_conventions() -> None:
    """--k v, --k=v, bare switches, nargs lists, negative numbers as values, last occurrence wins."""
    flags, positionals = parse_flags(
        ["cfg.yaml", "--a", "1", "--b=2", "--switch", "--list", "x=1", "y=2", "--neg", "-3", "--a", "5"]
    )
    assert positionals == ("cfg.yaml",)
    assert flags == {"a": ("5",), "b": ("2",), "switch": (), "list": ("x=1", "y=2"), "neg": ("-3",)}


def test_read_text_file_refuses_large_and_special_files(tmp_path: Path) -> None:
    """Config reads are bounded: oversized files and non-regular files read as None, not an error."""
    small = tmp_path / "ok.toml"
    small.write_text("a = 1\n")
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    assert read_text_file(small) == "a = 1\n"
    assert read_text_file(big) is None
    assert read_text_file(binary) is None
    assert read_text_file(tmp_path) is None
    assert read_text_file(tmp_path / "missing.toml") is None


def test_env_file_parsing_handles_export_quotes_and_append() -> None:
    """config.env lines: comments skipped, `export` and quotes stripped, `+=` appends."""
    parsed = parse_env_file('# c\nexport A="1"\nB=two\nC+="--x=1"\nC+="--y=2"\nnot a line\n')
    assert parsed == {"A": "1", "B": "two", "C": "--x=1 --y=2"}


def test_parse_errors_name_the_line_not_the_content() -> None:
    """A broken config's note gives a line number, never the file's text (it may not be the user's file)."""
    settings = recognize(["python", "run.py", "../broken/broken.yaml"], cwd=str(DATA / "ai-toolkit"))
    assert any("broken.yaml: cannot parse YAML (line" in note for note in settings.notes)
    assert not any("batch_size" in note for note in settings.notes)


def test_pseudo_files_are_never_read_as_configs() -> None:
    """/proc, /sys and /dev paths named as configs are refused (another process's environ is not a config)."""
    assert read_text_file(Path("/proc/self/environ")) is None
    assert read_text_file(Path("/dev/null")) is None


def test_accelerate_own_config_file_is_not_the_trainers() -> None:
    """`accelerate launch --config_file acc.yaml script.py --config_file cfg.toml`: only the second is kohya's."""
    settings = recognize(
        [
            *("accelerate", "launch", "--config_file", "accelerate.yaml", "--mixed_precision", "bf16"),
            *("flux_train_network.py", "--config_file", "flux_lora.toml"),
        ],
        cwd=str(DATA / "kohya"),
    )
    assert [Path(p).name for p in settings.config_files] == ["flux_lora.toml", "dataset.toml"]
    assert settings.mixed_precision == "bf16"
    assert settings.network_dim == 64


@pytest.mark.parametrize(
    "argv",
    [
        # The README's own example: a trailing "..." after the last flag's value.
        "accelerate launch flux_train_network.py --train_batch_size 4 --gradient_checkpointing ...",
        # A positional word (a config or dataset file) right after a flag's value, and after a bare switch.
        "python flux_train_network.py --train_batch_size 4 config.toml --gradient_checkpointing dataset.toml",
        # torchrun with its own options first, then the script's flags and a trailing positional.
        "torchrun --nproc_per_node 2 train_dreambooth_lora_flux.py --train_batch_size 4 --gradient_checkpointing "
        "--resolution 1024 out/",
        # accelerate with a config file and a module launcher.
        "python -m accelerate.commands.launch --config_file acc.yaml train_dreambooth_lora_flux.py "
        "--gradient_checkpointing extra --train_batch_size=4 trailing words",
    ],
)
def test_flags_are_kept_whatever_positional_words_surround_them(argv: str) -> None:
    """A flag's value is the word right after it: trailing positionals, config files and "..." never hide it."""
    settings = recognize(argv.split(), read_file=_no_files)
    assert settings.batch_size == 4
    assert settings.gradient_checkpointing is True


@settings(max_examples=60, deadline=None)
@given(
    # Not a boolean word: `--gradient_checkpointing no` really does turn the switch off.
    words=st.lists(
        st.from_regex(r"[a-z][a-z0-9_./]{0,12}", fullmatch=True).filter(lambda w: to_bool(w) is None), max_size=3
    ),
    where=st.integers(0, 2),
)
def test_positional_words_anywhere_never_change_a_flag(words: list[str], where: int) -> None:
    """Positional words before, between or after the flags leave the batch size and the switch as given."""
    flags = [["--train_batch_size", "4"], ["--gradient_checkpointing"], ["--resolution", "512,512"]]
    argv = ["python", "flux_train_network.py"]
    for i, flag in enumerate(flags):
        argv += flag
        if i == where:
            argv += words
    settings = recognize(argv, read_file=_no_files)
    assert settings.batch_size == 4
    assert settings.gradient_checkpointing is True
    assert settings.resolution == (512, 512)
