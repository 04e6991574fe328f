"""`vramwatch serve` as users run it: a real process, scraped over HTTP, stopped by a signal."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _start(*args: str) -> tuple[subprocess.Popen[str], int]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "vramwatch", "--log-format", "json", "serve", "--listen", f"127.0.0.1:{port}", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if _get(port)[0] == 200:
                return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("serve did not come up: " + proc.communicate(timeout=5)[1])


@pytest.fixture
def leak_server() -> Iterator[tuple[subprocess.Popen[str], int]]:
    proc, port = _start("--simulate", "leak", "--interval", "0.1")
    yield proc, port
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=5)  # closes the pipes: an unclosed pipe is a ResourceWarning, and warnings are errors


def test_scrape_parses_and_carries_the_simulated_gpus(leak_server: tuple[subprocess.Popen[str], int]) -> None:
    """A scrape of a running serve parses with prometheus-client and says the data is simulated."""
    _, port = leak_server
    time.sleep(0.5)
    status, body = _get(port)
    assert status == 200
    fams = {f.name: f for f in text_string_to_metric_families(body)}
    (info,) = fams["vramwatch_build_info"].samples
    assert info.labels["backend"] == "simulated"
    used = fams["vramwatch_gpu_memory_used_bytes"].samples
    assert len(used) == 2
    assert all(s.value > 0 for s in used)
    assert fams["vramwatch_sampler_ticks"].samples[0].value >= 2


def test_first_line_says_simulated(leak_server: tuple[subprocess.Popen[str], int]) -> None:
    """The first line of output labels the simulated GPU clearly."""
    proc, _ = leak_server
    assert proc.stdout is not None
    assert "SIMULATED GPU" in proc.stdout.readline()


def test_healthz_reports_a_ticking_sampler(leak_server: tuple[subprocess.Popen[str], int]) -> None:
    """/healthz answers 200 while the sampler ticks."""
    assert _get(leak_server[1], "/healthz") == (200, "ok\n")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_within_a_second(leak_server: tuple[subprocess.Popen[str], int], sig: int) -> None:
    """SIGTERM and SIGINT stop serve cleanly (exit 0) within a second, even with a long interval, and it says so."""
    proc, _ = leak_server
    t0 = time.monotonic()
    proc.send_signal(sig)
    assert proc.wait(5) == 0
    assert time.monotonic() - t0 < 1.0
    assert proc.stdout is not None
    assert "vramwatch: stopped after" in proc.stdout.read()


def test_port_in_use_is_a_clear_error() -> None:
    """Binding a port that is taken fails at once with a one-line message and exit 2."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = subprocess.run(
            [sys.executable, "-m", "vramwatch", "serve", "--simulate", "steady", "--listen", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
    assert res.returncode == 2
    assert "already in use" in res.stderr
    assert "Traceback" not in res.stderr


def test_invalid_config_is_rejected_with_file_and_key(tmp_path: Path) -> None:
    """serve with a broken config exits 2 naming the file, the key and the expectation."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[daemon]\ninterval = "often"\n')
    res = subprocess.run(
        [sys.executable, "-m", "vramwatch", "--config", str(cfg), "serve", "--simulate", "steady"],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert res.returncode == 2
    assert str(cfg) in res.stderr
    assert "interval: expected a finite number" in res.stderr


def test_sighup_reloads_without_losing_history(tmp_path: Path) -> None:
    """SIGHUP re-reads the config (a bad one is refused and the old one kept) and the tick count keeps growing."""
    cfg = tmp_path / "vw.toml"
    cfg.write_text("[daemon]\nprocess_metrics = true\n")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "vramwatch", "--config", str(cfg), "--log-format", "json", "serve", "--simulate",
         "steady", "--interval", "0.1", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for _ in range(200):
            try:
                if _get(port)[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        time.sleep(0.5)
        assert "vramwatch_process_gpu_memory_bytes{" in _get(port)[1]
        cfg.write_text("[daemon]\nprocess_metrics = false\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        body = _get(port)[1]
        assert "vramwatch_process_gpu_memory_bytes{" not in body
        ticks = next(s.value for f in text_string_to_metric_families(body) for s in f.samples
                     if s.name == "vramwatch_sampler_ticks_total")  # fmt: skip
        assert ticks >= 8, "history and counters survive a reload"
        cfg.write_text("[daemon]\nprocess_metrics = 'no way'\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        assert _get(port)[0] == 200, "a bad config on reload keeps the daemon running"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=5)
    assert "reload_failed" in err


def test_status_reads_a_running_daemon(leak_server: tuple[subprocess.Popen[str], int]) -> None:
    """`status` shows the daemon's view: /status.json carries trends and the findings, never command lines."""
    from vramwatch.app import fetch_daemon_status
    from vramwatch.render import status_table

    _, port = leak_server
    time.sleep(0.5)
    doc = fetch_daemon_status(f"127.0.0.1:{port}")
    assert doc is not None
    assert doc["backend"] == "simulated"
    assert {"growth_bytes_per_second", "oom_eta_seconds", "processes"} <= set(doc["gpus"][0])
    assert "findings" in doc
    assert "verdicts" in doc
    assert "cmdline" not in json.dumps(doc)
    table = status_table(doc)
    assert table.startswith("GPU 0  Simulated RTX 4090")


def test_status_without_a_daemon_samples_by_itself() -> None:
    """With nothing listening at the address, status falls back to its own single sample."""
    from vramwatch.app import fetch_daemon_status

    assert fetch_daemon_status(f"127.0.0.1:{_free_port()}") is None


def test_serve_record_writes_a_replayable_trace(tmp_path: Path) -> None:
    """serve --record writes every tick to a trace that replay reads back, and closes it on SIGTERM."""
    from vramwatch.trace import read_trace

    trace = tmp_path / "serve.jsonl"
    proc, _ = _start("--simulate", "leak", "--interval", "0.05", "--record", str(trace))
    time.sleep(1.0)
    proc.terminate()
    proc.communicate(timeout=5)
    assert proc.returncode == 0
    header, ticks = read_trace(trace)
    assert header["backend"] == "simulated"
    assert len(list(ticks)) >= 5
