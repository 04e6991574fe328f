"""`vramwatch probe`: a real short run of a stand-in trainer (no torch: its agent's figures follow a memory model)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from vramwatch.cli import main
from vramwatch.probing import (
    EXIT_FITS,
    EXIT_GROWTH,
    EXIT_PHASE,
    EXIT_UNMEASURED,
    ProbeConfig,
    render_text,
    run_probe,
)
from vramwatch.steps import SAMPLE, Outcome

TRAINER = Path(__file__).parent / "data" / "probe" / "flux_train_network.py"
QUICK = ProbeConfig(steps=120, max_seconds=60, stop_seconds=5)


def trainer(*flags: str) -> list[str]:
    return [sys.executable, str(TRAINER), *flags]


def test_a_run_that_fits_is_said_to_fit_with_its_spare() -> None:
    """Steps at 8 GiB and sampling at 10 GiB on a 24 GiB card fit to --max_train_steps, with the spare stated."""
    result = run_probe(trainer("--max_train_steps", "3000", "--sample_every_n_steps", "100"), QUICK)
    assert result.exit_code == EXIT_FITS, render_text(result)
    assert result.verdict is not None
    assert result.verdict.outcome is Outcome.FITS
    assert result.verdict.step == 3000
    assert result.stopped == "measured"
    assert result.profile is not None
    assert [p.name for p in result.profile.phases] == [SAMPLE]
    assert result.advice == ()


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
    tried = try_changes(result, argv, 2, QUICK)
    assert [t.change for t in tried] == ["--gradient_checkpointing", "--mixed_precision bf16"]
    first = tried[0].result
    assert first.exit_code == EXIT_FITS, render_text(first)
    assert first.profile is not None
    assert first.profile.step_peak_allocated_bytes == 15 << 30
    text = "\n".join(render_text(result, tried))
    assert "with `--gradient_checkpointing`: fits to step 3,000" in text
