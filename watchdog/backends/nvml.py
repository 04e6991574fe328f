"""The NVML backend: real GPUs read through nvidia-ml-py (module `pynvml`), the only module that imports it.

What each figure is, and the nvidia-smi field it matches (`nvidia-smi --query-gpu=...` / `-q` section):

- `total_bytes`    nvmlDeviceGetMemoryInfo .total          memory.total     (-q "FB Memory Usage / Total")
- `reserved_bytes` nvmlDeviceGetMemoryInfo_v2 .reserved    memory.reserved  (-q "FB Memory Usage / Reserved")
- `used_bytes`     nvmlDeviceGetMemoryInfo_v2 .used        memory.used      (the "Memory-Usage" column)
- `free_bytes`     nvmlDeviceGetMemoryInfo .free           memory.free
- processes        nvmlDeviceGet{Compute,Graphics,MPSCompute}RunningProcesses: pid and usedGpuMemory, the
                   "Processes" table (`--query-compute-apps=pid,used_memory` for the compute list)
- `uuid`, `name`, `pci_bus_id`: nvmlDeviceGetUUID / GetName / GetPciInfo().busId: uuid, name, pci.bus_id
- describe(): nvmlSystemGetDriverVersion (driver_version), nvmlSystemGetNVMLVersion, nvmlSystemGetCudaDriverVersion
  (the "CUDA Version" of nvidia-smi's banner)

Memory v1 vs v2. NVML's reference says v1's `used` is the "sum of reserved and allocated device memory"
(nvmlMemory_t), while v2 (nvmlMemory_v2_t, drivers R510 and later) reports the driver/firmware reservation in
`reserved` and only allocated memory in `used`, so total = reserved + used + free. nvidia-smi's Memory-Usage
is v2's `used` (an idle A100 shows a few MiB, where v1 says ~900 MiB: rust-nvml/nvml-wrapper#57); `free` is the
same in both. So v2 is asked first and v1 is the fallback where the driver or the installed pynvml lacks it
(FunctionNotFound, NotSupported, ArgumentVersionMismatch, no `nvmlMemory_v2` constant, no `version` keyword);
`reserved_bytes` is then None and `used_bytes` includes the reservation, as nvidia-smi did before R510. Which
version works is probed once per GPU and remembered.

Process lists. The process calls exist as `_v3`, `_v2` and an unversioned name whose struct layout must match
the driver's (pynvml releases that guessed wrong returned scrambled pids: XuehaiPan/nvitop#75). The newest
variant that the driver has is found once (a FunctionNotFound or pynvml's NVMLLibraryMismatchError, which is
*not* an NVMLError subclass, moves to the next) and remembered. A pid listed in several lists (a process with
both a compute and a graphics context; an MPS client) becomes one entry whose `kinds` names the lists and whose
`used_bytes` is the largest known figure: each list reports the process's whole use of the device, so the
figures are not added. `usedGpuMemory` None (NVML_VALUE_NOT_AVAILABLE, e.g. under WDDM) stays None; 0 is a real
0. A list the device cannot give (NotSupported, NoPermission) is dropped for that device from then on; any
other error drops that list for one tick only. Neither marks the GPU down. After the first tick a `_v2`/`_v3` list
is read with one driver call into an array kept between ticks (pynvml's functions make two), and a graphics or
MPS list that answered empty is read again at the next change of the compute list or every fifth tick: the driver
pays per process on the card for every call, whatever it returns (nvml_lists.py says why and what it costs).

MIG. On a GPU whose current MIG mode is enabled, each MIG device (a compute instance, found with
nvmlDeviceGetMigDeviceHandleByIndex) becomes its own GpuSample: `uuid` is its `MIG-...` UUID, `parent_uuid` the
physical GPU's, `index` the physical GPU's index, `name` what NVML names the MIG handle (e.g. "NVIDIA A100-SXM4-
40GB MIG 1g.5gb"), memory from the MIG handle. The physical GPU itself is then NOT reported, so summing
`used_bytes` over a reading never counts a byte twice (memory not assigned to any instance is not shown). A MIG-
enabled GPU with no instance configured is reported as a plain GPU. Processes are read on the MIG handle (NVML
returns per-instance information there); where that is not supported (vGPU host mode), the parent's aggregate
list is filtered by the process entries' gpuInstanceId / computeInstanceId instead. Several compute instances of
one GPU instance share its memory and would each report it: a layout this module does not special-case. The MIG
layout is read at start-up; a MIG handle that stops resolving (NotFound / InvalidArgument: the admin reshaped
the instances) is reported down once and the layout is read again at the next tick. MIG is exercised by the
unit tests' fake only: the GPUs we test on run without MIG, and changing MIG mode is an admin's decision.

Errors. nvmlInit runs once, in __init__; count, handles and names are read there too, so a tick costs only
the memory and process calls. An init that fails (driver not loaded, libnvidia-ml missing, library/driver
mismatch, no permission) raises BackendUnavailable with one line saying what to check. A per-GPU failure in a
tick (GPU is lost, Unknown, reset required, ...) returns that GPU with `up=False`, `error` set, memory None and
no processes; the other GPUs are still read. A library-wide failure mid-run (Uninitialized, driver unloaded)
raises BackendUnavailable and the next read() initialises NVML again, so the daemon's retry loop recovers.
Strings may come back as bytes from old pynvml releases and are decoded. Nothing here imports torch or creates
a CUDA context.
"""

from __future__ import annotations

import contextlib
import importlib
import socket
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from ..errors import BackendUnavailable
from ..model import GpuSample, ProcessUsage, Reading
from ..typing import ProcessInspector
from .nvml_lists import ListCadence, one_call

log = structlog.get_logger("vramwatch.backends.nvml")

# nvmlReturn_t values from nvml.h. They are part of NVML's ABI, so they are named here instead of being read from
# whichever pynvml release is installed (old releases lack some of the names).
_UNINITIALIZED = 1
_INVALID_ARGUMENT = 2
_NOT_SUPPORTED = 3
_NO_PERMISSION = 4
_NOT_FOUND = 6
_DRIVER_NOT_LOADED = 9
_TIMEOUT = 10
_LIBRARY_NOT_FOUND = 12
_FUNCTION_NOT_FOUND = 13
_GPU_IS_LOST = 15
_RESET_REQUIRED = 16
_LIB_RM_VERSION_MISMATCH = 18
_ARGUMENT_VERSION_MISMATCH = 25
_GPU_NOT_FOUND = 28
_UNKNOWN = 999

_MIG_ENABLED = 1  # NVML_DEVICE_MIG_ENABLE
_U32_NOT_AVAILABLE = 0xFFFFFFFF  # gpuInstanceId outside MIG; a pid a mismatched struct layout produced
_U64_NOT_AVAILABLE = 0xFFFFFFFFFFFFFFFF  # NVML_VALUE_NOT_AVAILABLE for usedGpuMemory

#: The library as a whole is unusable: BackendUnavailable, and initialise again at the next read.
_LIBRARY_DOWN = frozenset({_UNINITIALIZED, _DRIVER_NOT_LOADED, _LIBRARY_NOT_FOUND, _LIB_RM_VERSION_MISMATCH})
#: The device stopped answering: the whole GpuSample is down, not just one list.
_DEVICE_DOWN = frozenset({_GPU_IS_LOST, _UNKNOWN, _RESET_REQUIRED, _GPU_NOT_FOUND})
#: The call is newer than the driver: try an older variant.
_NEWER_THAN_DRIVER = frozenset({_FUNCTION_NOT_FOUND, _ARGUMENT_VERSION_MISMATCH})
_V2_MEMORY_UNAVAILABLE = _NEWER_THAN_DRIVER | {_NOT_SUPPORTED}
_MIG_HANDLE_GONE = frozenset({_NOT_FOUND, _INVALID_ARGUMENT})

_ERROR_NAMES = {
    _UNINITIALIZED: "uninitialized",
    _INVALID_ARGUMENT: "invalid_argument",
    _NOT_SUPPORTED: "not_supported",
    _NO_PERMISSION: "no_permission",
    _NOT_FOUND: "not_found",
    _DRIVER_NOT_LOADED: "driver_not_loaded",
    _TIMEOUT: "timeout",
    _LIBRARY_NOT_FOUND: "library_not_found",
    _FUNCTION_NOT_FOUND: "function_not_found",
    _GPU_IS_LOST: "gpu_lost",
    _RESET_REQUIRED: "reset_required",
    _LIB_RM_VERSION_MISMATCH: "driver_library_mismatch",
    _GPU_NOT_FOUND: "gpu_not_found",
    _UNKNOWN: "unknown",
}

#: What nvmlInit's failure means, what to check, and BackendUnavailable.reason (which tells `open_backend` whether
#: this machine has no NVIDIA stack at all, where the simulator may stand in, or a GPU host to retry).
_INIT_ADVICE = {
    _DRIVER_NOT_LOADED: ("NVIDIA driver not loaded", "is this a GPU host?", "driver_not_loaded"),
    _LIBRARY_NOT_FOUND: (
        "NVML library libnvidia-ml.so.1 not found",
        "is the NVIDIA driver installed (and, in a container, mounted by the NVIDIA container toolkit)?",
        "library_not_found",
    ),
    _LIB_RM_VERSION_MISMATCH: (
        "NVML library and kernel driver versions differ",
        "reboot, or reload the nvidia kernel module, after a driver upgrade",
        "mismatch",
    ),
    _NO_PERMISSION: ("no permission to use the GPUs", "can this user open /dev/nvidia*?", "other"),
}
_INIT_UNKNOWN = ("NVML could not be initialised", "does `nvidia-smi` work?", "other")

#: (kind, pynvml base name) of the three process lists, in the order nvidia-smi shows them.
_PROCESS_LISTS = (
    ("compute", "nvmlDeviceGetComputeRunningProcesses"),
    ("graphics", "nvmlDeviceGetGraphicsRunningProcesses"),
    ("mps", "nvmlDeviceGetMPSComputeRunningProcesses"),
)
_VERSION_SUFFIXES = ("_v3", "_v2", "")


def error_name(code: int) -> str:
    """A short snake_case name for an NVML return code, for `GpuSample.error` and logs."""
    return _ERROR_NAMES.get(code, f"nvml_error_{code}")


def _code(exc: BaseException) -> int:
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else _UNKNOWN


def _text(value: object) -> str:
    """pynvml returns str since 11.x; older releases returned bytes."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _cuda_version(value: Any) -> str:
    """12040 -> "12.4", as nvidia-smi prints the CUDA version the driver supports."""
    v = int(value)
    return f"{v // 1000}.{v % 1000 // 10}"


def _import_pynvml() -> types.ModuleType:
    try:
        return importlib.import_module("pynvml")
    except ImportError as exc:
        raise BackendUnavailable(
            f"nvidia-ml-py is not importable ({exc}) — install it with `pip install nvidia-ml-py`",
            reason="library_not_found",
        ) from exc


def nvml_available(nvml: types.ModuleType | None = None) -> bool:
    """Whether NVML can be initialised here: the CLI's cheap choice between the nvml and simulated backends."""
    try:
        nv = nvml if nvml is not None else importlib.import_module("pynvml")
        nv.nvmlInit()
    except Exception:  # no pynvml, no driver, mismatch: all mean "not here"
        return False
    with contextlib.suppress(Exception):
        nv.nvmlShutdown()
    return True


@dataclass(slots=True, eq=False)
class _Device:
    """What is known about one GPU (or MIG device) from start-up, plus what was learned about its driver."""

    index: int
    handle: Any
    uuid: str
    name: str
    pci_bus_id: str | None
    parent_uuid: str | None = None
    parent: _Device | None = None
    gpu_instance_id: int | None = None
    compute_instance_id: int | None = None
    mem_v2: bool | None = None  # None until the first answer says whether memory v2 works on this device
    skip: set[str] = field(default_factory=set)  # process lists this device cannot give
    via_parent: set[str] = field(default_factory=set)  # MIG: lists read from the parent, filtered by instance
    broken: str | None = None  # could not be read at start-up: reported down with this error every tick
    cadence: ListCadence = field(default_factory=ListCadence)  # which lists a tick reads (nvml_lists.py)

    def down(self, error: str) -> GpuSample:
        return GpuSample(
            index=self.index,
            uuid=self.uuid,
            name=self.name,
            total_bytes=None,
            used_bytes=None,
            free_bytes=None,
            pci_bus_id=self.pci_bus_id,
            parent_uuid=self.parent_uuid,
            up=False,
            error=error,
        )


class NvmlBackend:
    """Reads every GPU's memory and processes through NVML; see the module docstring for what and how."""

    kind = "nvml"

    def __init__(
        self,
        *,
        nvml: types.ModuleType | None = None,
        inspector: ProcessInspector | None = None,
        mig: bool = True,
    ) -> None:
        self._nv = nvml if nvml is not None else _import_pynvml()
        self._inspector = inspector
        self._mig = mig
        self._error: type[BaseException] = self._nv.NVMLError
        mismatch = getattr(self._nv, "NVMLLibraryMismatchError", None)
        # pynvml raises it from an unversioned call whose struct the driver lacks; it derives from Exception only.
        self._mismatch: tuple[type[BaseException], ...] = (mismatch,) if isinstance(mismatch, type) else ()
        self._memory_v2: object = getattr(self._nv, "nvmlMemory_v2", None)
        self._process_fns: dict[str, Callable[[Any], Any] | None] = {}  # kind -> working variant (None: none)
        self._devices: list[_Device] = []
        self._describe: dict[str, str] = {}
        self._warned: set[tuple[object, ...]] = set()
        self._initialized = False
        self._closed = False
        self._stale = False
        self._start()

    # -- Backend protocol ---------------------------------------------------------------------------------------

    def read(self) -> Reading:
        """One reading of every GPU; a GPU that fails is returned down, a failing library raises."""
        if self._closed:
            raise BackendUnavailable("the NVML backend was closed")
        if not self._initialized:
            self._start()
        elif self._stale:
            self._reenumerate()
        gpus: list[GpuSample] = []
        processes: list[ProcessUsage] = []
        parent_lists: dict[tuple[int, str], Any] = {}
        for dev in self._devices:
            if dev.broken is not None:
                gpus.append(dev.down(dev.broken))
                continue
            try:
                sample = self._read_memory(dev)
                found = self._read_processes(dev, parent_lists)
            except self._error as exc:
                code = _code(exc)
                if code in _LIBRARY_DOWN:
                    self._library_lost(code)
                    reason = _INIT_ADVICE.get(code, _INIT_UNKNOWN)[2]
                    raise BackendUnavailable(
                        f"NVML stopped answering ({exc}); it is initialised again at the next read", reason=reason
                    ) from exc
                if dev.parent is not None and code in _MIG_HANDLE_GONE:
                    self._stale = True
                    gpus.append(dev.down("mig_reconfigured"))
                else:
                    gpus.append(dev.down(error_name(code)))
                continue
            gpus.append(sample)
            for pid, (used, kinds) in found.items():
                processes.append(ProcessUsage(dev.uuid, pid, used, frozenset(kinds)))
        return Reading(gpus=tuple(gpus), processes=tuple(processes))

    def inspector(self) -> ProcessInspector:
        """The injected inspector, else psutil's: NVML's pids are host pids, which psutil resolves."""
        if self._inspector is None:
            # Imported here so that this module (and its tests) do not pull in the attribution stack.
            from ..attribution import PsutilInspector

            self._inspector = PsutilInspector()
        return self._inspector

    def describe(self) -> dict[str, str]:
        """driver_version, nvml_version, cuda_driver_version and host; a value NVML would not give is left out."""
        return dict(self._describe)

    def close(self) -> None:
        """nvmlShutdown, once; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        if self._initialized:
            self._initialized = False
            with contextlib.suppress(self._error):  # already uninitialised: nothing left to release
                self._nv.nvmlShutdown()

    # -- start-up: everything static --------------------------------------------------------------------------------

    def _start(self) -> None:
        try:
            self._nv.nvmlInit()
        except self._mismatch as exc:
            raise BackendUnavailable(
                f"nvidia-ml-py does not match the driver's NVML (nvmlInit: {exc}) — upgrade nvidia-ml-py",
                reason="mismatch",
            ) from exc
        except self._error as exc:
            what, advice, reason = _INIT_ADVICE.get(_code(exc), _INIT_UNKNOWN)
            raise BackendUnavailable(f"{what} (nvmlInit: {exc}) — {advice}", reason=reason) from exc
        self._initialized = True
        try:
            self._devices = self._enumerate()
            self._describe = self._read_describe()
        except self._error as exc:
            self._library_lost(_UNINITIALIZED)  # shut down what we initialised
            raise BackendUnavailable(f"NVML could not list the GPUs ({exc}) — does `nvidia-smi` work?") from exc
        self._stale = False

    def _reenumerate(self) -> None:
        try:
            self._devices = self._enumerate()
        except self._error as exc:
            self._library_lost(_code(exc))
            raise BackendUnavailable(f"NVML could not list the GPUs again ({exc})") from exc
        self._stale = False

    def _library_lost(self, code: int) -> None:
        """Forget the session so the next read() starts a new one."""
        if self._initialized and code != _UNINITIALIZED:
            with contextlib.suppress(self._error):
                self._nv.nvmlShutdown()
        self._initialized = False
        self._process_fns.clear()  # the next session may be another driver's: its variants are found again

    def _enumerate(self) -> list[_Device]:
        nv = self._nv
        devices: list[_Device] = []
        for index in range(int(nv.nvmlDeviceGetCount())):
            try:
                handle = nv.nvmlDeviceGetHandleByIndex(index)
                dev = _Device(
                    index=index,
                    handle=handle,
                    uuid=_text(nv.nvmlDeviceGetUUID(handle)),
                    name=_text(nv.nvmlDeviceGetName(handle)),
                    pci_bus_id=self._pci_bus_id(handle),
                )
            except self._error as exc:
                code = _code(exc)
                if code in _LIBRARY_DOWN:
                    raise
                # A GPU that is already lost at start-up still shows up, down, rather than vanishing silently;
                # without its UUID it is keyed by its index.
                log.warning("nvml_gpu_unreadable", index=index, error=error_name(code))
                devices.append(_Device(index, None, f"nvml-index-{index}", "", None, broken=error_name(code)))
                continue
            instances = self._mig_devices(dev) if self._mig else []
            devices.extend(instances or [dev])
        return devices

    def _pci_bus_id(self, handle: Any) -> str | None:
        try:
            info = self._nv.nvmlDeviceGetPciInfo(handle)
        except self._error as exc:
            if _code(exc) in _LIBRARY_DOWN:
                raise
            return None
        return _text(info.busId)  # a ctypes char array: bytes in every pynvml release

    def _mig_devices(self, parent: _Device) -> list[_Device]:
        """The MIG devices of a GPU in MIG mode; [] when MIG is off, unsupported or has no instance."""
        nv = self._nv
        get_mode = getattr(nv, "nvmlDeviceGetMigMode", None)
        if get_mode is None:  # a pynvml older than MIG
            return []
        try:
            current = get_mode(parent.handle)[0]
        except self._error as exc:
            if _code(exc) in _LIBRARY_DOWN:
                raise
            return []  # pre-Ampere GPUs answer NotSupported
        if current != _MIG_ENABLED:
            return []
        found: list[_Device] = []
        try:
            slots = int(nv.nvmlDeviceGetMaxMigDeviceCount(parent.handle))
            for slot in range(slots):
                try:
                    handle = nv.nvmlDeviceGetMigDeviceHandleByIndex(parent.handle, slot)
                except self._error as exc:
                    if _code(exc) in _MIG_HANDLE_GONE:
                        continue  # an empty slot
                    raise
                name = _text(nv.nvmlDeviceGetName(handle))
                found.append(
                    _Device(
                        index=parent.index,
                        handle=handle,
                        uuid=_text(nv.nvmlDeviceGetUUID(handle)),
                        name=name if "MIG" in name else f"{parent.name} MIG",
                        pci_bus_id=parent.pci_bus_id,
                        parent_uuid=parent.uuid,
                        parent=parent,
                        gpu_instance_id=self._instance_id("nvmlDeviceGetGpuInstanceId", handle),
                        compute_instance_id=self._instance_id("nvmlDeviceGetComputeInstanceId", handle),
                    )
                )
        except self._error as exc:
            if _code(exc) in _LIBRARY_DOWN:
                raise
            log.warning("nvml_mig_unreadable", gpu=parent.uuid, error=error_name(_code(exc)))
            return []
        return found

    def _instance_id(self, function: str, handle: Any) -> int | None:
        fn = getattr(self._nv, function, None)
        if fn is None:
            return None
        try:
            value = int(fn(handle))
        except self._error as exc:
            if _code(exc) in _LIBRARY_DOWN:
                raise
            return None
        return None if value == _U32_NOT_AVAILABLE else value

    def _read_describe(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, function, render in (
            ("driver_version", "nvmlSystemGetDriverVersion", _text),
            ("nvml_version", "nvmlSystemGetNVMLVersion", _text),
            ("cuda_driver_version", "nvmlSystemGetCudaDriverVersion", _cuda_version),
        ):
            fn = getattr(self._nv, function, None)
            if fn is None:
                continue
            try:
                out[key] = render(fn())
            except self._error as exc:
                if _code(exc) in _LIBRARY_DOWN:
                    raise
        out["host"] = socket.gethostname()
        return out

    # -- per tick: memory and processes only --------------------------------------------------------------------

    def _read_memory(self, dev: _Device) -> GpuSample:
        nv = self._nv
        if dev.mem_v2 is not False and self._memory_v2 is not None:
            try:
                m = nv.nvmlDeviceGetMemoryInfo(dev.handle, version=self._memory_v2)
            except TypeError:
                if dev.mem_v2:
                    raise
                dev.mem_v2 = False  # a pynvml whose nvmlDeviceGetMemoryInfo takes no `version`
            except self._error as exc:
                if dev.mem_v2 or _code(exc) not in _V2_MEMORY_UNAVAILABLE:
                    raise
                dev.mem_v2 = False
            else:
                dev.mem_v2 = True
                return self._sample(dev, m.total, m.used, m.free, m.reserved)
        else:
            dev.mem_v2 = False
        m = nv.nvmlDeviceGetMemoryInfo(dev.handle)
        return self._sample(dev, m.total, m.used, m.free, None)

    @staticmethod
    def _sample(dev: _Device, total: int, used: int, free: int, reserved: int | None) -> GpuSample:
        return GpuSample(
            index=dev.index,
            uuid=dev.uuid,
            name=dev.name,
            total_bytes=int(total),
            used_bytes=int(used),
            free_bytes=int(free),
            reserved_bytes=None if reserved is None else int(reserved),
            pci_bus_id=dev.pci_bus_id,
            parent_uuid=dev.parent_uuid,
        )

    def _read_processes(
        self, dev: _Device, parent_lists: dict[tuple[int, str], Any]
    ) -> dict[int, tuple[int | None, set[str]]]:
        """pid -> (largest known bytes, the lists it appeared in) for one device."""
        found: dict[int, tuple[int | None, set[str]]] = {}
        cadence = dev.cadence
        # Until the compute list answers (or where the device cannot give it), every list is read.
        compute_changed = True
        for kind, base in _PROCESS_LISTS:
            if kind in dev.skip or (kind != "compute" and not cadence.due(kind, compute_changed)):
                continue
            try:
                infos = self._process_list(dev, kind, base, parent_lists)
            except self._error as exc:
                code = _code(exc)
                if code in _LIBRARY_DOWN or code in _DEVICE_DOWN:
                    raise
                if (
                    code == _NOT_SUPPORTED
                    and dev.parent is not None
                    and dev.gpu_instance_id is not None
                    and kind not in dev.via_parent
                ):
                    # A MIG handle that cannot list its own processes (vGPU host mode): filter the parent's list.
                    dev.via_parent.add(kind)
                    try:
                        infos = self._process_list(dev, kind, base, parent_lists)
                    except self._error as again:
                        if _code(again) in _LIBRARY_DOWN or _code(again) in _DEVICE_DOWN:
                            raise
                        self._degrade(dev, kind, _code(again))
                        continue
                else:
                    self._degrade(dev, kind, code)
                    continue
            if kind != "compute":
                cadence.answered(kind, not infos)
            for info in infos:
                pid = int(info.pid)
                if pid <= 0 or pid >= _U32_NOT_AVAILABLE:
                    continue  # the garbage a mismatched struct layout yields, never a real pid
                used = info.usedGpuMemory
                if used is not None:
                    used = None if used == _U64_NOT_AVAILABLE else int(used)
                seen = found.get(pid)
                if seen is None:
                    found[pid] = (used, {kind})
                    continue
                best = seen[0] if used is None else used if seen[0] is None else max(seen[0], used)
                seen[1].add(kind)
                found[pid] = (best, seen[1])
            if kind == "compute":  # the first list: what it listed is all of `found` so far
                compute_changed = cadence.compute_read(frozenset(found))
        return found

    def _degrade(self, dev: _Device, kind: str, code: int) -> None:
        """Drop one process list: for good where the device cannot give it, else for this tick."""
        permanent = code in (_NOT_SUPPORTED, _NO_PERMISSION)
        if permanent:
            dev.skip.add(kind)
        key = (dev.uuid, kind, code)
        if key not in self._warned:
            self._warned.add(key)
            log.info(
                "nvml_process_list_unavailable",
                gpu=dev.uuid,
                list=kind,
                error=error_name(code),
                permanent=permanent,
            )

    def _process_list(self, dev: _Device, kind: str, base: str, parent_lists: dict[tuple[int, str], Any]) -> Any:
        if kind not in dev.via_parent:
            return self._call_process_fn(kind, base, dev.handle)
        parent = dev.parent
        if parent is None:  # via_parent is only ever set on MIG devices
            return ()
        key = (parent.index, kind)
        infos = parent_lists.get(key)
        if infos is None:  # one aggregate call per parent and list per tick, shared by its instances
            infos = parent_lists[key] = self._call_process_fn(kind, base, parent.handle)
        gi, ci = dev.gpu_instance_id, dev.compute_instance_id
        return [
            p
            for p in infos
            if getattr(p, "gpuInstanceId", None) == gi and (ci is None or getattr(p, "computeInstanceId", ci) == ci)
        ]

    def _call_process_fn(self, kind: str, base: str, handle: Any) -> Any:
        if kind in self._process_fns:
            fn = self._process_fns[kind]
            return () if fn is None else fn(handle)
        for suffix in _VERSION_SUFFIXES:
            candidate = getattr(self._nv, base + suffix, None)
            if candidate is None:
                continue  # this pynvml release predates that variant
            try:
                result = candidate(handle)
            except self._mismatch:
                continue
            except self._error as exc:
                if _code(exc) in _NEWER_THAN_DRIVER:
                    continue
                raise  # a device answer (NotSupported, GPU lost): says nothing about which variant works
            # Later ticks call the driver once per list where the entry point allows it (nvml_lists.py).
            self._process_fns[kind] = one_call(self._nv, base + suffix, self._nv.NVMLError) or candidate
            return result
        self._process_fns[kind] = None
        log.warning("nvml_process_list_missing", list=kind, reason="no variant of the call works with this driver")
        return ()
