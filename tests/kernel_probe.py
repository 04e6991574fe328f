"""What this machine's kernel can do, for the tests that need a feature to skip where it is missing."""

from __future__ import annotations

import os
import subprocess
import sys

from vramwatch.attribution import _pidfd_open, _reaped_status


def reaped_exit_supported() -> bool:
    """Whether the kernel keeps a reaped process's exit status for its pidfds (Linux 6.15+): tried on a child."""
    try:
        child = subprocess.Popen([sys.executable, "-c", ""])
        fd = _pidfd_open(child.pid)
    except OSError:
        return False
    try:
        child.wait()
        return _reaped_status(fd) is not None
    finally:
        os.close(fd)
