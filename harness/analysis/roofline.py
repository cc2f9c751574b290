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

Per GPU: a point that spans GPUs (harness.config.Parallel) is measured against one GPU's ceilings,
with the bytes and FLOPs of its busiest GPU (`per_gpu`): DP gives each replica ceil(batch / dp)
sequences; TP splits the attention heads, the dense weights, the KV cache (up to one KV head per
GPU: beyond that vLLM replicates KV heads) and, without EP, every expert; with EP (ep = tp x dp)
each GPU holds num_experts / ep whole experts and computes the routed tokens of the whole batch
that land on them. decode_bytes_per_step and decode_flops_per_step are that GPU's share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness.analysis.calibration import Ceilings
from harness.analysis.hardware import gpu_peak
from harness.config import Parallel
from harness.model.spec import ModelSpec

COLUMNS = ("decode_bytes_per_step", "decode_flops_per_step", "mbu", "mfu", "prefill_mfu", "mbu_datasheet",
           "mfu_datasheet", "prefill_mfu_datasheet", "bound")


@dataclass(frozen=True)
class StepCost:
    """What one GPU of a layout reads and computes."""
    decode_bytes: float  # one decode step
    decode_flops: float
    prefill_flops: float  # the whole prefill


def per_gpu(spec: ModelSpec, quant: str, batch: int, context: int, decode_context: int,
            parallel: Parallel | None = None) -> StepCost:
    """The busiest GPU's share of a decode step at `decode_context` and of the prefill of `context`
    tokens (the module docstring says how a layout splits them); one GPU: the whole step."""
    p = parallel or Parallel()
    local = math.ceil(batch / p.dp)  # sequences of the busiest replica
    L, k = spec.num_hidden_layers, spec.num_experts_per_tok
    kv_split = min(p.tp, spec.num_key_value_heads)
    expert_flops_per_token = 2 * L * k * (spec.expert_weights + spec.expert_biases)

    step_bytes = spec.decode_step_bytes(local, decode_context, quant)
    experts_bytes = L * spec.unique_experts(local) * spec.expert_bytes(quant)
    kv_bytes = spec.kv_cache_bytes(local, decode_context)
    dense_bytes = step_bytes - experts_bytes - kv_bytes
    if p.ep > 1:  # each GPU: its num_experts / ep experts, as many of them as the whole batch touches
        experts_bytes = L * spec.unique_experts(batch) / p.ep * spec.expert_bytes(quant)
    else:
        experts_bytes /= p.tp

    def split(total: float, tokens: int) -> float:
        """FLOPs of `tokens` per replica: dense and attention TP-split, experts TP- or EP-split."""
        local_experts = expert_flops_per_token * tokens
        dense = total - local_experts
        experts = expert_flops_per_token * tokens * p.dp / p.ep if p.ep > 1 else local_experts / p.tp
        return dense / p.tp + experts

    return StepCost(dense_bytes / p.tp + kv_bytes / kv_split + experts_bytes,
                    split(spec.decode_step_flops(local, decode_context), local),
                    split(spec.prefill_flops(local, context), local * context))


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
             ceilings: Ceilings | None = None, parallel: Parallel | None = None) -> dict:
    """The roofline columns of one point (COLUMNS), per GPU of its layout; the utilisations are
    None without a measured time, the measured ones without `ceilings` (one GPU's), the datasheet
    ones for a GPU the table lacks."""
    mean_context = context + (new_tokens - 1) / 2
    cost = per_gpu(spec, quant, batch, context, round(mean_context), parallel)
    nbytes, flops, prefill_flops = cost.decode_bytes, cost.decode_flops, cost.prefill_flops
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
