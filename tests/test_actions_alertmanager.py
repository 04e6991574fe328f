"""Findings as Alertmanager alerts: label/annotation shape, and a real Alertmanager accepting, listing and
resolving them (Debian's prometheus-alertmanager; the slow tests skip where it is not installed)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from conftest import wait_for
from vramwatch.actions.alertmanager import AlertmanagerNotifier
from vramwatch.actions.queue import DeliveryQueue
from vramwatch.model import Finding, ProcessKey, ProcessMeta, Severity

BINARY = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
KEY = ProcessKey(777, 1_700_000_000.0)
META = ProcessMeta(pid=777, start_time=1_700_000_000.0, name="python3", user="bob")


class ShiftedClock:
    """Real wall time (Alertmanager compares endsAt with its own clock); monotonic time moved by hand."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def wall(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        self.offset += seconds


def finding(clock: ShiftedClock, **overrides: object) -> Finding:
    base: dict[str, object] = {
        "kind": "oom_forecast",
        "severity": Severity.CRITICAL,
        "gpu_uuid": "GPU-aaaa",
        "message": "GPU 1 fills in about 2 minutes",
        "t": clock.monotonic() - 5.0,
        "process": KEY,
        "process_name": "python3",
        "eta_seconds": 120.0,
        "numbers": {"gpu_index": 1, "free_bytes": 512 * 2**20},
        "advice": ("Set --gradient_checkpointing",),
    }
    base.update(overrides)
    return Finding(**base)  # type: ignore[arg-type]


def make(url: str, clock: ShiftedClock, **kwargs: object) -> AlertmanagerNotifier:
    return AlertmanagerNotifier(
        url, host="gpu-box-2", lookup=lambda key: META, clock=clock,
        queue=DeliveryQueue("am", backoff_seconds=0.01, max_attempts=3), **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip


def parse(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def test_labels_identify_and_annotations_describe() -> None:
    """Labels hold the stable identity (name, severity, host, GPU, process, user, kind); figures go in
    annotations; endsAt lies four re-send periods ahead."""
    clock = ShiftedClock()
    n = make("http://127.0.0.1:9/", clock, resend_seconds=30, extra_labels={"cluster": "lab"})
    try:
        now = time.time()
        alert = n.alert(finding(clock), starts_at=now - 5, ends_at=now + 120)
        assert alert["labels"] == {
            "cluster": "lab", "alertname": "VramwatchOomForecast", "severity": "critical", "instance": "gpu-box-2",
            "kind": "oom_forecast", "uuid": "GPU-aaaa", "gpu": "1", "pid": "777", "user": "bob", "process": "python3",
        }  # fmt: skip
        notes = alert["annotations"]
        assert isinstance(notes, dict)
        assert notes["summary"] == "GPU 1 fills in about 2 minutes"
        assert notes["advice"] == "Set --gradient_checkpointing"
        assert notes["eta_seconds"] == "120"
        assert "free_bytes=536870912" in notes["description"]
        assert all(isinstance(v, str) for v in [*alert["labels"].values(), *notes.values()])  # type: ignore[union-attr]
        assert "tentative" not in notes
    finally:
        n.close(0.5)


def test_a_tentative_finding_is_the_same_alert_with_its_doubt_annotated() -> None:
    """A tentative finding and its confirmation share the labels (one alert); the doubt is an annotation."""
    clock = ShiftedClock()
    n = make("http://127.0.0.1:9/", clock, resend_seconds=30)
    try:
        firm = finding(clock)
        doubt = dataclasses.replace(firm, tentative="python3 (pid 777, bob): it appeared 17 s ago")
        now = time.time()
        first, confirmed = (n.alert(f, starts_at=now, ends_at=now + 120) for f in (doubt, firm))
        assert first["labels"] == confirmed["labels"]
        assert first["annotations"]["tentative"] == "python3 (pid 777, bob): it appeared 17 s ago"  # type: ignore[index]
        assert "tentative" not in confirmed["annotations"]  # type: ignore[operator]
    finally:
        n.close(0.5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get_alerts(base: str) -> list[dict[str, object]]:
    with urllib.request.urlopen(f"{base}/api/v2/alerts", timeout=5) as response:  # noqa: S310 - test URL
        alerts: list[dict[str, object]] = json.load(response)
        return alerts


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if BINARY is None:
        pytest.skip("prometheus-alertmanager is not installed (apt-get install prometheus-alertmanager)")
    work: Path = tmp_path_factory.mktemp("alertmanager")
    config = work / "alertmanager.yml"
    config.write_text('route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n')
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with (work / "log").open("w") as log_file:
        proc = subprocess.Popen(
            [BINARY, f"--config.file={config}", f"--storage.path={work / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
            stdout=subprocess.DEVNULL, stderr=log_file,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=1):  # noqa: S310 - test URL
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"alertmanager did not start: {(work / 'log').read_text()[-2000:]}")
                time.sleep(0.05)
        yield base
    finally:
        proc.kill()
        proc.wait(10)


def _ours(base: str, name: str = "VramwatchOomForecast") -> list[dict[str, object]]:
    return [a for a in _get_alerts(base) if a["labels"]["alertname"] == name]  # type: ignore[index]


@pytest.mark.slow
def test_a_real_alertmanager_lists_then_resolves_the_alert(alertmanager: str) -> None:
    """POST /api/v2/alerts is accepted; GET lists the alert with our labels; the cleared finding resolves it."""
    clock = ShiftedClock()
    n = make(alertmanager, clock, resend_seconds=60)
    try:
        f = finding(clock)
        n.notify(f)
        assert wait_for(lambda: len(_ours(alertmanager)) == 1)
        (alert,) = _ours(alertmanager)
        assert alert["labels"] == {
            "alertname": "VramwatchOomForecast", "severity": "critical", "instance": "gpu-box-2",
            "kind": "oom_forecast", "uuid": "GPU-aaaa", "gpu": "1", "pid": "777", "user": "bob", "process": "python3",
        }  # fmt: skip
        assert alert["annotations"]["summary"] == "GPU 1 fills in about 2 minutes"  # type: ignore[index]
        assert alert["status"]["state"] == "active"  # type: ignore[index]
        assert parse(str(alert["endsAt"])) - time.time() == pytest.approx(240, abs=5)
        assert parse(str(alert["startsAt"])) == pytest.approx(time.time() - 5, abs=2)

        n.notify(f, cleared=True)
        assert wait_for(lambda: _ours(alertmanager) == [])
        # Alertmanager applies a POST before answering it: the worker counts it a moment after the GET sees it.
        assert wait_for(lambda: dict(n.counts()) == {"sent": 2, "failed": 0, "dropped": 0})
    finally:
        n.close(2.0)


@pytest.mark.slow
def test_active_alerts_are_resent_every_period_with_a_fixed_start(alertmanager: str) -> None:
    """tick() re-posts active alerts once per resend period: Alertmanager's updatedAt moves, startsAt does not."""
    clock = ShiftedClock()
    n = make(alertmanager, clock, resend_seconds=30)
    try:
        f = finding(clock, kind="growth", severity=Severity.WARNING, message="growing")
        n.notify(f)
        assert wait_for(lambda: len(_ours(alertmanager, "VramwatchGrowth")) == 1)
        first = _ours(alertmanager, "VramwatchGrowth")[0]
        n.tick()  # not due yet
        time.sleep(0.05)
        assert n.counts()["sent"] == 1
        clock.sleep(31)
        n.tick()
        assert wait_for(lambda: n.counts()["sent"] == 2)
        again = _ours(alertmanager, "VramwatchGrowth")[0]
        assert again["startsAt"] == first["startsAt"]
        assert parse(str(again["updatedAt"])) > parse(str(first["updatedAt"]))
        n.notify(f, cleared=True)
        assert wait_for(lambda: _ours(alertmanager, "VramwatchGrowth") == [])
        assert n.active_count() == 0
    finally:
        n.close(2.0)


@pytest.mark.slow
def test_a_warning_that_becomes_critical_leaves_one_alert_firing(alertmanager: str) -> None:
    """Escalation (warning, then critical, one subject) ends the warning's alert at once: Alertmanager tells alerts
    apart by their labels, severity among them, so the warning would otherwise fire on until its endsAt. A re-send
    of given findings (`resend_active(findings)`) with other labels ends the one it replaces the same way."""
    clock = ShiftedClock()
    n = make(alertmanager, clock, resend_seconds=60)
    name = "VramwatchFragmentation"
    try:
        warning = finding(clock, kind="fragmentation", severity=Severity.WARNING, message="fragmented")
        n.notify(warning)
        assert wait_for(lambda: [a["labels"]["severity"] for a in _ours(alertmanager, name)] == ["warning"])  # type: ignore[index]
        n.notify(dataclasses.replace(warning, severity=Severity.CRITICAL))
        assert wait_for(lambda: [a["labels"]["severity"] for a in _ours(alertmanager, name)] == ["critical"])  # type: ignore[index]
        assert n.active_count() == 1
        n.resend_active([warning])
        assert wait_for(lambda: [a["labels"]["severity"] for a in _ours(alertmanager, name)] == ["warning"])  # type: ignore[index]
        n.notify(warning, cleared=True)
        assert wait_for(lambda: _ours(alertmanager, name) == [])
    finally:
        n.close(2.0)


def test_an_unreachable_alertmanager_counts_failures() -> None:
    """Connection refused: the notify returns at once and the delivery ends as failed."""
    clock = ShiftedClock()
    n = make(f"http://127.0.0.1:{_free_port()}", clock)
    try:
        t0 = time.perf_counter()
        n.notify(finding(clock))
        assert time.perf_counter() - t0 < 0.05
        assert wait_for(lambda: n.counts()["failed"] == 1)
    finally:
        n.close(1.0)
