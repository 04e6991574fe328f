"""Cost of one vramwatch tick against the alternatives, measured in one run on one machine.

    python benchmarks/tick.py --procs 1,4,16,64   # on a GPU host: starts that many CUDA processes, and per count
                                                  # measures raw NVML, vramwatch's tick and scrape, nvitop
    python benchmarks/tick.py --host-procs        # anywhere: host processes behind a scripted NVML
    python benchmarks/tick.py --simulated         # anywhere: the simulator at scale (8 GPUs x 64 and x 512)
    python benchmarks/tick.py --simulated --scale-hour  # and 8 x 512 with an hour of history (its steady state)
    python benchmarks/tick.py --daemon 60         # also: `vramwatch serve` at 1 Hz for 60 s, CPU share and RSS

Each tick is measured with an hour of history behind it (`--prefill`), since the detectors' cost grows with it.
The simulator's 8 x 512 starts from five minutes of history (an hour of it takes minutes to fill), so its tick
is measured before a process's warm-up and stability windows have all passed: the table says how much history
each tick had, and `--scale-hour` adds the same 8 x 512 with an hour, where a long-running daemon spends its time.

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
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from serving import each_second, running_serve


def measure(
    fn: Callable[[], object], *, repeat: int, warmup: int = 5, before: Callable[[], object] | None = None
) -> dict[str, float]:
    """Median and p90 of `fn`'s wall time; `before` runs untimed ahead of each call (a tick ahead of each scrape:
    a scrape computes the process rates its tick left for it, and a second scrape of one tick would find them
    computed)."""
    for _ in range(warmup):
        if before is not None:
            before()
        fn()
    samples = []
    for _ in range(repeat):
        if before is not None:
            before()
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1e9)
    samples.sort()
    return {
        "median_s": statistics.median(samples),
        "p90_s": samples[int(0.9 * (len(samples) - 1))],
        "n": float(len(samples)),
    }


def measure_pair(
    a: Callable[[], object],
    b: Callable[[], object],
    *,
    repeat: int,
    warmup: int = 5,
    before: Callable[[], object] | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """`measure` of two functions in alternating rounds (a b, b a, ...), so that a drift of the machine during
    the run (another tenant, the allocator's state) falls on both alike: for an A/B ratio in one run. `before`
    runs untimed ahead of each call, as in `measure`."""
    for _ in range(warmup):
        for fn in (a, b):
            if before is not None:
                before()
            fn()
    samples: tuple[list[float], list[float]] = ([], [])
    for r in range(repeat):
        for k in (0, 1) if r % 2 == 0 else (1, 0):
            fn = (a, b)[k]
            if before is not None:
                before()
            t0 = time.perf_counter_ns()
            fn()
            samples[k].append((time.perf_counter_ns() - t0) / 1e9)
    out = []
    for s in samples:
        s.sort()
        out.append({"median_s": statistics.median(s), "p90_s": s[int(0.9 * (len(s) - 1))], "n": float(len(s))})
    return out[0], out[1]


def _daemon_for(
    backend: Any, clock: Any, prefill: int = 900, *, before: Callable[[], None] | None = None, package: Any = None
) -> tuple[Any, Callable[[], None]]:
    """A daemon over `backend` whose history already holds `prefill` ticks, and its one-tick function.

    The clock is a FakeClock advanced one second per tick, so the detectors see the windows they would see
    at 1 Hz (their cost grows with the window) while the benchmark runs ticks back to back. `before` runs
    ahead of each tick (the scripted NVML's sawtooth moves there); `package` is the vramwatch package to build
    the daemon from (another tree's copy, for an A/B in one process), by default the installed one.
    """
    if package is None:
        import vramwatch as package
    import importlib

    config = importlib.import_module(package.__name__ + ".config")
    daemon = importlib.import_module(package.__name__ + ".daemon")
    d = daemon.Daemon(config.Config(), lambda: backend, clock=clock)

    def tick() -> None:
        clock.advance(1.0)
        if before is not None:
            before()
        d.step()

    for _ in range(prefill):
        tick()
    return d, tick


# A CUDA process with a small context that holds still (a server between requests), or that frees and
# re-takes memory every half second (a sawtooth trainer: its series is never flat).
_CUDA_CHILD = """
import sys, time, torch
x = torch.empty(64 << 20, dtype=torch.uint8, device="cuda")
torch.cuda.synchronize()
print("ready", flush=True)
saw = sys.argv[1] == "saw"
while True:
    time.sleep(0.5)
    if saw:
        y = torch.empty((256 + int(time.time() * 7) % 512) << 20, dtype=torch.uint8, device="cuda")
        del y
        torch.cuda.empty_cache()
"""
_HOST_CHILD = "import time; print('ready', flush=True); time.sleep(3600)"


class Pool:
    """Child processes started on demand and kept until `close()`: the tenants of the card being measured."""

    def __init__(self, source: str, saw_every: int = 0) -> None:
        self.source, self.saw_every = source, saw_every
        self.procs: list[subprocess.Popen[str]] = []

    def grow(self, n: int) -> None:
        start = len(self.procs)
        for i in range(start, n):
            mode = "saw" if self.saw_every and i % self.saw_every == self.saw_every - 1 else "still"
            self.procs.append(
                subprocess.Popen([sys.executable, "-c", self.source, mode], stdout=subprocess.PIPE, text=True)
            )
        for p in self.procs[start:]:
            if p.stdout is None or p.stdout.readline().strip() != "ready":
                raise SystemExit(f"a child process did not start (exit {p.poll()})")

    def close(self) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


def _fake_nvml(pool: Pool, saw_every: int = 0) -> Any:
    """The test suite's scriptable pynvml, listing the pool's real host processes as one GPU's tenants: the
    whole tick (attribution through /proc included) but the driver's own cost, on any machine.

    Each `refresh()` is one NVML reading. With `saw_every` K, every K-th process is a sawtooth as the CUDA
    child's would be sampled at 1 Hz: 512 MiB, plus 256-767 MiB taken on every other reading (its series moves
    at every tick and never grows); the others hold still.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import fake_pynvml as fk

    gpu = fk.gpu(0, total=141 * fk.GiB, used=0)
    nv = fk.FakeNvml([gpu])
    readings = [0]

    def held(i: int) -> int:
        k = readings[0]
        if saw_every and i % saw_every == saw_every - 1 and (k + i) % 2:
            return (512 + 256 + (k * 7 + i * 13) % 512) * fk.MiB
        return 512 * fk.MiB

    def refresh() -> None:
        readings[0] += 1
        gpu.compute = [fk.FakeProcess(p.pid, held(i)) for i, p in enumerate(pool.procs)]
        gpu.used = sum(p.usedGpuMemory or 0 for p in gpu.compute)

    nv.refresh = refresh  # type: ignore[attr-defined]
    # pynvml's own calls only: the fake's C entry points are Python, slower than the calls they stand for, and
    # would weigh on one side of an A/B against a tree that does not use them.
    nv.__dict__["_nvmlGetFunctionPointer"] = None
    return nv


def wait_listed(nv: Any, pool: Pool, timeout: float = 60.0) -> None:
    """Until the driver lists every process of the pool (it lists a context once it is made), or `timeout`."""
    handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(nv.nvmlDeviceGetCount())]
    mine = {p.pid for p in pool.procs}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if mine <= {int(p.pid) for h in handles for p in nv.nvmlDeviceGetComputeRunningProcesses(h)}:
            return
        time.sleep(0.2)


def bench_procs(counts: list[int], repeat: int, *, host: bool, saw_every: int, prefill: int) -> dict[str, Any]:
    """Per process count: raw NVML, vramwatch's tick and scrape, and the peers, measured back to back.

    Like for like, a peer gathers what a vramwatch tick does: each GPU's memory, its processes with their GPU
    memory, and who owns them. Full-snapshot figures (every device attribute, every host attribute) are
    reported apart and labelled: they do more work, so they are not a comparison of the same job.
    """
    from prometheus_client import generate_latest
    from vramwatch.backends.nvml import NvmlBackend
    from vramwatch.exporter import make_registry
    from vramwatch.testing import FakeClock

    pool = Pool(_HOST_CHILD if host else _CUDA_CHILD, 0 if host else saw_every)
    rows: list[dict[str, Any]] = []
    try:
        nv: Any = None
        if host:
            nv = _fake_nvml(pool, saw_every)
        else:
            import pynvml

            nv = pynvml
        for n in counts:
            pool.grow(n)
            if host:
                nv.refresh()
            backend = NvmlBackend(nvml=nv)
            handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(nv.nvmlDeviceGetCount())]
            if not host:
                wait_listed(nv, pool)
            listed = sum(len(nv.nvmlDeviceGetComputeRunningProcesses(h)) for h in handles)

            def raw(handles: list[Any] = handles) -> None:
                for h in handles:
                    nv.nvmlDeviceGetMemoryInfo(h, version=nv.nvmlMemory_v2)
                    nv.nvmlDeviceGetComputeRunningProcesses(h)
                    nv.nvmlDeviceGetGraphicsRunningProcesses(h)

            row: dict[str, Any] = {"processes": n, "listed": listed}
            row["raw_nvml"] = measure(raw, repeat=repeat)
            moving = nv.refresh if host and saw_every else None
            daemon, tick = _daemon_for(backend, FakeClock(), prefill=prefill, before=moving)
            row["vramwatch_tick"] = measure(tick, repeat=repeat)
            registry = make_registry(lambda d=daemon: d._state)
            row["vramwatch_scrape"] = measure(
                lambda r=registry: generate_latest(r), repeat=max(20, repeat // 10), before=tick
            )
            if not host:
                row.update(_peers(repeat))
            rows.append(row)
            backend.close()
            print(f"  {n} processes: {_row_text(row)}", flush=True)
    finally:
        pool.close()
    return {"rows": rows, "fit": {k: _fit(rows, k) for k in rows[0] if isinstance(rows[0][k], dict)}, "host": host}


def _peers(repeat: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        from nvitop import Device, GpuProcess
    except Exception as exc:  # missing, or refusing this nvidia-ml-py: the run still reports vramwatch and NVML
        print(f"  nvitop unavailable: {exc}", flush=True)
        return out
    devices = Device.all()

    def nvitop_same() -> None:
        # What a vramwatch tick gathers: memory, the processes and their GPU memory, and their owners.
        for dev in devices:
            dev.memory_used()
            dev.memory_total()
            for proc in dev.processes().values():
                proc.gpu_memory()
                proc.username()

    def nvitop_process_snapshots() -> None:
        for dev in devices:
            dev.memory_used()
            GpuProcess.take_snapshots(dev.processes().values(), failsafe=True)

    def nvitop_full() -> None:
        for dev in devices:
            dev.as_snapshot()
            GpuProcess.take_snapshots(dev.processes().values(), failsafe=True)

    out["nvitop_like_for_like"] = measure(nvitop_same, repeat=repeat)
    out["full: nvitop GpuProcess.take_snapshots (every host attribute)"] = measure(
        nvitop_process_snapshots, repeat=repeat // 4
    )
    out["full: nvitop Device.as_snapshot + processes"] = measure(nvitop_full, repeat=max(20, repeat // 20))
    if shutil.which("nvidia-smi"):
        q_gpu = ["nvidia-smi", "--query-gpu=index,memory.used,memory.total", "--format=csv,noheader"]
        q_app = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"]

        def smi() -> None:
            subprocess.run(q_gpu, capture_output=True, check=True)
            subprocess.run(q_app, capture_output=True, check=True)

        out["full: nvidia-smi (two queries, a process each)"] = measure(smi, repeat=10, warmup=1)
    return out


def _fit(rows: list[dict[str, Any]], key: str) -> dict[str, float] | None:
    """Least-squares line of the median cost against the number of processes: (fixed ms, µs per process)."""
    pts = [(r["processes"], r[key]["median_s"]) for r in rows if isinstance(r.get(key), dict)]
    if len(pts) < 2:
        return None
    mx = statistics.fmean(x for x, _ in pts)
    my = statistics.fmean(y for _, y in pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    slope = sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx else 0.0
    return {"fixed_ms": (my - slope * mx) * 1e3, "per_process_us": slope * 1e6}


def _row_text(row: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v['median_s'] * 1e3:.3f} ms" for k, v in row.items() if isinstance(v, dict))


#: What Prometheus 2 sends (3 sends the same kinds with other weights): OpenMetrics first, then the text format.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def _prometheus_scrape(registry: Any, *, negotiated_by_library: bool = False) -> Callable[[], bytes]:
    """A scrape as Prometheus makes it: the daemon's /metrics answer (`exporter.metrics_app`, as `MetricsServer`
    routes it) with Prometheus's Accept and gzip.

    `negotiated_by_library`: prometheus-client's app alone instead, which answers that Accept in OpenMetrics and
    gzips at level 9 (the baseline for the daemon's choices of format and level)."""
    from prometheus_client import make_wsgi_app
    from vramwatch import exporter

    if negotiated_by_library:
        app = make_wsgi_app(registry)
    elif hasattr(exporter, "metrics_app"):
        app = exporter.metrics_app(registry)
    else:  # a base tree from before `metrics_app` (2026-12-05) served `prefer_text`, then the library's app
        library = make_wsgi_app(registry)
        app = lambda environ, start_response: library(exporter.prefer_text(environ), start_response)  # noqa: E731
    environ = {"PATH_INFO": "/metrics", "REQUEST_METHOD": "GET", "QUERY_STRING": "",
               "HTTP_ACCEPT": PROMETHEUS_ACCEPT, "HTTP_ACCEPT_ENCODING": "gzip"}  # fmt: skip
    return lambda: b"".join(app(dict(environ), lambda *_: None))


def bench_simulated(repeat: int, *, scale_hour: bool = False) -> dict[str, Any]:
    """The simulator at scale: 8 GPUs x 64 processes with an hour of history, 8 x 512 with five minutes (and, with
    `scale_hour`, with an hour)."""
    from prometheus_client import generate_latest
    from vramwatch.backends.simulated import SimulatedBackend
    from vramwatch.exporter import make_registry
    from vramwatch.testing import FakeClock

    rows = [("steady", "steady", 3600), ("scale512", "scale512", 3600), ("scale", "scale", 300)]
    if scale_hour:
        rows.append(("scale, an hour", "scale", 3600))
    results: dict[str, Any] = {}
    for name, scenario, prefill in rows:
        clock = FakeClock()
        backend = SimulatedBackend(scenario, seed=0, clock=clock)
        daemon, one_tick = _daemon_for(backend, clock, prefill=prefill)
        ticks = [prefill]  # the ticks behind the daemon's history so far (one simulated second each)

        def tick(step: Callable[[], None] = one_tick, n: list[int] = ticks) -> None:
            step()
            n[0] += 1

        registry = make_registry(lambda d=daemon: d._state)
        body = generate_latest(registry)
        http, http_library = measure_pair(
            _prometheus_scrape(registry),
            _prometheus_scrape(registry, negotiated_by_library=True),
            repeat=repeat,
            before=tick,
        )
        render_only = _render_only(registry, repeat)
        rates = measure(lambda d=daemon: _read_rates(d), repeat=repeat, before=tick)
        scrape_rates_read = measure(
            lambda r=registry: generate_latest(r),
            repeat=repeat,
            before=lambda d=daemon, t=tick: (t(), _read_rates(d)),
        )
        # The columns above ran ticks of their own: the tick column's history is what they left, up to the
        # daemon's window (older points are dropped).
        tick_history = min(float(ticks[0]), daemon.config.daemon.history_seconds)
        results[name] = {
            "render_only": render_only,
            "rates": rates,
            "scrape_rates_read": scrape_rates_read,
            "tick": measure(tick, repeat=repeat),
            "tick_history_s": tick_history,
            "scrape": measure(lambda r=registry: generate_latest(r), repeat=repeat, before=tick),
            "scrape_http": http,
            "scrape_http_library": http_library,  # OpenMetrics and level 9: two differences
            "series": float(body.count(b"\n") - body.count(b"\n#")),
            "gpus": len(daemon._state.snapshot.gpus),
            "processes": len(daemon._state.snapshot.processes),
            "history_s": float(prefill),
        }
    return results


def _read_rates(daemon: Any) -> None:
    """Read every process's growth rate once, as a scrape does: the first read after a tick computes them."""
    rates = daemon._state.process_growth
    for key in rates:
        rates[key]


def _render_only(registry: Any, repeat: int) -> dict[str, float]:
    """prometheus-client's text writer alone over the same metric families, collected once (their rates computed):
    the floor under any scrape of this exporter, whatever it does to build the families."""
    from prometheus_client import CollectorRegistry, generate_latest

    families = list(registry.collect())

    class Prebuilt:
        def collect(self) -> list[Any]:
            return families

    prebuilt = CollectorRegistry(auto_describe=False)
    prebuilt.register(Prebuilt())
    return measure(lambda: generate_latest(prebuilt), repeat=repeat)


def bench_daemon(seconds: float, simulate: str | None) -> dict[str, Any]:
    """Start `vramwatch serve` as its own process, let it tick at 1 Hz, read its CPU time and RSS from /proc."""
    import psutil

    with running_serve(sys.executable, *(["--simulate", simulate] if simulate else [])) as (proc, port):
        ps = psutil.Process(proc.pid)
        c0, t0 = ps.cpu_times(), time.monotonic()
        rss = each_second(port, seconds, lambda: ps.memory_info().rss)
        c1, t1 = ps.cpu_times(), time.monotonic()
    cpu = (c1.user + c1.system) - (c0.user + c0.system)
    return {
        "seconds": t1 - t0,
        "cpu_percent_of_one_core": 100 * cpu / (t1 - t0),
        "rss_median_mb": statistics.median(rss) / 1e6,
        "rss_max_mb": max(rss) / 1e6,
        "backend": simulate or "nvml",
    }


def report(res: dict[str, Any]) -> str:
    lines = [f"machine: {res['machine']}", f"command: {res['command']}", f"collector: {res.get('collector')}"]
    if res.get("python_reference_ms") is not None:
        # Hosts of one kind differ up to 2x in how fast they run Python, and a tick is Python while nvitop's job is
        # mostly system calls: this figure says which kind of host a table comes from.
        lines.append(f"python {res.get('python')}: the reference workload {res['python_reference_ms']:.2f} ms "
                     "(`python_reference`; lower is a faster host for the tick)")  # fmt: skip
    lines.append("")
    procs = res.get("procs")
    if procs:
        rows = procs["rows"]
        keys = [k for k in rows[0] if isinstance(rows[0][k], dict)]
        kind = "host processes behind a scripted NVML (no driver cost)" if procs["host"] else "CUDA processes"
        lines += [f"median per tick, by the number of {kind} on the card (ratio: against vramwatch's tick):", ""]
        lines += ["| processes | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for r in rows:
            base = r["vramwatch_tick"]["median_s"]
            cells = []
            for k in keys:
                m = r.get(k)
                if not isinstance(m, dict):
                    cells.append("-")
                    continue
                ratio = "" if k == "vramwatch_tick" else f" ({m['median_s'] / base:.1f}x)"
                cells.append(f"{m['median_s'] * 1e3:.3f} ms{ratio}")
            lines.append(f"| {r['processes']} | " + " | ".join(cells) + " |")
        lines += ["", "| fit: cost = fixed + per process | fixed | per process |", "|---|---|---|"]
        for k, f in procs["fit"].items():
            if f:
                lines.append(f"| {k} | {f['fixed_ms']:.3f} ms | {f['per_process_us']:.1f} µs |")
        tick, nvml = procs["fit"].get("vramwatch_tick"), procs["fit"].get("raw_nvml")
        if tick and nvml:
            extra = tick["per_process_us"] - nvml["per_process_us"]
            lines.append(f"\nvramwatch's marginal cost beyond NVML's own: {extra:.1f} µs per process")
    sim = res.get("simulated")
    if sim:
        lines += [
            "",
            "| simulated | history | tick median | tick p90 | scrape median (writer; each the first after a tick, so it"
            " computes the process rates) | scrape as Prometheus asks"
            " (the daemon's /metrics: its Accept, gzip) | prometheus-client's app alone (OpenMetrics, gzip at level 9;"
            " alternating rounds)"
            " | of the scrape: the process rates alone (read once after a tick)"
            " | the scrape with the rates already read (families + writer)"
            " | prometheus-client's writer alone over the same families, prebuilt (the floor under any scrape)"
            " | series | per second at 1 Hz, scraped every 15 s (tick + Prometheus's scrape / 15) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, m in sim.items():
            lines.append(
                f"| {m['gpus']} GPUs x {m['processes'] // max(1, m['gpus'])} processes ({name})"
                f" | {_history(m)}"
                f" | {m['tick']['median_s'] * 1e3:.2f} ms | {m['tick']['p90_s'] * 1e3:.2f} ms"
                f" | {m['scrape']['median_s'] * 1e3:.2f} ms"
                f" | {m['scrape_http']['median_s'] * 1e3:.2f} ms"
                f" | {_ms(m.get('scrape_http_library'))}{_ratio(m.get('scrape_http_library'), m['scrape_http'])}"
                f" | {_ms(m.get('rates'))} | {_ms(m.get('scrape_rates_read'))}"
                f" | {m['render_only']['median_s'] * 1e3:.2f} ms"
                f" | {m['series']:.0f}"
                f" | {(m['tick']['median_s'] + m['scrape_http']['median_s'] / 15) * 1e3:.2f} ms |"
            )
    for d in res.get("daemon", []):
        lines.append(
            f"\ndaemon ({d['backend']}, {d['seconds']:.0f} s at 1 Hz): "
            f"{d['cpu_percent_of_one_core']:.3f}% of one core, "
            f"RSS median {d['rss_median_mb']:.1f} MB (max {d['rss_max_mb']:.1f} MB)"
        )
    return "\n".join(lines)


def _history(m: dict[str, Any]) -> str:
    """The prefill, and the history the tick column had when the columns before it added to it."""
    at = m.get("tick_history_s")  # absent from a results file from before the column
    if at is None or at == m["history_s"]:
        return f"{m['history_s']:.0f} s"
    return f"{m['history_s']:.0f} s (the tick at {at:.0f} s)"


def _ms(m: dict[str, float] | None) -> str:
    return "-" if m is None else f"{m['median_s'] * 1e3:.2f} ms"  # "-": a results file from before the column


def _ratio(m: dict[str, float] | None, base: dict[str, float]) -> str:
    return "" if m is None else f" ({m['median_s'] / base['median_s']:.2f}x)"


def python_reference(repeat: int = 9) -> float:
    """Median ms of a fixed pure-Python workload shaped like a tick's (tuple-keyed dicts, small frozen objects,
    a sort): the host's speed for this code, measured in the same process as the tables it heads."""
    from dataclasses import dataclass

    @dataclass(frozen=True, slots=True)
    class Point:
        pid: int
        used_bytes: int

    def work() -> None:
        table: dict[tuple[int, str], Point] = {}
        for i in range(20_000):
            table[(i, "GPU-0")] = Point(i, i * 4096)
        total = sum(p.used_bytes for p in table.values() if p.pid % 3)
        sorted(table.values(), key=lambda p: (-p.used_bytes, total))

    return float(measure(work, repeat=repeat, warmup=2)["median_s"] * 1e3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", default="1,4,16,64", help="process counts to measure, comma-separated")
    ap.add_argument("--host-procs", action="store_true", help="host processes behind a scripted NVML (no GPU)")
    ap.add_argument("--saw-every", type=int, default=0, metavar="K", help="every K-th process is a sawtooth")
    ap.add_argument("--prefill", type=int, default=3600, help="ticks of history before measuring (an hour)")
    ap.add_argument("--simulated", action="store_true", help="only the simulator (no GPU needed)")
    ap.add_argument("--no-simulated", action="store_true", help="skip the simulator at scale")
    ap.add_argument("--scale-hour", action="store_true", help="also 8 x 512 with an hour of history (minutes to fill)")
    ap.add_argument("--repeat", type=int, default=1000)
    ap.add_argument("--daemon", type=float, default=0, metavar="SECONDS", help="also measure serve at 1 Hz")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--default-gc", action="store_true", help="keep CPython's collector settings (not serve's)")
    args = ap.parse_args()
    import vramwatch.cli  # noqa: F401 - what serve has loaded when it tunes the collector
    from vramwatch import entry, logs

    logs.configure("json", "error")  # findings of the measured scenarios are not what is measured here
    # The collector as `serve` sets it (a tree without `entry.tune_collector`, an older base, keeps CPython's).
    tuned = hasattr(entry, "tune_collector") and not args.default_gc
    reference = python_reference()  # before the collector is tuned: the host's figure, whatever the run's setting
    if tuned:
        entry.tune_collector()
    res: dict[str, Any] = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()} {os.cpu_count()} cpus",
        "python": sys.version.split()[0],
        "collector": "as serve tunes it" if tuned else "CPython's defaults",
        "command": " ".join(["python", "benchmarks/tick.py", *sys.argv[1:]]),
        "daemon": [],
        "python_reference_ms": reference,
    }
    if not args.simulated and not args.host_procs:
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            res["machine"] += " / " + out.stdout.strip().replace("\n", "; ")
        except (OSError, subprocess.CalledProcessError):
            pass

    def checkpoint(stage: str) -> None:
        # Each stage prints and saves as it ends: a run cut short still leaves what it measured.
        print(f"--- after {stage}\n{report(res)}", flush=True)
        if args.json:
            args.json.write_text(json.dumps(res, indent=2))

    if not args.simulated:
        counts = [int(c) for c in args.procs.split(",") if c.strip()]
        res["procs"] = bench_procs(
            counts, args.repeat, host=args.host_procs, saw_every=args.saw_every, prefill=args.prefill
        )
        checkpoint("processes")
    if not args.no_simulated:
        res["simulated"] = bench_simulated(max(30, args.repeat // 20), scale_hour=args.scale_hour)
        checkpoint("simulated")
    if args.daemon:
        if not args.simulated and not args.host_procs:
            res["daemon"].append(bench_daemon(args.daemon, None))
        res["daemon"].append(bench_daemon(args.daemon, "steady"))
        checkpoint("daemon")


if __name__ == "__main__":
    main()
