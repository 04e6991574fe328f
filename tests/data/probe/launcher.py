"""A launcher that starts the command after it in a child process and, like `accelerate launch` or a shell
wrapper, does not pass SIGINT on: it ignores it (with a handler, so the child keeps the default) and waits."""

from __future__ import annotations

import signal
import subprocess
import sys

if __name__ == "__main__":
    signal.signal(signal.SIGINT, lambda _signum, _frame: None)
    sys.exit(subprocess.call(sys.argv[1:]))
