"""Human output: the `status` table, and the JSON documents that scripts read.

Numbers read as everywhere else (`vramwatch.units`: GiB with one decimal, MB/s, durations as a person says
them). JSON output goes through `snapshot_to_json` so scripts get bytes and seconds, never formatted strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .model import Finding, ProcessKey, Snapshot
from .units import duration, gib, rate


def eta_text(eta_seconds: float, free_bytes: float | None = None) -> str:
    """The forecast in words. Under a second is "at its limit": the card counts as full a margin before free
    reaches zero (the allocation that fails is never tiny), so "full in ~0s" with 0.4 GiB free misleads."""
    if eta_seconds < 1:
        return "at its limit" + (f" ({gib(free_bytes)} GiB free)" if free_bytes is not None else "")
    return f"full in ~{duration(eta_seconds)}"


def status_table(doc: Mapping[str, Any]) -> str:
    """GPUs, each followed by its processes: memory, share of the card, user, name, trend and forecast.

    Renders the `status --json` document (from a local snapshot or a running daemon's /status.json), so the
    table and the JSON can never disagree.
    """
    lines: list[str] = []
    verdicts = {(v["pid"], v["gpu_uuid"]): v["verdict"] for v in doc.get("verdicts", [])}
    for g in doc["gpus"]:
        if not g["up"]:
            lines.append(f"GPU {g['index']}  {g['name']}  DOWN  {g['uuid']}")
            continue
        used, total = g["used_bytes"], g["total_bytes"]
        pct = f"{100 * used / total:.0f}%" if used is not None and total else "?"
        head = f"GPU {g['index']}  {g['name']}  {gib(used)} / {gib(total)} GiB used ({pct}), "
        head += f"{gib(g['free_bytes'])} GiB free"
        if g.get("growth_bytes_per_second") is not None:
            head += f"  trend {rate(g['growth_bytes_per_second'], signed=True)}"
        if g.get("oom_eta_seconds") is not None:
            head += f"  {eta_text(g['oom_eta_seconds'], g['free_bytes'])}"
        lines.append(head)
        procs = sorted(g["processes"], key=lambda p: -(p["used_bytes"] or 0))
        if procs:
            lines.append(f"  {'PID':>8}  {'MEM GiB':>8}  {'CARD':>5}  {'USER':<12} {'PROCESS':<28} TREND")
        for p in procs:
            share = f"{100 * p['used_bytes'] / total:.0f}%" if p["used_bytes"] is not None and total else "?"
            name = p["name"] or "?"
            if p.get("root_name") and p.get("root_pid") not in (None, p["pid"]):
                name += f" <{p['root_name']}:{p['root_pid']}>"
            growth = p.get("growth_bytes_per_second")
            trend = rate(growth, signed=True) if growth is not None else ""
            verdict = verdicts.get((p["pid"], g["uuid"]))
            lines.append(
                f"  {p['pid']:>8}  {gib(p['used_bytes']):>8}  {share:>5}  {(p['user'] or '?')[:12]:<12} "
                f"{name[:28]:<28} {trend}{'  ' + verdict if verdict else ''}"
            )
        if g.get("unattributed_bytes"):
            lines.append(f"  {'-':>8}  {gib(g['unattributed_bytes']):>8}  {'':>5}  {'':<12} (driver / unattributed)")
    if not doc.get("processes_visible", True):
        lines.append("processes not visible: this vramwatch runs in a container without the host pid namespace;")
        lines.append("  per-process names and users are withheld (run with hostPID: true or docker --pid=host)")
    for f in doc.get("findings", []):
        lines.append(f"[{f['severity']}] {f['message']}")
    return "\n".join(lines)


def snapshot_to_json(
    snap: Snapshot,
    *,
    process_growth: Mapping[tuple[ProcessKey, str], float] | None = None,
    oom_eta: Mapping[str, float] | None = None,
    gpu_growth: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The `status --json` document: bytes and seconds, no command lines."""
    pg, eta, gg = process_growth or {}, oom_eta or {}, gpu_growth or {}
    return {
        "t": snap.t,
        "wall_time": snap.wall_time,
        "processes_visible": snap.processes_visible,
        "gpus": [
            {
                "index": g.index,
                "uuid": g.uuid,
                "name": g.name,
                "up": g.up,
                "total_bytes": g.total_bytes,
                "used_bytes": g.used_bytes,
                "free_bytes": g.free_bytes,
                "reserved_bytes": g.reserved_bytes,
                "unattributed_bytes": snap.unattributed_bytes(g.uuid),
                "growth_bytes_per_second": gg.get(g.uuid),
                "oom_eta_seconds": eta.get(g.uuid),
                "processes": [
                    {
                        "pid": p.pid,
                        "start_time": p.meta.start_time,
                        "name": p.meta.name,
                        "user": p.meta.user,
                        "root_pid": p.meta.root_pid,
                        "root_name": p.meta.root_name,
                        "container": p.meta.container_id,
                        "pod_uid": p.meta.pod_uid,
                        "status": p.meta.status,
                        "used_bytes": p.used_bytes,
                        "growth_bytes_per_second": pg.get((p.key, p.gpu_uuid)),
                    }
                    for p in snap.processes_on(g.uuid)
                ],
            }
            for g in snap.gpus
        ],
    }


def finding_context(f: Finding) -> dict[str, Any]:
    """What every JSON form of a finding carries beyond its message: why it may not be what it seems yet, the run it
    puts at risk and the run it blames (pids only, never a command line)."""
    return {
        "tentative": f.tentative,
        "at_risk_pid": f.at_risk.pid if f.at_risk else None,
        "culprit_pid": f.culprit.pid if f.culprit else None,
    }


def card_index(f: Finding, snap: Snapshot | None) -> int | None:
    """The NVML index of the card `f` is about, as `snap` lists it (None: about no card, or one not in `snap`)."""
    g = snap.gpu(f.gpu_uuid) if snap is not None and f.gpu_uuid is not None else None
    return g.index if g is not None else None


def finding_to_json(f: Finding, snap: Snapshot | None, *, event: str = "raised") -> dict[str, Any]:
    """`finding_dict` with the GPU's index looked up in `snap` (the tick it was raised or is shown at)."""
    return finding_dict(f, card_index(f, snap), event=event)


def finding_dict(f: Finding, index: int | None = None, *, event: str = "raised") -> dict[str, Any]:
    """A finding as the JSON object that `replay --json`, `attach --json`, `/status.json` share (no cmdline)."""
    return {
        "event": event,
        "t": f.t,
        "kind": f.kind,
        "severity": f.severity.value,
        "gpu": index,
        "gpu_uuid": f.gpu_uuid,
        "pid": f.process.pid if f.process else None,
        "start_time": f.process.start_time if f.process else None,
        "process": f.process_name,
        "eta_seconds": f.eta_seconds,
        "confidence": f.confidence,
        "message": f.message,
        **finding_context(f),
        "numbers": f.numbers,
        "advice": list(f.advice),
    }
