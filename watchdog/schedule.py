"""What a trainer's configuration says of its future steps: the `steps.Schedule` a forecast is made against.

One place for it, so that `vramwatch probe`, `vramwatch run` and the daemon (`serve`, for a process whose agent
counts steps) forecast a run against the same end, sampling and saving: read from the command line and the
config files it names, through the advisor's trainer readers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .advice import TrainerSettings, recognize
from .model import ProcessMeta
from .steps import Schedule


def schedule_of(settings: TrainerSettings) -> Schedule:
    """The run's end, sampling and saving in optimizer steps, each spelt as its configuration states it.

    Intervals given in epochs stay unknown (an epoch's steps depend on the dataset's size, which the
    advisor does not read): the forecast names those phases as not measured until it has seen them. A trainer
    that saves after its last step (`TrainerSettings.save_at_end`, kohya) has that save forecast at the end.
    """
    values: dict[str, int | None] = {}
    spelling: list[tuple[str, str]] = []
    for item, setting in (
        ("max_steps", "max_train_steps"),
        ("sample_every", "sample_every_n_steps"),
        ("save_every", "save_every_n_steps"),
    ):
        value = getattr(settings, setting)
        values[item] = value if isinstance(value, int) and value > 0 else None
        source = settings.source_of(setting)
        if values[item] is not None and source is not None:
            detail = f"{source.detail} {value}" if source.detail.startswith("--") else source.detail
            spelling.append((item, detail))
    return Schedule(
        max_steps=values["max_steps"],
        sample_every=values["sample_every"],
        sample_at_first=settings.sample_at_first is True,
        save_every=values["save_every"],
        spelling=tuple(spelling),
        save_at_end=settings.save_at_end is True,
    )


def process_schedule(
    meta: ProcessMeta, *, tree_argvs: Sequence[Sequence[str]] = (), env: Mapping[str, str] | None = None
) -> Schedule:
    """The schedule of a process the daemon sees, read as the advisor reads it for that process's advice (its
    command line, its launchers' and the allow-listed variables of its environment, `environ.py`); empty (no
    end, no phase announced) when its command line cannot be read or names no trainer the advisor knows."""
    if meta.cmdline is None:
        return Schedule()
    return schedule_of(recognize(meta.cmdline, cwd=meta.cwd, tree_argvs=tree_argvs, env=env))
