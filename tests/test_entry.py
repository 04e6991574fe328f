"""The `vramwatch` command's entry point: the daemon runs without rich and with its collector tuned, attach as is."""

from __future__ import annotations

import subprocess
import sys

import pytest
from vramwatch.entry import VALUED_OPTIONS, YOUNG_THRESHOLD, keeps_rich_out


@pytest.mark.parametrize(
    ("args", "out"),
    [
        (["serve"], True),
        (["--config", "/etc/vramwatch/vramwatch.toml", "serve", "--require-gpu"], True),  # the systemd unit's
        (["--log-format", "json", "serve", "--simulate", "steady"], True),
        (["--log-format=json", "-v", "serve"], True),
        (["attach", "1234"], False),
        (["--config", "serve", "attach", "1"], False),  # a config file named serve
        (["run", "--", "vllm", "serve", "model"], False),  # the runner, not the daemon
        (["status"], False),
        (["--help"], False),
        ([], False),
    ],
)
def test_rich_is_left_out_of_serve_only(args: list[str], out: bool) -> None:
    """Only a command line whose subcommand is serve runs without rich."""
    assert keeps_rich_out(args) is out


def test_the_entry_point_knows_every_global_option_that_takes_a_value() -> None:
    """`entry` skips the values of exactly the global options the CLI defines with one, so that it finds the
    subcommand as click will."""
    import click
    from vramwatch.cli import main

    valued = {o for p in main.params if isinstance(p, click.Option) and not p.is_flag for o in p.opts}
    assert valued == VALUED_OPTIONS


_RUN = """
import sys
sys.argv = ["vramwatch", *{args!r}, "--help"]
from vramwatch import entry
try:
    entry.main()
except SystemExit:
    pass
import vramwatch.app, vramwatch.daemon, vramwatch.exporter, vramwatch.backends.nvml, vramwatch.web.live
{more}import structlog
from vramwatch import logs
logs.configure("console", "info", stream=sys.stdout)
try:
    raise RuntimeError("boom")
except RuntimeError:
    structlog.get_logger().exception("tick failed")
loaded = sorted(m for m in ("rich", "pygments") if sys.modules.get(m) is not None)
print("LOADED", loaded)
import gc
frozen = not any(o is vars(vramwatch.daemon) for o in gc.get_objects())  # frozen objects are in no generation
print("COLLECTOR", gc.get_threshold()[0], frozen)
"""


def _run(*args: str, more: str = "") -> str:
    code = _RUN.format(args=list(args), more=more)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_serve_loads_no_rich_and_still_logs_exceptions() -> None:
    """`serve`'s process, with every daemon module imported, holds neither rich nor pygments, and its console
    log still prints an exception's traceback (plain)."""
    out = _run("--log-format", "console", "serve")
    assert "LOADED []" in out
    assert "tick failed" in out
    assert "Traceback (most recent call last)" in out
    assert "RuntimeError: boom" in out


def test_serve_alone_tunes_the_collector() -> None:
    """`serve`'s process freezes its loaded modules and sweeps young objects less often; `attach`'s keeps CPython's."""
    assert f"COLLECTOR {YOUNG_THRESHOLD} True" in _run("serve")
    out = _run("attach", "1")
    assert f"COLLECTOR {YOUNG_THRESHOLD}" not in out
    assert "False" in out.split("COLLECTOR", 1)[1]


def test_attach_keeps_rich_for_its_live_view() -> None:
    """`attach` imports rich as before: its terminal view draws with it."""
    out = _run("attach", "1", more="import vramwatch.terminal\n")
    assert "LOADED ['pygments', 'rich']" in out
