"""The `vramwatch` command: click parses, `app` does the work.

structlog is configured here, once, before any command runs. Errors that are the user's to fix (a bad
config, a busy port, no driver) are printed as one line and exit 2; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import structlog

from . import app, logs
from ._version import __version__
from .advice.rules import ADVICE_KINDS
from .config import Config, load
from .errors import VramwatchError


class FilePath(click.Path):
    """click's Path, with a NUL byte in the name refused as a usage error (os.stat raises ValueError on it)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return super().convert(value, param, ctx)
        except ValueError:
            self.fail(f"{value!r} is not a file name (it holds a NUL byte)", param, ctx)


class FiniteRange(click.FloatRange):
    """click's FloatRange without NaN: NaN compares false with both bounds, so FloatRange lets it through."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class Seconds(FiniteRange):
    """A duration: a finite number of seconds > 0 (inf would never end)."""

    name = "number of seconds"

    def __init__(self) -> None:
        super().__init__(min=0, min_open=True)


def _load(ctx: click.Context, overrides: dict[str, Any]) -> Config:
    """The config with the command line's overrides; raises ConfigError (call it inside `_run`, which makes that
    one line and exit 2, or from a reload, which keeps the old config)."""
    path = ctx.obj.get("config") if ctx.obj else None
    cfg = load(Path(path) if path else None, overrides)
    for note in cfg.notes:
        structlog.get_logger("vramwatch").warning("config_adjusted", note=note)
    return cfg


def _run(fn: Callable[[], int]) -> None:
    try:
        code = fn()
    except VramwatchError as exc:
        click.echo(f"vramwatch: error: {exc}", err=True)
        sys.exit(2)
    sys.exit(code)


def _stderr_fd() -> int | None:
    """Our stderr's file descriptor, or None where it has none (a test runner's captured stream)."""
    try:
        return sys.stderr.fileno()
    except (OSError, ValueError, AttributeError):
        return None


def _echo(line: str) -> None:
    click.echo(line)


_simulate = click.option(
    "--simulate",
    metavar="SCENARIO",
    help="Watch a simulated GPU running SCENARIO instead of the real ones (see `vramwatch scenarios`).",
)
_seed = click.option("--seed", type=int, help="Seed of the simulated scenario (same seed, same run).")
_interval = click.option("--interval", type=float, help="Seconds between samples [default: 1].")
#: A process id as Linux hands them out (pid_max is at most 2^22): 0, -1 or 10^20 are typos, refused at once.
PID = click.IntRange(1, 1 << 22)


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """A global option given before or after the subcommand: kept on the root context, logging set up again."""
    if value is None or value is False:
        return value
    root = ctx.find_root()
    root.ensure_object(dict)
    root.obj[param.name] = value
    _configure_logs(root)
    return value


def _configure_logs(root: click.Context) -> None:
    """structlog, once per change of the global options: the config file's choice, overridden by the flags."""
    obj = root.obj or {}
    level = obj.get("log_level") or ("debug" if obj.get("verbose") else "warning" if obj.get("quiet") else None)
    try:
        cfg = load(Path(obj["config"]) if obj.get("config") else None, {"log_format": obj.get("log_format"),
                                                                         "log_level": level})  # fmt: skip
        logs.configure(cfg.daemon.log_format, cfg.daemon.log_level)
    except VramwatchError as exc:
        click.echo(f"vramwatch: error: {exc}", err=True)
        sys.exit(2)


def _global_options(*, envvar: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--config, --log-format, --log-level, -v and -q, accepted before the subcommand and after it alike."""
    options = [
        click.option("--config", "config", type=FilePath(dir_okay=False), envvar=envvar, expose_value=False,
                     callback=_remember, help="TOML config file (options override it)."),
        click.option("--log-format", "log_format", type=click.Choice(["auto", "console", "json"]), expose_value=False,
                     callback=_remember, help="Log format [default: auto: pretty on a terminal, JSON otherwise]."),
        click.option("--log-level", "log_level", type=click.Choice(["debug", "info", "warning", "error"]),
                     expose_value=False, callback=_remember, help="Log level [default: info]."),
        click.option("-v", "--verbose", "verbose", is_flag=True, expose_value=False, callback=_remember,
                     help="Log level debug."),
        click.option("-q", "--quiet", "quiet", is_flag=True, expose_value=False, callback=_remember,
                     help="Log level warning."),
    ]  # fmt: skip

    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            f = option(f)
        return f

    return apply


class _Group(click.Group):
    """Every subcommand takes the global options too (`vramwatch status --config f` works)."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        _global_options()(cmd)
        super().add_command(cmd, name)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vramwatch")
@_global_options(envvar="VRAMWATCH_CONFIG")
@click.pass_context
def main(ctx: click.Context) -> None:
    """vramwatch: a live GPU-memory watchdog for people who train models."""
    ctx.ensure_object(dict)
    _configure_logs(ctx)


@main.command()
@_simulate
@_seed
@_interval
@click.option("--listen", metavar="HOST:PORT", help="Where /metrics is served [default: 127.0.0.1:9783].")
@click.option("--replay", metavar="FILE", type=FilePath(exists=True, dir_okay=False), help="Serve a recorded trace.")
@click.option("--no-process-metrics", is_flag=True, help="Export GPU-level series only (fleets fearing cardinality).")
@click.option("--require-gpu", is_flag=True, help="Never fall back to the simulator when no NVIDIA driver is found.")
@click.option("--record", metavar="FILE", help="Also record every tick to this trace (JSON Lines; .gz compresses).")
@click.option("--force", is_flag=True, help="Overwrite the --record FILE if it exists (never the --replay trace).")
@click.option(
    "--speed",
    type=FiniteRange(0.1, 100),
    default=1.0,
    metavar="FACTOR",
    help="Play a --simulate or --replay card FACTOR times faster than real time (a demo of a story) [default: 1].",
)
@click.pass_context
def serve(
    ctx: click.Context,
    simulate: str | None,
    seed: int | None,
    interval: float | None,
    listen: str | None,
    replay: str | None,
    no_process_metrics: bool,
    require_gpu: bool,
    record: str | None,
    force: bool,
    speed: float,
) -> None:
    """Run the daemon: sample every second, detect, serve the live page at / and Prometheus metrics."""
    overrides = {
        "simulate": simulate,
        "seed": seed,
        "interval": interval,
        "listen": listen,
        "replay": replay,
        "process_metrics": False if no_process_metrics else None,
        "record": record,
    }
    _run(
        lambda: app.serve(
            _load(ctx, overrides),
            out=_echo,
            require_gpu=require_gpu,
            reload_config=lambda: _load(ctx, overrides),
            speed=speed,
            force=force,
            record_flag=record is not None,
        )
    )


@main.command()
@_simulate
@_seed
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--daemon", "daemon_url", metavar="HOST:PORT", help="Ask this daemon [default: the configured listen].")
@click.pass_context
def status(ctx: click.Context, simulate: str | None, seed: int | None, as_json: bool, daemon_url: str | None) -> None:
    """Show the GPUs and the processes using them, once.

    With a daemon running, its trends, forecasts and stability verdicts are shown next to each process;
    without one, vramwatch samples once by itself (no trend yet).
    """
    _run(
        lambda: app.status(
            _load(ctx, {"simulate": simulate, "seed": seed}), out=_echo, as_json=as_json, daemon_url=daemon_url
        )
    )


@main.command()
def scenarios() -> None:
    """List the simulated scenarios."""
    _run(lambda: app.scenarios(_echo))


@main.command()
@click.argument("file", type=FilePath(dir_okay=False, writable=True))
@click.option("--duration", type=Seconds(), metavar="SECONDS", help="Stop after this long [default: until Ctrl-C].")
@_simulate
@_seed
@_interval
@click.option("--no-cmdline", is_flag=True, help="Leave command lines out of the trace (they are redacted anyway).")
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
@click.pass_context
def record(
    ctx: click.Context,
    file: str,
    duration: float | None,
    simulate: str | None,
    seed: int | None,
    interval: float | None,
    no_cmdline: bool,
    force: bool,
) -> None:
    """Record what the sampler sees to FILE (JSON Lines; .gz compresses), for replay and bug reports."""
    overrides = {"simulate": simulate, "seed": seed, "interval": interval}
    _run(
        lambda: app.record(
            _load(ctx, overrides), Path(file), out=_echo, duration=duration, cmdline=not no_cmdline, force=force
        )
    )


@main.command()
@click.argument("file", type=FilePath(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per finding on stdout.")
@click.pass_context
def replay(ctx: click.Context, file: str, as_json: bool) -> None:
    """Run the detectors over a recorded trace at full speed and print the findings."""
    _run(
        lambda: app.replay(
            _load(ctx, {}), Path(file), out=_echo, err=lambda s: click.echo(s, err=True), as_json=as_json
        )
    )


@main.command()
@click.argument("trace", type=FilePath(exists=True, dir_okay=False))
@click.option(
    "-o", "--output", type=FilePath(dir_okay=False), help="The HTML file to write [default: TRACE's name, .html]."
)
@click.pass_context
def report(ctx: click.Context, trace: str, output: str | None) -> None:
    """Draw a recorded TRACE as one self-contained HTML file: memory per process, findings, post-mortem, advice."""
    _run(
        lambda: app.report(
            _load(ctx, {}),
            Path(trace),
            Path(output) if output else None,
            out=_echo,
            err=lambda s: click.echo(s, err=True),
        )
    )


@main.command()
@click.argument("pid", type=PID, required=False)
@click.option("--cmdline", metavar="'COMMAND ...'", help="Advise for this command line instead of a running pid.")
@click.option(
    "--kind",
    default="oom_forecast",
    show_default=True,
    type=click.Choice(sorted(ADVICE_KINDS)),
    help="What happened: the advice differs for a leak (growth), fragmentation or a step-1 OOM (spike).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_simulate
@_seed
def advise(
    pid: int | None, cmdline: str | None, kind: str, as_json: bool, simulate: str | None, seed: int | None
) -> None:
    """Suggest the setting changes that fix an OOM, in the trainer's own flags (kohya, diffusers, ...)."""
    _run(
        lambda: app.advise(
            out=_echo, pid=pid, cmdline=cmdline, kind=kind, as_json=as_json, simulate=simulate, seed=seed
        )
    )


@main.command("install-service")
@click.option("--prefix", type=FilePath(file_okay=False), default="/", show_default=True, help="Root to install under.")
@click.option("--force", is_flag=True, help="Replace a unit that differs from the packaged one (never the config).")
def install_service(prefix: str, force: bool) -> None:
    """Install the hardened systemd unit and a default /etc/vramwatch/vramwatch.toml."""

    def go() -> int:
        import shutil

        from .service import NEXT_STEPS, installed_executable, unit_cannot_see
        from .service import install_service as install

        exe = installed_executable(sys.executable, sys.argv[0], shutil.which("vramwatch"))
        written = install(Path(prefix), force=force, executable=exe)
        for p in written:
            click.echo(f"wrote {p}")
        if exe is None:
            click.echo(
                "vramwatch: no vramwatch command found for this install: the unit runs /usr/bin/vramwatch; "
                "point ExecStart at yours with a drop-in (docs/operations.md)",
                err=True,
            )
        else:
            click.echo(f"ExecStart runs {exe}")
            hidden = unit_cannot_see(exe)
            if hidden is not None:
                click.echo(
                    f"vramwatch: warning: the unit hides {hidden} from the service (ProtectHome=yes, PrivateTmp=yes), "
                    f"so it cannot start {exe}: install vramwatch under /opt or /usr/local (docs/operations.md)",
                    err=True,
                )
        click.echo(NEXT_STEPS)
        return 0

    _run(go)


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--snapshot", type=FilePath(file_okay=False), help="On OOM, dump a memory snapshot here (memory_viz).")
@click.option("--socket", "socket_path", type=FilePath(dir_okay=False), help="The daemon's agent socket.")
@click.option("--empty-cache-on-pressure", is_flag=True, help="Call torch.cuda.empty_cache() on a pressure notice.")
@click.option(
    "--events", type=FilePath(dir_okay=False), help="Append the built-in check's conclusions here (JSON lines)."
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(
    snapshot: str | None,
    socket_path: str | None,
    empty_cache_on_pressure: bool,
    events: str | None,
    command: tuple[str, ...],
) -> None:
    """Run a training COMMAND with the in-process agent: `vramwatch run -- accelerate launch train.py ...`.

    Every Python process the command starts reports PyTorch's allocator figures (allocated, reserved,
    fragmentation, OOMs) to the daemon, or to this command itself when no daemon listens; exit code,
    signals and output pass through unchanged. The agent counts optimizer steps, and this command says when
    the run will not reach its end (sample images, a save, growth per step) in the trainer's own words.
    """
    from .probing import watched_run

    argv = list(command[1:] if command and command[0] == "--" else command)
    _run(
        lambda: watched_run(
            argv,
            snapshot_dir=Path(snapshot) if snapshot else None,
            socket_path=Path(socket_path) if socket_path else None,
            empty_cache_on_pressure=empty_cache_on_pressure,
            events_path=Path(events) if events else None,
        )
    )


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option(
    "--steps", type=click.IntRange(3, None), default=200, show_default=True, help="Optimizer steps to measure."
)
@click.option(
    "--max-time",
    "max_seconds",
    type=click.FloatRange(1, None),
    default=1800,
    show_default=True,
    help="Seconds at most.",
)
@click.option(
    "--reach",
    type=click.IntRange(0, None),
    default=1000,
    show_default=True,
    help="Wait for an announced phase (sampling, save) due within this many steps.",
)
@click.option(
    "--no-bring-forward",
    is_flag=True,
    help="Run the command as given (no --sample_at_first, no save flag added to measure a save).",
)
@click.option(
    "--try",
    "tries",
    type=click.IntRange(0, 10),
    default=0,
    help="Then probe again with each of the top N suggested changes applied, and report what each measured.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def probe(
    steps: int,
    max_seconds: float,
    reach: int,
    no_bring_forward: bool,
    tries: int,
    as_json: bool,
    command: tuple[str, ...],
) -> None:
    """Will this run fit to the end? Run COMMAND for a few hundred steps, stop it, and say.

    `vramwatch probe -- accelerate launch flux_train_network.py ...` measures the training steps' peak,
    each sampling or save phase and the growth per step, then forecasts the whole run on this card.
    With --try N, each of the top N suggested changes that is a flag, an environment variable or a key of the
    trainer's config file (written into a copy of the file, never the original) is applied, one at a time,
    and probed in turn: what each measured is reported, and each change passed over on the way is listed as
    "not tried", with why. A save the run makes only after its last step (or beyond --reach) is brought into
    the test with the trainer's periodic save flag (kohya --save_every_n_steps). Exit codes (of the
    command as given): 0 fits, 3 ran out of memory in the probe, 4 will run out in a phase (sample images, a
    save), 5 will run out at a training step (growth per step, or a step that no longer fits), 6 fits as far
    as measured (an announced phase or fewer steps than asked were measured), 1 crashed or nothing measured,
    2 usage, 130 interrupted (Ctrl-C: the command is stopped and no --try round runs). The test run's
    outputs go to a temporary directory where the trainer has a flag for it (kohya, diffusers: --output_dir).
    """
    import json as json_module

    from .probing import EXIT_INTERRUPTED, ProbeConfig, Tries, render_text, run_probe, to_json, try_changes

    argv = list(command[1:] if command and command[0] == "--" else command)
    config = ProbeConfig(steps=steps, max_seconds=max_seconds, reach_steps=reach, bring_forward=not no_bring_forward)

    def go() -> int:
        # With --json the report is the only thing on stdout: the trainer's own output goes to stderr.
        child_stdout = _stderr_fd() if as_json else None
        try:
            result = run_probe(argv, config, child_stdout=child_stdout)
            done = try_changes(result, argv, tries, config, child_stdout=child_stdout) if result.runs_out else Tries()
        except KeyboardInterrupt:
            # Ctrl-C outside a test run (the runner turns one during a run into an interrupted result).
            click.echo("vramwatch probe: interrupted", err=True)
            return EXIT_INTERRUPTED
        if as_json:
            click.echo(json_module.dumps(to_json(result, done), indent=2))
        else:
            for line in render_text(result, done):
                click.echo(line)
        if any(t.result.exit_code == EXIT_INTERRUPTED for t in done.tried):
            click.echo("vramwatch probe: interrupted during --try", err=True)
            return EXIT_INTERRUPTED
        if result.exit_code == EXIT_INTERRUPTED:
            click.echo("vramwatch probe: interrupted", err=True)
        return result.exit_code

    _run(go)


@main.command()
@click.argument("pid", type=PID)
@_simulate
@_seed
@click.option("--replay", metavar="FILE", type=FilePath(exists=True, dir_okay=False), help="Watch a pid in a trace.")
@click.option("--json", "as_json", is_flag=True, help="Stream JSON lines (one per tick, then a summary).")
@click.option("--fast-forward", is_flag=True, hidden=True, help="Simulated/replayed time, as fast as possible.")
@click.pass_context
def attach(
    ctx: click.Context,
    pid: int,
    simulate: str | None,
    seed: int | None,
    replay: str | None,
    as_json: bool,
    fast_forward: bool,
) -> None:
    """Watch one training run live: its memory, trend, time to OOM, findings and advice, until it ends.

    Exits 0 when the run ended normally, 3 when it probably died of out-of-memory. Attaching counts as
    consent to the policy's actions for this pid (a save-now adapter, if the policy enables one).
    """
    overrides = {"simulate": simulate, "seed": seed, "replay": replay}
    _run(lambda: app.attach(_load(ctx, overrides), pid, out=_echo, as_json=as_json, fast_forward=fast_forward))


@main.command()
@click.option(
    "--require-gpu",
    is_flag=True,
    help="Exit 1 when no NVIDIA driver answers (the unit runs serve --require-gpu, which waits for one).",
)
@click.pass_context
def check(ctx: click.Context, require_gpu: bool) -> None:
    """Check the config as serve reads it at start, and say what it would watch and arm (exit 2 if refused).

    Nothing is served, recorded, signalled or sent: run it before `systemctl reload` or a restart.
    """
    _run(lambda: app.check(_load(ctx, {}), out=_echo, require_gpu=require_gpu))


@main.command()
@click.option(
    "--test", "test", is_flag=True, required=True, help="Send one test alert through every configured notifier."
)
@click.pass_context
def notify(ctx: click.Context, test: bool) -> None:  # noqa: ARG001 - the flag is required: it documents intent
    """Check the alert path: `vramwatch --config FILE notify --test` (exit 1 if a delivery failed)."""
    _run(lambda: app.notify_test(_load(ctx, {}), out=_echo))
