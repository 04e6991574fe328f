"""The live page's data: the store's columns, the JSON document, the routes, and `serve` answering them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from typing import Any

import pytest
from builders import GIB, UUID0, make_snapshot
from vramwatch.clock import ScaledClock
from vramwatch.exporter import ExportState
from vramwatch.model import Finding, ProcessKey, ProcessMeta, ProcessSample, Severity, Snapshot
from vramwatch.sampler import TickStats
from vramwatch.testing import FakeClock
from vramwatch.web import document
from vramwatch.web.live import STATIC, LiveView
from vramwatch.web.store import MAX_PROCESS_COLUMNS, OTHER, PageStore


def _now(snap: Snapshot | None, **kw: Any) -> document.Now:
    return document.Now(snapshot=snap, backend={"backend": "simulated", "scenario": "test"}, **kw)


def _procs(doc: dict[str, Any]) -> dict[str, list[Any]]:
    return {p["key"]: p["values"] for p in doc["gpus"][0]["series"]["procs"]}


def test_a_process_absent_at_a_tick_is_a_gap_in_its_column() -> None:
    """Stacking needs every process's value at every tick of its GPU: an absent process is null, never 0."""
    store = PageStore(3600, 1.0)
    store.add(make_snapshot(1.0, {10: GIB, 11: GIB}))
    store.add(make_snapshot(2.0, {10: 2 * GIB}))
    store.add(make_snapshot(3.0, {10: 3 * GIB, 11: GIB}))
    doc = document.build(store, _now(store.latest))
    series = doc["gpus"][0]["series"]
    assert series["t"] == [1.7e9 + 1, 1.7e9 + 2, 1.7e9 + 3]
    procs = _procs(doc)
    assert procs["10@110.00"] == [GIB, 2 * GIB, 3 * GIB]
    assert procs["11@111.00"] == [GIB, None, GIB]
    assert series["total"] == [24 * GIB] * 3


def test_the_columns_keep_one_window_and_drop_a_process_gone_for_that_long() -> None:
    """A ring of window/interval points: the oldest go first, and a process that left a window ago is dropped."""
    store = PageStore(10, 1.0)  # 11 points
    store.add(make_snapshot(0.0, {10: GIB, 11: GIB}))
    for t in range(1, 30):
        store.add(make_snapshot(float(t), {10: GIB}))
    doc = document.build(store, _now(store.latest))
    assert len(doc["gpus"][0]["series"]["t"]) == 11
    assert doc["gpus"][0]["series"]["t"][0] == 1.7e9 + 19
    assert list(_procs(doc)) == ["10@110.00"]


def test_processes_beyond_the_column_limit_share_one_column() -> None:
    """An MPS host's hundreds of clients cost a bounded number of columns: the late ones are summed as 'other'."""
    store = PageStore(60, 1.0)
    n = MAX_PROCESS_COLUMNS + 5
    store.add(make_snapshot(1.0, dict.fromkeys(range(100, 100 + n), GIB // 8)))
    procs = _procs(document.build(store, _now(store.latest)))
    assert len(procs) == MAX_PROCESS_COLUMNS + 1
    assert procs[OTHER] == [5 * (GIB // 8)]


def test_since_sends_only_the_new_points_and_resets_a_page_that_is_lost() -> None:
    """A page that has the points up to N gets those after N; one from another daemon or too far behind gets all."""
    store = PageStore(10, 1.0)
    for t in range(5):
        store.add(make_snapshot(float(t), {10: GIB * (t + 1)}))
    delta = document.build(store, _now(store.latest), since=3)["gpus"][0]["series"]
    assert delta["reset"] is False
    assert delta["t"] == [1.7e9 + 3, 1.7e9 + 4]  # ticks 4 and 5
    assert delta["procs"][0]["values"] == [4 * GIB, 5 * GIB]
    assert document.build(store, _now(store.latest), since=99)["gpus"][0]["series"]["reset"] is True
    for t in range(5, 40):
        store.add(make_snapshot(float(t), {10: GIB}))
    behind = document.build(store, _now(store.latest), since=3)["gpus"][0]["series"]
    assert behind["reset"] is True
    assert len(behind["t"]) == 11


def test_the_document_never_carries_command_lines_or_working_directories() -> None:
    """A trainer's argv (with its token) and cwd stay out of the page, whatever else is shown of the process."""
    secret = "hf_abcdefghijklmnopqrstuvwxyz0123456789"  # noqa: S105 - a fake token, the thing that must not leak
    meta = ProcessMeta(pid=42, start_time=5.0, name="python", user="alice",
                       cmdline=("python", "train.py", "--hf_token", secret, "--train_batch_size", "4"),
                       cwd="/home/alice/secret-project")  # fmt: skip
    snap = replace(make_snapshot(1.0, {}), processes=(ProcessSample(UUID0, 8 * GIB, meta),))
    store = PageStore(60, 1.0)
    store.add(snap)
    finding = Finding("growth", Severity.WARNING, UUID0, "python (pid 42, alice) grows", 1.0, ProcessKey(42, 5.0))
    store.note([finding], [], snap.wall_time)
    text = json.dumps(document.build(store, _now(snap, active=(finding,))))
    assert "python" in text
    assert "alice" in text
    for leak in (secret, "train.py", "--train_batch_size", "secret-project", "cmdline", "cwd"):
        assert leak not in text


def test_an_active_finding_carries_the_advice_it_was_raised_with() -> None:
    """The tracker's active copy has no advice; the page shows the advice given when the finding was raised."""
    store = PageStore(60, 1.0)
    snap = make_snapshot(5.0, {10: 20 * GIB})
    store.add(snap)
    raised = Finding(
        "oom_forecast", Severity.WARNING, UUID0, "full in ~2 min", 5.0, advice=("1. --train_batch_size 1",)
    )
    store.note([raised], [], snap.wall_time)
    active = replace(raised, advice=(), message="full in ~1 min")
    doc = document.build(store, _now(snap, active=(active,)))
    (shown,) = doc["active"]
    assert shown["message"] == "full in ~1 min"
    assert shown["advice"] == ["1. --train_batch_size 1"]
    assert shown["raised_wall"] == snap.wall_time
    assert doc["findings"][0]["cleared_wall"] is None
    store.note([], [active], snap.wall_time + 9)
    assert document.build(store, _now(snap))["findings"][0]["cleared_wall"] == snap.wall_time + 9


def test_the_forecast_line_runs_from_used_to_the_limit_at_the_forecast_time() -> None:
    """The forecast is drawn from the latest used figure to the card's total, clipped to half an hour ahead."""
    snap = make_snapshot(1.0, {10: 20 * GIB})
    store = PageStore(60, 1.0)
    store.add(snap)
    used = snap.gpus[0].used_bytes or 0
    soon = document.build(store, _now(snap, oom_eta={UUID0: 120.0}, gpu_growth={UUID0: 30e6}))["gpus"][0]
    assert soon["forecast"] == {"t": [snap.wall_time, snap.wall_time + 120.0], "bytes": [used, 24 * GIB]}
    assert soon["eta_text"] == "full in ~2 min"
    late = document.build(store, _now(snap, oom_eta={UUID0: 7200.0}, gpu_growth={UUID0: 1e5}))["gpus"][0]
    assert late["forecast"]["t"][1] == snap.wall_time + document.FORECAST_HORIZON_SECONDS
    assert late["forecast"]["bytes"][1] == pytest.approx(used + 1e5 * document.FORECAST_HORIZON_SECONDS)
    assert document.build(store, _now(snap))["gpus"][0]["forecast"] is None


def test_a_process_that_left_is_listed_with_its_peak_and_its_post_mortem() -> None:
    """The post-mortem names who left, its peak and last memory, and the probable-OOM finding about it."""
    store = PageStore(60, 1.0)
    for t, used in ((1.0, 10 * GIB), (2.0, 23 * GIB), (3.0, 22 * GIB)):
        store.add(make_snapshot(t, {10: used, 11: GIB}))
    gone = make_snapshot(4.0, {11: GIB})
    store.add(gone)
    oom = Finding("probable_oom", Severity.CRITICAL, UUID0, "p10 disappeared", 4.0, ProcessKey(10, 110.0),
                  advice=("1. --gradient_checkpointing",))  # fmt: skip
    store.note([oom], [], gone.wall_time)
    (left,) = document.build(store, _now(gone))["postmortem"]
    assert (left["pid"], left["peak_bytes"], left["last_bytes"]) == (10, 23 * GIB, 22 * GIB)
    assert left["wall"] - left["first_wall"] == 3.0
    assert left["finding"]["kind"] == "probable_oom"
    assert left["finding"]["advice"] == ["1. --gradient_checkpointing"]


def test_stability_verdicts_are_named_by_process() -> None:
    """A plateaued run's verdict is listed with its name and user, and next to its row."""
    snap = make_snapshot(1.0, {10: 20 * GIB})
    store = PageStore(60, 1.0)
    store.add(snap)
    verdicts = {(ProcessKey(10, 110.0), UUID0): "stable at 20.3 of 24.0 GiB for 10 min"}
    doc = document.build(store, _now(snap, verdicts=verdicts))
    assert doc["verdicts"] == [
        {"pid": 10, "name": "p10", "user": None, "gpu": 0, "verdict": "stable at 20.3 of 24.0 GiB for 10 min"}
    ]


def test_step_forecasts_are_listed_with_the_verdicts() -> None:
    """An agent's step forecast is listed among the verdicts, by pid and name, on its GPU."""
    from vramwatch.stephistory import StepFigures
    from vramwatch.steps import Outcome

    snap = make_snapshot(1.0, {10: 20 * GIB})
    store = PageStore(60, 1.0)
    store.add(snap)
    figures = StepFigures(10, 0, 1_200, 8 * GIB, None, 0.0, Outcome.FITS, None, None, "fits to step 101,200", UUID0)
    doc = document.build(store, _now(snap, steps={(10, 0): figures}))
    assert doc["verdicts"] == [
        {"pid": 10, "name": "p10", "user": None, "gpu": 0, "verdict": "pid 10 at step 1,200: fits to step 101,200"}
    ]


def _view(snap: Snapshot | None = None) -> LiveView:
    state = ExportState(snapshot=snap, backend={"backend": "simulated"}, stats=TickStats(), up=True)
    return LiveView(3600, 1.0, lambda: state)


def test_the_routes_serve_the_page_its_files_and_the_state() -> None:
    """`/` is the page, /static/ only the listed files (with no CDN allowed by the CSP), /api/state the JSON."""
    snap = make_snapshot(1.0, {10: GIB})
    view = _view(snap)
    view.observe(snap, [], [])
    page = view.respond("/")
    assert page is not None
    assert b"static/uPlot.iife.min.js" in page.body
    assert b'data-mode="live"' in page.body
    for name in STATIC:
        r = view.respond(f"/static/{name}")
        assert r is not None
        assert r.status == "200 OK", name
    missing = view.respond("/static/../app.py")
    assert missing is not None
    assert missing.status.startswith("404")
    api = view.respond("/api/state", "since=junk")
    assert api is not None
    doc = json.loads(api.body)
    assert doc["seq"] == 1
    assert doc["epoch"] == view.epoch
    assert view.respond("/metrics") is None


def test_the_vendored_chart_library_ships_with_its_licence() -> None:
    """uPlot is a file of the package, with its MIT licence beside it (no CDN at run time)."""
    from vramwatch.web.live import static_text

    assert static_text("uPlot.iife.min.js").startswith("/*! https://github.com/leeoniya/uPlot (v1.6.32) */")
    assert "MIT" in static_text("uPlot.LICENSE")


def test_a_scaled_clock_runs_fast_and_sleeps_short() -> None:
    """`--speed 20`: twenty seconds pass on the scaled clocks for each second of the base clock."""
    base = FakeClock()
    clock = ScaledClock(20.0, base)
    m0, w0 = clock.monotonic(), clock.wall()
    base.advance(1.5)
    assert clock.monotonic() - m0 == pytest.approx(30.0)
    assert clock.wall() - w0 == pytest.approx(30.0)
    clock.sleep(20.0)
    assert clock.monotonic() - m0 == pytest.approx(50.0)


def test_speed_is_refused_for_a_real_gpu() -> None:
    """`serve --speed` without --simulate or --replay is one line, exit 2, that says how to name what it speeds up
    (also where no GPU answers and the simulator would stand in)."""
    from click.testing import CliRunner
    from vramwatch.cli import main

    res = CliRunner().invoke(main, ["serve", "--speed", "20"])
    assert res.exit_code == 2
    assert "name it with --simulate NAME or --replay FILE" in res.output
    assert "Traceback" not in res.output


def _get_json(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
        doc: dict[str, Any] = json.loads(r.read())
        return doc


@pytest.mark.slow
def test_serve_prints_the_page_url_and_its_state_fills_with_a_finding() -> None:
    """The quick start's daemon prints the page's URL; its state grows a series and a finding with advice."""
    from test_serve import _free_port

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "vramwatch", "--log-format", "json", "serve", "--simulate", "leak", "--speed", "25",
         "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # the SIMULATED banner
        assert proc.stdout.readline().startswith(f"vramwatch: live page at http://127.0.0.1:{port}/ ")
        deadline = time.monotonic() + 30
        doc: dict[str, Any] = {}
        while time.monotonic() < deadline:
            doc = _get_json(port, "/api/state")
            if doc["active"]:
                break
            time.sleep(0.3)
        assert doc["active"], "a finding within 30 s at 25x (the forecast comes at ~80 simulated seconds)"
        assert doc["active"][0]["advice"]
        series = doc["gpus"][0]["series"]
        assert len(series["t"]) > 50
        assert max(v for v in series["procs"][0]["values"] if v is not None) > 10 * GIB
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_the_page_files_are_package_data() -> None:
    """Every file the page serves or a report inlines is in the package data the wheel ships."""
    import sys
    from pathlib import Path

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        import tomli as tomllib

    root = Path(__file__).resolve().parents[1]
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["vramwatch"]
    assert "web/static/*" in data
    assert "vramwatch.web" in tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    for name in [*STATIC, "page.html"]:
        assert (root / "watchdog" / "web" / "static" / name).is_file(), name
