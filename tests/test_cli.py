"""The command line: parsing, one-line errors for bad input, and exit codes that pass through."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fake_pynvml import FakeNvml, GiB, gpu, real_nvml_answers
from vramwatch import app
from vramwatch.attribution import PsutilInspector
from vramwatch.backends.nvml import NvmlBackend
from vramwatch.cli import main
from vramwatch.config import load
from vramwatch.errors import BackendUnavailable


def _invoke(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(main, list(args))
    return res.exit_code, res.stdout, res.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("status", "--simulate", "nope"), "unknown scenario"),
        (("advise", "4194000"), "no process with pid 4194000"),
        (("advise", "999999999"), "is not in the range"),
        (("advise",), "give a pid or --cmdline"),
        (("advise", "1", "--cmdline", "python train.py"), "give a pid (or --simulate) or --cmdline, not both"),
        (("advise", "--simulate", "leak", "--cmdline", "python t.py"), "give a pid (or --simulate) or --cmdline"),
        (("--config", "/nonexistent/vw.toml", "status"), "cannot read config file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: tuple[str, ...], message: str) -> None:
    """Mistakes the user can fix are one line on stderr, exit 2, no traceback."""
    code, _, err = _invoke(*args)
    assert code == 2
    assert message in err.lower()
    assert "Traceback" not in err


def test_advise_of_an_exited_unreaped_process_says_it_exited() -> None:
    """advise PID of a zombie (exited, not reaped) says it has exited, not that it belongs to another user."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/stat").read_text().split(") ")[1][0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        code, _, err = _invoke("advise", str(child.pid))
    finally:
        child.wait()
    assert code == 2
    said = f"pid {child.pid} has exited (its parent has not reaped it yet): there is no command line to advise on"
    assert err == f"vramwatch: error: {said}\n"


@pytest.mark.parametrize(("flags", "kernel"), [(0x00208040, True), (0x00400140, False)])
def test_a_kernel_thread_is_told_by_its_flags_not_by_its_owner(tmp_path: Path, flags: int, kernel: bool) -> None:
    """A pid with no command line is a kernel thread when its stat flags carry PF_KTHREAD (kthreadd's 0x00208040),
    whoever runs advise; else it is another user's process."""
    from vramwatch.attribution import kernel_thread

    (tmp_path / "2").mkdir()
    (tmp_path / "2" / "stat").write_text(f"2 (kthreadd) S 0 0 0 0 -1 {flags} 0 0 0 0 0 0 0 0 20 0 1 0 8 0 0\n")
    assert kernel_thread(2, tmp_path) is kernel
    assert kernel_thread(3, tmp_path) is False  # no such pid: not called a kernel thread


def test_status_json_is_machine_readable() -> None:
    """status --json prints one JSON document with bytes per GPU and process, never a command line."""
    code, out, _ = _invoke("status", "--simulate", "steady", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["backend"] == "simulated"
    assert doc["gpus"][0]["total_bytes"] == 24 * 1024**3
    assert "cmdline" not in out


def test_status_table_starts_with_the_simulated_banner() -> None:
    """The first line says the GPU is simulated."""
    code, out, _ = _invoke("status", "--simulate", "steady")
    assert code == 0
    assert out.splitlines()[0].startswith("vramwatch: SIMULATED GPU")


def test_replay_reports_malformed_lines_and_goes_on(tmp_path: Path) -> None:
    """A trace with a broken line is replayed anyway; the line number is reported."""
    code, _, _ = _invoke("record", str(tmp_path / "t.jsonl"), "--simulate", "leak", "--interval", "0.01",
                         "--duration", "0.3")  # fmt: skip
    assert code == 0
    lines = (tmp_path / "t.jsonl").read_text().splitlines()
    lines.insert(3, "{not json")
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    code, _, err = _invoke("replay", str(tmp_path / "t.jsonl"), "--json")
    assert code == 0
    assert ":4: skipped" in err
    assert "1 malformed lines skipped" in err


def test_advise_cmdline_speaks_kohya() -> None:
    """advise --cmdline ranks kohya's own flags for the field guide's failing command."""
    cmd = "flux_train_network.py --train_batch_size 4 --resolution 1024,1024"
    cmd += " --mixed_precision no --optimizer_type AdamW"
    code, out, _ = _invoke("advise", "--cmdline", cmd, "--json")
    assert code == 0
    changes = [s["change"] for s in json.loads(out)["suggestions"]]
    assert changes[0] == "--gradient_checkpointing"
    assert "--optimizer_type AdamW8bit" in changes


@pytest.mark.slow
def test_run_passes_the_exit_code_and_output_through() -> None:
    """`vramwatch run -- cmd` exits with the command's status and leaves its stdout untouched."""
    res = subprocess.run(
        [sys.executable, "-m", "vramwatch", "run", "--", sys.executable, "-c", "print('out'); raise SystemExit(7)"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 7
    assert res.stdout == "out\n"


def _receiver(status: int) -> tuple[ThreadingHTTPServer, list[bytes]]:
    bodies: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, bodies


@pytest.mark.parametrize(("status", "code"), [(200, 0), (400, 1)])
def test_notify_test_reaches_a_real_receiver(tmp_path: Path, status: int, code: int) -> None:
    """notify --test posts a test alert (firing, then resolved) and exits 1 when the receiver refuses it."""
    server, bodies = _receiver(status)
    cfg = tmp_path / "vw.toml"
    cfg.write_text(f'[[notify.webhook]]\nurl = "http://127.0.0.1:{server.server_port}/hook"\nmax_attempts = 1\n')
    try:
        exit_code, out, _ = _invoke("--config", str(cfg), "notify", "--test")
    finally:
        server.shutdown()
        server.server_close()
    assert exit_code == code
    assert ("ok" if code == 0 else "FAILED") in out
    assert bodies
    assert b"vramwatch notification test" in bodies[0]


def test_notify_test_names_the_file_of_a_bad_notify_section(tmp_path: Path) -> None:
    """A refused [notify] table under notify --test is one line naming the config file, as under serve."""
    cfg = tmp_path / "vw.toml"
    cfg.write_text('[[notify.webhook]]\nurl = "ftp://example.org/hook"\n')
    code, _, err = _invoke("--config", str(cfg), "notify", "--test")
    assert code == 2
    assert f"{cfg}: [[notify.webhook]] #1 url" in err


def test_notify_test_without_notifiers_says_what_to_configure() -> None:
    """With no [notify] section, notify --test explains what to add."""
    code, _, err = _invoke("notify", "--test")
    assert code == 2
    assert "no notifier is configured" in err


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1e-9", "0.001"])
@pytest.mark.parametrize("command", ["record", "serve"])
def test_a_bad_interval_is_one_line_and_exit_2(command: str, value: str, tmp_path: Path) -> None:
    """--interval 0, -1, nan, inf or 1e-9 is refused with one line naming it: no traceback, nothing started."""
    args = [command, *([str(tmp_path / "t.jsonl")] if command == "record" else []), f"--interval={value}"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    assert "interval" in res.stderr
    assert not (tmp_path / "t.jsonl").exists()


def test_record_never_overwrites_a_trace_without_force(tmp_path: Path) -> None:
    """An existing recording is kept (exit 2, one line) unless --force says to overwrite it."""
    trace = tmp_path / "t.jsonl"
    trace.write_text("keep me\n")
    args = ["record", str(trace), "--simulate", "leak", "--interval", "0.01", "--duration", "0.05"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2
    assert "--force" in res.stderr
    assert trace.read_text() == "keep me\n"
    res = CliRunner().invoke(main, [*args, "--force"])
    assert res.exit_code == 0, res.output
    assert trace.read_text() != "keep me\n"


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    """A config file in another encoding names the file and says why, without a traceback."""
    cfg = tmp_path / "vw.toml"
    cfg.write_bytes(b"\xff\xfe[daemon]\n")
    res = CliRunner().invoke(main, ["--config", str(cfg), "status", "--simulate", "steady"])
    assert res.exit_code == 2
    assert "not a UTF-8 text file" in res.stderr
    assert "Traceback" not in res.output


def test_notify_without_a_notifier_names_the_right_syntax() -> None:
    """The message gives the table syntax the config really uses ([[notify.webhook]])."""
    res = CliRunner().invoke(main, ["notify", "--test"])
    assert res.exit_code == 2
    assert "[[notify.webhook]]" in res.stderr


@pytest.mark.parametrize("where", ["before", "after"])
def test_global_options_work_before_or_after_the_subcommand(where: str, tmp_path: Path) -> None:
    """--config (and the log options) read the same whether given before the subcommand or after it."""
    cfg = tmp_path / "vw.toml"
    cfg.write_text('[daemon]\ninterval = "often"\n')  # invalid on purpose: proof that the file was read
    opts = ["--config", str(cfg), "--log-level", "debug", "-q"]
    args = [*opts, "status", "--simulate", "steady"] if where == "before" else ["status", "--simulate", "steady", *opts]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2
    assert f"{cfg}: [daemon] interval" in res.stderr


def test_an_unknown_log_level_is_a_usage_error() -> None:
    """A log level outside debug/info/warning/error is refused by the parser, before anything runs."""
    res = CliRunner().invoke(main, ["status", "--log-level", "chatty"])
    assert res.exit_code == 2
    assert "chatty" in res.output


def test_advise_on_the_simulated_card_needs_no_gpu() -> None:
    """`advise --simulate SCENARIO` advises the scenario's misbehaving trainer, and says it is simulated."""
    res = CliRunner().invoke(main, ["advise", "--simulate", "contention"])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("vramwatch: SIMULATED: pid ")
    assert "kohya-ss sd-scripts" in res.stdout
    assert "--train_batch_size 1 --gradient_accumulation_steps 4" in res.stdout  # in the trainer's own flags
    bad = CliRunner().invoke(main, ["advise", "4242", "--simulate", "leak"])
    assert bad.exit_code == 2
    assert "never runs in the simulated scenario 'leak'" in bad.stderr


def test_a_nul_byte_in_a_file_option_is_a_usage_error() -> None:
    """`--config $'\\x00'` (found by the fuzz test) exits 2 with a message, never a ValueError traceback."""
    result = CliRunner().invoke(main, ["status", "--simulate", "--simulate", "--config", "\x00"])
    assert result.exit_code == 2
    assert "not a file name (it holds a NUL byte)" in result.output


@pytest.fixture
def busy_listen() -> Iterator[str]:
    """--listen at a taken port: a serve that wrongly got past its checks fails to bind instead of serving forever."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield f"127.0.0.1:{s.getsockname()[1]}"


def _trace(tmp_path: Path) -> Path:
    trace = tmp_path / "t.jsonl"
    res = CliRunner().invoke(main, ["record", str(trace), "--simulate", "leak", "--interval", "0.01",
                                    "--duration", "0.05"])  # fmt: skip
    assert res.exit_code == 0, res.output
    return trace


@pytest.mark.parametrize("force", [[], ["--force"]])
@pytest.mark.parametrize("spelling", ["same", "dotted", "hard link"])
def test_serve_never_records_over_the_trace_it_replays(
    tmp_path: Path, busy_listen: str, spelling: str, force: list[str]
) -> None:
    """serve --replay F --record F is refused (one line, exit 2), --force or not, however F is spelled."""
    trace = _trace(tmp_path)
    before = trace.read_bytes()
    (tmp_path / "x").mkdir()
    record = {"same": trace, "dotted": tmp_path / "x" / ".." / trace.name, "hard link": tmp_path / "h.jsonl"}[spelling]
    if spelling == "hard link":
        record.hardlink_to(trace)
    args = ["serve", "--listen", busy_listen, "--replay", str(trace), "--record", str(record), *force]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2
    assert "is the trace being replayed" in res.stderr
    assert "Traceback" not in res.output
    assert trace.read_bytes() == before


def test_serve_never_records_over_the_replayed_trace_from_the_config_file(tmp_path: Path, busy_listen: str) -> None:
    """[daemon] replay and record naming one file are refused too, even with serve --force."""
    trace = _trace(tmp_path)
    before = trace.read_bytes()
    cfg = tmp_path / "vw.toml"
    cfg.write_text(f'[daemon]\nreplay = "{trace}"\nrecord = "{trace}"\n')
    res = CliRunner().invoke(main, ["--config", str(cfg), "serve", "--listen", busy_listen, "--force"])
    assert res.exit_code == 2
    assert "is the trace being replayed" in res.stderr
    assert trace.read_bytes() == before


def test_serve_record_never_overwrites_a_file_without_force(tmp_path: Path, busy_listen: str) -> None:
    """serve --record FILE keeps an existing FILE: one line naming --force, exit 2."""
    kept = tmp_path / "kept.jsonl"
    kept.write_text("keep me\n")
    res = CliRunner().invoke(main, ["serve", "--record", str(kept), "--listen", busy_listen, "--simulate", "leak"])
    assert res.exit_code == 2
    assert res.stderr == f"vramwatch: error: {kept} exists: give another file name, or --force to overwrite it\n"
    assert kept.read_text() == "keep me\n"


def _free_listen() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_a_record_file_from_the_config_is_set_aside_not_refused(tmp_path: Path) -> None:
    """[daemon] record naming an existing trace (a service restarting onto its last one) renames that trace with
    the time, keeping its suffixes, instead of refusing to start or overwriting it."""
    from vramwatch import app
    from vramwatch.config import Config, DaemonConfig

    kept = tmp_path / "kept.jsonl.gz"
    kept.write_bytes(b"keep me\n")
    cfg = Config(daemon=DaemonConfig(simulate="leak", listen=_free_listen(), record=str(kept)))
    stop = threading.Event()
    stop.set()  # the daemon stops at once: the recorder was opened by then
    assert app.serve(cfg, out=lambda _line: None, stop=stop, ready=lambda _d: None) == 0
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith("kept.") and p != kept]
    assert re.fullmatch(r"kept\.\d{8}T\d{6}\.jsonl\.gz", aside.name)
    assert aside.read_bytes() == b"keep me\n"
    assert kept.exists()  # the new recording


@pytest.mark.parametrize("how", ["--force", "config"])
def test_a_serve_that_cannot_bind_leaves_the_last_recording_alone(tmp_path: Path, busy_listen: str, how: str) -> None:
    """With the port taken, serve fails (exit 2) before touching the record file: not emptied by --force, not
    set aside when the config names it."""
    kept = tmp_path / "kept.jsonl"
    kept.write_text("keep me\n")
    if how == "--force":
        args = ["serve", "--record", str(kept), "--force", "--listen", busy_listen, "--simulate", "leak"]
    else:
        cfg = tmp_path / "vw.toml"
        cfg.write_text(f'[daemon]\nrecord = "{kept}"\n')
        args = ["--config", str(cfg), "serve", "--listen", busy_listen, "--simulate", "leak"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2
    assert "the port is already in use" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("kept")) == ["kept.jsonl"]
    assert kept.read_text() == "keep me\n"


def test_a_record_file_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    """[daemon] record in a missing directory: serve stops with one line naming the file (exit 2), after binding."""
    cfg = tmp_path / "vw.toml"
    cfg.write_text(f'[daemon]\nrecord = "{tmp_path / "missing" / "t.jsonl"}"\nlisten = "{_free_listen()}"\n')
    res = CliRunner().invoke(main, ["--config", str(cfg), "serve", "--simulate", "leak"])
    assert res.exit_code == 2
    assert res.stderr.startswith(f"vramwatch: error: {tmp_path / 'missing' / 't.jsonl'}: cannot write the trace")


def test_serve_record_with_force_overwrites_the_file(tmp_path: Path) -> None:
    """With force, serve records over an existing file (a trace header replaces what was there)."""
    from vramwatch import app
    from vramwatch.config import Config, DaemonConfig

    kept = tmp_path / "kept.jsonl"
    kept.write_text("keep me\n")
    cfg = Config(daemon=DaemonConfig(simulate="leak", listen=_free_listen(), record=str(kept)))
    stop = threading.Event()
    stop.set()  # the daemon stops at once: the recorder was opened by then
    lines: list[str] = []
    assert app.serve(cfg, out=lines.append, stop=stop, ready=lambda _d: None, force=True) == 0
    assert kept.read_text().startswith('{"vramwatch_trace":1')


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1"])
def test_a_bad_record_duration_is_a_usage_error(tmp_path: Path, value: str) -> None:
    """record --duration nan, inf, 0 or -1 is refused by the parser (exit 2, naming it) before anything records."""
    trace = tmp_path / "t.jsonl"
    res = CliRunner().invoke(main, ["record", str(trace), "--simulate", "leak", f"--duration={value}"])
    assert res.exit_code == 2
    assert "Invalid value for '--duration'" in res.stderr
    assert "Traceback" not in res.output
    assert not trace.exists()


def test_run_events_that_cannot_be_written_is_one_line_before_the_command_starts(tmp_path: Path) -> None:
    """run --events in a missing directory says the path and why (exit 2) and never starts the command."""
    events = tmp_path / "missing" / "e.jsonl"
    marker = tmp_path / "started"
    res = CliRunner().invoke(
        main, ["run", "--events", str(events), "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    )
    assert res.exit_code == 2
    assert res.stderr == f"vramwatch: error: --events {events}: cannot write there: No such file or directory\n"
    assert not marker.exists()


ARMED = """
[daemon]
simulate = "steady"
[policy.actions]
critical = ["notify", "signal"]
[policy.targets]
users = ["alice"]
"""


def test_check_says_what_serve_would_read_and_arm(tmp_path: Path) -> None:
    """check exits 0 on a config serve would start with, naming the file, the card, and that a simulated card
    keeps only log and notify of the policy."""
    cfg = tmp_path / "vw.toml"
    cfg.write_text(ARMED)
    code, out, _ = _invoke("--config", str(cfg), "check")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"vramwatch: {cfg}: serve would start with it"
    assert "  GPUs: SIMULATED GPU: scenario 'steady'; no real GPU is being watched" in lines
    assert "  policy: on a warning: notify; on a critical: notify, signal" in lines
    assert "  policy: signal, hook and kill: off on a simulated or replayed card: its pids are not this host's" in lines
    assert "  notify: none configured: findings go to the log" in lines


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[policy.actions]\ncritical = ['signal']\n", "[policy.targets] names no process"),
        ('[[notify.webhook]]\nurl = "ftp://example.org/hook"\n', "[[notify.webhook]] #1 url"),
        ('[[notify.webhook]]\nurl_env = "VRAMWATCH_TEST_UNSET_URL"\n', "VRAMWATCH_TEST_UNSET_URL"),
        ('[daemon]\nsimulate = "nope"\n', "unknown scenario 'nope'"),
        ('[daemon]\nreplay = "/nonexistent/t.jsonl"\n', "cannot open the trace"),
        ("[detectors]\nforecast_warning_eta_seconds = -1\n", "forecast_warning_eta_seconds"),
        ('[daemon]\nrecord = "/nonexistent/dir/t.jsonl"\n', "no directory /nonexistent/dir"),
        ('[daemon]\nlisten = "nosuchhost.invalid:9783"\n', "cannot listen on nosuchhost.invalid:9783: "),
        (
            "[policy]\nact_on_kinds = []\n[policy.actions]\ncritical = ['signal']\n[policy.targets]\nusers = ['a']\n",
            "act_on_kinds is empty",
        ),
    ],
)
@pytest.mark.parametrize("command", ["check", "serve"])
def test_check_refuses_what_serve_refuses(
    tmp_path: Path, busy_listen: str, text: str, message: str, command: str
) -> None:
    """check refuses what serve's start would, as serve does: one line naming the key, exit 2; and serve itself
    refuses it in the same words (at a taken port, where a serve that got past its checks would fail to bind)."""
    cfg = tmp_path / "vw.toml"
    cfg.write_text(text)
    listen = ["--listen", busy_listen] if command == "serve" and "listen" not in text else []
    code, out, err = _invoke("--config", str(cfg), command, *listen)
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    if command == "check":
        assert out == ""


def test_check_changes_nothing_and_sends_nothing(tmp_path: Path) -> None:
    """check leaves an existing record file where it is (serve would set it aside) and posts nothing to a
    configured webhook."""
    server, bodies = _receiver(200)
    record = tmp_path / "t.jsonl"
    record.write_text("kept\n")
    cfg = tmp_path / "vw.toml"
    port = server.server_port
    cfg.write_text(
        f'[daemon]\nsimulate = "leak"\nrecord = "{record}"\n[[notify.webhook]]\nurl = "http://127.0.0.1:{port}/h"\n'
    )
    try:
        code, out, _ = _invoke("--config", str(cfg), "check")
    finally:
        server.shutdown()
        server.server_close()
    assert code == 0
    assert f"recording to {record}" in out
    assert "  notify: Webhook" in out.splitlines()
    assert bodies == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.jsonl", "vw.toml"]
    assert record.read_text() == "kept\n"


@pytest.mark.skipif(real_nvml_answers(), reason="an NVIDIA driver answers here")
def test_check_require_gpu_without_a_driver_exits_1() -> None:
    """check --require-gpu where no NVIDIA driver answers says so and exits 1; without the flag it names the
    simulator that would stand in, and exits 0."""
    code, out, _ = _invoke("check", "--require-gpu")
    assert code == 1
    assert "serve would export vramwatch_up 0 and retry" in out
    code, out, _ = _invoke("check")
    assert code == 0
    assert "SIMULATED GPU (no NVIDIA driver found on this machine)" in out


def test_serve_refuses_bad_detector_settings_before_opening_a_card(tmp_path: Path, busy_listen: str) -> None:
    """A bad [detectors] value stops serve before it opens the card: the error is the only line, no banner."""
    cfg = tmp_path / "vw.toml"
    cfg.write_text("[detectors]\nforecast_warning_eta_seconds = -1\n")
    code, out, err = _invoke("--config", str(cfg), "serve", "--simulate", "leak", "--listen", busy_listen)
    assert code == 2
    assert out == ""
    assert f"{cfg}: [detectors]" in err


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[notify.apprise]\nurls = "tgram://123456:SECRETTOKEN/987"\n', "[notify.apprise] urls"),
        ('[[policy.hooks]]\nargv = ["/usr/bin/page", "--token", "SECRETTOKEN", 3]\n', "[[policy.hooks]] #1 argv"),
        (
            '[[policy.hooks]]\nargv = ["/usr/bin/page"]\nenv = { TOKEN = "SECRETTOKEN", RETRIES = 3 }\n',
            "[[policy.hooks]] #1 env",
        ),
        ('[[notify.webhook]]\nurl = ["https://hooks.example/SECRETTOKEN"]\n', "[[notify.webhook]] #1 url"),
        ('[[notify.webhook]]\nurl_env = "https://hooks.example/SECRETTOKEN"\n', "[[notify.webhook]] #1 url_env"),
        ('[notify.apprise]\nurls_env = "tgram://1:SECRETTOKEN/2"\n', "[notify.apprise] urls_env"),
        (  # a token that is a valid variable name, pasted as the name
            '[[notify.webhook]]\nurl_env = "ghp_SECRETTOKEN0a1b2c3d"\n',
            "[[notify.webhook]] #1 url_env: the environment variable a str (not shown",
        ),
        ('[notify]\nwebhook = "https://hooks.example/SECRETTOKEN"\n', "[[notify.webhook]]: expected an array"),
        ('[policy]\nhooks = "curl -H Bearer_SECRETTOKEN"\n', "[[policy.hooks]]: expected an array"),
        (
            '[[notify.webhook]]\nurl = "http://h.example/x"\nhmac_secret_file = "SECRETTOKEN"\n',
            "hmac_secret_file: cannot read a str (not shown",
        ),
        ('[[notify.webhook]]\nurl = "https://hooks.example:SECRETTOKEN/x"\n', "got a malformed one"),
    ],
)
def test_a_refused_secret_bearing_key_is_named_never_its_value(
    tmp_path: Path, busy_listen: str, text: str, key: str
) -> None:
    """A bad value of a key that may hold a token (Apprise URLs, a hook's arguments or environment, a webhook URL)
    is refused naming the key and the value's type, never the value: the line goes to a terminal and the journal."""
    cfg = tmp_path / "vw.toml"
    cfg.write_text(text)
    for command in ("check", "serve"):
        serving = ["--simulate", "leak", "--listen", busy_listen] if command == "serve" else []
        code, out, err = _invoke("--config", str(cfg), command, *serving)
        assert code == 2
        assert key in err
        assert "SECRETTOKEN" not in err + out


@pytest.mark.parametrize("command", ["check", "serve"])
def test_a_directory_as_the_record_target_is_refused_and_left_where_it_is(
    tmp_path: Path, busy_listen: str, command: str
) -> None:
    """`[daemon] record` naming a directory is refused by check and by serve's start, which used to set the
    directory aside (renamed) and write a trace in its place."""
    target = tmp_path / "traces"
    target.mkdir()
    cfg = tmp_path / "vw.toml"
    cfg.write_text(f'[daemon]\nsimulate = "leak"\nrecord = "{target}"\nlisten = "{busy_listen}"\n')
    code, _, err = _invoke("--config", str(cfg), command)
    assert code == 2
    assert f"{target} is not a regular file" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["traces", "vw.toml"]


def _unloaded_driver(_cfg: object, _clock: object, *, require_gpu: bool, loop: bool = False) -> tuple[Any, bool]:
    raise BackendUnavailable("NVML: Driver Not Loaded", reason="driver_not_loaded")


@pytest.mark.parametrize(("require_gpu", "code"), [(False, 0), (True, 1)])
def test_check_where_the_driver_is_not_loaded_yet(tmp_path: Path, require_gpu: bool, code: int) -> None:
    """A driver installed but not loaded: serve would start and retry, so check exits 0 (1 only with --require-gpu)
    and says that signal, hook and kill are set up when a card answers (not that the card is simulated)."""
    cfg = tmp_path / "vw.toml"
    cfg.write_text(ARMED.replace('simulate = "steady"\n', ""))
    lines: list[str] = []
    assert app.check(load(cfg, {}), out=lines.append, require_gpu=require_gpu, opener=_unloaded_driver) == code
    assert "  GPUs: NVML: Driver Not Loaded; serve would export vramwatch_up 0 and retry" in lines
    waiting = "  policy: signal, hook and kill are set up when a card answers (serve retries until then), as follows"
    assert waiting in lines
    assert "  policy: processes it may signal or kill: user alice" in lines


def test_check_where_the_daemon_cannot_see_the_hosts_pids_says_signal_and_kill_are_refused(tmp_path: Path) -> None:
    """On a real card read from a pid namespace of its own (host_pids = no), the dispatcher refuses every signal and
    kill: check says so instead of listing the targets as reachable."""
    cfg = tmp_path / "vw.toml"
    cfg.write_text(ARMED.replace('simulate = "steady"\n', ""))

    def hidden(_cfg: object, _clock: object, *, require_gpu: bool, loop: bool = False) -> tuple[Any, bool]:
        fake = FakeNvml([gpu(0, total=24 * GiB, used=2 * GiB)])
        return NvmlBackend(nvml=fake, inspector=PsutilInspector(host_pids=False)), False

    lines: list[str] = []
    assert app.check(load(cfg, {}), out=lines.append, opener=hidden) == 0
    assert any(line.startswith("  GPUs: NVML, driver 580.159.04 on ") for line in lines)
    assert (
        "  policy: signal and kill are refused here: the daemon cannot see this host's pids (host_pids = no, or a "
        "pid namespace of its own)" in lines
    )
