"""The page's JSON document: what `/api/state` answers and what a report embeds, built in one place.

One shape for both, so the page's script draws a live daemon and a recorded trace alike:

    {"mode", "epoch", "seq", "backend", "up", "window_seconds",
     "gpus": [{index, uuid, name, up, total/used/free bytes, growth, oom_eta_seconds, eta_text,
               "processes": [...now], "series": {"reset", "t", "used", "total", "procs": [...], "torch": [...]},
               "forecast": {"t": [now, full], "bytes": [used, total]} | null, "torch": [...now]}],
     "active": [...findings with advice], "findings": [...raised, newest first], "postmortem": [...],
     "verdicts": [...]}

Memory is in bytes and time in wall-clock seconds (what a chart's time axis shows). Processes are named by
pid, name and user only: command lines, working directories and environments never reach this document,
whatever the config says (they are for the advisor and, redacted, for traces and opted-in webhooks).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..model import POST_MORTEM_KINDS, Finding, ProcessKey, Snapshot
from ..render import eta_text, finding_dict
from ..stephistory import StepFigures
from ..units import gpu_label
from .store import Departure, GpuTrack, PageStore, uuid_of

#: The forecast line is drawn at most this far ahead: a card full in six hours would squash the hour of history.
FORECAST_HORIZON_SECONDS = 1800.0
#: Findings listed on the live page (newest first); a report lists every one.
LIVE_FINDINGS = 50


@dataclass(frozen=True, slots=True)
class Now:
    """What holds at the latest tick, beside the store's history: the daemon's published state, or a replay's."""

    snapshot: Snapshot | None
    backend: Mapping[str, str]
    up: bool = True
    active: tuple[Finding, ...] = ()
    verdicts: Mapping[tuple[ProcessKey, str], str] = field(default_factory=dict)
    gpu_growth: Mapping[str, float] = field(default_factory=dict)  # uuid -> bytes/s
    process_growth: Mapping[tuple[ProcessKey, str], float] = field(default_factory=dict)
    oom_eta: Mapping[str, float] = field(default_factory=dict)  # uuid -> seconds
    steps: Mapping[tuple[int, int], StepFigures] = field(default_factory=dict)  # (pid, device) -> agent's steps


def _num(x: float) -> float | int | None:
    """A column value for JSON: NaN (no value at that tick) is null; bytes are whole numbers."""
    if math.isnan(x):
        return None
    return int(x) if x.is_integer() else round(x, 3)


def _series(track: GpuTrack, since: int, seq: int) -> dict[str, Any]:
    """The points after `since`; all of them (and `reset`) when the page has none, fell out of the window, or
    counted the ticks of another daemon (a restart: its numbers are not ours)."""
    oldest = track.oldest_seq
    reset = since <= 0 or since > seq or oldest is None or since < oldest - 1
    start = 0 if reset else track.first_after(since)
    cols = track.columns

    def col(key: str) -> list[float | int | None]:
        return [_num(v) for v in cols.ordered(key, start)] if key in cols.columns else []

    return {
        "reset": reset,
        "t": [round(v, 3) for v in cols.ordered("t", start)],
        "used": col("used"),
        "total": col("total"),
        "procs": [
            {"key": k, "pid": lab.pid, "name": lab.name, "user": lab.user, "values": col(k)}
            for k, lab in track.labels.items()
        ],
        "torch": [
            {"pid": lab.pid, "name": lab.name, "allocated": col(f"alloc:{pid}"), "reserved": col(f"resv:{pid}")}
            for pid, lab in track.torch.items()
        ],
    }


def _forecast(now: Now, uuid: str) -> dict[str, list[float]] | None:
    """The line from the latest used figure to the card's limit at the forecast time (clipped to a horizon)."""
    snap, eta, rate = now.snapshot, now.oom_eta.get(uuid), now.gpu_growth.get(uuid)
    g = snap.gpu(uuid) if snap else None
    if snap is None or g is None or eta is None or g.used_bytes is None or g.total_bytes is None:
        return None
    ahead = min(max(eta, 0.0), FORECAST_HORIZON_SECONDS)
    end = float(g.total_bytes)
    if ahead < eta and rate:
        end = min(end, g.used_bytes + rate * ahead)
    return {"t": [snap.wall_time, snap.wall_time + ahead], "bytes": [float(g.used_bytes), end]}


def _finding(f: Finding, store: PageStore, *, raised_wall: float | None = None, cleared_wall: float | None = None,
             advice: Sequence[str] | None = None) -> dict[str, Any]:  # fmt: skip
    d = finding_dict(f, store.index.get(f.gpu_uuid or ""))
    d["advice"] = list(advice if advice is not None else f.advice)
    d["raised_wall"] = raised_wall
    d["cleared_wall"] = cleared_wall
    del d["event"]
    return d


def _departure(d: Departure, store: PageStore) -> dict[str, Any]:
    """A process that left its GPU, with the post-mortem finding about it (probable OOM, the agent's OOM)."""
    found = (ev.finding for ev in reversed(store.events) if ev.finding.kind in POST_MORTEM_KINDS)
    verdict = next((f for f in found if f.process == d.key), None)
    ex = d.exit
    return {
        "gpu": store.index.get(d.gpu_uuid),
        "gpu_uuid": d.gpu_uuid,
        "pid": d.label.pid,
        "name": d.label.name,
        "user": d.label.user,
        "wall": d.wall,
        "first_wall": d.first_wall,
        "peak_bytes": d.peak_bytes,
        "last_bytes": d.last_bytes,
        "exit_code": ex.exit_code if ex else None,
        "exit_signal": ex.signal if ex else None,
        "finding": _finding(verdict, store) if verdict is not None else None,
    }


def _verdicts(now: Now, store: PageStore) -> list[dict[str, Any]]:
    out = []
    procs = now.snapshot.processes if now.snapshot else ()
    for (key, uuid), text in now.verdicts.items():
        member = next((p for p in procs if p.tree_key == key and p.gpu_uuid == uuid), None)
        name = user = None
        if member is not None:
            m = member.meta
            name = m.root_name if m.root_pid not in (None, m.pid) else m.name
            user = m.user
        else:  # the run has left (a report keeps its verdict): the label it had in the columns
            track = store.gpus.get(uuid)
            label = next((lab for lab in track.labels.values() if lab.pid == key.pid), None) if track else None
            name, user = (label.name, label.user) if label else (None, None)
        out.append({"pid": key.pid, "name": name, "user": user, "gpu": store.index.get(uuid), "verdict": text})
    # The agents' step forecasts read like the other verdicts: one sentence per process, on its GPU.
    for (pid, _device), f in sorted(now.steps.items()):
        if f.message is None:
            continue
        member = next((p for p in procs if p.pid == pid), None)
        name, user = (member.meta.name, member.meta.user) if member is not None else (None, None)
        gpu = store.index.get(f.gpu_uuid) if f.gpu_uuid else None
        text = f"pid {pid} at step {f.step:,}: {f.message}"
        out.append({"pid": pid, "name": name, "user": user, "gpu": gpu, "verdict": text})
    return out


def _gpu(store: PageStore, now: Now, uuid: str, track: GpuTrack, since: int) -> dict[str, Any]:
    snap = now.snapshot
    g = snap.gpu(uuid) if snap else None
    eta = now.oom_eta.get(uuid)
    free = g.free_bytes if g else None
    verdicts = {(k.pid, u): v for (k, u), v in now.verdicts.items()}
    procs = snap.processes_on(uuid) if snap else ()
    return {
        "index": store.index.get(uuid),
        "label": gpu_label(g) if g else f"GPU {store.index.get(uuid)}",
        "uuid": uuid,
        "name": g.name if g else None,
        "up": bool(g and g.up),
        "total_bytes": g.total_bytes if g else None,
        "used_bytes": g.used_bytes if g else None,
        "free_bytes": free,
        "growth_bytes_per_second": now.gpu_growth.get(uuid),
        "oom_eta_seconds": eta,
        "eta_text": eta_text(eta, free) if eta is not None else None,
        "processes": [
            {
                "key": str(p.key),
                "pid": p.pid,
                "name": p.meta.name,
                "user": p.meta.user,
                "root_pid": p.meta.root_pid,
                "root_name": p.meta.root_name,
                "used_bytes": p.used_bytes,
                "growth_bytes_per_second": now.process_growth.get((p.key, uuid)),
                "verdict": verdicts.get((p.meta.root_pid if p.meta.root_pid is not None else p.pid, uuid)),
            }
            for p in sorted(procs, key=lambda p: -(p.used_bytes or 0))
        ],
        "series": _series(track, since, store.seq),
        "forecast": _forecast(now, uuid),
        "torch": [
            {
                "pid": ts.pid,
                "allocated_bytes": ts.allocated_bytes,
                "reserved_bytes": ts.reserved_bytes,
                "inactive_split_bytes": ts.inactive_split_bytes,
                "num_alloc_retries": ts.num_alloc_retries,
            }
            for ts in (snap.torch if snap else ())
            if snap is not None and (ts.gpu_uuid or uuid_of(snap, ts.device)) == uuid
        ],
    }


#: What the page is told of the backend (its banner, its header): never a command line or an environment value.
BACKEND_KEYS = ("backend", "recorded_backend", "scenario", "host", "driver_version", "source")


def build(
    store: PageStore,
    now: Now,
    *,
    mode: str = "live",
    epoch: str = "",
    since: int = 0,
    findings_limit: int | None = LIVE_FINDINGS,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The document for a page that holds the points up to `since` (0: none yet)."""
    events = list(reversed(store.events))
    if findings_limit is not None:
        events = events[:findings_limit]
    backend = dict(now.backend)
    return {
        "mode": mode,
        "epoch": epoch,
        "seq": store.seq,
        "window_seconds": store.window_seconds,
        "backend": {k: backend[k] for k in BACKEND_KEYS if k in backend},
        "up": now.up,
        "wall": now.snapshot.wall_time if now.snapshot else None,
        "gpus": [
            _gpu(store, now, uuid, store.gpus[uuid], since)
            for uuid in sorted(store.gpus, key=lambda u: store.index.get(u, 0))
        ],
        "active": [_finding(f, store, advice=store.advice_for(f), raised_wall=_raised(store, f)) for f in now.active],
        "findings": [
            _finding(ev.finding, store, raised_wall=ev.raised_wall, cleared_wall=ev.cleared_wall) for ev in events
        ],
        "postmortem": [_departure(d, store) for d in reversed(store.departures)],
        "verdicts": _verdicts(now, store),
        **(extra or {}),
    }


def _raised(store: PageStore, f: Finding) -> float | None:
    return next((ev.raised_wall for ev in reversed(store.events) if ev.finding.subject == f.subject), None)
