"""The live page and the report in a real browser: Debian's chromium, driven by Selenium through chromedriver.

Skipped, with the reason, where chromium or chromedriver is missing (`apt-get install chromium
chromium-driver`); under CI (CI=true, where .ci/run installs them) a missing browser is a failure instead,
so the browser tests can never be skipped silently there. The live page's screenshot is saved to
$VRAMWATCH_SCREENSHOT_DIR when it is set (that is how docs/img/live-page.png is made).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from builders import record_simulated

pytestmark = [pytest.mark.slow, pytest.mark.browser]

GIB = 1024**3
#: Fast enough that the leak story's forecast (~80 simulated s) and growth (~320 s) come within seconds.
SPEED = "40"


def _browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", chromium), ("chromium-driver", driver)) if path is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    if missing:
        reason = f"browser tests need {', '.join(missing)}: apt-get install chromium chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI installs them in .ci/run: they must run there)")
        pytest.skip(reason)
    assert chromium is not None
    assert driver is not None
    return chromium, driver


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless chromium for the module (starting one costs about a second)."""
    chromium, driver_path = _browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1500", "--hide-scrollbars", "--force-device-scale-factor=1"):  # fmt: skip
        opts.add_argument(arg)
    # The Debian driver that matches the Debian browser: Selenium Manager is never asked to download one.
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Serve:
    """`vramwatch serve --simulate leak --speed N` as a process, on a given port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vramwatch", "--log-format", "json", "serve", "--simulate", "leak",
             "--speed", SPEED, "--listen", f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise AssertionError("serve did not come up")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def server() -> Iterator[_Serve]:
    s = _Serve(_free_port())
    try:
        yield s
    finally:
        s.stop()


def _until(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


#: The first GPU's chart: how many x points, the largest stacked value, and how many plot pixels are painted.
_CHART = """
const entry = Object.values(window.vramwatch.charts)[0];
if (!entry) return null;
const u = entry.plot, ctx = u.ctx, b = u.bbox;
const px = ctx.getImageData(b.left, b.top, b.width, b.height).data;
let painted = 0;
for (let i = 3; i < px.length; i += 4 * 16) if (px[i] > 0) painted++;
const stacked = u.data.slice(1, u.data.length - 3).flat().filter((v) => v !== null);
return {points: u.data[0].length, max: Math.max(0, ...stacked), painted: painted, samples: px.length / 64,
        series: u.series.map((s) => s.label)};
"""


def _chart(browser: Any) -> dict[str, Any] | None:
    result: dict[str, Any] | None = browser.execute_script(_CHART)
    return result


def _findings(browser: Any, section: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = browser.execute_script(
        """return Array.from(document.querySelectorAll(arguments[0] + ' .finding')).map((f) => ({
             kind: f.dataset.kind, text: f.querySelector('.msg').textContent,
             advice: Array.from(f.querySelectorAll('.advice li')).map((li) => li.textContent)}));""",
        section,
    )
    return found


def test_the_live_page_draws_the_simulated_leak_and_its_findings_with_advice(
    browser: Any, server: _Serve, tmp_path: Path
) -> None:
    """A running `serve --simulate leak`: the chart draws real series, and the findings appear with their advice."""
    browser.get(f"http://127.0.0.1:{server.port}/")
    chart = _until("the chart to fill", lambda: (c := _chart(browser)) and c["points"] > 100 and c)
    assert chart["max"] > 10 * GIB, "the trainer's memory is drawn, stacked, in bytes"
    assert chart["painted"] > chart["samples"] // 10, "the canvas is painted, not just fed"
    assert any(label.startswith("python (pid ") for label in chart["series"])
    assert {"used (card)", "limit", "forecast"} <= set(chart["series"])
    active = _until("a growth finding", lambda: [f for f in _findings(browser, "#active") if f["kind"] == "growth"])
    assert active[0]["advice"], "a finding on the page carries its advice"
    kinds = {f["kind"] for f in _findings(browser, "#active")}
    assert "oom_forecast" in kinds
    assert browser.find_element("id", "conn").text == "live"
    assert "SIMULATED GPU" in browser.find_element("id", "simulated").text
    assert browser.find_element("css selector", "article.gpu h2").text.startswith("GPU 0 · ")  # once, not "GPU GPU 0"
    assert "full in" in browser.find_element("css selector", "article.gpu .summary").text
    assert browser.execute_script("return document.body.innerText").count("--train_batch_size") == 0
    browser.save_screenshot(str(tmp_path / "live-page.png"))
    out = os.environ.get("VRAMWATCH_SCREENSHOT_DIR")
    if out:
        browser.save_screenshot(str(Path(out) / "live-page.png"))


def test_the_page_survives_the_daemon_restarting(browser: Any, server: _Serve) -> None:
    """Daemon gone: the page says it is reconnecting and keeps its picture; back on the same port: it draws again."""
    browser.get(f"http://127.0.0.1:{server.port}/")
    _until("the chart", lambda: (c := _chart(browser)) and c["points"] > 20)
    epoch = browser.execute_script("return window.vramwatch.state.epoch")
    server.stop()
    _until("'reconnecting'", lambda: browser.find_element("id", "conn").text.startswith("reconnecting"))
    assert (_chart(browser) or {}).get("points", 0) > 20, "the last picture stays while the daemon is away"
    again = _Serve(server.port)
    try:
        _until("'live' again", lambda: browser.find_element("id", "conn").text == "live")
        assert browser.execute_script("return window.vramwatch.state.epoch") != epoch
        _until("the new daemon's points", lambda: (c := _chart(browser)) and c["points"] > 20 and c["max"] > GIB)
    finally:
        again.stop()


def test_the_report_draws_the_recording_and_lists_its_findings_and_post_mortem(browser: Any, tmp_path: Path) -> None:
    """`vramwatch report`: the file opens offline, draws every tick and lists the findings and the probable OOM."""
    trace = record_simulated(tmp_path / "leak.jsonl.gz", "leak", 700)
    html = tmp_path / "report.html"
    subprocess.run([sys.executable, "-m", "vramwatch", "report", str(trace), "-o", str(html)], check=True,
                   capture_output=True)  # fmt: skip
    browser.get(html.as_uri())
    chart = _until("the report's chart", lambda: _chart(browser))
    assert chart["points"] == 700
    assert chart["max"] > 20 * GIB
    assert chart["painted"] > chart["samples"] // 10
    findings = _findings(browser, "#findings")
    assert {"oom_forecast", "growth", "probable_oom"} <= {f["kind"] for f in findings}
    assert all(f["advice"] for f in findings)
    left = browser.find_element("css selector", "#postmortem .left.oom").text
    assert "probably ran out of memory" in left
    assert "leak.jsonl.gz" in browser.find_element("id", "source").text
    # A report replays its trace, and says so where the trace was of a simulated card.
    assert "SIMULATED GPU: scenario 'leak'" in browser.find_element("id", "simulated").text


def test_a_hostile_process_name_is_shown_as_text(browser: Any, tmp_path: Path) -> None:
    """A process named like markup is printed as its name in the report; its script never runs."""
    from vramwatch.trace import dumps

    uuid = "GPU-00000000-0000-0000-0000-000000000000"
    name = '<img src=x onerror="window.pwned=1"></script><script>window.pwned=2</script>'
    lines = [dumps({"vramwatch_trace": 1, "backend": "nvml", "interval_seconds": 1.0})]
    for t in range(5):
        lines.append(dumps({"t": float(t), "wall": 1.7e9 + t,
                            "gpus": [{"index": 0, "uuid": uuid, "name": "x", "total_bytes": 8 * GIB,
                                      "used_bytes": 2 * GIB, "free_bytes": 6 * GIB}],
                            "processes": [{"gpu": uuid, "pid": 7, "used_bytes": GIB, "start_time": 1.0,
                                           "name": name}]}))  # fmt: skip
    trace = tmp_path / "evil.jsonl"
    trace.write_text("\n".join(lines) + "\n")
    html = tmp_path / "evil.html"
    subprocess.run([sys.executable, "-m", "vramwatch", "report", str(trace), "-o", str(html)], check=True,
                   capture_output=True)  # fmt: skip
    browser.get(html.as_uri())
    _until("the report's chart", lambda: _chart(browser))
    assert browser.execute_script("return window.pwned === undefined")
    assert name in browser.find_element("css selector", "table.procs").text
