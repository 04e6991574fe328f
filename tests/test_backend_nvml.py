"""The NVML backend against a scripted fake pynvml: memory versions, process lists, MIG, errors, lifecycle."""

from __future__ import annotations

import socket

import fake_pynvml as fk
import pytest
from fake_pynvml import FakeGpu, FakeNvml, FakeProcess, GiB, MiB, gpu
from hypothesis import given, settings
from hypothesis import strategies as st
from vramwatch.backends.nvml import NvmlBackend, error_name, nvml_available
from vramwatch.backends.nvml_lists import EMPTY_LIST_EVERY
from vramwatch.errors import BackendUnavailable
from vramwatch.model import GpuSample, ProcessUsage, Reading
from vramwatch.typing import Backend, ProcessInspector

STATIC_CALLS = (
    "nvmlInit",
    "nvmlDeviceGetCount",
    "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetName",
    "nvmlDeviceGetPciInfo",
    "nvmlDeviceGetMigMode",
    "nvmlSystemGetDriverVersion",
)


def backend(fake: FakeNvml, *, inspector: ProcessInspector | None = None, mig: bool = True) -> NvmlBackend:
    return NvmlBackend(nvml=fake, inspector=inspector, mig=mig)


def only_gpu(reading: Reading) -> GpuSample:
    assert len(reading.gpus) == 1
    return reading.gpus[0]


def by_pid(reading: Reading) -> dict[int, ProcessUsage]:
    return {p.pid: p for p in reading.processes}


# -- memory ------------------------------------------------------------------------------------------------------


def test_memory_v2_reports_allocated_used_and_the_reservation_apart() -> None:
    """With memory v2, used excludes the driver reservation (nvidia-smi's Memory-Usage) and reserved is set."""
    fake = FakeNvml([gpu(0, total=80 * GiB, used=3 * GiB, reserved=600 * MiB)])
    g = only_gpu(backend(fake).read())
    assert (g.total_bytes, g.used_bytes, g.reserved_bytes) == (80 * GiB, 3 * GiB, 600 * MiB)
    assert g.free_bytes == 80 * GiB - 3 * GiB - 600 * MiB
    assert g.up
    assert g.error is None


@pytest.mark.parametrize(
    "memory_v2", ["driver_lacks", "not_supported", "version_mismatch", "no_constant", "no_keyword"]
)
def test_memory_falls_back_to_v1_where_v2_is_unavailable(memory_v2: fk.MemoryV2) -> None:
    """Without v2 (driver or pynvml too old) v1 is read: reserved None, used includes the reservation."""
    fake = FakeNvml([gpu(0, total=24 * GiB, used=5 * GiB, reserved=400 * MiB)], memory_v2=memory_v2)
    g = only_gpu(backend(fake).read())
    assert g.reserved_bytes is None
    assert g.used_bytes == 5 * GiB + 400 * MiB
    assert g.free_bytes == 24 * GiB - 5 * GiB - 400 * MiB
    assert g.total_bytes == 24 * GiB


@pytest.mark.parametrize(("memory_v2", "v2_calls", "v1_calls"), [("works", 5, 0), ("driver_lacks", 1, 5)])
def test_memory_version_is_probed_once(memory_v2: fk.MemoryV2, v2_calls: int, v1_calls: int) -> None:
    """The first read finds which memory call works; later reads call only that one."""
    fake = FakeNvml([gpu(0)], memory_v2=memory_v2)
    b = backend(fake)
    for _ in range(5):
        b.read()
    assert fake.calls["nvmlDeviceGetMemoryInfo_v2"] == v2_calls
    assert fake.calls["nvmlDeviceGetMemoryInfo_v1"] == v1_calls


def test_a_lost_gpu_during_the_memory_probe_does_not_demote_it_to_v1() -> None:
    """GpuIsLost answers nothing about v2 support: once the GPU is back, v2 is still used."""
    g0 = gpu(0)
    fake = FakeNvml([g0])
    b = backend(fake)
    g0.lost = True  # lost between start-up and the first tick's probe
    assert only_gpu(b.read()).error == "gpu_lost"
    g0.lost = False
    assert only_gpu(b.read()).reserved_bytes == g0.reserved
    assert fake.calls["nvmlDeviceGetMemoryInfo_v1"] == 0


# -- processes ---------------------------------------------------------------------------------------------------


def test_a_pid_in_several_lists_is_one_entry_with_every_kind_and_the_largest_figure() -> None:
    """Compute + graphics + MPS entries of one pid merge: kinds is the set of lists, used the max known."""
    fake = FakeNvml(
        [
            gpu(
                0,
                compute=[FakeProcess(100, 2 * GiB), FakeProcess(200, None), FakeProcess(300, 1 * GiB)],
                graphics=[FakeProcess(100, 3 * GiB), FakeProcess(200, 7 * MiB)],
                mps=[FakeProcess(100, None), FakeProcess(400, 0)],
            )
        ]
    )
    procs = by_pid(backend(fake).read())
    assert set(procs) == {100, 200, 300, 400}
    assert procs[100].kinds == {"compute", "graphics", "mps"}
    assert procs[100].used_bytes == 3 * GiB
    assert procs[200].kinds == {"compute", "graphics"}
    assert procs[200].used_bytes == 7 * MiB
    assert procs[300].kinds == {"compute"}
    assert procs[300].used_bytes == 1 * GiB
    assert procs[400].kinds == {"mps"}
    assert all(p.gpu_uuid == fake.gpus[0].uuid for p in procs.values())


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, None), (fk.NVML_VALUE_NOT_AVAILABLE_ULONGLONG, None), (0, 0), (123 * MiB, 123 * MiB)],
)
def test_unknown_process_memory_is_none_and_zero_is_zero(raw: int | None, expected: int | None) -> None:
    """usedGpuMemory None / NVML_VALUE_NOT_AVAILABLE means unknown (None); 0 is a real measurement."""
    fake = FakeNvml([gpu(0, compute=[FakeProcess(42, raw)])])
    assert by_pid(backend(fake).read())[42].used_bytes == expected


def test_impossible_pids_from_a_mismatched_struct_layout_are_dropped() -> None:
    """pid 0 and 0xFFFFFFFF (what a wrong pynvml/driver struct pairing yields) never reach attribution."""
    fake = FakeNvml([gpu(0, compute=[FakeProcess(0, 5), FakeProcess(0xFFFFFFFF, 5), FakeProcess(77, 5)])])
    assert set(by_pid(backend(fake).read())) == {77}


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.integers(1, 40),
        st.tuples(
            st.sets(st.sampled_from(["compute", "graphics", "mps"]), min_size=1),
            st.lists(st.one_of(st.none(), st.integers(0, 1 << 40)), min_size=3, max_size=3),
        ),
        max_size=12,
    )
)
def test_merged_entries_match_the_lists_they_came_from(
    table: dict[int, tuple[set[str], list[int | None]]],
) -> None:
    """Property: one entry per pid, kinds == lists it was in, used == max of its known figures (else None)."""
    g0 = gpu(0)
    kinds = ("compute", "graphics", "mps")
    for pid, (lists, figures) in table.items():
        for kind, figure in zip(kinds, figures, strict=True):
            if kind in lists:
                getattr(g0, kind).append(FakeProcess(pid, figure))
    b = backend(FakeNvml([g0]))
    reading = b.read()
    assert b.read() == reading  # the next tick reads through the driver's entry points: the same entries
    assert len(reading.processes) == len(table)
    for p in reading.processes:
        lists, figures = table[p.pid]
        known = [f for k, f in zip(kinds, figures, strict=True) if k in lists and f is not None]
        assert p.kinds == lists
        assert p.used_bytes == (max(known) if known else None)


@pytest.mark.parametrize(
    ("module_versions", "driver_versions", "mismatch", "used"),
    [
        (("_v3", "_v2", ""), ("_v3", "_v2", ""), True, "_v3"),
        (("_v3", "_v2", ""), ("_v2", ""), True, "_v2"),  # a driver older than the v3 struct
        (("_v3", "_v2", ""), ("",), False, ""),  # only the unversioned call answers
        (("_v2", ""), ("_v3", "_v2", ""), True, "_v2"),  # a pynvml release without _v3 names
        (("",), ("_v3", "_v2", ""), True, ""),  # an old pynvml with only the unversioned call
    ],
)
def test_process_call_versions_are_probed_newest_first_and_once(
    module_versions: tuple[str, ...], driver_versions: tuple[str, ...], mismatch: bool, used: str
) -> None:
    """The newest variant both pynvml and the driver have is found on the first read and used from then on."""
    fake = FakeNvml(
        [gpu(0, compute=[FakeProcess(9, 1 * GiB)])],
        module_process_versions=module_versions,
        driver_process_versions=driver_versions,
        unversioned_raises_mismatch=mismatch,
    )
    b = backend(fake)
    for _ in range(4):
        assert by_pid(b.read())[9].used_bytes == 1 * GiB
    base = "nvmlDeviceGetComputeRunningProcesses"
    assert fake.calls[base + used] == 4
    for other in set(module_versions) - {used}:
        assert fake.calls[base + other] <= 1  # a failed probe is never repeated


def test_library_mismatch_error_from_every_variant_leaves_the_list_empty_not_the_reading() -> None:
    """pynvml's NVMLLibraryMismatchError (not an NVMLError) is caught; memory is still read."""
    fake = FakeNvml(
        [gpu(0, used=4 * GiB, compute=[FakeProcess(9, 1)])],
        module_process_versions=("",),
        driver_process_versions=(),
        unversioned_raises_mismatch=True,
    )
    reading = backend(fake).read()
    assert only_gpu(reading).used_bytes == 4 * GiB
    assert reading.processes == ()


def test_real_pynvml_mismatch_error_is_not_an_nvml_error() -> None:
    """Pins the fact the backend's explicit handling relies on, in the installed nvidia-ml-py."""
    pynvml = pytest.importorskip("pynvml")
    mismatch = getattr(pynvml, "NVMLLibraryMismatchError", None)
    if mismatch is None:
        pytest.skip("this nvidia-ml-py has no NVMLLibraryMismatchError")
    assert not issubclass(mismatch, pynvml.NVMLError)
    assert not issubclass(fk.NVMLLibraryMismatchError, fk.NVMLError)


@pytest.mark.parametrize("code", [fk.NVML_ERROR_NOT_SUPPORTED, fk.NVML_ERROR_NO_PERMISSION])
@pytest.mark.parametrize("failing", ["graphics", "mps"])
def test_an_unsupported_list_is_dropped_for_good_and_the_rest_still_read(code: int, failing: str) -> None:
    """NotSupported / NoPermission on one list drops that list (never asked again); GPU and compute stay."""
    base = {"graphics": "nvmlDeviceGetGraphicsRunningProcesses", "mps": "nvmlDeviceGetMPSComputeRunningProcesses"}
    g0 = gpu(0, compute=[FakeProcess(5, 1 * GiB)], errors={base[failing]: code})
    getattr(g0, failing).append(FakeProcess(6, 2 * GiB))
    fake = FakeNvml([g0])
    b = backend(fake)
    for _ in range(3):
        reading = b.read()
        assert only_gpu(reading).up
        assert set(by_pid(reading)) == {5}
    assert fake.calls[base[failing] + "_v3"] == 1


def test_a_transient_list_error_drops_that_list_for_one_tick_only() -> None:
    """A Timeout on the compute list empties it for that tick; the next tick reads it again."""
    g0 = gpu(0, compute=[FakeProcess(5, 1 * GiB)], errors={"nvmlDeviceGetComputeRunningProcesses": 10})
    fake = FakeNvml([g0])
    b = backend(fake)
    first = b.read()
    assert only_gpu(first).up
    assert first.processes == ()
    del g0.errors["nvmlDeviceGetComputeRunningProcesses"]
    assert set(by_pid(b.read())) == {5}


# -- one driver call per list, empty lists less often (nvml_lists.py) ----------------------------------------------

COMPUTE = "nvmlDeviceGetComputeRunningProcesses"
GRAPHICS = "nvmlDeviceGetGraphicsRunningProcesses"
MPS = "nvmlDeviceGetMPSComputeRunningProcesses"


def test_after_the_first_tick_each_list_is_one_call_of_the_drivers_entry_point() -> None:
    """From the second read on, a list is read by one call of the C entry point (pynvml's makes two)."""
    fake = FakeNvml([gpu(0, compute=[FakeProcess(5, 1 * GiB)], graphics=[FakeProcess(6, 2 * GiB)])])
    b = backend(fake)
    for _ in range(6):
        assert set(by_pid(b.read())) == {5, 6}
    assert fake.calls[COMPUTE + "_v3"] == fake.calls[GRAPHICS + "_v3"] == 6
    assert fake.c_calls[COMPUTE + "_v3"] == fake.c_calls[GRAPHICS + "_v3"] == 5


@pytest.mark.parametrize("newcomers", [15, 16, 17, 40, 300])
def test_a_list_that_outgrows_its_array_is_read_whole(newcomers: int) -> None:
    """More processes than the kept array holds: the driver's INSUFFICIENT_SIZE makes room and every one is
    listed; the next tick is one call again."""
    g0 = gpu(0, compute=[FakeProcess(1, MiB)])
    fake = FakeNvml([g0])
    b = backend(fake)
    b.read()
    b.read()
    g0.compute = [FakeProcess(100 + i, (i + 1) * MiB) for i in range(newcomers)]
    procs = by_pid(b.read())
    assert {pid: p.used_bytes for pid, p in procs.items()} == {100 + i: (i + 1) * MiB for i in range(newcomers)}
    before = fake.c_calls[COMPUTE + "_v3"]
    assert len(b.read().processes) == newcomers
    assert fake.c_calls[COMPUTE + "_v3"] == before + 1


@pytest.mark.parametrize(("code", "down"), [(fk.NVML_ERROR_GPU_IS_LOST, True), (fk.NVML_ERROR_TIMEOUT, False)])
def test_an_error_answered_by_the_entry_point_is_handled_as_pynvmls(code: int, down: bool) -> None:
    """A return code from the C call is the NVMLError pynvml would raise: GPU lost marks the GPU down, a
    timeout empties the list for that tick."""
    g0 = gpu(0, used=3 * GiB, compute=[FakeProcess(5, 1 * GiB)])
    fake = FakeNvml([g0])
    b = backend(fake)
    b.read()
    g0.errors[COMPUTE] = code
    before = fake.c_calls[COMPUTE + "_v3"]
    failed = only_gpu(b.read()) if down else b.read()
    assert fake.c_calls[COMPUTE + "_v3"] == before + 1  # the answer came from the entry point, not pynvml
    if down:
        assert not failed.up
        assert failed.error == error_name(code)
    else:
        assert isinstance(failed, Reading)
        assert failed.processes == ()
        assert only_gpu(failed).used_bytes == 3 * GiB
    del g0.errors[COMPUTE]
    assert set(by_pid(b.read())) == {5}


def test_a_pynvml_without_the_pointer_lookup_keeps_its_own_calls() -> None:
    """A pynvml that lacks `_nvmlGetFunctionPointer` (or a library without the entry point) is read through
    pynvml's functions at every tick."""
    fake = FakeNvml([gpu(0, compute=[FakeProcess(5, 1 * GiB)])])
    fake.__dict__["_nvmlGetFunctionPointer"] = None  # shadows the fake's method, as if pynvml had none
    b = backend(fake)
    for _ in range(3):
        assert set(by_pid(b.read())) == {5}
    assert fake.calls[COMPUTE + "_v3"] == 3
    assert fake.c_calls[COMPUTE + "_v3"] == 0


def test_empty_graphics_and_mps_lists_are_read_every_fifth_tick_while_compute_holds_still() -> None:
    """A headless card: the compute list at every tick, the empty graphics and MPS lists one tick in five."""
    fake = FakeNvml([gpu(0, compute=[FakeProcess(5, 1 * GiB)])])
    b = backend(fake)
    for _ in range(21):
        b.read()
    assert fake.calls[COMPUTE + "_v3"] == 21
    assert fake.calls[GRAPHICS + "_v3"] == fake.calls[MPS + "_v3"] == 5  # ticks 1, 6, 11, 16, 21


def test_a_change_of_the_compute_list_reads_every_list_at_once() -> None:
    """A new CUDA process (it may be an MPS server, or also draw) has the empty lists read at that tick."""
    g0 = gpu(0, compute=[FakeProcess(5, 1 * GiB)])
    fake = FakeNvml([g0])
    b = backend(fake)
    b.read()
    b.read()
    g0.compute.append(FakeProcess(7, 1 * GiB))
    g0.mps.append(FakeProcess(7, 1 * GiB))
    before = fake.calls[MPS + "_v3"]
    assert by_pid(b.read())[7].kinds == {"compute", "mps"}
    assert fake.calls[MPS + "_v3"] == before + 1


def test_a_graphics_newcomer_is_listed_within_five_ticks_and_then_at_every_tick() -> None:
    """A process that appears in the graphics list only, while the compute list holds still, is listed within
    `EMPTY_LIST_EVERY` ticks; a list with processes is read at every tick, so it never flickers."""
    g0 = gpu(0, compute=[FakeProcess(5, 1 * GiB)])
    b = backend(FakeNvml([g0]))
    b.read()
    g0.graphics.append(FakeProcess(9, 300 * MiB))
    seen = [9 in by_pid(b.read()) for _ in range(EMPTY_LIST_EVERY + 10)]
    first = seen.index(True)
    assert first < EMPTY_LIST_EVERY
    assert all(seen[first:])
    g0.graphics.clear()
    assert 9 not in by_pid(b.read())


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=40))
def test_no_list_goes_unread_for_five_ticks(script: list[tuple[bool, bool]]) -> None:
    """Property: whatever comes and goes, every list is read at least once in any `EMPTY_LIST_EVERY` ticks, and
    at every tick while it answered with processes at its last read."""
    g0 = gpu(0)
    fake = FakeNvml([g0])
    b = backend(fake)
    last_read = {GRAPHICS: 0, MPS: 0}
    held = {GRAPHICS: False, MPS: False}
    for tick, (compute, graphics) in enumerate(script, start=1):
        g0.compute = [FakeProcess(5, MiB)] if compute else []
        g0.graphics = [FakeProcess(6, MiB)] if graphics else []
        before = {name: fake.calls[name + "_v3"] for name in last_read}
        b.read()
        for name, last in last_read.items():
            read = fake.calls[name + "_v3"] > before[name]
            assert read or (tick - last < EMPTY_LIST_EVERY and not held[name])
            if read:
                last_read[name] = tick
                held[name] = bool(g0.graphics) if name == GRAPHICS else False


# -- per-GPU failures ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (fk.NVML_ERROR_GPU_IS_LOST, "gpu_lost"),
        (fk.NVML_ERROR_UNKNOWN, "unknown"),
        (fk.NVML_ERROR_RESET_REQUIRED, "reset_required"),
        (fk.NVML_ERROR_TIMEOUT, "timeout"),
    ],
)
@pytest.mark.parametrize("where", ["nvmlDeviceGetMemoryInfo", "nvmlDeviceGetComputeRunningProcesses"])
def test_a_failing_gpu_is_reported_down_and_the_others_still_read(code: int, error: str, where: str) -> None:
    """A per-device error on GPU 1 at tick k: GPU 1 down with no memory or processes, GPU 0 unaffected."""
    g0 = gpu(0, compute=[FakeProcess(10, 1 * GiB)])
    g1 = gpu(1, compute=[FakeProcess(11, 2 * GiB)])
    fake = FakeNvml([g0, g1])
    b = backend(fake)
    assert all(g.up for g in b.read().gpus)
    g1.errors[where] = code
    reading = b.read()
    up0, down1 = reading.gpus
    if where == "nvmlDeviceGetComputeRunningProcesses" and code == fk.NVML_ERROR_TIMEOUT:
        assert down1.up  # a transient list error degrades the list, not the GPU
        assert set(by_pid(reading)) == {10}
        return
    assert up0.up
    assert up0.used_bytes == g0.used
    assert not down1.up
    assert down1.error == error
    assert (down1.total_bytes, down1.used_bytes, down1.free_bytes) == (None, None, None)
    assert down1.uuid == g1.uuid
    assert down1.name == g1.name
    assert set(by_pid(reading)) == {10}
    del g1.errors[where]
    assert all(g.up for g in b.read().gpus)


def test_a_gpu_unreadable_at_start_is_reported_down_every_tick() -> None:
    """A GPU whose handle fails at init still appears (down, keyed by index) next to the healthy ones."""
    g1 = gpu(1, lost=True)
    fake = FakeNvml([gpu(0), g1])
    b = backend(fake)
    g1.lost = False  # its static facts were never read: it stays down until the daemon restarts
    for _ in range(2):
        ok, down = b.read().gpus
        assert ok.up
        assert not down.up
        assert down.error == "gpu_lost"
        assert down.index == 1
        assert down.uuid == "nvml-index-1"


# -- library-wide failures -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "words", "reason"),
    [
        (
            fk.NVML_ERROR_DRIVER_NOT_LOADED,
            "NVIDIA driver not loaded (nvmlInit: Driver Not Loaded)",
            "driver_not_loaded",
        ),
        (fk.NVML_ERROR_LIBRARY_NOT_FOUND, "libnvidia-ml.so.1 not found", "library_not_found"),
        (fk.NVML_ERROR_LIB_RM_VERSION_MISMATCH, "versions differ", "mismatch"),
        (fk.NVML_ERROR_NO_PERMISSION, "/dev/nvidia", "other"),
        (fk.NVML_ERROR_UNKNOWN, "nvidia-smi", "other"),
    ],
)
def test_init_failures_raise_one_clear_line(code: int, words: str, reason: str) -> None:
    """nvmlInit errors become BackendUnavailable: one line saying what failed and what to check."""
    with pytest.raises(BackendUnavailable) as info:
        backend(FakeNvml([gpu(0)], init_error=code))
    message = str(info.value)
    assert words in message
    assert "\n" not in message
    assert info.value.reason == reason


def test_library_mismatch_at_init_is_backend_unavailable() -> None:
    """NVMLLibraryMismatchError from nvmlInit (not an NVMLError) also becomes BackendUnavailable."""
    with pytest.raises(BackendUnavailable, match="does not match") as info:
        backend(FakeNvml([gpu(0)], init_mismatch=True))
    assert info.value.reason == "mismatch"


def test_uninitialized_mid_run_raises_then_the_next_read_initialises_again() -> None:
    """A library that stops answering raises BackendUnavailable; the daemon's retry re-initialises NVML."""
    fake = FakeNvml([gpu(0)])
    b = backend(fake)
    b.read()
    fake.refcount = 0  # something shut NVML down under us
    with pytest.raises(BackendUnavailable, match="stopped answering"):
        b.read()
    assert only_gpu(b.read()).up
    assert fake.calls["nvmlInit"] == 2


def test_driver_unloaded_mid_run_is_backend_unavailable_not_a_down_gpu() -> None:
    """DriverNotLoaded on a per-tick call is library-wide: raise, with the driver reason."""
    fake = FakeNvml([gpu(0)])
    b = backend(fake)
    fake.errors["nvmlDeviceGetMemoryInfo"] = fk.NVML_ERROR_DRIVER_NOT_LOADED
    with pytest.raises(BackendUnavailable) as info:
        b.read()
    assert info.value.reason == "driver_not_loaded"


# -- lifecycle ---------------------------------------------------------------------------------------------------


def test_init_and_static_queries_happen_once_across_many_reads() -> None:
    """100 reads cost one nvmlInit and one read of the static facts; per tick only memory and processes."""
    fake = FakeNvml([gpu(0), gpu(1)])
    b = backend(fake)
    before = {name: fake.calls[name] for name in STATIC_CALLS}
    for _ in range(100):
        b.read()
    assert {name: fake.calls[name] for name in STATIC_CALLS} == before
    assert fake.calls["nvmlInit"] == 1
    assert fake.calls["nvmlDeviceGetMemoryInfo_v2"] == 200


def test_close_shuts_nvml_down_once_and_reads_after_close_fail() -> None:
    """close() calls nvmlShutdown exactly once however often it is called; read() then raises."""
    fake = FakeNvml([gpu(0)])
    b = backend(fake)
    b.close()
    b.close()
    assert fake.calls["nvmlShutdown"] == 1
    assert fake.refcount == 0
    with pytest.raises(BackendUnavailable, match="closed"):
        b.read()


def test_bytes_from_old_pynvml_releases_are_decoded() -> None:
    """uuid, name, bus id and version strings returned as bytes come out as str."""
    fake = FakeNvml([gpu(0, name="Tesla V100-SXM2-16GB")], as_bytes=True)
    b = backend(fake)
    g = only_gpu(b.read())
    assert g.uuid == fake.gpus[0].uuid
    assert g.name == "Tesla V100-SXM2-16GB"
    assert g.pci_bus_id == fake.gpus[0].pci_bus_id
    assert b.describe()["driver_version"] == "580.159.04"


def test_describe_reports_driver_nvml_cuda_and_host() -> None:
    """describe() gives the versions as nvidia-smi prints them, and the host name."""
    b = backend(FakeNvml([gpu(0)], driver_version="550.54.15", nvml_version="12.550.54.15", cuda_driver_version=12040))
    assert b.describe() == {
        "driver_version": "550.54.15",
        "nvml_version": "12.550.54.15",
        "cuda_driver_version": "12.4",
        "host": socket.gethostname(),
    }


def test_is_a_backend_and_returns_the_injected_inspector() -> None:
    """NvmlBackend satisfies the Backend protocol and hands back the inspector it was given."""

    class Inspector:
        def inspect(self, pid: int) -> object:
            raise NotImplementedError

        def pid_namespace_matches(self) -> bool:
            return True

    inspector = Inspector()
    b = backend(FakeNvml([gpu(0)]), inspector=inspector)
    assert isinstance(b, Backend)
    assert b.kind == "nvml"
    assert b.inspector() is inspector


def test_default_inspector_is_psutils() -> None:
    """Without an injected inspector, the psutil one is built once and reused."""
    attribution = pytest.importorskip("vramwatch.attribution")
    b = backend(FakeNvml([gpu(0)]))
    first = b.inspector()
    assert isinstance(first, attribution.PsutilInspector)
    assert isinstance(first, ProcessInspector)
    assert b.inspector() is first


@pytest.mark.parametrize(("init_error", "expected"), [(None, True), (fk.NVML_ERROR_DRIVER_NOT_LOADED, False)])
def test_nvml_available_initialises_and_shuts_down(init_error: int | None, expected: bool) -> None:
    """nvml_available() is True exactly when nvmlInit succeeds, and leaves NVML shut down."""
    fake = FakeNvml([gpu(0)], init_error=init_error)
    assert nvml_available(fake) is expected
    assert fake.refcount == 0


def test_nvml_available_is_false_when_init_raises_the_mismatch_error() -> None:
    """Even the non-NVMLError mismatch exception means 'not available', not a crash."""
    assert nvml_available(FakeNvml([gpu(0)], init_mismatch=True)) is False


def test_error_names_are_short_and_stable() -> None:
    """Known codes get their snake_case names; unknown ones keep their number."""
    assert error_name(fk.NVML_ERROR_GPU_IS_LOST) == "gpu_lost"
    assert error_name(12345) == "nvml_error_12345"


# -- MIG -----------------------------------------------------------------------------------------------------------


def mig_gpu(n: int) -> FakeGpu:
    """A MIG-mode A100 with two instances in slots 0 and 2 (slot 1 empty)."""
    parent = gpu(n, name="NVIDIA A100-SXM4-80GB", mig_mode=fk.NVML_DEVICE_MIG_ENABLE)
    parent.mig = [
        FakeGpu(
            uuid=f"MIG-{n}a",
            name="NVIDIA A100-SXM4-80GB MIG 3g.40gb",
            total=40 * GiB,
            used=10 * GiB,
            reserved=0,
            gpu_instance_id=1,
            compute_instance_id=0,
            compute=[FakeProcess(500, 9 * GiB)],
        ),
        None,
        FakeGpu(
            uuid=f"MIG-{n}b",
            name="NVIDIA A100-SXM4-80GB MIG 1g.10gb",
            total=10 * GiB,
            used=1 * GiB,
            reserved=0,
            gpu_instance_id=9,
            compute_instance_id=0,
            compute=[FakeProcess(600, 512 * MiB), FakeProcess(601, None)],
        ),
    ]
    return parent


def test_mig_instances_replace_their_parent_with_their_own_memory_and_processes() -> None:
    """Each MIG device is a GpuSample (MIG uuid, parent uuid, parent index); the parent itself is not."""
    plain = gpu(0)
    parent = mig_gpu(1)
    reading = backend(FakeNvml([plain, parent])).read()
    assert [g.uuid for g in reading.gpus] == [plain.uuid, "MIG-1a", "MIG-1b"]
    a, b = reading.gpus[1:]
    assert (a.index, a.parent_uuid, a.name) == (1, parent.uuid, "NVIDIA A100-SXM4-80GB MIG 3g.40gb")
    assert (a.total_bytes, a.used_bytes) == (40 * GiB, 10 * GiB)
    assert (b.total_bytes, b.used_bytes) == (10 * GiB, 1 * GiB)
    assert a.pci_bus_id == parent.pci_bus_id
    owner = {p.pid: p.gpu_uuid for p in reading.processes}
    assert owner == {500: "MIG-1a", 600: "MIG-1b", 601: "MIG-1b"}
    assert sum(g.total_bytes or 0 for g in reading.gpus) == plain.total + 50 * GiB  # no double counting


def test_mig_processes_fall_back_to_the_parents_list_filtered_by_instance() -> None:
    """Where a MIG handle cannot list processes, the parent's entries are split by gpuInstanceId."""
    parent = mig_gpu(0)
    for child in parent.mig:
        if child is not None:
            child.errors["nvmlDeviceGetComputeRunningProcesses"] = fk.NVML_ERROR_NOT_SUPPORTED
    fake = FakeNvml([parent])
    b = backend(fake)
    for _ in range(2):
        owner = {p.pid: p.gpu_uuid for p in b.read().processes}
        assert owner == {500: "MIG-0a", 600: "MIG-0b", 601: "MIG-0b"}


def test_mig_mode_without_instances_reports_the_parent() -> None:
    """A GPU in MIG mode with no instance configured is still watched, as a plain GPU."""
    parent = gpu(0, mig_mode=fk.NVML_DEVICE_MIG_ENABLE)
    reading = backend(FakeNvml([parent])).read()
    assert [g.uuid for g in reading.gpus] == [parent.uuid]


def test_mig_disabled_by_option_reads_only_the_physical_gpu() -> None:
    """mig=False skips MIG enumeration entirely: the parent is reported as one GPU."""
    fake = FakeNvml([mig_gpu(0)])
    reading = backend(fake, mig=False).read()
    assert [g.uuid for g in reading.gpus] == [fake.gpus[0].uuid]
    assert fake.calls["nvmlDeviceGetMigMode"] == 0


def test_pre_ampere_gpus_without_mig_support_are_plain_gpus() -> None:
    """nvmlDeviceGetMigMode answering NotSupported means no MIG, not an error."""
    old = gpu(0, name="Tesla V100", errors={"nvmlDeviceGetMigMode": fk.NVML_ERROR_NOT_SUPPORTED})
    assert only_gpu(backend(FakeNvml([old])).read()).up


def test_a_reshaped_mig_layout_is_read_again() -> None:
    """A MIG handle that stops resolving is reported down once; the next read enumerates the layout anew."""
    parent = mig_gpu(0)
    fake = FakeNvml([parent])
    b = backend(fake)
    b.read()
    gone = parent.mig[2]
    assert gone is not None
    gone.errors["nvmlDeviceGetMemoryInfo"] = fk.NVML_ERROR_NOT_FOUND
    parent.mig[2] = None  # the admin destroyed the 1g.10gb instance
    reading = b.read()
    assert [(g.uuid, g.up, g.error) for g in reading.gpus] == [
        ("MIG-0a", True, None),
        ("MIG-0b", False, "mig_reconfigured"),
    ]
    assert [g.uuid for g in b.read().gpus] == ["MIG-0a"]
    assert fake.calls["nvmlDeviceGetMaxMigDeviceCount"] == 2
