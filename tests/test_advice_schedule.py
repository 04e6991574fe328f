"""The run's schedule: how long it trains, when it samples and saves, per trainer; and kohya's probe command line."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest
from vramwatch.advice import TrainerSettings, recognize
from vramwatch.advice.argv import to_interval
from vramwatch.advice.configfile import ReadFile
from vramwatch.advice.trainers import REGISTRY, by_id
from vramwatch.advice.trainers.kohya import probe_argv

SCHEDULE = (
    "max_train_steps",
    "max_train_epochs",
    "sample_every_n_steps",
    "sample_every_n_epochs",
    "sample_at_first",
    "save_every_n_steps",
    "save_every_n_epochs",
    "save_at_end",
    "sample_resolution",
)
UNKNOWN = dict.fromkeys(SCHEDULE)


def _files(files: Mapping[str, str]) -> ReadFile:
    """A dict-backed `read_file`: the text of each absolute path given, None for any other."""
    return lambda path: files.get(str(path))


def _schedule(settings: TrainerSettings) -> dict[str, object]:
    return {name: getattr(settings, name) for name in SCHEDULE}


def _expect(base: Mapping[str, object] | None = None, **values: object) -> dict[str, object]:
    """The full schedule: unknown, then `base` (a trainer's defaults), then `values`."""
    return {**UNKNOWN, **(base or {}), **values}


KOHYA_DEFAULTS = {
    "max_train_steps": 1600,
    "sample_every_n_steps": 0,
    "sample_every_n_epochs": 0,
    "sample_at_first": False,
    "save_every_n_steps": 0,
    "save_every_n_epochs": 0,
    "save_at_end": True,  # train_network.py saves the final model after its loop, always
}

KOHYA_TOML = """
[training_arguments]
max_train_epochs = 4
save_every_n_steps = 100
[sample_prompt_arguments]
sample_every_n_steps = 50
sample_at_first = true
"""

# (id, script arguments, config files, expected schedule)
KOHYA = [
    ("defaults-from-train_util", [], {}, _expect(KOHYA_DEFAULTS)),
    (
        "flags",
        [
            *("--max_train_steps", "3000", "--sample_every_n_steps", "250", "--sample_at_first"),
            *("--save_every_n_steps", "500", "--save_every_n_epochs=1"),
        ],
        {},
        _expect(
            KOHYA_DEFAULTS,
            max_train_steps=3000,
            sample_every_n_steps=250,
            sample_at_first=True,
            save_every_n_steps=500,
            save_every_n_epochs=1,
        ),
    ),
    (
        "epochs-override-steps",
        ["--max_train_steps", "3000", "--max_train_epochs", "10"],
        {},
        _expect({**KOHYA_DEFAULTS, "max_train_steps": None}, max_train_epochs=10),
    ),
    (
        "sample-epochs-override-sample-steps",
        ["--sample_every_n_steps", "100", "--sample_every_n_epochs", "2"],
        {},
        _expect(KOHYA_DEFAULTS | {"sample_every_n_epochs": 2}),
    ),
    (
        "zero-disables-sampling",
        ["--sample_every_n_epochs", "0", "--sample_every_n_steps", "-5"],
        {},
        _expect(KOHYA_DEFAULTS),
    ),
    (
        "config-file-epochs-win-over-command-line-steps",
        ["--config_file", "/cfg/run", "--max_train_steps", "100", "--save_every_n_steps", "300"],
        {"/cfg/run.toml": KOHYA_TOML},
        _expect(
            KOHYA_DEFAULTS
            | {"max_train_steps": None, "sample_every_n_steps": 50, "sample_at_first": True, "save_every_n_steps": 300},
            max_train_epochs=4,
        ),
    ),
    ("unreadable-config-file", ["--config_file", "/cfg/gone.toml"], {}, UNKNOWN),
    (
        "epoch-ratio-makes-the-epoch-save-interval-unknown",
        ["--save_n_epoch_ratio", "5", "--save_every_n_epochs", "2"],
        {},
        _expect(KOHYA_DEFAULTS | {"save_every_n_epochs": None}),
    ),
]


@pytest.mark.parametrize(("args", "files", "expected"), [pytest.param(*c[1:], id=c[0]) for c in KOHYA])
def test_kohya_schedule(args: list[str], files: dict[str, str], expected: dict[str, object]) -> None:
    """sd-scripts: --max_train_epochs over --max_train_steps (1600), sample epochs over sample steps, <= 0 is off."""
    settings = recognize(["python", "flux_train_network.py", *args], read_file=_files(files))
    assert _schedule(settings) == expected


def test_kohya_schedule_says_where_each_value_came_from() -> None:
    """An absent flag is sd-scripts' default; a config value names its file; an overridden interval its winner."""
    settings = recognize(
        ["python", "train_network.py", "--config_file", "/cfg/run.toml", "--sample_every_n_epochs", "3"],
        read_file=_files({"/cfg/run.toml": KOHYA_TOML}),
    )
    epochs, sample_steps, save_epochs = (
        settings.source_of(n) for n in ("max_train_epochs", "sample_every_n_steps", "save_every_n_epochs")
    )
    assert epochs is not None
    assert (epochs.kind, epochs.detail, epochs.file) == ("config", "run.toml: max_train_epochs", "/cfg/run.toml")
    assert sample_steps is not None
    assert (sample_steps.kind, sample_steps.detail) == (
        "flag",
        "--sample_every_n_epochs overrides sample_every_n_steps",
    )
    assert save_epochs is not None
    assert save_epochs.kind == "default"
    epoch_ratio = recognize(["python", "train_network.py", "--save_n_epoch_ratio", "4"], read_file=_files({}))
    assert any("save_every_n_epochs unknown" in note for note in epoch_ratio.notes)


FLUX = "train_dreambooth_lora_flux.py"
FLUX_DEFAULTS = {
    "max_train_epochs": 1,
    "sample_every_n_steps": 0,
    "sample_every_n_epochs": 0,
    "sample_at_first": False,
    "save_every_n_steps": 500,
    "save_every_n_epochs": 0,
}

# (id, script, arguments, expected schedule)
DIFFUSERS = [
    ("flux-defaults-no-validation", FLUX, [], _expect(FLUX_DEFAULTS)),
    (
        "flux-validation-prompt-default-interval",
        FLUX,
        ["--validation_prompt", "a dog"],
        _expect(FLUX_DEFAULTS | {"sample_every_n_epochs": 50}),
    ),
    (
        "flux-max-train-steps-overrides-epochs",
        FLUX,
        ["--max_train_steps", "800", "--num_train_epochs", "3"],
        _expect(FLUX_DEFAULTS | {"max_train_epochs": None}, max_train_steps=800),
    ),
    (
        "flux-flags",
        FLUX,
        ["--num_train_epochs", "4", "--validation_prompt", "x", "--validation_epochs", "2", "--checkpointing_steps=9"],
        _expect(FLUX_DEFAULTS | {"max_train_epochs": 4, "sample_every_n_epochs": 2, "save_every_n_steps": 9}),
    ),
    ("unchecked-script-no-defaults", "train_dreambooth_lora_sdxl.py", [], UNKNOWN),
    (
        "unchecked-script-flags-only",
        "train_dreambooth_lora_sdxl.py",
        ["--num_train_epochs", "2", "--checkpointing_steps", "250", "--validation_epochs", "5"],
        _expect(max_train_epochs=2, save_every_n_steps=250),
    ),
]


@pytest.mark.parametrize(("script", "args", "expected"), [pytest.param(*c[1:], id=c[0]) for c in DIFFUSERS])
def test_diffusers_schedule(script: str, args: list[str], expected: dict[str, object]) -> None:
    """diffusers: --max_train_steps over --num_train_epochs; validation per epoch only with --validation_prompt."""
    settings = recognize(["python", script, *args], read_file=_files({}))
    assert _schedule(settings) == expected


def _toolkit_job(train: str = "", sample: str | None = None, save: str = "") -> str:
    sample_block = "" if sample is None else f"      sample:\n{sample}"
    return (
        "job: extension\nconfig:\n  name: run\n  process:\n    - type: sd_trainer\n"
        f"      train:\n        batch_size: 1\n{train}      save:\n        dtype: float16\n{save}{sample_block}"
        "      model:\n        name_or_path: black-forest-labs/FLUX.1-dev\n        is_flux: true\n"
    )


TOOLKIT_DEFAULTS = {
    "max_train_steps": 1000,
    "sample_every_n_epochs": 0,
    "save_every_n_steps": 1000,
    "save_every_n_epochs": 0,
}
SAMPLE = (
    "        sample_every: 250\n        width: 1024\n        height: 768\n"
    "        samples:\n          - prompt: a\n"
    "          - prompt: b\n            width: 1280\n            height: 1280\n"
)

# (id, job YAML, expected schedule)
AI_TOOLKIT = [
    (
        "no-sample-section",
        _toolkit_job(),
        _expect(TOOLKIT_DEFAULTS),
    ),
    (
        "sample-section-defaults",
        _toolkit_job(sample="        prompts:\n          - a dog\n"),
        _expect(TOOLKIT_DEFAULTS, sample_every_n_steps=100, sample_at_first=True, sample_resolution=(512, 512)),
    ),
    (
        "keys",
        _toolkit_job(train="        steps: 3000\n", sample=SAMPLE, save="        save_every: 500\n"),
        _expect(
            TOOLKIT_DEFAULTS | {"max_train_steps": 3000, "save_every_n_steps": 500},
            sample_every_n_steps=250,
            sample_at_first=True,
            sample_resolution=(1280, 1280),
        ),
    ),
    (
        "skip-first-sample-wins-over-force",
        _toolkit_job(train="        skip_first_sample: true\n        force_first_sample: true\n", sample=SAMPLE),
        _expect(TOOLKIT_DEFAULTS, sample_every_n_steps=250, sample_at_first=False, sample_resolution=(1280, 1280)),
    ),
    (
        "disable-sampling",
        _toolkit_job(train="        disable_sampling: true\n", sample=SAMPLE),
        _expect(TOOLKIT_DEFAULTS, sample_every_n_steps=0, sample_at_first=False),
    ),
    (
        "zero-intervals-are-off",
        _toolkit_job(sample="        sample_every: 0\n", save="        save_every: 0\n"),
        _expect(
            TOOLKIT_DEFAULTS | {"save_every_n_steps": 0},
            sample_every_n_steps=0,
            sample_at_first=True,
            sample_resolution=(512, 512),
        ),
    ),
]


@pytest.mark.parametrize(("job", "expected"), [pytest.param(*c[1:], id=c[0]) for c in AI_TOOLKIT])
def test_ai_toolkit_schedule(job: str, expected: dict[str, object]) -> None:
    """ai-toolkit: train.steps, sample.sample_every/width/height, save.save_every, first sample unless skipped."""
    settings = recognize(
        ["python", "run.py", "/jobs/job.yaml"], cwd="/opt/ai-toolkit", read_file=_files({"/jobs/job.yaml": job})
    )
    assert settings.trainer == "ai-toolkit"
    assert _schedule(settings) == expected


def test_ai_toolkit_without_sample_section_says_sampling_is_unknown() -> None:
    """No sample section: ai-toolkit's empty sampling pass was not checked, so the schedule is unknown, with a note."""
    settings = recognize(
        ["python", "run.py", "/jobs/job.yaml"],
        cwd="/opt/ai-toolkit",
        read_file=_files({"/jobs/job.yaml": _toolkit_job()}),
    )
    assert settings.samples_during_run is None
    assert any("sampling schedule unknown" in note for note in settings.notes)


def _onetrainer(**keys: object) -> str:
    import json

    return json.dumps({"training_method": "LORA", "model_type": "FLUX_DEV_1", **keys})


# (id, config JSON, expected schedule)
ONETRAINER = [
    (
        "defaults-minutes-and-never",
        _onetrainer(),
        _expect(max_train_epochs=100, save_every_n_steps=0, save_every_n_epochs=0),
    ),
    (
        "step-units",
        _onetrainer(epochs=20, sample_after=50, sample_after_unit="STEP", save_every=500, save_every_unit="STEP"),
        _expect(
            max_train_epochs=20,
            sample_every_n_steps=50,
            sample_every_n_epochs=0,
            sample_at_first=True,
            save_every_n_steps=500,
            save_every_n_epochs=0,
        ),
    ),
    (
        "skip-first-sample",
        _onetrainer(sample_after=50, sample_after_unit="STEP", sample_skip_first=1),
        _expect(
            max_train_epochs=100,
            sample_every_n_steps=50,
            sample_every_n_epochs=0,
            sample_at_first=False,
            save_every_n_steps=0,
            save_every_n_epochs=0,
        ),
    ),
    (
        "epoch-units",
        _onetrainer(sample_after=2, sample_after_unit="EPOCH", save_every=1, save_every_unit="EPOCH"),
        _expect(
            max_train_epochs=100,
            sample_every_n_steps=0,
            sample_every_n_epochs=2,
            sample_at_first=True,
            save_every_n_steps=0,
            save_every_n_epochs=1,
        ),
    ),
    (
        "never-and-always",
        _onetrainer(sample_after=5, sample_after_unit="NEVER", save_every=5, save_every_unit="ALWAYS"),
        _expect(
            max_train_epochs=100,
            sample_every_n_steps=0,
            sample_every_n_epochs=0,
            sample_at_first=False,
            save_every_n_steps=1,
            save_every_n_epochs=0,
        ),
    ),
    (
        "wall-clock-save-is-unknown",
        _onetrainer(sample_after=0, sample_after_unit="STEP", save_every=2, save_every_unit="HOUR"),
        _expect(max_train_epochs=100, sample_every_n_steps=0, sample_every_n_epochs=0, sample_at_first=False),
    ),
]


@pytest.mark.parametrize(("config", "expected"), [pytest.param(*c[1:], id=c[0]) for c in ONETRAINER])
def test_onetrainer_schedule(config: str, expected: dict[str, object]) -> None:
    """OneTrainer: epochs (100), sample_after/_unit (10 MINUTE) and save_every/_unit (0 NEVER); only STEP/EPOCH map."""
    settings = recognize(
        ["python", "scripts/train.py", "--config-path", "/ot/run.json"], read_file=_files({"/ot/run.json": config})
    )
    assert _schedule(settings) == expected


def test_onetrainer_wall_clock_schedules_are_named_in_notes() -> None:
    """A schedule in minutes or hours has no step or epoch interval: it stays unknown and a note says why."""
    settings = recognize(
        ["python", "scripts/train.py", "--config-path", "/ot/run.json"],
        read_file=_files({"/ot/run.json": _onetrainer(save_every=2, save_every_unit="HOUR")}),
    )
    assert any("10 MINUTE" in note for note in settings.notes)
    assert any("2 HOUR" in note for note in settings.notes)


# (id, config files under /simpletuner, env, argv, expected schedule)
SIMPLETUNER: list[tuple[str, dict[str, str], dict[str, str], list[str], dict[str, object]]] = [
    (
        "json-steps-win",
        {"config/config.json": '{"--max_train_steps": 2000, "num_train_epochs": 10, "--validation_steps": 200}'},
        {"SIMPLETUNER_CONFIG_BACKEND": "json"},
        [],
        _expect(max_train_steps=2000, sample_every_n_steps=200),
    ),
    (
        "json-zero-steps-means-epochs",
        {"config/config.json": '{"--max_train_steps": 0, "--num_train_epochs": 5, "--checkpointing_steps": 300}'},
        {},
        [],
        _expect(max_train_epochs=5, save_every_n_steps=300),
    ),
    (
        "toml",
        {"config/config.toml": "num_train_epochs = 3\nvalidation_steps = 0\n"},
        {"SIMPLETUNER_CONFIG_BACKEND": "toml"},
        [],
        _expect(max_train_epochs=3, sample_every_n_steps=0),
    ),
    (
        "env-file-variables",
        {"config/config.env": "MAX_NUM_STEPS=1500\nexport VALIDATION_STEPS=100\nexport CHECKPOINTING_STEPS=250\n"},
        {"SIMPLETUNER_CONFIG_BACKEND": "env"},
        [],
        _expect(max_train_steps=1500, sample_every_n_steps=100, save_every_n_steps=250),
    ),
    (
        "command-line",
        {},
        {"SIMPLETUNER_LOG_LEVEL": "INFO"},
        ["--num_train_epochs", "4", "--validation_steps", "50"],
        _expect(max_train_epochs=4, sample_every_n_steps=50),
    ),
    ("nothing-set-nothing-assumed", {"config/config.json": '{"--train_batch_size": 1}'}, {}, [], UNKNOWN),
]


@pytest.mark.parametrize(("files", "env", "args", "expected"), [pytest.param(*c[1:], id=c[0]) for c in SIMPLETUNER])
def test_simpletuner_schedule(
    files: dict[str, str], env: dict[str, str], args: list[str], expected: dict[str, object]
) -> None:
    """SimpleTuner: max_train_steps > 0 wins over num_train_epochs; validation/checkpointing steps; no defaults."""
    settings = recognize(
        ["python", "train.py", *args],
        cwd="/simpletuner",
        env=env,
        read_file=_files({f"/simpletuner/{k}": v for k, v in files.items()}),
    )
    assert settings.trainer == "simpletuner"
    assert _schedule(settings) == expected


def test_other_trainers_leave_the_schedule_unknown() -> None:
    """Trainers whose schedule is not read yet report None for every schedule field, never a guess."""
    for argv in (["python", "run_clm.py", "--per_device_train_batch_size", "8"], ["python", "mine.py"]):
        assert _schedule(recognize(argv, read_file=_files({}))) == UNKNOWN


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        pytest.param(TrainerSettings(), None, id="unknown"),
        pytest.param(
            TrainerSettings(sample_every_n_steps=0, sample_every_n_epochs=0, sample_at_first=False), False, id="off"
        ),
        pytest.param(TrainerSettings(sample_every_n_epochs=2), True, id="one-known-interval"),
        pytest.param(TrainerSettings(sample_every_n_steps=0, sample_at_first=True), True, id="first-only"),
        pytest.param(TrainerSettings(sample_every_n_steps=0, sample_at_first=False), None, id="epochs-unknown"),
    ],
)
def test_samples_during_run(settings: TrainerSettings, expected: bool | None) -> None:
    """Sampling is known on when any part samples, off only when every part is known off, else unknown."""
    assert settings.samples_during_run is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("200", 200), (200, 200), (200.0, 200), ("0", 0), (-3, 0), (True, None), ("every", None), (2.5, None)],
)
def test_to_interval_reads_counts_and_off(text: object, expected: int | None) -> None:
    """An interval is N > 0, 0 for 0 or less (off), None for anything that is not an integer."""
    assert to_interval(text) == expected


def _kohya(*args: str) -> tuple[list[str], TrainerSettings]:
    argv = ["accelerate", "launch", "--num_processes", "2", "flux_train_network.py", *args]
    return argv, recognize(argv, read_file=_files({}))


# (id, script arguments, added?, a word the note has)
PROBE = [
    ("samples-on-steps", ["--sample_every_n_steps", "200", "--sample_prompts", "p.txt"], True, "every 200 steps"),
    ("samples-on-epochs", ["--sample_every_n_epochs", "1"], True, "every 1 epochs"),
    ("prompts-only", ["--sample_prompts", "p.txt"], True, "--sample_prompts is given"),
    ("already-first", ["--sample_every_n_steps", "200", "--sample_at_first"], False, "already"),
    ("no-sampling", ["--train_batch_size", "2"], False, "does not sample"),
    ("sampling-disabled", ["--sample_every_n_steps", "0"], False, "does not sample"),
]


@pytest.mark.parametrize(("args", "added", "word"), [pytest.param(*c[1:], id=c[0]) for c in PROBE])
def test_kohya_probe_argv_brings_sampling_to_step_zero(args: list[str], added: bool, word: str) -> None:
    """--sample_at_first is appended when the run samples and does not already sample first; else argv is unchanged."""
    argv, settings = _kohya(*args)
    new, notes = probe_argv(argv, settings)
    assert new == ((*argv, "--sample_at_first") if added else tuple(argv))
    assert len(notes) == 1
    assert word in notes[0]
    if added:
        again = recognize(list(new), read_file=_files({}))
        assert again.sample_at_first is True
        assert probe_argv(new, again)[0] == new  # idempotent


def test_kohya_probe_argv_trusts_a_config_files_sample_at_first() -> None:
    """sample_at_first set in the --config_file TOML is already at first: nothing is added."""
    argv = ["python", "train_network.py", "--config_file", "/cfg/run.toml"]
    settings = recognize(argv, read_file=_files({"/cfg/run.toml": KOHYA_TOML}))
    assert probe_argv(argv, settings) == (tuple(argv), ("already samples before the first step (--sample_at_first)",))


def test_kohya_probe_argv_without_a_script_changes_nothing() -> None:
    """A spawned worker (`python -c ...`) has no script to give a flag to: argv comes back as it was."""
    argv = ["python", "-c", "from multiprocessing.spawn import spawn_main; spawn_main()"]
    new, notes = probe_argv(argv, TrainerSettings(trainer="kohya", sample_every_n_steps=100))
    assert new == tuple(argv)
    assert "no training script" in notes[0]


def test_probe_argv_is_declared_only_where_it_was_written() -> None:
    """The Trainer field is generic and optional: kohya declares its probe_argv, the others none yet."""
    declared: dict[str, Callable[..., object] | None] = {t.id: t.probe_argv for t in REGISTRY}
    assert declared.pop("kohya") is by_id("kohya").probe_argv is probe_argv
    assert set(declared.values()) == {None}


def test_schedule_fields_reach_the_json_advice() -> None:
    """advice_to_dict carries the schedule like any other setting (a tuple as a list)."""
    from vramwatch.advice import advice_to_dict, advise

    settings = TrainerSettings(trainer="ai-toolkit", max_train_steps=3000, sample_resolution=(1024, 768))
    known = advice_to_dict(advise(settings, "pressure"))["settings"]
    assert (known["max_train_steps"], known["sample_resolution"]) == (3000, [1024, 768])
