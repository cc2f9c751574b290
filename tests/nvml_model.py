"""A model of what NVML reports on an H100, for tests without a GPU: a true power draw, an energy
counter that integrates it but is updated only every `counter_period_s`, and a power field that
shows the draw `lag_s` late and repeats each value for `hold_s`.

`fakes` turns a `Gpu` into the pynvml calls the harness makes; the test process patches them in,
and the sampling process gets them through stand_ins/modelled_nvml (its `pynvml`), which reads the
same model from the environment (`environment`): both see one GPU on one clock.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np

ENV = "GPTOSS_MODELLED_NVML"
STAND_IN = Path(__file__).resolve().parent / "stand_ins" / "modelled_nvml"


@dataclass
class Gpu:
    segments: list[tuple[float, float, int]]  # (start s, watts, clock-event mask) from there on
    counter_period_s: float = 0.1
    lag_s: float = 0.3
    hold_s: float = 0.1
    mem_gib: float = 14.0

    def _segment(self, t):
        return self.segments[max(0, np.searchsorted([s[0] for s in self.segments], t, side="right") - 1)]

    def power(self, t):
        return self._segment(t)[1]

    def energy(self, t):  # J, the exact integral from 0
        total, starts = 0.0, [s[0] for s in self.segments] + [math.inf]
        for (t0, w, _), t1 in zip(self.segments, starts[1:]):
            total += w * max(0.0, min(t, t1) - t0)
        return total

    def counter(self, t):
        return self.energy(math.floor(t / self.counter_period_s) * self.counter_period_s)

    def power_field(self, t):
        return self.power(math.floor(max(0.0, t - self.lag_s) / self.hold_s) * self.hold_s)

    def reasons(self, t):
        return self._segment(t)[2]


def fakes(nvml, gpu: Gpu, t0: float, instant: bool = True) -> dict:
    """pynvml functions (of the module `nvml`) that answer from `gpu`, time 0 at perf_counter t0."""

    def now():
        return time.perf_counter() - t0

    def field_values(h, ids):
        if not instant:
            raise nvml.NVMLError(nvml.NVML_ERROR_NOT_SUPPORTED)
        return [NS(nvmlReturn=nvml.NVML_SUCCESS, value=NS(uiVal=int(gpu.power_field(now()) * 1e3)))]

    return {
        "nvmlInit": lambda: None, "nvmlShutdown": lambda: None, "nvmlDeviceGetCount": lambda: 1,
        "nvmlDeviceGetHandleByIndex": lambda i: f"gpu{i}",
        "nvmlDeviceGetHandleByUUID": lambda u: u.removeprefix("GPU-modelled-"),
        "nvmlDeviceGetUUID": lambda h: f"GPU-modelled-{h}",
        "nvmlDeviceGetFieldValues": field_values,
        "nvmlDeviceGetPowerUsage": lambda h: int(gpu.power_field(now()) * 1e3),
        "nvmlDeviceGetTotalEnergyConsumption": lambda h: int(gpu.counter(now()) * 1e3),
        "nvmlDeviceGetMemoryInfo": lambda h: NS(used=int(gpu.mem_gib * 2**30), total=80 * 2**30),
        "nvmlDeviceGetUtilizationRates": lambda h: NS(gpu=97, memory=60),
        "nvmlDeviceGetClockInfo": lambda h, c: 1980 if c == nvml.NVML_CLOCK_SM else 2619,
        "nvmlDeviceGetTemperature": lambda h, s: 51,
        "nvmlDeviceGetCurrentClocksEventReasons": lambda h: gpu.reasons(now()),
        "nvmlDeviceGetName": lambda h: "NVIDIA H100 80GB HBM3",
        "nvmlSystemGetDriverVersion": lambda: "580.82",
        "nvmlSystemGetCudaDriverVersion_v2": lambda: 13000,
    }


def environment(gpu: Gpu, t0: float, instant: bool) -> str:
    return json.dumps({"gpu": dataclasses.asdict(gpu), "t0": t0, "instant": instant})


def from_environment(text: str) -> tuple[Gpu, float, bool]:
    cfg = json.loads(text)
    return Gpu(**cfg["gpu"]), cfg["t0"], cfg["instant"]
