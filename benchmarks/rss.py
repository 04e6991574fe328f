"""Where the daemon's resident memory goes: RSS after each step of its start, in one fresh interpreter.

    python benchmarks/rss.py            # with NVML where a driver answers (else the steps up to it)

Each step adds to the one before (the interpreter, then each dependency, then vramwatch's modules, then the
NVML library, then a running daemon's first minute of history), so the differences are what each costs.
Figures are one process's RSS from /proc (psutil), in MB (10^6 bytes).
"""

from __future__ import annotations

import json
import subprocess
import sys

STEPS = [
    ("interpreter", "pass"),
    ("psutil", "import psutil"),
    ("structlog", "import structlog"),
    ("click", "import click"),
    ("prometheus_client", "import prometheus_client"),
    ("pynvml (the module)", "import pynvml"),
    ("vramwatch (serve's modules)", "import vramwatch.app, vramwatch.cli"),
    ("libnvidia-ml (nvmlInit)", "pynvml.nvmlInit()"),
    (
        "serve: 60 ticks of history",
        "from vramwatch.config import Config\n"
        "from vramwatch.daemon import Daemon\n"
        "from vramwatch.backends import open_backend\n"
        "from vramwatch.testing import FakeClock\n"
        "from vramwatch import logs\n"
        "logs.configure('json', 'error')\n"
        "c = FakeClock()\n"
        "d = Daemon(Config(), lambda: open_backend(), clock=c)\n"
        "for _ in range(60):\n    c.advance(1.0); d.step()",
    ),
]

CHILD = """
import json, sys
import psutil
me = psutil.Process()
out = []
for name, code in json.loads(sys.argv[1]):
    try:
        exec(code, globals())
    except Exception as exc:  # no driver here: the steps that need it are reported as skipped
        out.append([name, None, f"{type(exc).__name__}: {exc}"])
        continue
    out.append([name, me.memory_info().rss, None])
print(json.dumps(out))
"""


def main() -> None:
    # psutil is imported first by the harness itself, so its own cost is folded into "interpreter".
    res = subprocess.run([sys.executable, "-c", CHILD, json.dumps(STEPS)], capture_output=True, text=True, check=True)
    rows = json.loads(res.stdout)
    print("| step | RSS | added |\n|---|---|---|")
    prev = None
    for name, rss, err in rows:
        if rss is None:
            print(f"| {name} | skipped ({err[:60]}) | |")
            continue
        added = "" if prev is None else f"+{(rss - prev) / 1e6:.1f} MB"
        print(f"| {name} | {rss / 1e6:.1f} MB | {added} |")
        prev = rss


if __name__ == "__main__":
    main()
