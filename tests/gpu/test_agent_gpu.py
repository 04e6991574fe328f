"""The agent inside real PyTorch on a real GPU: its figures are the allocator's, its OOM observer fires.

Run on a GPU host whose Python has PyTorch with CUDA: `python -m pytest -m gpu tests/gpu/test_agent_gpu.py`.
The children run with this interpreter (`sys.executable`), which therefore needs torch.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from vramwatch.agenthost.link import AgentReport
from vramwatch.agenthost.runner import run_command

pytestmark = pytest.mark.gpu

MIB = 1 << 20


def _cuda_python() -> bool:
    probe = subprocess.run(
        [sys.executable, "-c", "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


pytest.importorskip("torch")  # cheap check first: collecting this file elsewhere must not start Pythons
if not _cuda_python():
    pytest.skip("this Python has no PyTorch with a usable CUDA device", allow_module_level=True)


def run_child(script: str, tmp_path: Path, **kwargs: object) -> tuple[int, list[AgentReport], str, str]:
    reports: list[AgentReport] = []
    err = io.StringIO()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VRAMWATCH_")}
    env["VRAMWATCH_AGENT_INTERVAL"] = "0.25"
    out_file = tmp_path / "child.out"
    out_file.touch()
    env["CHILD_OUT"] = str(out_file)  # the child writes its facts there: run_command leaves stdio alone
    rc = run_command(
        [sys.executable, "-c", script],
        socket_path=tmp_path / "no-daemon.sock",
        on_report=reports.append,
        stderr=err,
        env=env,
        **kwargs,  # type: ignore[arg-type]
    )
    return rc, reports, out_file.read_text(), err.getvalue()


ALLOCATE = """
import json, os, time, torch
x = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
torch.cuda.synchronize()
facts = {"pid": os.getpid(), "allocated": torch.cuda.memory_allocated(), "reserved": torch.cuda.memory_reserved()}
open(os.environ["CHILD_OUT"], "w").write(json.dumps(facts))
time.sleep(2.0)
"""


def test_reported_figures_are_what_the_child_allocated(tmp_path: Path):
    """Allocated and reserved bytes reported for the child equal torch.cuda.memory_allocated/reserved there."""
    rc, reports, out, _ = run_child(ALLOCATE, tmp_path)
    assert rc == 0
    facts = json.loads(out)
    stats = [r for r in reports if r.kind == "stats" and r.pid == facts["pid"]]
    assert stats, [r.kind for r in reports]
    last = stats[-1].devices[0]
    assert last.stats.allocated_bytes == facts["allocated"] >= 256 * MIB
    assert last.stats.reserved_bytes == facts["reserved"]
    assert last.gpu_uuid is not None
    assert last.gpu_uuid.startswith(("GPU-", "MIG-"))
    assert last.free_bytes is not None
    assert last.free_bytes > 0
    assert any(r.kind == "hello" and r.torch_version for r in reports)


NO_CUDA = """
import os, time, torch
time.sleep(1.0)
open(os.environ["CHILD_OUT"], "w").write(str(torch.cuda.is_initialized()))
"""


def test_the_agent_never_initialises_cuda(tmp_path: Path):
    """A process that imports torch but never uses CUDA still has CUDA uninitialised after the agent ran."""
    rc, reports, out, _ = run_child(NO_CUDA, tmp_path)
    assert rc == 0
    assert out == "False"
    assert reports == []


OOM = """
import os, time, torch
x = torch.empty(1 << 20, dtype=torch.uint8, device="cuda")
time.sleep(1.0)  # the agent arms the OOM observer at its first sample after CUDA initialisation
try:
    torch.empty(1 << 50, dtype=torch.uint8, device="cuda")
except torch.cuda.OutOfMemoryError:
    open(os.environ["CHILD_OUT"], "w").write("caught")
time.sleep(0.5)
"""


def test_the_oom_observer_fires_on_a_real_oom(tmp_path: Path):
    """A real CUDA OOM is reported by the allocator's observer with the request, and a snapshot is dumped."""
    rc, reports, out, err = run_child(OOM, tmp_path, snapshot_dir=tmp_path / "snaps")
    assert rc == 0
    assert out == "caught"
    ooms = [r.oom for r in reports if r.oom is not None]
    assert len(ooms) == 1, [r.kind for r in reports]
    oom = ooms[0]
    assert oom.observed
    assert oom.requested_bytes is not None
    assert oom.requested_bytes >= 1 << 50
    assert oom.allocated_bytes is not None
    assert oom.allocated_bytes >= 1 << 20
    assert oom.snapshot_path is not None
    with Path(oom.snapshot_path).open("rb") as f:
        snapshot = pickle.load(f)  # noqa: S301 - our own child's file
    assert "segments" in snapshot
    assert "ran out of GPU memory" in err


STEPS = """
import json, os, time, torch
model = torch.nn.Linear(1024, 1024, device="cuda")
opt = torch.optim.AdamW(model.parameters())
time.sleep(0.6)  # the agent registers its step hook at its first sample after CUDA initialisation
for step in range(12):
    x = torch.randn(4096 if step % 4 == 3 else 512, 1024, device="cuda")  # every 4th step a bigger batch
    model(x).square().mean().backward()
    opt.step()
    after = torch.cuda.memory_allocated()  # what the agent's post-step hook saw stay: before zero_grad
    opt.zero_grad(set_to_none=True)
    time.sleep(0.05)
time.sleep(0.8)
open(os.environ["CHILD_OUT"], "w").write(json.dumps({"pid": os.getpid(), "after": after}))
"""


def test_optimizer_steps_are_counted_with_their_real_peaks(tmp_path: Path):
    """Each real optimizer step is one record; the bigger batches' steps peak higher; what stays is the model
    and its optimizer state (as torch counts it right after the step)."""
    rc, reports, out, _ = run_child(STEPS, tmp_path, count_steps=True)
    assert rc == 0
    facts = json.loads(out)
    records = [s for r in reports if r.kind == "steps" and r.pid == facts["pid"] for s in r.steps]
    assert [s.last_step for s in records] == list(range(1, 13)), [(s.first_step, s.last_step) for s in records]
    big = [s.peak_allocated_bytes for s in records if s.last_step % 4 == 0]
    small = [s.peak_allocated_bytes for s in records if s.last_step % 4 != 0 and s.last_step > 1]
    assert min(big) > max(small) + 8 * MIB  # 4096 x 1024 floats of activations against 512 x 1024
    assert records[-1].allocated_bytes == facts["after"]


def test_steps_are_not_counted_unless_asked(tmp_path: Path):
    """Without count_steps no step report comes, and the trainer's peak statistics are its own."""
    rc, reports, _, _ = run_child(STEPS, tmp_path, count_steps=False)
    assert rc == 0
    assert not [r for r in reports if r.kind == "steps"]
