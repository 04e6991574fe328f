"""Occupy all but N GiB of a GPU, so that a big card behaves like a small one for the other workloads.

`python3 ballast.py --leave-gib 24` makes an 80 GiB H100 look like a 24 GiB RTX 4090 to whatever runs next:
NVML's free memory and the next process's cudaMalloc both see about 24 GiB. The memory is taken in blocks
(driver-visible cudaMallocs through PyTorch's allocator), topped up until the driver's free figure is within
2 MiB of the target, then held until stdin is closed (when it is a pipe) or SIGTERM/Ctrl-C arrives.
"""

from __future__ import annotations

import argparse

import torch
from _common import GIB, MIB, emit, run, wait_until_stopped


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--leave-gib", type=float, default=24.0, help="free memory to leave on the GPU (GiB)")
    p.add_argument("--device", type=int, default=0, help="CUDA device index (after CUDA_VISIBLE_DEVICES)")
    p.add_argument("--block-mib", type=int, default=1024, help="size of each block taken (MiB)")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    torch.cuda.set_device(args.device)
    torch.zeros(1, device="cuda")  # the context exists before free memory is measured
    free, total = torch.cuda.mem_get_info()
    target = int(args.leave_gib * GIB)
    block = max(2 * MIB, args.block_mib * MIB)
    held: list[torch.Tensor] = []
    if free <= target:
        emit("warning", message="the GPU already has no more free memory than --leave-gib", free_bytes=free)
    while True:
        free, _ = torch.cuda.mem_get_info()
        size = min(block, free - target) // (2 * MIB) * (2 * MIB)  # the driver maps 2 MiB pages
        if size < 2 * MIB:
            break
        try:
            held.append(torch.empty(size, dtype=torch.uint8, device="cuda"))
        except torch.cuda.OutOfMemoryError:
            # Free memory the driver reports is not always one allocation's worth: take smaller blocks.
            block //= 2
            if block < 2 * MIB:
                break
    torch.cuda.synchronize()
    free, _ = torch.cuda.mem_get_info()
    emit(
        "ready",
        held_bytes=sum(t.numel() for t in held),
        blocks=len(held),
        free_bytes=free,
        total_bytes=total,
        leave_bytes=target,
        device=args.device,
    )
    reason = wait_until_stopped()
    emit("stopping", reason=reason)
    return 0


if __name__ == "__main__":
    arguments = parse()
    run(lambda: main(arguments), torch, arguments.device)
