"""Where the daemon's resident memory goes: RSS after each step of its start, in one fresh interpreter.

    python benchmarks/rss.py            # with NVML where a driver answers (else the steps up to it)
    python benchmarks/rss.py --python VENV/bin/python --serve 60   # a clean install: its steps, then its serve

Each step adds to the one before (the interpreter, then each dependency, then vramwatch's modules, then the
NVML library, then a running daemon's first minute of history), so the differences are what each costs.
Figures are one process's RSS from /proc (psutil), in MB (10^6 bytes).

`--python` runs the steps under another interpreter: a fresh venv with vramwatch-daemon installed from its wheel
is what a user's systemd unit runs, without the extra packages (and their `.pth` start-up imports) of a
development or CUDA image. `--serve SECONDS` then starts that interpreter's `vramwatch serve` (NVML, or the
simulator where no driver answers), scrapes it every 15 s, and reports the median of its RSS sampled each
second after a 5 s start, with the anonymous and file-backed parts and the PSS from `/proc/PID/smaps_rollup`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from serving import each_second, running_serve, scrape

STEPS = [
    (
        # As `vramwatch serve` starts (vramwatch/entry.py): rich left out, where the installed version does so.
        "interpreter",
        "import importlib.util, os, sys\n"
        "spec = importlib.util.find_spec('vramwatch')\n"
        "if spec and os.path.exists(os.path.join(spec.submodule_search_locations[0], 'entry.py')):\n"
        "    sys.modules.setdefault('rich', None)",
    ),
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


def steps(python: str) -> None:
    """The start-up table: each step's RSS in one fresh interpreter, and what it added."""
    # psutil is imported first by the harness itself, so its own cost is folded into "interpreter".
    res = subprocess.run([python, "-c", CHILD, json.dumps(STEPS)], capture_output=True, text=True, check=True)
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


def _rollup(pid: int) -> dict[str, int]:
    """/proc/PID/smaps_rollup's fields, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            out[key] = int(value.split()[0]) * 1024
    return out


def serve(python: str, seconds: float) -> None:
    """RSS of a running `vramwatch serve` started by `python`, sampled each second after its start-up."""
    with running_serve(python, log_level="error") as (proc, port):
        samples = each_second(port, seconds, lambda: _rollup(proc.pid))
        body = scrape(port).decode()
    backend = next((ln for ln in body.splitlines() if ln.startswith("vramwatch_build_info")), "?")
    print(f"\nserve ({python}), {len(samples)} samples over {seconds:.0f} s, {backend}")
    print("| figure | median | max |\n|---|---|---|")
    for key, name in (("Rss", "RSS"), ("Pss", "PSS"), ("Anonymous", "anonymous"), ("Pss_File", "PSS file-backed")):
        values = [s.get(key, 0) for s in samples]
        print(f"| {name} | {statistics.median(values) / 1e6:.1f} MB | {max(values) / 1e6:.1f} MB |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", default=sys.executable, help="the interpreter to measure (a venv's python)")
    ap.add_argument("--serve", type=float, default=0, metavar="SECONDS", help="also measure a running serve")
    args = ap.parse_args()
    steps(args.python)
    if args.serve:
        serve(args.python, args.serve)


if __name__ == "__main__":
    main()
