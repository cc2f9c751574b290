"""Datasheet figures of the GPUs the harness knows, and of those a buyer compares.

Peak memory bandwidth and dense tensor-core rates (boost clocks, no sparsity) are the
denominators of MBU and MFU and the basis of the procurement projections for GPUs nobody
measured here; memory, TDP and compute capability say what fits, what it may draw and which
engine kernels exist for it. Measured calibration (what a copy or a GEMM really reaches) sits
beside these, never in place of them. A GPU not listed gets null roofline columns, never a guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuPeak:
    name: str
    mem_bw_bytes_s: float  # peak DRAM bandwidth
    bf16_flops: float  # dense BF16 tensor-core FLOP/s with FP32 accumulation
    compute_capability: str  # CUDA's "major.minor", e.g. "9.0": which kernels an engine has for it
    # Capacity as the datasheet states it. HBM and GDDR parts are sized in binary units (an H100
    # "80 GB" shows 79.6 GiB to NVML), so the figure is taken as GiB.
    memory_gib: float
    tdp_w: float  # maximum board/module power of the datasheet (the highest configurable value)
    fp8_flops: float | None  # dense FP8 tensor-core FLOP/s; None where the GPU has no FP8 tensor cores
    fp4_flops: float | None  # dense block-scaled FP4 tensor-core FLOP/s; None before Blackwell

    @property
    def ridge_flops_per_byte(self) -> float:
        """Arithmetic intensity above which a kernel is compute-bound on this GPU."""
        return self.bf16_flops / self.mem_bw_bytes_s

    @property
    def fp4_tensor_cores(self) -> bool:
        """Whether MXFP4 experts can be multiplied in FP4 rather than dequantised to BF16/FP8."""
        return self.fp4_flops is not None


TB, TFLOP = 1e12, 1e12

# (pattern on the name CUDA/NVML reports, peak). First match wins, so variants come before the
# family name; \b keeps GH200/GB200 from matching H200/B200 (the G glues to the word). Dense rates
# are the datasheet's sparse figure / 2 where the datasheet gives only that (said on the line).
PEAKS: list[tuple[str, GpuPeak]] = [
    # H100 datasheet (SXM5 80 GB: 3.35 TB/s HBM3; BF16 1,979 / FP8 3,958 TFLOPS sparse -> /2; 700 W).
    (r"\bH100.*(SXM|HBM3)", GpuPeak("H100 SXM", 3.35 * TB, 989.5 * TFLOP, "9.0", 80, 700, 1979 * TFLOP, None)),
    # H100 datasheet (NVL 94 GB: 3.9 TB/s; BF16 1,671 / FP8 3,341 TFLOPS sparse -> /2; 350-400 W).
    (r"\bH100 NVL", GpuPeak("H100 NVL", 3.9 * TB, 835.5 * TFLOP, "9.0", 94, 400, 1670.5 * TFLOP, None)),
    # H100 datasheet (PCIe 80 GB: 2.0 TB/s HBM2e; BF16 1,513 / FP8 3,026 TFLOPS sparse -> /2; 300-350 W).
    (r"\bH100.*PCIe", GpuPeak("H100 PCIe", 2.0 * TB, 756.5 * TFLOP, "9.0", 80, 350, 1513 * TFLOP, None)),
    # H200 datasheet (NVL 141 GB: 4.8 TB/s; BF16 1,671 / FP8 3,341 TFLOPS sparse -> /2; up to 600 W).
    (r"\bH200 NVL", GpuPeak("H200 NVL", 4.8 * TB, 835.5 * TFLOP, "9.0", 141, 600, 1670.5 * TFLOP, None)),
    # H200 datasheet (SXM 141 GB: 4.8 TB/s HBM3e; BF16 1,979 / FP8 3,958 TFLOPS sparse -> /2; up to 700 W).
    (r"\bH200", GpuPeak("H200 SXM", 4.8 * TB, 989.5 * TFLOP, "9.0", 141, 700, 1979 * TFLOP, None)),
    # GB200 NVL72 spec table, per GPU (/72): FP4 1,440 / FP8 720 / BF16 360 PFLOPS sparse -> /72 /2;
    # HBM3e 13.4 TB and 576 TB/s -> 186 GB and 8 TB/s; 1,200 W per GPU (per-GPU TDP as NVIDIA's
    # Blackwell Ultra blog tabulates it).
    (r"GB200", GpuPeak("GB200 (per GPU)", 8.0 * TB, 2500 * TFLOP, "10.0", 186, 1200, 5000 * TFLOP, 10000 * TFLOP)),
    # HGX B200 datasheet (1.44 TB and 64 TB/s for 8 GPUs -> 180 GB, 8 TB/s; FP4 18 / FP8 9 / BF16 4.5
    # PFLOPS sparse per GPU -> /2; 1,000 W).
    (r"\bB200", GpuPeak("B200", 8.0 * TB, 2250 * TFLOP, "10.0", 180, 1000, 4500 * TFLOP, 9000 * TFLOP)),
    # HGX B300 (Blackwell Ultra) spec table, per GPU: FP4 dense 105 PFLOPS / 8 = 13.1 (the dense FP4
    # rate is no longer sparse / 2 on Blackwell Ultra); FP8 4.5 and BF16 2.25 dense as B200; 2.1 TB
    # for 8 GPUs -> 270 GB usable of the 288 GB stacks; 8 TB/s; 1,100 W (HGX; GB300 runs 1,400 W).
    (r"\bB300", GpuPeak("B300", 8.0 * TB, 2250 * TFLOP, "10.3", 270, 1100, 4500 * TFLOP, 13125 * TFLOP)),
    # A100 datasheet (80 GB SXM: 2,039 GB/s, 400 W; 80 GB PCIe: 1,935 GB/s, 300 W; 40 GB PCIe:
    # 1,555 GB/s, 250 W; 40 GB SXM: 1,555 GB/s, 400 W; BF16 312 dense; no FP8 or FP4 tensor cores).
    (r"\bA100.*SXM.*80", GpuPeak("A100 SXM 80GB", 2.039 * TB, 312 * TFLOP, "8.0", 80, 400, None, None)),
    (r"\bA100.*80", GpuPeak("A100 PCIe 80GB", 1.935 * TB, 312 * TFLOP, "8.0", 80, 300, None, None)),
    (r"\bA100.*PCIE", GpuPeak("A100 PCIe 40GB", 1.555 * TB, 312 * TFLOP, "8.0", 40, 250, None, None)),
    (r"\bA100", GpuPeak("A100 SXM 40GB", 1.555 * TB, 312 * TFLOP, "8.0", 40, 400, None, None)),
    # L40S datasheet (48 GB GDDR6, 864 GB/s; BF16 362.05 dense, 733 sparse; FP8 1,466 sparse -> 733
    # dense; 350 W; Ada has FP8 but no FP4 tensor cores).
    (r"L40S", GpuPeak("L40S", 0.864 * TB, 362.05 * TFLOP, "8.9", 48, 350, 733 * TFLOP, None)),
    # RTX PRO 6000 Blackwell datasheet and RTX Blackwell whitepaper (96 GB GDDR7, 1,792 GB/s; BF16
    # with FP32 accumulate 503.8 dense; FP8 1,007.6 and FP4 2,015.2 dense = 2x and 4x that, the
    # "4,000 AI TOPS" headline being FP4 sparse; Workstation and Server editions, 600 W). The
    # Max-Q edition (300 W) runs lower clocks and is left out rather than given these rates.
    (r"RTX PRO 6000 Blackwell(?!.*Max-Q)",
     GpuPeak("RTX PRO 6000 Blackwell", 1.792 * TB, 503.8 * TFLOP, "12.0", 96, 600, 1007.6 * TFLOP, 2015.2 * TFLOP)),
    # RTX Blackwell whitepaper, GeForce RTX 5090 (32 GB GDDR7, 1,792 GB/s; FP16/BF16 tensor with FP32
    # accumulate 209.5 dense and FP8 with FP32 accumulate 419 dense: GeForce runs FP32 accumulation
    # at half rate; FP4 1,676 dense = the "3,352 AI TOPS" sparse headline / 2; 575 W).
    (r"RTX 5090", GpuPeak("RTX 5090", 1.792 * TB, 209.5 * TFLOP, "12.0", 32, 575, 419 * TFLOP, 1676 * TFLOP)),
]

# Every GPU of the table once, in table order: the candidates a procurement projection ranks.
KNOWN_GPUS: tuple[GpuPeak, ...] = tuple(peak for _, peak in PEAKS)


def gpu_peak(gpu_name: str | None) -> GpuPeak | None:
    """The peak figures for a reported GPU name (e.g. 'NVIDIA H100 80GB HBM3') or a table name
    (e.g. 'B200'), None if unknown."""
    if not isinstance(gpu_name, str) or not gpu_name:  # None, or a missing value of a pandas column
        return None
    for peak in KNOWN_GPUS:
        if peak.name == gpu_name:
            return peak
    for pattern, peak in PEAKS:
        if re.search(pattern, gpu_name, re.IGNORECASE):
            return peak
    return None
