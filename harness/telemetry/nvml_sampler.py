"""NVML: the GPUs a worker uses, their facts for env.json, and the sampling process.

Sampling runs in a process of its own (this file is its script), not in a thread of the worker,
so that it never holds the GIL of a worker whose engine launches kernels one by one from Python
(on an H100 NVML-on moved a triton_mxfp4 decode step by -0.4%: benchmarks/LOG.md). The process reads
every `period_s` (one tick: one timestamp for every GPU) power, the cumulative energy counter,
memory used, utilisation, SM and memory clocks, temperature and the clock-event mask. Timestamps
are time.perf_counter(), CLOCK_MONOTONIC on Linux: one clock for every process of the host, the
clock the worker's phase markers use.

Power: the driver's instantaneous field (NVML_FI_DEV_POWER_INSTANT) where it exists, else the
averaged nvmlDeviceGetPowerUsage. On an H100 both lag the load and repeat one value for hundreds
of ms while the energy counter moves, which is why phase energy comes from the counter
(harness.telemetry.energy) and sampled power only fills the gaps the counter cannot.

As the sampling process's script this module imports nothing beyond the standard library and
pynvml at its top.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from typing import Callable, Sequence

import pynvml

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
    return {"clock_event_mask": pynvml.nvmlDeviceGetCurrentClocksEventReasons(h)}


def _reasons_throttle(h) -> dict:  # drivers before the "clocks event" rename
    return {"clock_event_mask": pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(h)}


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
          "temp_c", "clock_event_mask"]


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
    """The sampling process of a worker, from construction to close(): it samples the given GPUs
    between start() and stop(), which returns the rows (one per GPU per tick), and idles otherwise."""

    def __init__(self, handles: Sequence, period_s: float):
        uuids = [pynvml.nvmlDeviceGetUUID(h) for h in handles]
        self.proc = subprocess.Popen([sys.executable, __file__, str(period_s), *uuids], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._expect("ready")

    def start(self):
        self._send("start")
        self._expect("started")

    def stop(self) -> list[dict]:
        self._send("stop")
        return json.loads(self._reply())

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()  # end of input ends the process
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _send(self, command: str):
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            self._died()

    def _reply(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            self._died()
        return line

    def _expect(self, word: str):
        line = self._reply().strip()
        if line != word:
            raise NvmlUnavailable(f"the NVML sampling process answered {line[:200]!r}, expected {word!r}")

    def _died(self):
        self.proc.kill()
        self.proc.wait()
        err = self.proc.stderr.read().strip().splitlines()
        raise NvmlUnavailable(f"the NVML sampling process exited with code {self.proc.returncode}: "
                              f"{err[-1] if err else 'no message'}")


def tick(handles: Sequence, readers: Sequence[dict]) -> list[dict]:
    t = time.perf_counter()
    rows = []
    for gpu, (handle, readers_of) in enumerate(zip(handles, readers)):
        row = dict.fromkeys(FIELDS)
        row.update(gpu=gpu, t_s=t)
        for reader in readers_of.values():
            try:
                row.update(reader(handle))
            except pynvml.NVMLError:
                pass  # that field stays null for this tick
        rows.append(row)
    return rows


def serve(uuids: Sequence[str], period_s: float):
    """The sampling process: commands `start` and `stop` on stdin, one line each, answered on
    stdout (`started`; the rows since start as one JSON line); end of input ends it."""
    pynvml.nvmlInit()
    handles = [pynvml.nvmlDeviceGetHandleByUUID(u) for u in uuids]
    readers = [supported_readers(h) for h in handles]
    rows: list[dict] = []
    sampling, next_t = False, 0.0
    print("ready", flush=True)
    while True:
        wait = max(0.0, next_t - time.perf_counter()) if sampling else None
        if select.select([sys.stdin], [], [], wait)[0]:
            command = sys.stdin.readline().strip()
            if command == "start":
                rows, sampling, next_t = [], True, time.perf_counter()
                print("started", flush=True)
            elif command == "stop":
                sampling = False
                print(json.dumps(rows), flush=True)
                rows = []
            else:  # end of input: the worker closed the pipe, or died
                break
            continue
        rows += tick(handles, readers)
        # a late tick is skipped, not made up with a burst: gaps show in power_valid
        next_t = max(next_t + period_s, time.perf_counter())
    pynvml.nvmlShutdown()


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


if __name__ == "__main__":
    serve(sys.argv[2:], float(sys.argv[1]))
