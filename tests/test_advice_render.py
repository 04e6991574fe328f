"""Advice for findings: ranked changes in the trainer's own words, only those not already applied."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vramwatch.advice import (
    TrainerSettings,
    advice_lines,
    advice_to_dict,
    advise,
    advise_cmdline,
    advise_process,
    holder_of,
    recognize,
    render_text,
)
from vramwatch.advice.rules import ADVICE_KINDS
from vramwatch.errors import ConfigError
from vramwatch.model import Finding, ProcessKey, ProcessMeta, Severity

DATA = Path(__file__).parent / "data" / "advice"
GIB = 1 << 30
GUIDE_STORY = (
    "accelerate launch flux_train_network.py --train_batch_size 4 --resolution 1024,1024 "
    "--mixed_precision no --optimizer_type AdamW"
)
MEMORY_SETTING_RULES = {
    "gradient_checkpointing",
    "batch_to_accumulation",
    "resolution_512",
    "mixed_precision_bf16",
    "efficient_attention",
    "optimizer_8bit",
    "fp8_base",
    "offload_blocks",
    "cache_latents",
    "cache_text_encoder_outputs",
    "network_dim_16",
}


def _no_files(_path: Path) -> str | None:
    return None


def _changes(kind: str, settings: TrainerSettings, **context: object) -> list[str]:
    return [s.change for s in advise(settings, kind, context=context).suggestions]


def test_field_guide_story_ranks_checkpointing_first_in_kohya_syntax() -> None:
    """The guide's failing Flux run gets checkpointing first, then batch, resolution, precision, 8-bit Adam."""
    advice = advise_cmdline(GUIDE_STORY, "oom_forecast")
    changes = [s.change for s in advice.suggestions]
    assert changes[0] == "--gradient_checkpointing"
    expected = [
        "--train_batch_size 1 --gradient_accumulation_steps 4",
        "--resolution 512,512",
        "--mixed_precision bf16",
        "--optimizer_type AdamW8bit",
    ]
    positions = [changes.index(change) for change in expected]
    assert positions == sorted(positions)
    assert advice.trainer == "kohya"
    assert [s.rank for s in advice.suggestions] == list(range(1, len(changes) + 1))


def test_field_guide_story_expected_savings_come_from_the_guide() -> None:
    """The savings quoted are the guide's (60-70% activations, 75% for 4 -> 1 and 1024 -> 512) but for 8-bit Adam:
    8-bit moments are a quarter of fp32 ones (bitsandbytes: 75% less), where the guide says half."""
    savings = {s.rule_id: s.expected_saving for s in advise_cmdline(GUIDE_STORY).suggestions}
    assert "60-70%" in savings["gradient_checkpointing"]
    assert "-75%" in savings["batch_to_accumulation"]
    assert "-75%" in savings["resolution_512"]
    assert savings["optimizer_8bit"].startswith("-75% optimizer state")


def test_a_bf16_adam_is_told_half_its_state_not_three_quarters() -> None:
    """SimpleTuner's default `adamw_bf16` keeps bf16 moments: 8-bit Adam halves them, and the reason names bf16."""
    settings = recognize(
        ["python", "train.py"], cwd=str(DATA / "simpletuner_json"), env={"SIMPLETUNER_CONFIG_BACKEND": "json"}
    )
    assert settings.optimizer == "adamw_bf16"
    adam = next(s for s in advise(settings, "oom_forecast").suggestions if s.rule_id == "optimizer_8bit")
    assert adam.change == '"optimizer": "bnb-adamw8bit"'
    assert adam.expected_saving.startswith("-50% optimizer state")
    assert "bf16" in adam.why


def test_kohya_run_without_resumability_is_told_to_save_state() -> None:
    """sd-scripts has no save-now signal, so a kohya run without --save_state is told how to become resumable."""
    changes = [s.change for s in advise_cmdline(GUIDE_STORY).suggestions]
    assert "--save_every_n_steps 100 --save_state" in changes
    resumable = advise_cmdline(GUIDE_STORY + " --save_every_n_steps 50 --save_state")
    assert not any("--save_state" in s.change for s in resumable.suggestions)


def test_applied_settings_are_never_suggested() -> None:
    """A run that already uses every memory setting gets none of them suggested again."""
    settings = recognize(
        [
            "python",
            "flux_train_network.py",
            "--gradient_checkpointing",
            "--train_batch_size",
            "1",
            "--resolution",
            "512,512",
            "--mixed_precision",
            "bf16",
            "--optimizer_type",
            "AdamW8bit",
            "--sdpa",
            "--fp8_base",
            "--blocks_to_swap",
            "18",
            "--cache_latents",
            "--cache_text_encoder_outputs",
            "--network_dim",
            "16",
            "--save_every_n_steps",
            "100",
            "--save_state",
        ],
        env={"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"},
        read_file=_no_files,
    )
    advice = advise(settings, "oom_forecast", context={"torch_version": "2.4.0"})
    assert advice.suggestions == ()
    assert "no change to suggest" in render_text(advice)


def test_diffusers_gets_use_8bit_adam_not_optimizer_type() -> None:
    """The same rule speaks each trainer's language: diffusers has --use_8bit_adam, not --optimizer_type."""
    changes = [s.change for s in advise_cmdline("accelerate launch train_dreambooth_lora_flux.py").suggestions]
    assert "--use_8bit_adam" in changes
    assert not any("--optimizer_type" in change for change in changes)
    assert "--train_batch_size 1 --gradient_accumulation_steps 4" in changes  # its default batch is 4


def test_diffusers_with_use_8bit_adam_is_not_told_again() -> None:
    """--use_8bit_adam on the command line means the 8-bit suggestion is already applied."""
    advice = advise_cmdline("python train_dreambooth_lora_flux.py --use_8bit_adam --mixed_precision bf16")
    assert "optimizer_8bit" not in {s.rule_id for s in advice.suggestions}


@pytest.mark.parametrize(
    ("argv", "cwd", "env", "expected"),
    [
        pytest.param(
            ["python", "run.py", "flux_lora_24gb"],
            "ai-toolkit",
            None,
            "train.gradient_checkpointing: true",
            id="ai-toolkit",
        ),
        pytest.param(
            ["python", "scripts/train.py", "--config-path", "flux_lora.json"],
            "onetrainer",
            None,
            '"gradient_checkpointing": "ON"',
            id="onetrainer",
        ),
        pytest.param(
            ["python", "train.py"],
            "simpletuner_json",
            {"SIMPLETUNER_CONFIG_BACKEND": "json"},
            '"gradient_checkpointing": true',
            id="simpletuner-json",
        ),
        pytest.param(
            ["python", "train.py"],
            "simpletuner_toml",
            {"SIMPLETUNER_CONFIG_BACKEND": "toml"},
            'mixed_precision = "bf16"',
            id="simpletuner-toml",
        ),
    ],
)
def test_config_file_trainers_get_changes_in_their_config_language(
    argv: list[str], cwd: str, env: dict[str, str] | None, expected: str
) -> None:
    """ai-toolkit, OneTrainer and SimpleTuner are told which config key to set, in that file's syntax."""
    settings = recognize(argv, cwd=str(DATA / cwd), env=env)
    assert any(expected in change for change in _changes("pressure", settings))


def test_kohya_dataset_config_values_are_changed_where_they_live() -> None:
    """Resolution and batch from the dataset TOML are changed there: a CLI flag would be overridden."""
    settings = recognize(
        ["python", "flux_train_network.py", "--config_file", "flux_lora.toml"], cwd=str(DATA / "kohya")
    )
    changes = _changes("oom_forecast", settings)
    resolution = next(c for c in changes if "resolution" in c)
    batch = next(c for c in changes if "batch_size" in c)
    assert "dataset.toml" in resolution
    assert resolution.startswith("resolution = [512, 512] in dataset.toml")
    assert "dataset.toml" in batch
    assert "--gradient_accumulation_steps 8" in batch  # batch 4 x accumulation 2 keeps the effective batch


def test_simpletuner_resolution_is_changed_in_the_datasets_that_set_it() -> None:
    """A resolution SimpleTuner's datasets set is changed in its dataloader config: the main config's `resolution`
    would be overridden by theirs."""
    settings = recognize(
        ["python", "train.py"], cwd=str(DATA / "simpletuner_json"), env={"SIMPLETUNER_CONFIG_BACKEND": "json"}
    )
    resolution = next(c for c in _changes("oom_forecast", settings) if "resolution" in c)
    assert resolution.startswith('"resolution": 512 in each image dataset of multidatabackend.json')


def test_leak_gets_bug_advice_not_settings() -> None:
    """A leak (growth) is answered with what to look for; settings would only delay the OOM, and it says so."""
    settings = recognize(["python", "my_train.py", "--batch_size", "32"], read_file=_no_files)
    advice = advise(settings, "growth")
    ids = [s.rule_id for s in advice.suggestions]
    assert ids[0] == "leak_loss_accumulation"
    assert "loss.item()" in advice.suggestions[0].change
    assert not set(ids) & MEMORY_SETTING_RULES
    assert any("only delay the OOM" in note for note in advice.notes)


def test_leak_in_a_packaged_trainer_first_says_update_it() -> None:
    """An unmodified trainer that leaks most likely has a bug fixed upstream: update and check its issues."""
    advice = advise_cmdline(GUIDE_STORY, "growth")
    assert advice.suggestions[0].rule_id == "leak_update_trainer"
    assert "kohya-ss sd-scripts" in advice.suggestions[0].change


@pytest.mark.parametrize(
    ("torch_version", "expected"),
    [
        pytest.param(None, ["expandable_segments:True", "max_split_size_mb:128"], id="unknown-both-ranked"),
        pytest.param("2.3.0", ["expandable_segments:True"], id="new-torch"),
        pytest.param("2.0.1", ["max_split_size_mb:128"], id="old-torch"),
    ],
)
def test_fragmentation_gets_allocator_settings(torch_version: str | None, expected: list[str]) -> None:
    """Fragmentation: expandable_segments (PyTorch >= 2.1), else max_split_size_mb; both, ranked, if unknown."""
    settings = recognize(["python", "my_train.py"], env={}, read_file=_no_files)
    context = {"torch_version": torch_version} if torch_version else {}
    changes = _changes("fragmentation", settings, **context)
    allocator = [c for c in changes if "PYTORCH_CUDA_ALLOC_CONF=" in c]
    assert [next(e for e in expected if e in c) for c in allocator] == expected


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}, id="cuda-var"),
        pytest.param({"PYTORCH_ALLOC_CONF": "expandable_segments:true,garbage_collection_threshold:0.6"}, id="new-var"),
    ],
)
def test_fragmentation_advice_not_repeated_when_already_set(env: dict[str, str]) -> None:
    """A run already on expandable segments is not told to set it, nor the older max_split_size_mb."""
    settings = recognize(["python", "my_train.py"], env=env, read_file=_no_files)
    assert not any("ALLOC_CONF" in c for c in _changes("fragmentation", settings))


def test_allocator_advice_uses_the_variable_the_process_already_uses() -> None:
    """A process configured through PYTORCH_ALLOC_CONF is told to extend that variable."""
    settings = recognize(["python", "x.py"], env={"PYTORCH_ALLOC_CONF": "max_split_size_mb:64"}, read_file=_no_files)
    changes = _changes("fragmentation", settings, torch_version="2.5.0")
    assert changes[0].startswith("PYTORCH_ALLOC_CONF=expandable_segments:True")


def test_contention_names_the_other_processes_and_what_they_hold() -> None:
    """Contention advice names each other process with its memory, largest first."""
    others = [
        {"pid": 4242, "name": "python", "user": "bob", "used_bytes": 6 * GIB},
        {"pid": 777, "name": "firefox", "user": "alice", "used_bytes": GIB // 2},
    ]
    advice = advise(TrainerSettings(trainer="kohya"), "contention", context={"others": others})
    assert [s.rule_id for s in advice.suggestions] == ["contention_other_process"] * 2
    assert "python (pid 4242, bob) holds 6.0 GiB" in advice.suggestions[0].change
    assert "firefox (pid 777, alice) holds 0.5 GiB" in advice.suggestions[1].change


def test_probable_oom_with_stale_holders_frees_them_first() -> None:
    """Memory held by a leftover process is the first thing to free after an OOM."""
    stale = [{"pid": 1234, "name": "python", "used_bytes": 3 * GIB}]
    advice = advise_cmdline(GUIDE_STORY, "probable_oom", context={"stale": stale})
    assert advice.suggestions[0].change.endswith("kill 1234")
    assert advice.suggestions[1].change == "--gradient_checkpointing"


def test_unreadable_settings_are_suggested_lower_and_flagged() -> None:
    """A rule that fires only because a setting was unreadable says so and ranks below certain ones."""
    unknown = advise(TrainerSettings(trainer="kohya", batch_size=4, grad_accum=1), "pressure")
    first = unknown.suggestions[0]
    assert first.rule_id == "batch_to_accumulation"
    checkpointing = next(s for s in unknown.suggestions if s.rule_id == "gradient_checkpointing")
    assert "could not read gradient checkpointing" in checkpointing.why


def test_unknown_finding_kind_is_a_clear_error() -> None:
    """A kind vramwatch does not produce is a ConfigError listing the valid ones."""
    with pytest.raises(ConfigError, match="unknown advice kind 'oops'"):
        advise(TrainerSettings(), "oops")


def test_render_text_is_numbered_ranked_and_limited() -> None:
    """Terminal output: one numbered line per change with saving and why below, and a count of the rest."""
    text = render_text(advise_cmdline(GUIDE_STORY), limit=3)
    lines = text.splitlines()
    assert lines[0] == "kohya-ss sd-scripts (flux_train_network.py): advice for oom_forecast"
    assert lines[1].strip() == "1. --gradient_checkpointing"
    assert lines[2].strip().startswith("saves: -60-70%")
    assert lines[3].strip().startswith("why: ")
    assert lines[4].strip().startswith("2. --train_batch_size 1")
    assert any(line.strip().startswith("(+") and line.strip().endswith("more)") for line in lines)
    assert "4. " not in text


def test_advice_to_dict_carries_no_argv_env_values_or_paths(tmp_path: Path) -> None:
    """JSON advice keeps settings and file names, never env values, secrets from argv, or full paths."""
    config = tmp_path / "secret-user" / "train.toml"
    config.parent.mkdir()
    config.write_text("[t]\ntrain_batch_size = 2\n")
    meta = ProcessMeta(
        pid=99,
        start_time=1.0,
        cmdline=(
            "python",
            "flux_train_network.py",
            "--config_file",
            "train.toml",
            "--huggingface_token",
            "hf_TOPSECRET",
        ),
        cwd=str(config.parent),
    )
    env = {"PYTORCH_CUDA_ALLOC_CONF": "garbage_collection_threshold:0.77", "HF_TOKEN": "hf_ENVSECRET"}
    data = advice_to_dict(advise_process(meta, "pressure", env=env))
    dumped = json.dumps(data)
    for forbidden in ("hf_TOPSECRET", "hf_ENVSECRET", "0.77", "secret-user", str(tmp_path)):
        assert forbidden not in dumped
    assert data["config_files"] == ["train.toml"]
    assert data["settings"]["batch_size"] == 2
    assert data["settings"]["allocator"] == {"expandable_segments": False, "max_split_size_mb": False}
    assert data["suggestions"][0]["rank"] == 1


def test_advise_process_without_cmdline_is_unknown_not_an_error() -> None:
    """A process whose command line could not be read still gets advice for what is knowable."""
    advice = advise_process(ProcessMeta(pid=1, start_time=None), "contention")
    assert advice.trainer == "unknown"
    assert any("command line could not be read" in note for note in advice.notes)


def test_advise_cmdline_reads_leading_env_assignments_and_rejects_bad_quoting() -> None:
    """`VAR=value cmd` sets the allow-listed environment; unbalanced quotes are a clear ConfigError."""
    advice = advise_cmdline(
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python my_train.py",
        "fragmentation",
        context={"torch_version": "2.4"},
    )
    assert not any("expandable_segments" in s.change for s in advice.suggestions)
    with pytest.raises(ConfigError, match="cannot split"):
        advise_cmdline("python 'unterminated")
    with pytest.raises(ConfigError, match="no command"):
        advise_cmdline("A=1")


# --- property: whatever the settings, never repeat an applied setting; ranks are 1..n -----------------

# Independent of rules.toml: what "already applied" means for each rule, in plain terms.
APPLIED: dict[str, Callable[[TrainerSettings], bool]] = {
    "gradient_checkpointing": lambda s: s.gradient_checkpointing is True,
    "batch_to_accumulation": lambda s: s.batch_size is not None and s.batch_size <= 1,
    "resolution_512": lambda s: s.resolution is not None and max(s.resolution) <= 512,
    "mixed_precision_bf16": lambda s: s.mixed_precision in ("bf16", "fp16"),
    "efficient_attention": lambda s: s.attention in ("sdpa", "xformers", "flash", "mem_eff"),
    "optimizer_8bit": lambda s: (
        s.optimizer is not None and "8bit" in s.optimizer.lower().replace("_", "").replace("-", "")
    ),
    "fp8_base": lambda s: s.fp8_base is True,
    "offload_blocks": lambda s: (s.blocks_to_swap or 0) > 0 or (s.layer_offload_fraction or 0) > 0,
    "cache_text_encoder_outputs": lambda s: s.cache_text_encoder_outputs is True,
    "cache_latents": lambda s: s.cache_latents is True,
    "network_dim_16": lambda s: s.network_dim is not None and s.network_dim <= 16,
    "allocator_expandable_segments": lambda s: "expandable_segments:true" in (s.alloc_conf or "").lower(),
    "allocator_max_split_size": lambda s: (
        "max_split_size_mb" in (s.alloc_conf or "") or "expandable_segments:true" in (s.alloc_conf or "").lower()
    ),
    "kohya_resumable": lambda s: s.resumable is True,
}

_maybe_bool = st.none() | st.booleans()
_settings = st.builds(
    TrainerSettings,
    trainer=st.sampled_from(
        [
            "kohya",
            "diffusers",
            "ai-toolkit",
            "onetrainer",
            "simpletuner",
            "transformers",
            "lightning",
            "pytorch",
            "unknown",
        ]
    ),
    model_family=st.none() | st.sampled_from(["flux", "sd3", "sdxl", "sd"]),
    batch_size=st.none() | st.integers(1, 64),
    grad_accum=st.none() | st.integers(1, 16),
    resolution=st.none() | st.tuples(st.integers(64, 2048), st.integers(64, 2048)),
    mixed_precision=st.none() | st.sampled_from(["no", "fp16", "bf16"]),
    gradient_checkpointing=_maybe_bool,
    optimizer=st.none()
    | st.sampled_from(
        ["AdamW", "AdamW8bit", "adamw8bit", "ADAMW_8BIT", "adamw_bnb_8bit", "Adafactor", "prodigy", "Lion"]
    ),
    attention=st.none() | st.sampled_from(["none", "sdpa", "xformers", "flash", "mem_eff"]),
    fp8_base=_maybe_bool,
    blocks_to_swap=st.none() | st.integers(0, 35),
    layer_offload_fraction=st.none() | st.sampled_from([0.0, 0.5]),
    cache_latents=_maybe_bool,
    cache_text_encoder_outputs=_maybe_bool,
    network_dim=st.none() | st.integers(1, 256),
    alloc_conf=st.none()
    | st.sampled_from(["", "expandable_segments:True", "max_split_size_mb:128", "garbage_collection_threshold:0.6"]),
    resumable=_maybe_bool,
    config_format=st.none() | st.sampled_from(["json", "toml", "env", "cmd"]),
)
_holders = st.lists(
    st.fixed_dictionaries(
        {
            "pid": st.integers(1, 99999),
            "name": st.text(alphabet="abcxyz_-.", max_size=8),
            "used_bytes": st.integers(0, 80 * GIB),
        }
    ),
    max_size=7,
)


@settings(max_examples=300, deadline=None)
@given(
    settings_=_settings,
    kind=st.sampled_from(sorted(ADVICE_KINDS)),
    torch_version=st.none() | st.sampled_from(["2.0.1", "2.1.0", "2.5.1+cu124"]),
    others=_holders,
)
def test_property_no_applied_setting_is_repeated_and_ranks_are_1_to_n(
    settings_: TrainerSettings, kind: str, torch_version: str | None, others: list[dict[str, object]]
) -> None:
    """For any settings and finding, no suggestion repeats an applied setting and ranks run 1..n."""
    context: dict[str, object] = {"others": others, "stale": others}
    if torch_version:
        context["torch_version"] = torch_version
    advice = advise(settings_, kind, context=context)
    assert [s.rank for s in advice.suggestions] == list(range(1, len(advice.suggestions) + 1))
    for suggestion in advice.suggestions:
        applied = APPLIED.get(suggestion.rule_id)
        assert applied is None or not applied(settings_), suggestion.rule_id
        assert suggestion.change.strip()
        assert "$" not in suggestion.change  # every placeholder was filled


def test_finding_helpers_feed_context_and_finding_advice() -> None:
    """holder_of turns a contention finding into a context entry; advice_lines gives Finding.advice lines."""
    finding = Finding(
        kind="contention",
        severity=Severity.WARNING,
        gpu_uuid="GPU-1",
        message="m",
        t=1.0,
        process=ProcessKey(4242, 1.0),
        process_name="python",
        numbers={"pid": 4242, "user": "bob", "used_bytes": 3 * GIB},
    )
    advice = advise(TrainerSettings(trainer="kohya"), "contention", context={"others": [holder_of(finding)]})
    assert advice.suggestions[0].change.startswith("python (pid 4242, bob) holds 3.0 GiB")
    lines = advice_lines(advise_cmdline(GUIDE_STORY), limit=2)
    assert lines == (
        "1. --gradient_checkpointing  [-60-70% activation memory; steps 20-30% slower]",
        "2. --train_batch_size 1 --gradient_accumulation_steps 4  [≈-75% activation memory (batch 4 -> 1)]",
    )


@pytest.mark.parametrize(
    ("cmdline", "cached"),
    [
        ("accelerate launch sdxl_train_network.py --train_batch_size 4 --resolution 1024", False),
        ("accelerate launch sdxl_train_network.py --train_batch_size 4 --network_train_unet_only", True),
        ("accelerate launch flux_train_network.py --train_batch_size 4", True),
    ],
)
def test_sdxl_is_told_to_cache_text_encoder_outputs_only_when_it_trains_the_unet_alone(
    cmdline: str, cached: bool
) -> None:
    """sdxl_train_network.py asserts --network_train_unet_only whenever --cache_text_encoder_outputs is given:
    the cache is suggested to an SDXL run only when it trains the U-Net's LoRA alone (Flux caches either way)."""
    rules = {s.rule_id for s in advise_cmdline(cmdline, "oom_forecast").suggestions}
    assert ("cache_text_encoder_outputs" in rules) is cached


@pytest.mark.parametrize(
    ("cmdline", "told"),
    [
        ("accelerate launch flux_train_network.py --train_batch_size 4", True),
        ("accelerate launch sdxl_train_network.py --train_batch_size 4", True),
        ("accelerate launch flux_train.py --train_batch_size 4", False),
        ("accelerate launch sdxl_train.py --train_batch_size 4", False),
        ("accelerate launch sd3_train.py --train_batch_size 4", False),
    ],
)
def test_fp8_base_is_suggested_where_a_frozen_base_is_kept(cmdline: str, told: bool) -> None:
    """--fp8_base stores the frozen base in 8 bits: a LoRA script is told it, a full fine-tune (which trains the base
    and parses the flag to no effect) is not."""
    rules = {s.rule_id for s in advise_cmdline(cmdline, "oom_forecast").suggestions}
    assert ("fp8_base" in rules) is told


def test_a_lightning_cli_run_is_told_its_changes_as_flags() -> None:
    """A run configured with LightningCLI's --trainer.* flags is told --trainer.precision and
    --trainer.accumulate_grad_batches; one started otherwise, the Trainer's Python arguments."""
    cli = {
        s.rule_id: s.change
        for s in advise_cmdline("python main.py fit --trainer.precision 32 --data.batch_size 8").suggestions
    }
    assert cli["mixed_precision_bf16"] == "--trainer.precision bf16-mixed"
    assert cli["batch_to_accumulation"].startswith("--data.batch_size 1 --trainer.accumulate_grad_batches 8 ")
    api = {s.rule_id: s.change for s in advise_cmdline("python -m lightning run model train.py").suggestions}
    assert api["mixed_precision_bf16"] == 'Trainer(precision="bf16-mixed")'


@pytest.mark.parametrize(("fmt", "change"), [("json", '"validation_disable": true'), ("cmd", "--validation_disable")])
def test_simpletuner_sampling_is_turned_off_with_validation_disable_never_a_zero_interval(
    fmt: str, change: str
) -> None:
    """A SimpleTuner run whose sampling does not fit is told validation_disable: a validation_steps of 0 makes
    SimpleTuner take the step modulo zero where validation prompts are set."""
    settings = TrainerSettings(trainer="simpletuner", config_format=fmt, sample_every_n_steps=100)
    (suggestion,) = [s for s in advise(settings, "sampling").suggestions if s.rule_id == "sample_less_often"]
    assert suggestion.change.startswith(change)
    assert 'validation_steps": 0' not in suggestion.change


def test_an_ai_toolkit_config_that_says_gradient_accumulation_is_changed_under_that_key(tmp_path: Path) -> None:
    """ai-toolkit refuses gradient_accumulation and gradient_accumulation_steps together (TrainConfig): a config that
    uses the first is told to change the first, and its accumulation is read from it."""
    config = tmp_path / "config"
    config.mkdir()
    text = (DATA / "ai-toolkit" / "config" / "flux_lora_24gb.yaml").read_text()
    assert "        gradient_accumulation_steps: 1\n" in text
    (config / "job.yaml").write_text(text.replace("gradient_accumulation_steps: 1", "gradient_accumulation: 3"))
    settings = recognize(["python", "run.py", "config/job.yaml"], cwd=str(tmp_path))
    assert settings.grad_accum == 3
    (batch,) = [s for s in advise(settings, "oom_forecast").suggestions if s.rule_id == "batch_to_accumulation"]
    assert batch.change.startswith("train.batch_size: 1 and train.gradient_accumulation: 6 ")
    assert "gradient_accumulation_steps:" not in batch.change


def test_onetrainer_is_told_the_whole_layer_offload_change() -> None:
    """OneTrainer offloads layers only under CPU_OFFLOADED checkpointing, which refuses more than one data loader
    thread: the change says (and applies) all three, not the fraction alone, which did nothing."""
    settings = TrainerSettings(trainer="onetrainer", model_family="flux", layer_offload_fraction=0.0)
    (offload,) = [s for s in advise(settings, "oom_forecast").suggestions if s.rule_id == "offload_blocks"]
    assert offload.change.startswith(
        '"gradient_checkpointing": "CPU_OFFLOADED", "layer_offload_fraction": 0.5, "dataloader_threads": 1'
    )


def test_a_diffusers_script_without_the_flags_is_never_told_them() -> None:
    """train_unconditional.py defines neither --gradient_checkpointing nor --use_8bit_adam (argparse would refuse
    them): it is advised as a PyTorch script, never told those flags."""
    advice = advise_cmdline("accelerate launch train_unconditional.py --train_batch_size 16 --resolution 256")
    changes = " ".join(s.change for s in advice.suggestions)
    assert advice.settings.trainer != "diffusers"
    assert "--gradient_checkpointing" not in changes
    assert "--use_8bit_adam" not in changes


def test_an_anima_run_is_advised_as_the_dit_it_is() -> None:
    """anima_train_network.py is its own family (it was read as SD 1.x): no --sdpa (its attention comes from
    attn_mode), no --fp8_base (it refuses fp8), and block swap, which it supports."""
    advice = advise_cmdline("accelerate launch anima_train_network.py --train_batch_size 2")
    rules = {s.rule_id for s in advice.suggestions}
    assert advice.settings.model_family == "anima"
    assert "efficient_attention" not in rules
    assert "fp8_base" not in rules
    assert "offload_blocks" in rules


@pytest.mark.parametrize(("script", "blocks"), [("flux_train_network.py", "28"), ("sd3_train_network.py", "18"),
                                                ("anima_train_network.py", "18")])  # fmt: skip
def test_block_swap_on_an_8_gib_card_asks_no_more_blocks_than_the_model_has(script: str, blocks: str) -> None:
    """The 8 GB row of sd-scripts' Flux table (28 blocks) is for Flux: SD3 medium (24 blocks) and Anima (28) refuse
    more than their blocks less two, so another family is asked for 18 at most."""
    settings = recognize(["python", script, "--train_batch_size", "2"], read_file=_no_files)
    context = {"gpu_total_bytes": 8 * GIB}
    suggestions = advise(settings, "oom_forecast", context=context).suggestions
    (swap,) = [s for s in suggestions if s.rule_id == "offload_blocks"]
    assert swap.change.startswith(f"--blocks_to_swap {blocks} ")
