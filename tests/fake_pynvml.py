"""A scriptable stand-in for nvidia-ml-py's `pynvml` module, for the NVML backend's unit tests.

`FakeNvml` is a module object (a `types.ModuleType`) with the function names, constants and error hierarchy
the backend uses, shaped like the real module (nvidia-ml-py 13.x's pynvml.py): `NVMLError(code)` returns the
matching `NVMLError_*` subclass and carries `.value`; `NVMLLibraryMismatchError` derives from Exception only;
process entries have pid / usedGpuMemory / gpuInstanceId / computeInstanceId, with usedGpuMemory None where
NVML says NVML_VALUE_NOT_AVAILABLE. A test scripts the GPUs (`FakeGpu`), what the driver supports (memory v2,
process-call versions), which call fails with which code, and mutates them between reads (`gpu.lost = True`).
`calls` counts every call by name, so tests can pin "init once" and "probe once".
"""

from __future__ import annotations

import types
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

GiB = 1 << 30
MiB = 1 << 20

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
NVML_ERROR_UNKNOWN = 999

_STRINGS = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_TIMEOUT: "Timeout",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_RESET_REQUIRED: "GPU requires restart",
    NVML_ERROR_LIB_RM_VERSION_MISMATCH: "RM has detected an NVML/RM version mismatch.",
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH: "Argument Version Mismatch",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}

NVML_VALUE_NOT_AVAILABLE_ULONGLONG = 0xFFFFFFFFFFFFFFFF
NVML_VALUE_NOT_AVAILABLE_UINT = 0xFFFFFFFF
NVML_DEVICE_MIG_DISABLE = 0
NVML_DEVICE_MIG_ENABLE = 1
nvmlMemory_v2 = 0x02000028  # the real constant: sizeof(nvmlMemory_v2_t) | 2 << 24


class NVMLError(Exception):
    """Like pynvml's: `NVMLError(code)` builds the `NVMLError_*` subclass for that code."""

    _by_code: ClassVar[dict[int, type[NVMLError]]] = {}
    value: int

    def __new__(cls, value: int | None = None) -> NVMLError:
        code = getattr(cls, "_code", value)
        target = NVMLError._by_code.get(value, cls) if cls is NVMLError and value is not None else cls
        obj = Exception.__new__(target)
        obj.value = code if code is not None else NVML_ERROR_UNKNOWN
        return obj

    def __init__(self, value: int | None = None) -> None:
        super().__init__(self.value)

    def __str__(self) -> str:
        return _STRINGS.get(self.value, f"NVML Error with code {self.value}")


def _subclass(name: str, code: int) -> type[NVMLError]:
    cls = type(name, (NVMLError,), {"_code": code})
    NVMLError._by_code[code] = cls
    return cls


NVMLError_Uninitialized = _subclass("NVMLError_Uninitialized", NVML_ERROR_UNINITIALIZED)
NVMLError_InvalidArgument = _subclass("NVMLError_InvalidArgument", NVML_ERROR_INVALID_ARGUMENT)
NVMLError_NotSupported = _subclass("NVMLError_NotSupported", NVML_ERROR_NOT_SUPPORTED)
NVMLError_NoPermission = _subclass("NVMLError_NoPermission", NVML_ERROR_NO_PERMISSION)
NVMLError_NotFound = _subclass("NVMLError_NotFound", NVML_ERROR_NOT_FOUND)
NVMLError_DriverNotLoaded = _subclass("NVMLError_DriverNotLoaded", NVML_ERROR_DRIVER_NOT_LOADED)
NVMLError_Timeout = _subclass("NVMLError_Timeout", NVML_ERROR_TIMEOUT)
NVMLError_LibraryNotFound = _subclass("NVMLError_LibraryNotFound", NVML_ERROR_LIBRARY_NOT_FOUND)
NVMLError_FunctionNotFound = _subclass("NVMLError_FunctionNotFound", NVML_ERROR_FUNCTION_NOT_FOUND)
NVMLError_GpuIsLost = _subclass("NVMLError_GpuIsLost", NVML_ERROR_GPU_IS_LOST)
NVMLError_ResetRequired = _subclass("NVMLError_ResetRequired", NVML_ERROR_RESET_REQUIRED)
NVMLError_LibRmVersionMismatch = _subclass("NVMLError_LibRmVersionMismatch", NVML_ERROR_LIB_RM_VERSION_MISMATCH)
NVMLError_ArgumentVersionMismatch = _subclass("NVMLError_ArgumentVersionMismatch", NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
NVMLError_Unknown = _subclass("NVMLError_Unknown", NVML_ERROR_UNKNOWN)


class NVMLLibraryMismatchError(Exception):
    """pynvml's: raised by unversioned process calls on a driver without the struct they assume; not an NVMLError."""


@dataclass
class FakeProcess:
    """One process entry, with the attribute names pynvml's nvmlFriendlyObject has."""

    pid: int
    usedGpuMemory: int | None
    gpuInstanceId: int = NVML_VALUE_NOT_AVAILABLE_UINT
    computeInstanceId: int = NVML_VALUE_NOT_AVAILABLE_UINT


@dataclass
class FakeMemory:
    total: int
    free: int
    used: int
    reserved: int | None = None
    version: int | None = None


@dataclass
class FakePciInfo:
    busId: bytes
    busIdLegacy: bytes


@dataclass(eq=False)
class FakeGpu:
    """One GPU (or MIG device) as the driver would describe it; mutate between reads to script a run."""

    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    pci_bus_id: str = "00000000:01:00.0"
    total: int = 80 * GiB
    used: int = 2 * GiB  # allocated (v2's used); v1 reports used + reserved
    reserved: int = 512 * MiB
    compute: list[FakeProcess] = field(default_factory=list)
    graphics: list[FakeProcess] = field(default_factory=list)
    mps: list[FakeProcess] = field(default_factory=list)
    mig_mode: int = NVML_DEVICE_MIG_DISABLE
    mig: list[FakeGpu | None] = field(default_factory=list)  # slots; None is an empty slot
    max_mig_devices: int = 7
    gpu_instance_id: int | None = None
    compute_instance_id: int | None = None
    errors: dict[str, int] = field(default_factory=dict)  # function name (no version suffix) -> code it raises
    lost: bool = False

    @property
    def free(self) -> int:
        return self.total - self.reserved - self.used


_LISTS = (
    ("compute", "nvmlDeviceGetComputeRunningProcesses"),
    ("graphics", "nvmlDeviceGetGraphicsRunningProcesses"),
    ("mps", "nvmlDeviceGetMPSComputeRunningProcesses"),
)

MemoryV2 = Literal["works", "driver_lacks", "not_supported", "version_mismatch", "no_constant", "no_keyword"]


class FakeNvml(types.ModuleType):
    """The fake module. Defaults: a recent pynvml on a recent driver (memory v2, process calls up to _v3)."""

    def __init__(
        self,
        gpus: list[FakeGpu],
        *,
        as_bytes: bool = False,
        memory_v2: MemoryV2 = "works",
        module_process_versions: tuple[str, ...] = ("_v3", "_v2", ""),
        driver_process_versions: tuple[str, ...] = ("_v3", "_v2", ""),
        unversioned_raises_mismatch: bool = True,
        init_error: int | None = None,
        init_mismatch: bool = False,
        driver_version: str = "580.159.04",
        nvml_version: str = "13.580.159.04",
        cuda_driver_version: int = 13000,
    ) -> None:
        super().__init__("pynvml")
        self.gpus = gpus
        self.as_bytes = as_bytes
        self.memory_v2 = memory_v2
        self.driver_process_versions = driver_process_versions
        self.unversioned_raises_mismatch = unversioned_raises_mismatch
        self.init_error = init_error
        self.init_mismatch = init_mismatch
        self.driver_version = driver_version
        self.nvml_version = nvml_version
        self.cuda_driver_version = cuda_driver_version
        self.refcount = 0
        self.calls: Counter[str] = Counter()
        self.c_calls: Counter[str] = Counter()  # of those, the calls through the C entry points
        self.errors: dict[str, int] = {}  # module-wide: function name -> code (e.g. "nvmlDeviceGetCount")
        for name, value in globals().items():
            if name.startswith(("NVML", "nvmlMemory_v2")) and not name.startswith("NVMLLibraryMismatchError"):
                setattr(self, name, value)
        self.NVMLLibraryMismatchError = NVMLLibraryMismatchError
        if memory_v2 == "no_constant":
            del self.nvmlMemory_v2
        if memory_v2 == "no_keyword":
            self.__dict__["nvmlDeviceGetMemoryInfo"] = self._memory_without_version
        for kind, base in _LISTS:
            for suffix in module_process_versions:
                setattr(self, base + suffix, self._process_fn(kind, base, suffix))

    # -- helpers --------------------------------------------------------------------------------------------------

    def _s(self, value: str) -> str | bytes:
        return value.encode() if self.as_bytes else value

    def _enter(self, name: str, gpu: FakeGpu | None = None, *, base: str | None = None) -> None:
        self.calls[name] = self.calls[name] + 1
        key = base or name
        if name != "nvmlInit" and self.refcount == 0:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        if key in self.errors:
            raise NVMLError(self.errors[key])
        if gpu is not None:
            if gpu.lost:
                raise NVMLError(NVML_ERROR_GPU_IS_LOST)
            if key in gpu.errors:
                raise NVMLError(gpu.errors[key])

    # -- library --------------------------------------------------------------------------------------------------

    def nvmlInit(self) -> None:
        self._enter("nvmlInit")
        if self.init_mismatch:
            raise NVMLLibraryMismatchError("pyNVML and the NVML library do not match")
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.refcount += 1

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self.refcount -= 1

    def nvmlSystemGetDriverVersion(self) -> str | bytes:
        self._enter("nvmlSystemGetDriverVersion")
        return self._s(self.driver_version)

    def nvmlSystemGetNVMLVersion(self) -> str | bytes:
        self._enter("nvmlSystemGetNVMLVersion")
        return self._s(self.nvml_version)

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._enter("nvmlSystemGetCudaDriverVersion")
        return self.cuda_driver_version

    # -- static device facts --------------------------------------------------------------------------------------

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        gpu = self.gpus[index]
        self._enter("nvmlDeviceGetHandleByIndex", gpu)
        return gpu

    def nvmlDeviceGetUUID(self, handle: FakeGpu) -> str | bytes:
        self._enter("nvmlDeviceGetUUID", handle)
        return self._s(handle.uuid)

    def nvmlDeviceGetName(self, handle: FakeGpu) -> str | bytes:
        self._enter("nvmlDeviceGetName", handle)
        return self._s(handle.name)

    def nvmlDeviceGetPciInfo(self, handle: FakeGpu) -> FakePciInfo:
        self._enter("nvmlDeviceGetPciInfo", handle)
        return FakePciInfo(busId=handle.pci_bus_id.encode(), busIdLegacy=handle.pci_bus_id[4:].encode())

    def nvmlDeviceGetMigMode(self, handle: FakeGpu) -> list[int]:
        self._enter("nvmlDeviceGetMigMode", handle)
        return [handle.mig_mode, handle.mig_mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: FakeGpu) -> int:
        self._enter("nvmlDeviceGetMaxMigDeviceCount", handle)
        return handle.max_mig_devices if handle.mig_mode == NVML_DEVICE_MIG_ENABLE else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: FakeGpu, index: int) -> FakeGpu:
        self._enter("nvmlDeviceGetMigDeviceHandleByIndex", handle)
        if index >= handle.max_mig_devices:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        child = handle.mig[index] if index < len(handle.mig) else None
        if child is None:
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        return child

    def nvmlDeviceGetGpuInstanceId(self, handle: FakeGpu) -> int:
        self._enter("nvmlDeviceGetGpuInstanceId", handle)
        if handle.gpu_instance_id is None:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return handle.gpu_instance_id

    def nvmlDeviceGetComputeInstanceId(self, handle: FakeGpu) -> int:
        self._enter("nvmlDeviceGetComputeInstanceId", handle)
        if handle.compute_instance_id is None:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return handle.compute_instance_id

    # -- per tick -------------------------------------------------------------------------------------------------

    def nvmlDeviceGetMemoryInfo(self, handle: FakeGpu, version: int | None = None) -> FakeMemory:
        if not version:
            self._enter("nvmlDeviceGetMemoryInfo_v1", handle, base="nvmlDeviceGetMemoryInfo")
            return FakeMemory(total=handle.total, free=handle.free, used=handle.used + handle.reserved)
        self._enter("nvmlDeviceGetMemoryInfo_v2", handle, base="nvmlDeviceGetMemoryInfo")
        if self.memory_v2 == "driver_lacks":
            raise NVMLError(NVML_ERROR_FUNCTION_NOT_FOUND)
        if self.memory_v2 == "not_supported":
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        if self.memory_v2 == "version_mismatch":
            raise NVMLError(NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        return FakeMemory(
            total=handle.total, free=handle.free, used=handle.used, reserved=handle.reserved, version=version
        )

    def _memory_without_version(self, handle: FakeGpu) -> FakeMemory:
        """nvmlDeviceGetMemoryInfo as pynvml releases before memory v2 define it: no `version` keyword."""
        return FakeNvml.nvmlDeviceGetMemoryInfo(self, handle)

    def _process_fn(self, kind: str, base: str, suffix: str) -> Callable[[FakeGpu], list[FakeProcess]]:
        def call(handle: FakeGpu) -> list[FakeProcess]:
            self._enter(base + suffix, handle, base=base)
            if suffix not in self.driver_process_versions:
                if suffix == "" and self.unversioned_raises_mismatch:
                    raise NVMLLibraryMismatchError(f"Unversioned function called; use {base}_v2")
                raise NVMLError(NVML_ERROR_FUNCTION_NOT_FOUND)
            return self._entries(handle, kind)

        call.__name__ = base + suffix
        return call

    def _nvmlGetFunctionPointer(self, name: str) -> Callable[..., int]:
        """pynvml's lookup of a C entry point, for the process lists only: the returned function fills the
        caller's array and returns an nvmlReturn_t, as libnvidia-ml's does (INSUFFICIENT_SIZE, with the count it
        needs, when the array is too small). Its calls are counted under the same names as pynvml's."""
        if self.refcount == 0:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        for kind, base in _LISTS:
            suffix = name[len(base) :]
            if name.startswith(base) and suffix in ("_v2", "_v3") and suffix in self.driver_process_versions:
                return self._c_process_fn(kind, base, suffix)
        raise NVMLError(NVML_ERROR_FUNCTION_NOT_FOUND)

    def _c_process_fn(self, kind: str, base: str, suffix: str) -> Callable[..., int]:
        def call(handle: FakeGpu, count_ref: Any, array: Any) -> int:
            self.c_calls[base + suffix] += 1
            try:
                self._enter(base + suffix, handle, base=base)
            except NVMLError as exc:
                return exc.value
            entries = self._entries(handle, kind)
            count = count_ref._obj  # ctypes.byref(c_uint)
            room, count.value = count.value, len(entries)
            if len(entries) > room or (entries and array is None):
                return NVML_ERROR_INSUFFICIENT_SIZE
            for slot, e in zip(array, entries, strict=False):
                slot.pid = e.pid
                slot.usedGpuMemory = NVML_VALUE_NOT_AVAILABLE_ULONGLONG if e.usedGpuMemory is None else e.usedGpuMemory
                slot.gpuInstanceId, slot.computeInstanceId = e.gpuInstanceId, e.computeInstanceId
            return NVML_SUCCESS

        return call

    def _entries(self, handle: FakeGpu, kind: str) -> list[FakeProcess]:
        """Fresh objects each call, as pynvml builds them; a MIG parent answers with its instances' entries."""
        if handle.mig_mode == NVML_DEVICE_MIG_ENABLE and handle.mig:
            out: list[FakeProcess] = []
            for child in handle.mig:
                if child is None:
                    continue
                for p in getattr(child, kind):
                    gi = child.gpu_instance_id if child.gpu_instance_id is not None else NVML_VALUE_NOT_AVAILABLE_UINT
                    ci = child.compute_instance_id
                    ci = ci if ci is not None else NVML_VALUE_NOT_AVAILABLE_UINT
                    out.append(FakeProcess(p.pid, p.usedGpuMemory, gi, ci))
            return out
        return [
            FakeProcess(p.pid, p.usedGpuMemory, p.gpuInstanceId, p.computeInstanceId) for p in getattr(handle, kind)
        ]

    def error(self, code: int) -> NVMLError:
        """The exception pynvml would raise for `code`."""
        return NVMLError(code)


def gpu(n: int, **kwargs: Any) -> FakeGpu:
    """GPU number `n` with a distinct UUID and bus id."""
    kwargs.setdefault("pci_bus_id", f"00000000:{n + 1:02X}:00.0")
    return FakeGpu(uuid=f"GPU-{n:08d}-0000-0000-0000-000000000000", **kwargs)


def real_nvml_answers() -> bool:
    """Whether the real NVML library answers on this machine: the gpu suite runs only where it does, and the tests
    of a machine without a driver only where it does not."""
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
    except Exception:
        return False
    return True
