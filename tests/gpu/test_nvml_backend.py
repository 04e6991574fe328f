"""The NVML backend on a real GPU: its figures agree with nvidia-smi and follow a real PyTorch process.

Skipped as a whole where NVML cannot be initialised. Run on a GPU host with PyTorch installed:
`python3 -m pytest -m gpu tests/gpu/test_nvml_backend.py`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from vramwatch.backends.nvml import NvmlBackend, nvml_available
from vramwatch.model import GpuSample, Reading

if not nvml_available():
    pytest.skip("NVML is not available here (no NVIDIA driver)", allow_module_level=True)

MIB = 1 << 20
GIB = 1 << 30

needs_smi = pytest.mark.skipif(shutil.which("nvidia-smi") is None, reason="nvidia-smi is not on PATH")
needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch is not installed")

# A child that allocates what it is told on stdin (GiB, one number a line) and says ALLOCATED when the memory
# is really taken: torch.empty reserves through the caching allocator, which cudaMallocs a segment of exactly
# that size for requests this large, and synchronize() makes sure the driver has mapped it before we look.
CHILD = """
import os, sys, torch
x = torch.zeros(1, device="cuda")  # create the context first, so the two figures can be told apart
torch.cuda.synchronize()
print("READY", os.getpid(), flush=True)
held = []
for line in sys.stdin:
    held.append(torch.empty(int(line) * 1024**3, dtype=torch.uint8, device="cuda"))
    torch.cuda.synchronize()
    print("ALLOCATED", torch.cuda.memory_reserved(), flush=True)
"""


def smi(query: str, index: int) -> list[str]:
    out = subprocess.run(
        ["nvidia-smi", f"--id={index}", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return [field.strip() for field in out.strip().splitlines()[0].split(",")]


def physical(reading: Reading) -> GpuSample:
    """The first GPU that is a whole physical GPU (the lent GPUs run without MIG)."""
    for g in reading.gpus:
        if g.up and g.parent_uuid is None:
            return g
    pytest.skip("no physical GPU that is up (MIG only?)")


@pytest.fixture
def backend() -> Iterator[NvmlBackend]:
    b = NvmlBackend()
    yield b
    b.close()


@pytest.mark.gpu
@needs_smi
def test_memory_agrees_with_nvidia_smi(backend: NvmlBackend) -> None:
    """used and total match `nvidia-smi --query-gpu=memory.used,memory.total` within its MiB rounding."""
    # nvidia-smi prints whole MiB (rounded either way: allow 1 MiB), and memory can move between its call and
    # ours: the nvidia-smi figure is bracketed by two reads of ours, retried until the card holds still.
    for _ in range(10):
        before = physical(backend.read())
        used_mib, total_mib = (int(v) for v in smi("memory.used,memory.total", before.index))
        after = physical(backend.read())
        assert before.used_bytes is not None
        assert after.used_bytes is not None
        if before.used_bytes == after.used_bytes:
            break
        time.sleep(0.2)
    else:
        pytest.fail("GPU memory never held still across two reads; is something else running on the card?")
    assert before.total_bytes is not None
    print(
        f"nvidia-smi used {used_mib} MiB / total {total_mib} MiB; backend used {before.used_bytes / MIB:.1f} MiB, "
        f"total {before.total_bytes / MIB:.1f} MiB, reserved {before.reserved_bytes} (None: memory v1)"
    )
    assert abs(before.total_bytes / MIB - total_mib) <= 1
    assert abs(before.used_bytes / MIB - used_mib) <= 1
    if before.reserved_bytes is not None:  # memory v2: total = reserved + used + free
        assert before.free_bytes is not None
        assert before.reserved_bytes + before.used_bytes + before.free_bytes == before.total_bytes


@pytest.mark.gpu
@needs_smi
def test_describe_reports_the_driver_version_nvidia_smi_reports(backend: NvmlBackend) -> None:
    """describe()['driver_version'] is the driver_version nvidia-smi prints."""
    index = physical(backend.read()).index
    assert backend.describe()["driver_version"] == smi("driver_version", index)[0]
    assert backend.describe()["host"]


class Child:
    """A PyTorch process on one GPU that allocates on request."""

    def __init__(self, gpu_uuid: str) -> None:
        env = {"CUDA_VISIBLE_DEVICES": gpu_uuid, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )
        word, pid = self._line().split()
        assert word == "READY"
        assert int(pid) == self.proc.pid

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"child exited early with {self.proc.wait(timeout=30)}")
        return line

    def allocate(self, gib: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{gib}\n")
        self.proc.stdin.flush()
        assert self._line().startswith("ALLOCATED")

    def stop(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()  # the child's loop ends at EOF and it exits, releasing its context
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def used_by(backend: NvmlBackend, pid: int, gpu_uuid: str, settle_s: float = 5.0) -> int:
    """The pid's figure on that GPU, waiting briefly for NVML's per-process accounting to catch up."""
    deadline = time.monotonic() + settle_s
    last: int | None = None
    while True:
        mine = [p for p in backend.read().processes if p.pid == pid]
        assert mine, f"pid {pid} is not listed (NVML sees host pids: is this a container without the host pid ns?)"
        assert {p.gpu_uuid for p in mine} == {gpu_uuid}
        if mine[0].used_bytes is not None and mine[0].used_bytes == last:
            return last
        last = mine[0].used_bytes
        if time.monotonic() > deadline:
            assert last is not None, "NVML gives no per-process memory on this host"
            return last
        time.sleep(0.2)


@pytest.mark.gpu
@needs_torch
def test_a_real_pytorch_process_is_listed_with_its_growth_and_then_forgotten(backend: NvmlBackend) -> None:
    """A child's pid is listed on its GPU, its figure grows by what it allocates, and it goes when it exits."""
    gpu = physical(backend.read())
    child = Child(gpu.uuid)
    try:
        pid = child.proc.pid
        context = used_by(backend, pid, gpu.uuid)
        # The CUDA context (code, heap, stacks) costs a few hundred MiB on an H100, lazily loaded modules
        # included; it must be there but be far from a GiB.
        assert 16 * MIB < context < 2 * GIB

        child.allocate(1)
        one = used_by(backend, pid, gpu.uuid)
        gpu_one = physical(backend.read()).used_bytes
        child.allocate(3)
        four = used_by(backend, pid, gpu.uuid)
        gpu_four = physical(backend.read()).used_bytes

        # Both blocks are multiples of the allocator's 2 MiB rounding, so each becomes one cudaMalloc of exactly
        # that size; the driver adds page-table and bookkeeping overhead, well under 64 MiB for 3 GiB. The
        # whole-GPU figure may also move with other tenants, so it gets a wider margin.
        print(
            f"context {context / MIB:.0f} MiB; +1 GiB -> +{(one - context) / MIB:.0f} MiB; "
            f"+3 GiB -> +{(four - one) / MIB:.0f} MiB (GPU +{(gpu_four - gpu_one) / MIB:.0f} MiB)"
            if gpu_one is not None and gpu_four is not None
            else ""
        )
        assert abs((one - context) - 1 * GIB) <= 64 * MIB
        assert abs((four - one) - 3 * GIB) <= 64 * MIB
        assert gpu_one is not None
        assert gpu_four is not None
        assert abs((gpu_four - gpu_one) - 3 * GIB) <= 128 * MIB
    finally:
        child.stop()

    # The driver drops the process from its lists once its context is destroyed; allow a few reads for that.
    deadline = time.monotonic() + 10
    while any(p.pid == pid for p in backend.read().processes):
        assert time.monotonic() < deadline, f"pid {pid} still listed 10 s after it exited"
        time.sleep(0.2)


@pytest.mark.gpu
def test_a_read_is_cheap(backend: NvmlBackend) -> None:
    """read() stays well under the 1 ms a whole tick may take on one GPU (median of 200 reads)."""
    backend.read()
    samples = []
    for _ in range(200):
        start = time.perf_counter()
        backend.read()
        samples.append(time.perf_counter() - start)
    samples.sort()
    median = samples[len(samples) // 2]
    gpus = len(backend.read().gpus)
    print(f"read(): median {median * 1e6:.0f} us, p90 {samples[180] * 1e6:.0f} us over {gpus} GPU(s)")
    assert median < 0.001 * max(1, gpus)
