"""The pictures: the live page the daemon serves at `/`, and `vramwatch report`'s self-contained HTML file.

Both draw one JSON document (`document.build`) with one script (`static/vramwatch.js`) and the vendored
uPlot, so a recorded trace looks exactly like the live page did. Reading order: `store` (what is kept),
`document` (what the page is sent), `live` (the routes), `report` (a trace as one file).
"""

from __future__ import annotations

from .live import LiveView

__all__ = ["LiveView"]
