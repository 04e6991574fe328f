"""A real, small PyTorch training loop whose GPU memory follows a chosen scenario, for the watchdog's ground truth.

The model is a stack of Linear+GELU layers trained with AdamW on random data (real forward/backward, so the
caching allocator behaves as in training). Its sizes scale with `--budget-gib` (the memory the run is meant
to have: run `ballast.py --leave-gib B` first to make the card that small), so every scenario keeps its shape
on any card:

- warm-up: the batch ramps up over the first `--warmup-steps` steps (the allocator's cache grows), and the
  first optimizer step allocates AdamW's state;
- every `--val-every` steps a "validation" phase keeps every layer's features of a batch (~6% of the budget),
  every `--sample-every` steps a "sample images" phase allocates images (~4%): both temporary, so the cache
  may grow at the first of each (what NVML sees steps up once) and is flat afterwards.

Modes (`--mode`):
  healthy        warm-up, then flat (roughly 55-65% of the budget as NVML sees it)
  fast_leak      healthy + keeps `--leak-mb-per-s` (default 150 MB/s) of tensors alive each step until a real OOM
  slow_leak      the same at a few MB/s (default 4 MB/s)
  stepwise_leak  keeps each sampling phase's images alive: a staircase, one step per sampling phase
  plateau        grows at `--leak-mb-per-s` until ~`--plateau-frac` (93%) of the budget, then stays (no phases)
  spike_oom      the first step's batch needs more than the budget (and than the free memory): OOM at step 1
  sawtooth       healthy (no leak), but each step's batch comes from 4 buckets (0.35x-1x of a batch twice the
                 plan's, seeded) and torch.cuda.empty_cache() runs after every step: what NVML sees jumps up and
                 down from step to step (on a 24 GiB budget roughly 7-11 GiB) instead of settling
  fragment       each step carves 8 pieces, 2 MiB larger than the last step's, out of one fresh segment and
                 keeps every other one: the holes fit no later request and pin their segments, so reserved-
                 but-unallocated memory grows until an OOM with about half the reserved memory in holes. Run
                 it again with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True: the holes are unmapped
                 and the OOM comes much later, when the live pieces alone fill the card.
  recycle        healthy, plus a sequence-length warm-up on a tight card: each step also holds an attention-like
                 buffer 2 MiB larger than the last step's (from `--grow-mib`), so the last steps' smaller blocks
                 stay in the cache and reserved memory climbs by a buffer a step. When cudaMalloc fails, PyTorch
                 frees its cache and retries (num_alloc_retries): NVML sees the run fall back and climb again, a
                 sawtooth at the card's ceiling, and the run goes on. `--frozen-gib` adds a frozen base model's
                 weights (a LoRA's), `--leak-mb-per-s` a leak beneath the cache (the troughs then rise to an OOM).

Other knobs: `--accum N` (gradient accumulation: N micro-batches of backward per optimizer step),
`--val-hold-seconds S` (keep each validation phase's tensors alive S seconds, so a 1 Hz sampler sees the
spike), `--end-in-validation` (after the last step, one more validation phase with its hold, then exit 0
while still holding it), `--sample-gib G` (the sampling phase's size: more than is free makes a real OOM at
the first sampling phase), `--stop-at T` (end after the step during which CLOCK_MONOTONIC passes T, so a
driver can end a run at a planned time whatever its start-up took).

Events (JSON lines): ready, step (every step, with the allocator's figures), phase, oom (exit code 3), exit.
`--plan` prints the sizes and exits without touching the GPU.
"""

from __future__ import annotations

import argparse
import math
import random
import time

import torch
from _common import GIB, MIB, alloc_conf, emit, pace, run
from torch import nn

MODES = (
    "healthy", "fast_leak", "slow_leak", "stepwise_leak", "plateau", "spike_oom", "fragment", "sawtooth", "recycle"
)  # fmt: skip
DEFAULT_LEAK_MB_PER_S = {"fast_leak": 150.0, "slow_leak": 4.0, "plateau": 150.0}

# Shares of the budget; AdamW in fp32 costs 4x the parameters (weights, grads, two moments).
# Measured on an H200 ballasted to 24 GiB (--step-seconds 0.05): healthy reserves ~8 GiB at step 1, ~12-13 GiB
# after the warm-up ramp (the cache keeps each ramp size's blocks) and a little more at the first sampling phase.
PARAM_SHARE = 0.045
ACTIVATION_SHARE = 0.12
VALIDATION_SHARE = 0.06
SAMPLE_SHARE = 0.04
SPIKE_FACTOR = 1.3
# sawtooth: each step's rows are one of these fractions of SAWTOOTH_SCALE x plan.batch. Twice the batch so
# that the swing (activations of the largest bucket less the smallest's, ~0.16 x budget) is a few GiB, as
# with aspect-ratio buckets; the peak (~0.47 x budget with the context) stays under a healthy run's.
SAWTOOTH_BUCKETS = (0.35, 0.55, 0.75, 1.0)
SAWTOOTH_SCALE = 2.0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=MODES, default="healthy")
    p.add_argument("--steps", type=int, default=600, help="steps to run (a leak usually OOMs first)")
    p.add_argument("--step-seconds", type=float, default=0.5, help="each step starts this long after the last")
    p.add_argument("--budget-gib", type=float, default=24.0, help="the memory this run is meant to have (GiB)")
    p.add_argument("--warmup-steps", type=int, default=5)
    p.add_argument("--val-every", type=int, default=50)
    p.add_argument("--sample-every", type=int, default=100)
    p.add_argument("--leak-mb-per-s", type=float, default=None, help="leak rate (MB = 1e6 bytes per second)")
    p.add_argument("--plateau-frac", type=float, default=0.93, help="plateau mode: where growth stops")
    p.add_argument("--accum", type=int, default=1, help="micro-batches (backward passes) per optimizer step")
    p.add_argument("--val-hold-seconds", type=float, default=0.0, help="keep validation tensors alive this long")
    p.add_argument("--end-in-validation", action="store_true", help="then one more validation phase, exit 0 in it")
    p.add_argument("--sample-gib", type=float, default=None, help="size of the sampling phase (GiB)")
    p.add_argument("--stop-at", type=float, default=None, help="stop once time.monotonic() passes this value")
    p.add_argument("--grow-mib", type=float, default=64.0, help="recycle: the first step's growing buffer (MiB)")
    p.add_argument("--frozen-gib", type=float, default=0.0, help="hold a frozen base model's weights (GiB)")
    p.add_argument("--context-gib", type=float, default=0.5, help="assumed CUDA context size when unknown")
    p.add_argument("--enforce-budget", action="store_true", help="also cap PyTorch at the budget (per-process)")
    p.add_argument("--device", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plan", action="store_true", help="print the sizes and exit")
    args = p.parse_args(argv)
    if args.leak_mb_per_s is None:
        args.leak_mb_per_s = DEFAULT_LEAK_MB_PER_S.get(args.mode, 0.0)
    if args.accum < 1:
        p.error("--accum must be at least 1")
    return args


class Plan:
    """Sizes derived from the budget: width, depth, batch, phase sizes, fragmentation block sizes."""

    def __init__(self, budget_bytes: int, mode: str, sample_gib: float | None = None) -> None:
        self.budget = budget_bytes
        small = mode == "fragment"  # the fragmentation pattern, not the model, should fill that budget
        b = budget_bytes * (0.25 if small else 1.0)
        self.width = 4096 if b >= 16 * GIB else 2048 if b >= 4 * GIB else 1024 if b >= GIB // 2 else 256
        per_layer = self.width * self.width * 4
        self.layers = max(2, round(b * PARAM_SHARE / per_layer))
        # Each layer saves its input and GELU's input for backward: 8 bytes per element of width.
        self.batch = max(8, int(b * ACTIVATION_SHARE / (8 * self.width * self.layers)))
        self.val_rows = max(8, int(b * VALIDATION_SHARE / (4 * self.width * self.layers)))
        self.sample_bytes = int(b * SAMPLE_SHARE) if sample_gib is None else int(sample_gib * GIB)
        self.sawtooth_rows = [max(8, int(f * SAWTOOTH_SCALE * self.batch)) for f in SAWTOOTH_BUCKETS]
        self.param_bytes = self.layers * (per_layer + 4 * self.width)
        # fragment mode: each step carves 8 pieces of B/256 (+2 MiB per step) out of one fresh segment.
        self.frag_piece = max(12 * MIB, budget_bytes // 256 // (2 * MIB) * (2 * MIB))
        self.frag_pieces = 8

    def as_dict(self) -> dict[str, int]:
        return {
            "budget_bytes": self.budget,
            "width": self.width,
            "layers": self.layers,
            "batch": self.batch,
            "param_bytes": self.param_bytes,
            "adamw_total_bytes": 4 * self.param_bytes,
            "activation_bytes": 8 * self.width * self.layers * self.batch,
            "validation_bytes": 4 * self.width * self.layers * self.val_rows,
            "sample_bytes": self.sample_bytes,
            "fragment_piece_bytes": self.frag_piece,
            "fragment_pieces": self.frag_pieces,
            "sawtooth_rows": self.sawtooth_rows,
            "sawtooth_activation_bytes": [8 * self.width * self.layers * r for r in self.sawtooth_rows],
        }


def build(plan: Plan) -> tuple[nn.Module, torch.optim.Optimizer]:
    layers: list[nn.Module] = []
    for _ in range(plan.layers):
        layers += [nn.Linear(plan.width, plan.width), nn.GELU()]
    model = nn.Sequential(*layers).cuda()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, rows: int, width: int, accum: int = 1) -> float:
    """One optimizer step over `accum` micro-batches of `rows` (gradients add up; activations do not)."""
    total = 0.0
    for _ in range(accum):
        x = torch.randn(rows, width, device="cuda")
        loss = model(x).pow(2).mean() / accum
        loss.backward()
        total += float(loss.detach())
        del x, loss
    opt.step()
    opt.zero_grad(set_to_none=True)
    return total


@torch.no_grad()
def validation(model: nn.Module, rows: int, width: int) -> list[torch.Tensor]:
    """Every layer's features of one batch, kept as a metrics pass that collects embeddings keeps them."""
    h = torch.randn(rows, width, device="cuda")
    kept = []
    for layer in model:
        h = layer(h)
        if isinstance(layer, nn.Linear):
            kept.append(h)
    torch.cuda.synchronize()
    return kept


def validation_phase(model: nn.Module, plan: Plan, step: int, hold: float, **extra: object) -> list[torch.Tensor]:
    """Run a validation phase, report it, and hold its tensors `hold` seconds (a 1 Hz sampler sees the spike)."""
    kept = validation(model, plan.val_rows, plan.width)
    fields: dict[str, object] = {"hold_seconds": hold} if hold > 0 else {}
    emit("phase", step=step, phase="validation", bytes=sum(t.numel() * t.element_size() for t in kept),
         **fields, **extra)  # fmt: skip
    if hold > 0:
        time.sleep(hold)
    return kept


@torch.no_grad()
def sample_images(model: nn.Module, nbytes: int, width: int) -> torch.Tensor:
    """ "Decode" a few images: a float tensor of `nbytes` computed from the model's output."""
    side = 512
    count = max(1, nbytes // (3 * side * side * 4))
    z = model(torch.randn(count, width, device="cuda")).mean(dim=1)
    return torch.sigmoid(torch.randn(count, 3, side, side, device="cuda") + z.view(-1, 1, 1, 1))


def context_bytes(plan: Plan, free_at_start: int, default_gib: float) -> int:
    """The CUDA context's size if the card was ballasted to the budget (free = budget - context), else a guess."""
    guess = plan.budget - free_at_start
    return guess if 0 < guess < 4 * GIB else int(default_gib * GIB)


def main(args: argparse.Namespace) -> int:
    budget = int(args.budget_gib * GIB)
    plan = Plan(budget, args.mode, args.sample_gib)
    if args.plan:
        emit("plan", mode=args.mode, **plan.as_dict())
        return 0
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True  # speed only: memory is the same
    torch.cuda.set_device(args.device)
    torch.zeros(1, device="cuda")
    free_at_start, total = torch.cuda.mem_get_info()
    if args.enforce_budget:
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total))
    ctx = context_bytes(plan, free_at_start, args.context_gib)
    model, opt = build(plan)
    # A LoRA's frozen base model: held all along, never trained.
    frozen = torch.empty(int(args.frozen_gib * GIB), dtype=torch.uint8, device="cuda") if args.frozen_gib else None
    emit(
        "ready",
        mode=args.mode,
        steps=args.steps,
        step_seconds=args.step_seconds,
        leak_bytes_per_second=int(args.leak_mb_per_s * 1e6),
        free_at_start_bytes=free_at_start,
        total_bytes=total,
        context_estimate_bytes=ctx,
        accum=args.accum,
        val_hold_seconds=args.val_hold_seconds,
        end_in_validation=args.end_in_validation,
        stop_at=args.stop_at,
        alloc_conf=alloc_conf(),
        frozen_bytes=0 if frozen is None else frozen.numel(),
        grow_bytes=int(args.grow_mib * MIB) if args.mode == "recycle" else None,
        **plan.as_dict(),
    )

    leaked: list[torch.Tensor] = []
    leaked_bytes = 0
    kept: list[torch.Tensor] = []
    kept_bytes = 0
    leak_per_step = int(args.leak_mb_per_s * 1e6 * args.step_seconds)
    phases = args.mode != "plateau"
    buckets = random.Random(args.seed)
    done = 0  # steps completed
    for step in range(1, args.steps + 1):
        started = time.monotonic()
        if args.stop_at is not None and started >= args.stop_at:
            break
        rows = plan.batch
        if args.mode == "sawtooth":
            rows = buckets.choice(plan.sawtooth_rows)
        elif step <= args.warmup_steps:
            rows = max(8, plan.batch * step // args.warmup_steps)
        if args.mode == "spike_oom" and step == 1:
            # Needs more than the budget and more than the card has free, so it OOMs on any card.
            need = SPIKE_FACTOR * max(budget, free_at_start)
            rows = math.ceil(need / (8 * plan.width * plan.layers))
        phase = "train"
        grown = None
        if args.mode == "recycle":
            # Longer sequences, larger attention scores: 2 MiB more than the last step's buffer, so no cached block
            # fits it and cudaMalloc is asked for a new segment (blocks over 10 MiB are rounded to 2 MiB). The
            # smaller ones stay cached until cudaMalloc fails and PyTorch frees them all and retries.
            size = (int(args.grow_mib * MIB) + (step - 1) * 2 * MIB) // (2 * MIB) * (2 * MIB)
            grown = torch.empty(size, dtype=torch.uint8, device="cuda").fill_(1)
        loss = train_step(model, opt, rows, plan.width, args.accum)
        del grown

        if args.mode == "fragment":
            phase = "fragment"
            # Pieces grow by 2 MiB a step, so no piece fits a hole an earlier step left. One fresh segment is
            # cudaMalloc'ed and returned to the cache, the pieces are carved from it back to back, and every
            # other piece lives on: the freed ones become holes between live pieces, which the allocator can
            # neither reuse (too small) nor release (the segment is in use). Reserved-but-unallocated memory
            # grows by half a segment each step until cudaMalloc fails: an OOM made of holes.
            piece = plan.frag_piece + (step - 1) * 2 * MIB
            segment = torch.empty(piece * plan.frag_pieces, dtype=torch.uint8, device="cuda")
            del segment
            pieces = [torch.empty(piece, dtype=torch.uint8, device="cuda") for _ in range(plan.frag_pieces)]
            kept += pieces[::2]
            kept_bytes += piece * len(pieces[::2])
            del pieces
        if phases and args.val_every and step % args.val_every == 0:
            validation_phase(model, plan, step, args.val_hold_seconds)  # freed (to the cache) once it returns
            phase = "validation"
        if phases and args.sample_every and step % args.sample_every == 0:
            images = sample_images(model, plan.sample_bytes, plan.width)
            emit("phase", step=step, phase="sample_images", bytes=images.numel() * images.element_size())
            phase = "sample_images"
            if args.mode == "stepwise_leak":
                leaked.append(images)  # the previews are kept in a list "for the report"
                leaked_bytes += images.numel() * images.element_size()
            del images

        grow = leak_per_step if args.mode in ("fast_leak", "slow_leak", "plateau", "recycle") else 0
        if args.mode == "plateau":
            room = int(args.plateau_frac * budget) - ctx - torch.cuda.memory_reserved()
            grow = max(0, min(grow, room)) // (2 * MIB) * (2 * MIB)
        if grow:
            leaked.append(torch.full((grow // 4,), float(step), device="cuda"))  # e.g. per-step losses kept
            leaked_bytes += grow // 4 * 4

        torch.cuda.synchronize()
        emit(
            "step",
            step=step,
            phase=phase,
            rows=rows,
            loss=loss,
            leaked_bytes=leaked_bytes,
            kept_bytes=kept_bytes,
            allocated_bytes=torch.cuda.memory_allocated(),
            reserved_bytes=torch.cuda.memory_reserved(),
            inactive_split_bytes=torch.cuda.memory_stats().get("inactive_split_bytes.all.current"),
            num_alloc_retries=torch.cuda.memory_stats().get("num_alloc_retries"),
            seconds=time.monotonic() - started,
        )
        done = step
        pace(started, args.step_seconds)
        if args.mode == "sawtooth":
            # The cache goes back to the driver after every step: the next bucket's blocks are cudaMalloc'ed
            # afresh, so NVML sees this step's size until the next one (a sawtooth, not a plateau).
            torch.cuda.empty_cache()
    if args.end_in_validation:
        # Exit 0 while the phase's tensors are still held: the spike is the last state a sampler sees.
        held = validation_phase(model, plan, done, args.val_hold_seconds, final=True)
        emit("stopping", reason="end_in_validation", held_bytes=sum(t.numel() * t.element_size() for t in held))
    return 0


if __name__ == "__main__":
    arguments = parse()
    run(lambda: main(arguments), torch, arguments.device)
