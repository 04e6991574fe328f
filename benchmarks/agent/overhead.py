"""What the agent costs a training step, measured in one process on one GPU.

Run under the runner so that a real listener (another process) receives the datagrams:
    python -m vramwatch.agenthost.runner -- python benchmarks/agent/overhead.py

Three measurements, all in this process:
1. direct costs: one agent sample (`tick`: memory_stats for each used device, cudaMemGetInfo, JSON,
   sendto), `memory_stats_as_nested_dict` alone and `mem_get_info` alone, each timed over many calls.
   The sample runs in the agent thread holding the GIL (and, briefly, the allocator's mutex), so its cost
   per second bounds what it can take from the training thread: `tick_seconds * rate`.
2. A/B: blocks of training steps (bf16 MLP, forward + backward + AdamW) alternating agent off / agent on
   at its 1 Hz default; the median block time per step of each, and their ratio.
3. stress: the same A/B with the agent sampling at 100 Hz, to make any contention measurable.
4. step counting (`vramwatch run`/`probe` set `VRAMWATCH_AGENT_STEPS=1`): the optimizer post-step hook's body
   (`agent.steps.StepCounter.on_step`: read the allocator's peaks, reset them, keep an entry) timed alone, and
   an A/B of blocks with the hook registered with torch and removed, alternating, in the same process.
The target is under 1 % of a step at 1 Hz, and under 1 % of a step for counting steps.
Prints one JSON line `{"event": "result", ...}`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import torch
from _common import emit
from vramwatch import agent
from vramwatch.agent.core import AgentConfig
from vramwatch.agent.probe import RealTorchProbe
from vramwatch.agent.steps import StepCounter


def timed(fn, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--batch", type=int, default=16384)
    p.add_argument("--block-steps", type=int, default=40)
    p.add_argument("--pairs", type=int, default=8)
    args = p.parse_args()

    model = torch.nn.Sequential(
        *[torch.nn.Sequential(torch.nn.Linear(args.dim, args.dim), torch.nn.GELU()) for _ in range(args.layers)]
    ).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, args.dim, device="cuda")

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x).float().square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def block() -> float:
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(args.block_steps):
            step()
        torch.cuda.synchronize()
        return (time.perf_counter() - started) / args.block_steps

    for _ in range(10):
        step()
    torch.cuda.synchronize()

    under_runner = os.environ.get("VRAMWATCH_AGENT") == "1"
    base = AgentConfig.from_env()
    running = agent.start(base)
    time.sleep(1.5)  # CUDA is up: the agent arms and starts sampling
    tick_s = timed(running.tick, 300)
    stats_s = timed(lambda: torch.cuda.memory_stats_as_nested_dict(0), 1000)
    meminfo_s = timed(lambda: torch.cuda.mem_get_info(0), 1000)

    def ab(interval: float) -> tuple[list[float], list[float]]:
        off, on = [], []
        for _ in range(args.pairs):
            agent.stop()
            off.append(block())
            agent.start(dataclasses.replace(base, interval_seconds=interval))
            on.append(block())
        return off, on

    off_1hz, on_1hz = ab(1.0)
    off_100hz, on_100hz = ab(0.01)
    agent.stop()

    # Step counting on its own (no agent thread): what the hook costs the training thread at every step.
    counter = StepCounter(RealTorchProbe())
    hook_s = timed(lambda: counter.on_step(opt), 2000)
    counter.drain()
    from torch.optim.optimizer import register_optimizer_step_post_hook as register

    hook_off, hook_on = [], []
    for _ in range(args.pairs):
        hook_off.append(block())
        handle = register(lambda o, _a, _k: counter.on_step(o))
        hook_on.append(block())
        handle.remove()
        counter.drain()  # the agent thread's 1 Hz drain, so that entries never pile up
    steps_counted = counter.steps
    step_off = statistics.median(off_1hz)
    result = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0),
        "under_runner": under_runner,
        "step_seconds_off": step_off,
        "step_seconds_on_1hz": statistics.median(on_1hz),
        "ab_ratio_1hz": statistics.median(on_1hz) / step_off - 1.0,
        "ab_spread_off": (min(off_1hz) / step_off - 1.0, max(off_1hz) / step_off - 1.0),
        "ab_ratio_100hz": statistics.median(on_100hz) / statistics.median(off_100hz) - 1.0,
        "tick_seconds": tick_s,
        "memory_stats_seconds": stats_s,
        "mem_get_info_seconds": meminfo_s,
        "share_of_time_at_1hz": tick_s * 1.0,
        "share_of_a_step_at_1hz": tick_s / max(1.0, step_off),  # at most one sample falls in a step of < 1 s
        "step_hook_seconds": hook_s,
        "step_hook_share_of_a_step": hook_s / step_off,
        "step_hook_steps_counted": steps_counted,
        "ab_ratio_step_hook": statistics.median(hook_on) / statistics.median(hook_off) - 1.0,
        "blocks": {
            "off_1hz": off_1hz,
            "on_1hz": on_1hz,
            "off_100hz": off_100hz,
            "on_100hz": on_100hz,
            "hook_off": hook_off,
            "hook_on": hook_on,
        },
    }
    emit("result", **result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
