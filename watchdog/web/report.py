"""`vramwatch report TRACE -o report.html`: a recorded run as one self-contained HTML file.

The trace is replayed through the same pipeline as `vramwatch replay` (the same detectors, the same
advice), folded into the live page's store, and drawn by the live page's own script: memory per process
over the whole recording, findings where they were raised, the processes that left and the post-mortem
finding about each, the stability verdicts. The file inlines uPlot, the script, the style and the data, so
it opens offline, attached to a bug report, years later. Like the live page it names processes by pid, name
and user only: a trace's (redacted) command lines stay out of the report.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..backends.replay import ReplayBackend
from ..daemon import Pipeline
from ..detectors import DetectorConfig
from ..history import History
from ..model import ProcessKey
from ..testing import FakeClock
from ..typing import described
from . import document
from .live import page_html, static_text
from .store import PageStore

#: Points per series in the file: beyond this a long trace is thinned (each point the max of its bucket, so
#: peaks survive). 4000 points is finer than any screen; a day at 1 Hz would otherwise weigh tens of MB.
MAX_POINTS = 4000
#: Ticks a report reads at most (eleven days at 1 Hz): the columns grow as ticks come, up to this.
MAX_TICKS = 1_000_000


def _script(text: str) -> str:
    # Inline <script> content ends at the first "</script": never let the data or a library close it early.
    return text.replace("</script", "<\\/script")


def _json_for_html(doc: dict[str, Any]) -> str:
    """JSON that is inert inside <script type="application/json">: a process named `</script>` stays text."""
    text = json.dumps(doc, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def thin(doc: dict[str, Any], max_points: int = MAX_POINTS) -> None:
    """Thin every GPU's series to at most `max_points`, in place; each kept point is its bucket's maximum."""
    for g in doc["gpus"]:
        s = g["series"]
        n = len(s["t"])
        if n <= max_points:
            continue
        step = math.ceil(n / max_points)

        def peak(values: list[float | int | None], step: int = step) -> list[float | int | None]:
            out: list[float | int | None] = []
            for i in range(0, len(values), step):
                known = [v for v in values[i : i + step] if v is not None]
                out.append(max(known) if known else None)
            return out

        s["t"] = s["t"][::step]
        s["used"], s["total"] = peak(s["used"]), peak(s["total"])
        for p in s["procs"]:
            p["values"] = peak(p["values"])
        for a in s["torch"]:
            a["allocated"], a["reserved"] = peak(a["allocated"]), peak(a["reserved"])


def build_document(
    trace: Path,
    detector_config: DetectorConfig,
    *,
    history_seconds: float = 3600.0,
    on_error: Callable[[int, str], None] | None = None,
) -> dict[str, Any]:
    """Replay `trace` and return the page's document for the whole recording."""
    backend = ReplayBackend(trace, on_error=on_error)
    interval = backend.interval_seconds or 1.0
    store = PageStore(MAX_TICKS * interval, interval)
    # Recorded ticks carry their own time: the clock is never read, a still FakeClock documents that.
    pipeline = Pipeline(backend, History(window_seconds=history_seconds, interval_seconds=interval), FakeClock(),
                        detector_config)  # fmt: skip
    # Each tree's newest verdict, as the mapping of the tick that gave it: its sentence is written once, at the end.
    newest: dict[tuple[ProcessKey, str], Mapping[tuple[ProcessKey, str], str]] = {}
    first_wall = None
    try:
        while True:
            try:
                snap, raised, cleared = pipeline.step()
            except EOFError:
                break
            if snap is None:
                continue
            first_wall = snap.wall_time if first_wall is None else first_wall
            store.add(snap)
            store.note(raised, cleared, snap.wall_time)
            if pipeline.analysis is not None:
                said = pipeline.analysis.verdicts  # a verdict outlives its run: the report keeps it
                newest.update(dict.fromkeys(said, said))
    finally:
        backend.close()
    a = pipeline.analysis
    last = store.latest
    now = document.Now(
        snapshot=last,
        backend=described(backend),
        active=tuple(pipeline.tracker.active()),
        verdicts={key: said[key] for key, said in newest.items()},
        gpu_growth={k: r.bytes_per_second for k, r in a.gpu_growth.items()} if a else {},
        process_growth={k: r.bytes_per_second for k, r in a.process_growth.items()} if a else {},
        oom_eta={k: v[0] for k, v in a.oom_eta.items()} if a else {},
    )
    header = backend.header
    extra = {
        "report": {
            "source": trace.name,  # the name only: a full path may name the user who recorded it
            "host": header.get("host"),
            "recorded_with": header.get("version"),
            "created": header.get("created"),
            "started": first_wall,
            "duration_seconds": (last.wall_time - first_wall) if last is not None and first_wall is not None else None,
            "ticks": store.seq,
            "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    }
    doc = document.build(store, now, mode="report", findings_limit=None, extra=extra)
    doc["backend"]["source"] = trace.name
    thin(doc)
    return doc


def render(doc: dict[str, Any]) -> str:
    """The self-contained HTML file: the page's template with uPlot, the script, the style and the data inline."""
    css = static_text("uPlot.min.css") + "\n" + static_text("vramwatch.css")
    title = f"vramwatch report: {doc.get('report', {}).get('source', 'trace')}"
    html = page_html(
        head=f"<style>\n{css}\n</style>",
        body_attrs='data-mode="report"',
        scripts=(
            f'<script type="application/json" id="vw-data">{_json_for_html(doc)}</script>\n'
            f"<script>\n{_script(static_text('uPlot.iife.min.js'))}\n</script>\n"
            f"<script>\n{_script(static_text('vramwatch.js'))}\n</script>"
        ),
    )
    return html.replace("<title>vramwatch</title>", f"<title>{_escape(title)}</title>", 1)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def write_report(
    trace: Path,
    out: Path,
    detector_config: DetectorConfig,
    *,
    history_seconds: float = 3600.0,
    on_error: Callable[[int, str], None] | None = None,
) -> dict[str, Any]:
    """Write the report of `trace` to `out`; returns its document (for the command's closing line)."""
    doc = build_document(trace, detector_config, history_seconds=history_seconds, on_error=on_error)
    out.write_text(render(doc), encoding="utf-8")
    return doc
