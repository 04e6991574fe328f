"""Asking a trainer to save *now*, in each trainer's own language: the "save-now" adapters, as data.

Each trainer's mechanism is declared in its module in `advice/trainers/` (its `SaveNow`); this module adds
the agent's, orders them and carries them out. Every mechanism was checked against the trainer's source
(see docs/actions.md for files and lines):

- `agent`: a process running the vramwatch agent (which sets `VRAMWATCH_AGENT` in its environment and
  installs a SIGUSR2 handler) gets SIGUSR2; the agent runs the save callback the trainer registered. Saves
  and continues.
- `simpletuner`: SimpleTuner's `train.py` polls the JSON file named by `SIMPLETUNER_ACCELERATE_SIGNAL_FILE`
  and checkpoints at the next optimizer step when its `manual_checkpoint` counter grows. We increment the
  counter (atomic replace, so the poller never reads half a file). Saves and continues; no signal at all.
- `onetrainer`: OneTrainer's CLI (`scripts/train.py`) catches KeyboardInterrupt (SIGINT) around
  `trainer.train()` and, with `backup_before_save` (on by default), writes a backup and the final model, then
  exits. Stops the run (resume with `continue_last_backup`).
- `transformers_jit`: transformers' Trainer with `enable_jit_checkpoint=True` handles SIGTERM: after a 3 s
  `kill_wait` it saves a checkpoint at the next step boundary and stops training. Stops the run.
- `lightning_slurm`: Lightning under SLURM with `auto_requeue` handles SIGUSR1: it saves an HPC checkpoint
  and runs `scontrol requeue`, so the job restarts from it. Stops this run (it is requeued).

Adapters that stop the run are used only when the policy allows it (`allow_stop`). Whatever the adapter, a
signal goes out only if the target catches it (see `signals.send_signal`). kohya sd-scripts has no
save-now mechanism: `resumability_hint` says how to make its runs resumable instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from ..advice.trainers import REGISTRY, SaveNow
from ..agent.protocol import ENV_AGENT
from ..model import ActionResult, ProcessKey, ProcessMeta
from .signals import PROC, StartTimeOf, psutil_start_time, read_status, send_signal, verify_identity


@dataclass(frozen=True, slots=True)
class SaveNowAdapter(SaveNow):
    """One trainer's way to be asked to save now (its `SaveNow`), and the means to carry it out."""

    @classmethod
    def of(cls, spec: SaveNow) -> SaveNowAdapter:
        return cls(**{f.name: getattr(spec, f.name) for f in fields(SaveNow)})

    def trigger(
        self,
        key: ProcessKey,
        *,
        proc_root: Path = PROC,
        dry_run: bool = False,
        force: bool = False,
        env: Mapping[str, str] | None = None,
        start_time_of: StartTimeOf = psutil_start_time,
        tolerance_seconds: float = 1.0,
    ) -> ActionResult:
        """Ask `key` to save; never raises. File adapters need the target's `env` (`environ.read_environ`)."""
        if self.signum is not None:
            return send_signal(
                key, self.signum, proc_root=proc_root, dry_run=dry_run, force=force, start_time_of=start_time_of,
                tolerance_seconds=tolerance_seconds, action="save_now", adapter=self.name,
            )  # fmt: skip
        return self._bump_counter_file(
            key, env or {}, proc_root=proc_root, dry_run=dry_run, start_time_of=start_time_of,
            tolerance_seconds=tolerance_seconds,
        )  # fmt: skip

    def _bump_counter_file(
        self,
        key: ProcessKey,
        env: Mapping[str, str],
        *,
        proc_root: Path,
        dry_run: bool,
        start_time_of: StartTimeOf,
        tolerance_seconds: float,
    ) -> ActionResult:
        def result(done: bool, reason: str, *, dry: bool = False) -> ActionResult:
            return ActionResult("save_now", done, reason, process=key, adapter=self.name, dry_run=dry)

        var, counter = self.signal_file_env or "", self.counter or ""
        path_text = env.get(var)
        if not path_text:
            return result(False, f"pid {key.pid} has no {var} in its environment; nothing to write")
        identity = verify_identity(key, start_time_of=start_time_of, tolerance_seconds=tolerance_seconds)
        if not identity.ok:
            return result(False, f"{identity.reason}; signal file not touched")
        status = read_status(key.pid, proc_root)
        if status is None or status.uid is None:
            return result(False, f"cannot read the owner of pid {key.pid}; signal file not touched")
        if dry_run:
            return result(False, f"dry-run: would increment {counter} in {var}", dry=True)
        try:
            count = bump_counter(Path(path_text), counter, owner_uid=status.uid)
        except (OSError, ValueError, TypeError) as exc:
            return result(False, f"could not update {var} of pid {key.pid}: {exc}")
        return result(True, f"{counter} of pid {key.pid} raised to {count}; it saves at its next step")


def bump_counter(path: Path, counter: str, *, owner_uid: int) -> int:
    """Increment `counter` in the JSON object at `path`, replacing the file atomically; the new value.

    The path comes from another user's environment, and the daemon may run as root, so it is handled as
    untrusted: the file must already exist, be a regular file (not a symlink) owned by `owner_uid`, in a
    directory owned by `owner_uid` (or a sticky world-writable one such as /tmp). The directory is pinned
    by a file descriptor, so swapping a path component for a symlink after the checks changes nothing.
    Other keys in the object are kept; a file that is not a JSON object is left alone (TypeError).
    """
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        dir_stat = os.fstat(dir_fd)
        sticky_shared = dir_stat.st_mode & stat.S_ISVTX and dir_stat.st_mode & stat.S_IWOTH
        if dir_stat.st_uid != owner_uid and not sticky_shared:
            raise ValueError(f"{path.parent} is not owned by uid {owner_uid}")
        st = os.stat(path.name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != owner_uid:
            raise ValueError(f"{path} is not a regular file owned by uid {owner_uid}")
        fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read(1 << 20)
        payload = json.loads(raw) if raw.strip() else {}
        if not isinstance(payload, dict):
            raise TypeError(f"{path} does not hold a JSON object")
        try:
            current = int(payload.get(counter, 0))
        except (TypeError, ValueError):
            current = 0
        payload[counter] = current + 1
        _replace(dir_fd, path.name, json.dumps(payload).encode(), st)
        return current + 1
    finally:
        os.close(dir_fd)


def _replace(dir_fd: int, name: str, data: bytes, like: os.stat_result) -> None:
    tmp = f".{name}.vramwatch-{os.getpid()}-{secrets.token_hex(6)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            with contextlib.suppress(PermissionError):  # only root may give the file back to its owner
                os.fchown(handle.fileno(), like.st_uid, like.st_gid)
            os.fchmod(handle.fileno(), stat.S_IMODE(like.st_mode))
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def _has_agent(_meta: ProcessMeta, env: Mapping[str, str]) -> bool:
    return env.get(ENV_AGENT, "") not in ("", "0")


AGENT = SaveNowAdapter(
    "agent", "the vramwatch agent's SIGUSR2 handler runs the trainer's registered save callback",
    stops_run=False, detect=_has_agent, signum=signal.SIGUSR2,
)  # fmt: skip
#: In the order they are tried: the agent, then the trainers' own, those that save and go on before those
#: that stop the run (a stable sort keeps the registry's order within each).
ADAPTERS: tuple[SaveNowAdapter, ...] = (
    AGENT,
    *sorted((SaveNowAdapter.of(t.save_now) for t in REGISTRY if t.save_now is not None), key=lambda a: a.stops_run),
)
ADAPTER_NAMES = tuple(a.name for a in ADAPTERS)


def adapter(name: str) -> SaveNowAdapter:
    """The adapter called `name`; KeyError if there is none."""
    for candidate in ADAPTERS:
        if candidate.name == name:
            return candidate
    raise KeyError(name)


def custom_adapter(signum: int) -> SaveNowAdapter:
    """A plain signal for a trainer of the user's own that handles it (policy `fallback_signal`)."""
    return SaveNowAdapter(
        "custom", f"the policy's fallback signal {signal.Signals(signum).name}", stops_run=False,
        detect=lambda _meta, _env: True, signum=signum,
    )  # fmt: skip


def choose_adapter(
    meta: ProcessMeta,
    env: Mapping[str, str] | None,
    *,
    allowed: Sequence[str] = ADAPTER_NAMES,
    overrides: Sequence[tuple[re.Pattern[str], str]] = (),
) -> SaveNowAdapter | None:
    """The adapter for this process: the first override whose regex matches its command line, else the first
    allowed adapter that recognises it (agent and SimpleTuner first: they save without stopping the run).

    `env` is the target's environment as far as the daemon may read it (None: unreadable), restricted to
    the allow-list of `vramwatch.environ`.
    """
    line = " ".join(meta.cmdline or ())
    for pattern, name in overrides:
        if pattern.search(line):
            return adapter(name)
    for candidate in ADAPTERS:
        if candidate.name in allowed and candidate.detect(meta, env or {}):
            return candidate
    return None


def resumability_hint(meta: ProcessMeta) -> str | None:
    """For a run of a trainer with no save-now mechanism (kohya sd-scripts): how to make the next one
    resumable, from the trainer's module."""
    for trainer in REGISTRY:
        hint = trainer.resume_hint(meta) if trainer.resume_hint is not None else None
        if hint is not None:
            return hint
    return None
