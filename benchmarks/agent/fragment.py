"""Fragment PyTorch's caching allocator on a small budget, hold the state, then ask for slightly more.

The pattern is the one PyTorch's "Expandable Segments" note describes (batch N, then N+1):
1. fill the budget with 64 MiB tensors (each its own 64 MiB cudaMalloc segment), free them all: cached;
2. reuse each segment for a 60 MiB "activation" plus a 4 MiB tensor that stays: the allocator splits
   the segment and the 4 MiB request fits its remainder exactly (best fit), one per segment;
3. free the activations: every segment is now 60 MiB free next to 4 MiB live, a split block that cannot
   be returned to CUDA while the small tensor lives; almost all reserved memory is unallocated;
4. keep training lightly for `--hold-seconds` (small transient tensors): the state persists;
5. ask for 66 MiB tensors, half as many as there were segments, one per `--step-seconds`. Together they
   need about half of the memory that is free or cached, but no cached piece is big enough.

With the default allocator step 5 runs out of memory at once: under `vramwatch run` the fragmentation
finding must come first (during step 4). With `PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True` the
allocator unmaps the free pages inside the holes and maps them where the request fits: no OOM.
Exit status: 0 when step 5 completed, 3 when it ran out of memory. Events are JSON lines on stdout.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from _common import MIB, allocator_figures, emit, start_ballast, stop_ballast


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-gib", type=float, default=2.0, help="GPU memory left free by the ballast process")
    p.add_argument("--no-ballast", action="store_true", help="use the whole card (or an external ballast)")
    p.add_argument("--hold-seconds", type=float, default=6.0)
    p.add_argument("--step-seconds", type=float, default=0.2)
    p.add_argument("--block-mib", type=int, default=64)
    p.add_argument("--act-mib", type=int, default=60)
    p.add_argument("--pin-mib", type=int, default=4)
    p.add_argument("--grow-mib", type=int, default=66)
    args = p.parse_args()

    ballast = None if args.no_ballast else start_ballast(args.budget_gib)
    try:
        return run(args)
    finally:
        if ballast is not None:
            stop_ballast(ballast)


def run(args: argparse.Namespace) -> int:
    emit("start", pid=os.getpid(), alloc_conf=os.environ.get("PYTORCH_CUDA_ALLOC_CONF"), torch=torch.__version__)
    weight = torch.randn(256, 256, device="cuda")
    (torch.randn(512, 256, device="cuda") @ weight).sum().item()  # cuBLAS takes its own memory first
    block = args.block_mib * MIB
    blocks = []
    while torch.cuda.mem_get_info()[0] > 2 * block:
        try:
            blocks.append(torch.empty(block, dtype=torch.uint8, device="cuda"))
        except torch.cuda.OutOfMemoryError:
            break
    segments = len(blocks)
    del blocks
    emit("filled", segments=segments, **allocator_figures(torch))

    acts, pins = [], []
    for _ in range(segments):
        acts.append(torch.empty(args.act_mib * MIB, dtype=torch.uint8, device="cuda"))
        pins.append(torch.ones(args.pin_mib * MIB, dtype=torch.uint8, device="cuda"))
    del acts
    torch.cuda.synchronize()
    emit("fragmented", **allocator_figures(torch))

    deadline = time.monotonic() + args.hold_seconds
    while time.monotonic() < deadline:  # light training: small transient tensors only
        x = torch.randn(512, 256, device="cuda")
        (x @ weight).relu_().sum().item()
        time.sleep(0.05)
    emit("held", **allocator_figures(torch))

    grown = []
    wanted = segments // 2
    for i in range(wanted):
        try:
            grown.append(torch.empty(args.grow_mib * MIB, dtype=torch.uint8, device="cuda"))
        except torch.cuda.OutOfMemoryError as exc:
            emit("oom", index=i, wanted=wanted, message=str(exc).splitlines()[0], **allocator_figures(torch))
            return 3
        time.sleep(args.step_seconds)
    emit("completed", grown=len(grown), wanted=wanted, pins=len(pins), **allocator_figures(torch))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
