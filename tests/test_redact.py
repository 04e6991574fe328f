"""Command-line redaction: secrets become "***", training flags stay exactly as typed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vramwatch.redact import MASK, is_secret_name, redact_cmdline

CASES = [
    # (argv, expected)
    (["python", "train.py", "--hf_token", "hf_abc"], ["python", "train.py", "--hf_token", MASK]),
    (["--token", "abc", "--lr", "1e-4"], ["--token", MASK, "--lr", "1e-4"]),
    (
        ["--api-key", "k1", "--password", "p", "--secret", "s"],
        ["--api-key", MASK, "--password", MASK, "--secret", MASK],
    ),
    (["--wandb_key", "w", "--wandb_api_key", "w2"], ["--wandb_key", MASK, "--wandb_api_key", MASK]),
    (["--api-key=xyz", "--hub_token=t"], ["--api-key=" + MASK, "--hub_token=" + MASK]),
    (["--clientSecret", "c"], ["--clientSecret", MASK]),
    (
        ["HF_TOKEN=hf_x", "WANDB_API_KEY=1", "AWS_SECRET_ACCESS_KEY=2"],
        ["HF_TOKEN=***", "WANDB_API_KEY=***", "AWS_SECRET_ACCESS_KEY=***"],
    ),
    (["wandb.api_key=abc", "+db.password=pw"], ["wandb.api_key=***", "+db.password=***"]),
    (["-e", "OPENAI_API_KEY=sk-x"], ["-e", "OPENAI_API_KEY=***"]),
    (["https://user:pa55@example.com/x.git"], ["https://user:***@example.com/x.git"]),
    (["--repo=https://bob:pw@host/r"], ["--repo=https://bob:***@host/r"]),
    (["https://ghp_abcdefghijklmnopqrstuvwxyz0123456789@github.com/o/r"], ["https://***@github.com/o/r"]),
    (["https://s3.example.com/f?X-Amz-Signature=abc&part=1"], ["https://s3.example.com/f?X-Amz-Signature=***&part=1"]),
    (["https://api.example.com/v1?key=abc&tokenizer=t5"], ["https://api.example.com/v1?key=***&tokenizer=t5"]),
    (["--model", "hf_" + "a" * 34], ["--model", MASK]),
    (["--note=" + "sk-" + "A1" * 20], ["--note=" + MASK]),
    (["-H", "Authorization: Bearer eyJhbGciOi.abc"], ["-H", "Authorization: Bearer ***"]),
    # A switch without a value: the following flag is not its value.
    (["--use_auth_token", "--output_dir", "out"], ["--use_auth_token", "--output_dir", "out"]),
    (["--token", "--lr", "1"], ["--token", "--lr", "1"]),
    (["--token"], ["--token"]),
    # Training flags that only look like secrets.
    (["--max_token_length", "225", "--t5xxl_max_token_length", "512"], None),
    (["--token_warmup_step", "5", "--token_warmup_min", "1", "--tokenizer_name", "t5"], None),
    (["--placeholder_token", "<cat-toy>", "--initializer_token", "toy"], None),
    (["--caption_key", "txt", "--sort_key", "len", "--secret_key_file", "/run/key"], None),
    (["ssh://git@github.com/o/r.git", "--output_dir=/runs/sk-learn-experiment-long-name"], None),
    (["MAX_TOKENS=2048", "trainer.max_tokens=4096", "a=b=c"], None),
]


@pytest.mark.parametrize(("argv", "expected"), CASES)
def test_redact_cmdline_table(argv: list[str], expected: list[str] | None) -> None:
    """Each argv redacts to exactly the expected argv (None: unchanged)."""
    assert redact_cmdline(argv) == tuple(expected if expected is not None else argv)


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("token", True),
        ("hf_token", True),
        ("HF_TOKEN", True),
        ("api-key", True),
        ("apiKey", True),
        ("wandb_key", True),
        ("private_key", True),
        ("passphrase", True),
        ("PGPASSWORD", True),
        ("authtoken", True),
        ("key", False),
        ("max_token_length", False),
        ("pad_token", False),
        ("use_auth_token", False),
        ("tokenizer", False),
        ("num_tokens", False),
        ("", False),
    ],
)
def test_is_secret_name(name: str, secret: bool) -> None:
    """Names are judged by their last word (and `key` by the word before it)."""
    assert is_secret_name(name) is secret


@settings(max_examples=300)
@given(st.lists(st.text(max_size=40), max_size=12))
def test_redaction_keeps_length_and_is_idempotent(argv: list[str]) -> None:
    """Any argv keeps its length, and redacting twice changes nothing more."""
    once = redact_cmdline(argv)
    assert len(once) == len(argv)
    assert redact_cmdline(once) == once
    for before, after in zip(argv, once, strict=True):
        assert after == before or MASK in after


SAFE_FLAGS = [
    "--train_batch_size",
    "--max_token_length",
    "--gradient_checkpointing",
    "--learning_rate",
    "--network_dim",
    "--tokenizer_name",
    "--placeholder_token",
    "--caption_key",
    "--output_dir",
    "--resolution",
    "-u",
]
# Short values without '=', ':', '@' or spaces: no URL, no KEY=value, no token format can form.
SAFE_VALUES = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789._/-", max_size=20)


@settings(max_examples=300)
@given(st.lists(st.one_of(st.sampled_from(SAFE_FLAGS), SAFE_VALUES), max_size=16))
def test_argv_without_secrets_is_unchanged(argv: list[str]) -> None:
    """Trainer flags and plain values come back exactly as given."""
    assert redact_cmdline(argv) == tuple(argv)
