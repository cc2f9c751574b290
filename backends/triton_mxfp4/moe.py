"""The MoE block of GPT-OSS on MXFP4 experts: router, top-k routing, the two expert GEMMs, combine;
and its torch reference.

    y[t] = sum over the top-k experts e of t:  softmax(top-k logits)_e * (W2[e] swiglu(W1[e] x[t] + b1[e]) + b2[e])

Everything stays on the GPU with launch shapes fixed by the number of tokens, so a decode step can
be captured in a CUDA graph. The path is chosen from T and the spec alone:
  gemv     gate_up, down, combine after the router GEMM; one program per (token, slot) and column
           tile (and K range, down's split-K) routes itself from the logits and runs on CUDA cores,
           its tiles chosen by GPU architecture (gemv_tiles). An expert shared by two tokens
           is read twice, so this path is taken while the T*k expert reads it makes are at most
           GEMV_READ_FACTOR times the experts uniform routing touches (spec.unique_experts(T)):
           it streams that much faster than the grouped path (benchmarks/LOG.md, "MoE kernel");
  grouped  routing + grouping (2 launches), gate_up, down, combine on tensor cores: every touched
           expert is read once per row tile; tiles chosen by rows per expert.

quant=mxfp4_mxfp8 (x_mx given): the grouped path multiplies MXFP8 activations (x_mx, quantised by
the caller's add_rmsnorm epilogue; h, quantised in gate_up's epilogue) with the MXFP4 experts by
tl.dot_scaled e4m3 x e2m1: block-scaled MMA on sm_100 (tcgen05.mma kind::mxf8f6f4), e4m3 x e4m3
mma.sync kind::mxf8f6f4 on sm_120 (weights widened in registers, moe_kernels.E2M1_AS_E4M3_MAJORS),
upcast to bf16 MMA on Hopper. The gemv path keeps bf16 activations: it runs one activation row at a
time on CUDA cores, where no MMA (block-scaled or not) applies and the time goes to streaming and
decoding the weights (LOG.md, "MoE kernel"); 8-bit activations would save H bytes per token against
megabytes of experts and add a quantise step. So below the gemv threshold mxfp4_mxfp8 computes what
mxfp4 computes, bit for bit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from backends.triton_mxfp4 import moe_kernels as K
from backends.triton_mxfp4 import mxfp8
from backends.triton_mxfp4.mxfp8 import MxTensor
from backends.triton_mxfp4.routing import Routing, route, route_reference, router_logits
from harness.model.mxfp4 import BLOCK, dequantize
from harness.model.spec import ModelSpec

GEMV_READ_FACTOR = 1.6


@dataclass(frozen=True)
class GemvTilesPair:
    """The gemv path's tiles for one GPU architecture."""
    gate_up: K.GemvTiles
    down: K.GemvTiles


# Tiles by regime; .fit shrinks them for small matrices. The gemv's by CUDA capability major
# (bench_moe.py --gemv-grid times the variants; a new architecture is one more entry), others
# everywhere: the fastest of those timed on an H100 (LOG.md). sm_90: the H200 grid's fastest over
# T = 1-8 (gate_up 16x512 on 2 warps is 3-9% faster than 32x256 on 4 at every T for 20b; split-K
# pays for down only at T = 1, and costs at T >= 2).
GEMV_DEFAULT = GemvTilesPair(gate_up=K.GemvTiles(bn=32, bk=256),
                             down=K.GemvTiles(bn=32, bk=512))
GEMV_BY_MAJOR = {9: GemvTilesPair(gate_up=K.GemvTiles(bn=16, bk=512, num_warps=2),
                                  down=K.GemvTiles(bn=32, bk=512))}
DECODE = K.Tiles(bm=16, bn=32, bk=256, swap=True)
# MXFP8 h is quantised in gate_up's epilogue: its column tiles must hold whole 32-groups of h (bn >= 64).
# bn 128 puts 128 weight rows on the MMA's M side, the least that sm_100's block-scaled tcgen05.mma
# takes (at bn 64 Triton upcasts there; benchmarks/fp4_codegen.py). down's 2880 rows fit bn 64 only.
DECODE_MX = K.Tiles(bm=16, bn=128, bk=256, swap=True)
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


def gemv_tiles_for(major: int) -> GemvTilesPair:
    """The gemv tiles for GPUs of CUDA capability `major` (GEMV_DEFAULT for one not in the table)."""
    return GEMV_BY_MAJOR.get(major, GEMV_DEFAULT)


@functools.cache
def _gemv_tiles_on(index: int) -> GemvTilesPair:
    return gemv_tiles_for(torch.cuda.get_device_capability(index)[0])


def gemv_tiles(device: torch.device) -> GemvTilesPair:
    """The gemv tiles for this device, looked up once per CUDA device (GEMV_DEFAULT off CUDA: the
    interpreter)."""
    if device.type != "cuda":
        return GEMV_DEFAULT
    return _gemv_tiles_on(torch.cuda.current_device() if device.index is None else device.index)


def uses_gemv(tokens: int, spec: ModelSpec) -> bool:
    """Whether moe() takes the gemv path at this many tokens."""
    return tokens * spec.num_experts_per_tok <= GEMV_READ_FACTOR * spec.unique_experts(tokens)


def moe(x: torch.Tensor, router_w: torch.Tensor, router_b: torch.Tensor, gate_up: ExpertWeights,
        down: ExpertWeights, spec: ModelSpec, x_mx: MxTensor | None = None, experts: slice | None = None,
        reduce=None) -> torch.Tensor:
    """x [T, H] bf16 -> [T, H] bf16, the routing-weighted sum of the top-k experts' outputs.
    x_mx: x in MXFP8 for the grouped path's GEMMs (mxfp4_mxfp8); the router and gemv read x.
    experts, reduce: expert parallel (parallel.py): gate_up and down hold experts[experts] only;
    every token is routed over all experts, the grouped kernels run the rows of this slice, and
    `reduce` sums the (token, slot) rows over the ranks before the combine (down_grouped). The gemv
    path, which indexes the experts by global id inside the kernel, is not taken then."""
    T, H = x.shape
    if gate_up.k != H or down.n != H or down.k != gate_up.n // 2:
        raise ValueError(f"moe: x [T, {H}] does not chain gate_up [{gate_up.n}, {gate_up.k}] and "
                         f"down [{down.n}, {down.k}]")
    if x.stride(1) != 1:
        raise ValueError(f"moe: x rows must be contiguous, got strides {x.stride()}")
    with torch.profiler.record_function("moe.router"):
        logits = router_logits(x, router_w, router_b)
    if experts is None and uses_gemv(T, spec):
        tiles = gemv_tiles(x.device)
        with torch.profiler.record_function("moe.w1_swiglu"):
            h = K.gate_up_gemv(x, logits, gate_up, spec, tiles.gate_up)
        with torch.profiler.record_function("moe.w2_combine"):
            return K.down_gemv(h, logits, down, spec, tiles.down, x.dtype)
    with torch.profiler.record_function("moe.routing"):
        routing = route(logits, spec.num_experts_per_tok)
        if experts is not None:
            # The kernels number experts from 0 and find expert e's sorted rows at offsets[e]: a slice
            # of the offsets makes this rank's first expert their 0 and leaves the rows where they are.
            routing = Routing(routing.ids, routing.weights, routing.offsets[experts.start:experts.stop + 1],
                              routing.order)
    # Rows per expert of all the model's experts (spec's count, not gate_up's): under expert
    # parallel every rank then picks the tiles of the one-process engine.
    rows_per_expert = T * spec.num_experts_per_tok / spec.num_local_experts
    tiles = PREFILL if rows_per_expert >= PREFILL_MIN_ROWS_PER_EXPERT else DECODE if x_mx is None else DECODE_MX
    with torch.profiler.record_function("moe.w1_swiglu"):
        h = K.gate_up_grouped(x if x_mx is None else x_mx, routing, gate_up, spec, tiles)
    with torch.profiler.record_function("moe.w2_combine"):
        return K.down_grouped(h, routing, down, spec, tiles, x.dtype, reduce)


def moe_reference(x: torch.Tensor, router_w: torch.Tensor, router_b: torch.Tensor, gate_up: tuple, down: tuple,
                  spec: ModelSpec, dtype: torch.dtype = torch.float32, mxfp8_activations: bool = False) -> torch.Tensor:
    """The same function in plain torch, experts dequantised in `dtype`; gate_up and down are the
    checkpoint's (blocks, scales, bias). Routing uses the same bf16 logits as moe().
    mxfp8_activations: both GEMMs' inputs pass through MXFP8 first (the grouped path of mxfp4_mxfp8)."""
    act = (lambda a: mxfp8.dequantize(mxfp8.quantize_reference(a)).to(dtype)) if mxfp8_activations else \
        (lambda a: a.to(dtype))
    logits = F.linear(x, router_w, router_b)
    ids, weights = route_reference(logits, spec.num_experts_per_tok)
    y = torch.zeros(x.shape, device=x.device, dtype=dtype)
    limit, alpha = spec.swiglu_limit, spec.swiglu_alpha
    for e in ids.unique().tolist():
        tok, slot = (ids == e).nonzero(as_tuple=True)
        h = act(x[tok]) @ dequantize(gate_up[0][e], gate_up[1][e], dtype).T + gate_up[2][e].to(dtype)
        g, u = h[:, 0::2].clamp(max=limit), h[:, 1::2].clamp(-limit, limit)
        w = weights[tok, slot, None].to(dtype)
        if mxfp8_activations:  # the kernel quantises h with the routing weight applied
            out = act(w * g * torch.sigmoid(alpha * g) * (u + 1)) @ dequantize(down[0][e], down[1][e], dtype).T
            y.index_add_(0, tok, out + w * down[2][e].to(dtype))
        else:
            out = (g * torch.sigmoid(alpha * g) * (u + 1)) @ dequantize(down[0][e], down[1][e], dtype).T
            y.index_add_(0, tok, w * (out + down[2][e].to(dtype)))
    return y
