"""The GPU's own ceilings, measured: what a copy and a dense matmul really reach on this card.

The denominators of `mbu`, `mfu` and `prefill_mfu` (harness.analysis.roofline) and of the figures
in benchmarks/ (bench_triton.py, bench_moe.py), so that "51% of the measured copy bandwidth" means
one thing everywhere. The datasheet peaks (harness.analysis.hardware) stay beside them, in columns
of their own.

  copy_bytes_s  bytes read + written per second by a 1 GiB device-to-device copy (a buffer 20x
                larger than any L2, so it streams from DRAM);
  bf16_flops    a dense 8192^3 bf16 matmul (cuBLAS, fp32 accumulation) on random data;
  fp8_flops     the same with torch._scaled_mm on e4m3 operands, where the GPU has FP8 (cc >= 8.9);
  fp4_flops     block-scaled FP4 (e2m1 x e2m1, one e8m0 scale per 32 values) through Triton's
                tl.dot_scaled, only on compute capability 10.x / 12.x (FP4 tensor cores); None
                elsewhere, and None with the reason in `fp4_kernel` where the build cannot compile it.

Every rate is the median of triton.testing.do_bench (warm-up first; it flushes L2 between calls)
over random, not zero, data: zeros let the tensor cores and the memory system take shortcuts
(power, compression) that real weights do not. The whole measurement takes ~5 s, so it is done
once per (GPU name, driver) and kept as JSON under <cache_dir>/calibration/.

Imports only torch, triton and the standard library (the benchmarks run it on GPU hosts without
the harness's other dependencies); without a CUDA device `calibrate` returns None and the
measuring functions raise NoGpu.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

COPY_BYTES = 1 << 30
MATMUL_N = 8192
WARMUP_MS, REP_MS = 50, 300


class NoGpu(RuntimeError):
    """Calibration needs a CUDA device."""


@dataclass(frozen=True)
class Ceilings:
    gpu_name: str
    compute_capability: str  # "9.0"
    driver: str | None  # NVIDIA driver version (NVML), None where NVML is absent
    copy_bytes_s: float  # read + written
    bf16_flops: float
    fp8_flops: float | None  # None: no FP8 tensor cores (cc < 8.9)
    fp4_flops: float | None  # None: no FP4 tensor cores, or the build cannot use them (see fp4_kernel)
    fp4_kernel: str | None  # what fp4_flops measured, or why it is None on an FP4 GPU
    measured_at: str  # UTC, ISO 8601

    @property
    def ridge_flops_per_byte(self) -> float:
        """Arithmetic intensity above which a kernel is compute-bound at the measured ceilings."""
        return self.bf16_flops / self.copy_bytes_s

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Ceilings:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})


def _cuda(device: torch.device | str | None = None) -> torch.device:
    if not torch.cuda.is_available():
        raise NoGpu("calibration measures a CUDA GPU; torch sees none (no driver, or a CPU-only torch build)")
    device = torch.device(device if device is not None else "cuda")
    if device.type != "cuda":
        raise NoGpu(f"calibration measures a CUDA GPU, got device {device}")
    return torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())


def _median_ms(fn) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=WARMUP_MS, rep=REP_MS, return_mode="median")


def copy_bandwidth(device: torch.device | str | None = None, nbytes: int = COPY_BYTES) -> float:
    """Bytes per second of a device-to-device copy of `nbytes` random bytes, read + write."""
    dev = _cuda(device)
    src = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    return 2 * nbytes / (_median_ms(lambda: dst.copy_(src)) * 1e-3)


def matmul_rate(device: torch.device | str | None = None, n: int = MATMUL_N) -> float:
    """bf16 FLOP/s of a dense n^3 product on random data."""
    dev = _cuda(device)
    a, b = (torch.randn(n, n, device=dev, dtype=torch.bfloat16) for _ in range(2))
    return 2 * n ** 3 / (_median_ms(lambda: a @ b) * 1e-3)


def fp8_rate(device: torch.device | str | None = None, n: int = MATMUL_N) -> float | None:
    """e4m3 FLOP/s of torch._scaled_mm at n^3 (bf16 output, per-tensor scales); None below cc 8.9."""
    dev = _cuda(device)
    if torch.cuda.get_device_capability(dev) < (8, 9):
        return None
    a = torch.randn(n, n, device=dev).to(torch.float8_e4m3fn)
    b = torch.randn(n, n, device=dev).to(torch.float8_e4m3fn).t()  # column-major, as _scaled_mm wants
    one = torch.ones((), device=dev)
    return 2 * n ** 3 / (_median_ms(lambda: torch._scaled_mm(a, b, one, one, out_dtype=torch.bfloat16)) * 1e-3)


def fp4_tensor_cores(capability: tuple[int, int]) -> bool:
    """Block-scaled FP4 MMA exists on Blackwell: datacenter (10.x) and workstation/consumer (12.x)."""
    return capability[0] in (10, 12)


def fp4_rate(device: torch.device | str | None = None, n: int = MATMUL_N) -> tuple[float | None, str | None]:
    """(FLOP/s, what was measured) of an e2m1 x e2m1 block-scaled matmul through tl.dot_scaled, or
    (None, why not). None without FP4 tensor cores; on an FP4 GPU whose Triton cannot compile the
    kernel, None with the compiler's message."""
    dev = _cuda(device)
    if not fp4_tensor_cores(torch.cuda.get_device_capability(dev)):
        return None, None
    from harness.analysis import fp4_matmul

    a, a_scale, b, b_scale = fp4_matmul.random_operands(n, n, n, dev)
    out = torch.empty(n, n, device=dev, dtype=torch.bfloat16)
    try:
        fp4_matmul.matmul(a, a_scale, b, b_scale, out)
        torch.cuda.synchronize(dev)
    except Exception as e:  # a Triton build without the target's block-scaled MMA: a finding, not a crash
        return None, f"tl.dot_scaled e2m1 x e2m1 did not run: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    ms = _median_ms(lambda: fp4_matmul.matmul(a, a_scale, b, b_scale, out))
    return 2 * n ** 3 / (ms * 1e-3), f"triton {fp4_matmul.triton_version()} tl.dot_scaled e2m1 x e2m1, {n}^3"


def driver_version() -> str | None:
    """The NVIDIA driver's version from NVML, None where NVML is absent."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            return str(pynvml.nvmlSystemGetDriverVersion())
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        return None


def measure(device: torch.device | str | None = None) -> Ceilings:
    """Measure every ceiling of `device` now (~5 s)."""
    dev = _cuda(device)
    props = torch.cuda.get_device_properties(dev)
    copy = copy_bandwidth(dev)
    bf16 = matmul_rate(dev)
    fp8 = fp8_rate(dev)
    fp4, fp4_kernel = fp4_rate(dev)
    torch.cuda.empty_cache()  # the operands are ~1 GiB each: give them back to whatever runs next
    return Ceilings(gpu_name=props.name, compute_capability=f"{props.major}.{props.minor}", driver=driver_version(),
                    copy_bytes_s=copy, bf16_flops=bf16, fp8_flops=fp8, fp4_flops=fp4, fp4_kernel=fp4_kernel,
                    measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def cache_path(cache_dir: str | Path, gpu_name: str, driver: str | None) -> Path:
    """<cache_dir>/calibration/<gpu>--driver-<version>.json"""
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", gpu_name).strip("-")
    return Path(cache_dir).expanduser() / "calibration" / f"{slug}--driver-{driver or 'unknown'}.json"


def calibrate(device: torch.device | str | None, cache_dir: str | Path, refresh: bool = False) -> Ceilings | None:
    """The ceilings of `device`: read from the cache when this GPU and driver were measured before
    (unless `refresh`), else measured and cached. None when `device` is not a CUDA GPU."""
    try:
        dev = _cuda(device)
    except NoGpu:
        return None
    path = cache_path(cache_dir, torch.cuda.get_device_name(dev), driver_version())
    if path.is_file() and not refresh:
        return Ceilings.from_dict(json.loads(path.read_text()))
    ceilings = measure(dev)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(ceilings.to_dict(), indent=1) + "\n")
    tmp.replace(path)  # whole or absent, even if two workers calibrate at once
    return ceilings
