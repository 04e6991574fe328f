"""Exporter: series built fresh from the latest snapshot on the daemon's own registry."""

from __future__ import annotations

import gzip
import shutil
import socket
import subprocess

import pytest
from builders import GIB, UUID0, make_snapshot
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from vramwatch.errors import VramwatchError
from vramwatch.exporter import (
    GZIP_LEVEL,
    ExportState,
    MetricsServer,
    accepts_gzip,
    make_registry,
    metrics_app,
    parse_listen,
)
from vramwatch.model import Finding, GpuSample, ProcessKey, Severity, Snapshot
from vramwatch.sampler import TickStats
from vramwatch.stephistory import StepFigures
from vramwatch.steps import Outcome


def _state(snap: Snapshot | None, **kw: object) -> ExportState:
    return ExportState(snapshot=snap, backend={"backend": "simulated"}, stats=TickStats(), up=True, **kw)  # type: ignore[arg-type]


def test_gpu_and_process_series_carry_the_snapshot_values() -> None:
    """Each GPU and process figure of the snapshot is exported under its documented name and labels."""
    snap = make_snapshot(1.0, {10: 3 * GIB, 11: 1 * GIB})
    reg = make_registry(lambda: _state(snap))
    labels = {"gpu": "0", "uuid": UUID0, "name": "Test RTX 4090"}
    used = 4 * GIB + 300 * 1024**2
    assert reg.get_sample_value("vramwatch_gpu_memory_used_bytes", labels) == used
    assert reg.get_sample_value("vramwatch_gpu_memory_total_bytes", labels) == 24 * GIB
    assert reg.get_sample_value("vramwatch_gpu_unattributed_memory_bytes", labels) == 300 * 1024**2
    assert reg.get_sample_value("vramwatch_gpu_processes", labels) == 2
    plabels = {"gpu": "0", "uuid": UUID0, "pid": "10", "process": "p10", "user": "", "container": ""}
    assert reg.get_sample_value("vramwatch_process_gpu_memory_bytes", plabels) == 3 * GIB


def test_exited_process_disappears_at_the_next_scrape() -> None:
    """No stale series: a pid absent from the latest snapshot is absent from the next scrape."""
    state = {"s": _state(make_snapshot(1.0, {10: GIB, 11: GIB}))}
    reg = make_registry(lambda: state["s"])
    assert b'pid="11"' in generate_latest(reg)
    state["s"] = _state(make_snapshot(2.0, {10: GIB}))
    text = generate_latest(reg)
    assert b'pid="11"' not in text
    assert b'pid="10"' in text


def test_per_process_series_can_be_switched_off() -> None:
    """process_metrics=False leaves only GPU-level series (for fleets that fear cardinality)."""
    reg = make_registry(lambda: _state(make_snapshot(1.0, {10: GIB}), process_metrics=False))
    text = generate_latest(reg).decode()
    assert "vramwatch_process_gpu_memory_bytes" not in text
    assert "vramwatch_gpu_memory_used_bytes" in text


def test_nothing_lands_in_the_global_registry() -> None:
    """Building our registry registers nothing in prometheus-client's global REGISTRY."""
    before = set(REGISTRY._names_to_collectors)
    make_registry(lambda: _state(None))
    assert set(REGISTRY._names_to_collectors) == before


def test_command_lines_never_become_labels() -> None:
    """A secret in a command line does not appear anywhere in the exposition."""
    from dataclasses import replace

    snap = make_snapshot(1.0, {10: GIB})
    p = snap.processes[0]
    secret = replace(p, meta=replace(p.meta, cmdline=("python", "train.py", "--hf_token", "hf_SECRET")))
    reg = make_registry(lambda: _state(replace(snap, processes=(secret,))))
    assert b"hf_SECRET" not in generate_latest(reg)


def test_lost_gpu_is_up_zero_without_memory_series() -> None:
    """A GPU that stopped answering exports gpu_up 0 and no made-up memory figures."""
    lost = GpuSample(1, "GPU-lost", "Test", None, None, None, up=False, error="gpu_lost")
    snap = make_snapshot(1.0, {10: GIB})
    from dataclasses import replace

    reg = make_registry(lambda: _state(replace(snap, gpus=(*snap.gpus, lost))))
    assert reg.get_sample_value("vramwatch_gpu_up", {"gpu": "1", "uuid": "GPU-lost", "name": "Test"}) == 0
    assert (
        reg.get_sample_value("vramwatch_gpu_memory_used_bytes", {"gpu": "1", "uuid": "GPU-lost", "name": "Test"})
        is None
    )


def test_forecast_growth_and_findings_are_exported() -> None:
    """Growth rates, the OOM forecast and active findings appear with their labels."""
    snap = make_snapshot(1.0, {10: GIB})
    f = Finding("oom_forecast", Severity.CRITICAL, UUID0, "full soon", 1.0, ProcessKey(10, 110.0))
    reg = make_registry(
        lambda: _state(
            snap,
            gpu_growth={UUID0: 1.5e8},
            oom_eta={UUID0: 90.0},
            process_growth={(ProcessKey(10, 110.0), UUID0): 1.5e8},
            active=(f,),
            findings_raised={("oom_forecast", "critical"): 1},
        )
    )
    g = {"gpu": "0", "uuid": UUID0, "name": "Test RTX 4090"}
    assert reg.get_sample_value("vramwatch_gpu_oom_eta_seconds", g) == 90.0
    assert reg.get_sample_value("vramwatch_gpu_memory_growth_bytes_per_second", g) == 1.5e8
    active = {"kind": "oom_forecast", "severity": "critical", "gpu": "0", "tentative": "false"}
    assert reg.get_sample_value("vramwatch_findings_active", active) == 1
    assert reg.get_sample_value("vramwatch_findings_total", {"kind": "oom_forecast", "severity": "critical"}) == 1


def test_a_tentative_finding_is_its_own_series() -> None:
    """A tentative and a firm finding of one kind and severity are counted apart, by the `tentative` label."""
    snap = make_snapshot(1.0, {10: GIB})
    firm = Finding("growth", Severity.CRITICAL, UUID0, "leaks", 1.0, ProcessKey(10, 110.0))
    doubt = Finding("oom_forecast", Severity.CRITICAL, UUID0, "full soon", 1.0, tentative="young")
    reg = make_registry(lambda: _state(snap, active=(firm, doubt)))
    labels = {"severity": "critical", "gpu": "0"}
    assert reg.get_sample_value("vramwatch_findings_active", {**labels, "kind": "oom_forecast", "tentative": "true"})
    assert reg.get_sample_value("vramwatch_findings_active", {**labels, "kind": "growth", "tentative": "false"}) == 1
    assert (
        reg.get_sample_value("vramwatch_findings_active", {**labels, "kind": "oom_forecast", "tentative": "false"})
        is None
    )


def _step_figures() -> dict[tuple[int, int], StepFigures]:
    fails = StepFigures(10, 0, 1_200, 8 * GIB, 12 * GIB, 2.0e6, Outcome.PHASE, 2_000, "sample", "will run out", UUID0)
    fits = StepFigures(11, 0, 1_200, 6 * GIB, None, 0.0, Outcome.FITS, None, None, "fits", None)
    return {(10, 0): fails, (11, 0): fits}


def test_step_figures_are_exported_per_process() -> None:
    """The agents' steps: last step, step peak by kind, growth a step, and the fail step only where it fails."""
    reg = make_registry(lambda: _state(make_snapshot(1.0, {10: GIB, 11: GIB}), steps=_step_figures()))
    ten = {"gpu": "0", "pid": "10", "process": "p10"}
    eleven = {"gpu": "0", "pid": "11", "process": "p11"}
    assert reg.get_sample_value("vramwatch_process_optimizer_steps_total", ten) == 1_200
    assert reg.get_sample_value("vramwatch_process_step_peak_bytes", {**ten, "kind": "allocated"}) == 8 * GIB
    assert reg.get_sample_value("vramwatch_process_step_peak_bytes", {**ten, "kind": "reserved"}) == 12 * GIB
    assert reg.get_sample_value("vramwatch_process_step_peak_bytes", {**eleven, "kind": "reserved"}) is None
    assert reg.get_sample_value("vramwatch_process_step_growth_bytes", ten) == 2.0e6
    assert reg.get_sample_value("vramwatch_process_forecast_fail_step", ten) == 2_000
    assert reg.get_sample_value("vramwatch_process_forecast_fail_step", eleven) is None
    off = make_registry(lambda: _state(make_snapshot(1.0, {10: GIB}), steps=_step_figures(), process_metrics=False))
    assert "vramwatch_process_optimizer_steps" not in generate_latest(off).decode()


def test_exposition_parses_with_prometheus_client() -> None:
    """The whole exposition parses, and every family is vramwatch_-prefixed."""
    reg = make_registry(lambda: _state(make_snapshot(1.0, {10: GIB}), steps=_step_figures()))
    fams = list(text_string_to_metric_families(generate_latest(reg).decode()))
    assert fams
    assert all(f.name.startswith("vramwatch_") for f in fams)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)")
def test_promtool_check_metrics_is_silent() -> None:
    """`promtool check metrics` finds nothing to complain about in a full exposition."""
    snap = make_snapshot(1.0, {10: GIB})
    f = Finding("growth", Severity.WARNING, UUID0, "grows", 1.0)
    reg = make_registry(
        lambda: _state(snap, gpu_growth={UUID0: 1e6}, oom_eta={UUID0: 500.0}, active=(f,), steps=_step_figures())
    )
    res = subprocess.run(["promtool", "check", "metrics"], input=generate_latest(reg), capture_output=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == b""
    assert res.stderr.strip() == b""


@pytest.mark.parametrize("bad", ["9783", "localhost", "host:port", "1.2.3.4:70000", ":0x10"])
def test_listen_rejects_malformed_addresses(bad: str) -> None:
    """A malformed --listen is a clear error naming the expected form."""
    with pytest.raises(VramwatchError, match="HOST:PORT"):
        parse_listen(bad)


def test_listen_accepts_ipv6_and_defaults_host() -> None:
    """[::1]:9783 and :9783 are understood."""
    assert parse_listen("[::1]:9783") == ("::1", 9783)
    assert parse_listen(":9783") == ("127.0.0.1", 9783)


PROMETHEUS_2 = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
PROMETHEUS_3 = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;"
    "version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
)

#: Prometheus 3 with native histograms asks for protobuf first, which prometheus-client does not write.
PROTOBUF_FIRST = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.6,"


@pytest.mark.parametrize(
    ("accept", "answered"),
    [
        (PROMETHEUS_2, "text/plain"),
        (PROMETHEUS_3, "text/plain"),
        (PROTOBUF_FIRST + PROMETHEUS_3, "text/plain"),
        # Prometheus with `scrape_protocols: [OpenMetricsText1.0.0]` appends */* too: it asked for OpenMetrics.
        ("application/openmetrics-text;version=1.0.0;q=0.6,*/*;q=0.5", "application/openmetrics-text"),
        ("application/openmetrics-text, text/plain;q=0, */*;q=0.1", "application/openmetrics-text"),
        ("application/openmetrics-text, text/plain;q=0., */*;q=0.1", "application/openmetrics-text"),
        ("application/openmetrics-text;version=1.0.0", "application/openmetrics-text"),
        ("application/openmetrics-text, text/plain;q=0", "application/openmetrics-text"),
        ("application/openmetrics-text, TEXT/PLAIN; Q=0.0", "application/openmetrics-text"),
        ("text/plain", "text/plain"),
        ("", "text/plain"),
    ],
)
def test_scrapers_get_the_text_format_whenever_they_accept_it(accept: str, answered: str) -> None:
    """/metrics answers in the Prometheus text format (cheaper to write) unless the scraper refuses it."""
    headers, body = _server_answer({"HTTP_ACCEPT": accept})
    assert headers["Content-Type"].startswith(answered)
    assert b"vramwatch_gpu_memory_used_bytes" in body


def _server_answer(environ: dict[str, str]) -> tuple[dict[str, str], bytes]:
    """MetricsServer's answer to a GET of /metrics with these request headers (its WSGI app, no socket read)."""
    reg = make_registry(lambda: _state(make_snapshot(1.0, {10: 3 * GIB})))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = MetricsServer(f"127.0.0.1:{port}", reg, healthy=lambda: True)
    try:
        app = server.server.get_app()
        headers: list[list[tuple[str, str]]] = []
        base = {"PATH_INFO": "/metrics", "REQUEST_METHOD": "GET", "QUERY_STRING": ""}
        body = b"".join(app({**base, **environ}, lambda status, h: headers.append(h)))
    finally:
        server.server.server_close()
    return dict(headers[0]), body


def _answer(environ: dict[str, str]) -> tuple[str, dict[str, str], bytes]:
    reg = make_registry(lambda: _state(make_snapshot(1.0, {10: 3 * GIB, 11: 1 * GIB})))
    started: list[tuple[str, list[tuple[str, str]]]] = []
    base = {"PATH_INFO": "/metrics", "REQUEST_METHOD": "GET", "QUERY_STRING": ""}
    body = b"".join(metrics_app(reg)({**base, **environ}, lambda status, h: started.append((status, h))))
    return started[0][0], dict(started[0][1]), body


def test_a_scrape_that_accepts_gzip_gets_the_same_series_gzipped_at_the_daemons_level() -> None:
    """Prometheus's scrape (its Accept, gzip) gets the plain answer's bytes, gzipped at GZIP_LEVEL, marked so."""
    _, plain_headers, plain = _answer({"HTTP_ACCEPT": PROMETHEUS_3})
    status, headers, body = _answer({"HTTP_ACCEPT": PROMETHEUS_3, "HTTP_ACCEPT_ENCODING": "gzip, deflate"})
    assert status.startswith("200")
    assert "Content-Encoding" not in plain_headers
    assert headers["Content-Encoding"] == "gzip"
    assert headers["Content-Type"] == plain_headers["Content-Type"]
    assert headers["Content-Type"].startswith("text/plain")
    assert gzip.decompress(body) == plain
    assert b"vramwatch_process_gpu_memory_bytes" in plain
    # The gzip header's XFL byte says 2 for level 9 (prometheus-client's own), 4 for level 1, 0 between.
    assert GZIP_LEVEL not in (1, 9)
    assert body[8] == 0


def test_requests_other_than_a_get_are_not_compressed() -> None:
    """A POST gets prometheus-client's 405 as it wrote it, uncompressed, even when gzip is accepted."""
    status, headers, body = _answer({"REQUEST_METHOD": "POST", "HTTP_ACCEPT_ENCODING": "gzip"})
    assert status.startswith("405")
    assert "Content-Encoding" not in headers
    assert body.startswith(b"# HTTP 405")


def test_the_server_routes_metrics_through_the_daemons_answer() -> None:
    """MetricsServer's /metrics is `metrics_app`: gzip when asked, the text format for Prometheus."""
    headers, body = _server_answer({"HTTP_ACCEPT": PROMETHEUS_2, "HTTP_ACCEPT_ENCODING": "gzip"})
    assert headers["Content-Encoding"] == "gzip"
    assert headers["Content-Type"].startswith("text/plain")
    assert b"vramwatch_gpu_memory_used_bytes" in gzip.decompress(body)
    assert body[8] == 0  # the XFL byte: not prometheus-client's own level 9 (2), so not the library's gzip


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        ("gzip", True),
        ("gzip, deflate", True),
        ("deflate, GZIP;q=0.5", True),
        ("gzip;q=0", False),
        ("gzip; q=0.0, identity", False),
        ("identity", False),
        ("*", False),
        ("", False),
    ],
)
def test_gzip_is_used_only_when_the_scraper_accepts_it(header: str, accepted: bool) -> None:
    """Accept-Encoding naming gzip (any case, any q but 0) gets gzip; q=0 refuses it, and `*` is not asked."""
    assert accepts_gzip(header) is accepted
    _, headers, body = _answer({"HTTP_ACCEPT": PROMETHEUS_3, "HTTP_ACCEPT_ENCODING": header})
    assert ("Content-Encoding" in headers) is accepted
    assert (gzip.decompress(body) if accepted else body).startswith(b"# HELP")
    assert headers["Vary"] == "Accept, Accept-Encoding"  # a cache on the way must tell the answers apart
