"""Attach the advisor's ranked setting changes to a freshly raised finding.

Which advice: a process the detectors already call leaking gets the leak advice (it is a bug; memory settings
only delay the OOM) whatever the finding; a process that dies of OOM within two minutes of starting gets the
step-1 advice (one step does not fit); an agent's OOM that fragmentation caused gets the fragmentation advice;
otherwise the advice its detector declares (`Detector.advice`) is given. The finding itself is never changed
but for its `advice`.

Detectors say *what* is happening; the advisor says *what to change*, in the trainer's own flags. This
module picks the process the advice is about (the finding's own process, or for a device-wide finding the
process growing fastest on that GPU, else the largest holder), gathers what the advisor may read about it
(its command line, its launcher's, the allow-listed allocator variables of its environment), and maps the
finding to the advice situation. It runs once per raised finding, never per tick, and reads what the tick
concluded (the `Analysis`, the active findings) as values: it never calls back into the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

import psutil

from .advice import advice_lines, advise_process, holder_of
from .detectors import Analysis
from .detectors.leak import leaking, steady
from .detectors.registry import by_kind
from .environ import read_environ as read_env
from .history import History
from .model import Finding, FindingKind, ProcessMeta, Snapshot

#: A process that dies of OOM this soon after it appeared never reached a steady step: a step-1 spike, for
#: which the advice is the size of one step (batch, resolution, checkpointing), not a leak hunt.
SPIKE_SECONDS = 120.0

EnvReader = Callable[[int], Mapping[str, str] | None]
TreeReader = Callable[[int], tuple[tuple[str, ...], ...]]


def read_tree(pid: int) -> tuple[tuple[str, ...], ...]:
    """Command lines of a live process's ancestors, nearest first (`accelerate launch ...` sits there)."""
    argvs = []
    try:
        for parent in psutil.Process(pid).parents()[:8]:
            cmd = parent.cmdline()
            if cmd:
                argvs.append(tuple(cmd))
    except (psutil.Error, OSError):
        pass
    return tuple(argvs)


class Enricher:
    """Callable `(finding, snapshot, analysis, active) -> finding with advice`; live lookups only when `live`."""

    def __init__(
        self,
        history: History,
        *,
        live: bool = True,
        env_reader: EnvReader = read_env,
        tree_reader: TreeReader = read_tree,
        limit: int = 4,
        advise_args: str = "",
    ) -> None:
        self.history = history
        #: Appended to the `vramwatch advise PID` a line suggests (" --simulate leak" on a simulated card).
        self.advise_args = advise_args
        self.live = live
        self.env_reader = env_reader
        self.tree_reader = tree_reader
        self.limit = limit

    def __call__(
        self, finding: Finding, snap: Snapshot, analysis: Analysis | None = None, active: Iterable[Finding] = ()
    ) -> Finding:
        """`finding` with its advice; `analysis` and `active` are the tick's conclusions the choice reads."""
        analysis = analysis if analysis is not None else Analysis(t=snap.t)
        meta = self._subject(finding, snap, analysis)
        if meta is None:
            return finding
        kind = self._advice_kind(finding, meta, analysis, active)
        if kind is None:
            return finding
        context: dict[str, object] = {}
        g = snap.gpu(finding.gpu_uuid) if finding.gpu_uuid else None
        if g is not None and g.total_bytes:
            context["gpu_total_bytes"] = g.total_bytes
        if finding.kind == FindingKind.CONTENTION:
            context["others"] = [holder_of(finding)]
        elif finding.kind == FindingKind.STALE_HOLDER:
            context["stale"] = [holder_of(finding)]
        try:
            advice = advise_process(
                meta,
                kind,
                tree_argvs=self.tree_reader(meta.pid) if self.live else (),
                env=self.env_reader(meta.pid) if self.live else None,
                context=context,
            )
        except Exception:
            return finding
        lines = advice_lines(advice, limit=self.limit)
        if kind != "growth" and meta.pid in {k.pid for k in steady(analysis.process_growth)}:
            # Young and rising steadily: a warm-up that overshoots and a leak look alike for a while.
            lines += (
                "if memory keeps rising after the first steps, this is a leak, not a setting: "
                f"`vramwatch advise {meta.pid} --kind growth{self.advise_args}` says what to look for",
            )
        return replace(finding, advice=lines)

    def _subject(self, finding: Finding, snap: Snapshot, analysis: Analysis) -> ProcessMeta | None:
        """The process whose settings the advice is about."""
        if finding.kind == FindingKind.CONTENTION:
            # The finding names the newcomer; the advice is for the run it squeezes.
            incumbent = finding.numbers.get("incumbent_pid")
            for p in snap.processes:
                if p.pid == incumbent and p.gpu_uuid == finding.gpu_uuid:
                    return p.meta
        if finding.process is not None:
            for p in snap.processes:
                if p.key == finding.process:
                    return p.meta
            track = self.history.processes.get((finding.process, finding.gpu_uuid or ""))
            return track.meta if track else None
        on_gpu = [p for p in snap.processes if p.gpu_uuid == finding.gpu_uuid]
        if not on_gpu:
            return None
        rates = {key: r.bytes_per_second for key, r in analysis.process_growth.items()}
        grower = max(on_gpu, key=lambda p: rates.get((p.key, p.gpu_uuid), 0.0))
        if rates.get((grower.key, grower.gpu_uuid), 0.0) > 0:
            return grower.meta
        return max(on_gpu, key=lambda p: p.used_bytes or 0).meta

    def _advice_kind(
        self, finding: Finding, meta: ProcessMeta, analysis: Analysis, active: Iterable[Finding]
    ) -> str | None:
        """Which situation's advice fits (rules.toml's key), chosen from the finding and the evidence beside it."""
        if finding.kind == FindingKind.OOM and finding.numbers.get("fragmented"):
            # The agent's certain OOM: its own fragmentation verdict (detectors/oom.py) picks the remedy.
            return "fragmentation"
        if finding.kind in {FindingKind.OOM_FORECAST, FindingKind.PRESSURE, FindingKind.PROBABLE_OOM}:
            leaks = leaking(analysis.process_growth, self.history, active)
            if any(k.pid in (meta.pid, meta.root_pid) for k in leaks):
                # The detectors already called this process's growth a leak: settings would only delay the OOM.
                return "growth"
        if finding.kind == FindingKind.PROBABLE_OOM and finding.process is not None:
            track = self.history.processes.get((finding.process, finding.gpu_uuid or ""))
            if track is not None and track.last_seen - track.first_seen < SPIKE_SECONDS:
                return "spike"
        detector = by_kind().get(finding.kind)
        return detector.advice if detector is not None else None
