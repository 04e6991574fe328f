"""What the advisor knows about a training run: the trainer, its memory-relevant settings, and their origin.

`recognize()` fills a `TrainerSettings` from a command line and the config files it names; the rules read
it. Every field is normalised across trainers (kohya's `--train_batch_size 4`, ai-toolkit's
`train.batch_size: 4` and OneTrainer's `"batch_size": 4` all become `batch_size=4`) and a field nobody could
read is `None`, never a guessed default. A default is filled in only where the trainer's own source code
fixes it (kohya's `--train_batch_size` defaults to 1) and every config file that could override it was read;
`sources` then says `default`.

`sources` records where each value came from, so advice can say *where* to change it: a kohya resolution
set in the `--dataset_config` TOML wins over `--resolution` on the command line, so telling the user to
pass `--resolution 512,512` would change nothing.

No raw environment value is kept except the allocator configuration (`alloc_conf`), which the fragmentation
advice needs and which holds allocator options, not secrets.
"""

from __future__ import annotations

from dataclasses import dataclass

#: A process no trainer module recognised (`advice/trainers/` holds the trainers and their ids).
UNKNOWN = "unknown"

# Where a value came from.
FROM_FLAG = "flag"  # the trainer's own command-line flag
FROM_CONFIG = "config"  # the trainer's main config file (kohya --config_file, ai-toolkit YAML, ...)
# kohya --dataset_config (wins over the command line for resolution/batch), SimpleTuner's dataloader config (its
# datasets' resolution wins over the main config's)
FROM_DATASET_CONFIG = "dataset_config"
FROM_LAUNCHER = "launcher"  # accelerate launch / torchrun options
FROM_ENV = "env"  # an allow-listed environment variable
FROM_DEFAULT = "default"  # the trainer's documented default, nothing overrode it


@dataclass(frozen=True, slots=True)
class SettingSource:
    """Where one setting was read: `kind` is one of the FROM_* values, `detail` names the flag or key.

    `file` is the config file's path when the value came from one (the advice names it); None otherwise.
    """

    setting: str
    kind: str
    detail: str
    file: str | None = None


@dataclass(frozen=True, slots=True)
class TrainerSettings:
    """The memory-relevant settings of one training run, normalised across trainers; None means unknown.

    `mixed_precision` is `no`, `fp16` or `bf16` (`no` is full fp32). `attention` is `sdpa`, `xformers`,
    `flash` or `none` (plain attention). `fp8_base` is True when the frozen base model is stored in 8 bits or
    fewer (kohya `--fp8_base`, ai-toolkit `model.quantize`, SimpleTuner `int8-quanto`, OneTrainer
    `FLOAT_8`/`NFLOAT_4`); `full_finetune` is True when the run trains the base model itself (kohya's
    `flux_train.py`, `sdxl_train.py`, ...), where there is no frozen base to store so. `resumable` is whether a
    crash loses at most a few steps (kohya: `--save_state` with a save interval). `config_format` is the
    SimpleTuner config backend (`json`, `toml`, `env`), or, for ai-toolkit, `gradient_accumulation` where the config
    spells its accumulation so: it decides how a change must be written.

    The run's schedule (for "will this run fit to the end?"): `max_train_steps` is the optimizer step the run
    ends at when the configuration fixes it in steps; `max_train_epochs` when it is given in epochs instead
    (its steps then depend on the dataset, so `max_train_steps` stays None unless the trainer's own precedence
    makes steps win). `sample_every_n_*` is how often sample (validation) images are generated and
    `save_every_n_*` how often a checkpoint is written; for these intervals 0 means the trainer is known not
    to do it on that unit (sampling off, or scheduled in the other unit or by wall-clock time), None that it
    could not be read. `sample_at_first` is whether the trainer samples before its first step; `save_at_end`
    whether it saves after its last one;
    `sample_resolution` (w, h) is set only where the main config states it plainly (ai-toolkit
    `sample.width/height`).
    """

    trainer: str = UNKNOWN
    script: str | None = None
    model_family: str | None = None  # flux, sd3, sdxl, sd, ... when the script or config says so
    full_finetune: bool | None = None  # the run trains the base model itself: no frozen base to store in 8 bits
    batch_size: int | None = None
    grad_accum: int | None = None
    resolution: tuple[int, int] | None = None  # (width, height); the largest when a run trains several
    mixed_precision: str | None = None
    gradient_checkpointing: bool | None = None
    optimizer: str | None = None  # as the trainer spells it
    attention: str | None = None
    fp8_base: bool | None = None
    blocks_to_swap: int | None = None  # kohya: transformer blocks kept in CPU memory between uses
    layer_offload_fraction: float | None = None  # OneTrainer: share of layers offloaded to CPU memory
    cache_latents: bool | None = None
    cache_text_encoder_outputs: bool | None = None
    network_dim: int | None = None  # LoRA rank
    alloc_conf: str | None = None  # PYTORCH_ALLOC_CONF / PYTORCH_CUDA_ALLOC_CONF, "" when known unset
    alloc_conf_var: str | None = None  # which of the two variables the process uses
    resumable: bool | None = None
    max_train_steps: int | None = None
    max_train_epochs: int | None = None
    sample_every_n_steps: int | None = None  # 0: known not to sample on steps
    sample_every_n_epochs: int | None = None  # 0: known not to sample on epochs
    sample_at_first: bool | None = None
    save_every_n_steps: int | None = None  # 0: known not to save on steps
    save_every_n_epochs: int | None = None  # 0: known not to save on epochs
    save_at_end: bool | None = None  # the trainer saves once more after its last step, whatever the intervals
    sample_resolution: tuple[int, int] | None = None  # (width, height); the largest when several
    config_format: str | None = None
    config_files: tuple[str, ...] = ()  # every config file read, in order
    sources: tuple[SettingSource, ...] = ()
    notes: tuple[str, ...] = ()  # what could not be read and why, and trainer gotchas found on the way

    def source_of(self, setting: str) -> SettingSource | None:
        """Where `setting` came from; the last record wins, as the trainers' own precedence does."""
        found = None
        for source in self.sources:
            if source.setting == setting:
                found = source
        return found

    @property
    def resolution_max(self) -> int | None:
        """The longer side of the training resolution: activation memory grows with its square."""
        return None if self.resolution is None else max(self.resolution)

    @property
    def optimizer_8bit(self) -> bool | None:
        """True when the optimizer keeps its state in 8 bits or fewer (AdamW8bit, adamw_bnb_8bit, ...)."""
        if self.optimizer is None:
            return None
        name = self.optimizer.lower().replace("-", "").replace("_", "")
        return any(tag in name for tag in ("8bit", "4bit", "fp8", "bnb8"))

    @property
    def optimizer_adam_unquantized(self) -> bool | None:
        """True for a plain Adam/AdamW whose two moments are kept in 32 or 16 bits: the case 8-bit Adam shrinks."""
        if self.optimizer is None:
            return None
        name = self.optimizer.lower()
        if self.optimizer_8bit or "adafactor" in name or "came" in name:
            return False
        # Adaptive/schedule-free Adam variants change the learning-rate behaviour; swapping them is not a
        # memory setting, so only a plain Adam/AdamW counts. Nor OneTrainer's "Advanced" ones (ADAMW_ADV,
        # ADOPT_ADV: adv_optm), whose states it may already keep factored or in low precision (`factored`,
        # `state_precision`): 8-bit Adam is no known saving over them.
        return "adam" in name and not any(tag in name for tag in ("prodigy", "schedule", "dadapt", "_adv"))

    @property
    def optimizer_state_bits(self) -> int | None:
        """The bits of each of Adam's moments: 16 in a bf16 Adam (SimpleTuner's default `adamw_bf16`), else 32."""
        if self.optimizer is None:
            return None
        return 16 if "bf16" in self.optimizer.lower() else 32

    @property
    def samples_during_run(self) -> bool | None:
        """Whether the run generates sample images at all (before its first step or on an interval); None when
        any part of the sampling schedule is unknown and none of the known parts samples."""
        parts = (self.sample_every_n_steps, self.sample_every_n_epochs, self.sample_at_first)
        if any(bool(p) for p in parts):
            return True
        return None if any(p is None for p in parts) else False

    @property
    def alloc_expandable(self) -> bool | None:
        """Whether the allocator already runs with `expandable_segments:True`; None when the env is unknown."""
        return None if self.alloc_conf is None else _alloc_option(self.alloc_conf, "expandable_segments") == "true"

    @property
    def alloc_max_split(self) -> bool | None:
        """Whether `max_split_size_mb` is already set; None when the env is unknown."""
        return None if self.alloc_conf is None else _alloc_option(self.alloc_conf, "max_split_size_mb") is not None

    @property
    def offloading(self) -> bool | None:
        """Whether part of the model already lives in CPU memory between uses (block swap / layer offload)."""
        known = [v for v in (self.blocks_to_swap, self.layer_offload_fraction) if v is not None]
        return None if not known else any(v > 0 for v in known)


def _alloc_option(conf: str, key: str) -> str | None:
    """The value of `key` in an allocator conf string (`opt:val,opt2:val2`), lower-cased; None if absent."""
    for part in conf.split(","):
        name, sep, value = part.partition(":")
        if sep and name.strip().lower() == key:
            return value.strip().lower()
    return None
