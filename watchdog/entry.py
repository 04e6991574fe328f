"""The `vramwatch` command (and `python -m vramwatch`): the CLI, started so that the daemon stays small.

`structlog.dev` imports rich, and rich pygments, whenever they are installed: about 5 MB of a daemon that runs
for months and never draws with them (only `attach`'s live view does, see `terminal.py`). For `serve`, a `None`
entry in `sys.modules` makes that import fail as if rich were absent, before anything imports structlog; its
console renderer then prints exceptions as plain tracebacks. docs/benchmarks.md breaks the daemon's memory down.

`serve` also tunes the cyclic garbage collector for a process that holds an hour of history (`tune_collector`).
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Sequence

#: The global options that take a value (`cli._global_options`; a test keeps the two alike).
VALUED_OPTIONS = frozenset({"--config", "--log-format", "--log-level"})


def command_of(args: Sequence[str]) -> str | None:
    """The subcommand a command line runs: its first word that is neither a global option nor one's value. Read
    from the raw words, before click parses them (parsing needs the CLI, which imports structlog)."""
    words = iter(args)
    for word in words:
        if word in VALUED_OPTIONS:
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def keeps_rich_out(args: Sequence[str]) -> bool:
    """True for a command line that runs the daemon. `attach`, whose live view draws with rich, never runs
    without it, nor does any other command (`run -- vllm serve` is the runner, not the daemon)."""
    return command_of(args) == "serve"


#: The young generation is swept after this many new container objects rather than CPython's 700. A tick allocates
#: a few per process (its sample, its views, its verdict), so at 4,096 processes the default swept the young
#: generation about 32 times a tick, the middle one about 3 times, and the whole heap, an hour of history, every
#: third tick (`benchmarks/tick_profile.py --collections`). Garbage without cycles is freed at once whatever this
#: is; only cycles wait longer, and the daemon makes next to none.
YOUNG_THRESHOLD = 50_000


def tune_collector() -> None:
    """For the daemon's process, once its modules are loaded: what exists by then (the modules, their tables) is moved
    out of the collector's reach (`gc.freeze`), and the young generation is swept after `YOUNG_THRESHOLD`
    allocations. docs/benchmarks.md measures the tick at scale with and without it; `benchmarks/tick.py` measures
    the tick as tuned here."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


def main() -> None:
    serve = keeps_rich_out(sys.argv[1:])
    if serve:
        sys.modules.setdefault("rich", None)  # type: ignore[arg-type]
    from .cli import main as cli  # the CLI imports the daemon's modules (app, daemon, exporter, ...)

    if serve:
        tune_collector()
    cli()
