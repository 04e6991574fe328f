"""The one allow-list of another process's environment covers every variable vramwatch reads, and no secret."""

from __future__ import annotations

from pathlib import Path

from vramwatch import environ
from vramwatch.advice.trainers.simpletuner import SIGNAL_FILE as SIMPLETUNER_SIGNAL_FILE
from vramwatch.agent.protocol import ENV_AGENT


def test_every_variable_the_adapters_read_is_allowed():
    """The save-now adapters' variables (agent, SimpleTuner signal file, SLURM) are on the one list."""
    for name in (ENV_AGENT, SIMPLETUNER_SIGNAL_FILE, "SLURM_JOB_ID"):
        assert environ.allowed(name), name


def test_every_variable_the_advisor_reads_is_allowed():
    """The advisor's variables (allocator settings, accelerate precision, SimpleTuner's config) are on it."""
    for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "ACCELERATE_MIXED_PRECISION", "SIMPLETUNER_ENV"):
        assert environ.allowed(name), name


def test_secrets_and_everything_else_stay_unread(tmp_path: Path):
    """Tokens, keys and ordinary variables are never read from /proc/<pid>/environ; malformed entries are skipped."""
    (tmp_path / "9").mkdir()
    (tmp_path / "9" / "environ").write_bytes(
        b"HF_TOKEN=hf_secret\0WANDB_API_KEY=k\0AWS_SECRET_ACCESS_KEY=s\0PATH=/usr/bin\0junk\0"
        b"PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True\0SIMPLETUNER_ENV=prod\0"
    )
    assert environ.read_environ(9, tmp_path) == {
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
        "SIMPLETUNER_ENV": "prod",
    }
    assert environ.filter_env({"HF_TOKEN": "x", "SLURM_JOB_ID": "3"}) == {"SLURM_JOB_ID": "3"}
    assert environ.filter_env(None) is None
