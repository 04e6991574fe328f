"""Property: random argv and random bytes never make a command print a traceback."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vramwatch.cli import main

WORDS = st.sampled_from(
    ["--simulate", "steady", "leak", "nope", "--seed", "-1", "x", "--json", "--interval", "nan", "0", "1e309",
     "--cmdline", "--kind", "growth", "--", "-5", "4242", "--config", "/nonexistent", "", "\x00", "é", "--duration"]
)  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    command=st.sampled_from(["status", "advise", "scenarios", "replay", "record"]),
    words=st.lists(st.one_of(WORDS, st.text(max_size=8)), max_size=5),
    junk=st.binary(max_size=200),
)
def test_no_input_makes_a_traceback(tmp_path: Path, command: str, words: list[str], junk: bytes) -> None:
    """Whatever words follow a command, and whatever bytes a file holds, the answer is an exit code, never a crash."""
    trace = tmp_path / "junk.jsonl"
    trace.write_bytes(junk)
    args = [command, *words]
    if command == "replay":
        args = ["replay", str(trace), *words]
    if command == "record":
        out = tmp_path / "out.jsonl"
        out.unlink(missing_ok=True)
        args = ["record", str(out), "--simulate", "steady", "--interval", "0.01", *words, "--duration", "0.02"]
    res = CliRunner().invoke(main, args)
    assert res.exception is None or isinstance(res.exception, SystemExit), (args, repr(res.exception))
    assert "Traceback" not in res.output
