"""The MoE block over dense bf16 experts (quant='bf16': the MXFP4 experts dequantised at load), the
same function as moe.moe with the same signature.

Rows are grouped by expert with the Triton routing kernels (routing.route) and the two expert GEMMs
are torch's grouped GEMM (torch._grouped_mm: CUTLASS on Hopper), which takes the group offsets
from device memory; SwiGLU, biases and the weighted combine are torch element-wise ops. Nothing
reads back to the host, so the decode step that calls it can be captured in a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.profiler import record_function

from backends.triton_mxfp4.routing import route, router_logits
from harness.model.spec import ModelSpec


@dataclass(frozen=True)
class DenseExperts:
    weight: torch.Tensor  # [E, N, K] bf16, rows as the checkpoint's blocks (gate_up: interleaved gate, up)
    bias: torch.Tensor  # [E, N] fp32


def prepare_dense_experts(weight: torch.Tensor, bias: torch.Tensor) -> DenseExperts:
    if weight.dim() != 3 or tuple(bias.shape) != tuple(weight.shape[:2]):
        raise ValueError(f"dense experts: weight {tuple(weight.shape)} and bias {tuple(bias.shape)} are not "
                         f"[E, N, K] and [E, N]")
    return DenseExperts(weight.to(torch.bfloat16).contiguous(), bias.float().contiguous())


def moe_dense(x: torch.Tensor, router_w: torch.Tensor, router_b: torch.Tensor, gate_up: DenseExperts,
              down: DenseExperts, spec: ModelSpec) -> torch.Tensor:
    """x [T, H] bf16 -> [T, H] bf16, the routing-weighted sum of the top-k experts' outputs."""
    T, H = x.shape
    k, limit, alpha = spec.num_experts_per_tok, spec.swiglu_limit, spec.swiglu_alpha
    with record_function("moe.router"):
        logits = router_logits(x, router_w, router_b)
    with record_function("moe.routing"):
        r = route(logits, k)
        order = r.order.long()
        token = order // k
        expert = r.ids.flatten().long()[order]  # the expert of each sorted row
        offsets = r.offsets[1:]
    with record_function("moe.w1_swiglu"):
        h = torch._grouped_mm(x[token], gate_up.weight.transpose(1, 2), offs=offsets).float() + gate_up.bias[expert]
        gate, up = h[:, 0::2].clamp(max=limit), h[:, 1::2].clamp(-limit, limit)
        a = (gate * torch.sigmoid(alpha * gate) * (up + 1)).to(x.dtype)
    with record_function("moe.w2_combine"):
        out = torch._grouped_mm(a, down.weight.transpose(1, 2), offs=offsets).float() + down.bias[expert]
        parts = torch.empty((T * k, H), device=x.device, dtype=torch.float32)
        parts[order] = out * r.weights.flatten()[order, None]  # back to (token, slot) order: a fixed sum order
        return parts.view(T, k, H).sum(1).to(x.dtype)
