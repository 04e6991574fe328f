"""A second process that shows up late and takes memory: `--after S` seconds, then `--gib G` GiB, held.

It creates its CUDA context at start (as a second training run or a notebook would, a few hundred MiB), waits,
allocates G GiB in 1 GiB blocks and holds them until stdin is closed (when it is a pipe) or SIGTERM/Ctrl-C.
If the GPU has no room, the allocation fails with a real torch.cuda.OutOfMemoryError: "oom" event, exit 3.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import GIB, emit, run, wait_until_stopped


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gib", type=float, required=True, help="memory to take (GiB)")
    p.add_argument("--after", type=float, default=0.0, help="seconds to wait before taking it")
    p.add_argument("--device", type=int, default=0)
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    torch.cuda.set_device(args.device)
    torch.zeros(1, device="cuda")
    emit("ready", gib=args.gib, after=args.after, device=args.device)
    time.sleep(max(0.0, args.after))
    emit("allocating", bytes=int(args.gib * GIB))
    left = int(args.gib * GIB)
    held = []
    while left > 0:
        size = min(GIB, left)
        held.append(torch.empty(size, dtype=torch.uint8, device="cuda"))
        left -= size
    torch.cuda.synchronize()
    free, _ = torch.cuda.mem_get_info()
    emit("allocated", bytes=sum(t.numel() for t in held), free_bytes=free)
    emit("stopping", reason=wait_until_stopped())
    return 0


if __name__ == "__main__":
    arguments = parse()
    run(lambda: main(arguments), torch, arguments.device)
