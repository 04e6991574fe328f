"""Record a multi-tenant corpus on one real GPU: several users' runs sharing a card, with their ground truth.

    python benchmarks/detection/corpus.py OUT [SCENARIO ...] [--only a,b] [--dry-run [--speed 10]]

Used to check that vramwatch raises no false findings on shared cards (and the true ones it should). One
ballast (benchmarks/workloads/ballast.py --leave-gib 24) is started once and held for every scenario, so
the card behaves like a 24 GiB one. Per scenario, in OUT/<scenario>/:

- `<scenario>.raw.jsonl.gz`: `vramwatch record --interval 1` for the whole scenario (4 s pre-roll, ~8 s
  post-roll), ballast included; `<scenario>.jsonl.gz`: the same rebased (ballast pid dropped from every tick,
  its bytes taken off the card's used and total memory: a 24 GiB card);
- `serve.log`: `vramwatch --log-format json serve` running live; its `finding_raised` lines are the evidence;
- `serve-hidden.log` (with `--hidden`, root only): the same `serve` in a pid namespace and /proc of its own
  (`unshare`), as a daemon in a container without the host's pids runs, watching the same card at the same time;
- `attach.jsonl` / `attach.log`: `vramwatch --log-format json attach <pid> --json` on the watched run;
- `events.jsonl`: every workload event (fields `role`, `user`, `tenant` added), `<role>.stdout` / `.stderr`;
- `truth.json` (and the same as `<scenario>.truth.json`, the sidecar score.py reads): the processes and what
  a correct watchdog says about them (expect / allow).

OUT/summary.json sums it up and OUT/corpus.tar.gz packs everything. Processes of the tenant "bob" run as the
Unix user bob (created if missing) when that works, else everything runs as root (summary says why). Every
subprocess is stopped on any failure; a failing scenario is reported and the next one still runs.

`--dry-run` exercises the whole orchestration on a machine without a GPU or PyTorch: each workload is a
stand-in (`python3 -c`) printing the same events on the same timeline, vramwatch watches `--simulate steady`,
free memory is modelled from the stand-ins' own figures, and `--speed X` compresses time X-fold. On a GPU host
without vramwatch installed, `. benchmarks/gpu_env.sh` first.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
WORK = HERE.parent / "workloads"
GIB = 1 << 30
MIB = 1 << 20
BUDGET_GIB = 24.0
CONTEXT_GIB = 0.6  # a PyTorch CUDA context on an H200 (ballasted to 24 GiB, a trainer saw 23.4 GiB free)
STEP_S = 0.25
PRE_ROLL_S = 4.0
# The live server names a process that arrived within 60 s: the ballast must be older than that at the first t0.
BALLAST_SETTLE_S = 65.0
POST_ROLL_S = 8.0
ATTACH_GRACE_S = 20.0  # attach ends by itself once its run has left; past this it is stopped
BOB = "bob"
# The workload scripts are copied here (world-readable) for the real run: bob may not read a checkout under /root.
WORK_COPY = Path("/tmp/vramwatch-corpus-workloads")  # noqa: S108 - fixed, so its path in truth files reads well
# A pid namespace and a /proc of its own (root only), as a container without `--pid=host` has; the daemon in it is
# pid 1 there, and SIGTERM reaches it because it handles the signal.
UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child=SIGTERM"]


class Abort(BaseException):
    """SIGTERM/SIGHUP to the harness: stop everything, still write what was recorded."""


def log(msg: str) -> None:
    print(f"[corpus {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def argv_of(opts: dict[str, Any]) -> list[str]:
    """{"budget_gib": 3, "end_in_validation": True} -> ["--budget-gib", "3", "--end-in-validation"]."""
    out: list[str] = []
    for key, value in opts.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        out += [flag] if value is True else [flag, str(round(value, 3)) if isinstance(value, float) else str(value)]
    return out


def quarter_gib(nbytes: float, floor: float = 1.0) -> float:
    """Bytes -> GiB rounded down to 0.25 GiB, at least `floor`."""
    return max(floor, math.floor(nbytes / GIB * 4) / 4)


def stop_process(proc: subprocess.Popen[Any], grace: float, first: int = signal.SIGTERM) -> int | None:
    """Ask a child (leader of its own process group) to stop, then kill its group; bounded. Its exit code."""
    if proc.poll() is None:
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()  # ballast and contenders also stop on stdin EOF
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, first)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
    return proc.poll()


# --- the dry run's stand-in for every torch workload: same events, same timeline, no torch, no GPU ------------

STANDIN = r"""
import json, os, random, signal, sys, time
spec = json.loads(sys.argv[1])
o, speed, GIB = spec["opts"], spec["speed"], 1 << 30
CTX = int(0.6 * GIB)

def emit(event, **f):
    rec = {"event": event, "t": time.monotonic(), "wall": time.time(), "pid": os.getpid(), "standin": True, **f}
    sys.stdout.write(json.dumps(rec) + "\n")
    sys.stdout.flush()

def nap(s):
    time.sleep(max(0.0, s) / speed)

class Stop(BaseException):
    pass

def on_term(*_):
    raise Stop

def oom(need):
    emit("oom", error="stand-in: CUDA out of memory", tried_to_allocate_bytes=int(need))
    emit("exit", code=3, reason="oom")
    sys.exit(3)

def trainer():
    B = o.get("budget_gib", 24.0) * GIB
    mode, step_s = o.get("mode", "healthy"), o.get("step_seconds", 0.5)
    hold, stop_at = o.get("val_hold_seconds", 0.0), o.get("stop_at")
    val_every, sample_every = o.get("val_every", 50), o.get("sample_every", 100)
    sample = o["sample_gib"] * GIB if o.get("sample_gib") is not None else 0.04 * B
    leak = o.get("leak_mb_per_s") or {"fast_leak": 150.0, "slow_leak": 4.0}.get(mode, 0.0)
    nap(2.0)  # importing torch, the context, the model
    free = spec["free_bytes"] - CTX
    emit("ready", mode=mode, budget_bytes=int(B), free_at_start_bytes=free, step_seconds=step_s, stop_at=stop_at)
    rng, base, kept, leaked, step = random.Random(o.get("seed", 0)), 0.225 * B, 0.0, 0.0, 0
    for step in range(1, o.get("steps", 600) + 1):
        started = time.monotonic()
        if stop_at is not None and started >= stop_at:
            step -= 1
            break
        if mode == "sawtooth":
            act = 0.24 * B * rng.choice((0.35, 0.55, 0.75, 1.0))
        else:
            act = 0.30 * B * min(1.0, step / o.get("warmup_steps", 5))
        reserved = base + act + kept + leaked
        if reserved > free:
            oom(reserved - free)
        phase = "train"
        if val_every and step % val_every == 0:
            held = {"hold_seconds": hold} if hold else {}
            emit("phase", step=step, phase="validation", bytes=int(0.06 * B), **held)
            nap(hold)
            kept, phase = (kept if mode == "sawtooth" else max(kept, 0.06 * B)), "validation"
        if sample_every and step % sample_every == 0:
            if reserved + sample > free:
                oom(sample)
            emit("phase", step=step, phase="sample_images", bytes=int(sample))
            kept, phase = (kept if mode == "sawtooth" else max(kept, 0.06 * B, sample)), "sample_images"
        leaked += leak * 1e6 * step_s
        emit("step", step=step, phase=phase, rows=0, loss=1.0, leaked_bytes=int(leaked), kept_bytes=0,
             allocated_bytes=int(0.9 * reserved), reserved_bytes=int(reserved), inactive_split_bytes=0, seconds=0.0)
        time.sleep(max(0.0, started + step_s / speed - time.monotonic()))
    if o.get("end_in_validation"):
        emit("phase", step=step, phase="validation", bytes=int(0.06 * B), hold_seconds=hold, final=True)
        nap(hold)
        emit("stopping", reason="end_in_validation")
    return 0

def contender():
    nap(1.5)
    emit("ready", gib=o["gib"], after=o.get("after", 0.0), ramp_seconds=o.get("ramp_seconds", 0.0),
         hold_seconds=o.get("hold_seconds"))
    nap(o.get("after", 0.0))
    total = int(o["gib"] * GIB)
    emit("allocating", bytes=total)
    if total > spec["free_bytes"] - CTX:
        oom(total)
    nap(o.get("ramp_seconds", 0.0))
    emit("allocated", bytes=total, free_bytes=spec["free_bytes"] - CTX - total)
    if o.get("hold_seconds") is not None:
        nap(o["hold_seconds"])
        emit("stopping", reason="held")
        return 0
    while sys.stdin.readline():
        pass
    emit("stopping", reason="stdin_closed")
    return 0

def phases():
    nap(1.5)
    script = [part.split() for part in o["script"].split(";") if part.strip()]
    emit("ready", phases=script)
    held = 0
    for op, *args in script:
        args = [float(a) for a in args]
        if op == "load":
            after = held + int(args[0] * GIB)
        elif op == "free":
            after = max(0, held - int(args[0] * GIB))
        else:
            after = 0 if op == "unload" else held
        emit("phase", phase=op, args=args, held_bytes=after)
        if after > held and after - held > spec["free_bytes"] - CTX:
            oom(after - held)
        if op == "load":
            nap(args[1])
        elif op in ("hold", "idle") and not args:
            while sys.stdin.readline():
                pass
            emit("stopping", reason="stdin_closed")
            return 0
        elif op in ("hold", "idle"):
            nap(args[0])
        elif op == "until":  # an absolute CLOCK_MONOTONIC, already compressed by the scenario's speed
            time.sleep(max(0.0, args[0] - time.monotonic()))
        held = after
        emit("done", phase=op, held_bytes=held)
    emit("stopping", reason="script_done")
    return 0

def ballast():
    nap(3.0)
    emit("ready", held_bytes=0, blocks=0, free_bytes=spec["free_bytes"], total_bytes=spec["free_bytes"],
         leave_bytes=int(o.get("leave_gib", 24.0) * GIB), device=0)
    while sys.stdin.readline():
        pass
    emit("stopping", reason="stdin_closed")
    return 0

signal.signal(signal.SIGTERM, on_term)
try:
    code = {"trainer": trainer, "contender": contender, "phases": phases, "ballast": ballast}[spec["script"]]()
except Stop:
    emit("exit", code=0, reason="sigterm")
    sys.exit(0)
emit("exit", code=code, reason="done")
sys.exit(code)
"""


# --- processes -----------------------------------------------------------------------------------------------


class Proc:
    """A workload (or the ballast): its process, its events as they arrive (a reader thread), its files."""

    def __init__(
        self,
        *,
        role: str,
        tenant: str,
        user: str,
        script: str,
        opts: dict[str, Any],
        popen: subprocess.Popen[str],
        raw: IO[str],
        sink: Callable[[dict[str, Any]], None],
    ) -> None:
        self.role, self.tenant, self.user, self.script, self.opts = role, tenant, user, script, opts
        self.args = argv_of(opts)
        self.popen = popen
        self.start_t = time.monotonic()
        self.eof_t: float | None = None
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self._raw, self._sink = raw, sink
        self.thread = threading.Thread(target=self._read, name=f"read-{role}", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        try:
            for line in self.popen.stdout:
                try:
                    ev = json.loads(line)
                except json.JSONDecodeError:
                    ev = None
                if not isinstance(ev, dict):
                    self._raw.write(line)  # anything but an event (the events go to events.jsonl)
                    continue
                ev.update(role=self.role, user=self.user, tenant=self.tenant)
                with self.lock:
                    self.events.append(ev)
                self._sink(ev)
        except (OSError, ValueError) as exc:  # a closed pipe or file during a forced stop
            log(f"{self.role}: reading its output stopped: {exc}")
        finally:
            self.eof_t = time.monotonic()
            with contextlib.suppress(OSError, ValueError):
                self._raw.flush()

    def first(self, event: str) -> dict[str, Any] | None:
        with self.lock:
            return next((e for e in self.events if e.get("event") == event), None)

    def t_of(self, event: str) -> float | None:
        ev = self.first(event)
        return None if ev is None else float(ev["t"])

    def steps(self) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.events if e.get("event") == "step"]

    @property
    def pid(self) -> int:
        """The pid the workload reports (what NVML sees), else the child's own."""
        ready = self.first("ready")
        return int(ready["pid"]) if ready and "pid" in ready else self.popen.pid

    @property
    def oom_t(self) -> float | None:
        return self.t_of("oom")

    @property
    def end_t(self) -> float | None:
        return self.t_of("exit") or (self.eof_t if self.popen.poll() is not None else None)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def modelled_bytes(self) -> int:
        """Dry run: what this stand-in would hold on the card (context + its last reported figure)."""
        if not self.alive() or self.first("ready") is None:
            return 0
        with self.lock:
            last = next((e for e in reversed(self.events)
                         if e.get("event") in {"step", "allocating"} or "held_bytes" in e), None)  # fmt: skip
        held = 0 if last is None else int(last.get("reserved_bytes", last.get("bytes", last.get("held_bytes", 0))))
        return int(CONTEXT_GIB * GIB) + held

    def record(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "pid": self.pid,
            "user": self.user,
            "tenant": self.tenant,
            "script": f"{self.script}.py",
            "args": self.args,
            "start_t": self.start_t,
            "ready_t": self.t_of("ready"),
            "end_t": self.end_t,
            "exit_code": self.popen.poll(),
            "oom_t": self.oom_t,
            "allocating_t": self.t_of("allocating"),
            "allocated_t": self.t_of("allocated"),
        }


class Harness:
    """What every scenario shares: options, users, the ballast, every child started (for the last cleanup)."""

    def __init__(self, out: Path, dry: bool, speed: float, hidden: bool = False) -> None:
        self.out, self.dry, self.speed, self.hidden = out, dry, speed, hidden
        # Dry run: a system python3 that another user may run (a venv or pyenv under /root is not).
        system = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if Path(p).exists()), None)
        self.py = (system or shutil.which("python3") or sys.executable) if dry else sys.executable
        self.vw = [sys.executable, "-m", "vramwatch"]
        self.work = WORK if dry else readable_copy(WORK, WORK_COPY)
        self.sim = ["--simulate", "steady"] if dry else []
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.bob_env = dict(self.env)
        self.bob_prefix: list[str] | None = None
        self.users = "single (not checked)"
        self.children: list[subprocess.Popen[Any]] = []
        self.files: list[IO[Any]] = []
        self.ballast: Proc | None = None
        self.ballast_ready_t: float | None = None
        self.ballast_log: IO[str] | None = None
        self.gpu = "dry run: stand-ins, vramwatch --simulate steady" if dry else gpu_name()

    def spawn(
        self, argv: list[str], *, as_bob: bool, stdout: Any, stderr: Any, stdin: Any = subprocess.DEVNULL
    ) -> subprocess.Popen[Any]:
        prefix = self.bob_prefix if as_bob and self.bob_prefix else []
        proc: subprocess.Popen[Any] = subprocess.Popen(
            [*prefix, *argv],
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=self.bob_env if prefix else self.env,
            cwd=self.work if as_bob else REPO,  # a directory bob may enter
            start_new_session=True,  # its own process group: killpg stops it and anything it started
            text=True if stdout is subprocess.PIPE else None,
            errors="replace" if stdout is subprocess.PIPE else None,
        )
        self.children.append(proc)
        return proc

    def workload(
        self, role: str, script: str, opts: dict[str, Any], *, tenant: str, folder: Path,
        sink: Callable[[dict[str, Any]], None], free_bytes: int = 0,
    ) -> Proc:  # fmt: skip
        """Start a workload script (or its stand-in) for `tenant`, stdout read by a thread, stderr to a file."""
        as_bob = tenant == "bob" and self.bob_prefix is not None
        if self.dry:
            spec = {"script": script, "opts": opts, "speed": self.speed, "free_bytes": free_bytes}
            argv = [self.py, "-c", STANDIN, json.dumps(spec)]
        else:
            argv = [self.py, str(self.work / f"{script}.py"), *argv_of(opts)]
        raw = open_file(self, folder / f"{role}.stdout", "w")
        err = open_file(self, folder / f"{role}.stderr", "wb")
        popen = self.spawn(argv, as_bob=as_bob, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.PIPE)
        return Proc(role=role, tenant=tenant, user=BOB if as_bob else "root", script=script, opts=opts, popen=popen,
                    raw=raw, sink=sink)  # fmt: skip

    # users -----------------------------------------------------------------------------------------------

    def setup_users(self) -> None:
        """Run bob's processes as the Unix user bob if that works here, else everything as root (and say why)."""
        try:
            reason = self._try_bob()
        except (OSError, subprocess.SubprocessError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        if reason:
            self.bob_prefix = None
            self.users = f"single (all processes run as root: {reason})"
        else:
            self.users = f"alice=root, bob={BOB}"
        log(f"users: {self.users}")

    def _try_bob(self) -> str | None:
        if shutil.which("setpriv") is None:
            return "no setpriv"
        if subprocess.run(["id", "-u", BOB], capture_output=True, check=False, timeout=10).returncode != 0:
            shell = next((s for s in ("/usr/sbin/nologin", "/sbin/nologin") if Path(s).exists()), "/bin/false")
            made = subprocess.run(["useradd", "-M", "-s", shell, BOB], capture_output=True, text=True, check=False,
                                  timeout=30)  # fmt: skip
            if made.returncode != 0:
                return f"useradd {BOB} failed: {made.stderr.strip()[:200]}"
        home = Path(f"/tmp/vramwatch-corpus-{BOB}")  # noqa: S108 - bob's HOME for caches, owned by bob
        home.mkdir(exist_ok=True)
        shutil.chown(home, BOB, BOB)
        self.bob_env = {**self.env, "HOME": str(home), "USER": BOB, "LOGNAME": BOB}
        self.bob_prefix = ["setpriv", f"--reuid={BOB}", f"--regid={BOB}", "--init-groups"]
        if self.dry:
            checks = [[self.py, "-c", "pass"]]
        else:  # what bob's workloads will do: import torch, make a context, read the workload scripts
            checks = [[self.py, "-c", "import torch; torch.zeros(1, device='cuda')"],
                      [self.py, str(self.work / "trainer.py"), "--plan"]]  # fmt: skip
        for argv in checks:
            done = subprocess.run([*self.bob_prefix, *argv], env=self.bob_env, cwd=self.work, capture_output=True,
                                  text=True, check=False, timeout=300)  # fmt: skip
            if done.returncode != 0:
                return f"as {BOB}, {' '.join(argv[1:3])[:60]!r} failed: {(done.stderr or done.stdout).strip()[-300:]}"
        who = subprocess.run([*self.bob_prefix, "id", "-un"], env=self.bob_env, capture_output=True, text=True,
                             check=False, timeout=10).stdout.strip()  # fmt: skip
        return None if who == BOB else f"setpriv ran as {who!r}, not {BOB}"

    # ballast ---------------------------------------------------------------------------------------------

    def ensure_ballast(self) -> Proc:
        """The ballast leaving 24 GiB, started once (again only if it died: noted in that scenario)."""
        if self.ballast is not None and self.ballast.alive():
            return self.ballast
        if self.ballast is not None:
            log(f"ballast pid {self.ballast.pid} is gone (exit {self.ballast.popen.poll()}): starting a new one")
        if self.ballast_log is None:
            self.ballast_log = open_file(self, self.out / "ballast.events.jsonl", "w")
        sink = self.ballast_log

        def write(ev: dict[str, Any]) -> None:
            sink.write(json.dumps(ev) + "\n")
            sink.flush()

        free = int(BUDGET_GIB * GIB)
        self.ballast = self.workload("ballast", "ballast", {"leave_gib": BUDGET_GIB}, tenant="alice", folder=self.out,
                                     sink=write, free_bytes=free)  # fmt: skip
        deadline = time.monotonic() + 240
        while self.ballast.first("ready") is None:
            if not self.ballast.alive() or time.monotonic() > deadline:
                raise RuntimeError("the ballast never became ready (see OUT/ballast.stderr)")
            time.sleep(0.2)
        self.ballast_ready_t = time.monotonic()
        log(f"ballast ready: pid {self.ballast.pid}, {self.ballast.first('ready')}")
        return self.ballast

    def cleanup(self) -> None:
        """Last resort: every child still running is stopped (each by its own pid / group)."""
        for proc in reversed(self.children):
            if proc.poll() is None:
                stop_process(proc, 10)
        for f in self.files:
            with contextlib.suppress(OSError, ValueError):
                f.close()


def open_file(h: Harness, path: Path, mode: str) -> IO[Any]:
    f: IO[Any] = path.open(mode)
    h.files.append(f)
    return f


def readable_copy(src: Path, dst: Path) -> Path:
    """The workload scripts copied where every user may read them; `src` itself if that fails."""
    try:
        dst.mkdir(exist_ok=True)
        dst.chmod(0o755)
        for f in src.glob("*.py"):
            shutil.copy(f, dst / f.name)
            (dst / f.name).chmod(0o644)
    except OSError as exc:
        log(f"cannot copy the workloads to {dst} ({exc}): running them from {src}")
        return src
    return dst


def gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, check=False, timeout=30).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown GPU"
    return out.strip().splitlines()[0] if out.strip() else "unknown GPU"


def nvml_free_bytes() -> int:
    """Free memory of the card the workloads use, as NVML reports it (nvidia-smi, else pynvml)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    index = visible if visible.isdigit() else "0"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits", "-i", index],
                             capture_output=True, text=True, check=True, timeout=20).stdout  # fmt: skip
        return int(float(out.strip().splitlines()[0]) * MIB)
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        import pynvml  # vramwatch's own dependency (nvidia-ml-py)

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(int(index))).free)
        finally:
            pynvml.nvmlShutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- one scenario --------------------------------------------------------------------------------------------


class Scenario:
    """One scenario's recorder, server, workloads and attach, on a timeline in scenario seconds from t0."""

    def __init__(self, h: Harness, name: str) -> None:
        self.h, self.name = h, name
        self.dir = h.out / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, Proc] = {}
        self.t0 = time.monotonic()
        self.end_t: float | None = None
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.sizing: dict[str, Any] = {}
        self.attach: subprocess.Popen[Any] | None = None
        self.attach_role: str | None = None
        self.attach_code: int | None = None
        self.recorder: subprocess.Popen[Any] | None = None
        self.server: subprocess.Popen[Any] | None = None
        self.hidden_server: subprocess.Popen[Any] | None = None
        self.record_code: int | None = None
        self.serve_code: int | None = None
        self.hidden_code: int | None = None
        self.ballast: Proc | None = None
        self.rebased: dict[str, Any] | None = None
        self._events = open_file(h, self.dir / "events.jsonl", "w")
        self._lock = threading.Lock()
        self.finished = False

    # time: scenario seconds are real seconds / speed (speed is 1 on the GPU)
    def rel(self, t: float | None) -> float | None:
        return None if t is None else round((t - self.t0) * self.h.speed, 2)

    def at(self, rel: float) -> float:
        return self.t0 + rel / self.h.speed

    def now(self) -> float:
        return (time.monotonic() - self.t0) * self.h.speed

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds) / self.h.speed)

    def until(self, rel: float) -> None:
        left = self.at(rel) - time.monotonic()
        if left > 0:
            time.sleep(left)
        self.say(f"t={rel:g}")

    def wait_for(self, done: Callable[[], bool], timeout: float) -> bool:
        """Poll `done` for up to `timeout` scenario seconds."""
        deadline = time.monotonic() + timeout / self.h.speed
        while time.monotonic() < deadline:
            if done():
                return True
            time.sleep(0.1 / self.h.speed)
        return done()

    def say(self, msg: str) -> None:
        log(f"{self.name} +{self.now():6.1f}s {msg}")

    # memory
    def free_bytes(self) -> int:
        if self.h.dry:  # modelled: the 24 GiB budget less what each stand-in says it holds
            return int(BUDGET_GIB * GIB) - sum(p.modelled_bytes() for p in self.procs.values())
        return nvml_free_bytes()

    def free_max(self, seconds: float) -> int:
        """The most free memory seen over `seconds` (a sawtooth neighbour at its smallest)."""
        best = self.free_bytes()
        deadline = time.monotonic() + seconds / self.h.speed
        while time.monotonic() < deadline:
            time.sleep(0.25 / self.h.speed)
            best = max(best, self.free_bytes())
        return best

    # processes
    def _sink(self, ev: dict[str, Any]) -> None:
        with self._lock:
            self._events.write(json.dumps(ev) + "\n")
            self._events.flush()
        kind = ev.get("event")
        if kind in {"ready", "oom", "exit", "allocating", "allocated", "stopping"} or ev.get("final"):
            brief = {k: ev[k] for k in ("code", "reason", "bytes", "tried_to_allocate_bytes", "free_at_start_bytes")
                     if k in ev}  # fmt: skip
            self.say(f"{ev['role']} (pid {ev.get('pid')}, {ev['user']}): {kind} {json.dumps(brief)}")

    def start(
        self, role: str, script: str, opts: dict[str, Any], *, tenant: str = "alice", watched: bool = False
    ) -> Proc:
        free = self.free_bytes() if self.h.dry else 0
        proc = self.h.workload(role, script, opts, tenant=tenant, folder=self.dir, sink=self._sink, free_bytes=free)
        self.procs[role] = proc
        self.say(f"started {role} ({tenant} as {proc.user}, pid {proc.popen.pid}): {script}.py {' '.join(proc.args)}")
        if watched:
            self.attach_role = role
            argv = [*self.h.vw, "--log-format", "json", "attach", str(proc.popen.pid), "--json", *self.h.sim]
            out = open_file(self.h, self.dir / "attach.jsonl", "wb")
            err = open_file(self.h, self.dir / "attach.log", "wb")
            self.attach = self.h.spawn(argv, as_bob=False, stdout=out, stderr=err)
            self.say(f"attach on {role} (pid {proc.popen.pid}): pid {self.attach.pid}")
        return proc

    def get(self, role: str) -> Proc | None:
        return self.procs.get(role)

    def trainer(self, role: str, mode: str, budget: float, *, tenant: str = "alice", watched: bool = False,
                **opts: Any) -> Proc:  # fmt: skip
        """trainer.py with the corpus's defaults: 0.25 s steps, a huge --steps (ends at --stop-at or an OOM)."""
        if "stop_at" in opts and opts["stop_at"] is not None:
            opts["stop_at"] = round(self.at(opts["stop_at"]), 3)  # scenario seconds -> CLOCK_MONOTONIC
        full = {"mode": mode, "budget_gib": budget, "step_seconds": STEP_S, "steps": 100000, **opts}
        return self.start(role, "trainer", full, tenant=tenant, watched=watched)

    # begin / finish
    def begin(self) -> None:
        self.ballast = self.h.ensure_ballast()
        iv = str(round(1.0 / self.h.speed, 3))
        raw = self.dir / f"{self.name}.raw.jsonl.gz"
        rec_log = open_file(self.h, self.dir / "record.log", "wb")
        self.recorder = self.h.spawn([*self.h.vw, "--log-format", "json", "record", str(raw), "--interval", iv,
                                      *self.h.sim], as_bob=False, stdout=rec_log, stderr=subprocess.STDOUT)  # fmt: skip
        serve_log = open_file(self.h, self.dir / "serve.log", "wb")
        gpu = self.h.sim or ["--require-gpu"]  # on the GPU host, never a silent fallback to the simulator
        listen = f"127.0.0.1:{free_port()}"
        self.server = self.h.spawn([*self.h.vw, "--log-format", "json", "serve", "--listen", listen, "--interval", iv,
                                    *gpu], as_bob=False, stdout=serve_log, stderr=subprocess.STDOUT)  # fmt: skip
        self.say(f"record pid {self.recorder.pid} -> {raw.name}; serve pid {self.server.pid} on {listen}")
        daemons = [("record", self.recorder), ("serve", self.server)]
        if self.h.hidden:
            # The same daemon as from a container without the host's pids: its own pid namespace and /proc.
            hidden_log = open_file(self.h, self.dir / "serve-hidden.log", "wb")
            listen = f"127.0.0.1:{free_port()}"
            self.hidden_server = self.h.spawn(
                [*UNSHARE, *self.h.vw, "--log-format", "json", "serve", "--listen", listen, "--interval", iv, *gpu],
                as_bob=False, stdout=hidden_log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            self.say(f"serve in its own pid namespace: pid {self.hidden_server.pid} on {listen}")
            daemons.append(("serve (own pid namespace)", self.hidden_server))
        time.sleep(PRE_ROLL_S / self.h.speed)
        for what, proc in daemons:
            if proc.poll() is not None:
                self.errors.append(f"vramwatch {what} exited early with code {proc.poll()} (see its log)")
        self.t0 = time.monotonic()
        self.say("t0")

    def finish(self) -> None:
        """Stop everything of this scenario; every step bounded and guarded (runs on failures too)."""
        if self.finished:
            return
        self.finished = True
        self.end_t = time.monotonic()
        for role, proc in reversed(list(self.procs.items())):
            if proc.alive():
                self.say(f"stopping {role} (pid {proc.pid})")
                stop_process(proc.popen, 30)
        if self.attach is not None:
            watched = self.procs.get(self.attach_role or "")
            gone = watched.end_t if watched and watched.end_t else time.monotonic()
            left = gone + ATTACH_GRACE_S / self.h.speed - time.monotonic()
            try:
                self.attach_code = self.attach.wait(max(0.1, left))
                self.say(f"attach exited by itself: {self.attach_code}")
            except subprocess.TimeoutExpired:
                self.attach_code = stop_process(self.attach, 15)
                self.notes.append(f"attach did not exit within {ATTACH_GRACE_S:g} s of its run's end: stopped")
                self.say(f"attach stopped: {self.attach_code}")
        time.sleep(POST_ROLL_S / self.h.speed)
        if self.server is not None:
            self.serve_code = stop_process(self.server, 20)
        if self.hidden_server is not None:
            self.hidden_code = stop_process(self.hidden_server, 20)
        if self.recorder is not None:
            self.record_code = stop_process(self.recorder, 30, first=signal.SIGINT)
        for proc in self.procs.values():
            proc.thread.join(10)
        with contextlib.suppress(OSError, ValueError):
            self._events.flush()
        self.say(f"finished (record exit {self.record_code}, serve exit {self.serve_code})")


# --- the ballast out of the trace ----------------------------------------------------------------------------


def read_trace(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """The trace's lines; a recorder killed mid-write leaves a truncated gzip: what was read is kept."""
    lines: list[dict[str, Any]] = []
    complete = True
    try:
        with gzip.open(path, "rt") as f:
            for line in f:
                if line.strip():
                    lines.append(json.loads(line))
    except (EOFError, OSError, json.JSONDecodeError):
        complete = False
    return lines, complete


def rebase(raw: Path, out: Path, ballast_pid: int, *, missing_ok: bool = False) -> dict[str, Any]:
    """Drop the ballast from every tick and shrink its GPU by what it held (as record_real.py does)."""
    lines, complete = read_trace(raw)
    if not lines:
        raise RuntimeError(f"{raw.name}: empty or unreadable trace")
    header, ticks = lines[0], lines[1:]
    held: dict[str, int] = {}  # GPU uuid -> the ballast's bytes there (constant by construction)
    for tick in ticks:
        for p in tick.get("processes", []):
            if p.get("pid") == ballast_pid and p.get("used_bytes") is not None:
                held[p["gpu"]] = max(held.get(p["gpu"], 0), int(p["used_bytes"]))
    if not held and not missing_ok:
        raise RuntimeError("the ballast never appeared in the trace")
    header["rebased"] = {"removed_pid": ballast_pid, "why": f"ballast making the card a {BUDGET_GIB:g} GiB one",
                         "bytes_by_gpu": held}  # fmt: skip
    for g in header.get("gpus", []):
        g["total_bytes"] -= held.get(g.get("uuid", ""), 0)
    with gzip.open(out, "wt") as dst:
        dst.write(json.dumps(header, separators=(",", ":")) + "\n")
        for tick in ticks:
            tick["processes"] = [p for p in tick.get("processes", []) if p.get("pid") != ballast_pid]
            for g in tick.get("gpus", []):
                for key in ("total_bytes", "used_bytes"):
                    if g.get(key) is not None:
                        g[key] -= held.get(g.get("uuid", ""), 0)
            dst.write(json.dumps(tick, separators=(",", ":")) + "\n")
    return {"ballast_bytes": max(held.values(), default=0), "ticks": len(ticks), "complete": complete}


# --- the scenarios' timelines (scenario seconds from t0) -----------------------------------------------------


def static_newcomers(sc: Scenario) -> None:
    sc.start("server", "contender", {"gib": 6.0, "ramp_seconds": 4.0}, tenant="bob")
    sc.until(40)
    sc.trainer("A", "healthy", 10, stop_at=140)
    sc.until(70)
    b = sc.trainer("B", "sawtooth", 12, stop_at=148, watched=True)
    sc.until(106)
    # C leaves less than B's swing: the most free seen over 3 s is with B at its smallest bucket.
    free = sc.free_max(3.0)
    reserved = [int(e["reserved_bytes"]) for e in b.steps() if e.get("reserved_bytes") is not None]
    swing = max(reserved) - min(reserved) if reserved else 0
    leave = max(0.5 * GIB, swing / 2)
    gib = quarter_gib(free - leave - CONTEXT_GIB * GIB)
    sc.sizing["C"] = {"free_bytes": free, "b_swing_bytes": swing, "leave_bytes": int(leave), "gib": gib,
                      "b_steps_seen": len(reserved), "context_gib": CONTEXT_GIB}  # fmt: skip
    sc.say(f"C sized: free {free / GIB:.2f} GiB, B's swing {swing / GIB:.2f} GiB -> --gib {gib}")
    sc.until(110)
    # B's use swings every step: C's last blocks may fit only while B is at a small bucket, so C retries
    # them (up to 30 s), as a newcomer grabbing what a neighbour lets go; B's next large bucket then lacks room.
    sc.start("C", "contender", {"gib": gib, "after": 0.0, "retry_seconds": 30.0}, tenant="bob")
    sc.until(150)


def exits_and_ooms(sc: Scenario) -> None:
    # X at 32 GiB, not 26: measured on the H200, a 28 GiB budget holds 17.5 GiB and a 3 GiB one 1.7-1.9 GiB, so
    # X (~20 GiB) plus Y, Z or W leaves ~2.7 GiB free, ~0.7 GiB with the intruder I: the card nearly full.
    sc.trainer("X", "healthy", 32, stop_at=200)
    sc.until(20)
    sc.trainer("Y", "healthy", 3, stop_at=60)
    sc.until(70)
    sc.trainer("Z", "healthy", 3, stop_at=100)
    sc.until(95)
    sc.start("I", "contender", {"gib": 1.5, "hold_seconds": 20.0, "retry_seconds": 5.0})
    sc.until(120)
    sc.trainer("W", "healthy", 3, watched=True, val_every=10000, val_hold_seconds=3.0, end_in_validation=True,
               stop_at=137)  # fmt: skip
    sc.until(149)
    free = sc.free_bytes()
    g2 = round(1.5 * free / GIB, 2)
    sc.sizing["S"] = {"free_bytes": free, "sample_gib": g2}
    sc.say(f"S sized: free {free / GIB:.2f} GiB -> --sample-gib {g2}")
    sc.until(150)
    sc.trainer("S", "healthy", 3, tenant="bob", sample_every=20, sample_gib=g2)
    sc.until(200)
    x = sc.get("X")
    if x is not None:
        sc.wait_for(lambda: not x.alive(), 8)
    sc.until(210)


def sawtooth_warmup(sc: Scenario) -> None:
    sc.trainer("P", "sawtooth", 14, watched=True, stop_at=145)
    sc.until(10)
    sc.trainer("Q", "healthy", 8, tenant="bob", accum=4, val_every=400, sample_every=480, val_hold_seconds=1.0,
               stop_at=145)  # fmt: skip
    sc.until(150)


def young_incumbent(sc: Scenario) -> None:
    r = sc.trainer("R", "healthy", 16, watched=True, stop_at=76)
    sc.wait_for(lambda: r.first("ready") is not None or not r.alive(), 120)
    ready = r.t_of("ready") or time.monotonic()

    def warmed_up() -> bool:
        tail = [e.get("reserved_bytes") for e in r.steps()[-5:]]
        return (len(tail) == 5 and len(set(tail)) == 1) or time.monotonic() >= ready + 10 / sc.h.speed

    sc.wait_for(lambda: warmed_up() or not r.alive(), 30)
    warm = sc.now()
    sc.say(f"R warmed up ({len(r.steps())} steps): K in 16 s")
    sc.sleep(16)
    free = sc.free_bytes()
    gib = quarter_gib(0.82 * free)
    sc.sizing["K"] = {"free_bytes": free, "gib": gib, "r_warmed_up_rel_t": round(warm, 1)}
    sc.start("K", "contender", {"gib": gib, "after": 0.0}, tenant="bob")
    sc.until(80)


def young_validation(sc: Scenario) -> None:
    """A young run squeezed out of its first validation's room (about 75 s): V loads its model (6 GiB over 8 s)
    and takes its first steps (1 GiB more), then holds still; at 25 s K (another user) takes all the room but
    2 GiB; at 60 s V validates with 3 GiB more (40 % of what it holds, as trainers' first validation or sample
    images need) and runs out of memory. The young-run warning at K's arrival is owed: a claim that came true."""
    validate_at = round(sc.at(60), 3)  # scenario seconds -> CLOCK_MONOTONIC (phases.py's `until`)
    sc.start("V", "phases", {"script": f"load 6 8; load 1 2; until {validate_at}; load 3 0; hold 3; free 3; hold"},
             watched=True)  # fmt: skip
    sc.until(25)
    free = sc.free_bytes()
    gib = quarter_gib(free - 2 * GIB)
    sc.sizing["K"] = {"free_bytes": free, "gib": gib}
    sc.start("K", "contender", {"gib": gib, "after": 0.0}, tenant="bob")
    v = sc.procs["V"]
    sc.wait_for(lambda: not v.alive(), 60)
    sc.until(min(110.0, (sc.rel(v.end_t) or 95.0) + 15))


def shared_day(sc: Scenario) -> None:
    sc.start("N", "contender", {"gib": 3.0, "ramp_seconds": 3.0}, tenant="bob")
    sc.until(20)
    sc.trainer("run1", "healthy", 7, stop_at=300)
    sc.until(200)
    sc.trainer("run2", "sawtooth", 6, tenant="bob", stop_at=560)
    sc.until(420)
    sc.trainer("run3", "healthy", 6, val_every=300, val_hold_seconds=1.0, stop_at=780)
    # L's OOM near t=730, before run3 ends (780): 60 MB/s would take until ~t=850-900 (the day ends by 960).
    _leak_until_oom(sc, start=600, oom_at=730, end=(900, 960), linger=20)


def shared_afternoon(sc: Scenario) -> None:
    """`shared_day` compressed into four and a half minutes (what a short GPU lease allows): a notebook, two
    users' runs starting and ending beside it, then a leak that runs out."""
    sc.start("N", "contender", {"gib": 3.0, "ramp_seconds": 3.0}, tenant="bob")
    sc.until(10)
    sc.trainer("run1", "healthy", 7, stop_at=110)
    sc.until(60)
    sc.trainer("run2", "sawtooth", 6, tenant="bob", stop_at=150)
    _leak_until_oom(sc, start=120, oom_at=235, end=(245, 290), linger=12)


def busy_afternoon(sc: Scenario) -> None:
    """A card shared the way a lab's is (about 7.5 minutes): a notebook; a model server idle at its CUDA context
    until asked for a model, which it loads from a network share, unloads when idle and loads again; a Flux-style
    LoRA run that loads its text encoders, frees them and loads its diffusion model layer by layer; a trainer
    ending in its validation on a busy card; a second user's sawtooth run; then a leak that runs out."""
    sc.start("N", "contender", {"gib": 2.5, "ramp_seconds": 3.0})
    sc.start("S", "phases", {"script": "idle 100; load 6 15; hold 95; unload; idle 50; load 6 20; hold"},
             tenant="bob")  # fmt: skip
    sc.until(10)
    sc.trainer("run1", "healthy", 7, val_hold_seconds=3.0, end_in_validation=True, stop_at=215)
    sc.until(30)
    sc.start("F", "phases", {"script": "load 4 3; hold 25; unload; load 5 25; load 1.5 2; hold 100"}, tenant="bob")
    sc.until(200)
    sc.trainer("run2", "sawtooth", 6, tenant="bob", stop_at=420)
    _leak_until_oom(sc, start=300, oom_at=400, end=(410, 450), linger=12)


def _leak_until_oom(sc: Scenario, *, start: float, oom_at: float, end: tuple[float, float], linger: float) -> None:
    """Start the leaking run L at `start`, its rate set from the free memory then so that its OOM lands near
    `oom_at` (~10 s of its life are warm-up); end the scenario `linger` s after it, within `end`."""
    sc.until(start - 3)
    free = sc.free_bytes()
    room = max(GIB, free - (0.63 * 5 + CONTEXT_GIB) * GIB)
    rate = round(min(300.0, max(30.0, room / 1e6 / (oom_at - start - 10))), 1)
    sc.sizing["L"] = {"free_bytes": free, "room_bytes": int(room), "leak_mb_per_s": rate, "target_oom_rel_t": oom_at}
    sc.say(f"L sized: free {free / GIB:.2f} GiB -> --leak-mb-per-s {rate}")
    sc.until(start)
    leak = sc.trainer("L", "fast_leak", 5, watched=True, leak_mb_per_s=rate)

    def until() -> float:
        gone = sc.rel(leak.oom_t or leak.end_t)
        return end[1] if gone is None else min(end[1], max(end[0], gone + linger))

    sc.wait_for(lambda: sc.now() >= until(), end[1] - start + 40)
    if leak.alive():
        sc.notes.append(f"L did not run out of memory by t={end[1]:g}: stopped")


TIMELINES: dict[str, Callable[[Scenario], None]] = {
    "static_newcomers": static_newcomers,
    "exits_and_ooms": exits_and_ooms,
    "sawtooth_warmup": sawtooth_warmup,
    "young_incumbent": young_incumbent,
    "young_validation": young_validation,
    "shared_day": shared_day,
    "shared_afternoon": shared_afternoon,
    "busy_afternoon": busy_afternoon,
}


# --- ground truth --------------------------------------------------------------------------------------------


def _e(kind: str, proc: Proc, from_t: float | None, note: str, **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "pid": proc.pid, "from_t": from_t, **extra, "note": note}


def _a(kind: str, pid: int | None, from_t: float | None, note: str, to_t: float | None = None) -> dict[str, Any]:
    return {"kind": kind, "pid": pid, "from_t": from_t, "to_t": to_t, "note": note}


def _newcomer(
    expect: list[dict[str, Any]], allow: list[dict[str, Any]], proc: Proc | None, note: str, full: str
) -> float | None:
    """A newcomer that took its share and lived: the contention naming it is owed within 3 ticks of its coming
    in, and `pressure` (`full`) is allowed from then. When it came in; None when it never did (or ran out)."""
    arrived = proc.t_of("allocating") if proc else None
    if proc is None or arrived is None or proc.oom_t is not None:
        return None
    expect.append(_e("contention", proc, arrived, note, within_ticks=3))
    allow.append(_a("pressure", None, arrived, full))
    return arrived


def expectations(sc: Scenario) -> tuple[list[dict[str, Any]], list[dict[str, Any]], set[str]]:
    """(expect, allow, roles whose OOM the scenario foresees) from what really happened."""
    expect: list[dict[str, Any]] = []
    allow: list[dict[str, Any]] = []
    foreseen: set[str] = set()
    g = sc.get
    if sc.name == "static_newcomers":
        b, c = g("B"), g("C")
        foreseen = {"B"}
        arrived = _newcomer(expect, allow, c, "C took what B's sawtooth needs",
                            "the card is full once C holds its share")  # fmt: skip
        if arrived is not None and b:
            for kind in ("pressure", "oom_forecast", "probable_oom", "oom"):
                allow.append(_a(kind, b.pid, arrived, "about B after C arrived"))
        if b and b.oom_t is not None:
            expect.append(_e("probable_oom", b, b.oom_t, "B really ran out of memory (C took its room)"))
    elif sc.name == "exits_and_ooms":
        s, i = g("S"), g("I")
        foreseen = {"S"}
        if s and s.oom_t is not None:
            expect.append(_e("probable_oom", s, s.oom_t, "S's sampling phase needed 1.5x the free memory"))
            expect.append({"kind": "oom", "pid": s.pid, "t": s.oom_t, "gradual": False,
                           "note": "a spike, not a trend: no warning is owed"})  # fmt: skip
        elif s:
            sc.notes.append("S did not run out of memory")
        if i:
            allow.append(_a("contention", i.pid, i.t_of("allocating") or i.start_t, "I arrives on a nearly full card"))
        allow.append(_a("pressure", None, sc.t0, "the card is nearly full most of the time"))
    elif sc.name == "young_incumbent":
        r, k = g("R"), g("K")
        foreseen = {"R"}
        arrived = _newcomer(expect, allow, k, "K took 82% of the free memory",
                            "the card is nearly full once K holds its share")  # fmt: skip
        if arrived is not None and r and r.oom_t is not None and r.oom_t >= arrived:
            for kind in ("pressure", "oom_forecast", "probable_oom", "oom"):
                allow.append(_a(kind, r.pid, arrived, "R ran out of memory after K arrived"))
    elif sc.name == "young_validation":
        v, k = g("V"), g("K")
        foreseen = {"V"}
        _newcomer(expect, allow, k, "K left V less than its first validation needs",
                  "the card is nearly full once K holds its share")  # fmt: skip
        if v and v.oom_t is not None:
            # Not required: the validation fills the card and fails within milliseconds, between two ticks, and a
            # parent that reaps at once leaves no zombie to read: NVML alone may not tell it from an end (the agent
            # can; on Linux 6.15+ the pidfd keeps its exit status: docs/detection.md).
            expect.append({**_e("probable_oom", v, v.oom_t, "V's first validation did not fit beside K"),
                           "required": False})  # fmt: skip
            expect.append({"kind": "oom", "pid": v.pid, "t": v.oom_t, "gradual": False,
                           "note": "a 3 GiB step at once, not a trend: no forecast is owed"})  # fmt: skip
        elif v:
            sc.notes.append("V did not run out of memory")
    elif sc.name in {"shared_day", "shared_afternoon", "busy_afternoon"}:
        leak = g("L")
        foreseen = {"L"}
        if leak and leak.oom_t is not None:
            # from_t: nothing raised before L existed warns of L's leak (a peer's alert on another run's load is not).
            expect.append({"kind": "oom", "pid": leak.pid, "t": leak.oom_t, "from_t": leak.start_t, "gradual": True,
                           "lead_s": 60, "critical_lead_s": 20, "note": "L leaks until a real OOM"})  # fmt: skip
            expect.append(_e("probable_oom", leak, leak.oom_t, "L died of it"))
            allow.append(_a("pressure", None, leak.oom_t - 120, "L's leak fills the card"))
            why = "L's own leak: the warnings the oom expectation asks for"
            allow += [_a(kind, leak.pid, leak.start_t, why) for kind in ("growth", "oom_forecast")]
            # L arrives and takes memory for as long as it lives: naming it as the newcomer that squeezes a run beside
            # it is true, and owed to nobody (the forecast already warns of L). It is a claim borne out when that run
            # really ran out of memory after L arrived.
            squeezed = [r for r, p in sc.procs.items() if r != "L" and p.oom_t is not None and p.oom_t >= leak.start_t]
            if squeezed:
                expect.append({**_e("contention", leak, leak.start_t, f"L took the room of {', '.join(squeezed)}, "
                                    "which ran out of memory"), "required": False})  # fmt: skip
            else:
                allow.append(_a("contention", leak.pid, leak.start_t, "L takes the room of the runs beside it"))
        elif leak:
            sc.notes.append("L did not run out of memory")
    return expect, allow, foreseen


def write_truth(sc: Scenario) -> dict[str, Any]:
    expect, allow, foreseen = expectations(sc)
    unexpected = []
    for role, proc in sc.procs.items():
        if proc.oom_t is not None and role not in foreseen:
            note = "not planned: a post-mortem about it is true, nothing before it is owed"
            unexpected.append({"event": "oom", "role": role, "pid": proc.pid, "t": proc.oom_t, "note": note})
            for kind in ("probable_oom", "oom"):
                allow.append(_a(kind, proc.pid, proc.oom_t, f"{role} really ran out of memory (unplanned)"))
    gradual = next((x for x in expect if x["kind"] == "oom" and x.get("gradual")), None)
    contention = next((x for x in expect if x["kind"] == "contention"), None)
    ballast = sc.ballast
    truth = {
        "scenario": sc.name,
        "version": 2,
        "source": f"real: {sc.h.gpu}, ballast leaving {BUDGET_GIB:g} GiB" if not sc.h.dry else sc.h.gpu,
        "users": sc.h.users,
        "ballast_pid": ballast.pid if ballast else None,
        "ballast_bytes": (sc.rebased or {}).get("ballast_bytes", 0),
        "t0": sc.t0,
        "end_t": sc.end_t,
        "processes": [p.record() for p in sc.procs.values()],
        "expect": expect,
        "allow": allow,
        "unexpected": unexpected,
        "healthy": sc.name == "sawtooth_warmup",
        "sizing": sc.sizing,
        "notes": sc.notes,
        # the keys of version 1 (record_real.py), for the scorer that reads them
        "oom_t": gradual["t"] if gradual else None,
        "oom_pid": gradual["pid"] if gradual else None,
        "gradual": gradual is not None,
        "contention_t": contention["from_t"] if contention else None,
        "contender_pid": contention["pid"] if contention else None,
    }
    text = json.dumps(truth, indent=2) + "\n"
    (sc.dir / "truth.json").write_text(text)
    # The scorer's sidecar name (score.py OUT/<scenario> reads <name>.truth.json beside <name>.jsonl.gz;
    # the raw trace has none, so it is skipped there).
    (sc.dir / f"{sc.name}.truth.json").write_text(text)
    return truth


def findings_in(path: Path, event: str = "finding") -> dict[str, int]:
    """Counts by kind of serve.log's JSON lines `event` ("finding": raised; "finding_cleared")."""
    counts: Counter[str] = Counter()
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    rec = json.loads(line)
                    if rec.get("event") == event:
                        counts[str(rec.get("kind"))] += 1
    return dict(counts)


def attach_findings(path: Path) -> dict[str, int]:
    counts: Counter[str] = Counter()
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                rec = json.loads(line)
                if isinstance(rec, dict) and rec.get("event") == "tick":
                    counts.update(str(f.get("kind")) for f in rec.get("findings", []))
    return dict(counts)


def run_scenario(h: Harness, name: str) -> dict[str, Any]:
    log(f"=== {name} ===")
    started = time.monotonic()
    sc = Scenario(h, name)
    interrupted: BaseException | None = None
    try:
        sc.begin()
        TIMELINES[name](sc)
    except Exception:
        sc.errors.append(traceback.format_exc())
        log(f"{name}: FAILED\n{sc.errors[-1]}")
    except (Abort, KeyboardInterrupt) as exc:  # stop, but keep what was recorded; the caller stops after this
        interrupted = exc
        sc.errors.append(f"interrupted: {type(exc).__name__} {exc}")
    finally:
        sc.finish()
    raw = sc.dir / f"{name}.raw.jsonl.gz"
    try:
        sc.rebased = rebase(raw, sc.dir / f"{name}.jsonl.gz", sc.ballast.pid if sc.ballast else -1, missing_ok=h.dry)
        if not sc.rebased["complete"]:
            sc.notes.append("the raw trace was truncated (recorder killed?): rebased what was read")
    except Exception as exc:
        sc.errors.append(f"rebase: {type(exc).__name__}: {exc}")
    truth: dict[str, Any] = {}
    try:
        truth = write_truth(sc)
    except Exception:
        sc.errors.append("truth: " + traceback.format_exc())
    said = attach_findings(sc.dir / "attach.jsonl")
    attached = {"role": sc.attach_role, "exit_code": sc.attach_code, "findings": said}
    ooms = [{"role": r, "pid": p.pid, "t": p.oom_t, "rel_t": sc.rel(p.oom_t)} for r, p in sc.procs.items() if p.oom_t]
    summary = {
        "scenario": name,
        "ok": not sc.errors,
        "interrupted": interrupted is not None,
        "errors": sc.errors,
        "notes": sc.notes,
        "wall_s": round(time.monotonic() - started, 1),
        "scenario_s": sc.rel(sc.end_t),
        "exit_codes": {r: p.popen.poll() for r, p in sc.procs.items()},
        "pids": {r: p.pid for r, p in sc.procs.items()},
        "ends_rel_t": {r: sc.rel(p.end_t) for r, p in sc.procs.items()},
        "ooms": ooms,
        "attach": attached,
        "serve_exit": sc.serve_code,
        "record_exit": sc.record_code,
        "serve_findings": findings_in(sc.dir / "serve.log"),
        **(
            {"serve_hidden_exit": sc.hidden_code, "serve_hidden_findings": findings_in(sc.dir / "serve-hidden.log")}
            if h.hidden
            else {}
        ),
        "rebased": sc.rebased,
        "sizing": sc.sizing,
        "expect": [(x["kind"], x["pid"]) for x in truth.get("expect", [])],
    }
    brief = {k: summary[k] for k in ("exit_codes", "ooms", "attach", "serve_findings", "serve_hidden_findings")
             if k in summary}  # fmt: skip
    log(f"{name}: {'ok' if summary['ok'] else 'ERROR'} {json.dumps(brief)}")
    return summary


def pack(out: Path) -> Path:
    tar = out / "corpus.tar.gz"
    tmp = out / "corpus.tar.gz.part"
    with tarfile.open(tmp, "w:gz") as t:
        for path in sorted(out.rglob("*")):
            if path.is_file() and path not in (tar, tmp):
                t.add(path, arcname=f"{out.name}/{path.relative_to(out)}")
    tmp.replace(tar)
    return tar


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("scenarios", nargs="*", help=f"default: all of {', '.join(TIMELINES)}")
    ap.add_argument("--only", default="", help="comma-separated scenarios (added to the positional ones)")
    ap.add_argument("--dry-run", action="store_true", help="stand-ins and the simulator: no GPU, no torch")
    ap.add_argument("--speed", type=float, default=1.0, help="dry run only: compress time this many times")
    ap.add_argument(
        "--settle",
        type=float,
        default=BALLAST_SETTLE_S,
        help=f"seconds the ballast ages before the first scenario [default: {BALLAST_SETTLE_S:g}]",
    )
    ap.add_argument(
        "--hidden",
        action="store_true",
        help="a second `serve` in its own pid namespace (`unshare`), as in a container without the host's pids",
    )
    args = ap.parse_args()
    wanted = [*args.scenarios, *(s.strip() for s in args.only.split(",") if s.strip())] or list(TIMELINES)
    unknown = [s for s in wanted if s not in TIMELINES]
    if unknown:
        ap.error(f"unknown scenario(s) {unknown}; known: {list(TIMELINES)}")
    if args.speed != 1.0 and not args.dry_run:
        ap.error("--speed is for --dry-run only (the GPU run is real time)")
    if args.speed <= 0:
        ap.error("--speed must be positive")
    args.out.mkdir(parents=True, exist_ok=True)

    def on_signal(signum: int, _frame: object) -> None:
        signal.signal(signum, signal.SIG_IGN)  # once: the cleanup must not be interrupted again
        raise Abort(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    h = Harness(args.out, args.dry_run, args.speed, args.hidden)
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    aborted: str | None = None
    log(f"corpus -> {args.out} ({'dry run, speed ' + str(args.speed) if args.dry_run else h.gpu}): {wanted}")
    try:
        h.ensure_ballast()
        h.setup_users()  # with the ballast in place: bob's check then also shows that a context fits
        settle = h.ballast_ready_t + args.settle / h.speed - time.monotonic() if h.ballast_ready_t else 0
        if settle > 0:
            log(f"letting the ballast age {settle:.0f} s before the first scenario")
            time.sleep(settle)
        for name in wanted:
            results.append(run_scenario(h, name))
            if results[-1]["interrupted"]:
                aborted = results[-1]["errors"][-1]
                break
    except (Abort, KeyboardInterrupt) as exc:
        aborted = f"{type(exc).__name__} {exc}"
        log(f"aborted: {aborted}")
    except Exception:
        aborted = traceback.format_exc()
        log(f"harness failure:\n{aborted}")
    finally:
        if h.ballast is not None:
            stop_process(h.ballast.popen, 60)
        h.cleanup()
    summary = {
        "dry_run": args.dry_run,
        "speed": args.speed,
        "gpu": h.gpu,
        "users": h.users,
        "budget_gib": BUDGET_GIB,
        "ballast": h.ballast.first("ready") if h.ballast else None,
        "wall_s": round(time.monotonic() - started, 1),
        "aborted": aborted,
        "ok": aborted is None and all(r["ok"] for r in results) and len(results) == len(wanted),
        "scenarios": results,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    tar = pack(args.out)
    log(f"summary: {'ok' if summary['ok'] else 'NOT ok'}; {len(results)}/{len(wanted)} scenarios; "
        f"{summary['wall_s']} s; packed {tar} ({tar.stat().st_size / MIB:.1f} MiB)")  # fmt: skip
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
