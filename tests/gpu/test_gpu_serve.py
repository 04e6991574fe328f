"""End to end on a real GPU: `vramwatch serve` over NVML attributes a real PyTorch process and forgets it.

Run on a GPU host with PyTorch installed: `python -m pytest -m gpu tests/gpu`.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.gpu
torch = pytest.importorskip("torch")

GIB = 1024**3
INTERVAL = 0.5

CHILD = """
import sys, torch
blocks = [torch.zeros(1, device="cuda")]  # creates the CUDA context now: PyTorch does it lazily otherwise
print("READY", flush=True)
for line in sys.stdin:
    gib = int(line)
    if gib < 0:
        break
    blocks.append(torch.empty(gib * 1024**3, dtype=torch.uint8, device="cuda"))
    torch.cuda.synchronize()
    print("ALLOCATED", torch.cuda.memory_reserved(), flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    out = log.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vramwatch", "serve", "--require-gpu", "--listen", f"127.0.0.1:{port}",
         "--interval", str(INTERVAL)],
        stdout=out, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if "vramwatch_gpu_memory_used_bytes" in _scrape(port):
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        proc.wait()
        out.close()
        pytest.fail("serve did not come up: " + log.read_text())
    yield port
    proc.terminate()
    code = proc.wait(5)
    out.close()
    assert code == 0, "serve must stop cleanly on SIGTERM: " + log.read_text()


def _pid_bytes(port: int, pid: int) -> float | None:
    for labels, v in _scrape(port).get("vramwatch_process_gpu_memory_bytes", []):
        if labels["pid"] == str(pid):
            return v
    return None


def test_torch_child_is_attributed_within_two_ticks_and_forgotten_after_exit(serve: int) -> None:
    """A real PyTorch child's growth shows under its pid within two ticks, and its series vanish after it exits."""
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdin is not None
        assert child.stdout.readline().strip() == "READY"
        time.sleep(3 * INTERVAL)
        before = _pid_bytes(serve, child.pid)  # the CUDA context and one small block
        assert before is not None, "a process holding a CUDA context must be listed"
        child.stdin.write("2\n")
        child.stdin.flush()
        assert child.stdout.readline().startswith("ALLOCATED")
        t0 = time.monotonic()
        seen = None
        while time.monotonic() - t0 < 2 * INTERVAL + 0.5:  # two ticks, plus the scrape's own latency
            seen = _pid_bytes(serve, child.pid)
            if seen is not None and seen - before >= 2 * GIB:
                break
            time.sleep(0.05)
        assert seen is not None, "the child's pid never appeared in /metrics"
        # The caching allocator rounds a 2 GiB request up to its 2 MiB segments: at least 2 GiB, at most +64 MiB.
        assert 2 * GIB <= seen - before <= 2 * GIB + 64 * 1024**2
        for labels, _ in _scrape(serve)["vramwatch_process_gpu_memory_bytes"]:
            if labels["pid"] == str(child.pid):
                assert labels["user"], "the user of a visible process must be resolved"
                assert labels["process"], "the process must be named"
    finally:
        if child.stdin:
            child.stdin.write("-1\n")
            child.stdin.close()
        child.wait(30)
        if child.stdout:
            child.stdout.close()
    time.sleep(2 * INTERVAL + 0.2)
    assert _pid_bytes(serve, child.pid) is None, "an exited process must leave /metrics at the next scrape"


def test_used_memory_agrees_with_nvidia_smi(serve: int) -> None:
    """vramwatch's used bytes per GPU match nvidia-smi's memory.used (MiB-rounded) on an idle moment."""
    for _ in range(5):
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=uuid,memory.used,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        time.sleep(2 * INTERVAL)
        ours = {lab["uuid"]: v for lab, v in _scrape(serve)["vramwatch_gpu_memory_used_bytes"]}
        totals = {lab["uuid"]: v for lab, v in _scrape(serve)["vramwatch_gpu_memory_total_bytes"]}
        ok = True
        for line in smi.strip().splitlines():
            uuid, used_mib, total_mib = (x.strip() for x in line.split(","))
            # nvidia-smi prints whole MiB; memory can move between the two reads, hence one MiB + 1 MiB slack.
            ok &= abs(ours[uuid] / 2**20 - int(used_mib)) <= 2
            assert abs(totals[uuid] / 2**20 - int(total_mib)) <= 1
        if ok:
            return
    pytest.fail(f"used memory disagrees with nvidia-smi: {smi!r} vs {ours!r}")


def test_build_info_names_the_real_driver(serve: int) -> None:
    """build_info says backend=nvml and carries the driver version nvidia-smi reports."""
    driver = subprocess.run(
        ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True,
        check=True,
    ).stdout.split()[0]  # fmt: skip
    ((labels, _),) = _scrape(serve)["vramwatch_build_info"]
    assert labels["backend"] == "nvml"
    assert labels["driver_version"] == driver


def test_check_on_a_real_card_names_its_driver_and_arms_the_policy(tmp_path: Path) -> None:
    """check --require-gpu where NVML answers exits 0, names the driver nvidia-smi reports, and says what a
    signalling policy may touch there (on a real card it is not cut to log and notify)."""
    driver = subprocess.run(
        ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True,
        check=True,
    ).stdout.split()[0]  # fmt: skip
    cfg = tmp_path / "vw.toml"
    cfg.write_text('[policy]\ndry_run = true\n[policy.actions]\ncritical = ["notify", "signal"]\n'
                   '[policy.targets]\nusers = ["alice"]\n')  # fmt: skip
    res = subprocess.run(
        [sys.executable, "-m", "vramwatch", "--config", str(cfg), "check", "--require-gpu"],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert f"  GPUs: NVML, driver {driver} on " in res.stdout
    assert "  policy: processes it may signal or kill: user alice" in res.stdout
