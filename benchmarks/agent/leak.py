"""A training loop that keeps a tensor alive every step: allocated memory rises until the card is full.

Under `vramwatch run` the built-in check must call it a leak (allocated rises) before the OOM, and send a
pressure notice. 16 MiB tensors get their own cudaMalloc segments (above 10 MiB), so no split blocks and
no fragmentation muddy the picture. Exit status 3 when it ran out of memory, 0 if `--max-seconds` passed.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from _common import MIB, allocator_figures, emit, start_ballast, stop_ballast


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-gib", type=float, default=4.0)
    p.add_argument("--no-ballast", action="store_true")
    p.add_argument("--leak-mib", type=int, default=16)
    p.add_argument("--step-seconds", type=float, default=0.1)
    p.add_argument("--max-seconds", type=float, default=120.0)
    args = p.parse_args()
    ballast = None if args.no_ballast else start_ballast(args.budget_gib)
    try:
        emit("start", pid=os.getpid(), torch=torch.__version__)
        weight = torch.randn(1024, 1024, device="cuda", requires_grad=True)
        kept = []
        started = time.monotonic()
        step = 0
        while time.monotonic() - started < args.max_seconds:
            x = torch.randn(256, 1024, device="cuda")
            loss = (x @ weight).square().mean()
            loss.backward()
            try:
                kept.append(torch.empty(args.leak_mib * MIB, dtype=torch.uint8, device="cuda"))  # the leak
            except torch.cuda.OutOfMemoryError:
                emit("oom", step=step, kept=len(kept), **allocator_figures(torch))
                return 3
            step += 1
            if step % 20 == 0:
                emit("step", step=step, **allocator_figures(torch))
            time.sleep(args.step_seconds)
        emit("timeout", step=step)
        return 0
    finally:
        if ballast is not None:
            stop_ballast(ballast)


if __name__ == "__main__":
    raise SystemExit(main())
