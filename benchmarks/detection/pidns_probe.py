"""What NVML lists to a daemon in its own pid namespace, on a real GPU (about 20 s):

    . benchmarks/gpu_env.sh && python3 benchmarks/detection/pidns_probe.py [OUT.json]

A daemon in a container without the host's pids (no `hostPID`, `docker run` without `--pid=host`) reads the same
driver. Whether the driver's process lists then give the host's pids (which name nothing, or the wrong process,
in the container) or leave them out decides what such a daemon has to judge: series of pids it cannot resolve, or
the card's series alone (docs/detection.md, "Where the pids are hidden, the card is the grower"). NVIDIA's
container toolkit says the driver is not aware of pid namespaces and returns host pids
(https://github.com/NVIDIA/nvidia-docker/issues/1483); this asks the driver at hand.

A CUDA process takes 1 GiB on the host; then, in a new pid namespace with its own /proc (`unshare --pid --fork
--mount-proc`, as a container has), NVML's compute processes are listed, each pid looked up in that /proc, and
vramwatch's NVML backend and sampler read one snapshot. The JSON answer (stdout, and OUT.json if given) says what
each saw.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HOLDER = """
import sys, time, torch
x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
torch.cuda.synchronize()
print("ready", flush=True)
time.sleep(float(sys.argv[1]))
"""

INSIDE = """
import json, os, pynvml
from vramwatch.backends.nvml import NvmlBackend
from vramwatch.clock import SystemClock
from vramwatch.history import History
from vramwatch.sampler import Sampler

pynvml.nvmlInit()
handle = pynvml.nvmlDeviceGetHandleByIndex(0)
listed = [
    {"pid": p.pid, "used_bytes": p.usedGpuMemory, "in_this_proc": os.path.exists(f"/proc/{p.pid}")}
    for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
]
pynvml.nvmlShutdown()
sampler = Sampler(NvmlBackend(), History(), SystemClock())
snap = sampler.tick()
print(json.dumps({
    "my_pid": os.getpid(),
    "pid_ns_inode": os.stat("/proc/self/ns/pid").st_ino,
    "nvml_compute_processes": listed,
    "vramwatch_visible": sampler.visible,
    "vramwatch_processes": None if snap is None else [
        {"pid": p.meta.pid, "start_time": p.meta.start_time, "used_bytes": p.used_bytes} for p in snap.processes
    ],
    "card_used_bytes": None if snap is None else snap.gpus[0].used_bytes,
}))
"""


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, "60"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        if holder.stdout.readline().strip() != "ready":
            print("the CUDA holder did not start", file=sys.stderr)
            return 2
        time.sleep(1.5)  # NVML's lists catch up with a new context within a read or two
        inside = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", INSIDE],
            capture_output=True, text=True, check=False, timeout=60, env=os.environ,
        )  # fmt: skip
        lines = inside.stdout.splitlines() if inside.returncode == 0 else []
        answer = {
            "holder_host_pid": holder.pid,
            "host_pid_ns_inode": Path("/proc/self/ns/pid").stat().st_ino,
            "unshare_exit": inside.returncode,
            # The answer is the last line; the lines before it are the sampler's log (its warning, in there).
            "inside": json.loads(lines[-1]) if lines else None,
            "inside_log": lines[:-1],
            "stderr_tail": inside.stderr[-2000:],
        }
    finally:
        holder.kill()
        holder.wait(10)
    text = json.dumps(answer, indent=2)
    print(text)
    if out is not None:
        out.write_text(text + "\n")
    return 0 if answer["inside"] is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
