"""What one trainer module declares: how it is recognised, how its settings are read, how it saves now."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ...model import ProcessMeta
from ..argv import Flags, Invocation
from ..configcopy import ConfigEdit, ConfigTarget
from ..extract import Builder, Context
from ..settings import TrainerSettings

#: Whether a command line runs this trainer: its invocation, argv[0], what the reader may use, its flags.
Recognize = Callable[[Invocation, str, Context, Flags], bool]
#: Reads the trainer's settings into the builder, following the trainer's own precedence.
Read = Callable[[Invocation, Context, Builder], None]
#: Whether a live process (its metadata, its allow-listed environment) can be asked to save this way.
Detect = Callable[[ProcessMeta, Mapping[str, str]], bool]
#: For the probe: given the trainer's full argv and its settings, (a new argv, notes) that brings the run's
#: sampling phase into a short test run. Never edits files; an argv it cannot improve comes back unchanged,
#: with a note saying why.
ProbeArgv = Callable[[Sequence[str], TrainerSettings], tuple[tuple[str, ...], tuple[str, ...]]]


#: For `probe --try`: the config file a suggested change goes to and how the command runs on a copy of it, or why
#: it cannot be copied; from the command line, its settings, the change, and the working directory.
Target = Callable[[Sequence[str], TrainerSettings, ConfigEdit, str], ConfigTarget | str]


@dataclass(frozen=True, slots=True)
class ConfigCopy:
    """How `probe --try` runs the trainer on a copy of its config file with a suggested change written in.

    `keys` are the rules.toml `[rule.syntax]` keys of this trainer whose change is a config file's and can be
    copied: every rule spelt for one of them has an `[rule.apply]` entry (a test checks). `not_copied` names its
    other config-file keys and why no copy is run for them: their changes are never tried, not even as flags
    or environment variables their text may look like.
    """

    keys: frozenset[str]
    target: Target
    not_copied: tuple[tuple[str, str], ...] = ()

    def covers(self, key: str | None) -> bool:
        """Whether a change spelt under `key` lives in a config file (copied or not)."""
        return key in self.keys or key in dict(self.not_copied)


@dataclass(frozen=True, slots=True)
class SaveNow:
    """A trainer's own way to be asked to save now, checked against its source: a signal (`signum`) or a
    counter (`counter`) in the JSON file its environment variable `signal_file_env` names."""

    name: str
    summary: str
    stops_run: bool  # True: the trainer saves and then ends (or requeues) the run
    detect: Detect
    signum: int | None = None
    signal_file_env: str | None = None
    counter: str | None = None


@dataclass(frozen=True, slots=True)
class Trainer:
    """One trainer, as its module in `advice/trainers/` declares it.

    `order` places it in recognition: the registry asks trainers in ascending order and the first that
    recognises a command line names it, so a trainer with a distinctive script name comes before one that
    recognises a generic `train.py` by its marks.
    """

    id: str  # as rules.toml `[rule.syntax]` keys spell it
    name: str  # for people: "kohya-ss sd-scripts"
    order: int
    recognizes: Recognize
    read: Read
    save_now: SaveNow | None = None
    resume_hint: Callable[[ProcessMeta], str | None] | None = None  # for a trainer with no save-now
    probe_argv: ProbeArgv | None = None  # how a short test run reaches the sampling phase
    # The flag naming the directory the trainer writes its samples and checkpoints to: a probe points it at a
    # temporary directory, so that a test run never writes into the user's output directory.
    output_dir_flag: str | None = None
    # The switch that runs a phase before the first optimizer step (kohya: --sample_at_first); the probe drops
    # it to tell an OOM in that phase from one in the first training step.
    first_phase_switch: str | None = None
    # The flag that saves after every N-th optimizer step (kohya --save_every_n_steps): a probe sets it to a step
    # inside its test to measure a save the run makes only after its last step, or beyond reach. Only where
    # the save it makes is the kind the run's own saves are, under the run's other save settings.
    save_every_flag: str | None = None
    # Where its config files are and how a copy of one is run, for `probe --try`; None: none is copied.
    config_copy: ConfigCopy | None = None
