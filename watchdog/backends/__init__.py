"""GPU backends: where readings come from. Only `backends.nvml` imports pynvml.

`open_backend` picks one: a recorded trace (`replay`), a simulated scenario (`simulate`), or NVML. In `auto`
mode a machine with no NVIDIA stack at all (libnvidia-ml missing) gets the simulator, loudly labelled, so the
quick start works anywhere; a GPU host whose driver is merely not loaded is an error the daemon retries, never
silently replaced by fake data (`require_gpu=True`, as the systemd unit sets, disables the fallback entirely).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import BackendUnavailable
from ..typing import Backend, Clock

DEFAULT_SCENARIO = "leak"


def open_backend(
    *,
    simulate: str | None = None,
    replay: str | None = None,
    seed: int = 0,
    clock: Clock | None = None,
    host_pids: str = "auto",
    require_gpu: bool = False,
    replay_loop: bool = False,
) -> Backend:
    """The backend the options ask for; raises BackendUnavailable when NVML cannot be used."""
    if replay is not None:
        import structlog

        from .replay import ReplayBackend

        log = structlog.get_logger("vramwatch.replay")
        return ReplayBackend(
            Path(replay),
            loop=replay_loop,
            on_error=lambda lineno, msg: log.warning("trace_line_skipped", file=replay, line=lineno, error=msg),
        )
    if simulate is not None:
        from .simulated import SimulatedBackend

        return SimulatedBackend(simulate, seed=seed, clock=clock)
    from ..attribution import PsutilInspector
    from .nvml import NvmlBackend

    pids = None if host_pids == "auto" else host_pids == "yes"
    try:
        return NvmlBackend(inspector=PsutilInspector(host_pids=pids))
    except BackendUnavailable as exc:
        if require_gpu or exc.reason != "library_not_found":
            raise
        from .simulated import SimulatedBackend

        return SimulatedBackend(DEFAULT_SCENARIO, seed=seed, clock=clock)


def banner(backend: Backend, *, fallback: bool = False) -> str:
    """The first line every command prints: which GPUs it is looking at, and whether they are real."""
    info = backend.describe()
    if backend.kind == "simulated":
        why = " (no NVIDIA driver found on this machine)" if fallback else ""
        scenario = info.get("scenario", "")
        return f"vramwatch: SIMULATED GPU{why}: scenario {scenario!r}; no real GPU is being watched"
    if backend.kind == "replay":
        return f"vramwatch: REPLAY of {info.get('source', '?')} (recorded on {info.get('host', '?')})"
    return f"vramwatch: NVML, driver {info.get('driver_version', '?')} on {info.get('host', '?')}"
