"""The one reader of another process's environment, and the one list of what vramwatch may read there.

A trainer's environment carries tokens and keys (`HF_TOKEN`, `WANDB_API_KEY`, cloud credentials): every
variable not named here stays unread and unkept. The list is short and each entry says who needs it:

- the advisor: the allocator's settings, accelerate's precision, SimpleTuner's choice of config
  (`SIMPLETUNER_*`);
- the save-now adapters: whether the vramwatch agent is loaded, SimpleTuner's signal file (also
  `SIMPLETUNER_*`), and a SLURM job (Lightning's auto-requeue).

Values are never logged.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

PROC = Path("/proc")

#: Variables read by name (see the module docstring for who reads which).
ALLOWED_NAMES = frozenset(
    {
        "PYTORCH_CUDA_ALLOC_CONF",  # advisor: expandable segments, the caching allocator's settings
        "PYTORCH_ALLOC_CONF",  # advisor: its newer spelling (torch >= 2.9)
        "ACCELERATE_MIXED_PRECISION",  # advisor: `accelerate launch --mixed_precision` passes it this way
        "VRAMWATCH_AGENT",  # adapters: the agent is in this process (`vramwatch.agent.protocol.ENV_AGENT`)
        "SLURM_JOB_ID",  # adapters: Lightning under SLURM requeues on SIGUSR1
    }
)
#: Variables read by prefix: SimpleTuner's configuration and its signal file.
ALLOWED_PREFIXES = ("SIMPLETUNER_",)


def allowed(name: str) -> bool:
    """Whether vramwatch may read the variable `name` of another process."""
    return name in ALLOWED_NAMES or name.startswith(ALLOWED_PREFIXES)


def filter_env(env: Mapping[str, str] | None) -> dict[str, str] | None:
    """Only the allowed variables of `env`; None stays None (the environment is unknown)."""
    if env is None:
        return None
    return {k: str(v) for k, v in env.items() if allowed(k)}


def read_environ(pid: int, proc_root: Path = PROC) -> dict[str, str] | None:
    """The allowed variables of a live process, from /proc/<pid>/environ; None when it cannot be read
    (another user's process and the daemon is not root, or the pid is gone)."""
    try:
        raw = (proc_root / str(pid) / "environ").read_bytes()
    except OSError:
        return None
    found: dict[str, str] = {}
    for item in raw.split(b"\0"):
        name, sep, value = item.partition(b"=")
        if sep and allowed(text := name.decode("utf-8", "replace")):
            found[text] = value.decode("utf-8", "replace")
    return found
