"""The small per-token kernels around the GEMMs: residual add + RMSNorm, and YaRN RoPE fused with
the KV-cache write. Each has its torch reference beside it.

The residual stream is bf16 as in the reference (the sum is rounded once to bf16 before it is
normalised); the norm itself is fp32 math.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from backends.triton_mxfp4.mxfp8 import MxTensor, _quantize_groups
from harness.model.rope import yarn
from harness.model.spec import ModelSpec


# ---- residual add + RMSNorm ---------------------------------------------------------------------

@triton.jit
def _add_rmsnorm_kernel(X, Y, W, Out, Q, QS, stride_x, stride_y, stride_o, N, eps,
                        HAS_Y: tl.constexpr, QUANT: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_Y:
        x = (x.to(tl.float32) + tl.load(Y + row * stride_y + cols, mask=mask, other=0.0).to(tl.float32)).to(x.dtype)
        tl.store(X + row * stride_x + cols, x, mask=mask)
    x = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / N + eps)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    t = (x * rstd * w).to(Out.dtype.element_ty)
    tl.store(Out + row * stride_o + cols, t, mask=mask)
    if QUANT:  # the same rounded values in MXFP8 as well, contiguous [rows, N] and [rows, N/32]
        q, scales = _quantize_groups(tl.reshape(t.to(tl.float32), [1, BLOCK // 32, 32]))
        tl.store(Q + row * N + cols, tl.reshape(q, [BLOCK]), mask=mask)
        groups = tl.arange(0, BLOCK // 32)
        tl.store(QS + row * (N // 32) + groups, tl.reshape(scales, [BLOCK // 32]), mask=groups < N // 32)


def add_rmsnorm(x: torch.Tensor, y: torch.Tensor | None, weight: torch.Tensor, eps: float,
                out: torch.Tensor | None = None, out_mx: MxTensor | None = None) -> torch.Tensor:
    """x += y (in place, when y is given), then return rmsnorm(x) * weight; x, y [N, H] bf16.
    out_mx: also write the returned values in MXFP8 there (contiguous [N, H] and [N, H/32])."""
    N, H = x.shape
    out = torch.empty_like(x) if out is None else out
    block = triton.next_power_of_2(H)
    if out_mx is not None and (tuple(out_mx.values.shape) != (N, H) or not out_mx.values.is_contiguous()):
        raise ValueError(f"add_rmsnorm: out_mx {tuple(out_mx.values.shape)} is not a contiguous [{N}, {H}]")
    q, qs = out_mx if out_mx is not None else (None, None)
    _add_rmsnorm_kernel[(N,)](x, x if y is None else y, weight, out, q, qs, x.stride(0),
                              0 if y is None else y.stride(0), out.stride(0), H, eps,
                              HAS_Y=y is not None, QUANT=out_mx is not None, BLOCK=block,
                              num_warps=min(16, max(1, block // 256)))
    return out


def add_rmsnorm_ref(x: torch.Tensor, y: torch.Tensor | None, weight: torch.Tensor, eps: float):
    """(new residual, normalised) without touching x."""
    if y is not None:
        x = (x.float() + y.float()).to(x.dtype)
    t = x.float()
    return x, (t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


# ---- YaRN RoPE + KV-cache write -----------------------------------------------------------------

def rope_table(spec: ModelSpec, positions: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [positions, head_dim/2] fp32, the YaRN concentration folded into both, computed
    like the reference (fp32 position x inv_freq)."""
    concentration, inv_freq = yarn(spec)
    freqs = torch.arange(positions, dtype=torch.float32)[:, None] * inv_freq[None, :]
    return (freqs.cos() * concentration).to(device), (freqs.sin() * concentration).to(device)


@triton.jit
def _rope_kv_kernel(QKV, Cos, Sin, Pos0, Kc, Vc, stride_qkv, stride_cb, stride_ch, stride_cs,
                    T, slots, NUM_Q: tl.constexpr, NUM_KV: tl.constexpr, HALF: tl.constexpr,
                    BLOCK_H: tl.constexpr):
    row = tl.program_id(0)
    b, t = row // T, row % T
    pos = tl.load(Pos0 + b) + t
    heads = tl.arange(0, BLOCK_H)[:, None]  # q heads, then k heads: both rotate
    d = tl.arange(0, HALF)[None, :]
    rot = heads < NUM_Q + NUM_KV
    base = QKV + row.to(tl.int64) * stride_qkv + heads * (2 * HALF) + d
    x1 = tl.load(base, mask=rot, other=0.0).to(tl.float32)
    x2 = tl.load(base + HALF, mask=rot, other=0.0).to(tl.float32)
    cos = tl.load(Cos + pos * HALF + d)
    sin = tl.load(Sin + pos * HALF + d)
    o1 = (x1 * cos - x2 * sin).to(QKV.dtype.element_ty)
    o2 = (x2 * cos + x1 * sin).to(QKV.dtype.element_ty)
    tl.store(base, o1, mask=rot)
    tl.store(base + HALF, o2, mask=rot)
    # Only the last `slots` tokens of a prompt reach the cache: in a sliding layer's ring an earlier
    # token would share a slot with a later one in this same launch.
    if t >= T - slots:
        kvh = heads - NUM_Q
        dst = b.to(tl.int64) * stride_cb + kvh * stride_ch + (pos % slots) * stride_cs + d
        is_k = (kvh >= 0) & (kvh < NUM_KV)
        tl.store(Kc + dst, o1, mask=is_k)
        tl.store(Kc + dst + HALF, o2, mask=is_k)
        v = base + NUM_KV * 2 * HALF  # row kvh of the k heads -> the same row of the v heads
        tl.store(Vc + dst, tl.load(v, mask=is_k, other=0.0), mask=is_k)
        tl.store(Vc + dst + HALF, tl.load(v + HALF, mask=is_k, other=0.0), mask=is_k)


def rope_kv(qkv: torch.Tensor, pos0: torch.Tensor, tokens_per_seq: int, cos: torch.Tensor, sin: torch.Tensor,
            k_cache: torch.Tensor, v_cache: torch.Tensor, spec: ModelSpec) -> None:
    """Rotate q and k of qkv [B*T, (Hq+2Hkv)*D] in place (token b*T+t is at position pos0[b]+t) and
    write k, v into the cache [B', Hkv, slots, D] at slot position % slots."""
    Hq, Hkv, D = spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim
    if qkv.shape[1] != (Hq + 2 * Hkv) * D or qkv.stride(1) != 1:
        raise ValueError(f"rope_kv: qkv {tuple(qkv.shape)} is not [tokens, {(Hq + 2 * Hkv) * D}] row-major")
    if k_cache.stride() != v_cache.stride() or k_cache.stride(3) != 1:
        raise ValueError("rope_kv: k and v caches must share a [batch, kv_heads, slots, head_dim] layout")
    _rope_kv_kernel[(qkv.shape[0],)](
        qkv, cos, sin, pos0, k_cache, v_cache, qkv.stride(0), k_cache.stride(0), k_cache.stride(1),
        k_cache.stride(2), tokens_per_seq, k_cache.shape[2], NUM_Q=Hq, NUM_KV=Hkv, HALF=D // 2,
        BLOCK_H=triton.next_power_of_2(Hq + Hkv), num_warps=4)


def rope_ref(x: torch.Tensor, pos: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [N, heads, D] at positions pos [N] -> rotated, same dtype (NeoX halves, fp32 math)."""
    c, s = cos[pos][:, None], sin[pos][:, None]
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)
