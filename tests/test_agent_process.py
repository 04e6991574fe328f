"""`run_command` end to end: real child interpreters, our sitecustomize, a fake `torch` on PYTHONPATH.

The fake torch is a directory written here: `torch.cuda` with is_initialized / memory_stats_as_nested_dict /
mem_get_info and the OOM-observer hook, driven by `_fake_set` / `_fake_oom` from the child's script.
"""

from __future__ import annotations

import io
import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from vramwatch.agenthost.link import AgentReport
from vramwatch.agenthost.runner import NOT_WATCHED, run_command
from vramwatch.attribution import PsutilInspector
from vramwatch.model import ProcessExit

MIB = 1 << 20
GIB = 1 << 30

FAKE_TORCH = {
    "torch/__init__.py": """
__version__ = "0.0+fake"
from . import _C, cuda  # real torch imports torch.cuda eagerly
""",
    "torch/_C.py": """
_observers = []
def _cuda_attach_out_of_memory_observer(fn):
    _observers.append(fn)
""",
    "torch/cuda/memory.py": """
import pickle
def _record_memory_history(enabled="all", context="all", stacks="all", max_entries=None):
    pass
def _dump_snapshot(filename="dump_snapshot.pickle"):
    with open(filename, "wb") as f:
        pickle.dump({"segments": [], "device_traces": []}, f)
""",
    "torch/cuda/__init__.py": """
import sys
from . import memory
TOTAL = 24 << 30
_initialized = False
_s = dict(allocated=0, reserved=0, split=0, retries=0, ooms=0, peak=0)
class OutOfMemoryError(RuntimeError):
    pass
class _Props:
    uuid = "00000000-1111-2222-3333-444444444444"
    total_memory = TOTAL
def is_initialized():
    return _initialized
def device_count():
    return 1
def get_device_properties(device):
    return _Props()
def mem_get_info(device=None):
    return (TOTAL - _s["reserved"], TOTAL)
def memory_stats_as_nested_dict(device=None):
    if not _initialized:
        return {}
    def stat(v, peak=0):
        return {"all": {"current": v, "peak": peak}}
    return {"allocated_bytes": stat(_s["allocated"]), "reserved_bytes": stat(_s["reserved"], _s["peak"]),
            "inactive_split_bytes": stat(_s["split"]), "num_alloc_retries": _s["retries"], "num_ooms": _s["ooms"]}
def empty_cache():
    _s["reserved"] = _s["allocated"]
def _fake_set(**values):
    global _initialized
    _initialized = True
    _s.update(values)
    _s["peak"] = max(_s["peak"], _s["reserved"])
def _fake_oom(size):
    _s["ooms"] += 1
    for obs in sys.modules["torch"]._C._observers:
        obs(0, size, TOTAL, TOTAL - _s["reserved"])
    raise OutOfMemoryError("CUDA out of memory (fake)")
""",
}


@pytest.fixture(scope="module")
def fake_torch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fake_torch")
    for name, text in FAKE_TORCH.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def child_env(pythonpath: list[Path]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VRAMWATCH_")}
    env["PYTHONPATH"] = os.pathsep.join(map(str, pythonpath))
    env["VRAMWATCH_AGENT_INTERVAL"] = "0.05"
    return env


class Run:
    def __init__(self, returncode: int, reports: list[AgentReport], stderr: str, out: str, err: str) -> None:
        self.returncode, self.reports, self.stderr, self.out, self.err = returncode, reports, stderr, out, err

    def kinds(self) -> list[str]:
        return [r.kind for r in self.reports]


@pytest.fixture
def run(fake_torch: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]):
    """Run a Python script under run_command, with no daemon (the default sockets are a dead path)."""

    def go(script: str, *, python: str = sys.executable, extra_path: list[Path] | None = None, **kwargs) -> Run:
        reports: list[AgentReport] = []
        stderr = io.StringIO()
        kwargs.setdefault("exit_status_seconds", 0.0)  # the zombie window has its own test
        rc = run_command(
            [python, "-c", script],
            socket_path=tmp_path / "no-daemon.sock",
            on_report=reports.append,
            stderr=stderr,
            env=child_env([*(extra_path or []), fake_torch]),
            **kwargs,
        )
        captured = capfd.readouterr()
        return Run(rc, reports, stderr.getvalue(), captured.out, captured.err)

    return go


def test_exit_status_passes_through(run):
    """The runner returns the command's own exit status."""
    assert run("import sys; sys.exit(7)").returncode == 7


def test_death_by_signal_is_128_plus_the_signal(run):
    """A child killed by SIGTERM makes the runner return 143, as a shell reports it."""
    assert run("import os, signal; os.kill(os.getpid(), signal.SIGTERM)").returncode == 128 + signal.SIGTERM


def test_missing_command_is_127(tmp_path: Path):
    """A command that does not exist gives 127 and a one-line message, like a shell."""
    err = io.StringIO()
    assert run_command([str(tmp_path / "no-such-trainer")], stderr=err, socket_path=tmp_path / "x.sock") == 127
    assert "command not found" in err.getvalue()


def test_a_process_without_torch_gets_no_thread_and_no_torch(run):
    """Without `import torch` the agent is not even loaded: an import hook, no thread, torch never imported."""
    result = run(
        "import json, sys, threading, time; time.sleep(0.3); print(json.dumps({"
        "'torch': 'torch' in sys.modules, 'threads': threading.active_count(),"
        "'agent': 'vramwatch.agent' in sys.modules or '_vramwatch_agent' in sys.modules,"
        "'hook': any(type(f).__name__ == '_TorchImportHook' for f in sys.meta_path)}))"
    )
    assert json.loads(result.out) == {"torch": False, "threads": 1, "agent": False, "hook": True}
    assert result.reports == []
    assert result.returncode == 0


def test_torch_without_cuda_sends_nothing(run):
    """Importing torch without initialising CUDA: the agent waits and reports nothing, and the runner says at the
    end that nothing was watched (a run nobody watched must not look like a healthy one)."""
    result = run("import time, torch; time.sleep(0.4)")
    assert result.reports == []
    assert NOT_WATCHED in result.stderr


def test_a_run_whose_agent_reported_is_not_said_unwatched(run):
    """A run from which an agent reported ends without the "not watched" line."""
    result = run(f"import time, torch; torch.cuda._fake_set(allocated={MIB}, reserved={MIB}); time.sleep(0.8)")
    assert result.reports
    assert NOT_WATCHED not in result.stderr


def test_reports_reach_the_runner_without_a_daemon(run):
    """With no daemon, the child's allocator figures reach the runner's private listener under its pid."""
    result = run(
        "import os, time, torch; print(os.getpid(), flush=True);"
        f"torch.cuda._fake_set(allocated={300 * MIB}, reserved={512 * MIB}); time.sleep(0.8)"
    )
    pid = int(result.out.split()[0])
    assert result.kinds()[0] == "hello"
    stats = [r for r in result.reports if r.kind == "stats"]
    assert stats, result.kinds()
    assert {r.pid for r in result.reports} == {pid}
    assert stats[-1].devices[0].stats.allocated_bytes == 300 * MIB
    assert stats[-1].devices[0].gpu_uuid == "GPU-00000000-1111-2222-3333-444444444444"
    assert result.returncode == 0


def test_users_sitecustomize_still_runs(run, tmp_path: Path):
    """The sitecustomize that would have run without vramwatch still runs, and is what `sitecustomize` names."""
    user = tmp_path / "user_site"
    user.mkdir()
    (user / "sitecustomize.py").write_text("import os\nos.environ['USER_SITECUSTOMIZE'] = 'ran'\n")
    result = run(
        "import os, sys, sitecustomize;"
        "print(os.environ.get('USER_SITECUSTOMIZE'), sitecustomize.__file__,"
        "any(type(f).__name__ == '_TorchImportHook' for f in sys.meta_path))",
        extra_path=[user],
    )
    flag, origin, hook = result.out.split()
    assert flag == "ran"
    assert Path(origin) == user / "sitecustomize.py"
    assert hook == "True"  # and ours ran too


def test_a_broken_user_sitecustomize_is_reported_as_python_would(run, tmp_path: Path):
    """An error in the user's sitecustomize is printed by `site` as usual; the program and agent go on."""
    user = tmp_path / "user_site"
    user.mkdir()
    (user / "sitecustomize.py").write_text("raise RuntimeError('user site is broken')\n")
    result = run("import sys, torch; print('alive', 'vramwatch.agent' in sys.modules)", extra_path=[user])
    assert "Error in sitecustomize" in result.err
    assert "user site is broken" in result.err
    assert result.out.split() == ["alive", "True"]


def test_oom_post_mortem_and_snapshot(run, tmp_path: Path):
    """An OOM in the child is reported with the allocator's state, printed, and a snapshot is dumped."""
    result = run(
        "import time, torch;"
        f"torch.cuda._fake_set(allocated={100 * MIB}, reserved={900 * MIB}, split={700 * MIB}); time.sleep(0.6)\n"
        "try:\n"
        f"    torch.cuda._fake_oom({66 * MIB})\n"
        "except torch.cuda.OutOfMemoryError:\n"
        "    print('caught', flush=True)\n",
        snapshot_dir=tmp_path / "snaps",
    )
    assert result.out.strip() == "caught"
    (oom,) = [r.oom for r in result.reports if r.oom is not None]
    assert oom.requested_bytes == 66 * MIB
    assert oom.reserved_unallocated_bytes == 800 * MIB
    assert oom.snapshot_path is not None
    assert Path(oom.snapshot_path).parent == (tmp_path / "snaps").resolve()
    assert Path(oom.snapshot_path).is_file()
    assert "ran out of GPU memory on cuda:0" in result.stderr
    assert "memory_viz" in result.stderr


PRESSURE_SCRIPT = """
import sys, threading, torch, vramwatch.agent
got = threading.Event()
def on_pressure(notice):
    print("pressure", notice.level, notice.source, threading.current_thread().name, flush=True)
    got.set()
vramwatch.agent.on_pressure(on_pressure)
torch.cuda._fake_set(allocated=int(23.5 * (1 << 30)), reserved=int(23.9 * (1 << 30)))
sys.exit(0 if got.wait(5) else 1)
"""


def test_near_full_runner_sends_pressure_to_the_scripts_callback(run):
    """When headroom falls under 10 %, the runner notifies the process and its on_pressure callback runs."""
    result = run(PRESSURE_SCRIPT)
    assert result.returncode == 0, result.err
    assert result.out.split() == ["pressure", "critical", "socket", "vramwatch-agent"]
    assert "memory pressure in pid" in result.stderr


SIGNAL_SCRIPT = """
import os, signal, sys, threading
def users_handler(signum, frame):
    os.write(1, b"user handler\\n")  # one write each: two threads print here, print() may interleave
signal.signal(signal.SIGUSR2, users_handler)
import vramwatch.agent, torch
got = threading.Event()
vramwatch.agent.on_pressure(lambda notice: (os.write(1, f"pressure {notice.source}\\n".encode()), got.set()))
os.kill(os.getpid(), signal.SIGUSR2)
sys.exit(0 if got.wait(5) else 1)
"""


def test_sigusr2_runs_callbacks_and_chains_the_users_handler(run):
    """SIGUSR2 is a pressure notice once torch is imported, and a handler installed before still runs."""
    result = run(SIGNAL_SCRIPT)
    assert result.returncode == 0, result.err
    assert sorted(result.out.splitlines()) == ["pressure signal", "user handler"]


def test_an_ignored_sigusr2_is_left_ignored(run):
    """A process that ignores SIGUSR2 keeps ignoring it: the agent does not take it over."""
    result = run(
        "import signal; signal.signal(signal.SIGUSR2, signal.SIG_IGN); import torch;"
        "print(signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN)"
    )
    assert result.out.strip() == "True"


def test_a_forked_child_has_no_agent(run):
    """A fork (a DataLoader worker) inherits neither the running agent nor the pressure callbacks."""
    result = run(
        "import os, time, torch, vramwatch.agent as a; a.on_pressure(print);"
        f"torch.cuda._fake_set(allocated={MIB}, reserved={2 * MIB}); time.sleep(0.2)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    from vramwatch.agent import core\n"
        "    print(a.current() is None, core._registered_callbacks() == [], flush=True); os._exit(0)\n"
        "os.waitpid(pid, 0); print(a.current() is not None)\n"
    )
    assert result.out.split() == ["True", "True", "True"]


def _interpreter_without_vramwatch() -> str | None:
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if not Path(candidate).is_file() or Path(candidate).resolve() == Path(sys.executable).resolve():
            continue
        probe = subprocess.run(
            [
                candidate,
                "-c",
                "import sys, importlib.util as u;"
                "sys.exit(0 if sys.version_info >= (3, 10) and u.find_spec('vramwatch') is None else 1)",
            ],
            check=False,
            env={"PATH": os.environ.get("PATH", "")},
        )
        if probe.returncode == 0:
            return candidate
    return None


def test_agent_loads_by_path_where_vramwatch_is_not_installed(run):
    """A trainer environment without vramwatch still gets the agent, loaded from the runner's files."""
    python = _interpreter_without_vramwatch()
    if python is None:
        pytest.skip("no second Python >= 3.10 without vramwatch on this machine")
    result = run(
        "import sys, time, torch;"
        f"torch.cuda._fake_set(allocated={5 * MIB}, reserved={8 * MIB}); time.sleep(0.8);"
        "print('_vramwatch_agent' in sys.modules, 'vramwatch' in sys.modules)",
        python=python,
    )
    assert result.out.split() == ["True", "False"]
    assert any(r.kind == "stats" for r in result.reports)


WAITING_CHILD = """
import signal, sys, time
def handler(signum, frame):
    print("child got", signal.Signals(signum).name, flush=True)
    sys.exit(5)
signal.signal(signal.SIGINT, handler)
signal.signal(signal.SIGTERM, handler)
print("ready", flush=True)
time.sleep(20)
"""


def runner_argv(tmp_path: Path, script: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vramwatch.agenthost.runner",
        "--socket",
        str(tmp_path / "none.sock"),
        "--",
        sys.executable,
        "-c",
        script,
    ]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_sent_to_the_runner_reach_the_child(tmp_path: Path, sig: signal.Signals):
    """Outside a terminal, SIGTERM and SIGINT sent to the runner are forwarded; the runner outlives the child."""
    proc = subprocess.Popen(
        runner_argv(tmp_path, WAITING_CHILD), stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=10)
    assert out.strip() == f"child got {sig.name}"
    assert proc.returncode == 5


TERMINAL_CHILD = """
import signal, sys
# SIGINT blocked and taken with sigtimedwait: each delivery is seen on its own, with its sender
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
print("ready", flush=True)
senders = []
info = signal.sigtimedwait({signal.SIGINT}, 10)
while info is not None:
    senders.append(info.si_pid)
    info = signal.sigtimedwait({signal.SIGINT}, 0.5)  # a forwarded duplicate would arrive within this
print("sigints", len(senders), "from", senders, flush=True)
sys.exit(5)
"""


def test_ctrl_c_in_a_terminal_reaches_the_child_once(tmp_path: Path):
    """Ctrl-C in a terminal: the terminal signals the child itself; the runner neither dies nor doubles it."""
    argv = runner_argv(tmp_path, TERMINAL_CHILD)
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - becomes the runner, in a new session with this pty as its terminal
        os.execv(argv[0], argv)  # noqa: S606
    output = b""
    try:
        deadline = time.monotonic() + 15
        while b"ready" not in output and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                output += os.read(fd, 1024)
        os.write(fd, b"\x03")
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    chunk = os.read(fd, 1024)
                except OSError:  # EIO: the terminal's other end closed
                    break
                if not chunk:
                    break
                output += chunk
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    assert b"sigints 1 from [0]" in output, output  # si_pid 0: sent by the terminal, not by the runner
    assert os.waitstatus_to_exitcode(status) == 5


def _in_a_pty(argv: list[str]) -> bytes:
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover
        os.execv(argv[0], argv)  # noqa: S606
    output = b""
    try:
        while True:
            try:
                chunk = os.read(fd, 1024)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return output


def test_the_runner_knows_when_the_terminal_already_signals_the_child():
    """In a terminal's foreground group the runner leaves Ctrl-C to the terminal; elsewhere it forwards."""
    script = "from vramwatch.agenthost.runner import _foreground_of_a_terminal as f; print('foreground', f())"
    assert b"foreground True" in _in_a_pty([sys.executable, "-c", script])
    detached = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, start_new_session=True, check=True
    )
    assert detached.stdout.strip() == "foreground False"


def test_runner_module_entry_point(tmp_path: Path):
    """`python -m vramwatch.agenthost.runner -- cmd` runs the command and writes the events file."""
    events = tmp_path / "events.jsonl"
    rc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vramwatch.agenthost.runner",
            "--socket",
            str(tmp_path / "none.sock"),
            "--events",
            str(events),
            "--",
            sys.executable,
            "-c",
            "raise SystemExit(3)",
        ],
        check=False,
    ).returncode
    assert rc == 3
    assert events.exists()
    assert shutil.which(sys.executable) or Path(sys.executable).exists()


def test_the_finished_child_is_left_for_a_daemon_to_read_its_exit_status(tmp_path: Path) -> None:
    """`vramwatch run` leaves its ended child unreaped for a moment: /proc shows the exit status (a clean end
    is never called an OOM), then the runner reaps it and returns the same code."""
    seen: list[ProcessExit] = []
    pid_file = tmp_path / "pid"

    def watch() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not seen:
            if pid_file.exists() and pid_file.read_text().strip():
                pid = int(pid_file.read_text())
                found = PsutilInspector().exit_status(pid, None)
                if found is not None:
                    seen.append(found)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    script = f"import os, sys; open({str(pid_file)!r}, 'w').write(str(os.getpid())); sys.exit(3)"
    err = io.StringIO()
    rc = run_command([sys.executable, "-c", script], stderr=err, socket_path=tmp_path / "x.sock",
                     builtin_checks=False, exit_status_seconds=1.0)  # fmt: skip
    watcher.join()
    assert rc == 3
    assert [(e.exit_code, e.signal) for e in seen] == [(3, None)]
