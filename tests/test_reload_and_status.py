"""SIGHUP reload says what it did not apply, `status` says which daemon it read, start-up errors name the file."""

from __future__ import annotations

import http.server
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner
from vramwatch import app
from vramwatch.actions import ActionDispatcher, Policy
from vramwatch.cli import main
from vramwatch.config import MIN_HISTORY_SECONDS, load, local_address
from vramwatch.daemon import Daemon
from vramwatch.errors import ConfigError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _serving(path: Path, text: str) -> Iterator[tuple[Daemon, list[dict[str, Any]]]]:
    """`serve` of the config file at `path` (a simulated card, 20 ticks a second) on a thread, with its log."""
    path.write_text(f'[daemon]\nsimulate = "steady"\ninterval = 0.05\nlisten = "127.0.0.1:{_free_port()}"\n{text}')
    stop = threading.Event()
    started: list[Daemon] = []
    with structlog.testing.capture_logs() as logs:
        thread = threading.Thread(
            target=app.serve,
            args=(load(path),),
            kwargs={"out": lambda _line: None, "stop": stop, "ready": started.append,
                    "reload_config": lambda: load(path)},
        )  # fmt: skip
        thread.start()
        try:
            _until(lambda: bool(started))
            yield started[0], logs
        finally:
            stop.set()
            thread.join(10)


def _until(done: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _reload(daemon: Daemon, logs: list[dict[str, Any]]) -> dict[str, Any]:
    """Ask for a reload as SIGHUP does; the log entry that ends it (reloaded or reload_failed)."""
    seen = len(logs)
    daemon.reload_requested.set()
    _until(lambda: any(e["event"] in {"reloaded", "reload_failed"} for e in logs[seen:]))
    return next(e for e in logs[seen:] if e["event"] in {"reloaded", "reload_failed"})


def test_a_changed_policy_is_logged_as_needing_a_restart_and_not_applied(tmp_path: Path) -> None:
    """A reload that changes [policy] and [notify] logs each as needing a restart (the webhook's URL, which may
    hold a token, is not in the log) and keeps the running ones."""
    path = tmp_path / "vw.toml"
    with _serving(path, "[policy]\ndry_run = true\n") as (daemon, logs):
        running = dict(daemon.config.section("policy"))
        text = path.read_text().replace("dry_run = true", "dry_run = false")
        path.write_text(text + '[[notify.webhook]]\nurl = "https://hooks.example/T0KEN"\n')
        assert _reload(daemon, logs)["event"] == "reloaded"
        needs = {e["key"] for e in logs if e["event"] == "reload_needs_restart"}
        assert needs == {"[policy]", "[notify]"}
        assert "T0KEN" not in json.dumps(logs, default=str)
        assert dict(daemon.config.section("policy")) == running
        assert daemon.config.section("notify") == {}
        # The running sections were kept, so the same file reloaded again is still reported, not taken as applied.
        assert _reload(daemon, logs)["event"] == "reloaded"
        assert sum(e["event"] == "reload_needs_restart" and e["key"] == "[policy]" for e in logs) == 2


def test_a_policy_the_next_start_would_refuse_fails_the_reload_naming_the_file(tmp_path: Path) -> None:
    """A [policy] that parses as TOML but that the next start would refuse is a failed reload naming the file
    and the key (not "reloaded"): the previous configuration is kept, [detectors] included."""
    path = tmp_path / "vw.toml"
    with _serving(path, "[detectors]\nnoise_bytes = 1048576\n") as (daemon, logs):
        before = daemon.detector_config
        path.write_text(path.read_text().replace("1048576", "2097152") + '[policy]\nact_on_kinds = ["oom-forecast"]\n')
        failed = _reload(daemon, logs)
        assert failed["event"] == "reload_failed"
        assert failed["error"].startswith(f"{path}: [policy] act_on_kinds")
        assert daemon.detector_config is before


def test_a_detector_range_error_on_reload_names_the_file_and_the_section(tmp_path: Path) -> None:
    """A [detectors] value out of its range on SIGHUP is a `reload_failed` naming the file and [detectors]."""
    path = tmp_path / "vw.toml"
    with _serving(path, "[detectors]\nnoise_bytes = 1048576\n") as (daemon, logs):
        before = daemon.detector_config
        path.write_text(path.read_text() + "pressure_free_fraction = 7.0\n")
        failed = _reload(daemon, logs)
        assert failed["event"] == "reload_failed"
        assert failed["error"].startswith(f"{path}: [detectors]: invalid detector config: pressure_free_fraction")
        assert daemon.detector_config is before


def test_a_changed_log_level_is_logged_as_needing_a_restart(tmp_path: Path) -> None:
    """Every [daemon] option but process_metrics is read at start only; a reload that changes one says so."""
    path = tmp_path / "vw.toml"
    with _serving(path, "") as (daemon, logs):
        path.write_text(path.read_text() + 'log_level = "debug"\nhistory_seconds = 7200\n')
        assert _reload(daemon, logs)["event"] == "reloaded"
        needs = {e["key"]: e["configured"] for e in logs if e["event"] == "reload_needs_restart"}
        assert needs == {"log_level": "debug", "history_seconds": 7200.0}
        assert daemon.config.daemon.log_level == "info"


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ('[policy]\ndry_run = "yes"\n', "[policy] dry_run: expected true or false"),
        ('[[notify.webhook]]\nurl = "ftp://x"\n', "[[notify.webhook]] #1 url"),
        ("[detectors]\npressure_free_fraction = 7.0\n", "[detectors]: invalid detector config: pressure_free_fraction"),
    ],
)
def test_policy_and_notify_errors_at_start_name_the_file(tmp_path: Path, section: str, expected: str) -> None:
    """A bad [policy], [notify] or [detectors] value refuses serve in one line that starts with the file's name, as
    other sections do (a detector's range check knows no file: the table's reader names it)."""
    path = tmp_path / "vw.toml"
    path.write_text(f'[daemon]\nlisten = "127.0.0.1:{_free_port()}"\n{section}')
    res = CliRunner().invoke(main, ["--config", str(path), "serve", "--simulate", "steady"])
    assert res.exit_code == 2
    assert res.stderr.startswith(f"vramwatch: error: {path}: {expected}")
    assert res.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("listen", "where"),
    [
        ("localhost", "listen: expected HOST:PORT"),
        ("127.0.0.1:70000", "listen: expected HOST:PORT"),
        ("::9783", "listen: expected HOST:PORT"),
        ("[]:9783", "listen: expected HOST:PORT"),  # not "every address": empty brackets are no host
        ("host]:80", "listen: expected HOST:PORT"),
        ("[::1:80", "listen: expected HOST:PORT"),
        ("[[::1]]:80", "listen: expected HOST:PORT"),
        ("127.0.0.1:\uff19\uff17", "listen: expected HOST:PORT"),  # fullwidth digits
    ],
)
def test_a_bad_listen_in_the_file_is_named_as_the_file_key(tmp_path: Path, listen: str, where: str) -> None:
    """[daemon] listen from a file is reported as that file's key, not as the --listen option."""
    path = tmp_path / "vw.toml"
    path.write_text(f'[daemon]\nlisten = "{listen}"\n')
    with pytest.raises(ConfigError, match=re.escape(f"{path}: [daemon] {where}")) as caught:
        load(path)
    assert "--listen" not in str(caught.value)


def test_a_history_too_short_for_the_detectors_is_raised_to_its_minimum_with_a_note(tmp_path: Path) -> None:
    """history_seconds below the detectors' ten-minute look-back is raised to it, with a note saying so (a service
    upgraded onto an old file still starts); the minimum itself is kept as it is."""
    path = tmp_path / "vw.toml"
    path.write_text("[daemon]\nhistory_seconds = 0.001\n")
    cfg = load(path)
    assert cfg.daemon.history_seconds == MIN_HISTORY_SECONDS == 600.0
    assert cfg.notes == ("history_seconds = 0.001 is raised to 600: the detectors look back up to ten minutes",)
    path.write_text(f"[daemon]\nhistory_seconds = {MIN_HISTORY_SECONDS}\n")
    assert load(path).notes == ()


def test_the_agent_section_nothing_reads_is_ignored_with_a_note_that_serve_logs(tmp_path: Path) -> None:
    """An [agent] section (accepted by earlier versions, read by nothing) is dropped with a note, and the command
    line logs the note as config_adjusted."""
    path = tmp_path / "vw.toml"
    path.write_text("[agent]\nanything = 1\n")
    cfg = load(path)
    assert "agent" not in cfg.sections
    assert cfg.notes == (f"{path}: [agent] is read by nothing and is ignored: delete it",)
    res = CliRunner().invoke(main, ["--config", str(path), "--log-format", "json", "status", "--simulate", "steady"])
    assert res.exit_code == 0, res.output
    logged = [json.loads(line) for line in res.stderr.splitlines() if line.startswith("{")]
    assert [e["note"] for e in logged if e["event"] == "config_adjusted"] == list(cfg.notes)


def test_a_reload_does_not_refuse_a_webhook_whose_variable_the_next_start_will_have(tmp_path: Path) -> None:
    """A [notify] url_env naming a variable this process lacks is not a failed reload: systemd reads the
    EnvironmentFile= at start only, so the variable can be there at the next start (logged as needing a restart)."""
    path = tmp_path / "vw.toml"
    with _serving(path, "") as (daemon, logs):
        path.write_text(path.read_text() + '[[notify.webhook]]\nurl_env = "VW_TEST_SURELY_UNSET_HOOK"\n')
        assert _reload(daemon, logs)["event"] == "reloaded"
        assert [e["key"] for e in logs if e["event"] == "reload_needs_restart"] == ["[notify]"]


class _FakeApprise:
    """Apprise as the real one behaves here: it knows json:// URLs and refuses https://."""

    class Apprise:
        def add(self, url: str) -> bool:
            return url.startswith("json://")


def test_a_reload_checks_an_apprise_section_without_its_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    """[notify.apprise] urls_env: a reload checks that Apprise is there, not URLs it cannot see (every variable counts
    as set at a reload, to a value Apprise refuses); the next start checks the real URLs."""
    import sys

    from vramwatch.actions.notify_config import READ_AT_START
    from vramwatch.config import Config

    monkeypatch.setitem(sys.modules, "apprise", _FakeApprise)
    cfg = Config(sections={"notify": {"apprise": {"urls_env": "VW_TEST_APPRISE"}}}, source="vw.toml")
    app.check_actions(cfg, environ=READ_AT_START)
    app.check_actions(cfg, environ={"VW_TEST_APPRISE": "json://localhost"})
    with pytest.raises(ConfigError, match=r"^vw\.toml: \[notify\] apprise urls\[0\]: Apprise does not recognise"):
        app.check_actions(cfg, environ={"VW_TEST_APPRISE": "nope://x"})


def test_a_refused_notify_section_leaves_no_delivery_thread_running() -> None:
    """When a later [notify] entry is refused, the notifiers built before it are closed: each failed reload used to
    leave their delivery threads behind."""
    from vramwatch.actions import build_notifiers

    section = {"webhook": [{"url": "http://127.0.0.1:9/a"}, {"url": "http://127.0.0.1:9/b"}, {"url": "ftp://x"}]}
    before = {t for t in threading.enumerate() if t.name.startswith("vramwatch-")}
    with pytest.raises(ConfigError, match=r"#3 url"):
        build_notifiers(section)
    _until(lambda: {t for t in threading.enumerate() if t.name.startswith("vramwatch-")} <= before, 5.0)


@pytest.mark.parametrize(
    ("listen", "address"),
    [(":9783", "127.0.0.1:9783"), ("0.0.0.0:9783", "127.0.0.1:9783"), ("[::]:9783", "[::1]:9783"),
     ("10.1.2.3:80", "10.1.2.3:80"), ("[fe80::1]:80", "[fe80::1]:80")],
)  # fmt: skip
def test_status_reaches_a_daemon_listening_on_every_address_on_loopback(listen: str, address: str) -> None:
    """A daemon bound to a wildcard (or no host) is asked on loopback; a named host as it is."""
    assert local_address(listen) == address


def test_status_of_a_named_daemon_and_a_simulated_card_is_refused() -> None:
    """status --daemon ADDR --simulate S names two sources: refused, not answered from the simulator."""
    res = CliRunner().invoke(main, ["status", "--simulate", "steady", "--daemon", "127.0.0.1:9"])
    assert res.exit_code == 2
    assert "--daemon asks a running daemon, but a simulated or replayed card is named" in res.stderr


def test_speed_nan_is_a_usage_error() -> None:
    """serve --speed nan is refused by the parser (NaN slips through a plain FloatRange)."""
    res = CliRunner().invoke(main, ["serve", "--simulate", "steady", "--speed", "nan"])
    assert res.exit_code == 2
    assert "is not a finite number" in res.stderr


@contextmanager
def _answering(doc: dict[str, Any] | None) -> Iterator[int]:
    """An HTTP server on loopback answering /status.json with `doc` (None: 404, no vramwatch there)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(doc).encode()
            self.send_response(200 if doc is not None else 404)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_status_of_a_named_daemon_that_does_not_answer_is_an_error() -> None:
    """status --daemon ADDR with nothing there says so (exit 2) instead of showing a sample of its own."""
    address = f"127.0.0.1:{_free_port()}"
    res = CliRunner().invoke(main, ["status", "--daemon", address])
    assert res.exit_code == 2
    said = f"vramwatch: error: no vramwatch daemon answers at {address} (is `vramwatch serve` listening there?)\n"
    assert res.stderr == said
    assert res.stdout == ""


def test_status_of_a_daemon_named_without_its_port_asks_for_one() -> None:
    """status --daemon localhost (no port) says the form it expects (exit 2), not that no daemon answers."""
    res = CliRunner().invoke(main, ["status", "--daemon", "localhost"])
    assert res.exit_code == 2
    assert (
        res.stderr
        == "vramwatch: error: --daemon 'localhost': expected HOST:PORT, e.g. 127.0.0.1:9783 ([::1]:9783 for IPv6)\n"
    )


def test_status_of_a_daemon_without_a_reading_says_so() -> None:
    """A daemon that answers `up: false` with no GPUs (its NVML gone) is reported as such, exit 1, not taken for
    no daemon (which would show a sample of status's own, maybe of the simulator)."""
    with _answering({"up": False, "backend": None}) as port:
        res = CliRunner().invoke(main, ["status", "--daemon", f"127.0.0.1:{port}"])
        as_json = CliRunner().invoke(main, ["status", "--daemon", f"127.0.0.1:{port}", "--json"])
    assert res.exit_code == 1
    assert res.stdout.startswith(f"vramwatch: the daemon at 127.0.0.1:{port} answers, but has no GPU reading yet")
    assert "SIMULATED" not in res.stdout
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout) == {"up": False, "backend": None}


def test_status_finds_a_daemon_configured_on_a_bare_port(tmp_path: Path) -> None:
    """`listen = ":PORT"` in the config: status asks 127.0.0.1:PORT and shows that daemon's view."""
    doc = {"up": True, "backend": "nvml", "gpus": [], "processes_visible": True}
    with _answering(doc) as port:
        path = tmp_path / "vw.toml"
        path.write_text(f'[daemon]\nlisten = ":{port}"\n')
        res = CliRunner().invoke(main, ["--config", str(path), "status"])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith(f"vramwatch: from the daemon at 127.0.0.1:{port} (backend nvml)")


class _SlowToClose:
    """A notifier whose close waits for every other one to be closing too (a barrier): closes made one after
    another never meet there and each gives up; closes made at once all pass."""

    def __init__(self, barrier: threading.Barrier, passed: list[bool]) -> None:
        self.barrier = barrier
        self.passed = passed

    def notify(self, *_args: object, **_kwargs: object) -> None:
        pass

    def close(self, timeout: float) -> None:
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:
            self.passed.append(False)
        else:
            self.passed.append(True)


def test_stopping_closes_every_notifier_at_once() -> None:
    """The dispatcher drains its notifiers together, so two hanging receivers hold a stop `timeout` in all, not
    `timeout` each (the README's shutdown bound)."""
    passed: list[bool] = []
    barrier = threading.Barrier(3, timeout=2.0)
    notifiers = [_SlowToClose(barrier, passed) for _ in range(3)]
    dispatcher = ActionDispatcher(Policy(), notifiers, default_log=False)  # type: ignore[arg-type]
    dispatcher.close(timeout=5.0)
    assert passed == [True, True, True]


class _QueuedNotifier:
    """A notifier with a real delivery queue, whose receiver hangs: one job in flight, one waiting."""

    def __init__(self, hang: threading.Event) -> None:
        from vramwatch.actions.queue import DeliveryQueue

        self.queue = DeliveryQueue("test")
        for _ in range(2):
            self.queue.submit(lambda: hang.wait(10.0))

    def notify(self, *_args: object, **_kwargs: object) -> None:
        pass

    def close(self, timeout: float) -> None:
        self.queue.close(timeout)


def test_a_stop_returns_once_the_dropped_notifications_are_counted() -> None:
    """close() waits for each queue to count what it dropped (and log it), not only for the shared deadline."""
    hang = threading.Event()
    notifier = _QueuedNotifier(hang)
    _until(lambda: notifier.queue.pending() == 1)  # the first job is in flight, hanging
    dispatcher = ActionDispatcher(Policy(), [notifier], default_log=False)  # type: ignore[list-item]
    try:
        dispatcher.close(timeout=0.2)
        assert notifier.queue.counts()["dropped"] == 1
    finally:
        hang.set()
