"""On a real GPU: `vramwatch run` reports PyTorch's allocator figures to a running `vramwatch serve`.

Run on a GPU host with PyTorch: `python -m pytest -m gpu tests/gpu`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu
pytest.importorskip("torch")

CHILD = """
import sys, time, torch
x = torch.empty(512 * 1024**2, dtype=torch.uint8, device="cuda")
torch.cuda.synchronize()
print("ALLOCATED", flush=True)
time.sleep(8)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torch_child_once_listening(socket_path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """`vramwatch run` of CHILD, started once the listener's socket exists, back when its 512 MiB are allocated."""
    for _ in range(100):
        if socket_path.exists():
            break
        time.sleep(0.1)
    child = subprocess.Popen(
        [sys.executable, "-m", "vramwatch", "run", "--", sys.executable, "-c", CHILD],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ALLOCATED"
    return child


@contextmanager
def _recording(trace: Path, env: dict[str, str], seconds: float = 12.0) -> Iterator[subprocess.Popen[bytes]]:
    """`vramwatch record TRACE` for `seconds` at two ticks a second, its log beside the trace; stopped if still
    running."""
    with (trace.parent / "record.log").open("w") as log:
        record = subprocess.Popen(
            [sys.executable, "-m", "vramwatch", "record", str(trace), "--interval", "0.5", "--duration", str(seconds)],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        try:
            yield record
        finally:
            if record.poll() is None:
                record.terminate()
                record.wait(10)


def test_agent_figures_reach_the_daemon_metrics(tmp_path: Path) -> None:
    """A torch child under `vramwatch run` shows up in serve's vramwatch_torch_allocated_bytes with its pid."""
    port = _free_port()
    env = {**os.environ, "VRAMWATCH_SOCKET": str(tmp_path / "agent.sock")}
    log = (tmp_path / "serve.log").open("w")
    serve = subprocess.Popen(
        [sys.executable, "-m", "vramwatch", "serve", "--require-gpu", "--interval", "0.5", "--listen",
         f"127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        child = _torch_child_once_listening(tmp_path / "agent.sock", env)
        deadline = time.monotonic() + 6
        found = []
        while time.monotonic() < deadline and not found:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            found = [line for line in body.splitlines() if line.startswith("vramwatch_torch_allocated_bytes{")]
            time.sleep(0.5)
        assert found, "no agent figures in /metrics"
        value = max(float(line.rsplit(" ", 1)[1]) for line in found)
        assert value >= 512 * 1024**2
        child.wait(30)
        assert child.stdout is not None
        child.stdout.close()
    finally:
        serve.terminate()
        serve.wait(10)
        log.close()


def test_record_keeps_the_agents_allocator_figures_in_the_trace(tmp_path: Path) -> None:
    """With no daemon holding the agent socket, `vramwatch record` takes the agents' reports: a torch child under
    `vramwatch run` leaves its allocated and reserved bytes in the trace, which replay reads back."""
    from vramwatch.trace import read_trace

    env = {**os.environ, "VRAMWATCH_SOCKET": str(tmp_path / "agent.sock")}
    trace = tmp_path / "t.jsonl"
    with _recording(trace, env) as record:
        child = _torch_child_once_listening(tmp_path / "agent.sock", env)
        child.wait(30)
        assert child.stdout is not None
        child.stdout.close()
        assert record.wait(30) == 0
    _, readings = read_trace(trace)
    allocated = [s.allocated_bytes or 0 for reading in readings for s in reading.torch]  # the runner's child's
    assert allocated, "no agent figures in the trace: " + (tmp_path / "record.log").read_text()
    assert max(allocated) >= 512 * 1024**2


EXITS = """
import sys, time, torch
x = torch.empty(256 * 1024**2, dtype=torch.uint8, device="cuda")
torch.cuda.synchronize()
time.sleep(3)
sys.exit(3)
"""


def _listed_until_gone(pid: int, timeout: float) -> float | None:
    """Seconds until NVML's process lists no longer hold `pid` (None: still listed after `timeout`)."""
    import pynvml

    pynvml.nvmlInit()
    try:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            listed = set()
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                for fn in (pynvml.nvmlDeviceGetComputeRunningProcesses, pynvml.nvmlDeviceGetGraphicsRunningProcesses):
                    listed |= {p.pid for p in fn(handle)}
            if pid not in listed:
                return round(time.monotonic() - start, 1)
            time.sleep(0.2)
        return None
    finally:
        pynvml.nvmlShutdown()


def test_a_cuda_process_reaped_at_once_leaves_its_exit_status_in_the_trace(tmp_path: Path) -> None:
    """A CUDA process whose parent reaps it at once (as a shell does: no zombie to read) still leaves its exit code in
    what the sampler records, through the pidfd vramwatch held for it (Linux 6.15+; skipped on older kernels)."""
    from kernel_probe import reaped_exit_supported
    from vramwatch.trace import read_trace

    if not reaped_exit_supported():
        pytest.skip(f"kernel {os.uname().release} keeps no exit status for pidfds (PIDFD_INFO_EXIT, Linux 6.15+)")
    trace = tmp_path / "t.jsonl"
    with _recording(trace, dict(os.environ), seconds=90.0) as record:
        time.sleep(2.0)
        child = subprocess.Popen([sys.executable, "-c", EXITS])
        assert child.wait(60) == 3  # reaped the moment it ends
        reaped = time.monotonic()
        # However long torch took to start, and however long NVML lists the process after it was reaped: the recorder
        # asks for 5 s after a process left the GPU (sampler.py's EXIT_WAIT_SECONDS). Then SIGTERM, which ends a
        # recording cleanly.
        listed_for = _listed_until_gone(child.pid, 30.0)
        time.sleep(3.0)
        record.terminate()
        assert record.wait(30) == 0
    _, readings = read_trace(trace)
    readings = list(readings)
    seen = {u.pid for reading in readings for u in reading.processes}
    exits = [e for reading in readings for e in reading.exits]
    # What the recorder saw of the child, tick by tick (seconds from its reaping, status): the diagnosis if it failed.
    ticks = [
        (round(r.t - reaped, 1), next((m.status for m in r.meta if m.pid == child.pid), None))
        for r in readings
        if any(u.pid == child.pid for u in r.processes)
    ]
    assert exits, (
        f"no exit recorded (pids seen on the GPU: {sorted(seen)}; NVML listed pid {child.pid} for {listed_for} s after "
        f"it was reaped; the recorder saw it at {ticks}): " + (tmp_path / "record.log").read_text()
    )
    assert [(e.exit_code, e.signal) for e in exits] == [(3, None)]
