"""`serve` whose start finds no card (a unit started before the NVIDIA driver loaded): once one answers, the daemon
is armed as a start that found it would have been: the policy reaches that card's processes, the agents' socket
listens, and the recording starts."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from fake_pynvml import FakeNvml, GiB, gpu
from vramwatch import app
from vramwatch.backends.nvml import NvmlBackend
from vramwatch.config import load
from vramwatch.daemon import Daemon
from vramwatch.errors import BackendUnavailable
from vramwatch.trace import read_trace
from vramwatch.typing import Backend

POLICY = """
[daemon]
interval = 0.05
listen = "127.0.0.1:{port}"
record = "{record}"
[policy.actions]
critical = ["notify", "signal"]
[policy.targets]
users = ["alice"]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_card_that_answers_after_the_start_arms_the_policy_the_agents_and_the_recording(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No card at the start (the driver not loaded yet), one a second later: the policy keeps signal (it was cut
    to log and notify while no card answered), the agents' socket is bound, and the trace records the card."""
    monkeypatch.setenv("VRAMWATCH_SOCKET", str(tmp_path / "agent.sock"))
    record = tmp_path / "day.jsonl"
    cfg_file = tmp_path / "vw.toml"
    cfg_file.write_text(POLICY.format(port=_free_port(), record=record))
    cfg = load(cfg_file, {})
    opened: list[bool] = []

    def opener(_cfg: Any, _clock: Any, *, require_gpu: bool, loop: bool = False) -> tuple[Backend, bool]:
        opened.append(require_gpu)
        if len(opened) == 1:
            raise BackendUnavailable("NVML: Driver Not Loaded", reason="driver_not_loaded")
        return NvmlBackend(nvml=FakeNvml([gpu(0, total=24 * GiB, used=3 * GiB)])), False

    stop = threading.Event()
    seen: dict[str, Any] = {}

    def ready(daemon: Daemon) -> None:
        seen["daemon"] = daemon
        seen["policy_at_start"] = daemon.dispatcher.policy.critical
        seen["agents_at_start"] = daemon.agents

    lines: list[str] = []
    runner = threading.Thread(
        target=app.serve, args=(cfg,),
        kwargs={"out": lines.append, "require_gpu": True, "stop": stop, "ready": ready, "opener": opener},
    )  # fmt: skip
    runner.start()
    try:
        deadline = threading.Event()
        for _ in range(100):  # the daemon retries 1 s after the failed open, then ticks every 0.05 s
            d = seen.get("daemon")
            if d is not None and d.pipeline is not None and d.pipeline.sampler.stats.ticks >= 5:
                break
            deadline.wait(0.05)
        daemon = seen["daemon"]
        assert daemon.pipeline is not None, f"no card was opened: {opened}"
        assert seen["policy_at_start"] == {"notify"}
        assert seen["agents_at_start"] is None
        assert daemon.dispatcher.policy.critical == {"notify", "signal"}
        assert daemon.agents is not None
        assert (tmp_path / "agent.sock").exists()
    finally:
        stop.set()
        runner.join(timeout=10)
    assert not runner.is_alive()
    assert opened == [True, True]
    header, ticks = read_trace(record)
    assert header["backend"] == "nvml"
    assert len(list(ticks)) >= 5
    assert lines[-1].endswith(f"; trace written to {record}")
