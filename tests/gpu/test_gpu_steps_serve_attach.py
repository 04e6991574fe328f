"""On a real GPU: a run's optimizer steps, counted by its agent, reach `serve` (/status.json, /metrics) and `attach`.

Run on a GPU host with PyTorch: `python -m pytest -m gpu tests/gpu`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.gpu
pytest.importorskip("torch")

MIB = 1024**2
LEAK_MIB = 8
# A real training loop (AdamW on a small MLP) that keeps 8 MiB a step on the GPU, as a logging bug would.
CHILD = f"""
import os, time, torch
model = torch.nn.Sequential(torch.nn.Linear(1024, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 1024)).cuda()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
kept = []
print("PID", os.getpid(), flush=True)
for step in range(70):
    started = time.monotonic()
    loss = model(torch.randn(256, 1024, device="cuda")).square().mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    kept.append(torch.empty({LEAK_MIB} * 1024**2, dtype=torch.uint8, device="cuda"))
    torch.cuda.synchronize()
    time.sleep(max(0.0, 0.15 - (time.monotonic() - started)))
time.sleep(6)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> str:
    return urllib.request.urlopen(url, timeout=5).read().decode()  # noqa: S310 - a local http URL we built


def test_agent_steps_reach_serve_and_attach(tmp_path: Path) -> None:
    """A leaking run under `vramwatch run`: serve publishes its step count, peak and ~8 MiB growth a step, its
    forecast runs to the end its command line states (`--max_train_steps 70`, read from the live process), and
    attach's JSON lines carry the same figures for that pid."""
    port = _free_port()
    listen = f"127.0.0.1:{port}"
    config = tmp_path / "vramwatch.toml"
    config.write_text(f'[daemon]\nlisten = "{listen}"\n')
    env = {**os.environ, "VRAMWATCH_SOCKET": str(tmp_path / "agent.sock")}
    log = (tmp_path / "serve.log").open("w")
    serve = subprocess.Popen(
        [sys.executable, "-m", "vramwatch", "serve", "--require-gpu", "--interval", "0.5", "--listen", listen],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    attach: subprocess.Popen[str] | None = None
    try:
        for _ in range(100):
            if (tmp_path / "agent.sock").exists():
                break
            time.sleep(0.1)
        script = tmp_path / "flux_train_network.py"  # kohya's script name: the advisor reads its flags
        script.write_text(CHILD)
        child = subprocess.Popen(
            [sys.executable, "-m", "vramwatch", "run", "--", sys.executable, str(script), "--max_train_steps", "70"],
            stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        assert child.stdout is not None
        pid = int(child.stdout.readline().split()[1])
        attach = subprocess.Popen(
            [sys.executable, "-m", "vramwatch", "attach", str(pid), "--json", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
        )  # fmt: skip
        entry: dict[str, Any] | None = None
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:
            steps = json.loads(_get(f"http://{listen}/status.json")).get("steps", [])
            entry = next((s for s in steps if s.get("pid") == pid), None)
            if entry is not None and entry["step"] >= 50:
                break
            time.sleep(0.5)
        assert entry is not None, "no step figures for the run in /status.json"
        assert entry["step"] >= 50
        assert entry["step_peak_allocated_bytes"] > 8 * MIB  # the MLP, its AdamW state and the kept tensors
        assert 0.5 * LEAK_MIB * MIB <= entry["growth_bytes_per_step"] <= 1.5 * LEAK_MIB * MIB
        assert entry["outcome"] == "fits", entry["message"]  # 8 MiB a step to step 70 fits on any card
        assert "--max_train_steps 70" in entry["message"]
        metrics = _get(f"http://{listen}/metrics")
        counted = [
            line
            for line in metrics.splitlines()
            if line.startswith("vramwatch_process_optimizer_steps_total{") and f'pid="{pid}"' in line
        ]
        assert counted, "no vramwatch_process_optimizer_steps_total for the run"
        assert float(counted[0].rsplit(" ", 1)[1]) >= 50
        child.wait(60)
        child.stdout.close()
        try:
            out, _ = attach.communicate(timeout=40)  # attach ends when its run has ended
        except subprocess.TimeoutExpired:
            attach.kill()
            out, _ = attach.communicate()
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        seen = [s for line in lines for s in line.get("steps") or [] if s.get("pid") == pid]
        assert seen, "attach's JSON lines carry no step figures for the run"
        assert max(s["step"] for s in seen) >= 50
    finally:
        if attach is not None and attach.poll() is None:
            attach.kill()
        serve.terminate()
        serve.wait(10)
        log.close()
