"""How close a measured point came to the hardware's limits.

mbu: bytes one decode step must read (weights touched + KV cache, ModelSpec.decode_step_bytes)
per measured step time, over peak bandwidth. mfu: the same with FLOPs over peak BF16 matrix
throughput; prefill_mfu for the prefill. bound: which of the two limits the decode step
meets first at its arithmetic intensity. The context of a decode step grows from context_len
to context_len + new_tokens - 1; the model is evaluated at the mean.
"""

from __future__ import annotations

from harness.analysis.hardware import gpu_peak
from harness.model.spec import ModelSpec

COLUMNS = ("decode_bytes_per_step", "decode_flops_per_step", "mbu", "mfu", "prefill_mfu", "bound")


def roofline(spec: ModelSpec, quant: str, batch: int, context: int, new_tokens: int,
             tpot_ms: float | None, ttft_ms: float | None, gpu_name: str | None) -> dict:
    """The roofline columns of one point; the utilisations are None without a measured time or a
    known GPU."""
    mean_context = context + (new_tokens - 1) / 2
    nbytes = spec.decode_step_bytes(batch, round(mean_context), quant)
    flops = spec.decode_step_flops(batch, round(mean_context))
    out = dict.fromkeys(COLUMNS)
    out.update(decode_bytes_per_step=float(nbytes), decode_flops_per_step=float(flops))
    peak = gpu_peak(gpu_name)
    if peak is None:
        return out
    out["bound"] = "compute" if flops / nbytes > peak.ridge_flops_per_byte else "memory"
    if tpot_ms:
        step_s = tpot_ms / 1e3
        out.update(mbu=nbytes / step_s / peak.mem_bw_bytes_s, mfu=flops / step_s / peak.bf16_flops)
    if ttft_ms:
        out["prefill_mfu"] = spec.prefill_flops(batch, context) / (ttft_ms / 1e3) / peak.bf16_flops
    return out
