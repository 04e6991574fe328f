"""Cost of one vramwatch tick against the alternatives, measured in one run on one machine.

    python benchmarks/tick.py                 # on a GPU host: NVML tick vs raw NVML, nvidia-smi, nvitop
    python benchmarks/tick.py --simulated     # anywhere: the simulator at scale (8 GPUs x 512 processes)
    python benchmarks/tick.py --daemon 60     # also: `vramwatch serve` at 1 Hz for 60 s, CPU share and RSS

Every figure is a median over repeated runs (with p90), and each alternative is reported as a ratio against
vramwatch's full tick measured in the same process, so the machine's speed cancels out. Results go to stdout
as Markdown and, with --json FILE, as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any


def measure(fn: Callable[[], object], *, repeat: int, warmup: int = 5) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1e9)
    samples.sort()
    return {
        "median_s": statistics.median(samples),
        "p90_s": samples[int(0.9 * (len(samples) - 1))],
        "n": float(len(samples)),
    }


def _daemon_for(backend: Any, clock: Any, prefill: int = 900) -> tuple[Any, Callable[[], None]]:
    """A daemon over `backend` whose history already holds `prefill` ticks, and its one-tick function.

    The clock is a FakeClock advanced one second per tick, so the detectors see the windows they would see
    at 1 Hz (their cost grows with the window) while the benchmark runs ticks back to back.
    """
    from vramwatch.config import Config
    from vramwatch.daemon import Daemon

    d = Daemon(Config(), lambda: backend, clock=clock)

    def tick() -> None:
        clock.advance(1.0)
        d.step()

    for _ in range(prefill):
        tick()
    return d, tick


def bench_nvml(repeat: int) -> dict[str, Any]:
    import pynvml  # the baseline: raw NVML calls with no attribution, history or export
    from vramwatch.backends.nvml import NvmlBackend
    from vramwatch.exporter import make_registry

    results: dict[str, Any] = {}
    from vramwatch.testing import FakeClock

    backend = NvmlBackend()
    daemon, tick = _daemon_for(backend, FakeClock())
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]

    def raw() -> None:
        for h in handles:
            pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
            pynvml.nvmlDeviceGetComputeRunningProcesses(h)
            pynvml.nvmlDeviceGetGraphicsRunningProcesses(h)

    results["vramwatch_tick"] = measure(tick, repeat=repeat)
    results["raw_nvml"] = measure(raw, repeat=repeat)
    registry = make_registry(lambda: daemon._state)
    from prometheus_client import generate_latest

    results["scrape"] = measure(lambda: generate_latest(registry), repeat=repeat)
    if shutil.which("nvidia-smi"):
        cmd = [
            "nvidia-smi",
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader",
        ]
        cmd_gpu = ["nvidia-smi", "--query-gpu=index,memory.used,memory.total", "--format=csv,noheader"]

        def smi() -> None:
            subprocess.run(cmd_gpu, capture_output=True, check=True)
            subprocess.run(cmd, capture_output=True, check=True)

        results["nvidia_smi_2_calls"] = measure(smi, repeat=max(10, repeat // 20), warmup=1)
    try:
        from nvitop import Device, GpuProcess

        devices = Device.all()

        def nvitop_snapshot() -> None:
            for dev in devices:
                dev.as_snapshot()
                GpuProcess.take_snapshots(dev.processes().values(), failsafe=True)

        results["nvitop_snapshot"] = measure(nvitop_snapshot, repeat=repeat)
    except ImportError:
        results["nvitop_snapshot"] = None
    backend.close()
    return results


def bench_simulated(repeat: int) -> dict[str, Any]:
    from prometheus_client import generate_latest
    from vramwatch.backends.simulated import SimulatedBackend
    from vramwatch.exporter import make_registry
    from vramwatch.testing import FakeClock

    results: dict[str, Any] = {}
    for scenario in ("steady", "scale512", "scale"):
        clock = FakeClock()
        backend = SimulatedBackend(scenario, seed=0, clock=clock)
        daemon, tick = _daemon_for(backend, clock, prefill=900 if scenario == "steady" else 300)
        results[f"sim_{scenario}_tick"] = measure(tick, repeat=repeat)
        registry = make_registry(lambda d=daemon: d._state)
        body = generate_latest(registry)
        results[f"sim_{scenario}_scrape"] = measure(lambda r=registry: generate_latest(r), repeat=repeat)
        results[f"sim_{scenario}_series"] = float(body.count(b"\n") - body.count(b"\n#"))
        results[f"sim_{scenario}_gpus_processes"] = [
            len(daemon._state.snapshot.gpus),
            len(daemon._state.snapshot.processes),
        ]
    return results


def bench_daemon(seconds: float, simulate: str | None) -> dict[str, Any]:
    """Start `vramwatch serve` as its own process, let it tick at 1 Hz, read its CPU time and RSS from /proc."""
    import psutil

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "vramwatch", "--log-format", "json", "serve", "--listen", f"127.0.0.1:{port}"]
    if simulate:
        cmd += ["--simulate", simulate]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ps = psutil.Process(proc.pid)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read()
                break
            except OSError:
                time.sleep(0.2)
        time.sleep(5)  # past start-up imports and the first ticks
        c0, t0 = ps.cpu_times(), time.monotonic()
        rss = []
        stop = threading.Event()

        def scrape() -> None:  # Prometheus scraping every 15 s is part of the daemon's real load
            while not stop.wait(15):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()

        threading.Thread(target=scrape, daemon=True).start()
        while time.monotonic() - t0 < seconds:
            rss.append(ps.memory_info().rss)
            time.sleep(1)
        c1, t1 = ps.cpu_times(), time.monotonic()
        stop.set()
        cpu = (c1.user + c1.system) - (c0.user + c0.system)
        return {
            "seconds": t1 - t0,
            "cpu_percent_of_one_core": 100 * cpu / (t1 - t0),
            "rss_median_mb": statistics.median(rss) / 1e6,
            "rss_max_mb": max(rss) / 1e6,
            "backend": simulate or "nvml",
        }
    finally:
        proc.terminate()
        proc.wait(10)


def report(res: dict[str, Any]) -> str:
    lines = [f"machine: {res['machine']}", "", "| what | median | p90 | vs vramwatch tick |", "|---|---|---|---|"]
    base = res.get("nvml", {}).get("vramwatch_tick") if res.get("nvml") else None
    for group in ("nvml", "simulated"):
        for name, m in (res.get(group) or {}).items():
            if not isinstance(m, dict):
                continue
            ratio = f"{m['median_s'] / base['median_s']:.1f}x" if base and group == "nvml" else ""
            lines.append(f"| {name} | {m['median_s'] * 1e3:.3f} ms | {m['p90_s'] * 1e3:.3f} ms | {ratio} |")
    for d in res.get("daemon", []):
        lines.append(
            f"\ndaemon ({d['backend']}, {d['seconds']:.0f} s at 1 Hz): "
            f"{d['cpu_percent_of_one_core']:.3f}% of one core, "
            f"RSS median {d['rss_median_mb']:.1f} MB (max {d['rss_max_mb']:.1f} MB)"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--simulated", action="store_true", help="only the simulator (no GPU needed)")
    ap.add_argument("--repeat", type=int, default=2000)
    ap.add_argument("--daemon", type=float, default=0, metavar="SECONDS", help="also measure serve at 1 Hz")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--no-simulated", action="store_true", help="skip the simulator at scale (measure it elsewhere)")
    args = ap.parse_args()
    from vramwatch import logs

    logs.configure("json", "error")  # findings of the simulated scenarios are not what is measured here
    res: dict[str, Any] = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()} {os.cpu_count()} cpus",
        "python": sys.version.split()[0],
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    if not args.simulated:
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            res["machine"] += " / " + out.stdout.strip().replace("\n", "; ")
        except (OSError, subprocess.CalledProcessError):
            pass
    res["daemon"] = []

    def checkpoint(stage: str) -> None:
        # Each stage prints and saves as it ends: a run cut short still leaves what it measured.
        print(f"--- after {stage}\n{report(res)}", flush=True)
        if args.json:
            args.json.write_text(json.dumps(res, indent=2))

    if not args.simulated:
        res["nvml"] = bench_nvml(args.repeat)
        checkpoint("nvml")
    if not args.no_simulated:
        res["simulated"] = bench_simulated(max(50, args.repeat // 10))
        checkpoint("simulated")
    if args.daemon:
        if not args.simulated:
            res["daemon"].append(bench_daemon(args.daemon, None))
        res["daemon"].append(bench_daemon(args.daemon, "steady"))
        checkpoint("daemon")


if __name__ == "__main__":
    main()
