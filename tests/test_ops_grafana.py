"""The Grafana dashboard: well-formed, names from the metric contract, and every query answered for real.

The live test starts Debian's `prometheus` (apt package `prometheus`) on a free loopback port, scraping every
second two real daemons: `vramwatch serve --simulate leak --interval 0.2`, and `vramwatch serve --replay` of a
trace of the same leak scenario that starts 40 s into the story, carries PyTorch agent figures (the simulator has
none) and is replayed ten times faster than recorded (header `interval_seconds` 0.05 s, ticks 0.5 s apart), so
the OOM forecast and the findings, which need a minute of leaking, appear within seconds. It then evaluates every
query of the dashboard (panel targets, the annotation, the variable queries) through Prometheus's HTTP API with
the template variables substituted, and requires each to return data. It skips, saying why, where the
`prometheus` binary or `vramwatch serve` is missing. Grafana itself is not available here (not in Debian, PyPI
or npm), so nothing renders the panels; the JSON is checked structurally instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import terminate

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "grafana" / "vramwatch-dashboard.json"
PROMETHEUS = shutil.which("prometheus")
# What Grafana would put in for a 1 s scrape interval: $__rate_interval = max(4 x scrape, $__interval + scrape).
VARIABLES = {"$__rate_interval": "5s", "$__interval": "1s", "$__range": "1m"}
LIVE_DEADLINE_S = 50.0


def load_dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dash["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every Prometheus annotation."""
    found = [(f"panel {p['title']!r} {t['refId']}", t["expr"]) for p in panels(dash) for t in p.get("targets", [])]
    found += [(f"annotation {a['name']!r}", a["expr"]) for a in dash["annotations"]["list"] if "expr" in a]
    return found


def variable_queries(dash: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(variable, metric selector, label) of every `label_values(selector, label)` variable."""
    found = []
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        assert var["query"] == var["definition"], var["name"]
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["query"])
        assert m is not None, var["query"]
        found.append((var["name"], m.group(1), m.group(2)))
    return found


def substitute(expr: str, instance: str, gpu: str) -> str:
    for name, value in VARIABLES.items():  # longest names first: $__rate_interval before $__interval
        expr = expr.replace(name, value)
    return expr.replace("$instance", instance).replace("$gpu", gpu)


def documented_series() -> set[str]:
    names: set[str] = set()
    for name, kind in re.findall(
        r"^\| `(vramwatch_\w+)` \| ([a-z]+)", (REPO / "docs" / "metrics.md").read_text(), flags=re.MULTILINE
    ):
        names.add(name)
        if kind == "histogram":
            names.update({name + "_bucket", name + "_sum", name + "_count"})
    return names


def metric_names(text: str) -> set[str]:
    return set(re.findall(r"(?<![:\w])vramwatch_\w+", text))


# --- the JSON itself -------------------------------------------------------------------------------------------


def test_dashboard_structure() -> None:
    """Recent schema, stable uid, the three variables, datasource by variable everywhere, unique ids and refIds."""
    dash = load_dashboard()
    assert dash["schemaVersion"] >= 39
    assert dash["uid"] == "vramwatch"
    assert [v["name"] for v in dash["templating"]["list"]] == ["datasource", "instance", "gpu"]
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids))
    for panel in panels(dash):
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel.get("description"), panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"]), panel["title"]


@pytest.mark.parametrize(
    ("suffix", "unit"),
    [("_bytes_per_second", "Bps"), ("_seconds", "s"), ("_ratio", "percentunit"), ("_bytes", "bytes")],
)
def test_units_follow_metric_suffix(suffix: str, unit: str) -> None:
    """A panel plotting plain `*_bytes` (etc.) series uses the matching Grafana unit, so values read as GiB, B/s, s."""
    checked = 0
    for panel in panels(load_dashboard()):
        if panel["type"] not in {"timeseries", "stat"}:
            continue
        exprs = [t["expr"] for t in panel["targets"]]
        names = set().union(*(metric_names(e) for e in exprs))
        if "/" in " ".join(exprs) or "histogram_quantile" in " ".join(exprs) or "increase(" in " ".join(exprs):
            continue  # ratios, quantiles and counts are not in the series' own unit
        if names and all(n.endswith(suffix) for n in names):
            assert panel["fieldConfig"]["defaults"]["unit"] == unit, panel["title"]
            checked += 1
    assert checked > 0


def test_fragmentation_panel_is_a_ratio() -> None:
    """Fragmentation divides inactive split bytes by reserved bytes and shows a percentage."""
    panel = next(p for p in panels(load_dashboard()) if p["title"] == "Fragmentation")
    assert "vramwatch_torch_inactive_split_bytes" in panel["targets"][0]["expr"].split("/")[0]
    assert "vramwatch_torch_reserved_bytes" in panel["targets"][0]["expr"].split("/")[1]
    assert panel["fieldConfig"]["defaults"]["unit"] == "percentunit"


def test_dashboard_uses_only_documented_metrics() -> None:
    """Every vramwatch_* name in the dashboard is in docs/metrics.md's table."""
    used = metric_names(DASHBOARD.read_text())
    assert used
    assert used <= documented_series(), used - documented_series()


def test_dashboard_covers_the_contract() -> None:
    """The dashboard shows every documented series except build/type details it has no panel for."""
    used = metric_names(DASHBOARD.read_text())
    base = {n for n in documented_series() if not n.endswith(("_sum", "_count", "_bucket"))}
    assert base - {"vramwatch_sampler_tick_seconds"} <= used | {"vramwatch_sampler_tick_seconds"}, base - used


def test_provisioning_files() -> None:
    """The datasource and dashboard provisioning parse, and the datasource's timeInterval equals the scrape interval."""
    ds = yaml.safe_load((REPO / "grafana/provisioning/datasources/vramwatch.yaml").read_text())
    assert ds["apiVersion"] == 1
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus"
    scrape = yaml.safe_load((REPO / "prometheus/prometheus.yml").read_text())
    job = next(j for j in scrape["scrape_configs"] if j["job_name"] == "vramwatch")
    assert source["jsonData"]["timeInterval"] == job["scrape_interval"]
    dashboards = yaml.safe_load((REPO / "grafana/provisioning/dashboards/vramwatch.yaml").read_text())
    (provider,) = dashboards["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")


def _findings_series(instance: str = "a") -> list[dict[str, str]]:
    """A counter story at 30 s steps: a kind first seen at 150 s, one raised at 120 and 210 s, a constant, a reset."""
    values = {
        "growth": "_ _ _ _ _ 1 1 1 1 1 1 1",
        "leak": "0 0 0 0 1 1 1 2 2 2 2 2",
        "stable": "3 3 3 3 3 3 3 3 3 3 3 3",
        "reset": "5 5 5 5 5 1 1 1 1 1 1 1",
    }
    return [
        {"series": f'vramwatch_findings_total{{instance="{instance}",kind="{kind}",severity="warning"}}', "values": v}
        for kind, v in values.items()
    ]


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (Debian: apt-get install prometheus)"
)
def test_findings_annotation_marks_each_new_finding(tmp_path: Path) -> None:
    """The annotation fires where a finding was raised, including a kind's first one (a series born at 1), never on
    a constant counter or a daemon restart; checked with promtool on a synthetic counter story."""
    annotation = next(a for a in load_dashboard()["annotations"]["list"] if a.get("expr"))
    panel = next(p for p in panels(load_dashboard()) if p["title"] == "Findings raised")
    ann = substitute(annotation["expr"], ".*", ".*")
    bars = substitute(panel["targets"][0]["expr"], ".*", ".*").replace("offset 1s", "offset 1m")

    def sample(kind: str, value: int, *, instance: bool) -> dict[str, Any]:
        labels = f'instance="a",kind="{kind}",severity="warning"' if instance else f'kind="{kind}",severity="warning"'
        return {"labels": "{" + labels + "}", "value": value}

    cases = [
        (ann, "150s", [sample("growth", 1, instance=True), sample("leak", 1, instance=True)]),
        (ann, "240s", [sample("leak", 1, instance=True)]),
        (ann, "330s", []),
        (
            bars,
            "240s",
            [sample(k, 1 if k == "leak" else 0, instance=False) for k in ("growth", "leak", "reset", "stable")],
        ),
    ]
    spec = {
        "rule_files": [],
        "evaluation_interval": "30s",
        "tests": [
            {
                "interval": "30s",
                "input_series": _findings_series(),
                "promql_expr_test": [
                    {"expr": expr, "eval_time": at, "exp_samples": expected} for expr, at, expected in cases
                ],
            }
        ],
    }
    (tmp_path / "annotation.test.yml").write_text(yaml.safe_dump(spec))
    result = subprocess.run(
        ["promtool", "test", "rules", str(tmp_path / "annotation.test.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- against a real Prometheus ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback test servers
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def wait_for_url(url: str, deadline: float, what: str, proc: subprocess.Popen[bytes], log: Path) -> str:
    while time.monotonic() < deadline:
        status, body = http_get(url, timeout=1.0)
        if status == 200:
            return body
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    pytest.fail(f"{what} did not answer {url} in time: {log.read_text()[-2000:]}")


@dataclass
class Stack:
    prometheus: str
    exporters: tuple[str, ...]
    instance_regex: str


def write_leak_trace(path: Path, *, start_s: float = 40.0, end_s: float = 400.0, step_s: float = 0.5) -> None:
    """A trace (docs/trace-format.md) of the simulated leak from `start_s`, with PyTorch figures for GPU 0's jobs.

    `interval_seconds` in the header (the replay pace) is a tenth of the tick spacing `t`: the daemon's detectors
    see the recorded times, so rates and forecasts are those of the story, told ten times faster.
    """
    from vramwatch.backends.simulated import SimulatedBackend
    from vramwatch.testing import FakeClock

    clock = FakeClock()
    backend = SimulatedBackend("leak", seed=0, clock=clock)
    inspector = backend.inspector()
    clock.advance(start_s)
    first = backend.read()
    header = {
        "vramwatch_trace": 1,
        "backend": "simulated",
        "interval_seconds": step_s / 10,
        "gpus": [{"index": g.index, "uuid": g.uuid, "name": g.name, "total_bytes": g.total_bytes} for g in first.gpus],
    }
    lines = [json.dumps(header)]
    for n in range(int((end_s - start_s) / step_s)):
        reading = backend.read()
        gpus = [
            {
                "index": g.index,
                "uuid": g.uuid,
                "name": g.name,
                "total_bytes": g.total_bytes,
                "used_bytes": g.used_bytes,
                "free_bytes": g.free_bytes,
            }
            for g in reading.gpus
        ]
        processes, torch = [], []
        for p in reading.processes:
            meta = inspector.inspect(p.pid)
            processes.append(
                {"gpu": p.gpu_uuid, "pid": p.pid, "used_bytes": p.used_bytes}
                | {"start_time": meta.start_time, "name": meta.name, "user": meta.user}
            )
            if p.gpu_uuid == reading.gpus[0].uuid and p.used_bytes:
                reserved = p.used_bytes - 500 * (1 << 20)  # less the CUDA context
                torch.append(
                    {"pid": p.pid, "device": 0, "allocated_bytes": reserved * 7 // 10, "reserved_bytes": reserved}
                    | {"inactive_split_bytes": reserved // 5, "num_alloc_retries": n // 20, "num_ooms": n // 200}
                )
        lines.append(
            json.dumps(
                {"t": 5000.0 + n * step_s, "wall": 1.7e9 + n * step_s}
                | {"gpus": gpus}
                | {"processes": processes, "torch": torch}
            )
        )
        clock.advance(step_s)
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if PROMETHEUS is None:
        pytest.skip("prometheus not installed (Debian: apt-get install prometheus)")
    probe = subprocess.run(
        [sys.executable, "-m", "vramwatch", "serve", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    if probe.returncode != 0 or "--simulate" not in probe.stdout:
        pytest.skip(f"`vramwatch serve` not available: {(probe.stderr or probe.stdout).strip()[-300:]}")
    tmp = tmp_path_factory.mktemp("grafana-live")
    write_leak_trace(tmp / "leak.jsonl")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VRAMWATCH_", "NOTIFY_SOCKET", "WATCHDOG_"))}
    sources = {
        "serve --simulate leak": ["--simulate", "leak", "--interval", "0.2"],
        "serve --replay": ["--replay", str(tmp / "leak.jsonl")],
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ports = []
        for i, (what, args) in enumerate(sources.items()):
            port = free_port()
            log = tmp / f"vramwatch-{i}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "vramwatch", "serve", *args, "--listen", f"127.0.0.1:{port}"],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=tmp,
                )
            procs.append(proc)
            wait_for_url(f"http://127.0.0.1:{port}/metrics", time.monotonic() + 20, what, proc, log)
            ports.append(port)
        prom_port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "scrape_configs": [
                {"job_name": "vramwatch", "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in ports]}]}
            ],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        prom_log = tmp / "prometheus.log"
        with prom_log.open("wb") as out:
            prometheus = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={tmp / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp / 'data'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tmp,
            )
        procs.append(prometheus)
        prom_url = f"http://127.0.0.1:{prom_port}"
        wait_for_url(prom_url + "/-/ready", time.monotonic() + 20, "prometheus", prometheus, prom_log)
        yield Stack(
            prometheus=prom_url,
            exporters=tuple(f"http://127.0.0.1:{p}" for p in ports),
            instance_regex="127.0.0.1:(" + "|".join(str(p) for p in ports) + ")",
        )
    finally:
        for proc in reversed(procs):
            terminate(proc)


def instant_query(stack: Stack, expr: str) -> list[Any]:
    url = f"{stack.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    status, body = http_get(url)
    assert status == 200, f"{expr}: HTTP {status} {body}"
    payload = json.loads(body)
    assert payload["status"] == "success", payload
    result: list[Any] = payload["data"]["result"]
    return result


#: Series only an agent counting optimizer steps produces: a replayed trace does not record step datagrams.
AGENT_STEP_SERIES = frozenset(
    {
        "vramwatch_process_optimizer_steps_total",
        "vramwatch_process_step_peak_bytes",
        "vramwatch_process_step_growth_bytes",
        "vramwatch_process_forecast_fail_step",
    }
)


@pytest.mark.slow
def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    """Each panel and annotation query, variables substituted, returns a non-empty result from real data."""
    pending = {
        where: substitute(expr, stack.instance_regex, gpu="0")
        for where, expr in queries(load_dashboard())
        if not metric_names(expr) & AGENT_STEP_SERIES
    }
    deadline = time.monotonic() + LIVE_DEADLINE_S
    while pending and time.monotonic() < deadline:
        for where, expr in list(pending.items()):
            if instant_query(stack, expr):
                del pending[where]
        if pending:
            time.sleep(1.0)
    assert not pending, "queries without data:\n" + "\n".join(f"{w}: {e}" for w, e in pending.items())


@pytest.mark.slow
def test_variable_queries_list_hosts_and_gpus(stack: Stack) -> None:
    """The instance and gpu variables list the scraped hosts and the simulated GPUs."""
    found: dict[str, set[str]] = {}
    deadline = time.monotonic() + 20
    for name, selector, label in variable_queries(load_dashboard()):
        match = substitute(selector, stack.instance_regex, gpu=".*")
        url = f"{stack.prometheus}/api/v1/label/{label}/values?" + urllib.parse.urlencode({"match[]": match})
        while time.monotonic() < deadline:
            status, body = http_get(url)
            assert status == 200, body
            found[name] = set(json.loads(body)["data"])
            if found[name]:
                break
            time.sleep(0.5)
    assert len(found["instance"]) == 2
    assert {"0", "1"} <= found["gpu"]


@pytest.mark.slow
def test_dashboard_metrics_exist_in_exporter_output(stack: Stack) -> None:
    """Every vramwatch_* name the dashboard reads is exposed by the running daemons' /metrics."""
    used = metric_names(DASHBOARD.read_text()) - AGENT_STEP_SERIES
    exposed: set[str] = set()
    deadline = time.monotonic() + LIVE_DEADLINE_S  # growth, ETA and findings appear once the leak shows
    while time.monotonic() < deadline:
        exposed = set()
        for url in stack.exporters:
            status, body = http_get(url + "/metrics")
            assert status == 200
            exposed |= metric_names(body)
        if used <= exposed:
            break
        time.sleep(1.0)
    assert used <= exposed, used - exposed
