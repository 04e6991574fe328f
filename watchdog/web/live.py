"""The live page at `/`: the daemon's own HTTP server serves it beside /metrics, from files in the package.

    /                    the page (HTML), which loads the two files below and polls /api/state every second
    /static/<file>       uPlot (vendored, MIT) and the page's own script and style
    /api/state?since=N   the JSON document of `document.build`: the latest tick, and the points after N

`LiveView.observe` runs on the daemon's tick thread, requests on the server's threads: one lock keeps the
store consistent between them, held for a few microseconds per tick and for one document's build per request.
The page is bound where /metrics is (127.0.0.1 by default) and carries no command lines (see document.py).
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from ..exporter import ExportState
from ..model import Finding, Snapshot
from . import document
from .store import PageStore

StartResponse = Callable[..., Any]

#: What /static/ serves, with its content type; anything else is a 404 (no path is ever joined from a request).
STATIC = {
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "vramwatch.js": "text/javascript; charset=utf-8",
    "vramwatch.css": "text/css; charset=utf-8",
    "uPlot.LICENSE": "text/plain; charset=utf-8",
}
#: The page loads nothing from elsewhere: no CDN, no inline script (the data comes from /api/state).
_SECURITY = [
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
]


def static_text(name: str) -> str:
    """A file of the page, from the installed package (wheel or source tree alike)."""
    return resources.files("vramwatch.web").joinpath("static").joinpath(name).read_text(encoding="utf-8")


def page_html(*, head: str, body_attrs: str = "", scripts: str) -> str:
    """The page's one template with the style, the attributes of <body> and the scripts filled in."""
    return (
        static_text("page.html")
        .replace("<!--HEAD-->", head)
        .replace("<!--BODY-ATTRS-->", body_attrs)
        .replace("<!--SCRIPTS-->", scripts)
    )


def state_from_export(st: ExportState) -> document.Now:
    """The daemon's published state as the document's `Now`."""
    return document.Now(
        snapshot=st.snapshot,
        backend=st.backend,
        up=st.up,
        active=st.active,
        verdicts=st.verdicts,
        gpu_growth=st.gpu_growth,
        process_growth=st.process_growth,
        oom_eta=st.oom_eta,
        steps=st.steps,
    )


@dataclass(frozen=True, slots=True)
class Response:
    """One HTTP answer of the page."""

    status: str
    content_type: str
    body: bytes
    cache: str = "no-store"


class LiveView:
    """The store fed by the daemon's ticks, and the WSGI routes of the page."""

    def __init__(self, window_seconds: float, interval_seconds: float, current: Callable[[], ExportState]) -> None:
        self.store = PageStore(window_seconds, interval_seconds)
        self._current = current
        self._lock = threading.Lock()
        # A page that sees another epoch knows the daemon restarted: it drops its points and fetches all.
        self.epoch = secrets.token_hex(8)
        self._page = page_html(
            head="\n".join(
                f'<link rel="stylesheet" href="static/{css}">' for css in ("uPlot.min.css", "vramwatch.css")
            ),
            body_attrs='data-mode="live"',
            scripts='<script src="static/uPlot.iife.min.js"></script><script src="static/vramwatch.js"></script>',
        ).encode()

    def observe(self, snap: Snapshot, raised: list[Finding], cleared: list[Finding]) -> None:
        """The daemon's tick thread: one more point, and the findings raised (with advice) and cleared."""
        with self._lock:
            self.store.add(snap)
            self.store.note(raised, cleared, snap.wall_time)

    def document(self, since: int = 0) -> dict[str, Any]:
        with self._lock:
            return document.build(self.store, state_from_export(self._current()), epoch=self.epoch, since=since)

    def respond(self, path: str, query: str = "") -> Response | None:
        """The answer for `path`, or None when it is not the page's (the caller serves /metrics then)."""
        if path in ("/", "/index.html"):
            return Response("200 OK", "text/html; charset=utf-8", self._page)
        if path == "/api/state":
            try:
                since = int(parse_qs(query).get("since", ["0"])[0])
            except ValueError:
                since = 0
            body = json.dumps(self.document(since), allow_nan=False).encode()
            return Response("200 OK", "application/json", body)
        if path.startswith("/static/"):
            name = path.removeprefix("/static/")
            if name not in STATIC:
                return Response("404 Not Found", "text/plain; charset=utf-8", b"not found\n")
            return Response("200 OK", STATIC[name], static_text(name).encode(), cache="max-age=300")
        return None

    def wsgi(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes] | None:
        """Serve the page's routes; None for any other path."""
        r = self.respond(str(environ.get("PATH_INFO", "")), str(environ.get("QUERY_STRING", "")))
        if r is None:
            return None
        start_response(r.status, [("Content-Type", r.content_type), ("Cache-Control", r.cache), *_SECURITY])
        return [r.body]
