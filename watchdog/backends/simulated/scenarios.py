"""The catalogue of simulated stories: each scenario builds a world (`engine.World`) and names what happens.

Adding a scenario is one `Scenario(name, description, horizon_seconds, build)` in `SCENARIOS`, with its build
function here; the engine and the backend stay as they are.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .engine import CONTEXT_BYTES, LARGE_SEGMENT_BYTES, SMALL_SEGMENT_BYTES, Demand, GiB, MiB, Proc, World, round_up

RTX_4090 = ("Simulated RTX 4090", 24 * GiB, 332 * MiB)
H100 = ("Simulated H100 80GB HBM3", 80 * GiB, 542 * MiB)


def _argv(line: str) -> tuple[str, ...]:
    return tuple(shlex.split(line))


# Command lines as the trainers' users type them (kohya sd-scripts flags), for the advisor and redaction.
_KOHYA_FLUX = _argv(
    "python flux_train_network.py --pretrained_model_name_or_path /models/flux1-dev-fp8.safetensors"
    " --ae /models/ae.safetensors --network_module networks.lora_flux --network_dim 16 --train_batch_size 4"
    " --mixed_precision bf16 --fp8_base --gradient_checkpointing --optimizer_type adamw8bit --learning_rate 1e-4"
    " --max_train_epochs 16 --sample_every_n_epochs 1"
)
_KOHYA_SDXL = _argv(
    "sdxl_train_network.py --pretrained_model_name_or_path /models/sd_xl_base_1.0.safetensors"
    " --network_module networks.lora --train_batch_size 2 --mixed_precision fp16 --gradient_checkpointing"
    " --max_token_length 225 --log_with wandb --wandb_api_key sim-not-a-real-key"
)

_CUSTOM = ("python", "train.py", "--config", "configs/lora.yaml", "--batch_size", "8")


def _flux_warmup(w: World, at: float = 0.0) -> Demand:
    """Weights in chunks, the first step, the optimizer's state, first validation and first samples."""
    return Demand(
        steps=(
            (at + 3, w.vary(3 * GiB)),
            (at + 5, w.vary(3 * GiB)),
            (at + 7, w.vary(3 * GiB)),
            (at + 9, w.vary(2.3 * GiB)),
            (at + 15, w.vary(3.8 * GiB)),
            (at + 25, w.vary(0.9 * GiB)),
            (at + 120, w.vary(0.7 * GiB)),
        ),
        # Sample images every 5 minutes: the VAE decode's peak is reserved once, then reused.
        spikes=((at + 240, 300, 12, w.vary(1.6 * GiB)),),
    )


def _flat(w: World, nbytes: float, *, at: float = 3.0) -> Demand:
    """Weights, then the first training step: ~70% of the final figure, then the rest."""
    return Demand(steps=((at, w.vary(0.7 * nbytes)), (at + 8, w.vary(0.3 * nbytes))))


def _steady(w: World) -> None:
    for _ in range(2):
        w.add_gpu(*RTX_4090)
    launcher = w.spawn(
        gpu=None,
        start_t=0.0,
        name="accelerate",
        user="alice",
        cmdline=(
            "/usr/bin/python3",
            "/home/alice/.local/bin/accelerate",
            "launch",
            "--num_processes",
            "2",
            *_KOHYA_SDXL,
        ),
        cwd="/home/alice/sd-scripts",
    )
    for rank in range(2):
        w.spawn(
            gpu=rank,
            start_t=2.0 + rank * 0.5,
            name="python3",
            user="alice",
            cmdline=("/usr/bin/python3", "-u", *_KOHYA_SDXL),
            demand=Demand(
                steps=((4, w.vary(6.6 * GiB)), (10, w.vary(4.2 * GiB)), (70, w.vary(0.4 * GiB))),
            ),
            role="worker",
            parent=launcher,
            cwd="/home/alice/sd-scripts",
        )
    w.spawn(
        gpu=0,
        start_t=-600.0,
        name="python",
        user="bob",
        cmdline=("python", "train_lora.py", "--resolution", "512", "--train_batch_size", "8"),
        demand=_flat(w, 6 * GiB),
        cwd="/home/bob/lora",
    )
    w.spawn(
        gpu=1,
        start_t=-86_400.0,
        name="python3",
        user="root",
        cmdline=_argv("python3 -m uvicorn server:app --host 0.0.0.0 --port 8000"),
        demand=Demand(steps=((0, w.vary(6.5 * GiB)),)),
        role="inference",
        behaviour="idle",
        container_id=w.container_id(),
        jitter=False,
        cwd="/app",
    )


def _warmup(w: World) -> None:
    w.add_gpu(*RTX_4090)
    w.spawn(
        gpu=0,
        start_t=1.0,
        name="python",
        user="alice",
        cmdline=_KOHYA_FLUX,
        demand=_flux_warmup(w),
        behaviour="warmup",
        cwd="/home/alice/sd-scripts",
    )


def _restart_fixed(delay: float, base: float) -> Callable[[World, Proc, float], None]:
    """After an OOM, the user restarts the run with the leak fixed; the OS hands out the same pid again."""

    def restart(w: World, dead: Proc, s: float) -> None:
        if dead.record["end"] != "oom" or dead.record["role"] != "trainer" or dead.gpu is None:
            return
        w.spawn(
            gpu=dead.gpu.index,
            start_t=s + delay,
            name=dead.meta.name or "python",
            user=dead.meta.user or "alice",
            cmdline=dead.meta.cmdline or _CUSTOM,
            demand=_flat(w, base),
            role="restart",
            pid=dead.pid,
            cwd=dead.meta.cwd,
        )

    return restart


def _leaker(w: World, base: float, *, leak: float = 0.0, epoch: tuple[float, float] | None = None) -> Demand:
    flat = _flat(w, base)
    if epoch is not None:
        seconds, nbytes = epoch
        return Demand(steps=flat.steps, epoch_seconds=seconds, epoch_bytes=w.vary(nbytes), epoch_from=seconds)
    return Demand(steps=flat.steps, leak_bytes_per_second=float(w.vary(leak, 0.1)), leak_from=60.0)


def _leak_story(
    w: World,
    base: float,
    *,
    leak: float = 0.0,
    epoch: tuple[float, float] | None = None,
    segment: int = SMALL_SEGMENT_BYTES,
    second_gpu: bool = False,
) -> None:
    w.add_gpu(*RTX_4090)
    if second_gpu:
        w.add_gpu(*RTX_4090)
        w.spawn(
            gpu=1,
            start_t=-3_600.0,
            name="python",
            user="carol",
            cmdline=("python", "finetune.py", "--model", "llama-3-8b", "--lora_r", "16"),
            demand=_flat(w, 14 * GiB),
            cwd="/home/carol/ft",
        )
    w.spawn(
        gpu=0,
        start_t=0.0,
        name="python",
        user="alice",
        cmdline=_CUSTOM,
        demand=_leaker(w, base, leak=leak, epoch=epoch),
        behaviour="stepwise_leak" if epoch else "leak",
        segment_bytes=segment,
        cwd="/home/alice/project",
        on_exit=_restart_fixed(30.0, base),
    )


def _contention(w: World) -> None:
    gpu = w.add_gpu(*RTX_4090)
    w.add_gpu(*RTX_4090)
    base = w.vary(16 * GiB)
    w.spawn(
        gpu=0,
        start_t=-2.0,
        name="python",
        user="alice",
        cmdline=_KOHYA_FLUX,
        # A run in its first minutes (vramwatch saw it load), on its plateau; its first sample images (at
        # t=150 s) need 1.5 GiB more than training did. Only a young run's room can be taken: an old flat one,
        # or one never seen to move, already holds all it uses.
        demand=Demand(steps=((5, base),), spikes=((152, 300, 15, w.vary(1.5 * GiB)),)),
        cwd="/home/alice/sd-scripts",
    )
    # Another user's notebook loads a model into the room the trainer's sampling needs.
    room = gpu.total_bytes - gpu.reserved_bytes - gpu.overhead_bytes - (CONTEXT_BYTES + round_up(base, MiB * 20))
    w.spawn(
        gpu=0,
        start_t=60.0,
        name="python3",
        user="bob",
        cmdline=("python3", "-m", "ipykernel_launcher", "-f", "/run/user/1001/jupyter/kernel-4f2a.json"),
        demand=Demand(ramp_bytes=room - CONTEXT_BYTES - 400 * MiB, ramp_seconds=40.0, ramp_from=2.0),
        role="intruder",
        behaviour="growth",
        cwd="/home/bob/notebooks",
    )
    w.spawn(
        gpu=1,
        start_t=-1_800.0,
        name="python",
        user="carol",
        cmdline=("python", "train_lora.py", "--resolution", "768"),
        demand=_flat(w, 9 * GiB),
        cwd="/home/carol/lora",
    )


def _plateau(w: World) -> None:
    gpu = w.add_gpu(*RTX_4090)
    weights = w.vary(8 * GiB)
    goal = int(0.92 * gpu.total_bytes) - gpu.overhead_bytes - CONTEXT_BYTES - weights
    w.spawn(
        gpu=0,
        start_t=0.0,
        name="python",
        user="alice",
        cmdline=_KOHYA_FLUX,
        # Growth that slows down and stops short of the card (bucketed resolutions filling the cache).
        demand=Demand(steps=((3, weights),), saturate_bytes=goal, saturate_tau=150.0, saturate_from=10.0),
        behaviour="plateau",
        cwd="/home/alice/sd-scripts",
    )


def _spike_oom(w: World) -> None:
    gpu = w.add_gpu(*RTX_4090)

    def retry(w: World, dead: Proc, s: float) -> None:
        if dead.record["role"] != "trainer":
            return
        argv = list(_KOHYA_FLUX)
        argv[argv.index("--train_batch_size") + 1] = "1"
        w.spawn(
            gpu=0,
            start_t=s + 25.0,
            name="python",
            user="alice",
            cmdline=argv,
            demand=_flat(w, 17 * GiB),
            role="restart",
            cwd="/home/alice/sd-scripts",
        )

    w.spawn(
        gpu=0,
        start_t=2.0,
        name="python",
        user="alice",
        cmdline=_KOHYA_FLUX,
        # Latents are cached on the CPU first; the first step asks for more than the card has.
        demand=Demand(steps=((20, gpu.total_bytes + w.vary(2 * GiB)),)),
        behaviour="spike",
        cwd="/home/alice/sd-scripts",
        on_exit=retry,
    )


def _stale(w: World) -> None:
    for _ in range(2):
        w.add_gpu(*RTX_4090)
    for gpu, status in ((0, "stopped"), (1, "zombie")):
        w.spawn(
            gpu=gpu,
            start_t=-3 * 3_600.0 - gpu * 600,
            name="python",
            user="bob",
            cmdline=("python", "train_dreambooth.py", "--instance_prompt", "a photo of sks dog"),
            demand=Demand(steps=((0, w.vary(6 * GiB) - CONTEXT_BYTES),)),
            role="stale",
            behaviour="stale",
            ppid=1,  # its launcher is gone: re-parented to init
            status=status,
            jitter=False,
            cwd="/home/bob/dreambooth",
        )
    w.spawn(
        gpu=0,
        start_t=5.0,
        name="python",
        user="alice",
        cmdline=_CUSTOM,
        demand=_flat(w, 14 * GiB),
        cwd="/home/alice/project",
    )


def _lost_gpu(w: World) -> None:
    for rank in range(2):
        w.add_gpu(*RTX_4090)
        w.spawn(
            gpu=rank,
            start_t=-300.0,
            name="python",
            user="alice",
            cmdline=_CUSTOM,
            demand=_flat(w, 12 * GiB),
            cwd="/home/alice/project",
        )
    w.lose_gpu(1, 30.0)


def _scale(w: World, per_gpu: int = 512) -> None:
    clients: list[Proc] = []
    users = [f"user{k:02d}" for k in range(16)]
    for index in range(8):
        w.add_gpu(*H100)
        for _ in range(per_gpu):
            proc = w.spawn(
                gpu=index,
                start_t=-w.rng.uniform(60.0, 86_400.0),
                name="python3",
                user=w.rng.choice(users),
                cmdline=("python3", "worker.py", "--shard", str(len(clients))),
                # MPS clients: the MPS server holds the context, each client only its own buffers.
                demand=Demand(steps=((0, w.rng.randint(5, 50) * SMALL_SEGMENT_BYTES),)),
                role="client",
                behaviour="churn",
                context_bytes=0,
                segment_bytes=SMALL_SEGMENT_BYTES,
                jitter=False,
                kinds=frozenset({"mps"}),
            )
            clients.append(proc)

    def churn(w: World, _s: float) -> None:
        for _ in range(4):
            proc = clients[w.rng.randrange(len(clients))]
            grow = w.rng.random() < 0.5
            if not proc.alive or proc.gpu is None:
                continue
            new = proc.reserved + (SMALL_SEGMENT_BYTES if grow else -SMALL_SEGMENT_BYTES)
            if 10 * MiB <= new <= 100 * MiB and (not grow or proc.gpu.room() >= SMALL_SEGMENT_BYTES):
                w.set_bytes(proc, new, 0)

    w.on_step = churn


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named story: `build` populates a world; `horizon_seconds` is long enough to tell all of it."""

    name: str
    description: str
    horizon_seconds: float
    build: Callable[[World], None]


SCENARIOS: Mapping[str, Scenario] = MappingProxyType(
    {
        s.name: s
        for s in (
            Scenario(
                "steady",
                "2 GPUs: an accelerate job's two workers warm up then stay flat, a second trainer, an idle server",
                600.0,
                _steady,
            ),
            Scenario(
                "warmup",
                "a Flux LoRA trainer rising in steps (weights, first step, validation, samples), then flat",
                900.0,
                _warmup,
            ),
            Scenario(
                "leak",
                "a trainer leaks ~20 MB/s until it runs out of memory; restarted (same pid) without the leak",
                900.0,
                lambda w: _leak_story(w, 12 * GiB, leak=20e6, second_gpu=True),
            ),
            Scenario(
                "contention",
                "a trainer at its plateau; at 60 s another user's notebook takes the room and the trainer OOMs",
                300.0,
                _contention,
            ),
            Scenario(
                "slow_leak",
                "a trainer leaking 3 MB/s: out of memory after tens of minutes",
                3_600.0,
                lambda w: _leak_story(w, 15 * GiB, leak=3e6),
            ),
            Scenario(
                "fast_leak",
                "a trainer leaking ~150 MB/s: out of memory within two minutes",
                300.0,
                lambda w: _leak_story(w, 10 * GiB, leak=150e6, segment=LARGE_SEGMENT_BYTES),
            ),
            Scenario(
                "stepwise_leak",
                "a trainer that keeps ~700 MiB more at each 90 s epoch until it runs out of memory",
                1_800.0,
                lambda w: _leak_story(w, 12 * GiB, epoch=(90.0, 700 * MiB), segment=LARGE_SEGMENT_BYTES),
            ),
            Scenario(
                "plateau",
                "a trainer whose growth slows and stops at ~92% of the card: never runs out of memory",
                1_200.0,
                _plateau,
            ),
            Scenario(
                "spike_oom",
                "a trainer OOMs at its first step (context only, then over the card); retried at batch size 1",
                240.0,
                _spike_oom,
            ),
            Scenario(
                "stale",
                "stopped and zombie processes of an earlier run (launcher dead) hold 6 GiB each",
                300.0,
                _stale,
            ),
            Scenario(
                "lost_gpu",
                "2 GPUs training; GPU 1 falls off the bus at 30 s (up=False)",
                120.0,
                _lost_gpu,
            ),
            Scenario(
                "scale",
                "8 GPUs x 512 MPS clients of 10-100 MiB each, for benchmarks",
                60.0,
                _scale,
            ),
            Scenario(
                "scale512",
                "8 GPUs with 512 MPS clients in all (64 each), for benchmarks",
                60.0,
                lambda w: _scale(w, per_gpu=64),
            ),
        )
    }
)


def scenario_names() -> tuple[str, ...]:
    """The scenario names in registry order (the CLI lists them with their descriptions)."""
    return tuple(SCENARIOS)
