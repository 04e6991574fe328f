"""A block of lines redrawn in place on a terminal, for `vramwatch attach`: rich's `Live`, not escape codes.

Printed lines (findings with their advice, actions, the summary) scroll above the block and stay; the block
itself (the run's memory, trend, forecast, sparkline) is replaced at each tick, so a nine-minute run is a
screen, not 1,600 lines. Piped or redirected, attach prints plain lines instead and never comes here.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.text import Text


def is_terminal(stream: TextIO | None = None) -> bool:
    """True when `stream` (stdout) is a terminal that can redraw in place (a `dumb` one cannot)."""
    stream = stream or sys.stdout
    return stream.isatty() and os.environ.get("TERM") != "dumb"


class LiveBlock:
    """`update()` redraws the block, `print()` writes a line above it, `close()` leaves the last block shown."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False)
        # Redrawn when told (once a tick), not by a thread on a timer: nothing changes between ticks.
        self._live = Live(Text(""), console=self.console, auto_refresh=False, redirect_stdout=False,
                          redirect_stderr=False)  # fmt: skip
        self._live.start()

    def update(self, text: str) -> None:
        self._live.update(Text(text), refresh=True)

    def print(self, text: str) -> None:
        # markup=False: "[critical]" and advice like "--resolution [512,512]" are text, not rich markup.
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self._live.is_started:
            self._live.stop()
