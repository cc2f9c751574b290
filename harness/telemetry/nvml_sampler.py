"""NVML: the GPUs a worker uses, their facts for env.json, and a background sampler.

A sampler thread runs while a point runs and reads every `period_s` (one tick: the same
timestamp for every GPU): power, the cumulative energy counter, memory used, utilisation, SM and
memory clocks, temperature and the clock-event reasons. Timestamps come from the caller's clock (time.perf_counter relative to the
worker's t0), the clock the phase markers use. The thread shares the GIL with the thread that
launches GPU work: on an H100 it slowed an eager, launch-bound decode step by 8.7% at a 20 ms
period (benchmarks/LOG.md; benchmarks/telemetry_overhead.py measures it).

Power: the driver's instantaneous field (NVML_FI_DEV_POWER_INSTANT) where it exists, else the
averaged nvmlDeviceGetPowerUsage. On an H100 both lag the load and repeat one value for hundreds
of ms while the energy counter moves, which is why phase energy comes from the counter
(harness.telemetry.energy) and sampled power only fills the gaps the counter cannot.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Sequence

import pynvml

from harness.telemetry import throttle

GIB = 2**30


class NvmlUnavailable(RuntimeError):
    pass


def open_devices(indices: Sequence[int]) -> list:
    """NVML handles of the given CUDA device indices. NVML numbers GPUs by PCI bus and ignores
    CUDA_VISIBLE_DEVICES, so a device torch sees is found by its UUID."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        raise NvmlUnavailable(f"NVML did not initialise: {e}") from e
    try:
        return [_handle(i) for i in indices]
    except pynvml.NVMLError as e:
        pynvml.nvmlShutdown()
        raise NvmlUnavailable(f"no NVML handle for CUDA devices {list(indices)}: {e}") from e


def all_devices() -> list:
    """NVML handles of every GPU of the host, by NVML index: for env.json of a process that must not
    initialise CUDA (the sweep's parent). The caller shuts NVML down."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        raise NvmlUnavailable(f"NVML did not initialise: {e}") from e
    return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]


def _handle(index: int):
    import torch

    if torch.cuda.is_available():
        uuid = str(torch.cuda.get_device_properties(index).uuid).removeprefix("GPU-")
        return pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
    return pynvml.nvmlDeviceGetHandleByIndex(index)


def _field(handle, field_id: int) -> int:
    value = pynvml.nvmlDeviceGetFieldValues(handle, [field_id])[0]
    if value.nvmlReturn != pynvml.NVML_SUCCESS:
        raise pynvml.NVMLError(value.nvmlReturn)
    return value.value.uiVal


def _power_instant(h) -> dict:
    return {"power_w": _field(h, pynvml.NVML_FI_DEV_POWER_INSTANT) / 1e3}


def _power_average(h) -> dict:
    return {"power_w": pynvml.nvmlDeviceGetPowerUsage(h) / 1e3}


def _energy(h) -> dict:
    return {"energy_j": pynvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1e3}


def _memory(h) -> dict:
    return {"mem_used_gib": pynvml.nvmlDeviceGetMemoryInfo(h).used / GIB}


def _utilisation(h) -> dict:
    u = pynvml.nvmlDeviceGetUtilizationRates(h)
    return {"gpu_util": float(u.gpu), "mem_util": float(u.memory)}


def _clocks(h) -> dict:
    return {"sm_clock_mhz": float(pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)),
            "mem_clock_mhz": float(pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM))}


def _temperature(h) -> dict:
    return {"temp_c": float(pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU))}


def _reasons_event(h) -> dict:
    return {"throttle_reasons": ",".join(throttle.decode(pynvml.nvmlDeviceGetCurrentClocksEventReasons(h)))}


def _reasons_throttle(h) -> dict:  # drivers before the "clocks event" rename
    return {"throttle_reasons": ",".join(throttle.decode(pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(h)))}


# Per quantity, the readers to try in order: power and energy first, so that they sit closest to
# the tick's timestamp.
READERS: list[tuple[str, tuple[Callable[..., dict], ...]]] = [
    ("power", (_power_instant, _power_average)),
    ("energy", (_energy,)),
    ("memory", (_memory,)),
    ("utilisation", (_utilisation,)),
    ("clocks", (_clocks,)),
    ("temperature", (_temperature,)),
    ("throttle", (_reasons_event, _reasons_throttle)),
]
FIELDS = ["power_w", "energy_j", "mem_used_gib", "gpu_util", "mem_util", "sm_clock_mhz", "mem_clock_mhz",
          "temp_c", "throttle_reasons"]


def supported_readers(handle) -> dict[str, Callable[..., dict]]:
    """The first reader of each quantity that this GPU and driver answer; unsupported ones are absent."""
    found = {}
    for quantity, candidates in READERS:
        for reader in candidates:
            try:
                reader(handle)
            except pynvml.NVMLError:
                continue
            found[quantity] = reader
            break
    return found


def read_energy_j(handles: Sequence, readers: Sequence[dict]) -> float | None:
    """Sum of the energy counters of the GPUs, in J since the driver loaded; None without a counter."""
    if not handles or any("energy" not in r for r in readers):
        return None
    return sum(pynvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in handles) / 1e3


class NvmlSampler:
    """A daemon thread, from construction to stop(), that appends one row per GPU per tick;
    `drain()` hands them over."""

    def __init__(self, handles: Sequence, readers: Sequence[dict], period_s: float, clock: Callable[[], float]):
        self.handles, self.readers, self.period_s, self.clock = list(handles), list(readers), period_s, clock
        self._rows: list[dict] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nvml_sampler", daemon=True)
        self._thread.start()

    def _run(self):
        next_t = time.perf_counter()
        while not self._stop.wait(max(0.0, next_t - time.perf_counter())):
            self._tick()
            # a late tick is skipped, not made up with a burst: gaps show in power_valid
            next_t = max(next_t + self.period_s, time.perf_counter())

    def _tick(self):
        t = self.clock()
        rows = []
        for gpu, (handle, readers) in enumerate(zip(self.handles, self.readers)):
            row = dict.fromkeys(FIELDS)
            row.update(gpu=gpu, t_s=t)
            for reader in readers.values():
                try:
                    row.update(reader(handle))
                except pynvml.NVMLError:
                    pass  # that field stays null for this tick
            rows.append(row)
        with self._lock:
            self._rows.extend(rows)

    def drain(self) -> list[dict]:
        with self._lock:
            rows, self._rows = self._rows, []
        return rows

    def stop(self):
        self._stop.set()
        self._thread.join()


def gpu_facts(handles: Sequence, readers: Sequence[dict]) -> dict:
    """What env.json records of the GPUs: the used ones in detail, and the host's driver."""

    def get(fn, *args):
        try:
            return fn(*args)
        except pynvml.NVMLError:
            return None

    cuda = get(pynvml.nvmlSystemGetCudaDriverVersion_v2)
    gpus = []
    for h, readers_of in zip(handles, readers):
        mem = get(pynvml.nvmlDeviceGetMemoryInfo, h)
        cc = get(pynvml.nvmlDeviceGetCudaComputeCapability, h)
        limit = get(pynvml.nvmlDeviceGetEnforcedPowerLimit, h)
        power = readers_of.get("power")
        gpus.append({
            "name": get(pynvml.nvmlDeviceGetName, h),
            "uuid": get(pynvml.nvmlDeviceGetUUID, h),
            "pci_bus_id": get(lambda: pynvml.nvmlDeviceGetPciInfo(h).busId),
            "memory_gib": mem.total / GIB if mem else None,
            "compute_capability": f"{cc[0]}.{cc[1]}" if cc else None,
            "power_limit_w": limit / 1e3 if limit is not None else None,
            "sm_clock_mhz": get(pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM),
            "mem_clock_mhz": get(pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_MEM),
            "sm_clock_max_mhz": get(pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_SM),
            "mem_clock_max_mhz": get(pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_MEM),
            "persistence_mode": get(pynvml.nvmlDeviceGetPersistenceMode, h),
            "mig_mode": (get(pynvml.nvmlDeviceGetMigMode, h) or [None])[0],
            "ecc_mode": (get(pynvml.nvmlDeviceGetEccMode, h) or [None])[0],
            "temp_c": get(pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU),
            "power_field": {_power_instant: "instant", _power_average: "average"}.get(power),
            "energy_counter": "energy" in readers_of,
        })
    return {
        "nvml": "ok",
        "gpu_name": gpus[0]["name"] if gpus else None,
        "gpu_count": len(gpus),
        "gpu_count_host": get(pynvml.nvmlDeviceGetCount),
        "driver_version": get(pynvml.nvmlSystemGetDriverVersion),
        "cuda_driver_version": f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda else None,
        "gpus": gpus,
    }
