"""`vramwatch probe`: a real short run of a stand-in trainer (no torch: its agent's figures follow a memory model)."""

from __future__ import annotations

import dataclasses
import io
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from vramwatch.cli import main
from vramwatch.model import StepRecord
from vramwatch.probing import (
    EXIT_FITS,
    EXIT_GROWTH,
    EXIT_PHASE,
    EXIT_UNMEASURED,
    ProbeConfig,
    ProbeResult,
    render_text,
    run_probe,
    verdict_text,
)
from vramwatch.steps import SAMPLE, SAVE, Outcome, Schedule, forecast, profile

TRAINER = Path(__file__).parent / "data" / "probe" / "flux_train_network.py"
QUICK = ProbeConfig(steps=120, max_seconds=60, stop_seconds=5)


def trainer(*flags: str) -> list[str]:
    return [sys.executable, str(TRAINER), *flags]


def test_a_run_that_fits_is_said_to_fit_with_its_spare() -> None:
    """Steps at 8 GiB, sampling at 10 GiB and the save (after the last step, brought into the test) at 9 GiB on a
    24 GiB card fit to --max_train_steps, with the spare stated."""
    result = run_probe(trainer("--max_train_steps", "3000", "--sample_every_n_steps", "100"), QUICK)
    assert result.exit_code == EXIT_FITS, render_text(result)
    assert result.verdict is not None
    assert result.verdict.outcome is Outcome.FITS
    assert result.verdict.step == 3000
    assert result.stopped == "measured"
    assert result.profile is not None
    assert [p.name for p in result.profile.phases] == [SAMPLE, SAVE]
    assert result.advice == ()


def test_the_probe_says_the_stop_is_its_own_before_it_interrupts_the_command() -> None:
    """Once measured, the probe says it stops the command with SIGINT before it does, so the trainer's
    KeyboardInterrupt traceback that follows does not read as a crash."""
    said = io.StringIO()
    result = run_probe(trainer("--max_train_steps", "3000"), QUICK, out=said)
    assert result.stopped == "measured"
    assert (
        "vramwatch probe: measured enough: stopping the command with SIGINT (a KeyboardInterrupt traceback from it "
        "now is this stop)\n"
    ) in said.getvalue()


def test_sampling_that_does_not_fit_is_named_before_it_is_reached() -> None:
    """Sampling at 23 GiB on a 24 GiB card, growing 2 MiB a step, soon reaches the allocator's margin: 'will run out
    at sampling'. (Sampling at a peak it has already reached, without growth, fits: it ran.)"""
    argv = trainer(
        *("--max_train_steps", "3000", "--sample_every_n_steps", "100"),
        *("--sample-gib", "23", "--leak-mib-per-step", "2"),
    )
    result = run_probe(argv, QUICK)
    assert result.exit_code == EXIT_PHASE, render_text(result)
    assert result.verdict is not None
    assert result.verdict.phase == SAMPLE
    assert result.profile is not None
    step = result.verdict.step
    assert step is not None
    assert step % 100 == 0
    assert step > result.profile.step  # the next sampling after the steps measured
    text = "\n".join(render_text(result))
    assert f"will run out at sampling after step {step:,}, --sample_every_n_steps 100" in text
    assert "--w 512 --h 512" in text  # the trainer's own words for a smaller sample


def test_growth_per_step_names_the_step() -> None:
    """A leak of 20 MiB a step on a 24 GiB card runs out around step 780, far beyond the 120 steps measured."""
    argv = trainer("--max_train_steps", "5000", "--leak-mib-per-step", "20")
    result = run_probe(argv, QUICK)
    assert result.exit_code == EXIT_GROWTH, render_text(result)
    assert result.verdict is not None
    assert result.verdict.step is not None
    assert 700 < result.verdict.step < 860
    assert result.profile is not None
    assert result.profile.growth_bytes_per_step == pytest.approx(20 << 20, rel=0.05)


def test_an_announced_phase_beyond_reach_is_not_assumed_to_fit() -> None:
    """Sampling announced for step 5,000 and not brought forward is reported as not measured (exit 6)."""
    argv = trainer("--max_train_steps", "9000", "--sample_every_n_steps", "5000")
    result = run_probe(argv, ProbeConfig(steps=120, max_seconds=60, stop_seconds=5, bring_forward=False))
    assert result.exit_code == EXIT_UNMEASURED, render_text(result)
    assert "not measured yet: sampling" in "\n".join(render_text(result))


def test_cli_prints_json_and_exits_with_the_verdicts_code(tmp_path: Path) -> None:
    """`vramwatch probe --json` prints the report for scripts and exits with the verdict's code."""
    argv = trainer("--max_train_steps", "5000", "--leak-mib-per-step", "20")
    out = CliRunner().invoke(main, ["probe", "--steps", "120", "--json", "--", *argv])
    assert out.exit_code == EXIT_GROWTH, out.output
    report = json.loads(out.output)
    assert report["verdict"]["outcome"] == "growth"
    assert report["steps"]["growth_bytes_per_step"] > 0
    assert report["message"].startswith("will run out at step ")
    assert len(report["records"]) == report["steps"]["measured"]  # one record a step, for replay


def test_sampling_that_cannot_fit_at_all_is_told_from_a_first_step_oom() -> None:
    """Sampling brought before step 1 runs out there; probed again as given, the steps pass: sampling is the answer."""
    argv = trainer("--max_train_steps", "3000", "--sample_every_n_steps", "100", "--sample-gib", "30")
    result = run_probe(argv, QUICK)
    assert result.exit_code == EXIT_PHASE, render_text(result)
    assert result.phase_oom == SAMPLE
    assert "--sample_at_first" not in result.argv  # the answer comes from the run as given
    assert "will run out at sampling (first after step 100, --sample_every_n_steps 100)" in "\n".join(
        render_text(result)
    )


def test_a_save_that_runs_out_in_the_probe_is_named() -> None:
    """A save after step 100 that needs more than the card is the phase the probe names, not the steps."""
    argv = trainer("--max_train_steps", "3000", "--save_every_n_steps", "100", "--save-gib", "30")
    result = run_probe(argv, QUICK)
    assert result.exit_code == EXIT_PHASE, render_text(result)
    assert result.phase_oom == "save"
    assert "will run out at saving (first after step 100, --save_every_n_steps 100)" in "\n".join(render_text(result))


@pytest.mark.parametrize(
    ("change", "argv", "expected"),
    [
        ("--gradient_checkpointing", ["t.py", "--lr", "1"], (["t.py", "--lr", "1", "--gradient_checkpointing"], {})),
        ("--gradient_checkpointing", ["t.py", "--gradient_checkpointing"], (["t.py", "--gradient_checkpointing"], {})),
        (
            "--mixed_precision bf16",
            ["t.py", "--mixed_precision", "no", "--x"],
            (["t.py", "--mixed_precision", "bf16", "--x"], {}),
        ),
        ("--mixed_precision bf16", ["t.py", "--mixed_precision=no"], (["t.py", "--mixed_precision=bf16"], {})),
        (
            "--train_batch_size 1 --gradient_accumulation_steps 4",
            ["t.py", "--train_batch_size", "4"],
            (["t.py", "--train_batch_size", "1", "--gradient_accumulation_steps", "4"], {}),
        ),
        (
            "--blocks_to_swap 18  (not together with --cpu_offload_checkpointing)",
            ["t.py"],
            (["t.py", "--blocks_to_swap", "18"], {}),
        ),
        (
            "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True  (in front of the launch command)",
            ["t.py"],
            (["t.py"], {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}),
        ),
        ("in the --sample_prompts file, smaller images per prompt: --w 512 --h 512", ["t.py"], None),
        ("train.gradient_checkpointing: true", ["run.py", "x.yaml"], None),
    ],
)
def test_a_suggested_change_applies_to_the_command_line_or_not_at_all(change, argv, expected) -> None:
    """Flags replace their value or are appended, a variable goes to the environment; anything else is not applied."""
    from vramwatch.probing import applied

    made = applied(argv, change)
    assert (None if made is None else (list(made[0]), made[1])) == expected


def test_try_measures_each_change_and_finds_the_one_that_fits() -> None:
    """A run whose steps need 30 GiB of a 24 GiB card: tried one at a time, checkpointing (15 GiB) fits."""
    from vramwatch.probing import EXIT_OOM, try_changes

    argv = trainer("--max_train_steps", "3000", "--step-gib", "30")
    result = run_probe(argv, QUICK)
    assert result.exit_code == EXIT_OOM, render_text(result)
    tries = try_changes(result, argv, 2, QUICK)
    tried = tries.tried
    assert [t.change for t in tried] == ["--gradient_checkpointing", "--mixed_precision bf16"]
    assert tries.not_tried == ()
    first = tried[0].result
    assert first.exit_code == EXIT_FITS, render_text(first)
    assert first.profile is not None
    assert first.profile.step_peak_allocated_bytes == 15 << 30
    text = "\n".join(render_text(result, tries))
    assert "with `--gradient_checkpointing`: fits to step 3,000" in text


def test_try_writes_a_config_files_change_into_a_copy_and_measures_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of 4 set in kohya's --dataset_config runs out; --try runs batch 1 on a copy of that file (its relative
    image_dir still found), measures it fitting at a quarter of the activations, and leaves the file as it was."""
    from vramwatch.probing import EXIT_OOM, to_json, try_changes

    monkeypatch.chdir(tmp_path)
    (tmp_path / "imgs").mkdir()
    dataset = tmp_path / "ds.toml"
    dataset.write_text(
        '[general]\nbatch_size = 4\n\n[[datasets]]\nresolution = 512\n\n[[datasets.subsets]]\nimage_dir = "imgs"\n',
        encoding="utf-8",
    )
    before = dataset.read_bytes()
    argv = trainer("--max_train_steps", "3000", "--step-gib", "8", "--dataset_config", "ds.toml")
    result = run_probe(argv, QUICK)
    assert result.exit_code == EXIT_OOM, render_text(result)  # 2 GiB + 4 x 6 GiB of activations on 24 GiB
    tries = try_changes(result, argv, 2, QUICK)
    tried = tries.tried
    assert [t.change for t in tried] == [
        "--gradient_checkpointing",
        "batch_size = 1 in ds.toml ([[datasets]]/[general]; it overrides --train_batch_size), "
        "plus --gradient_accumulation_steps 4",
    ]
    batch = tried[1]
    assert batch.config is not None
    assert batch.config.original == str(dataset)
    assert batch.config.set == (("datasets[0].batch_size", 1),)
    assert batch.argv[-4:] == ("--dataset_config", batch.config.copy, "--gradient_accumulation_steps", "4")
    assert batch.result.exit_code == EXIT_FITS, render_text(batch.result)
    assert batch.result.profile is not None
    assert batch.result.profile.step_peak_allocated_bytes == 8 << 30
    assert tried[0].result.profile is not None
    assert tried[0].result.profile.step_peak_allocated_bytes == 13 << 30  # checkpointing: half of 26 GiB
    assert dataset.read_bytes() == before
    assert not Path(batch.config.copy).parent.exists()
    text = "\n".join(render_text(result, tries))
    assert "plus --gradient_accumulation_steps 4` (in a copy of ds.toml: datasets[0].batch_size = 1): fits" in text
    report = to_json(result, tries)["tried"]
    assert report[0]["config_file"] is None
    assert report[1]["config_file"] == {
        "original": str(dataset),
        "copy": batch.config.copy,
        "set": {"datasets[0].batch_size": 1},
    }


LAUNCHER = Path(__file__).parent / "data" / "probe" / "launcher.py"
LONG = ProbeConfig(steps=100_000, max_seconds=60, stop_seconds=5)  # ends only by what the test does


def gone(pid: int | None) -> bool:
    """The process has ended (or is a zombie its parent has yet to reap)."""
    from vramwatch.probing import _proc_stat

    assert pid is not None
    stat = _proc_stat(pid)
    return stat is None or stat.state in "ZX"


def test_a_crash_before_the_measurement_is_a_failure_not_a_fit() -> None:
    """A trainer that raises at step 60 (exit 1, no OOM) is exit 1 with its status, not 'fits' from 59 steps."""
    from vramwatch.probing import EXIT_FAILED, verdict_text

    result = run_probe(trainer("--max_train_steps", "3000", "--crash-at-step", "60"), QUICK)
    assert result.exit_code == EXIT_FAILED, render_text(result)
    assert result.stopped == "exited"
    assert result.exit_status == 1
    assert f"crashed (exit status 1) after step {result.measured_steps}" in verdict_text(result)
    assert 0 < result.measured_steps < 60  # the steps of its last moments may not have been sent


def test_a_probe_stopped_by_the_time_limit_says_how_much_it_measured() -> None:
    """Stopped at the time limit short of the steps asked: 'measured only K of N steps', exit 6, never 'fits'."""
    from vramwatch.probing import verdict_text

    argv = trainer("--max_train_steps", "3000", "--step-seconds", "0.02")
    result = run_probe(argv, ProbeConfig(steps=1000, max_seconds=2, stop_seconds=5))
    assert result.stopped == "time"
    assert result.exit_code == EXIT_UNMEASURED, render_text(result)
    assert f"measured only {result.measured_steps:,} of 1,000 steps" in verdict_text(result)
    assert 0 < result.measured_steps < 1000


def test_a_launcher_that_keeps_sigint_to_itself_still_has_its_trainer_stopped() -> None:
    """A wrapper that ignores SIGINT and never passes it on: the whole group is signalled, the trainer ends."""
    argv = [sys.executable, str(LAUNCHER), *trainer("--max_train_steps", "1000000", "--step-seconds", "0.005")]
    result = run_probe(argv, QUICK)
    assert result.stopped == "measured", render_text(result)
    assert result.seconds < QUICK.stop_seconds + 10  # SIGINT did it: no wait for SIGTERM
    assert gone(result.pid)


def test_the_users_own_sample_at_first_does_not_take_the_blame_for_a_first_step_oom() -> None:
    """With the command's own --sample_at_first, an OOM before step 1 is probed again without it: the step's."""
    from vramwatch.probing import EXIT_OOM

    argv = trainer(
        "--max_train_steps", "3000", "--sample_every_n_steps", "100", "--sample_at_first", "--step-gib", "30"
    )
    result = run_probe(argv, QUICK)
    assert result.exit_code == EXIT_OOM, render_text(result)
    assert result.phase_oom is None
    assert "--sample_at_first" not in result.argv


def test_the_users_own_sample_at_first_is_blamed_when_the_steps_pass_without_it() -> None:
    """With the command's own --sample_at_first and a sample that cannot fit, the run without it passes step 1."""
    argv = trainer(
        "--max_train_steps", "3000", "--sample_every_n_steps", "100", "--sample_at_first", "--sample-gib", "30"
    )
    result = run_probe(argv, QUICK)
    assert result.exit_code == EXIT_PHASE, render_text(result)
    assert result.phase_oom == SAMPLE


def test_the_json_verdict_agrees_with_the_exit_code() -> None:
    """An OOM in a save (exit 4) has the PHASE outcome in the JSON; an OOM in a training step (exit 3) none."""
    from vramwatch.probing import EXIT_OOM, to_json

    save = run_probe(trainer("--max_train_steps", "3000", "--save_every_n_steps", "100", "--save-gib", "30"), QUICK)
    report = to_json(save)
    assert report["exit_code"] == EXIT_PHASE
    assert report["verdict"]["outcome"] == "phase"
    assert report["verdict"]["phase"] == "save"
    assert report["verdict"]["step"] == 100
    step = run_probe(trainer("--max_train_steps", "3000", "--step-gib", "30"), QUICK)
    assert to_json(step)["exit_code"] == EXIT_OOM
    assert to_json(step)["verdict"] is None


def test_a_re_probe_that_measures_no_step_does_not_blame_the_phase() -> None:
    """Sampling brought forward runs out; the run as given crashes before step 1: no phase is concluded."""
    from vramwatch.probing import EXIT_OOM

    argv = trainer(
        "--max_train_steps", "3000", "--sample_every_n_steps", "100", "--sample-gib", "30", "--crash-at-step", "1"
    )
    result = run_probe(argv, QUICK)
    assert result.exit_code == EXIT_OOM, render_text(result)
    assert result.phase_oom is None
    assert any("unknown" in note for note in result.notes)


def test_a_re_probe_that_runs_out_after_a_plain_step_is_a_plain_oom() -> None:
    """The run as given passes step 1 and runs out from a leak at a step with no phase: that OOM is the answer."""
    from vramwatch.probing import EXIT_OOM

    argv = trainer(
        "--max_train_steps", "3000", "--sample_every_n_steps", "100", "--sample-gib", "30", "--leak-mib-per-step", "200"
    )
    result = run_probe(argv, QUICK)
    assert result.exit_code == EXIT_OOM, render_text(result)
    assert result.phase_oom is None
    assert result.oom_after_step is not None
    assert 0 < result.oom_after_step < 100


def test_a_trainer_that_hangs_after_its_oom_is_stopped() -> None:
    """After an OOM report the command gets stop_seconds to end by itself, then its group is stopped."""
    from vramwatch.probing import EXIT_OOM

    argv = trainer("--max_train_steps", "3000", "--step-gib", "30", "--hang-after-oom", "30")
    result = run_probe(argv, ProbeConfig(steps=120, max_seconds=60, stop_seconds=1))
    assert result.exit_code == EXIT_OOM, render_text(result)
    assert result.seconds < 15


def test_ctrl_c_stops_the_command_and_says_the_probe_was_interrupted() -> None:
    """A SIGINT to vramwatch during a probe stops the command's group: exit 130, 'interrupted', no verdict."""
    import os
    import signal
    import threading

    from vramwatch.probing import EXIT_INTERRUPTED, to_json, verdict_text

    timer = threading.Timer(2.0, os.kill, args=(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        result = run_probe(trainer("--max_train_steps", "1000000", "--step-seconds", "0.005"), LONG)
    finally:
        timer.cancel()
    assert result.exit_code == EXIT_INTERRUPTED, render_text(result)
    assert "interrupted" in verdict_text(result)
    assert to_json(result)["verdict"] is None
    assert result.seconds < 15
    assert gone(result.pid)


def test_the_cli_exits_130_on_ctrl_c_and_tries_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C outside a test run (here: raised by a stand-in run_probe) prints 'interrupted' and exits 130."""
    from vramwatch import probing

    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    def no_tries(*_args: object, **_kwargs: object) -> list[object]:
        raise AssertionError("--try must not run after an interrupt")

    monkeypatch.setattr(probing, "run_probe", interrupted)
    monkeypatch.setattr(probing, "try_changes", no_tries)
    out = CliRunner().invoke(main, ["probe", "--try", "2", "--", "python", "train.py"])
    assert out.exit_code == 130, out.output
    assert "interrupted" in out.output


def test_the_test_run_writes_into_a_temporary_directory_not_the_users(tmp_path: Path) -> None:
    """kohya's --output_dir is pointed at a temporary directory, removed after: the user's stays untouched."""
    users = tmp_path / "out"
    argv = trainer("--max_train_steps", "3000", "--sample_every_n_steps", "50", "--output_dir", str(users))
    result = run_probe(argv, QUICK)
    assert result.exit_code == EXIT_FITS, render_text(result)
    assert not users.exists()
    used = result.argv[result.argv.index("--output_dir") + 1]
    assert used != str(users)
    assert not Path(used).exists()
    assert any("temporary directory" in note for note in result.notes)


def test_a_diffusers_output_dir_is_redirected_after_the_script_not_in_the_launcher() -> None:
    """diffusers' --output_dir is replaced among the script's arguments of an `accelerate launch` command."""
    from vramwatch.advice.trainers import by_id
    from vramwatch.probing import redirect_output

    argv = ["accelerate", "launch", "--num_processes", "1", "train_dreambooth_lora_flux.py", "--output_dir", "mine"]
    made, _ = redirect_output(argv, by_id("diffusers"), "/tmp/probe-x")
    assert made == (*argv[:5], "--output_dir", "/tmp/probe-x")


def test_the_probe_counts_steps_even_when_the_environment_turns_them_off() -> None:
    """VRAMWATCH_AGENT_STEPS=0 in the caller's environment is overridden: the probe needs the steps."""
    import os

    env = {**os.environ, "VRAMWATCH_AGENT_STEPS": "0"}
    result = run_probe(trainer("--max_train_steps", "3000"), QUICK, env=env)
    assert result.exit_code == EXIT_FITS, render_text(result)


def test_an_agent_that_counts_no_steps_ends_the_probe_at_once() -> None:
    """A hello saying step counting is off (torch without the hook) stops the probe: exit 1, and why."""
    from vramwatch.probing import EXIT_FAILED, verdict_text

    result = run_probe(trainer("--max_train_steps", "1000000", "--no-step-hook"), LONG)
    assert result.exit_code == EXIT_FAILED, render_text(result)
    assert result.stopped == "no_steps"
    assert "counts no optimizer steps" in verdict_text(result)
    assert result.seconds < 15


def test_a_run_with_no_step_in_time_ends_the_probe() -> None:
    """No optimizer step within the first-step limit (an optimizer the hook misses): exit 1, and why."""
    from vramwatch.probing import EXIT_FAILED, verdict_text

    config = ProbeConfig(steps=120, max_seconds=60, stop_seconds=5, first_step_seconds=2)
    result = run_probe(trainer("--no-steps"), config)
    assert result.exit_code == EXIT_FAILED, render_text(result)
    assert "no optimizer step was counted" in verdict_text(result)
    assert result.seconds < 15


def test_a_command_that_never_uses_cuda_is_said_so() -> None:
    """A command no agent ever reported from (no torch, no CUDA) ends the probe saying that, not that its optimizer
    bypasses the step hooks."""
    from vramwatch.probing import EXIT_FAILED, verdict_text

    config = ProbeConfig(steps=120, max_seconds=60, stop_seconds=5, first_step_seconds=2)
    result = run_probe([sys.executable, "-c", "import time; time.sleep(30)"], config)
    assert result.exit_code == EXIT_FAILED, render_text(result)
    assert "no process of the command reported PyTorch's CUDA memory" in verdict_text(result)
    assert "optimizer" not in verdict_text(result)
    assert result.seconds < 15


def test_the_first_step_limit_is_at_least_two_minutes_or_half_the_time_limit() -> None:
    """By default a run gets max(120 s, half of --max-time) to reach its first optimizer step."""
    assert ProbeConfig(max_seconds=60).no_step_seconds == 120
    assert ProbeConfig(max_seconds=1800).no_step_seconds == 900


@pytest.mark.parametrize(
    ("argv", "change", "expected"),
    [
        (
            ["accelerate", "launch", "--num_processes", "1", "--mixed_precision", "fp16", "train.py", "--lr", "1"],
            "--mixed_precision bf16",
            [
                "accelerate",
                "launch",
                "--num_processes",
                "1",
                "--mixed_precision",
                "fp16",
                "train.py",
                "--lr",
                "1",
                "--mixed_precision",
                "bf16",
            ],
        ),
        (
            ["accelerate", "launch", "--mixed_precision=fp16", "t.py", "--mixed_precision=no"],
            "--mixed_precision bf16",
            ["accelerate", "launch", "--mixed_precision=fp16", "t.py", "--mixed_precision=bf16"],
        ),
        (
            ["python", "-m", "trainer.main", "--batch_size", "4"],
            "--batch_size 1",
            ["python", "-m", "trainer.main", "--batch_size", "1"],
        ),
        (
            ["torchrun", "--nproc_per_node", "1", "--gradient_checkpointing", "t.py"],
            "--gradient_checkpointing",
            ["torchrun", "--nproc_per_node", "1", "--gradient_checkpointing", "t.py", "--gradient_checkpointing"],
        ),
    ],
)
def test_a_change_applies_to_the_scripts_arguments_never_the_launchers(argv, change, expected) -> None:
    """A launcher's own options (before the script or `-m module`) are left alone; the script's are changed."""
    from vramwatch.probing import applied

    made = applied(argv, change)
    assert made is not None
    assert list(made[0]) == expected


def test_each_named_phase_has_its_advice() -> None:
    """Every phase the schedule names has an entry in the one phase -> advice table."""
    from vramwatch.probing import PHASE_ADVICE
    from vramwatch.steps import PHASE_INTERVALS

    assert set(PHASE_ADVICE) == set(PHASE_INTERVALS)


@pytest.mark.parametrize(
    ("phase", "kinds"),
    [(SAMPLE, ("sampling", "plateau")), ("save", ("plateau",)), ("sample+save", ("sampling", "plateau"))],
)
def test_run_and_probe_take_a_phases_advice_from_one_decision(phase: str, kinds: tuple[str, ...]) -> None:
    """A forecast running out in a phase and a probe that ran out in it get the same advisor situations."""
    from vramwatch.probing import advice_kinds
    from vramwatch.steps import Verdict

    verdict = Verdict(Outcome.PHASE, 100, phase, 1, 2, 0, None, ())
    assert advice_kinds(verdict) == kinds
    assert advice_kinds(None, phase_oom=phase) == kinds


# A probe's answer from measured records, without running a command: the forecast's outcome -> the exit code.

GIB = 1 << 30
MIB = 1 << 20


def records(
    steps: int, peak: Callable[[int], int], *, stays: Callable[[int], int] = lambda k: 4 * GIB
) -> list[StepRecord]:
    """One record per step: `peak(k)` is the interval peak ending at step k, `stays(k)` what stays allocated."""
    return [
        StepRecord(1, 0, k, k, float(k), 0.5, peak(k), peak(k) + 512 * MIB, stays(k), peak(k) + 512 * MIB)
        for k in range(1, steps + 1)
    ]


def measured(recs: Sequence[StepRecord], schedule: Schedule, capacity: int, **fields: Any) -> ProbeResult:
    """The result of a probe that measured `recs` (all it was asked to) on a card with `capacity` usable."""
    prof = profile(recs, schedule)
    assert prof is not None
    verdict = forecast(prof, schedule, capacity)
    base: dict[str, Any] = {
        "argv": ("flux_train_network.py",),
        "trainer": "kohya",
        "schedule": schedule,
        "notes": (),
        "seconds": 10.0,
        "stopped": "measured",
        "exit_status": None,
        "pid": 1,
        "profile": prof,
        "verdict": verdict,
        "capacity_bytes": capacity,
        "oom": None,
        "oom_after_step": None,
        "records": tuple(recs),
        "steps_asked": len(recs),
        "complete": True,
    }
    return ProbeResult(**{**base, **fields})


def test_every_forecast_outcome_has_an_exit_code() -> None:
    """Each `Outcome` maps to an exit code, so a new outcome can never read as "fits" (exit 0)."""
    from vramwatch.probing import OUTCOME_EXIT

    assert set(OUTCOME_EXIT) == set(Outcome)
    assert all(code != EXIT_FITS for outcome, code in OUTCOME_EXIT.items() if outcome is not Outcome.FITS)


def _sampling(k: int) -> int:
    return 12 * GIB if k > 1 and (k - 1) % 50 == 0 else 8 * GIB


PLAIN = Schedule(max_steps=5000)
SAMPLING = Schedule(max_steps=5000, sample_every=50)


def _leak(k: int) -> int:
    return 20 * MIB * k


@pytest.mark.parametrize(
    ("recs", "schedule", "capacity", "outcome", "code"),
    [
        (records(200, lambda k: 8 * GIB), PLAIN, 24 * GIB, Outcome.FITS, EXIT_FITS),
        # The steps peaked at 8 GiB and only 7 GiB can be used now: the next step runs out, with no growth.
        (records(200, lambda k: 8 * GIB), PLAIN, 7 * GIB, Outcome.STEP, EXIT_GROWTH),
        (
            records(200, lambda k: 8 * GIB + _leak(k), stays=lambda k: 4 * GIB + _leak(k)),
            PLAIN,
            24 * GIB,
            Outcome.GROWTH,
            EXIT_GROWTH,
        ),
        (records(200, _sampling), SAMPLING, 11 * GIB, Outcome.PHASE, EXIT_PHASE),
    ],
    ids=["fits", "step", "growth", "phase"],
)
def test_each_forecast_outcome_exits_with_its_code(
    recs: list[StepRecord], schedule: Schedule, capacity: int, outcome: Outcome, code: int
) -> None:
    """The exit code follows the forecast's outcome: a flat step overflow (STEP) is exit 5, like growth."""
    result = measured(recs, schedule, capacity)
    assert result.verdict is not None
    assert result.verdict.outcome is outcome
    assert result.exit_code == code
    assert result.runs_out is (code != EXIT_FITS)


def test_a_flat_step_overflow_is_said_as_a_training_step_in_json_and_text() -> None:
    """STEP reads "will run out at step N" in the message and the printed verdict, outcome "step" in the JSON."""
    from vramwatch.probing import to_json

    result = measured(records(200, lambda k: 8 * GIB), Schedule(max_steps=3000), 7 * GIB)
    report = to_json(result)
    assert report["exit_code"] == EXIT_GROWTH
    assert report["verdict"]["outcome"] == "step"
    assert report["verdict"]["step"] == 201
    assert report["message"].startswith("will run out at step 201: a training step needs")
    assert "verdict: will run out at step 201" in "\n".join(render_text(result))


def test_a_flat_step_overflow_gets_the_size_of_a_step_as_advice_even_with_growth() -> None:
    """A step whose own peak no longer fits is advised as a spike (a step's size), never as a leak."""
    from vramwatch.probing import advice_kinds
    from vramwatch.steps import Verdict

    verdict = Verdict(Outcome.STEP, 201, None, 8 * GIB, 7 * GIB, 256 * MIB, 3000, ())
    result = measured(records(200, lambda k: 8 * GIB, stays=lambda k: 4 * GIB + MIB * k), Schedule(), 24 * GIB)
    assert result.profile is not None
    assert result.profile.growth_bytes_per_step > 0
    assert advice_kinds(verdict, result.profile) == ("spike",)


def test_the_documented_exit_code_table_has_every_exit_code() -> None:
    """docs/agent.md's probe exit-code table has one row for each `EXIT_*` code, and no other."""
    import re

    from vramwatch import probing

    codes = {value for name, value in vars(probing).items() if name.startswith("EXIT_")}
    doc = (Path(__file__).parents[1] / "docs" / "agent.md").read_text()
    table = doc[doc.index("| exit code | verdict |") :].split("\n\n", maxsplit=1)[0]
    assert {int(m) for m in re.findall(r"^\| (\d+) \|", table, flags=re.MULTILINE)} == codes


@pytest.mark.parametrize(
    ("argv", "save_at_end"),
    [
        (["python", "flux_train_network.py", "--max_train_steps", "3000"], True),  # kohya saves after its loop
        (["python", "train_dreambooth_lora_flux.py", "--max_train_steps", "3000"], False),
        (["python", "train.py"], False),  # unrecognised: nothing known of a save at the end
    ],
)
def test_the_schedule_carries_the_trainers_save_at_the_end(argv: list[str], save_at_end: bool) -> None:
    """`schedule_of` passes the trainer's save after its last step on, so that save is forecast."""
    from vramwatch.advice import recognize
    from vramwatch.probing import schedule_of

    assert schedule_of(recognize(argv, cwd="/", env={})).save_at_end is save_at_end


@pytest.mark.parametrize(
    ("schedule", "code", "counted", "at_end"),
    [
        (Schedule(max_steps=3000), EXIT_FITS, [], []),
        # kohya with no --save_every_n_steps: its only save is after step 3,000, which no probe reaches.
        (Schedule(max_steps=3000, save_at_end=True), EXIT_FITS, [], ["save"]),
        # A save every 1,000 steps is announced within the run and was not measured: fits as far as measured.
        (Schedule(max_steps=3000, save_every=1000, save_at_end=True), EXIT_UNMEASURED, ["save"], []),
        # No known end: no save at the end to forecast.
        (Schedule(save_at_end=True), EXIT_FITS, [], []),
    ],
    ids=["no-save", "save-only-at-end", "save-every-1000", "no-end"],
)
def test_a_save_only_after_the_last_step_does_not_make_a_probe_partial(
    schedule: Schedule, code: int, counted: list[str], at_end: list[str]
) -> None:
    """An unmeasured save that runs only after the last step is named, never an exit 6; a periodic one is."""
    from vramwatch.probing import to_json

    result = measured(records(200, lambda k: 8 * GIB), schedule, 24 * GIB)
    assert result.exit_code == code
    verdict = to_json(result)["verdict"]
    assert (verdict["unmeasured"], verdict["unmeasured_at_end"]) == (counted, at_end)
    if at_end:
        assert "not measured yet: saving (only after the last step)" in verdict_text(result)


def test_no_bring_forward_leaves_the_save_after_the_last_step_unmeasured() -> None:
    """With --no-bring-forward, a kohya run with no --save_every_n_steps whose final save cannot fit is still said
    to fit (exit 0), its save named as not measured: the command runs as given, as before saves were brought in."""
    argv = trainer("--max_train_steps", "3000", "--final-save", "--save-gib", "30")
    out = CliRunner().invoke(main, ["probe", "--steps", "120", "--no-bring-forward", "--json", "--", *argv])
    assert out.exit_code == EXIT_FITS, out.output
    report = json.loads(out.output)
    assert "--save_every_n_steps" not in report["argv"]
    assert report["schedule"]["probe_save_every"] is None
    assert report["verdict"]["unmeasured_at_end"] == ["save"]
    assert report["message"].endswith("not measured yet: saving (only after the last step)")
    assert [p["name"] for p in report["phases"]] == []


def _grows(k: int) -> int:
    return 4 * GIB + MIB * k


def _sample_first_only(k: int) -> int:
    """Sampling before step 1 with the start-up at 12 GiB; steps at 8 GiB, growing 1 MiB a step."""
    return 12 * GIB if k == 1 else 8 * GIB + MIB * k


def _sample_again_after_100(k: int) -> int:
    """As `_sample_first_only`, and the sampling after step 100 measured alone at 11 GiB."""
    return 11 * GIB + MIB * k if k == 101 else _sample_first_only(k)


@pytest.mark.parametrize(
    ("peak", "every", "upper_bound", "words"),
    [
        (_sample_first_only, 1000, True, "may run out at sampling after step 1,000"),
        (_sample_again_after_100, 100, False, "will run out at sampling after step 1,200"),
    ],
    ids=["measured-only-before-step-1", "measured-after-a-step"],
)
def test_the_json_says_when_a_phase_peak_is_only_an_upper_bound(
    peak: Callable[[int], int], every: int, upper_bound: bool, words: str
) -> None:
    """A phase seen only before step 1 (with the start-up) is an upper bound in the JSON's phase and verdict."""
    from vramwatch.probing import to_json

    schedule = Schedule(max_steps=3000, sample_every=every, sample_at_first=True)
    result = measured(records(200, peak, stays=_grows), schedule, int(12.5 * GIB))
    report = to_json(result)
    assert report["exit_code"] == EXIT_PHASE
    assert report["verdict"]["upper_bound"] is upper_bound
    assert [p["upper_bound"] for p in report["phases"]] == [upper_bound]
    assert report["message"].startswith(words)
    bound = "(an upper bound: measured only before step 1, with the start-up)"
    assert (bound in "\n".join(render_text(result))) is upper_bound


def test_the_json_gives_the_largest_peak_executed() -> None:
    """`steps.executed_peak_allocated_bytes` is the largest peak of any record, start-up and phases included."""
    from vramwatch.probing import to_json

    schedule = Schedule(max_steps=3000, sample_every=1000, sample_at_first=True)
    report = to_json(measured(records(200, _sample_first_only, stays=_grows), schedule, 24 * GIB))
    assert report["steps"]["executed_peak_allocated_bytes"] == 12 * GIB
    assert report["steps"]["peak_allocated_bytes"] < 12 * GIB


def test_a_phase_that_ran_out_in_the_probe_is_no_upper_bound() -> None:
    """A save that ran out in the probe (exit 4) is a fact: its JSON verdict says upper_bound false."""
    from vramwatch.probing import to_json

    save = run_probe(trainer("--max_train_steps", "3000", "--save_every_n_steps", "100", "--save-gib", "30"), QUICK)
    verdict = to_json(save)["verdict"]
    assert (verdict["phase"], verdict["upper_bound"]) == ("save", False)


# A save the probe would not reach (only after the last step, or first beyond --reach), brought into the test.


def test_a_save_after_the_last_step_that_cannot_fit_is_named_without_running_to_the_end() -> None:
    """kohya with no --save_every_n_steps saves only after step 3,000: the probe adds --save_every_n_steps 108, the
    save runs out there, and the answer is exit 4 at that save (not a training step's OOM), after 108 steps."""
    from vramwatch.probing import to_json

    argv = trainer("--max_train_steps", "3000", "--final-save", "--save-gib", "30")
    result = run_probe(argv, QUICK)
    assert result.exit_code == EXIT_PHASE, render_text(result)
    assert result.phase_oom == SAVE
    assert result.oom_after_step == result.schedule.probe_save_every == 108
    assert result.measured_steps == 108  # stopped at the save, far from step 3,000
    assert result.argv[-2:] == ("--save_every_n_steps", "108")
    assert result.schedule.save_every is None  # the run's own schedule, not the test's argv
    text = "\n".join(render_text(result))
    assert "note: added --save_every_n_steps 108: the run saves only after its last step (step 3,000)" in text
    assert (
        "verdict: will run out at saving (after the last step, step 3,000): in this probe (the save brought "
        "forward to after step 108) it asked for 28.00 GiB"
    ) in text
    verdict = to_json(result)["verdict"]
    assert (verdict["outcome"], verdict["phase"], verdict["step"]) == ("phase", "save", 3000)


def test_a_save_after_the_last_step_that_fits_is_measured_and_forecast_at_the_last_step() -> None:
    """The save brought into the test fits: exit 0, its peak among the phases, and the forecast takes it to the
    run's save after step 3,000 with the growth since step 108 (the run's schedule, not the test's interval)."""
    from vramwatch.probing import to_json

    argv = trainer("--max_train_steps", "3000", "--final-save", "--save-gib", "12", "--leak-mib-per-step", "2")
    result = run_probe(argv, QUICK)
    assert result.exit_code == EXIT_FITS, render_text(result)
    assert result.profile is not None
    assert result.verdict is not None
    save = next(p for p in result.profile.phases if p.name == SAVE)
    # The stop lands after the agent's next report: on a fast or loaded machine the test may save again (at 216,
    # 324, ...), never at the run's own schedule; no period is learned from the test's interval either way.
    assert save.seen_after[0] == 108
    assert all(k % 108 == 0 for k in save.seen_after)
    assert (save.peak_allocated_bytes, save.period) == (12 * GIB, None)
    assert result.profile.step_peak_allocated_bytes < 9 * GIB  # the save's record is not a training step
    growth = result.profile.growth_bytes_per_step
    assert growth == pytest.approx(2 * MIB, rel=0.05)
    assert result.verdict.needed_bytes == 12 * GIB + int(growth * (3000 - 108))
    assert result.unmeasured_at_end == ()
    assert "not measured" not in verdict_text(result)
    phases = {p["name"]: p for p in to_json(result)["phases"]}
    assert phases[SAVE]["peak_allocated_bytes"] == 12 * GIB


def test_a_periodic_save_beyond_reach_is_brought_into_the_test_and_named_at_its_own_step() -> None:
    """--save_every_n_steps 5000 is beyond --reach: the test saves after step 108 in its place, runs out, and the
    answer names the run's first save, after step 5,000."""
    from vramwatch.probing import to_json

    argv = trainer("--max_train_steps", "9000", "--save_every_n_steps", "5000", "--save-gib", "30")
    result = run_probe(argv, QUICK)
    assert result.exit_code == EXIT_PHASE, render_text(result)
    assert result.phase_oom == SAVE
    assert "5000" not in result.argv
    assert result.argv[result.argv.index("--save_every_n_steps") + 1] == "108"
    text = "\n".join(render_text(result))
    assert "note: set --save_every_n_steps 108 (was 5000): the run saves first after step 5,000" in text
    assert "will run out at saving (first after step 5,000, --save_every_n_steps 5000)" in text
    assert to_json(result)["verdict"]["step"] == 5000


def test_a_save_after_the_last_step_the_probe_reaches_is_named_when_it_runs_out() -> None:
    """A 50-step run, shorter than the probe, runs out in its save after its last step: exit 4 at that save, not a
    training step's OOM, with nothing brought forward."""
    argv = trainer("--max_train_steps", "50", "--final-save", "--save-gib", "30")
    result = run_probe(argv, dataclasses.replace(QUICK, bring_forward=False))
    assert result.exit_code == EXIT_PHASE, render_text(result)
    assert (result.phase_oom, result.oom_after_step) == (SAVE, 50)
    assert "will run out at saving (after the last step, step 50)" in verdict_text(result)


@pytest.mark.parametrize(
    ("steps", "schedule", "step"),
    [
        (200, Schedule(max_steps=3000, save_at_end=True), 180),  # a tenth of the steps after it
        (20, Schedule(max_steps=3000, save_at_end=True), 18),  # and at least 2
        (200, Schedule(max_steps=50, save_at_end=True), 45),  # the run ends before the probe's steps
        (200, Schedule(max_steps=3000, sample_every=60, save_at_end=True), 179),  # not after a sampling step
        (4, Schedule(max_steps=3000, save_at_end=True), 2),
        (3, Schedule(max_steps=3000, save_at_end=True), None),  # it would come right after the start-up
    ],
    ids=["default", "few-steps", "short-run", "off-sampling", "least", "too-few"],
)
def test_the_save_brought_forward_comes_late_alone_and_after_a_training_step(
    steps: int, schedule: Schedule, step: int | None
) -> None:
    """K = W - max(2, W/10) for the W steps the probe measures, moved off a step with another phase, never below 2."""
    from vramwatch.probing import save_step

    assert save_step(schedule, steps) == step


@pytest.mark.parametrize(
    ("argv", "added"),
    [
        (["flux_train_network.py", "--max_train_steps", "3000"], ("--save_every_n_steps", "180")),
        (["flux_train_network.py", "--max_train_steps", "3000", "--save_every_n_steps", "100"], None),  # in reach
        (["flux_train_network.py", "--max_train_epochs", "10"], None),  # no step known for its save
        (["train_dreambooth_lora_flux.py", "--max_train_steps", "9000", "--checkpointing_steps", "5000"],
         ("--checkpointing_steps", "180")),
        (["train_dreambooth_lora_flux.py"], None),  # --checkpointing_steps 500 by default: in reach
        # No checkpoint within 3,000 steps; diffusers' end of training is another thing, not announced.
        (["train_dreambooth_lora_flux.py", "--max_train_steps", "3000", "--checkpointing_steps", "5000"], None),
    ],
    ids=["kohya-at-end", "kohya-in-reach", "kohya-epochs", "diffusers-beyond-reach", "diffusers-default",
         "diffusers-none-in-run"],
)  # fmt: skip
def test_a_save_is_brought_forward_only_where_the_probe_would_not_reach_it(
    argv: list[str], added: tuple[str, str] | None
) -> None:
    """The trainer's periodic save flag is set (appended or replaced) only for a save the run makes after its last
    step or first beyond --reach; the run's schedule says so, the test's argv never enters it."""
    from vramwatch.advice import recognize
    from vramwatch.advice.trainers import by_id
    from vramwatch.probing import bring_save_forward, schedule_of

    command = ["python", *argv]
    settings = recognize(command, cwd="/", env={})
    new, notes, at = bring_save_forward(command, by_id(settings.trainer), schedule_of(settings), ProbeConfig())
    if added is None:
        assert (new, notes, at) == (tuple(command), (), None)
    else:
        assert new[-2:] == added
        assert at == int(added[1])
        assert len([w for w in new if w == added[0]]) == 1
        assert notes[0].startswith(("added", "set"))


def test_a_trainer_with_no_periodic_save_flag_says_its_save_is_not_brought_in() -> None:
    """ai-toolkit keeps its save interval in its config file: the command is unchanged, and a note says why."""
    from vramwatch.advice.trainers import by_id
    from vramwatch.probing import bring_save_forward

    argv = ("python", "run.py", "job.yaml")
    new, notes, at = bring_save_forward(argv, by_id("ai-toolkit"), Schedule(max_steps=9000, save_every=5000), QUICK)
    assert (new, at) == (argv, None)
    assert len(notes) == 1
    assert notes[0].startswith("the run saves first after step 5,000, beyond --reach 1,000: ")
    assert notes[0].endswith("ai-toolkit has no flag to bring a save into a short run")


def test_only_trainers_whose_periodic_save_is_the_runs_save_declare_its_flag() -> None:
    """kohya (--save_every_n_steps) and diffusers (--checkpointing_steps) declare the flag; the others keep their
    saves in config files or code: none."""
    from vramwatch.advice.trainers import REGISTRY

    declared = {t.id: t.save_every_flag for t in REGISTRY if t.save_every_flag is not None}
    assert declared == {"kohya": "--save_every_n_steps", "diffusers": "--checkpointing_steps"}


def _with_save_at_108(k: int) -> int:
    """Steps at 8 GiB and a save at 14 GiB after step 108, both on what stays (4 GiB, growing 1 MiB a step)."""
    return _grows(k) + (10 * GIB if k == 109 else 4 * GIB)


@pytest.mark.parametrize(
    ("schedule", "step"),
    [
        (Schedule(max_steps=3000, save_at_end=True, probe_save_every=108), 3000),
        (Schedule(max_steps=9000, save_every=5000, save_at_end=True, probe_save_every=108), 5000),
    ],
    ids=["only-after-the-last-step", "every-5000"],
)
def test_a_save_measured_at_the_probes_step_is_forecast_at_the_runs_own(schedule: Schedule, step: int) -> None:
    """The save measured after step 108 is projected, with the growth since, to the run's own save (after its last
    step, or its first on the run's interval), never to the test's multiples of 108."""
    result = measured(records(200, _with_save_at_108, stays=_grows), schedule, 16 * GIB)
    assert result.verdict is not None
    assert (result.verdict.outcome, result.verdict.phase, result.verdict.step) == (Outcome.PHASE, SAVE, step)
    assert result.verdict.needed_bytes == 14 * GIB + 109 * MIB + (step - 108) * MIB  # measured in record 109
    assert result.exit_code == EXIT_PHASE


# --try: the changes it could not apply are listed, with why.


def test_try_lists_the_changes_it_passed_over_and_why() -> None:
    """Sampling that runs out: its two sampling changes (a prompt file's, dropping a flag by hand) cannot be applied;
    --try 1 passes over them to checkpointing, and the report and JSON list them as not tried, with why."""
    from vramwatch.probing import NOT_APPLICABLE, to_json, try_changes

    argv = trainer(
        *("--max_train_steps", "3000", "--sample_every_n_steps", "100"),
        *("--sample-gib", "23", "--leak-mib-per-step", "2"),
    )
    result = run_probe(argv, QUICK)
    assert result.exit_code == EXIT_PHASE, render_text(result)
    tries = try_changes(result, argv, 1, QUICK)
    assert [t.change for t in tries.tried] == ["--gradient_checkpointing"]
    passed = [n.change for n in tries.not_tried]
    assert passed == [s.change for s in result.advice[:2]]
    assert passed[0].startswith("in the --sample_prompts file")
    assert {n.why for n in tries.not_tried} == {NOT_APPLICABLE}
    text = render_text(result, tries)
    assert f"  not tried: {passed[0]} ({NOT_APPLICABLE})" in text
    assert to_json(result, tries)["not_tried"] == [{"change": c, "why": NOT_APPLICABLE} for c in passed]


def test_try_gives_a_config_changes_own_reason_for_not_trying_it() -> None:
    """A change spelt for kohya's --dataset_config whose rule says why it is not applied is not tried, with that
    reason; the next change that can be applied is tried in its place."""
    from vramwatch.advice import Suggestion
    from vramwatch.probing import try_changes

    argv = trainer("--max_train_steps", "3000", "--step-gib", "30")
    reason = "the rule says why this change is not applied"
    advice = (
        Suggestion("r1", "batch_size = 1 in ds.toml", "", "-75%", "", 1, "kohya@dataset_config", reason),
        Suggestion("r2", "--gradient_checkpointing", "", "-60%", "", 2, "kohya", None),
    )
    result = dataclasses.replace(measured(records(200, lambda k: 8 * GIB), PLAIN, 24 * GIB), advice=advice)
    tries = try_changes(result, argv, 1, QUICK)
    assert [t.change for t in tries.tried] == ["--gradient_checkpointing"]
    assert [(n.change, n.why) for n in tries.not_tried] == [("batch_size = 1 in ds.toml", reason)]


def test_a_copy_that_cannot_be_written_says_why(tmp_path: Path) -> None:
    """A config copy whose directory cannot be made (here: beside a file in a folder that is gone) comes back as
    the reason, which --try lists as not tried, instead of a run."""
    from vramwatch.advice.configcopy import ConfigTarget
    from vramwatch.probing import ConfigChange, written_copy

    gone = tmp_path / "gone" / "config.json"
    target = ConfigTarget(gone, "json", lambda copy: ((str(copy),), {}), beside=True)
    with written_copy(ConfigChange(target, "{}", (("batch_size", 1),), ())) as made:
        assert isinstance(made, str)
        assert made.startswith("a copy of config.json could not be written: ")
