"""Attribution: identity, tree root, user and container of the pids NVML reports."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from kernel_probe import reaped_exit_supported
from vramwatch.attribution import PsutilInspector, display_name, parse_cgroup
from vramwatch.model import ProcessExit

CID = "a" * 64


@pytest.mark.parametrize(
    ("text", "container", "pod"),
    [
        ("0::/user.slice/user-1000.slice/session-3.scope\n", None, None),
        (f"0::/system.slice/docker-{CID}.scope\n", CID, None),
        (f"12:memory:/docker/{CID}\n", CID, None),
        (
            "0::/kubepods.slice/kubepods-burstable.slice/"
            "kubepods-burstable-pod1a2b3c4d_5e6f_7a8b_9c0d_1e2f3a4b5c6d.slice/"
            f"cri-containerd-{CID}.scope\n",
            CID,
            "1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d",
        ),
        (
            f"11:pids:/kubepods/besteffort/pod1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d/{CID}\n",
            CID,
            "1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d",
        ),
        (f"0::/machine.slice/libpod-{CID}.scope/container\n", CID, None),
    ],
)
def test_parse_cgroup(text: str, container: str | None, pod: str | None) -> None:
    """Container ids and pod UIDs are read from docker, containerd, CRI-O, podman and k8s cgroup paths."""
    assert parse_cgroup(text) == (container, pod)


@pytest.mark.parametrize(
    ("name", "cmdline", "expected"),
    [
        ("python3", ("python3", "flux_train_network.py", "--lr", "1e-4"), "flux_train_network.py"),
        ("python3", ("python3", "-u", "/home/a/sd-scripts/train_network.py"), "train_network.py"),
        ("python", ("python", "-m", "torch.distributed.run", "x.py"), "torch.distributed.run"),
        ("python3", ("python3",), "python3"),
        ("python3", ("python3", "-c", "import torch"), "python3"),
        ("accelerate", ("/usr/bin/python3", "/usr/bin/accelerate", "launch"), "accelerate"),
        (None, None, None),
    ],
)
def test_display_name(name: str | None, cmdline: tuple[str, ...] | None, expected: str | None) -> None:
    """Python trainers are named after the script or module they run, never after argument values."""
    assert display_name(name, cmdline) == expected


def test_inspects_a_real_child_with_identity_user_and_container(tmp_path: Path) -> None:
    """A live child is resolved with its start time, user, parent and container; an unrelated parent is no root."""
    proc_root = tmp_path / "proc"
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess,sys; subprocess.run([sys.executable,'-c','import time; time.sleep(30)'])",
        ]
    )
    try:
        for _ in range(100):
            kids = psutil.Process(launcher.pid).children()
            if kids:
                break
            time.sleep(0.05)
        child = kids[0].pid
        (proc_root / str(child)).mkdir(parents=True)
        (proc_root / str(child) / "cgroup").write_text(f"0::/system.slice/docker-{CID}.scope\n")
        (proc_root / str(child) / "stat").write_bytes(Path(f"/proc/{child}/stat").read_bytes())
        meta = PsutilInspector(proc_root=proc_root).inspect(child)
        assert meta.start_time == psutil.Process(child).create_time()
        assert meta.user == psutil.Process().username()
        assert meta.ppid == launcher.pid
        assert meta.container_id == CID
        assert meta.cmdline is not None
        # A `python -c` parent is neither a known launcher nor the same script: the child is its own root.
        assert meta.root_pid == child
    finally:
        launcher.kill()
        launcher.wait()
        for k in psutil.Process().children(recursive=True):
            k.kill()


def test_vanished_pid_is_reported_not_raised() -> None:
    """A pid that exits between NVML and the lookup comes back with its pid and no identity, without error."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    meta = PsutilInspector().inspect(p.pid)
    assert meta.pid == p.pid
    assert meta.start_time is None


def test_pid_reuse_is_a_new_identity() -> None:
    """The cache is keyed by start time: a recycled pid gets a fresh lookup, not the dead process's name."""
    insp = PsutilInspector()
    me = insp.inspect(os.getpid())
    # Forge a cached entry for this pid with another start time, as if an earlier process had held it.
    from dataclasses import replace

    from vramwatch.attribution import _Known

    insp._cache[os.getpid()] = _Known(replace(me, start_time=1.0, name="old-run"), 1, None)
    again = insp.inspect(os.getpid())
    assert again.name != "old-run"
    assert again.start_time == me.start_time


def test_foreign_pid_namespace_is_detected(tmp_path: Path) -> None:
    """A /proc/self/ns/pid whose inode is not the initial namespace's means NVML pids are not visible here."""
    ns = tmp_path / "self" / "ns"
    ns.mkdir(parents=True)
    (ns / "pid").write_text("")
    assert PsutilInspector(proc_root=tmp_path).pid_namespace_matches() is False
    assert PsutilInspector(proc_root=tmp_path, host_pids=True).pid_namespace_matches() is True


def _spawn_tree(tmp_path: Path, launcher_name: str) -> tuple[subprocess.Popen[bytes], int]:
    """A parent script named `launcher_name` that starts a worker script; returns (parent, worker pid)."""
    worker = tmp_path / "worker.py"
    worker.write_text("import time\ntime.sleep(30)\n")
    parent = tmp_path / launcher_name
    parent.write_text(f"import subprocess, sys\nsubprocess.run([sys.executable, {str(worker)!r}])\n")
    proc = subprocess.Popen([sys.executable, str(parent)])
    for _ in range(200):
        kids = psutil.Process(proc.pid).children()
        # Until it has exec'd, a fresh child still shows its parent's command line (the same script).
        if kids and any(str(worker) in arg for arg in _cmdline(kids[0])):
            return proc, kids[0].pid
        time.sleep(0.02)
    raise AssertionError("the worker did not start")


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


@pytest.mark.parametrize(("launcher", "grouped"), [("torchrun", True), ("launch.py", True), ("job.py", False)])
def test_workers_group_under_a_launcher_only(tmp_path: Path, launcher: str, grouped: bool) -> None:
    """Workers of a known launcher share its tree; a process started by an unrelated script is its own root."""
    proc, worker = _spawn_tree(tmp_path, launcher)
    try:
        meta = PsutilInspector().inspect(worker)
        assert meta.root_pid == (proc.pid if grouped else worker)
    finally:
        for k in psutil.Process(proc.pid).children(recursive=True):
            k.kill()
        proc.kill()
        proc.wait()


def _stat_line(pid: int, state: str, start_ticks: int, wait_status: int) -> str:
    """A /proc/<pid>/stat line (52 fields; the command name holds a space and a parenthesis, as they may)."""
    fields = [state, *["0"] * 18, str(start_ticks), *["0"] * 29, str(wait_status)]
    return f"{pid} (py thon) x) " + " ".join(fields) + "\n"


@pytest.mark.parametrize(
    ("state", "status", "expected"),
    [("Z", 0, (0, None)), ("Z", 3 << 8, (3, None)), ("Z", 9, (None, 9)), ("S", 0, None)],
)
def test_exit_status_of_an_unreaped_zombie(
    tmp_path: Path, state: str, status: int, expected: tuple[int | None, int | None] | None
) -> None:
    """A zombie's wait status gives its exit code or signal; a live process gives none."""
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    start = psutil.boot_time() + 1234.0
    (tmp_path / "4242").mkdir()
    (tmp_path / "4242" / "stat").write_text(_stat_line(4242, state, int(1234 * ticks_per_s), status))
    found = PsutilInspector(proc_root=tmp_path).exit_status(4242, start)
    assert (None if found is None else (found.exit_code, found.signal)) == expected


def test_exit_status_ignores_a_reused_pid(tmp_path: Path) -> None:
    """A zombie with another start time is another process: its status says nothing of the one that left."""
    (tmp_path / "4242").mkdir()
    (tmp_path / "4242" / "stat").write_text(_stat_line(4242, "Z", 100, 0))
    assert PsutilInspector(proc_root=tmp_path).exit_status(4242, psutil.boot_time() + 5000.0) is None
    assert PsutilInspector(proc_root=tmp_path).exit_status(4243, None) is None


@pytest.mark.parametrize("pidfds", [True, False])
def test_status_and_parent_follow_the_process(monkeypatch: pytest.MonkeyPatch, pidfds: bool) -> None:
    """A cached identity shows a process stopped (SIGSTOP) within `STATUS_EVERY` calls, and running again after;
    at the next call where no pidfd can be had."""
    import signal

    from vramwatch import attribution

    if not pidfds:
        monkeypatch.setattr(attribution, "_pidfd_open", _no_pidfd)
    within = attribution.STATUS_EVERY if pidfds else 1
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        insp = PsutilInspector()
        first = insp.inspect(child.pid)
        assert first.ppid == os.getpid()
        assert first.status != "stopped"
        child.send_signal(signal.SIGSTOP)
        for _ in range(100):
            if psutil.Process(child.pid).status() == psutil.STATUS_STOPPED:
                break
            time.sleep(0.01)
        seen = [insp.inspect(child.pid) for _ in range(within)]
        assert seen[-1].status == "stopped"
        assert seen[-1].start_time == first.start_time
        assert seen[-1].name == first.name
        child.send_signal(signal.SIGCONT)
        time.sleep(0.05)
        assert [insp.inspect(child.pid) for _ in range(within)][-1].status != "stopped"
    finally:
        child.kill()
        child.wait()


def _no_pidfd(pid: int) -> int:
    raise OSError(38, "pidfd_open: function not implemented")


class CountingInspector(PsutilInspector):
    """The real inspector, counting its reads of `/proc/<pid>/stat`."""

    def __init__(self) -> None:
        super().__init__()
        self.stat_reads = 0

    def _read_stat(self, pid: int) -> bytes:
        self.stat_reads += 1
        return super()._read_stat(pid)


def test_a_live_process_is_checked_by_its_pidfd_and_its_stat_read_every_few_calls() -> None:
    """While its pidfd says the process lives, `/proc/<pid>/stat` is read once in `STATUS_EVERY` calls."""
    from vramwatch.attribution import STATUS_EVERY

    _need_pidfds()
    insp = CountingInspector()
    first = insp.inspect(os.getpid())
    assert os.getpid() in insp._pidfds
    reads = insp.stat_reads
    assert all(insp.inspect(os.getpid()) == first for _ in range(3 * STATUS_EVERY))
    assert insp.stat_reads - reads == 3


def _need_pidfds() -> None:
    """Skip where this kernel or sandbox gives no pidfd (the stat-every-call fallback is tested on its own)."""
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        pytest.skip("no pidfd_open here")


@pytest.mark.parametrize("reaped", [True, False])
def test_a_process_that_ended_is_seen_at_the_next_call(reaped: bool) -> None:
    """However recently its state was read, a process that ended reads as gone (reaped) or a zombie (not yet)
    at the very next call: its pidfd says so. Reaped, it keeps its identity while its pidfd is held: NVML lists a
    process a tick after it ended, and no other has its pid then."""
    _need_pidfds()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    insp = PsutilInspector()
    try:
        first = insp.inspect(child.pid)
        assert child.pid in insp._pidfds  # watched: no stat read until the countdown ends, but for the pidfd
        insp.inspect(child.pid)  # mid-countdown
    finally:
        child.kill()
        if reaped:
            child.wait()
        else:
            for _ in range(200):  # dead, not reaped: /proc still lists it, as state Z
                if psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE:
                    break
                time.sleep(0.01)
    try:
        after = insp.inspect(child.pid)
        if reaped:
            assert (after.start_time, after.status) == (first.start_time, "gone")
        else:
            assert (after.start_time, after.status) == (first.start_time, "zombie")
            assert child.pid in insp._pidfds  # kept until the pid leaves the GPUs: reaped, it says how it ended
    finally:
        child.wait()
    assert insp.inspect(child.pid).status == "gone"
    insp.forget_except(set())
    assert child.pid not in insp._pidfds


@pytest.mark.parametrize(("code", "kill"), [(3, False), (0, False), (None, True)])
def test_a_reaped_process_still_says_how_it_ended(code: int | None, kill: bool) -> None:
    """A process on a GPU that its parent reaped at once (as a shell does) still gives its exit code, or the signal
    that ended it, through the pidfd kept for it (Linux 6.15+): after a call that saw it end, and after none."""
    _need_pidfds()
    if not reaped_exit_supported():
        pytest.skip("this kernel does not keep a reaped process's exit status (PIDFD_INFO_EXIT, Linux 6.15+)")
    for seen_ending in (False, True):
        child = subprocess.Popen(
            [sys.executable, "-c", f"import sys; sys.stdin.readline(); raise SystemExit({code or 0})"],
            stdin=subprocess.PIPE,
        )
        insp = PsutilInspector()
        meta = insp.inspect(child.pid)
        assert child.stdin is not None
        if kill:
            child.kill()
        child.stdin.close()
        child.wait()  # reaped: /proc has nothing of it any more
        if seen_ending:
            assert insp.inspect(child.pid).status == "gone"  # NVML listed it a tick longer
        ended = insp.exit_status(child.pid, meta.start_time)
        assert ended == ProcessExit(child.pid, meta.start_time, code, 9 if kill else None)
        assert ended.clean is (code == 0 and not kill)
        assert insp.exit_status(child.pid, meta.start_time + 5.0) is None  # another identity: nothing said
        insp.forget_except(set())


@pytest.mark.parametrize("name", ["python", "my proc", "a) (b", "x)"])
def test_stat_fields_survive_any_command_name(name: str) -> None:
    """Fields after the command name are found whatever spaces or parentheses the name holds."""
    from vramwatch.attribution import _stat_fields

    raw = f"4242 ({name}) S 1 4242 4242 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 98765 0 0".encode()
    fields = _stat_fields(raw)
    assert (fields[0], int(fields[1]), int(fields[19])) == (b"S", 1, 98765)


def test_one_read_takes_the_longest_stat_line_whole(tmp_path: Path) -> None:
    """`/proc/<pid>/stat` at its longest (a 64-byte name of parentheses, every field 20 digits) fits the one read."""
    from vramwatch.attribution import _read_small, _stat_fields

    line = f"{'9' * 20} ({')( ' * 21}x) R " + " ".join(["18446744073709551615"] * 50) + "\n"
    (tmp_path / "stat").write_text(line)
    raw = _read_small(str(tmp_path / "stat"))
    assert raw == line.encode()
    assert len(_stat_fields(raw)) == 51


def test_a_kept_stat_file_gives_way_when_its_process_is_gone() -> None:
    """A process's stat file is kept open between calls; once the process is gone (reaped), the pid reads as gone (the
    identity it had while its pidfd is held: NVML may list it a tick longer)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    insp = PsutilInspector()
    try:
        first = insp.inspect(child.pid)
        assert child.pid in insp._stat_fds
        watched = child.pid in insp._pidfds  # (where pidfds can be had: `_need_pidfds`)
        assert insp.inspect(child.pid).start_time == first.start_time
    finally:
        child.kill()
        child.wait()
    gone = insp.inspect(child.pid)
    assert (gone.start_time, gone.status) == (first.start_time if watched else None, "gone")
    assert child.pid not in insp._stat_fds


def test_stat_files_of_pids_that_left_the_gpus_are_closed() -> None:
    """`forget_except` closes the stat files and pidfds of pids no longer listed, and `close` all of them."""
    insp = PsutilInspector()
    insp.inspect(os.getpid())
    insp.inspect(os.getppid())
    insp.forget_except({os.getpid()})
    assert list(insp._stat_fds) == [os.getpid()]
    assert set(insp._pidfds) <= {os.getpid()}
    insp.close()
    assert insp._stat_fds == insp._pidfds == {}
    assert insp.inspect(os.getpid()).start_time is not None


def test_beyond_the_cap_stat_files_are_read_by_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past `STAT_FDS` open stat files, further pids are read by path and give the same identity."""
    from vramwatch import attribution

    monkeypatch.setattr(attribution, "STAT_FDS", 1)
    insp = PsutilInspector()
    insp.inspect(os.getppid())
    me = insp.inspect(os.getpid())
    assert list(insp._stat_fds) == [os.getppid()]
    assert me == PsutilInspector().inspect(os.getpid())
