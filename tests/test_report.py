"""`vramwatch report TRACE -o FILE`: a recorded run as one self-contained HTML file (drawn: test_web_browser)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from builders import record_simulated
from click.testing import CliRunner
from vramwatch.cli import main
from vramwatch.detectors import DetectorConfig
from vramwatch.web.report import build_document, render, thin


@pytest.fixture(scope="module")
def leak_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The leak story to its OOM and the restart (700 simulated seconds)."""
    return record_simulated(tmp_path_factory.mktemp("trace") / "leak.jsonl.gz", "leak", 700)


def _embedded(html: str) -> dict[str, Any]:
    m = re.search(r'<script type="application/json" id="vw-data">(.*?)</script>', html, re.DOTALL)
    assert m is not None
    doc: dict[str, Any] = json.loads(m.group(1))
    return doc


def test_report_writes_one_self_contained_file_with_the_findings_and_the_post_mortem(
    leak_trace: Path, tmp_path: Path
) -> None:
    """The file inlines uPlot, the script and the data (nothing fetched), with findings, advice and the OOM."""
    out = tmp_path / "report.html"
    res = CliRunner().invoke(main, ["report", str(leak_trace), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert f"written to {out}" in res.output
    assert "1 process left)" in res.output  # the leak's run, counted in words a person would write
    html = out.read_text()
    assert "<script src=" not in html
    assert '<link rel="stylesheet"' not in html
    assert "uPlot" in html
    doc = _embedded(html)
    assert doc["mode"] == "report"
    assert doc["report"]["source"] == "leak.jsonl.gz"
    assert doc["report"]["ticks"] == 700
    kinds = [f["kind"] for f in doc["findings"]]
    assert {"oom_forecast", "growth", "probable_oom"} <= set(kinds)
    assert all(f["advice"] for f in doc["findings"])
    (left,) = [d for d in doc["postmortem"] if d["finding"] is not None]
    assert left["finding"]["kind"] == "probable_oom"
    assert left["peak_bytes"] > 20 * 1024**3
    assert len(doc["gpus"][0]["series"]["t"]) == 700


def test_default_output_is_the_trace_name_as_html(leak_trace: Path, tmp_path: Path) -> None:
    """Without -o the report lands beside the trace, named after it."""
    trace = tmp_path / "run.jsonl.gz"
    trace.write_bytes(leak_trace.read_bytes())
    res = CliRunner().invoke(main, ["report", str(trace)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run.html").is_file()


@pytest.mark.parametrize("spelling", ["same", "hard link"])
def test_report_never_overwrites_its_own_trace(leak_trace: Path, tmp_path: Path, spelling: str) -> None:
    """`-o` naming the trace itself (or a hard link to it) is one line and exit 2, and the trace is intact."""
    trace = tmp_path / "run.jsonl.gz"
    trace.write_bytes(leak_trace.read_bytes())
    output = trace if spelling == "same" else tmp_path / "link.html"
    if spelling == "hard link":
        output.hardlink_to(trace)
    res = CliRunner().invoke(main, ["report", str(trace), "-o", str(output)])
    assert res.exit_code == 2
    assert "is the trace itself" in res.output
    assert trace.read_bytes() == leak_trace.read_bytes()


def test_a_file_that_is_not_a_trace_is_one_line(tmp_path: Path) -> None:
    """A report of something that is not a trace says so in one line, exit 2, no traceback."""
    bogus = tmp_path / "notes.txt"
    bogus.write_text("hello\n")
    res = CliRunner().invoke(main, ["report", str(bogus), "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 2
    assert "not a vramwatch trace" in res.output
    assert "Traceback" not in res.output


def test_a_hostile_process_name_stays_inert_in_the_file(tmp_path: Path) -> None:
    """A process named like markup cannot close the data's <script> element: the JSON escapes < and >."""
    from vramwatch.trace import dumps

    trace = tmp_path / "evil.jsonl"
    uuid = "GPU-00000000-0000-0000-0000-000000000000"
    header = {"vramwatch_trace": 1, "backend": "nvml", "interval_seconds": 1.0}
    lines = [dumps(header)]
    for t in range(5):
        lines.append(dumps({"t": float(t), "wall": 1.7e9 + t,
                            "gpus": [{"index": 0, "uuid": uuid, "name": "x", "total_bytes": 8 << 30,
                                      "used_bytes": 2 << 30, "free_bytes": 6 << 30}],
                            "processes": [{"gpu": uuid, "pid": 7, "used_bytes": 1 << 30, "start_time": 1.0,
                                           "name": "</script><script>window.pwned=1</script>"}]}))  # fmt: skip
    trace.write_text("\n".join(lines) + "\n")
    html = render(build_document(trace, DetectorConfig()))
    assert "window.pwned" in html
    assert "<script>window.pwned" not in html
    assert _embedded(html)["gpus"][0]["processes"][0]["name"] == "</script><script>window.pwned=1</script>"


def test_a_long_trace_is_thinned_keeping_its_peaks() -> None:
    """Past MAX_POINTS a series keeps one point per bucket, the bucket's maximum: a spike is never thinned away."""
    values: list[float | int | None] = [1.0] * 10_000
    values[5_001] = 9.0
    values[7_000] = None
    doc = {"gpus": [{"series": {"t": list(range(10_000)), "used": values, "total": [2.0] * 10_000,
                                "procs": [{"values": list(values)}], "torch": []}}]}  # fmt: skip
    thin(doc, max_points=1000)
    s = doc["gpus"][0]["series"]
    assert len(s["t"]) == len(s["used"]) == len(s["procs"][0]["values"]) == 1000
    assert max(v for v in s["used"] if v is not None) == 9.0
