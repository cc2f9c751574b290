"""Several modelled GPUs (tests/nvml_model.py's `Gpu`, one per device) behind one fake NVML: each
handle answers from its own GPU. The test process patches `fakes` in; the sampling process gets
them through stand_ins/modelled_nvml (its `pynvml`), which reads the GPUs from the environment.
"""

from __future__ import annotations

import dataclasses
import json

import nvml_model
from nvml_model import Gpu

ENV = "GPTOSS_MODELLED_NVML_GPUS"
STAND_IN = nvml_model.STAND_IN  # the same `pynvml`: it takes the GPUs of ENV when that is set
SHARED = {"nvmlInit", "nvmlShutdown", "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetHandleByUUID"}


def fakes(nvml, gpus: list[Gpu], t0: float, instant: bool = True) -> dict:
    """pynvml functions answering from gpus[i] for handle f"gpu{i}" (nvml_model's handle names)."""
    per_gpu = [nvml_model.fakes(nvml, g, t0, instant) for g in gpus]
    out = {name: fn for name, fn in per_gpu[0].items() if not name.startswith("nvmlDevice") or name in SHARED}

    def dispatch(name):
        return lambda h, *args: per_gpu[int(h.removeprefix("gpu"))][name](h, *args)

    out.update({name: dispatch(name) for name in per_gpu[0] if name not in out})
    out["nvmlDeviceGetCount"] = lambda: len(gpus)
    return out


def environment(gpus: list[Gpu], t0: float, instant: bool) -> str:
    return json.dumps({"gpus": [dataclasses.asdict(g) for g in gpus], "t0": t0, "instant": instant})


def from_environment(text: str) -> tuple[list[Gpu], float, bool]:
    cfg = json.loads(text)
    return [Gpu(**g) for g in cfg["gpus"]], cfg["t0"], cfg["instant"]
