"""A second process that shows up late and takes memory: `--after S` seconds, then `--gib G` GiB, held.

It creates its CUDA context at start (as a second training run or a notebook would, a few hundred MiB), waits,
allocates G GiB in 1 GiB blocks (spread over `--ramp-seconds`, as a server loading a model would) and holds
them until stdin is closed (when it is a pipe) or SIGTERM/Ctrl-C, or for `--hold-seconds` and then exits 0.
If the GPU has no room, the allocation fails with a real torch.cuda.OutOfMemoryError: "oom" event, exit 3.
With `--retry-seconds R` a block that does not fit is tried again every 50 ms for up to R seconds (a
newcomer grabbing memory as soon as a neighbour whose use swings lets it go), then the OOM is real.
Events: ready, allocating, allocated, stopping, exit.
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
    p.add_argument("--ramp-seconds", type=float, default=0.0, help="spread the blocks over this many seconds")
    p.add_argument("--hold-seconds", type=float, default=None, help="hold this long, then exit 0 (default: until stop)")
    p.add_argument("--retry-seconds", type=float, default=0.0, help="retry a block that does not fit this long")
    p.add_argument("--device", type=int, default=0)
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    torch.cuda.set_device(args.device)
    torch.zeros(1, device="cuda")
    emit("ready", gib=args.gib, after=args.after, ramp_seconds=args.ramp_seconds, hold_seconds=args.hold_seconds,
         device=args.device)  # fmt: skip
    time.sleep(max(0.0, args.after))
    total = int(args.gib * GIB)
    emit("allocating", bytes=total)
    sizes = [min(GIB, total - done) for done in range(0, total, GIB)]
    # A ramp: block k is taken at k * ramp / blocks seconds, the last one at the end of the ramp.
    gap = args.ramp_seconds / max(1, len(sizes) - 1) if len(sizes) > 1 else 0.0
    started = time.monotonic()
    held = []
    retries = 0
    for k, size in enumerate(sizes):
        if gap:
            time.sleep(max(0.0, started + k * gap - time.monotonic()))
        give_up = time.monotonic() + args.retry_seconds
        while True:
            try:
                held.append(torch.empty(size, dtype=torch.uint8, device="cuda"))
                break
            except torch.cuda.OutOfMemoryError:
                if time.monotonic() >= give_up:
                    raise
                retries += 1
                time.sleep(0.05)
    torch.cuda.synchronize()
    free, _ = torch.cuda.mem_get_info()
    emit("allocated", bytes=sum(t.numel() for t in held), free_bytes=free, retries=retries)
    if args.hold_seconds is not None:
        time.sleep(max(0.0, args.hold_seconds))
        emit("stopping", reason="held")
        return 0
    emit("stopping", reason=wait_until_stopped())
    return 0


if __name__ == "__main__":
    arguments = parse()
    run(lambda: main(arguments), torch, arguments.device)
