"""A stand-in trainer for `vramwatch probe`'s tests, with no torch: kohya's script name and flags, and an agent
whose allocator figures follow a memory model instead of PyTorch's.

Each step peaks at --step-gib; sampling after multiples of --sample_every_n_steps (and before step 1 with
--sample_at_first) peaks at --sample-gib; saves after multiples of --save_every_n_steps, and with --final-save
after the last step (as kohya's train_network.py always does), at --save-gib;
--leak-mib-per-step stays allocated after every step; --gradient_checkpointing halves a step's peak and
--mixed_precision bf16 takes 40 % off it. --step-gib is a step at batch 1: a batch of B holds B times its
activations (what it needs above the 2 GiB that stay allocated). The batch is --train_batch_size, or, as kohya
reads it, the `--dataset_config` TOML's (a `[[datasets]]` batch_size over `[general]`, over the command line);
each `image_dir` of that file's subsets must exist, relative to the working directory, as sd-scripts needs it.
The card holds --card-gib. A step or phase that needs more than the card raises the OOM the agent reports,
then the script exits 3 (as the benchmark workloads do), or first hangs for --hang-after-oom seconds. SIGINT
ends it with 130, as Python does.

Ways to go wrong, for the probe's failure paths: --crash-at-step N raises an error (exit 1) at step N;
--no-step-hook has the agent count no steps (its hello says so); --no-steps never reaches an optimizer step.
With --output_dir, sample images and saves are written there, as kohya does.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from vramwatch.agent.core import Agent, AgentConfig

GIB = 1 << 30
MIB = 1 << 20


class ModelProbe:
    """The agent's TorchProbe over the memory model."""

    def __init__(self, card: int, step_hook: bool = True) -> None:
        self.card = card
        self.step_hook = step_hook
        self.allocated = 2 * GIB
        self.peak = self.allocated
        self.hook = None
        self.observer = None

    def cuda_initialized(self) -> bool:
        return True

    def torch_version(self) -> str:
        return "0.0+model"

    def device_count(self) -> int:
        return 1

    def memory_stats(self, device: int) -> dict:
        reserved = max(self.peak, self.allocated)
        return {
            "allocated_bytes": {"all": {"current": self.allocated, "peak": self.peak}},
            "reserved_bytes": {"all": {"current": reserved, "peak": reserved}},
            "num_ooms": 0,
        }

    def device_identity(self, device: int) -> tuple[str, int]:
        return ("model-card", self.card)

    def mem_get_info(self, device: int) -> tuple[int, int]:
        return (self.card - max(self.peak, self.allocated), self.card)

    def attach_oom_observer(self, observer) -> bool:
        self.observer = observer
        return True

    def record_history(self, max_entries: int) -> bool:
        return False

    def dump_snapshot(self, path: str) -> bool:
        return False

    def empty_cache(self) -> bool:
        return True

    def register_step_hook(self, hook) -> bool:
        self.hook = hook
        return self.step_hook

    def current_device(self) -> int:
        return 0

    def take_step_peaks(self, device: int) -> tuple[int, int, int, int, int]:
        figures = (self.peak, self.peak, self.allocated, self.peak, 0)
        self.peak = self.allocated
        return figures

    def need(self, extra: int) -> None:
        """Allocate `extra` on top of what stays, and free it again; the OOM of a card too small."""
        if self.allocated + extra > self.card:
            if self.observer is not None:
                self.observer(0, extra, self.card, self.card - self.allocated)
            raise MemoryError
        self.peak = max(self.peak, self.allocated + extra)


def dataset_batch(path: str, given: int) -> int:
    """The largest batch size the --dataset_config TOML sets (a dataset's own over [general] over the flag);
    SystemExit when a subset's image_dir is not there (relative to the working directory)."""
    data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    general = data.get("general", {})
    batches = []
    for dataset in data.get("datasets", []):
        batches.append(dataset.get("batch_size", general.get("batch_size", given)))
        for subset in dataset.get("subsets", []):
            if not Path(subset["image_dir"]).is_dir():
                raise SystemExit(f"image_dir not found: {subset['image_dir']}")
    return max(batches, default=general.get("batch_size", given))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--max_train_steps", type=int, default=1600)
    p.add_argument("--sample_every_n_steps", type=int)
    p.add_argument("--sample_at_first", action="store_true")
    p.add_argument("--step-gib", type=float, default=8.0)
    p.add_argument("--sample-gib", type=float, default=10.0)
    p.add_argument("--save_every_n_steps", type=int)
    p.add_argument("--save-gib", type=float, default=9.0)
    p.add_argument("--final-save", action="store_true")
    p.add_argument("--leak-mib-per-step", type=float, default=0.0)
    p.add_argument("--card-gib", type=float, default=24.0)
    p.add_argument("--step-seconds", type=float, default=0.002)
    # Two of kohya's memory settings, with the effect the advice rules expect of them (roughly).
    p.add_argument("--gradient_checkpointing", action="store_true")
    p.add_argument("--mixed_precision", default="no")
    p.add_argument("--train_batch_size", type=int, default=1)
    p.add_argument("--dataset_config")
    p.add_argument("--crash-at-step", type=int)
    p.add_argument("--hang-after-oom", type=float, default=0.0)
    p.add_argument("--no-step-hook", action="store_true")
    p.add_argument("--no-steps", action="store_true")
    p.add_argument("--output_dir")
    args, _ = p.parse_known_args()
    out = Path(args.output_dir) if args.output_dir else None

    def write(name: str) -> None:
        if out is not None:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_text(name)

    probe = ModelProbe(int(args.card_gib * GIB), step_hook=not args.no_step_hook)
    agent = Agent(AgentConfig.from_env(), probe=probe)
    agent.tick()  # hello, and the step hook registered
    batch = dataset_batch(args.dataset_config, args.train_batch_size) if args.dataset_config else args.train_batch_size
    step_gib = 2 + (args.step_gib - 2) * batch
    step_gib *= 0.5 if args.gradient_checkpointing else 1.0
    step_gib *= 0.6 if args.mixed_precision in {"bf16", "fp16"} else 1.0
    step_extra = int(step_gib * GIB) - probe.allocated
    sample_extra = int(args.sample_gib * GIB) - probe.allocated
    last_tick = time.monotonic()
    try:
        if args.sample_at_first:
            probe.need(sample_extra)
            write("sample/at_first.png")
        while args.no_steps:
            time.sleep(0.05)
            agent.tick()
        for step in range(1, args.max_train_steps + 1):
            if step == args.crash_at_step:
                raise RuntimeError(f"a bug at step {step}")
            probe.need(step_extra)
            probe.allocated += int(args.leak_mib_per_step * MIB)
            probe.hook(object())
            if args.sample_every_n_steps and step % args.sample_every_n_steps == 0:
                probe.need(sample_extra)
                write(f"sample/step{step}.png")
            if args.save_every_n_steps and step % args.save_every_n_steps == 0:
                probe.need(int(args.save_gib * GIB) - probe.allocated)
                write(f"step{step}.safetensors")
            time.sleep(args.step_seconds)
            if time.monotonic() - last_tick >= 0.05:
                agent.tick()
                last_tick = time.monotonic()
        if args.final_save:
            probe.need(int(args.save_gib * GIB) - probe.allocated)
            write("last.safetensors")
    except MemoryError:
        agent.tick()
        time.sleep(0.2 + args.hang_after_oom)
        return 3
    except KeyboardInterrupt:
        return 130
    agent.tick()
    time.sleep(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
