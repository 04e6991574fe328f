"""Prometheus exposition: a custom Collector over the latest published state, on the daemon's own registry.

Every scrape builds the metric families fresh from the one `ExportState` the daemon published last. Nothing
is kept between scrapes, so a process that exited is simply absent from the next scrape (no `.remove()`
bookkeeping, no stale series), and nothing lands in prometheus-client's global REGISTRY. Names and labels are
documented in docs/metrics.md; command lines and environment values are never labels.
"""

from __future__ import annotations

import errno
import gzip
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ._version import __version__
from .config import split_listen
from .detectors.registry import detectors
from .errors import VramwatchError
from .model import Finding, ProcessKey, ProcessSample, Snapshot
from .sampler import TICK_BUCKETS, TickStats
from .stephistory import StepFigures
from .units import gpu_index_label as gpu_label  # the `gpu` label of every metric

Rows = list[tuple[tuple[str, ...], float]]

GPU_LABELS = ("gpu", "uuid", "name")
PROC_LABELS = ("gpu", "uuid", "pid", "process", "user", "container")
TORCH_LABELS = ("gpu", "pid", "process")


@dataclass(frozen=True)
class ExportState:
    """What one scrape shows: published by the daemon after each tick, replaced whole (never mutated)."""

    snapshot: Snapshot | None
    backend: Mapping[str, str]
    stats: TickStats
    up: bool
    process_metrics: bool = True
    gpu_growth: Mapping[str, float] = field(default_factory=dict)  # uuid -> bytes/s
    process_growth: Mapping[tuple[ProcessKey, str], float] = field(default_factory=dict)
    oom_eta: Mapping[str, float] = field(default_factory=dict)  # uuid -> seconds
    active: tuple[Finding, ...] = ()
    findings_raised: Mapping[tuple[str, str], int] = field(default_factory=dict)
    notifications: Mapping[str, int] = field(default_factory=dict)
    verdicts: Mapping[tuple[ProcessKey, str], str] = field(default_factory=dict)
    steps: Mapping[tuple[int, int], StepFigures] = field(default_factory=dict)  # (pid, device) -> agent's steps


class SnapshotCollector(Collector):
    """Builds every vramwatch_* family from `state()` at scrape time."""

    def __init__(self, state: Callable[[], ExportState]) -> None:
        self._state = state

    def describe(self) -> Iterable[Metric]:
        return []  # unchecked collector: names vary with what the snapshot holds

    def collect(self) -> Iterator[Metric]:
        st = self._state()
        yield _gauge("vramwatch_up", "1 when the GPU library answered at the last tick", [((), 1.0 if st.up else 0.0)])
        info = GaugeMetricFamily(
            "vramwatch_build_info",
            "vramwatch version and the backend it reads (backend=simulated marks fake data)",
            labels=["version", "backend", "driver_version", "nvml_version"],
        )
        info.add_metric(
            [
                __version__,
                st.backend.get("backend", ""),
                st.backend.get("driver_version", ""),
                st.backend.get("nvml_version", ""),
            ],
            1.0,
        )
        yield info
        yield from self._sampler(st.stats)
        snap = st.snapshot
        if snap is not None:
            yield from self._gpus(st, snap)
            yield _gauge(
                "vramwatch_processes_visible",
                "0 when the daemon cannot see the host's pids (container without the host pid namespace)",
                [((), 1.0 if snap.processes_visible else 0.0)],
            )
            if st.process_metrics:
                yield from self._processes(st, snap)
        yield from self._findings(st)
        notif = CounterMetricFamily(
            "vramwatch_notifications", "Webhook and Alertmanager deliveries by result", labels=["result"]
        )
        for result in ("sent", "failed", "dropped"):
            notif.add_metric([result], float(st.notifications.get(result, 0)))
        yield notif

    def _sampler(self, stats: TickStats) -> Iterator[Metric]:
        hist = HistogramMetricFamily("vramwatch_sampler_tick_seconds", "Time one sampler tick took", unit="")
        cumulative, buckets = 0, []
        for le, count in zip(TICK_BUCKETS, stats.bucket_counts, strict=True):
            cumulative += count
            buckets.append((repr(le), float(cumulative)))
        buckets.append(("+Inf", float(stats.ticks)))
        hist.add_metric([], buckets, sum_value=stats.duration_sum)
        yield hist
        yield CounterMetricFamily("vramwatch_sampler_ticks", "Sampler ticks completed", value=float(stats.ticks))
        yield CounterMetricFamily(
            "vramwatch_sampler_overruns", "Ticks that took longer than the interval", value=float(stats.overruns)
        )
        errors = CounterMetricFamily("vramwatch_sampler_errors", "Failed reads by kind", labels=["kind"])
        for kind in ("library", "gpu_lost", "process"):
            errors.add_metric([kind], float(stats.errors.get(kind, 0)))
        yield errors
        failures = CounterMetricFamily(
            "vramwatch_detector_failures", "Ticks at which a detector raised (its findings held)", labels=["detector"]
        )
        # Every detector at 0 from the start: `increase()` sees a first failure only on a series that existed before it.
        kinds = [str(d.kind) for d in detectors()]
        for kind in kinds + sorted(set(stats.detector_failures) - set(kinds)):
            failures.add_metric([kind], float(stats.detector_failures.get(kind, 0)))
        yield failures
        if stats.last_tick_wall is not None:
            yield _gauge(
                "vramwatch_sampler_last_tick_timestamp_seconds",
                "Wall time of the last completed tick",
                [((), stats.last_tick_wall)],
            )

    def _gpus(self, st: ExportState, snap: Snapshot) -> Iterator[Metric]:
        up: Rows = []
        total: Rows = []
        used: Rows = []
        free: Rows = []
        reserved: Rows = []
        ratio: Rows = []
        unattributed: Rows = []
        nproc: Rows = []
        growth: Rows = []
        eta: Rows = []
        counts: dict[str, int] = {}
        for p in snap.processes:
            counts[p.gpu_uuid] = counts.get(p.gpu_uuid, 0) + 1
        for g in snap.gpus:
            labels: tuple[str, ...] = (gpu_label(g), g.uuid, g.name)
            up.append((labels, 1.0 if g.up else 0.0))
            if not g.up:
                continue
            _add(total, labels, g.total_bytes)
            _add(used, labels, g.used_bytes)
            _add(free, labels, g.free_bytes)
            _add(reserved, labels, g.reserved_bytes)
            if g.used_bytes is not None and g.total_bytes:
                ratio.append((labels, g.used_bytes / g.total_bytes))
            _add(unattributed, labels, snap.unattributed_bytes(g.uuid))
            nproc.append((labels, float(counts.get(g.uuid, 0))))
            _add(growth, labels, st.gpu_growth.get(g.uuid))
            _add(eta, labels, st.oom_eta.get(g.uuid))
        yield _gauge("vramwatch_gpu_up", "0 when the GPU stopped answering", up, GPU_LABELS)
        yield _gauge("vramwatch_gpu_memory_total_bytes", "Total device memory", total, GPU_LABELS)
        yield _gauge("vramwatch_gpu_memory_used_bytes", "Used device memory, as nvidia-smi shows it", used, GPU_LABELS)
        yield _gauge("vramwatch_gpu_memory_free_bytes", "Free device memory", free, GPU_LABELS)
        yield _gauge(
            "vramwatch_gpu_memory_reserved_bytes", "Device memory reserved by the driver", reserved, GPU_LABELS
        )
        yield _gauge("vramwatch_gpu_memory_used_ratio", "Used / total device memory", ratio, GPU_LABELS)
        yield _gauge(
            "vramwatch_gpu_unattributed_memory_bytes",
            "Used memory that no listed process accounts for",
            unattributed,
            GPU_LABELS,
        )
        yield _gauge("vramwatch_gpu_processes", "Processes NVML lists on the GPU", nproc, GPU_LABELS)
        yield _gauge(
            "vramwatch_gpu_memory_growth_bytes_per_second",
            "Robust growth rate of used device memory",
            growth,
            GPU_LABELS,
        )
        yield _gauge(
            "vramwatch_gpu_oom_eta_seconds",
            "Forecast seconds until the card is full (absent: not growing)",
            eta,
            GPU_LABELS,
        )

    def _processes(self, st: ExportState, snap: Snapshot) -> Iterator[Metric]:
        index = {g.uuid: gpu_label(g) for g in snap.gpus}
        mem: Rows = []
        growth: Rows = []
        for p in snap.processes:
            labels = _proc_labels(p, index)
            _add(mem, labels, p.used_bytes)
            _add(growth, labels, st.process_growth.get((p.key, p.gpu_uuid)))
        yield _gauge("vramwatch_process_gpu_memory_bytes", "GPU memory of one process", mem, PROC_LABELS)
        yield _gauge(
            "vramwatch_process_gpu_memory_growth_bytes_per_second",
            "Robust growth rate of one process's GPU memory",
            growth,
            PROC_LABELS,
        )
        if snap.torch:
            names = {p.pid: p.meta.name or "" for p in snap.processes}
            by_index = {str(g.index): g for g in snap.gpus}
            alloc: Rows = []
            resv: Rows = []
            split: Rows = []
            retries: Rows = []
            ooms: Rows = []
            for ts in snap.torch:
                gpu = by_index.get(str(ts.device))
                labels = (gpu_label(gpu) if gpu else str(ts.device), str(ts.pid), names.get(ts.pid, ""))
                _add(alloc, labels, ts.allocated_bytes)
                _add(resv, labels, ts.reserved_bytes)
                _add(split, labels, ts.inactive_split_bytes)
                _add(retries, labels, ts.num_alloc_retries)
                _add(ooms, labels, ts.num_ooms)
            yield _gauge("vramwatch_torch_allocated_bytes", "Bytes allocated by PyTorch tensors", alloc, TORCH_LABELS)
            yield _gauge("vramwatch_torch_reserved_bytes", "Bytes held by PyTorch's caching allocator", resv,
                         TORCH_LABELS)  # fmt: skip
            yield _gauge(
                "vramwatch_torch_inactive_split_bytes", "Reserved but unusable split blocks", split, TORCH_LABELS
            )
            yield _counter(
                "vramwatch_torch_alloc_retries", "Allocations that freed the cache and retried", retries, TORCH_LABELS
            )
            yield _counter("vramwatch_torch_ooms", "Out-of-memory errors PyTorch raised", ooms, TORCH_LABELS)
        if st.steps:
            yield from self._steps(st, snap)

    def _steps(self, st: ExportState, snap: Snapshot) -> Iterator[Metric]:
        """The agents' optimizer steps: how far, the training steps' peak, growth a step, where it runs out."""
        names = {p.pid: p.meta.name or "" for p in snap.processes}
        by_uuid = {g.uuid: gpu_label(g) for g in snap.gpus}
        by_index = {str(g.index): gpu_label(g) for g in snap.gpus}
        steps: Rows = []
        peak: Rows = []
        growth: Rows = []
        fail: Rows = []
        for (pid, device), f in sorted(st.steps.items()):
            # The uuid the agent reported is the device as NVML knows it (CUDA's index may be remapped).
            gpu = by_uuid.get(f.gpu_uuid or "") or by_index.get(str(device), str(device))
            labels = (gpu, str(pid), names.get(pid, ""))
            steps.append((labels, float(f.step)))
            peak.append(((*labels, "allocated"), float(f.step_peak_allocated_bytes)))
            _add(peak, (*labels, "reserved"), f.step_peak_reserved_bytes)
            growth.append((labels, f.growth_bytes_per_step))
            if f.fails:
                _add(fail, labels, f.fail_step)
        yield _counter("vramwatch_process_optimizer_steps", "Last optimizer step the agent counted", steps,
                       TORCH_LABELS)  # fmt: skip
        yield _gauge(
            "vramwatch_process_step_peak_bytes",
            "Peak of the training steps (phases such as sampling apart), allocated by tensors or reserved",
            peak,
            (*TORCH_LABELS, "kind"),
        )
        yield _gauge(
            "vramwatch_process_step_growth_bytes",
            "Memory that stays allocated from one optimizer step to the next, per step (0: none)",
            growth,
            TORCH_LABELS,
        )
        yield _gauge(
            "vramwatch_process_forecast_fail_step",
            "Optimizer step at which the run is forecast to run out of memory (absent: it fits)",
            fail,
            TORCH_LABELS,
        )

    def _findings(self, st: ExportState) -> Iterator[Metric]:
        active: dict[tuple[str, str, str, str], int] = {}
        gpus = {g.uuid: gpu_label(g) for g in st.snapshot.gpus} if st.snapshot else {}
        for f in st.active:
            # A tentative finding (a forecast on a run that may still be loading) is its own series, so that an
            # alert rule can page on firm findings only.
            tentative = "true" if f.tentative is not None else "false"
            key = (f.kind, f.severity.value, gpus.get(f.gpu_uuid or "", ""), tentative)
            active[key] = active.get(key, 0) + 1
        yield _gauge(
            "vramwatch_findings_active",
            "Findings currently raised (tentative: a forecast on a run that may still be loading, not yet confirmed)",
            [(tuple(k), float(v)) for k, v in sorted(active.items())],
            ("kind", "severity", "gpu", "tentative"),
        )
        yield _counter(
            "vramwatch_findings",
            "Findings raised since start",
            [(tuple(k), float(v)) for k, v in sorted(st.findings_raised.items())],
            ("kind", "severity"),
        )


def _proc_labels(p: ProcessSample, index: Mapping[str, str]) -> tuple[str, ...]:
    m = p.meta
    return (index.get(p.gpu_uuid, ""), p.gpu_uuid, str(m.pid), m.name or "", m.user or "", m.container_id or "")


def _add(rows: Rows, labels: tuple[str, ...], value: float | None) -> None:
    if value is not None:
        rows.append((labels, float(value)))


def _gauge(name: str, doc: str, rows: Rows, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    fam = GaugeMetricFamily(name, doc, labels=list(labels))
    for lv, v in rows:
        fam.add_metric(list(lv), v)
    return fam


def _counter(name: str, doc: str, rows: Rows, labels: tuple[str, ...]) -> CounterMetricFamily:
    fam = CounterMetricFamily(name, doc, labels=list(labels))
    for lv, v in rows:
        fam.add_metric(list(lv), v)
    return fam


def make_registry(state: Callable[[], ExportState]) -> CollectorRegistry:
    """A fresh registry holding only our collector (no process/platform collectors, no global REGISTRY)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(state))
    return registry


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every few seconds would drown the daemon's own log


def parse_listen(listen: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPv6]:PORT` -> (host, port); raises VramwatchError with the expected form (the config
    refuses a malformed address first, naming where it came from: this guards callers that bypass it)."""
    try:
        return split_listen(listen)
    except ValueError as exc:
        raise VramwatchError(f"listen address {listen!r}: expected {exc}") from None


#: zlib's default level, which Prometheus's own Go client (client_golang's promhttp) compresses at too.
#: prometheus-client compresses at 9: about 3x the time for a body about a tenth smaller (docs/benchmarks.md).
GZIP_LEVEL = 6

#: The answer depends on both request headers (format and compression): a cache between the daemon and a scraper
#: must not hand one scraper's answer to another (RFC 9110, 12.5.5).
VARY = ("Vary", "Accept, Accept-Encoding")

#: A WSGI application: (environ, start_response) -> the body's chunks.
WsgiApp = Callable[[dict[str, Any], Any], Iterable[bytes]]


def metrics_app(registry: CollectorRegistry) -> WsgiApp:
    """The daemon's /metrics answer: prometheus-client's app over `registry`, in the format `prefer_text` picks,
    gzipped at `GZIP_LEVEL` when the scraper accepts gzip (Prometheus always does).

    prometheus-client has no setting for its level, so it is asked not to compress and the body is compressed here.
    """
    app = make_wsgi_app(registry, disable_compression=True)

    def answer(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        environ = prefer_text(environ)
        started: list[tuple[str, list[tuple[str, str]]]] = []
        chunks: list[bytes] = []

        def hold(
            status: str,
            headers: list[tuple[str, str]],
            exc_info: Any = None,  # noqa: ARG001
        ) -> Callable[[bytes], None]:
            # Nothing is sent before the body is whole, so a second call (an error's, with exc_info) may simply
            # replace the headers (PEP 3333).
            started[:] = [(status, headers)]
            return chunks.append  # WSGI's write(): kept with the body, in order

        chunks.extend(app(environ, hold))
        body = b"".join(chunks)  # prometheus-client answers in one chunk: no copy
        status, headers = started[0]
        if status.startswith("200") and body and accepts_gzip(environ.get("HTTP_ACCEPT_ENCODING", "")):
            body = gzip.compress(body, compresslevel=GZIP_LEVEL)
            headers = [*headers, ("Content-Encoding", "gzip")]
        start_response(status, [*headers, VARY])
        return [body]

    return answer


def accepts_gzip(accept_encoding: str) -> bool:
    """True when the request's Accept-Encoding names gzip without refusing it (q=0)."""
    return any(
        part.split(";", 1)[0].strip().lower() == "gzip" and not _refused(part) for part in accept_encoding.split(",")
    )


def prefer_text(environ: dict[str, Any]) -> dict[str, Any]:
    """The request as prometheus-client should answer it: in the Prometheus text format whenever the scraper
    names that format too.

    Prometheus 2 and 3 list OpenMetrics first and `text/plain` after it. The two carry the same series here
    (no exemplars, no `_created`, no units), but prometheus-client's OpenMetrics answer costs more to write
    (docs/benchmarks.md). Only an explicit `text/plain` (or `text/*`) counts, not `*/*`: Prometheus appends
    `*/*` to every Accept, also when its `scrape_protocols` ask for OpenMetrics alone. The header's own text
    entries are kept, so prometheus-client still picks among their versions.
    """
    accepted = [part for part in environ.get("HTTP_ACCEPT", "").split(",") if not _refused(part)]
    kinds = [part.split(";", 1)[0].strip().lower() for part in accepted]
    text = [part for part, kind in zip(accepted, kinds, strict=True) if kind in {"text/plain", "text/*"}]
    if "application/openmetrics-text" in kinds and text:
        return {**environ, "HTTP_ACCEPT": ",".join(text)}
    return environ


def _refused(part: str) -> bool:
    """True for an Accept entry with q=0: that type is not acceptable (RFC 9110, 12.4.2)."""
    for param in part.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value.strip()) == 0.0
            except ValueError:
                return False
    return False


#: A WSGI app that answers the paths it knows and returns None for the others (the live page's routes).
Pages = Callable[[dict[str, Any], Any], Iterable[bytes] | None]


class MetricsServer:
    """Serves /metrics from the registry, /healthz (200 while the sampler ticked recently, else 503), and the
    live page's routes when `pages` is given (`/`, `/static/...`, `/api/state`)."""

    def __init__(
        self,
        listen: str,
        registry: CollectorRegistry,
        healthy: Callable[[], bool],
        status: Callable[[], bytes] | None = None,
        pages: Pages | None = None,
    ) -> None:
        host, port = parse_listen(listen)
        metrics = metrics_app(registry)

        def app(environ: dict[str, Any], start_response: Any) -> Any:
            path = environ.get("PATH_INFO")
            if path == "/healthz":
                ok = healthy()
                start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
                return [b"ok\n" if ok else b"sampler stalled\n"]
            if path == "/status.json" and status is not None:
                # `vramwatch status` and `attach` read the daemon's trend and forecast from here; it is bound
                # to the same (loopback by default) address as /metrics and carries no command lines.
                start_response("200 OK", [("Content-Type", "application/json")])
                return [status()]
            if pages is not None and path != "/metrics":
                answer = pages(environ, start_response)
                if answer is not None:
                    return answer
            return metrics(environ, start_response)

        server_cls: type[_Server] = _Server6 if ":" in host else _Server
        try:
            self.server = make_server(host, port, app, server_class=server_cls, handler_class=_QuietHandler)
        except OSError as exc:
            raise VramwatchError(cannot_listen(f"{host}:{port}", exc)) from exc
        self.port = self.server.server_port
        self._thread = threading.Thread(target=self.server.serve_forever, name="vramwatch-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def cannot_listen(address: str, exc: OSError) -> str:
    """Why `address` (HOST:PORT) cannot be listened on: one wording for serve's start and for `check`, which tries
    the host before any serve runs."""
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {address}: the port is already in use (another vramwatch?); "
            "choose another with --listen HOST:PORT"
        )
    return f"cannot listen on {address}: {exc.strerror or exc}"
