"""GQA attention with per-head sinks and sliding windows: the KV cache, a flash-style prefill kernel
and a split-K (flash-decoding) decode kernel, with the torch reference beside them.

A query at position p sees keys p-window < j <= p (window 0: all j <= p). Each head's sink logit
joins its softmax denominator and its probability mass is dropped. The query heads of one KV
head's group are stacked into the rows of one tile, so they share every K/V load.

Everything the decode path reads about lengths lives in device tensors and every grid is fixed by
the batch size, so a decode step can be captured in a CUDA graph.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from harness.model.spec import ModelSpec

LOG2E = tl.constexpr(1.4426950408889634)  # the kernels use exp2: logits and sinks are scaled by log2(e)


class KVCache:
    """K and V per layer, [max_batch, kv_heads, slots, head_dim] bf16. A sliding-window layer is a
    ring of `window` slots (position p in slot p % window); a full layer holds max_seq_len slots."""

    def __init__(self, spec: ModelSpec, max_batch: int, max_seq_len: int, device, dtype=torch.bfloat16):
        self.max_batch, self.max_seq_len = max_batch, max_seq_len
        self.k, self.v = [], []
        for layer in range(spec.num_hidden_layers):
            shape = (max_batch, spec.num_key_value_heads, spec.window(layer) or max_seq_len, spec.head_dim)
            self.k.append(torch.empty(shape, device=device, dtype=dtype))
            self.v.append(torch.empty(shape, device=device, dtype=dtype))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


# ---- prefill ------------------------------------------------------------------------------------

@triton.jit
def _attn_prefill_kernel(Q, K, V, Sinks, Out, stride_q, stride_k, stride_v, stride_o, T, qk_scale,
                         WINDOW: tl.constexpr, NUM_KV: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # One program: BLOCK_M positions x the GROUP query heads of one KV head, as BLOCK_M*GROUP rows.
    start_m = tl.program_id(0) * BLOCK_M
    b, h = tl.program_id(1) // NUM_KV, tl.program_id(1) % NUM_KV
    rows = tl.arange(0, BLOCK_M * GROUP)
    q_pos = start_m + rows // GROUP
    head = h * GROUP + rows % GROUP
    d = tl.arange(0, HEAD_DIM)
    q_ok = q_pos < T
    q_row = (b * T + q_pos).to(tl.int64)  # B*T*(Hq+2Hkv)*D passes 2^31 at 64 prompts of 8k
    q = tl.load(Q + q_row[:, None] * stride_q + head[:, None] * HEAD_DIM + d[None, :], mask=q_ok[:, None], other=0.0)
    # The sink starts the running max with weight exp(sink - max) = 1, so it joins the denominator.
    m_i = tl.load(Sinks + head).to(tl.float32) * LOG2E
    l_i = tl.full([BLOCK_M * GROUP], 1.0, tl.float32)
    acc = tl.zeros([BLOCK_M * GROUP, HEAD_DIM], tl.float32)
    hi = tl.minimum(start_m + BLOCK_M, T)
    lo = 0
    if WINDOW > 0:
        lo = tl.maximum(start_m - WINDOW + 1, 0) // BLOCK_N * BLOCK_N
    for start_n in range(lo, hi, BLOCK_N):
        k_pos = start_n + tl.arange(0, BLOCK_N)
        k_ok = k_pos < T
        k_row = (b * T + k_pos).to(tl.int64)
        k = tl.load(K + k_row[None, :] * stride_k + h * HEAD_DIM + d[:, None], mask=k_ok[None, :], other=0.0)
        v = tl.load(V + k_row[:, None] * stride_v + h * HEAD_DIM + d[None, :], mask=k_ok[:, None], other=0.0)
        s = tl.dot(q, k) * qk_scale
        visible = (k_pos[None, :] <= q_pos[:, None]) & k_ok[None, :]
        if WINDOW > 0:
            visible &= q_pos[:, None] - k_pos[None, :] < WINDOW
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(Out + q_row[:, None] * stride_o + head[:, None] * HEAD_DIM + d[None, :], out.to(Out.dtype.element_ty),
             mask=q_ok[:, None])


def _check_rows(name, t, heads, head_dim):
    if t.dim() != 2 or t.shape[1] != heads * head_dim or t.stride(1) != 1:
        raise ValueError(f"attention: {name} {tuple(t.shape)} is not [tokens, {heads}*{head_dim}] with unit stride")


def attention_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor, batch: int,
                      window: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention of `batch` sequences of T tokens, all from position 0.

    q [B*T, Hq*D], k, v [B*T, Hkv*D] (row views of the qkv buffer are fine), sinks [Hq] fp32
    -> [B*T, Hq*D] in q's dtype."""
    n, Hq = q.shape[0], sinks.shape[0]
    D = q.shape[1] // Hq
    Hkv = k.shape[1] // D
    for name, t, heads in (("q", q, Hq), ("k", k, Hkv), ("v", v, Hkv)):
        _check_rows(name, t, heads, D)
    if n % batch:
        raise ValueError(f"attention_prefill: {n} tokens do not split into {batch} sequences")
    T, group = n // batch, Hq // Hkv
    if group & (group - 1) or group > 64:
        raise ValueError(f"attention_prefill: {Hq} query heads over {Hkv} KV heads is not a power-of-two group <= 64")
    out = torch.empty((n, Hq * D), device=q.device, dtype=q.dtype) if out is None else out
    block_m = 128 // group  # 128 rows a tile
    grid = (triton.cdiv(T, block_m), batch * Hkv)
    _attn_prefill_kernel[grid](q, k, v, sinks, out, q.stride(0), k.stride(0), v.stride(0), out.stride(0), T,
                               LOG2E.value / math.sqrt(D), WINDOW=window, NUM_KV=Hkv, GROUP=group, HEAD_DIM=D,
                               BLOCK_M=block_m, BLOCK_N=64, num_warps=8, num_stages=3)
    return out


# ---- decode -------------------------------------------------------------------------------------

@triton.jit
def _attn_decode_kernel(Q, Kc, Vc, Sinks, Pos, Out, Mpart, Lpart, Opart, stride_q, stride_cb, stride_ch,
                        stride_cs, stride_o, slots, qk_scale, NUM_KV: tl.constexpr, GROUP: tl.constexpr,
                        BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
                        NUM_SPLITS: tl.constexpr):
    # One program: the GROUP query heads of one KV head (padded to BLOCK_G rows for the tensor
    # cores) over one of NUM_SPLITS equal shares of the valid keys.
    b, h = tl.program_id(0) // NUM_KV, tl.program_id(0) % NUM_KV
    split = tl.program_id(1)
    g = tl.arange(0, BLOCK_G)
    g_ok = g < GROUP
    head = h * GROUP + g
    d = tl.arange(0, HEAD_DIM)
    n = tl.minimum(tl.load(Pos + b) + 1, slots)  # a ring holds the whole window once it wrapped
    share = tl.cdiv(tl.cdiv(n, NUM_SPLITS), BLOCK_N) * BLOCK_N
    lo = split * share
    hi = tl.minimum(lo + share, n)
    q = tl.load(Q + b * stride_q + head[:, None] * HEAD_DIM + d[None, :], mask=g_ok[:, None], other=0.0)
    if NUM_SPLITS == 1:
        m_i = tl.load(Sinks + head, mask=g_ok, other=0.0).to(tl.float32) * LOG2E
        l_i = tl.full([BLOCK_G], 1.0, tl.float32)
    else:
        m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
    cache = b.to(tl.int64) * stride_cb + h * stride_ch
    for start_n in range(lo, hi, BLOCK_N):
        k_pos = start_n + tl.arange(0, BLOCK_N)
        k_ok = k_pos < hi
        k = tl.load(Kc + cache + k_pos[None, :] * stride_cs + d[:, None], mask=k_ok[None, :], other=0.0)
        v = tl.load(Vc + cache + k_pos[:, None] * stride_cs + d[None, :], mask=k_ok[:, None], other=0.0)
        s = tl.where(k_ok[None, :], tl.dot(q, k) * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.math.exp2(m_i - m_new)  # every block has a valid key, so m_new is finite
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    if NUM_SPLITS == 1:
        tl.store(Out + b * stride_o + head[:, None] * HEAD_DIM + d[None, :], (acc / l_i[:, None]).to(Out.dtype.element_ty),
                 mask=g_ok[:, None])
    else:
        part = (b * NUM_KV * GROUP + head) * NUM_SPLITS + split
        tl.store(Mpart + part, m_i, mask=g_ok)
        tl.store(Lpart + part, l_i, mask=g_ok)
        tl.store(Opart + part[:, None] * HEAD_DIM + d[None, :], acc, mask=g_ok[:, None])


@triton.jit
def _attn_decode_reduce_kernel(Sinks, Mpart, Lpart, Opart, Out, stride_o, NUM_HEADS: tl.constexpr,
                               HEAD_DIM: tl.constexpr, NUM_SPLITS: tl.constexpr):
    bh = tl.program_id(0)
    head = bh % NUM_HEADS
    s = tl.arange(0, NUM_SPLITS)
    d = tl.arange(0, HEAD_DIM)
    m = tl.load(Mpart + bh * NUM_SPLITS + s)
    sink = tl.load(Sinks + head).to(tl.float32) * LOG2E
    m_all = tl.maximum(tl.max(m, axis=0), sink)
    w = tl.math.exp2(m - m_all)
    l_all = tl.sum(w * tl.load(Lpart + bh * NUM_SPLITS + s), axis=0) + tl.math.exp2(sink - m_all)
    o = tl.sum(w[:, None] * tl.load(Opart + (bh * NUM_SPLITS + s)[:, None] * HEAD_DIM + d[None, :]), axis=0)
    tl.store(Out + (bh // NUM_HEADS) * stride_o + head * HEAD_DIM + d, (o / l_all).to(Out.dtype.element_ty))


def decode_splits(batch: int, kv_heads: int, slots: int, num_sms: int) -> int:
    """Splits of the keys that give ~4 programs per SM, a power of two, none shorter than 256 keys."""
    want = triton.cdiv(4 * num_sms, batch * kv_heads)
    return min(triton.next_power_of_2(want), triton.next_power_of_2(triton.cdiv(slots, 256)))


def attention_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, sinks: torch.Tensor,
                     pos: torch.Tensor, num_splits: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """One query per sequence against its cache, the query's own key included.

    q [B, Hq*D] (rows may be strided); k_cache, v_cache [B', Hkv, slots, D] with B' >= B; pos [B]
    int32, the query's position (valid keys: min(pos+1, slots)); num_splits a power of two.
    -> [B, Hq*D] in q's dtype."""
    B, Hq = q.shape[0], sinks.shape[0]
    _, Hkv, slots, D = k_cache.shape
    _check_rows("q", q, Hq, D)
    if k_cache.stride() != v_cache.stride() or k_cache.stride(3) != 1 or k_cache.shape[0] < B:
        raise ValueError(f"attention_decode: caches {tuple(k_cache.shape)}/{tuple(v_cache.shape)} do not hold "
                         f"batch {B} in one [batch, kv_heads, slots, head_dim] layout")
    if num_splits & (num_splits - 1):
        raise ValueError(f"attention_decode: num_splits={num_splits} is not a power of two")
    group = Hq // Hkv
    out = torch.empty((B, Hq * D), device=q.device, dtype=q.dtype) if out is None else out
    if num_splits == 1:
        m = l = o = out  # unused
    else:
        m = torch.empty((B * Hq * num_splits,), device=q.device, dtype=torch.float32)
        l = torch.empty_like(m)
        o = torch.empty((B * Hq * num_splits, D), device=q.device, dtype=torch.float32)
    _attn_decode_kernel[(B * Hkv, num_splits)](
        q, k_cache, v_cache, sinks, pos, out, m, l, o, q.stride(0), k_cache.stride(0), k_cache.stride(1),
        k_cache.stride(2), out.stride(0), slots, LOG2E.value / math.sqrt(D), NUM_KV=Hkv, GROUP=group,
        BLOCK_G=max(16, triton.next_power_of_2(group)), HEAD_DIM=D, BLOCK_N=64, NUM_SPLITS=num_splits, num_warps=4)
    if num_splits > 1:
        _attn_decode_reduce_kernel[(B * Hq,)](sinks, m, l, o, out, out.stride(0), NUM_HEADS=Hq, HEAD_DIM=D,
                                              NUM_SPLITS=num_splits, num_warps=4)
    return out


# ---- reference ----------------------------------------------------------------------------------

def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor, window: int,
                  q_start: int = 0) -> torch.Tensor:
    """fp32 attention of one sequence: q [Tq, Hq, D] at positions q_start.., k, v [S, Hkv, D] at
    positions 0..S-1 -> [Tq, Hq, D]."""
    Tq, Hq, D = q.shape
    S, Hkv = k.shape[:2]
    k, v = (t.float().repeat_interleave(Hq // Hkv, dim=1) for t in (k, v))
    s = torch.einsum("thd,shd->hts", q.float(), k) / math.sqrt(D)
    qp = torch.arange(q_start, q_start + Tq)[:, None]
    kp = torch.arange(S)[None, :]
    visible = (kp <= qp) & ((qp - kp < window) if window else True)
    s = s.masked_fill(~visible.to(s.device), float("-inf"))
    s = torch.cat((s, sinks.float()[:, None, None].expand(Hq, Tq, 1)), dim=-1)
    p = torch.softmax(s, dim=-1)[..., :-1]
    return torch.einsum("hts,shd->thd", p, v)
