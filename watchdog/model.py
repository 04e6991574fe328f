"""What vramwatch measures and what it concludes: the value objects every other module passes around.

Read this first. A *backend* (NVML, the simulator, a recorded trace) produces a `Reading`: raw device memory
and raw per-process GPU memory, keyed by the GPU's UUID. *Attribution* turns each raw pid into a
`ProcessSample` with an identity that survives pid reuse (pid + start time), a tree root, a user and a
container. The *sampler* folds both into a `Snapshot`, appends it to the bounded history, and the
*detectors* turn history windows into `Finding`s.

Conventions: bytes are `int` with a `_bytes` suffix; `t` is monotonic seconds (durations, windows);
wall-clock time appears only for display and traces (`wall_time`, `start_time`); a value that could not be
read is `None`, never 0 (0 is a real measurement) and never a string sentinel.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .frozen import quick_init


class Severity(enum.Enum):
    """How urgent a finding is; `critical` means the card fills within minutes or already has."""

    WARNING = "warning"
    CRITICAL = "critical"


class FindingKind(str, enum.Enum):
    """What a finding is about: the one list of the kinds vramwatch's own detectors emit.

    Every list that must match it (tick tables, advice keys, the CLI, the alert rules and the dashboard) is
    derived from it or checked against it by a test. A plugin detector (see `detectors.registry`) may add a
    kind of its own as a plain string; `Finding.kind` is therefore typed `str`, which every member is.
    """

    GROWTH = "growth"  # a process tree (or a card) whose memory keeps rising: a leak
    OOM_FORECAST = "oom_forecast"  # the card fills within minutes at its sustained rate
    PRESSURE = "pressure"  # almost no room left, growing or not
    CONTENTION = "contention"  # a newcomer left a running job less room than it needs
    PROBABLE_OOM = "probable_oom"  # a process vanished with its own memory in the ceiling
    STALE_HOLDER = "stale_holder"  # a zombie, stopped or orphaned process still holds memory
    FRAGMENTATION = "fragmentation"  # PyTorch's cache is in pieces (agent data)
    OOM = "oom"  # the agent's certain out-of-memory report

    # Printed, logged and exported as its bare value ("growth", not "FindingKind.GROWTH"), as StrEnum does
    # from Python 3.11; vramwatch still runs on 3.10.
    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, format_spec: str) -> str:
        return format(str(self.value), format_spec)


#: Findings that say a process died (NVML's probable OOM, the agent's certain one): what `attach` and the live
#: page explain as a post-mortem.
POST_MORTEM_KINDS = frozenset({FindingKind.PROBABLE_OOM, FindingKind.OOM})


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One GPU (or one MIG GPU instance) at one tick, as the driver reports it.

    `uuid` is the stable key: indices change with `CUDA_VISIBLE_DEVICES` and across reboots, UUIDs do not.
    A MIG instance has its own UUID (`MIG-...`) and names its physical GPU in `parent_uuid`.
    `up` is False when the GPU stopped answering (`GpuIsLost`); the memory fields are then None.
    """

    index: int
    uuid: str
    name: str
    total_bytes: int | None
    used_bytes: int | None
    free_bytes: int | None
    reserved_bytes: int | None = None  # driver/firmware reservation; NVML memory v2 only
    pci_bus_id: str | None = None
    parent_uuid: str | None = None  # set on MIG GPU instances
    up: bool = True
    error: str | None = None  # why `up` is False, for logs and `status`


@quick_init
@dataclass(frozen=True, slots=True)
class ProcessUsage:
    """A raw NVML process entry: a host pid using `used_bytes` of one GPU (None: the driver would not say)."""

    gpu_uuid: str
    pid: int
    used_bytes: int | None
    kinds: frozenset[str] = frozenset({"compute"})  # subset of compute / graphics / mps


@dataclass(frozen=True, slots=True)
class ProcessKey:
    """The identity of a process: pids are reused, so pid alone would merge two runs' histories."""

    pid: int
    start_time: float | None
    # Every tick looks each process up by its key in a score of tables (history, trees, growth, findings):
    # the hash is taken once here, not rebuilt from the fields at each lookup.
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.pid, self.start_time)))

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        return f"{self.pid}@{self.start_time:.2f}" if self.start_time is not None else str(self.pid)


@dataclass(frozen=True, slots=True)
class ProcessMeta:
    """What the operating system knows about a pid, looked up once per process identity.

    Any field may be None: the process may have exited between the NVML call and the lookup, or belong to a
    user the daemon may not inspect. `cmdline` is kept for the advisor and is never exported as a label.
    """

    pid: int
    start_time: float | None  # wall-clock epoch seconds (psutil create_time); with pid, the identity
    name: str | None = None
    user: str | None = None
    ppid: int | None = None
    root_pid: int | None = None  # the launcher (accelerate / torchrun / the shell's child) or the pid itself
    root_name: str | None = None
    root_start_time: float | None = None
    container_id: str | None = None
    pod_uid: str | None = None
    cmdline: tuple[str, ...] | None = None
    status: str | None = None  # psutil status: running, sleeping, stopped, zombie, ...
    cwd: str | None = None  # where relative config paths in cmdline resolve
    # Derived once here rather than at every lookup: each tick keys several tables by them for every process.
    key: ProcessKey = field(init=False, repr=False, compare=False)
    tree_key: ProcessKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        key = ProcessKey(self.pid, self.start_time)
        object.__setattr__(self, "key", key)
        # A process that is its own root has its key as its tree's, the same object (History shares the series).
        tree = key
        if self.root_pid is not None and (self.root_pid, self.root_start_time) != (self.pid, self.start_time):
            tree = ProcessKey(self.root_pid, self.root_start_time)
        object.__setattr__(self, "tree_key", tree)


@quick_init
@dataclass(frozen=True, slots=True)
class ProcessSample:
    """One process on one GPU at one tick: the NVML figure joined with what the OS says about the pid."""

    gpu_uuid: str
    used_bytes: int | None
    meta: ProcessMeta
    kinds: frozenset[str] = frozenset({"compute"})

    @property
    def pid(self) -> int:
        return self.meta.pid

    @property
    def key(self) -> ProcessKey:
        return self.meta.key

    @property
    def tree_key(self) -> ProcessKey:
        """The launcher's identity: `accelerate launch` / `torchrun` workers share their launcher's tree."""
        return self.meta.tree_key


@dataclass(frozen=True, slots=True)
class TorchStats:
    """In-process allocator figures that the agent reports for one pid and device (see the agent issue)."""

    pid: int
    device: int
    allocated_bytes: int | None = None
    reserved_bytes: int | None = None
    active_bytes: int | None = None
    inactive_split_bytes: int | None = None
    requested_bytes: int | None = None
    num_alloc_retries: int | None = None
    num_ooms: int | None = None
    gpu_uuid: str | None = None  # NVML's uuid of `device`, to join with GpuSample; CUDA indices differ


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One optimizer step of one process (or a run of merged steps), as its agent measured it in the trainer.

    The record covers the interval since the previous counted step ended: forward, backward, the optimizer
    step and whatever the trainer did in between (sample images, validation, a save). Its peaks are
    PyTorch's `max_memory_allocated/reserved` over that interval; `allocated_bytes`/`reserved_bytes` are
    what stayed after the step. `t` is monotonic seconds at the end of `last_step` on the agent's clock
    (the same CLOCK_MONOTONIC as the daemon's on one host).
    """

    pid: int
    device: int
    first_step: int
    last_step: int
    t: float
    seconds: float
    peak_allocated_bytes: int
    peak_reserved_bytes: int
    allocated_bytes: int
    reserved_bytes: int
    inactive_split_bytes: int = 0  # free pieces inside the allocator's segments after the step (fragmentation)

    @property
    def count(self) -> int:
        """How many optimizer steps this record covers (more than one when the agent merged them)."""
        return self.last_step - self.first_step + 1


def nvml_uuid(cuda_uuid: str | None) -> str | None:
    """A device's uuid as CUDA gives it (no prefix) spelt as NVML does ("GPU-..."), to join with `GpuSample.uuid`."""
    if cuda_uuid is None:
        return None
    return cuda_uuid if cuda_uuid.startswith(("GPU-", "MIG-")) else f"GPU-{cuda_uuid}"


@dataclass(frozen=True, slots=True)
class OomEvent:
    """An out-of-memory error in a trainer, with the allocator's state when it happened (from the agent).

    `observed` is True when the allocator's OOM observer reported it (state at the failed request);
    False when the agent only saw `num_ooms` rise at its next sample (state of that moment).
    """

    pid: int
    device: int
    requested_bytes: int | None  # the size of the request that failed
    capacity_bytes: int | None  # the device's total, or the per-process limit when one is set
    device_free_bytes: int | None
    allocated_bytes: int | None
    reserved_bytes: int | None
    inactive_split_bytes: int | None
    num_alloc_retries: int | None
    num_ooms: int | None
    snapshot_path: str | None
    observed: bool
    cuda_uuid: str | None = None

    @property
    def gpu_uuid(self) -> str | None:
        return nvml_uuid(self.cuda_uuid)

    @property
    def reserved_unallocated_bytes(self) -> int | None:
        """PyTorch's "reserved by PyTorch but unallocated": cached memory no tensor uses."""
        if self.reserved_bytes is None or self.allocated_bytes is None:
            return None
        return max(0, self.reserved_bytes - self.allocated_bytes)


@dataclass(frozen=True, slots=True)
class ProcessExit:
    """How a process that just left the GPUs ended, when the system could still tell.

    An unreaped (zombie) process shows its exit status (`/proc/<pid>/stat`), and on Linux 6.15+ a reaped one does
    through the pidfd held for it (attribution.py). On older kernels most are reaped within milliseconds, so this
    is evidence when present and nothing when absent. `exit_code` 0 is a normal end.
    """

    pid: int
    start_time: float | None
    exit_code: int | None  # the status passed to exit(), None when a signal ended it
    signal: int | None = None  # the signal that ended it (9: SIGKILL, e.g. the kernel's OOM killer)

    @property
    def key(self) -> ProcessKey:
        return ProcessKey(self.pid, self.start_time)

    @property
    def clean(self) -> bool:
        return self.exit_code == 0 and self.signal is None


@dataclass(frozen=True, slots=True)
class Reading:
    """What a backend returns for one tick, before attribution.

    `t` is set only by backends that replay a recording (the recorded monotonic time); live backends leave
    it None and the sampler stamps the reading with its own clock.
    """

    gpus: tuple[GpuSample, ...]
    processes: tuple[ProcessUsage, ...]
    t: float | None = None
    wall_time: float | None = None
    torch: tuple[TorchStats, ...] = ()
    meta: tuple[ProcessMeta, ...] = ()  # replayed traces carry the process metadata they recorded
    exits: tuple[ProcessExit, ...] = ()  # replayed traces carry the exits they recorded


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything known at one tick: the unit the exporter serves, the history stores and traces record.

    `processes_visible` is False when NVML's host pids cannot be resolved in this pid namespace (a container
    without `hostPID`): the per-process figures are then withheld rather than shown against wrong pids.
    """

    t: float
    wall_time: float
    gpus: tuple[GpuSample, ...]
    processes: tuple[ProcessSample, ...]
    processes_visible: bool = True
    torch: tuple[TorchStats, ...] = ()
    exits: tuple[ProcessExit, ...] = ()  # processes that left the GPUs at this tick, where their end is known
    # Each card's processes, grouped once: the detectors, the exporter and the page ask card by card, and a scan of
    # every process for each card is 8 x 4,096 steps a tick on a large node.
    _by_gpu: dict[str, tuple[ProcessSample, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_gpu: dict[str, list[ProcessSample]] = {}
        for p in self.processes:
            by_gpu.setdefault(p.gpu_uuid, []).append(p)
        object.__setattr__(self, "_by_gpu", {uuid: tuple(ps) for uuid, ps in by_gpu.items()})

    def processes_on(self, gpu_uuid: str) -> tuple[ProcessSample, ...]:
        """The processes on one card, in the snapshot's order."""
        return self._by_gpu.get(gpu_uuid, ())

    def gpu(self, uuid: str) -> GpuSample | None:
        return next((g for g in self.gpus if g.uuid == uuid), None)

    def unattributed_bytes(self, gpu_uuid: str) -> int | None:
        """Device memory no listed process accounts for, so that processes + unattributed == used.

        Includes the driver's own use and processes NVML reports with unknown memory. Never negative: on
        some drivers the per-process sums briefly exceed `used` between two reads.
        """
        gpu = self.gpu(gpu_uuid)
        if gpu is None or gpu.used_bytes is None:
            return None
        known = sum(p.used_bytes for p in self.processes_on(gpu_uuid) if p.used_bytes is not None)
        return max(0, gpu.used_bytes - known)


@dataclass(frozen=True, slots=True)
class Finding:
    """A conclusion a detector drew from history, raised once and cleared once (see detectors.lifecycle).

    `kind` is a `FindingKind` (or a plugin detector's own kind). `eta_seconds` is the forecast time until the
    card is full, when there is one.
    `numbers` holds the figures behind the message (bytes, rates, shares), for webhooks and JSON output.
    `advice` is filled in by the advisor after detection, in the trainer's own words.
    `tentative` says why the finding may not be what it seems yet (a critical forecast on a run that has not held
    still since it appeared: a load rises like a leak until it stops); None when it is firm. It is notified like
    any other; a policy's actions that could end a run wait until it is raised again, firm (`[policy] on_tentative`).
    `at_risk` is the process tree (its root's key) whose work the finding says is in danger when that is not
    `process` (contention: the run a newcomer squeezed); a policy asks that tree's processes on the GPU to save.
    `culprit` is the process tree (its root's key) the finding blames when it is about a whole GPU (a forecast's
    fastest grower): a claim about another culprit is another claim, even with the same subject.
    `since` is when what it claims began (monotonic seconds), where no culprit can tell one claim from the next (a
    forecast about the card's climb where its processes are hidden): a claim about a climb that began after the last
    one cleared is another claim too.
    """

    kind: str
    severity: Severity
    gpu_uuid: str | None
    message: str
    t: float
    process: ProcessKey | None = None
    process_name: str | None = None
    eta_seconds: float | None = None
    confidence: float | None = None  # 0..1
    numbers: dict[str, float | int | str | None] = field(default_factory=dict)
    advice: tuple[str, ...] = ()
    tentative: str | None = None
    at_risk: ProcessKey | None = None
    culprit: ProcessKey | None = None
    since: float | None = None

    @property
    def subject(self) -> tuple[str, str | None, ProcessKey | None]:
        """What the finding is about; two findings with the same subject are the same ongoing condition."""
        return (self.kind, self.gpu_uuid, self.process)


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What the action layer did about a finding, or why it did nothing: one value per decision, for the log.

    `action` is log, notify, signal, save_now, hook, kill or error. The dispatcher never raises; every decision
    (a notification queued, a signal withheld, a kill skipped because the pid was reused) comes back as one of
    these. `done` is False for every refusal, and in dry-run mode for what *would* have been done (then
    `dry_run` is True and `reason` says what). It lives here, not in `actions/`, so that the `ActionHandler`
    seam in typing.py is described without importing the action layer it abstracts.
    """

    action: str
    done: bool
    reason: str
    process: ProcessKey | None = None
    kind: str | None = None  # the finding's kind, so a log line reads on its own
    signal: str | None = None  # e.g. "SIGUSR1", when a signal was (or would have been) sent
    adapter: str | None = None  # the save-now adapter that was chosen
    dry_run: bool = False

    def log_fields(self) -> dict[str, object]:
        """Flat, JSON-friendly fields for a structlog event (absent values left out)."""
        fields: dict[str, object] = {"action": self.action, "done": self.done, "reason": self.reason}
        if self.process is not None:
            fields["pid"] = self.process.pid
            fields["start_time"] = self.process.start_time
        for name in ("kind", "signal", "adapter"):
            value = getattr(self, name)
            if value is not None:
                fields[name] = value
        if self.dry_run:
            fields["dry_run"] = True
        return fields
