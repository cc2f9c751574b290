"""The MoE block of GPT-OSS on MXFP4 experts: router, top-k routing, the two expert GEMMs, combine;
and its torch reference.

    y[t] = sum over the top-k experts e of t:  softmax(top-k logits)_e * (W2[e] swiglu(W1[e] x[t] + b1[e]) + b2[e])

Everything stays on the GPU with launch shapes fixed by the number of tokens, so a decode step can
be captured in a CUDA graph. The path is chosen from T and the spec alone:
  gemv     gate_up, down, combine after the router GEMM; one program per (token, slot) and column
           tile routes itself from the logits and runs on CUDA cores. An expert shared by two tokens
           is read twice, so this path is taken while the T*k expert reads it makes are at most
           GEMV_READ_FACTOR times the experts uniform routing touches (spec.unique_experts(T)):
           it streams that much faster than the grouped path (benchmarks/LOG.md, "MoE kernel");
  grouped  routing + grouping (2 launches), gate_up, down, combine on tensor cores: every touched
           expert is read once per row tile; tiles chosen by rows per expert.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from backends.triton_mxfp4 import moe_kernels as K
from backends.triton_mxfp4.routing import route, route_reference, router_logits
from harness.model.mxfp4 import BLOCK, dequantize
from harness.model.spec import ModelSpec

GEMV_READ_FACTOR = 1.6
# Tiles by regime (the fastest of those timed on an H100, LOG.md); .fit shrinks them for small matrices.
GEMV_GATE_UP = K.GemvTiles(bn=32, bk=256)
GEMV_DOWN = K.GemvTiles(bn=32, bk=512)
DECODE = K.Tiles(bm=16, bn=32, bk=256, swap=True)
PREFILL = K.Tiles(bm=128, bn=128, bk=64, swap=False, group_m=8, num_warps=4, num_stages=3)
PREFILL_MIN_ROWS_PER_EXPERT = 32


@dataclass(frozen=True)
class ExpertWeights:
    """One expert matrix stack as the kernels read it."""
    blocks: torch.Tensor  # [E, N, K/2] uint8: byte j of row n holds W[n, 2j] low nibble, W[n, 2j+1] high
    scales: torch.Tensor  # [E, N, K/32] uint8 E8M0 (bias 127), one per 32 inputs
    bias: torch.Tensor  # [E, N] fp32
    kind: str

    @property
    def n(self) -> int:
        return self.blocks.shape[1]

    @property
    def k(self) -> int:
        return self.blocks.shape[2] * 2


def prepare_experts(w_blocks: torch.Tensor, w_scales: torch.Tensor, bias: torch.Tensor, kind: str) -> ExpertWeights:
    """Checkpoint tensors (blocks [E, N, K/32, 16] u8, scales [E, N, K/32] u8, bias [E, N]) -> the
    kernels' layout: blocks flattened per row (a view when contiguous), bias in fp32."""
    if kind not in ("gate_up", "down"):
        raise ValueError(f"expert kind must be 'gate_up' or 'down', got {kind!r}")
    if w_blocks.dtype != torch.uint8 or w_scales.dtype != torch.uint8:
        raise TypeError(f"{kind}: MXFP4 blocks/scales must be uint8, got {w_blocks.dtype}/{w_scales.dtype}")
    if w_blocks.dim() != 4 or w_blocks.shape[-1] != BLOCK // 2 or w_blocks.shape[:-1] != w_scales.shape:
        raise ValueError(f"{kind}: blocks {tuple(w_blocks.shape)} and scales {tuple(w_scales.shape)} are not "
                         f"[E, N, K/32, 16] and [E, N, K/32]")
    E, N, G, _ = w_blocks.shape
    if tuple(bias.shape) != (E, N):
        raise ValueError(f"{kind}: bias {tuple(bias.shape)} does not match blocks rows ({E}, {N})")
    if kind == "gate_up" and N % 2:
        raise ValueError(f"gate_up: {N} rows are not (gate, up) pairs")
    return ExpertWeights(w_blocks.reshape(E, N, G * BLOCK // 2).contiguous(), w_scales.contiguous(),
                         bias.float().contiguous(), kind)


def moe(x: torch.Tensor, router_w: torch.Tensor, router_b: torch.Tensor, gate_up: ExpertWeights,
        down: ExpertWeights, spec: ModelSpec) -> torch.Tensor:
    """x [T, H] bf16 -> [T, H] bf16, the routing-weighted sum of the top-k experts' outputs."""
    T, H = x.shape
    if gate_up.k != H or down.n != H or down.k != gate_up.n // 2:
        raise ValueError(f"moe: x [T, {H}] does not chain gate_up [{gate_up.n}, {gate_up.k}] and "
                         f"down [{down.n}, {down.k}]")
    if x.stride(1) != 1:
        raise ValueError(f"moe: x rows must be contiguous, got strides {x.stride()}")
    with torch.profiler.record_function("moe.router"):
        logits = router_logits(x, router_w, router_b)
    if T * spec.num_experts_per_tok <= GEMV_READ_FACTOR * spec.unique_experts(T):
        with torch.profiler.record_function("moe.w1_swiglu"):
            h = K.gate_up_gemv(x, logits, gate_up, spec, GEMV_GATE_UP)
        with torch.profiler.record_function("moe.w2_combine"):
            return K.down_gemv(h, logits, down, spec, GEMV_DOWN, x.dtype)
    with torch.profiler.record_function("moe.routing"):
        routing = route(logits, spec.num_experts_per_tok)
    rows_per_expert = T * spec.num_experts_per_tok / gate_up.blocks.shape[0]
    tiles = PREFILL if rows_per_expert >= PREFILL_MIN_ROWS_PER_EXPERT else DECODE
    with torch.profiler.record_function("moe.w1_swiglu"):
        h = K.gate_up_grouped(x, routing, gate_up, spec, tiles)
    with torch.profiler.record_function("moe.w2_combine"):
        return K.down_grouped(h, routing, down, spec, tiles, x.dtype)


def moe_reference(x: torch.Tensor, router_w: torch.Tensor, router_b: torch.Tensor, gate_up: tuple, down: tuple,
                  spec: ModelSpec, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The same function in plain torch, experts dequantised in `dtype`; gate_up and down are the
    checkpoint's (blocks, scales, bias). Routing uses the same bf16 logits as moe()."""
    logits = F.linear(x, router_w, router_b)
    ids, weights = route_reference(logits, spec.num_experts_per_tok)
    y = torch.zeros(x.shape, device=x.device, dtype=dtype)
    limit, alpha = spec.swiglu_limit, spec.swiglu_alpha
    for e in ids.unique().tolist():
        tok, slot = (ids == e).nonzero(as_tuple=True)
        h = x[tok].to(dtype) @ dequantize(gate_up[0][e], gate_up[1][e], dtype).T + gate_up[2][e].to(dtype)
        g, u = h[:, 0::2].clamp(max=limit), h[:, 1::2].clamp(-limit, limit)
        out = (g * torch.sigmoid(alpha * g) * (u + 1)) @ dequantize(down[0][e], down[1][e], dtype).T
        y.index_add_(0, tok, weights[tok, slot, None].to(dtype) * (out + down[2][e].to(dtype)))
    return y
