"""Peak memory bandwidth and dense BF16 matrix throughput of the GPUs the harness knows.

Datasheet figures (boost clocks, no sparsity), the denominators of MBU and MFU. Measured
calibration (what a copy or a GEMM really reaches) comes later and will sit beside these, not
replace them. A GPU not listed gets null roofline columns, never a guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuPeak:
    name: str
    mem_bw_bytes_s: float  # peak DRAM bandwidth
    bf16_flops: float  # dense BF16 tensor-core FLOP/s with FP32 accumulation

    @property
    def ridge_flops_per_byte(self) -> float:
        """Arithmetic intensity above which a kernel is compute-bound on this GPU."""
        return self.bf16_flops / self.mem_bw_bytes_s


TB, TFLOP = 1e12, 1e12

# (pattern on the name CUDA/NVML reports, peak). First match wins, so variants come before the
# family name; \b keeps GH200/GB200 (other memory systems) from matching H200/B200. Sources: NVIDIA's product datasheets and architecture whitepapers.
PEAKS: list[tuple[str, GpuPeak]] = [
    # H100 datasheet (SXM5 80 GB: 3.35 TB/s HBM3, BF16 1,979 TFLOPS with sparsity -> 989.5 dense).
    (r"\bH100.*(SXM|HBM3)", GpuPeak("H100 SXM", 3.35 * TB, 989.5 * TFLOP)),
    # H100 datasheet (H100 NVL: 3.9 TB/s, BF16 1,671 TFLOPS with sparsity -> 835.5 dense).
    (r"\bH100 NVL", GpuPeak("H100 NVL", 3.9 * TB, 835.5 * TFLOP)),
    # H100 datasheet (PCIe 80 GB: 2.0 TB/s HBM2e, BF16 1,513 TFLOPS with sparsity -> 756.5 dense).
    (r"\bH100.*PCIe", GpuPeak("H100 PCIe", 2.0 * TB, 756.5 * TFLOP)),
    # H200 datasheet (NVL: 4.8 TB/s, BF16 1,671 TFLOPS with sparsity -> 835.5 dense).
    (r"\bH200 NVL", GpuPeak("H200 NVL", 4.8 * TB, 835.5 * TFLOP)),
    # H200 datasheet (SXM 141 GB: 4.8 TB/s HBM3e, BF16 1,979 TFLOPS with sparsity -> 989.5 dense).
    (r"\bH200", GpuPeak("H200 SXM", 4.8 * TB, 989.5 * TFLOP)),
    # HGX B200 datasheet (8 TB/s HBM3e per GPU; BF16 4.5 PFLOPS with sparsity -> 2.25 dense, 1,000 W).
    (r"\bB200", GpuPeak("B200", 8.0 * TB, 2250 * TFLOP)),
    # A100 datasheet (80 GB SXM: 2,039 GB/s; 80 GB PCIe: 1,935 GB/s; 40 GB: 1,555 GB/s; BF16 312 dense).
    (r"\bA100.*SXM.*80", GpuPeak("A100 SXM 80GB", 2.039 * TB, 312 * TFLOP)),
    (r"\bA100.*80", GpuPeak("A100 PCIe 80GB", 1.935 * TB, 312 * TFLOP)),
    (r"\bA100", GpuPeak("A100 40GB", 1.555 * TB, 312 * TFLOP)),
    # L40S datasheet (864 GB/s GDDR6; BF16 362.05 TFLOPS dense, 733 with sparsity).
    (r"L40S", GpuPeak("L40S", 0.864 * TB, 362.05 * TFLOP)),
    # RTX PRO 6000 Blackwell datasheet (1,792 GB/s GDDR7, 512-bit at 28 Gbps; BF16 with FP32
    # accumulate 503.8 TFLOPS dense, 1,007.6 with sparsity; Workstation and Server editions).
    (r"RTX PRO 6000 Blackwell", GpuPeak("RTX PRO 6000 Blackwell", 1.792 * TB, 503.8 * TFLOP)),
    # NVIDIA RTX Blackwell GPU architecture whitepaper, GeForce RTX 5090 (1,792 GB/s GDDR7; FP16/BF16
    # tensor with FP32 accumulate 209.5 TFLOPS dense: GeForce runs FP32 accumulation at half rate).
    (r"RTX 5090", GpuPeak("RTX 5090", 1.792 * TB, 209.5 * TFLOP)),
]


def gpu_peak(gpu_name: str | None) -> GpuPeak | None:
    """The peak figures for a reported GPU name (e.g. 'NVIDIA H100 80GB HBM3'), None if unknown."""
    if not gpu_name:
        return None
    for pattern, peak in PEAKS:
        if re.search(pattern, gpu_name, re.IGNORECASE):
            return peak
    return None
