"""How close a measured point came to the hardware's limits.

mbu: bytes one decode step must read (weights touched + KV cache, ModelSpec.decode_step_bytes)
per measured step time, over the GPU's measured copy bandwidth (harness.analysis.calibration:
bytes read + written by a large device-to-device copy, the figure benchmarks/ divide by). mfu: the
same with FLOPs over the measured dense bf16 matmul rate; prefill_mfu for the prefill. Without a
calibration (a CPU run, an engine in another interpreter that did not measure) these are null.
mbu_datasheet, mfu_datasheet, prefill_mfu_datasheet divide by the datasheet peaks instead
(harness.analysis.hardware; null for a GPU it does not list). bound: which of the two limits the
decode step meets first at its arithmetic intensity, at the measured ridge where there is one, else
the datasheet's. The context of a decode step grows from context_len to context_len + new_tokens
- 1; the model is evaluated at the mean.
"""

from __future__ import annotations

from harness.analysis.calibration import Ceilings
from harness.analysis.hardware import gpu_peak
from harness.model.spec import ModelSpec

COLUMNS = ("decode_bytes_per_step", "decode_flops_per_step", "mbu", "mfu", "prefill_mfu", "mbu_datasheet",
           "mfu_datasheet", "prefill_mfu_datasheet", "bound")


def _utilisation(nbytes: float, flops: float, prefill_flops: float, tpot_ms: float | None, ttft_ms: float | None,
                 bandwidth: float, matmul: float) -> tuple[float | None, float | None, float | None]:
    """(mbu, mfu, prefill_mfu) against one pair of ceilings; None where the time is missing."""
    mbu = mfu = prefill = None
    if tpot_ms:
        step_s = tpot_ms / 1e3
        mbu, mfu = nbytes / step_s / bandwidth, flops / step_s / matmul
    if ttft_ms:
        prefill = prefill_flops / (ttft_ms / 1e3) / matmul
    return mbu, mfu, prefill


def roofline(spec: ModelSpec, quant: str, batch: int, context: int, new_tokens: int,
             tpot_ms: float | None, ttft_ms: float | None, gpu_name: str | None,
             ceilings: Ceilings | None = None) -> dict:
    """The roofline columns of one point (COLUMNS); the utilisations are None without a measured
    time, the measured ones without `ceilings`, the datasheet ones for a GPU the table lacks."""
    mean_context = context + (new_tokens - 1) / 2
    nbytes = spec.decode_step_bytes(batch, round(mean_context), quant)
    flops = spec.decode_step_flops(batch, round(mean_context))
    prefill_flops = spec.prefill_flops(batch, context)
    out = dict.fromkeys(COLUMNS)
    out.update(decode_bytes_per_step=float(nbytes), decode_flops_per_step=float(flops))
    ridge = None
    peak = gpu_peak(gpu_name)
    if peak is not None:
        ridge = peak.ridge_flops_per_byte
        out["mbu_datasheet"], out["mfu_datasheet"], out["prefill_mfu_datasheet"] = _utilisation(
            nbytes, flops, prefill_flops, tpot_ms, ttft_ms, peak.mem_bw_bytes_s, peak.bf16_flops)
    if ceilings is not None:
        ridge = ceilings.ridge_flops_per_byte
        out["mbu"], out["mfu"], out["prefill_mfu"] = _utilisation(
            nbytes, flops, prefill_flops, tpot_ms, ttft_ms, ceilings.copy_bytes_s, ceilings.bf16_flops)
    if ridge is not None:
        out["bound"] = "compute" if flops / nbytes > ridge else "memory"
    return out
