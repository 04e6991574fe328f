"""A stand-in for kohya-ss sd-scripts' `flux_train_network.py`: same name, kohya-style flags, real LoRA training.

The watchdog's trainer advice reads a process's command line; this script gives it a real PyTorch process with
that command line whose GPU memory responds to the flags the way a Flux LoRA run's does:

- activations scale with batch x resolution^2 (tokens = (H/8)*(W/8) latent pixels, one token each) and with
  precision (`--mixed_precision no` is fp32; fp16/bf16 autocast roughly halve them);
- `--gradient_checkpointing` (torch.utils.checkpoint, for real) keeps only each block's input;
- the frozen base model sits in fp32; only LoRA weights (`--network_dim`) train, with AdamW or AdamW8bit.

Sized for a 24 GiB card (scale with the non-kohya `--budget-gib`), around the field guide's story ("training
starts fine, runs a few steps, then stops"): the guide's flags (`--train_batch_size 4 --resolution 1024,1024
--mixed_precision no`, no `--gradient_checkpointing`) need ~1.05x the budget at full resolution. The dataset is
bucketed by aspect ratio and the batches come smallest first (`RAMP`: 512x512 up to 1024x1024 in 64-px steps,
one bucket a step), so the run climbs for about 15 steps and dies of a real torch.cuda.OutOfMemoryError (exit
code 3) when its largest buckets arrive; the caching allocator keeps the smaller buckets' blocks until a
cudaMalloc fails, so the card looks full to NVML before the OOM. A run whose biggest batch comes first dies at
step 1: nothing can warn of that, only the post-mortem. `--gradient_checkpointing --train_batch_size 1
--resolution 512,512 --mixed_precision bf16` fits with most of the card to spare. `--leak` keeps each step's
final hidden state on the GPU (a logging bug), so memory grows by that much a step until OOM.
Unknown flags (e.g. `--pretrained_model_name_or_path`, `--network_module`) are accepted and ignored.
Events are JSON lines on stdout (ready, step, save, oom, exit); `--plan` prints the size estimate and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import alloc_conf, emit, pace, run
from torch import nn
from torch.utils.checkpoint import checkpoint

LATENT_CHANNELS = 16  # Flux's VAE latent
WIDTH = 768
# The guide's flags (fp32, batch 4, no checkpointing) keep 40 B x WIDTH x tokens x 4 per block: 1.875 GiB at
# 1024x1024. 13 blocks need 24.4 GiB of activations at full resolution: just over a 24 GiB card.
BLOCKS_PER_24_GIB = 13
# Side sizes of the first steps' buckets, in 16ths of --resolution (width, height): the batches come smallest
# first, each a little larger than the one before, then every step is at full resolution.
RAMP = tuple((8 + (i + 1) // 2, 8 + i // 2) for i in range(17))
# Bytes each block saves per token and per unit of width, for backward (see Block.forward).
SAVED_PER_TOKEN = {"no": 40, "fp16": 22, "bf16": 22}


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--train_batch_size", type=int, default=1)
    p.add_argument("--resolution", default="1024,1024", help="W,H or one number")
    p.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default="no")
    p.add_argument("--optimizer_type", default="AdamW", help="AdamW or AdamW8bit (needs bitsandbytes)")
    p.add_argument("--gradient_checkpointing", action="store_true")
    p.add_argument("--network_dim", type=int, default=4)
    p.add_argument("--network_alpha", type=float, default=1.0)
    p.add_argument("--learning_rate", type=float, default=1e-4)
    p.add_argument("--max_train_steps", type=int, default=1600)
    p.add_argument("--save_every_n_steps", type=int, default=None)
    p.add_argument("--output_dir", default="output")
    p.add_argument("--output_name", default="last")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--leak", action="store_true", help="keep every step's hidden state on the GPU (a bug)")
    # Not kohya's: for the watchdog's test bench.
    p.add_argument("--budget-gib", type=float, default=24.0, help="card size the model is scaled for")
    p.add_argument("--step-seconds", type=float, default=0.0, help="pace steps (0: as fast as possible)")
    p.add_argument("--device", type=int, default=0)
    p.add_argument("--plan", action="store_true", help="print the memory estimate and exit")
    return p.parse_known_args(argv)


def resolution(text: str) -> tuple[int, int]:
    parts = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    w, h = (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    return max(64, w // 64 * 64), max(64, h // 64 * 64)


class LoRALinear(nn.Module):
    """A frozen Linear plus a trainable low-rank update, as kohya's networks.lora applies it."""

    def __init__(self, inp: int, out: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = nn.Linear(inp, out)
        self.base.requires_grad_(False)
        self.down = nn.Linear(inp, rank, bias=False)
        self.up = nn.Linear(rank, out, bias=False)
        nn.init.zeros_(self.up.weight)
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.up(self.down(x)) * self.scale


class Block(nn.Module):
    """A token-wise MLP block (LayerNorm, Linear 4x, GELU, Linear) with a residual, LoRA on both Linears.

    For backward it keeps, per token: LayerNorm's input (fp32 residual stream), the first LoRA's input, GELU's
    input and the second LoRA's input (4x width each): ~40 bytes per unit of width in fp32, ~22 under autocast.
    """

    def __init__(self, width: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.norm.requires_grad_(False)
        self.fc1 = LoRALinear(width, 4 * width, rank, alpha)
        self.fc2 = LoRALinear(4 * width, width, rank, alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyFlux(nn.Module):
    def __init__(self, blocks: int, width: int, rank: int, alpha: float, checkpointing: bool) -> None:
        super().__init__()
        self.embed = nn.Linear(LATENT_CHANNELS, width)
        self.blocks = nn.ModuleList(Block(width, rank, alpha) for _ in range(blocks))
        self.head = nn.Linear(width, LATENT_CHANNELS)
        self.embed.requires_grad_(False)
        self.head.requires_grad_(False)
        self.checkpointing = checkpointing

    def forward(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(latents)
        for block in self.blocks:
            h = checkpoint(block, h, use_reentrant=False) if self.checkpointing else block(h)
        return self.head(h), h


def estimate(args: argparse.Namespace, blocks: int, tokens: int) -> dict[str, int]:
    base = blocks * (8 * WIDTH * WIDTH + 6 * WIDTH) * 4
    per_block = SAVED_PER_TOKEN[args.mixed_precision] * WIDTH * tokens * args.train_batch_size
    if args.gradient_checkpointing:
        activations = blocks * 4 * WIDTH * tokens * args.train_batch_size + per_block
    else:
        activations = blocks * per_block
    return {"base_weight_bytes": base, "activation_bytes": activations, "total_estimate_bytes": base + activations}


def optimizer(args: argparse.Namespace, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if args.optimizer_type.lower() == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            emit("warning", message="bitsandbytes is not installed: AdamW8bit runs as torch AdamW")
        else:
            return bnb.optim.AdamW8bit(params, lr=args.learning_rate)
    return torch.optim.AdamW(params, lr=args.learning_rate)


def main(args: argparse.Namespace, ignored: list[str]) -> int:
    width, height = resolution(args.resolution)
    blocks = max(2, round(BLOCKS_PER_24_GIB * args.budget_gib / 24))
    full_tokens = (width // 8) * (height // 8)
    plan = estimate(args, blocks, full_tokens)
    if args.plan:
        emit("plan", blocks=blocks, width=WIDTH, tokens=full_tokens, **plan)
        return 0
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.cuda.set_device(args.device)
    model = TinyFlux(blocks, WIDTH, args.network_dim, args.network_alpha, args.gradient_checkpointing).cuda()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = optimizer(args, params)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.mixed_precision)
    scaler = torch.amp.GradScaler("cuda", enabled=args.mixed_precision == "fp16")
    free, total = torch.cuda.mem_get_info()
    emit(
        "ready",
        script="flux_train_network.py",
        batch=args.train_batch_size,
        resolution=[width, height],
        mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing,
        optimizer=type(opt).__name__,
        network_dim=args.network_dim,
        blocks=blocks,
        lora_params=sum(p.numel() for p in params),
        free_bytes=free,
        total_bytes=total,
        ignored_args=ignored,
        alloc_conf=alloc_conf(),
        **plan,
    )
    out_dir = Path(args.output_dir)
    kept: list[torch.Tensor] = []
    for step in range(1, args.max_train_steps + 1):
        started = time.monotonic()
        sw, sh = RAMP[step - 1] if step <= len(RAMP) else (16, 16)
        w = max(64, width * sw // 16 // 64 * 64)
        h = max(64, height * sh // 16 // 64 * 64)
        tokens = (w // 8) * (h // 8)
        latents = torch.randn(args.train_batch_size, tokens, LATENT_CHANNELS, device="cuda")
        noise = torch.randn_like(latents)
        autocast = torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with autocast:
            pred, hidden = model(latents + noise)
            loss = F.mse_loss(pred.float(), noise)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        if args.leak:
            kept.append(hidden.detach())  # kept "for the loss curve": the whole hidden state stays alive
        del pred, hidden
        torch.cuda.synchronize()
        emit(
            "step",
            step=step,
            bucket=[w, h],
            loss=float(loss.detach()),
            allocated_bytes=torch.cuda.memory_allocated(),
            reserved_bytes=torch.cuda.memory_reserved(),
            peak_allocated_bytes=torch.cuda.max_memory_allocated(),
            seconds=time.monotonic() - started,
        )
        if args.save_every_n_steps and step % args.save_every_n_steps == 0:
            out_dir.mkdir(parents=True, exist_ok=True)
            path = out_dir / f"{args.output_name}-step{step:08d}.pt"
            torch.save({name: p.detach().cpu() for name, p in model.named_parameters() if p.requires_grad}, path)
            emit("save", step=step, path=str(path))
        pace(started, args.step_seconds)
    return 0


if __name__ == "__main__":
    arguments, unknown = parse()
    run(lambda: main(arguments, unknown), torch, arguments.device)
