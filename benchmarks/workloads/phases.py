"""A process whose GPU memory follows a script of phases: a model server, a notebook, a two-stage trainer start.

    python3 benchmarks/workloads/phases.py --script "idle 90; load 6 8; hold 100; unload; idle 60; load 6 8; hold"

What these processes do to the card is take memory, hold it, give some or all of it back and take it again:
ComfyUI and model servers load a checkpoint when asked and unload it when idle or when another needs the room;
a Flux LoRA trainer loads its text encoders, caches the prompts' embeddings, frees the encoders and only then
loads the diffusion model (often converting it layer by layer, so that load takes tens of seconds). The phases,
separated by `;`:

  load G S   take G GiB more in 256 MiB tensors, spread evenly over S seconds (0: at once)
  hold S     keep what is held for S seconds (without S: until stdin closes or SIGTERM)
  idle S     the same as hold (reads better at the bare CUDA context)
  until T    hold until CLOCK_MONOTONIC passes T (time.monotonic(), the host's clock: a driver script sets the
             moment a phase begins, whenever the process became ready)
  free G     let go of the newest G GiB and give it back to the driver (`empty_cache()`)
  unload     let go of everything and give it back: the process keeps only its CUDA context

Events: ready, phase (each phase as it begins, with `held_bytes` after it and the allocator's figures), exit. A
load that does not fit is a real torch.cuda.OutOfMemoryError: "oom" event, exit 3.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import GIB, emit, memory_summary, run, wait_until_stopped

CHUNK = 256 << 20
OPS = {"load": 2, "hold": 1, "idle": 1, "until": 1, "free": 1, "unload": 0}


def parse_script(text: str) -> list[tuple[str, list[float]]]:
    """'load 6 8; hold' -> [("load", [6.0, 8.0]), ("hold", [])]; a clear error for anything else."""
    phases: list[tuple[str, list[float]]] = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        op, *args = part.split()
        if op not in OPS:
            raise argparse.ArgumentTypeError(f"unknown phase {op!r} (known: {', '.join(OPS)})")
        values = [float(a) for a in args]
        needed = {"load": 2, "free": 1, "until": 1}.get(op, 0)
        if len(values) > OPS[op] or len(values) < needed:
            raise argparse.ArgumentTypeError(f"phase {part!r}: wrong number of arguments")
        phases.append((op, values))
    return phases


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--script", type=parse_script, required=True, help="phases separated by ';' (see above)")
    p.add_argument("--device", type=int, default=0)
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    torch.cuda.set_device(args.device)
    torch.zeros(1, device="cuda")
    emit("ready", phases=[[op, *values] for op, values in args.script], device=args.device)
    held: list[torch.Tensor] = []
    for op, values in args.script:
        emit("phase", phase=op, args=values, held_bytes=sum(t.numel() for t in held))
        if op == "load":
            chunks = max(1, round(values[0] * GIB / CHUNK))
            gap = values[1] / max(1, chunks - 1) if chunks > 1 else 0.0
            start = time.monotonic()
            for k in range(chunks):
                time.sleep(max(0.0, start + k * gap - time.monotonic()))
                held.append(torch.empty(CHUNK, dtype=torch.uint8, device="cuda"))
                torch.cuda.synchronize()
        elif op in {"free", "unload"}:
            keep = 0 if op == "unload" else max(0, len(held) - round(values[0] * GIB / CHUNK))
            del held[keep:]
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        elif op == "until":
            time.sleep(max(0.0, values[0] - time.monotonic()))
        elif values:  # hold / idle S
            time.sleep(values[0])
        else:
            emit("holding", held_bytes=sum(t.numel() for t in held), memory=memory_summary(torch))
            emit("stopping", reason=wait_until_stopped())
            return 0
        emit("done", phase=op, held_bytes=sum(t.numel() for t in held), memory=memory_summary(torch))
    emit("stopping", reason="script_done")
    return 0


if __name__ == "__main__":
    arguments = parse()
    run(lambda: main(arguments), torch, arguments.device)
