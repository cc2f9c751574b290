"""Prices and facility power per GPU: the yaml a buyer brings to `gptoss-report --procurement`.

Cost is a property of the GPU type, not of a benchmark run, so the file is keyed by the GPU
names of harness.analysis.hardware (a name NVML reports, e.g. "NVIDIA H200", is accepted too).
A price is one figure or a [low, high] range (public figures are ranges: hyperscaler to
neocloud); all_in_kw_per_gpu is the facility's power per GPU with host, network and cooling
overhead, the divisor of tokens per second per kW all-in. Every problem of a file is reported
on one line that names the key (harness/conf/prices.example.yaml is a complete file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.analysis.hardware import KNOWN_GPUS, gpu_peak
from harness.analysis.yaml_file import read_yaml


class PriceFileError(ValueError):
    """A price file that cannot be used; the message is one line naming the file and the key."""


@dataclass(frozen=True)
class GpuPrice:
    gpu: str  # harness.analysis.hardware name
    usd_per_gpu_hour_low: float
    usd_per_gpu_hour_high: float  # equal to low where the file gives one figure
    all_in_kw_per_gpu: float | None  # None: the file gives no facility power for this GPU


@dataclass(frozen=True)
class Prices:
    source: str
    by_gpu: dict[str, GpuPrice]

    def for_gpu(self, gpu_name: str | None) -> GpuPrice | None:
        """The price of a GPU named as NVML or the datasheet table names it; None if not listed."""
        peak = gpu_peak(gpu_name)
        return self.by_gpu.get(peak.name) if peak else None


GPU_KEYS = {"usd_per_gpu_hour", "all_in_kw_per_gpu"}


def _positive(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise PriceFileError(f"{where}: {value!r} is not a positive number")
    return float(value)


def _price(value, where: str) -> tuple[float, float]:
    if isinstance(value, list):
        if len(value) != 2:
            raise PriceFileError(f"{where}: a range is [low, high], got {len(value)} values")
        low, high = (_positive(v, where) for v in value)
        if low > high:
            raise PriceFileError(f"{where}: low {low} is above high {high}")
        return low, high
    price = _positive(value, where)
    return price, price


def parse_prices(data, name: str = "prices") -> Prices:
    """Validate the parsed yaml of a price file; PriceFileError names the first bad key."""
    if not isinstance(data, dict):
        raise PriceFileError(f"{name}: expected a mapping with keys 'source' and 'gpus'")
    unknown = set(data) - {"source", "gpus"}
    if unknown:
        raise PriceFileError(f"{name}: unknown key {sorted(unknown)[0]!r} (expected 'source' and 'gpus')")
    source = data.get("source")
    if not isinstance(source, str) or not source.strip():
        raise PriceFileError(f"{name}: source: say where the prices come from (a non-empty string)")
    gpus = data.get("gpus")
    if not isinstance(gpus, dict) or not gpus:
        raise PriceFileError(f"{name}: gpus: expected a mapping of GPU name -> {{usd_per_gpu_hour, all_in_kw_per_gpu}}")
    by_gpu: dict[str, GpuPrice] = {}
    for key, entry in gpus.items():
        where = f"{name}: gpus.{key}"
        peak = gpu_peak(str(key))
        if peak is None:
            raise PriceFileError(f"{where}: not a GPU of harness/analysis/hardware.py "
                                 f"(known: {', '.join(g.name for g in KNOWN_GPUS)})")
        if peak.name in by_gpu:
            raise PriceFileError(f"{where}: {peak.name} is priced twice")
        if not isinstance(entry, dict):
            raise PriceFileError(f"{where}: expected a mapping with usd_per_gpu_hour")
        unknown = set(entry) - GPU_KEYS
        if unknown:
            raise PriceFileError(f"{where}.{sorted(unknown)[0]}: unknown key (expected {sorted(GPU_KEYS)})")
        if "usd_per_gpu_hour" not in entry:
            raise PriceFileError(f"{where}.usd_per_gpu_hour: missing")
        low, high = _price(entry["usd_per_gpu_hour"], f"{where}.usd_per_gpu_hour")
        kw = entry.get("all_in_kw_per_gpu")
        by_gpu[peak.name] = GpuPrice(peak.name, low, high,
                                     None if kw is None else _positive(kw, f"{where}.all_in_kw_per_gpu"))
    return Prices(source.strip(), by_gpu)


def load_prices(path: str | Path) -> Prices:
    """Read and validate a price file; PriceFileError (one line) for a missing, unreadable or bad one."""
    return parse_prices(read_yaml(path, PriceFileError), str(path))
