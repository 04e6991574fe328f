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
final hidden state on the GPU (a logging bug), so memory grows by that much a step until OOM
(`--leak-mib-per-step M` sets the amount exactly).

The phases that kill runs after their steps fit, as kohya runs them after an optimizer step:

- sample images (`--sample_every_n_steps`, `--sample_every_n_epochs`, `--sample_at_first`, `--sample_prompts`):
  under torch.no_grad(), for each prompt `--s` denoising steps of the model at batch 1 at the prompt's
  resolution, then a VAE-decode-like pass whose two full-resolution feature maps scale with w*h (6 GiB at
  1024x1024 in fp32, 3 GiB under fp16/bf16, on a 24 GiB budget); its tensors are freed afterwards (the caching
  allocator keeps the blocks);
- saves (`--save_every_n_steps`, `--save_every_n_epochs`, `--save_precision`, `--save_state`): the trained
  state is converted on the GPU before it moves to the CPU and is written to `--output_dir`; the non-kohya
  `--save-extra-gib G` adds G GiB gathered on the GPU for the save, standing in for a full state save;
- the non-kohya `--base-gib G` holds G GiB of frozen weights for the whole run, standing in for the rest of
  Flux's transformer (~11 GiB with fp8, ~22 GiB in bf16): with it a run's steps can fit while its samples do not.

`--dataset_config` reads a kohya dataset config (TOML, or JSON by its suffix) as sd-scripts does: its
`resolution` and `batch_size` (a `[[datasets]]` entry over `[general]`) win over the command line's flags.
Unknown flags (e.g. `--pretrained_model_name_or_path`, `--network_module`) are accepted and ignored.
Events are JSON lines on stdout (ready, step, phase, save, oom, exit); `--plan` prints the estimates of a step,
of each sampling phase and of a save, and exits without touching the GPU. `--device cpu` runs it on the CPU
(a smoke test at tiny sizes: `--budget-gib 1 --resolution 128,128`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _common import GIB, MIB, alloc_conf, emit, pace, run
from torch import nn
from torch.utils.checkpoint import checkpoint

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the backport vramwatch itself depends on there
    import tomli as tomllib

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
# Bytes per element of activations, of the leaked hidden state and of the decode's feature maps.
ELEMENT = {"no": 4, "fp16": 2, "bf16": 2}
# A block under torch.no_grad() at its widest holds, per token and unit of width: its input, LayerNorm's output
# and three 4x-width tensors (the base Linear's output, the LoRA update, the scaled update). On the CPU (torch's
# profiler) the forward's peak grows by 56.1 B per token and unit of width in fp32, 25.4 under bf16 autocast.
SAMPLE_FORWARD_PER_TOKEN = {"no": 56, "fp16": 32, "bf16": 32}
# The decode stands in for Flux's VAE decoder: two feature maps of this many channels (on a 24 GiB budget)
# at the output resolution are alive at once: 2 x 768 x 1024 x 1024 x 4 B = 6 GiB in fp32, 3 GiB in fp16/bf16.
DECODE_CHANNELS_PER_24_GIB = 768
SAVE_DTYPES = {"float": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CHUNK = GIB  # --base-gib and --save-extra-gib are held in blocks of this size, like ballast.py's


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
    p.add_argument("--save_every_n_epochs", type=int, default=None)
    p.add_argument("--save_precision", choices=tuple(SAVE_DTYPES), default=None, help="default: as trained")
    p.add_argument("--save_state", action="store_true", help="also save the optimizer state with each save")
    p.add_argument("--output_dir", default="output")
    p.add_argument("--output_name", default="last")
    p.add_argument("--sample_every_n_steps", type=int, default=None)
    p.add_argument("--sample_every_n_epochs", type=int, default=None, help="overrides --sample_every_n_steps")
    p.add_argument("--sample_at_first", action="store_true", help="sample before the first step")
    p.add_argument("--sample_prompts", default=None, help="kohya prompt file: PROMPT --w W --h H --s STEPS --d SEED")
    p.add_argument("--gradient_accumulation_steps", type=int, default=1, help="batches per optimizer step")
    p.add_argument("--dataset_config", default=None, help="kohya dataset TOML/JSON: its resolution, batch_size win")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--leak", action="store_true", help="keep every step's hidden state on the GPU (a bug)")
    # Not kohya's: for the watchdog's test bench.
    p.add_argument("--leak-mib-per-step", type=float, default=None, help="leak exactly this much a step")
    p.add_argument("--dataset_size", type=int, default=100, help="(not kohya's) images in an epoch")
    p.add_argument("--base-gib", type=float, default=0.0, help="frozen weights held all run (rest of Flux)")
    p.add_argument("--save-extra-gib", type=float, default=0.0, help="GPU memory a save gathers (full state)")
    p.add_argument("--final-save", action="store_true", help="save after the last step, as kohya always does")
    p.add_argument("--budget-gib", type=float, default=24.0, help="card size the model is scaled for")
    p.add_argument("--step-seconds", type=float, default=0.0, help="pace steps (0: as fast as possible)")
    p.add_argument("--device", default="0", help="CUDA device index, or cpu (a smoke test)")
    p.add_argument("--plan", action="store_true", help="print the memory estimates and exit")
    args, unknown = p.parse_known_args(argv)
    if args.dataset_config:
        dataset_config(args, Path(args.dataset_config))
    return args, unknown


def dataset_config(args: argparse.Namespace, path: Path) -> None:
    """Take `resolution` and `batch_size` from a kohya dataset config as sd-scripts does (library/config_util.py):
    the file wins over the command line, a `[[datasets]]` entry over `[general]`; with several datasets the
    stand-in trains at the largest of each (the batches that decide whether a run fits)."""
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    general = data.get("general", {})
    merged = [{**general, **ds} for ds in data.get("datasets", [])] or [general]
    sizes = [
        resolution(",".join(map(str, r)) if isinstance(r, list) else str(r))
        for r in (m["resolution"] for m in merged if "resolution" in m)
    ]
    if sizes:
        args.resolution = "{},{}".format(*max(sizes, key=lambda wh: wh[0] * wh[1]))
    batches = [int(m["batch_size"]) for m in merged if "batch_size" in m]
    if batches:
        args.train_batch_size = max(batches)


def resolution(text: str) -> tuple[int, int]:
    parts = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    w, h = (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    return max(64, w // 64 * 64), max(64, h // 64 * 64)


@dataclass
class Prompt:
    text: str
    width: int
    height: int
    steps: int = 20
    seed: int | None = None


def read_prompts(path: str | None, train_size: tuple[int, int]) -> list[Prompt]:
    """kohya's prompt file (.txt): one prompt a line with `--w`, `--h`, `--s` (steps), `--d` (seed); lines starting
    with # are comments; other options (`--n`, `--l`, `--g`, ...) are ignored. kohya's defaults: 512x512, 20 steps;
    sizes are rounded down to 16 px. Without a file, one prompt at the training resolution (kohya samples nothing).
    """
    if path is None:
        return [Prompt("a photo", *train_size)]
    prompts = []
    for raw in Path(path).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        text, *options = re.split(r"\s--", line)
        prompt = Prompt(text.strip(), 512, 512)
        for option in options:
            key, _, value = option.strip().partition(" ")
            with contextlib.suppress(ValueError):
                if key == "w":
                    prompt.width = int(value)
                elif key == "h":
                    prompt.height = int(value)
                elif key == "s":
                    prompt.steps = int(value)
                elif key == "d":
                    prompt.seed = int(value)
        prompt.width = max(64, prompt.width - prompt.width % 16)
        prompt.height = max(64, prompt.height - prompt.height % 16)
        prompts.append(prompt)
    return prompts


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


def lora_params(blocks: int, rank: int) -> int:
    return blocks * rank * (WIDTH + 4 * WIDTH) * 2


def decode_channels(budget_gib: float) -> int:
    return max(1, round(DECODE_CHANNELS_PER_24_GIB * budget_gib / 24))


def leak_per_step(args: argparse.Namespace, tokens: int) -> int:
    """Bytes a step keeps: `--leak-mib-per-step`, else with `--leak` the step's last hidden state (batch x tokens x
    WIDTH, fp32, or fp16/bf16 under autocast): 6 MiB at 512x512, batch 1, bf16; ramp steps keep less."""
    if args.leak_mib_per_step is not None:
        return int(args.leak_mib_per_step * MIB)
    return args.train_batch_size * tokens * WIDTH * ELEMENT[args.mixed_precision] if args.leak else 0


def sample_bytes(args: argparse.Namespace, prompt: Prompt) -> int:
    """What a sampling phase adds for one prompt: the larger of the no-grad forward's widest point and the decode,
    plus the latent state (latents, prediction, update)."""
    tokens = (prompt.width // 8) * (prompt.height // 8)
    forward = SAMPLE_FORWARD_PER_TOKEN[args.mixed_precision] * WIDTH * tokens
    decode = 2 * decode_channels(args.budget_gib) * prompt.width * prompt.height * ELEMENT[args.mixed_precision]
    return max(forward, decode) + 3 * tokens * LATENT_CHANNELS * 4


def save_bytes(args: argparse.Namespace, n_lora: int) -> int:
    """What a save adds: the trained state converted on the GPU (and AdamW's two moments with --save_state)
    plus --save-extra-gib."""
    size = SAVE_DTYPES.get(args.save_precision or "float", torch.float32).itemsize
    state = 2 * n_lora * 4 if args.save_state else 0
    return n_lora * size + state + int(args.save_extra_gib * GIB)


def steps_per_epoch(args: argparse.Namespace) -> int:
    return max(1, math.ceil(args.dataset_size / args.train_batch_size))


def sample_due(args: argparse.Namespace, step: int) -> bool:
    """kohya's rule: before the first step with --sample_at_first; after an epoch's last step with
    --sample_every_n_epochs (which overrides --sample_every_n_steps); else after each N-th optimizer step."""
    if step == 0:
        return args.sample_at_first
    if args.sample_every_n_epochs:
        spe = steps_per_epoch(args)
        return step % spe == 0 and (step // spe) % args.sample_every_n_epochs == 0
    return bool(args.sample_every_n_steps) and step % args.sample_every_n_steps == 0


def save_due(args: argparse.Namespace, step: int) -> bool:
    if step == 0:
        return False
    if args.save_every_n_steps and step % args.save_every_n_steps == 0:
        return True
    spe = steps_per_epoch(args)
    epochs = args.save_every_n_epochs
    return bool(epochs) and step % spe == 0 and (step // spe) % epochs == 0


def first(due: Any, args: argparse.Namespace) -> int | None:
    return next((s for s in range(args.max_train_steps + 1) if due(args, s)), None)


def plan(args: argparse.Namespace, blocks: int, size: tuple[int, int], prompts: list[Prompt]) -> dict[str, Any]:
    """The estimates `--plan` prints (bytes allocated, the CUDA context not included: ~0.6 GiB of a ballast's
    24 GiB). `persistent` is what every phase sits on: the model, LoRA weights and AdamW's moments, --base-gib."""
    tokens = (size[0] // 8) * (size[1] // 8)
    est = estimate(args, blocks, tokens)
    n_lora = lora_params(blocks, args.network_dim)
    persistent = est["base_weight_bytes"] + 3 * n_lora * 4 + int(args.base_gib * GIB)
    per_block = SAVED_PER_TOKEN[args.mixed_precision] * WIDTH * tokens * args.train_batch_size
    # Backward needs about one more block's saved tensors on top (gradients of the 4x-width tensors): measured
    # 21.7 GiB peak allocated at the guide's 960x896 bucket, where activations + weights estimate 20.2 GiB.
    step = persistent + est["activation_bytes"] + per_block + 3 * args.train_batch_size * tokens * LATENT_CHANNELS * 4
    leak = leak_per_step(args, tokens)
    first_sample, first_save = first(sample_due, args), first(save_due, args)
    if first_save is None and args.final_save:
        first_save = args.max_train_steps
    samples = []
    for prompt in prompts:
        extra = sample_bytes(args, prompt)
        leaked = leak * (first_sample or 0)
        samples.append({"width": prompt.width, "height": prompt.height, "steps": prompt.steps,
                        "phase_bytes": extra, "peak_estimate_bytes": persistent + leaked + extra})  # fmt: skip
    save = save_bytes(args, n_lora)
    out: dict[str, Any] = {
        **est,
        "budget_bytes": int(args.budget_gib * GIB),
        "persistent_bytes": persistent,
        "step_peak_estimate_bytes": step,
        "leak_bytes_per_step": leak,
        "sample_first_step": first_sample,
        "sample_decode_channels": decode_channels(args.budget_gib),
        "samples": samples,
        "save_first_step": first_save,
        "save_phase_bytes": save,
        "save_peak_estimate_bytes": persistent + save + leak * (first_save or 0),
        "steps_per_epoch": steps_per_epoch(args),
    }
    gib = {"step": step, "save": out["save_peak_estimate_bytes"]}
    gib.update({f"sample_{s['width']}x{s['height']}": s["peak_estimate_bytes"] for s in samples})
    out["peak_estimate_gib"] = {k: round(v / GIB, 2) for k, v in gib.items()}
    return out


def optimizer(args: argparse.Namespace, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if args.optimizer_type.lower() == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            emit("warning", message="bitsandbytes is not installed: AdamW8bit runs as torch AdamW")
        else:
            return bnb.optim.AdamW8bit(params, lr=args.learning_rate)
    return torch.optim.AdamW(params, lr=args.learning_rate)


class Memory:
    """The caching allocator's figures on CUDA; None on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def allocated(self) -> int | None:
        return torch.cuda.memory_allocated() if self.cuda else None

    def reserved(self) -> int | None:
        return torch.cuda.memory_reserved() if self.cuda else None

    def peak(self) -> int | None:
        return torch.cuda.max_memory_allocated() if self.cuda else None

    def peak_reserved(self) -> int | None:
        return torch.cuda.max_memory_reserved() if self.cuda else None

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


@contextlib.contextmanager
def phase(mem: Memory, name: str, step: int, **fields: Any) -> Any:
    """`phase` events around a sampling or saving phase. The end event's `peak_allocated_bytes` is
    torch.cuda.max_memory_allocated() read right after the phase: the peak since the last reset of the peak
    statistics (vramwatch's agent resets them at every optimizer step; without it, since the process started).
    `new_peak` says the phase raised it, so that the figure is the phase's own peak."""
    before, peak_before, started = mem.allocated(), mem.peak(), time.monotonic()
    emit("phase", name=name, state="start", step=step, allocated_bytes=before, reserved_bytes=mem.reserved(), **fields)
    try:
        yield
    except torch.cuda.OutOfMemoryError:
        emit("phase", name=name, state="oom", step=step, seconds=time.monotonic() - started)
        raise
    mem.sync()
    peak = mem.peak()
    emit(
        "phase",
        name=name,
        state="end",
        step=step,
        seconds=time.monotonic() - started,
        allocated_before_bytes=before,
        allocated_bytes=mem.allocated(),
        reserved_bytes=mem.reserved(),
        peak_allocated_bytes=peak,
        peak_reserved_bytes=mem.peak_reserved(),
        new_peak=None if peak is None else peak > (peak_before or 0),
        **fields,
    )


def decode(latents: torch.Tensor, width: int, height: int, channels: int, dtype: torch.dtype) -> torch.Tensor:
    """A VAE-decode-like pass: the latent grid widened to `channels`, upsampled 8x to the output resolution and
    activated; the two full-resolution feature maps are alive together (2 x channels x w x h elements)."""
    grid = latents.transpose(1, 2).reshape(1, LATENT_CHANNELS, height // 8, width // 8).to(dtype)
    wide = grid.repeat(1, math.ceil(channels / LATENT_CHANNELS), 1, 1)[:, :channels]
    features = F.interpolate(wide, scale_factor=8, mode="nearest")
    del wide
    activated = F.silu(features)
    image = (activated[:, :3] + features[:, :3]).float().clamp(-1, 1)
    del features, activated
    return image


def main(args: argparse.Namespace, ignored: list[str]) -> int:
    width, height = resolution(args.resolution)
    blocks = max(2, round(BLOCKS_PER_24_GIB * args.budget_gib / 24))
    full_tokens = (width // 8) * (height // 8)
    sampling = bool(args.sample_at_first or args.sample_every_n_steps or args.sample_every_n_epochs)
    prompts = read_prompts(args.sample_prompts, (width, height)) if sampling else []
    estimates = plan(args, blocks, (width, height), prompts)
    if args.plan:
        emit("plan", blocks=blocks, width=WIDTH, tokens=full_tokens, **estimates)
        return 0
    device = torch.device("cpu" if args.device == "cpu" else f"cuda:{int(args.device.removeprefix('cuda:'))}")
    mem = Memory(device)
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    if mem.cuda:
        torch.cuda.set_device(device)
    base = [torch.zeros(min(CHUNK, n - i), dtype=torch.uint8, device=device)
            for n in [int(args.base_gib * GIB)] for i in range(0, n, CHUNK)]  # fmt: skip
    model = TinyFlux(blocks, WIDTH, args.network_dim, args.network_alpha, args.gradient_checkpointing).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = optimizer(args, params)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.mixed_precision)
    scaler = torch.amp.GradScaler(device.type, enabled=args.mixed_precision == "fp16")
    free, total = torch.cuda.mem_get_info(device) if mem.cuda else (None, None)
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
        device=str(device),
        base_bytes=sum(t.numel() for t in base),
        prompts=[[p.width, p.height, p.steps] for p in prompts],
        **{k: v for k, v in estimates.items() if k.endswith("_bytes") or k.endswith("_step")},
    )
    out_dir = Path(args.output_dir)

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def sample(step: int) -> None:
        """kohya's sample_images: each prompt denoised at batch 1 at its resolution, then decoded."""
        with phase(mem, "sample", step, prompts=len(prompts)), torch.no_grad(), autocast():
            for i, prompt in enumerate(prompts):
                gen = torch.Generator(device).manual_seed(prompt.seed if prompt.seed is not None else args.seed + i)
                tokens = (prompt.width // 8) * (prompt.height // 8)
                x = torch.randn(1, tokens, LATENT_CHANNELS, generator=gen, device=device)
                for _ in range(prompt.steps):  # Euler steps of a flow-matching sampler
                    velocity, _hidden = model(x)
                    x = x - velocity.float() / prompt.steps
                    del velocity, _hidden
                image = decode(x, prompt.width, prompt.height, decode_channels(args.budget_gib), dtype or torch.float32)
                del x, image

    def save(step: int, tag: str) -> None:
        """The trained (LoRA) state converted on the GPU, then moved to the CPU and written; --save_state adds the
        optimizer's state, --save-extra-gib the GPU memory a full state save gathers (not written: small files)."""
        with phase(mem, "save", step, precision=args.save_precision, save_state=args.save_state):
            trained = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
            to = SAVE_DTYPES.get(args.save_precision or "float")
            converted = {n: t.to(to, copy=True) for n, t in trained.items()}
            n_extra = int(args.save_extra_gib * GIB)
            gathered = [torch.ones(min(CHUNK, n_extra - i), dtype=torch.uint8, device=device)
                        for i in range(0, n_extra, CHUNK)]  # fmt: skip
            out_dir.mkdir(parents=True, exist_ok=True)
            stem = f"{args.output_name}-{tag}" if tag else args.output_name  # kohya: the final save has no tag
            path = out_dir / f"{stem}.pt"
            torch.save({n: t.cpu() for n, t in converted.items()}, path)
            written = [str(path)]
            if args.save_state:
                state_dir = out_dir / f"{stem}-state"
                state_dir.mkdir(exist_ok=True)
                moments = {f"{i}.{k}": v.clone() for i, s in enumerate(opt.state.values()) for k, v in s.items()}
                state = {"step": step, "gathered_bytes": n_extra, "optimizer": {k: v.cpu() for k, v in moments.items()}}
                torch.save(state, state_dir / "optimizer.pt")
                written.append(str(state_dir / "optimizer.pt"))
                del moments
            del trained, converted, gathered
            emit("save", step=step, path=str(path), files=written, gathered_bytes=n_extra)

    kept: list[torch.Tensor] = []
    if sample_due(args, 0):
        sample(0)
    for step in range(1, args.max_train_steps + 1):
        started = time.monotonic()
        sw, sh = RAMP[step - 1] if step <= len(RAMP) else (16, 16)
        w = max(64, width * sw // 16 // 64 * 64)
        h = max(64, height * sh // 16 // 64 * 64)
        tokens = (w // 8) * (h // 8)
        accumulate = max(1, args.gradient_accumulation_steps)
        for micro in range(accumulate):  # kohya: one optimizer step per `accumulate` batches
            if micro:  # the previous batch's tensors, freed before the next batch's forward
                del latents, noise, loss, pred, hidden  # noqa: F821 - bound by the batch before (micro > 0)
            latents = torch.randn(args.train_batch_size, tokens, LATENT_CHANNELS, device=device)
            noise = torch.randn_like(latents)
            with autocast():
                pred, hidden = model(latents + noise)
                loss = F.mse_loss(pred.float(), noise) / accumulate
            scaler.scale(loss).backward()
        scaler.step(opt)  # a real torch.optim step: vramwatch counts steps through the optimizer hooks
        scaler.update()
        opt.zero_grad(set_to_none=True)
        if args.leak_mib_per_step is not None:  # the step's hidden state, resized to exactly M MiB
            leaked = torch.zeros(int(args.leak_mib_per_step * MIB), dtype=torch.uint8, device=device)
            flat = hidden.detach().reshape(-1).view(torch.uint8)[: leaked.numel()]
            leaked[: flat.numel()].copy_(flat)
            kept.append(leaked)
        elif args.leak:
            kept.append(hidden.detach())  # kept "for the loss curve": the whole hidden state stays alive
        del pred, hidden
        mem.sync()
        emit(
            "step",
            step=step,
            bucket=[w, h],
            loss=float(loss.detach()),
            allocated_bytes=mem.allocated(),
            reserved_bytes=mem.reserved(),
            peak_allocated_bytes=mem.peak(),
            leaked_bytes=sum(t.numel() * t.element_size() for t in kept),
            seconds=time.monotonic() - started,
        )
        del latents, noise, loss
        # kohya's order after an optimizer step: sample images, then save; at an epoch's end: save, then sample.
        epoch_end = step % steps_per_epoch(args) == 0
        if sample_due(args, step) and not epoch_end:
            sample(step)
        if save_due(args, step):
            save(step, f"step{step:08d}")
        elif args.final_save and step == args.max_train_steps:
            save(step, "")
        if sample_due(args, step) and epoch_end:
            sample(step)
        pace(started, args.step_seconds)
    return 0


if __name__ == "__main__":
    arguments, unknown = parse()
    index = None if arguments.device == "cpu" else int(arguments.device.removeprefix("cuda:"))
    run(lambda: main(arguments, unknown), torch, index)
