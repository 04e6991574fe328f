"""Who holds the memory: NVML host pids -> process identity, tree root, user and container.

NVML gives only a pid and a byte count. A pid is not an identity (pids are reused, and a training run
restarted in a loop often gets the same pid back), so every process is keyed by (pid, start time). The
lookups (name, user, command line, tree root, cgroup) happen once per identity and are cached. What can change
is the state and the parent (the stale-holder detector needs to see a process become stopped, a zombie or an
orphan), in `/proc/<pid>/stat`, one small file that also holds the start time (the identity check).

The identity check at every tick is a pidfd (pidfd_open(2), Linux 5.3+): a descriptor of the process itself,
not of its pid, which poll(2) reports readable once the process has ended. While it is not, the pid is still
the same process, so no file needs reading: one poll of a few hundred nanoseconds, where the kernel builds the
stat text of a multi-threaded CUDA process in several microseconds. The state and the parent are then read
every `STATUS_EVERY` ticks: a process stopped or orphaned is seen within that many ticks (the stale-holder
finding waits several ticks anyway), and one that ended at once. Where pidfds cannot be had (an older kernel,
a seccomp profile that refuses them, past `STAT_FDS` processes) the stat file is read at every tick. A pidfd is
kept until its pid leaves the GPUs: on Linux 6.15+ it tells how the process ended once its parent reaped it
(`exit_status`), which a shell does at once, leaving no zombie to read.

Any lookup may fail: the process exits between the NVML call and ours, or belongs to a user we may not
inspect. Then the fields we could not read are None and the process is still counted with its memory.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import weakref
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import psutil

from .model import ProcessExit, ProcessMeta

#: At most this many `/proc/<pid>/stat` files are kept open between ticks (one per process on a GPU, read again
#: with `pread`), and at most this many pidfds: 512 descriptors in all, half the usual soft limit of 1,024.
#: Processes beyond it are read by path at every tick, so a box with thousands of GPU processes never runs the
#: daemon out of file descriptors.
STAT_FDS = 256

#: A process watched through its pidfd has its state and parent read from `/proc/<pid>/stat` every this many
#: ticks (its end is seen at once).
STATUS_EVERY = 5

#: Inode of the initial pid namespace (PROC_PID_INIT_INO in the kernel): a daemon whose own pid
#: namespace has another inode runs in a container that does not share the host's pids, and NVML's host pids
#: would name the wrong processes (or none) here.
PROC_PID_INIT_INO = 0xEFFFFFFC

# Launchers that start one worker per GPU: their workers are one training run and group under them.
_LAUNCHERS = frozenset(
    {
        "accelerate", "torchrun", "torch.distributed.run", "torch.distributed.launch", "deepspeed", "mpirun",
        "mpiexec", "horovodrun", "lightning", "composer", "colossalai", "launch.py",
    }
)  # fmt: skip
# Where the walk up a process tree stops: above these is the user's session or the init system.
_SESSION_BOUNDARY = frozenset(
    {
        "systemd", "init", "sshd", "login", "bash", "zsh", "sh", "dash", "fish", "tmux", "tmux: server",
        "screen", "SCREEN", "su", "sudo", "containerd-shim", "containerd-shim-runc-v2", "conmon", "tini",
        "docker-init", "dumb-init", "slurmstepd", "supervisord", "jupyter-lab", "jupyter-notebook", "code",
        "node", "nohup", "runuser", "cron", "srun", "sbatch", "vramwatch",
    }
)  # fmt: skip
_MAX_TREE_DEPTH = 32

# Container ids as container runtimes write them into cgroup paths (v1 and v2, docker, containerd, CRI-O,
# podman): a 64-hex id, optionally prefixed by the runtime's name.
_CONTAINER_RE = re.compile(r"(?:docker|cri-containerd|crio|libpod|containerd)?[-/]?([0-9a-f]{64})(?:\.scope)?")
# Kubernetes puts the pod UID in the cgroup path, with dashes (cgroupfs driver) or underscores (systemd driver).
_POD_RE = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")


def parse_cgroup(text: str) -> tuple[str | None, str | None]:
    """(container id, pod UID) from the text of /proc/<pid>/cgroup; None where the path names none."""
    container = pod = None
    for line in text.splitlines():
        path = line.rsplit(":", 1)[-1]
        if pod is None and (m := _POD_RE.search(path)):
            pod = m.group(1).replace("_", "-")
        if container is None:
            for segment in reversed(path.split("/")):
                if (m := _CONTAINER_RE.fullmatch(segment)) or (m := _CONTAINER_RE.search(segment)):
                    container = m.group(1)
                    break
    return container, pod


def display_name(name: str | None, cmdline: tuple[str, ...] | None) -> str | None:
    """A short name people recognise: the script or module a Python interpreter runs, else the executable.

    Every trainer shows up as `python3` otherwise. Only a basename is taken from the command line, never an
    argument value, so nothing secret reaches a metric label this way.
    """
    if name and name.startswith("python") and cmdline and len(cmdline) > 1:
        args = list(cmdline[1:])
        while args and args[0].startswith("-") and args[0] not in ("-m", "-c"):
            args.pop(0)  # interpreter flags such as -u or -X dev
        if args and args[0] == "-c":
            return name  # inline code: no script name to show
        if len(args) >= 2 and args[0] == "-m":
            return args[1][:64]
        if args and not args[0].startswith("-"):
            return Path(args[0]).name[:64] or name
    return name


class PsutilInspector:
    """The real ProcessInspector: psutil plus /proc reads, cached per process identity.

    `proc_root` is injectable so tests read a checked-in fixture tree for the cgroup files.
    """

    def __init__(
        self,
        *,
        proc_root: Path = Path("/proc"),
        host_pids: bool | None = None,
    ) -> None:
        self.proc_root = proc_root
        self._proc = str(proc_root)  # a plain string: this path is joined for every process at every tick
        self._host_pids = host_pids
        # pid -> what is known of the process holding it, its start time in clock ticks since boot (the identity,
        # as /proc/<pid>/stat says) and, where it could be had, its pidfd
        self._cache: dict[int, _Known] = {}
        # pid -> an open /proc/<pid>/stat: each tick reads it again with one pread(2) instead of open, read and
        # close (half the cost). The descriptor belongs to that process, not to the pid: once the process is gone
        # (and its pid perhaps another's) it answers ESRCH, and the pid's file is opened afresh by path.
        self._stat_fds: dict[int, int] = {}
        # pid -> the pidfd of its cached identity (closed with the identity)
        self._pidfds: dict[int, int] = {}
        # Plain descriptors, not file objects: nothing else would close them when the inspector goes.
        weakref.finalize(self, _close_all, self._stat_fds)
        weakref.finalize(self, _close_all, self._pidfds)

    def pid_namespace_matches(self) -> bool:
        if self._host_pids is None:
            try:
                self._host_pids = (self.proc_root / "self" / "ns" / "pid").stat().st_ino == PROC_PID_INIT_INO
            except OSError:
                self._host_pids = True  # cannot tell (no /proc/self/ns): trust the pids rather than hide them
        return self._host_pids

    def inspect(self, pid: int) -> ProcessMeta:
        """What is known of `pid`: looked up once per identity; then, while its pidfd says the process lives,
        its state and parent are read every `STATUS_EVERY` calls, else `/proc/<pid>/stat` at every call.

        The stat file's start time is the identity check (against pid reuse) and brings the status and the
        parent. The slow lookups (user, command line, tree, cgroup) run only for an identity not seen before.
        """
        cached = self._cache.get(pid)
        if cached is not None and cached.watch is not None:
            if cached.watch.poll(0):  # readable: the process has ended (the pid may be another's by now)
                # Its pidfd stays open until the pid leaves the GPUs (or changes hands): once the process is
                # reaped it tells how it ended (`exit_status`).
                cached.watch = None
            else:
                cached.countdown -= 1
                if cached.countdown > 0:
                    return cached.meta  # the same process, its state read less than STATUS_EVERY calls ago
                cached.countdown = STATUS_EVERY
        state, ppid, ticks = "", None, None
        try:
            fields = _stat_fields(self._read_stat(pid))
            state, ppid, ticks = fields[0].decode(), int(fields[1]), int(fields[19])
        except (FileNotFoundError, ProcessLookupError):
            if cached is not None and pid in self._pidfds:
                # Reaped, and NVML still lists it a tick or two: no other process has the pid, so it is the identity
                # cached. It keeps that identity (a new key would read as that process leaving, and another
                # arriving), and its pidfd, until the pid leaves the GPUs: the pidfd says how it ended.
                if cached.meta.status != "gone":
                    cached.meta = replace(cached.meta, status="gone")
                return cached.meta
            self._forget(pid)
            return ProcessMeta(pid=pid, start_time=None, status="gone")
        except (OSError, ValueError, IndexError):
            pass  # unreadable here: psutil decides below, as for a new identity
        if ticks is not None and cached is not None and cached.ticks == ticks:
            meta = cached.meta
            status = _STATUS.get(state, meta.status)
            if status != meta.status or ppid != meta.ppid:
                cached.meta = meta = replace(meta, status=status, ppid=ppid)
            return meta
        try:
            proc = psutil.Process(pid)
            start = proc.create_time()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            self._forget(pid)
            return ProcessMeta(pid=pid, start_time=None, status="gone")
        except psutil.Error:
            return ProcessMeta(pid=pid, start_time=None)
        meta = self._lookup(proc, pid, start)
        self._forget(pid)
        if ticks is not None:
            self._cache[pid] = _Known(meta, ticks, self._watch(pid, ticks) if meta.status != "zombie" else None)
        return meta

    def _watch(self, pid: int, ticks: int) -> select.poll | None:
        """A poll of the pidfd of `pid`'s process, if that is still the process that started at `ticks` (None
        where no pidfd can be had, or the pid changed hands meanwhile: the stat file is read at every call)."""
        if len(self._pidfds) >= STAT_FDS:
            return None
        try:
            fd = _pidfd_open(pid)
        except OSError:  # ESRCH (gone already), ENOSYS (kernel < 5.3), EPERM (a seccomp profile), EMFILE
            return None
        try:
            # Read after the pidfd is open: if that process lives when polled, it lived at this read too, so
            # this start time is its own.
            same = int(_stat_fields(_read_small(f"{self._proc}/{pid}/stat"))[19]) == ticks
        except (OSError, ValueError, IndexError):
            same = False
        if not same:
            os.close(fd)
            return None
        self._pidfds[pid] = fd
        watch = select.poll()
        watch.register(fd, select.POLLIN)
        return watch

    def _forget(self, pid: int) -> None:
        self._cache.pop(pid, None)
        self._close_pidfd(pid)

    def _close_pidfd(self, pid: int) -> None:
        fd = self._pidfds.pop(pid, None)
        if fd is not None:
            os.close(fd)

    def exit_status(self, pid: int, start_time: float | None) -> ProcessExit | None:
        """How `pid` of that identity ended, where the system can still tell (else None: alive, or unknown).

        An unreaped zombie keeps its wait status in `/proc/<pid>/stat` (field 52, Linux 3.5+) until its parent
        reaps it, which a shell does within milliseconds. Once reaped, Linux 6.15+ keeps it for whoever holds a
        pidfd of the process (`PIDFD_INFO_EXIT`), parent or not: the pidfd of each process on a GPU is kept until
        its pid leaves the GPUs, so a trainer that a shell reaped at once still says how it ended.
        """
        try:
            fields = _stat_fields((self.proc_root / str(pid) / "stat").read_bytes())
            state, start_ticks, status = fields[0], int(fields[19]), int(fields[49])
        except (OSError, ValueError, IndexError):
            return self._reaped_exit(pid, start_time)
        if state != b"Z":
            return None if start_ticks == self._ticks_of(pid) else self._reaped_exit(pid, start_time)
        started = psutil.boot_time() + start_ticks / os.sysconf("SC_CLK_TCK")
        if start_time is not None and abs(started - start_time) > 1.0:
            return None  # the pid was reused: not the process that left
        return _exit_of(pid, start_time, status)

    def _ticks_of(self, pid: int) -> int | None:
        cached = self._cache.get(pid)
        return None if cached is None else cached.ticks

    def _reaped_exit(self, pid: int, start_time: float | None) -> ProcessExit | None:
        """The wait status the kernel kept for the reaped process whose pidfd is held for `pid`, if it is the
        identity asked about."""
        fd, cached = self._pidfds.get(pid), self._cache.get(pid)
        if fd is None or cached is None:
            return None
        known = cached.meta.start_time
        if start_time is not None and (known is None or abs(known - start_time) > 1.0):
            return None
        status = _reaped_status(fd)
        return None if status is None else _exit_of(pid, start_time, status)

    def forget_except(self, live: set[int]) -> None:
        """Drop cached identities (and close the stat files) of pids no longer on any GPU, so the cache stays as
        small as the GPU list."""
        for pid in [p for p in self._cache if p not in live]:
            self._forget(pid)
        for pid in [p for p in self._stat_fds if p not in live]:
            self._close_stat(pid)

    def close(self) -> None:
        """Close the stat files and pidfds kept open; later calls look the processes up again."""
        _close_all(self._stat_fds)
        _close_all(self._pidfds)
        self._cache.clear()

    def _read_stat(self, pid: int) -> bytes:
        """The content of `/proc/<pid>/stat` as a fresh open would read it: from the descriptor kept for the pid
        while its process lives, else by path (keeping that descriptor, up to `STAT_FDS`)."""
        fd = self._stat_fds.get(pid)
        if fd is not None:
            try:
                return os.pread(fd, 4096, 0)
            except OSError:  # ESRCH: that process is gone; the pid may be another's now, or nobody's
                self._close_stat(pid)
        path = f"{self._proc}/{pid}/stat"
        if len(self._stat_fds) >= STAT_FDS:
            return _read_small(path)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            raw = os.pread(fd, 4096, 0)
        except BaseException:
            os.close(fd)
            raise
        self._stat_fds[pid] = fd
        return raw

    def _close_stat(self, pid: int) -> None:
        fd = self._stat_fds.pop(pid, None)
        if fd is not None:
            os.close(fd)

    def _lookup(self, proc: psutil.Process, pid: int, start: float) -> ProcessMeta:
        cmdline = _safe(proc.cmdline)
        name = _safe(proc.name)
        root = self._tree_root(proc)
        container, pod = self._cgroup(pid)
        return ProcessMeta(
            pid=pid,
            start_time=start,
            name=display_name(name, tuple(cmdline) if cmdline else None),
            user=_safe(proc.username),
            ppid=_safe(proc.ppid),
            root_pid=root[0] if root else None,
            root_name=root[1] if root else None,
            root_start_time=root[2] if root else None,
            container_id=container,
            pod_uid=pod,
            cmdline=tuple(cmdline) if cmdline else None,
            status=_safe(proc.status),
            cwd=_safe(proc.cwd),
        )

    def _tree_root(self, proc: psutil.Process) -> tuple[int, str | None, float | None] | None:
        """The launcher this process is a worker of, or the process itself.

        Climbing below the shell, the highest ancestor that is a known launcher (`accelerate launch`, `torchrun`,
        `deepspeed`, `mpirun`, ...) or that runs the same script (workers forked by the trainer itself, as
        `torch.multiprocessing.spawn` does) is the root. An unrelated parent (a job script, `timeout`, a
        notebook) is not: two runs started by the same script are two runs, and must not hide contention
        between them.
        """
        root = proc
        try:
            raw = proc.name()
            own = display_name(raw, tuple(_safe(proc.cmdline) or ()))
            script = own if own != raw else None  # "python3 -c ..." runs no script to match on
            current = proc
            for _ in range(_MAX_TREE_DEPTH):
                parent = current.parent()
                if parent is None or parent.pid <= 1 or parent.name() in _SESSION_BOUNDARY:
                    break
                label = display_name(parent.name(), tuple(_safe(parent.cmdline) or ()))
                if label in _LAUNCHERS or (script is not None and label == script):
                    root = parent
                current = parent
            name = display_name(root.name(), tuple(_safe(root.cmdline) or ()))
            return root.pid, name, root.create_time()
        except psutil.Error:
            return (root.pid, None, None) if root is not proc else None

    def _cgroup(self, pid: int) -> tuple[str | None, str | None]:
        try:
            return parse_cgroup((self.proc_root / str(pid) / "cgroup").read_text())
        except OSError:
            return None, None


T = TypeVar("T")


class _Known:
    """A cached identity: what is known, its start time in clock ticks since boot, and the poll of its pidfd
    (None: read the stat file at every call) with the calls left before its state is read again."""

    __slots__ = ("countdown", "meta", "ticks", "watch")

    def __init__(self, meta: ProcessMeta, ticks: int, watch: select.poll | None) -> None:
        self.meta, self.ticks, self.watch, self.countdown = meta, ticks, watch, STATUS_EVERY


def _pidfd_open(pid: int) -> int:
    opener: Callable[[int], int] | None = getattr(os, "pidfd_open", None)  # Linux, Python 3.9+
    if opener is None:
        raise OSError("pidfd_open is not available here")
    return opener(pid)


# psutil's names for the one-letter states of /proc/<pid>/stat (proc(5)), so a status reads the same whichever
# path read it.
_STATUS = {
    "R": psutil.STATUS_RUNNING, "S": psutil.STATUS_SLEEPING, "D": psutil.STATUS_DISK_SLEEP,
    "T": psutil.STATUS_STOPPED, "t": psutil.STATUS_TRACING_STOP, "Z": psutil.STATUS_ZOMBIE,
    "X": psutil.STATUS_DEAD, "x": psutil.STATUS_DEAD, "K": "wake-kill", "W": psutil.STATUS_WAKING,
    "I": psutil.STATUS_IDLE, "P": psutil.STATUS_PARKED,
}  # fmt: skip


def _close_all(fds: dict[int, int]) -> None:
    while fds:
        os.close(fds.popitem()[1])


def _read_small(path: str) -> bytes:
    """The whole of a small /proc file in one `read(2)`: half the cost of `open()`'s buffered file object, which
    matters once per process per tick. /proc/<pid>/stat is one line of at most a few hundred bytes, and the
    kernel writes such a file whole into a buffer that holds it."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def _stat_fields(raw: bytes) -> list[bytes]:
    """The fields of /proc/<pid>/stat from the third on (state, ppid, ...; proc(5) field N is index N - 3).

    The command name (field 2) is in parentheses and may itself hold spaces and parentheses: the fields that
    follow are counted from its last closing parenthesis.
    """
    return raw[raw.rindex(b")") + 2 :].split()


def _safe(fn: Callable[[], T]) -> T | None:
    try:
        return fn()
    except (psutil.Error, OSError):
        return None


#: PIDFD_GET_INFO (include/uapi/linux/pidfd.h): _IOWR(0xFF, 11, struct pidfd_info), the 64 bytes of its first
#: version, whose last field is the wait status (`exit_code`) of a reaped process when `mask` asks for
#: PIDFD_INFO_EXIT (Linux 6.15+). Older kernels answer ENOTTY or EINVAL, or leave the bit out of `mask`.
_PIDFD_GET_INFO = (3 << 30) | (64 << 16) | (0xFF << 8) | 11
_PIDFD_INFO_EXIT = 1 << 3
_PIDFD_INFO_SIZE = 64
_PIDFD_EXIT_CODE_AT = 60


def _reaped_status(fd: int) -> int | None:
    """The wait status of the reaped process behind pidfd `fd`; None while it runs or is a zombie, or where the
    kernel does not keep it."""
    info = bytearray(_PIDFD_INFO_SIZE)
    struct.pack_into("=Q", info, 0, _PIDFD_INFO_EXIT)
    try:
        fcntl.ioctl(fd, _PIDFD_GET_INFO, info)
    except OSError:
        return None
    (mask,) = struct.unpack_from("=Q", info, 0)
    if not mask & _PIDFD_INFO_EXIT:
        return None
    (status,) = struct.unpack_from("=i", info, _PIDFD_EXIT_CODE_AT)
    return int(status)


#: `/proc/<pid>/stat`'s flags (field 9): PF_KTHREAD, set for kernel threads only (include/linux/sched.h).
PF_KTHREAD = 0x00200000


def kernel_thread(pid: int, proc_root: Path = Path("/proc")) -> bool:
    """Whether `pid` is a kernel thread (whose command line is empty for everyone, root included)."""
    try:
        return bool(int(_stat_fields((proc_root / str(pid) / "stat").read_bytes())[6]) & PF_KTHREAD)
    except (OSError, ValueError, IndexError):
        return False


def _exit_of(pid: int, start_time: float | None, status: int) -> ProcessExit:
    """A wait status as exit(2) or the signal that ended the process (wait(2)'s encoding)."""
    signal = status & 0x7F
    return ProcessExit(pid, start_time, None if signal else (status >> 8) & 0xFF, signal or None)
