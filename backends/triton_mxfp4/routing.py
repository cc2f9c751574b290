"""MoE routing on the GPU: the router's logits, top-k of them, softmax over the selected logits, and
the assignments (token, slot) grouped by expert, with the torch reference beside them.

The router GEMM is a kernel of its own rather than cuBLAS: replayed from a CUDA graph, a cuBLAS
kernel carries no range that says what it computes, and its name (chosen by cuBLAS's heuristics)
does not tell the router from the attention projections in a profile.

Grouping is a counting sort in two launches, neither of which reads anything back to the host, so a
decode step that routes can be captured in a CUDA graph:
  _topk_kernel   one program per block of tokens: expert ids, weights, and the block's histogram;
  _sort_kernel   one program per block again: expert offsets from all histograms, then each
                 assignment's position (experts in order, tokens in order within an expert).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

# Router tiles, the fastest of those timed on an H100 (benchmarks/bench_router.py, LOG.md): up to
# ROUTER_GEMV_MAX_LOGITS logits one program per (token, expert) on CUDA cores (2.5 us a layer at one
# token against cuBLAS's 6.1), then tensor-core tiles, smaller for decode batches than for prefill.
ROUTER_GEMV_MAX_LOGITS = 4096
ROUTER_GEMV = {"be": 1, "bk": 512}  # experts per program, inputs per step
ROUTER_DOT_DECODE_MAX_T = 1024
ROUTER_DOT_DECODE = {"bt": 16, "be": 32, "bk": 256}
ROUTER_DOT_PREFILL = {"bt": 64, "be": 128, "bk": 128}  # be shrinks to the experts
ROUTE_BLOCK_T = 32  # tokens per routing program: [32 * k, E] one-hot tiles stay small in registers
HIST_CHUNK = 16  # histogram rows summed per step when a program gathers all blocks' counts


class Routing(NamedTuple):
    ids: torch.Tensor  # [T, k] int32 expert of each (token, slot), by falling logit
    weights: torch.Tensor  # [T, k] fp32 softmax over the k selected logits
    offsets: torch.Tensor  # [E + 1] int32: expert e owns sorted rows offsets[e]:offsets[e+1]
    order: torch.Tensor  # [T * k] int32: sorted row -> assignment index token * k + slot


@triton.jit
def _router_gemv_kernel(X, W, B, Out, H: tl.constexpr, E: tl.constexpr, BE: tl.constexpr, BK: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BE + tl.arange(0, BE)
    col_ok = cols < E
    acc = tl.zeros([BE, BK], tl.float32)
    for k0 in range(0, H, BK):
        ks = k0 + tl.arange(0, BK)
        x = tl.load(X + t * H + ks, mask=ks < H, other=0.0).to(tl.float32)
        w = tl.load(W + cols[:, None] * H + ks[None, :], mask=col_ok[:, None] & (ks[None, :] < H), other=0.0)
        acc += w.to(tl.float32) * x[None, :]
    out = tl.sum(acc, axis=1) + tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)
    tl.store(Out + t * E + cols, out.to(Out.dtype.element_ty), mask=col_ok)


@triton.jit
def _router_dot_kernel(X, W, B, Out, T, H: tl.constexpr, E: tl.constexpr, BT: tl.constexpr, BE: tl.constexpr,
                       BK: tl.constexpr):
    rows = tl.program_id(0) * BT + tl.arange(0, BT)
    cols = tl.program_id(1) * BE + tl.arange(0, BE)
    row_ok, col_ok = rows < T, cols < E
    acc = tl.zeros([BT, BE], tl.float32)
    for k0 in range(0, H, BK):
        ks = k0 + tl.arange(0, BK)
        x = tl.load(X + rows[:, None].to(tl.int64) * H + ks[None, :], mask=row_ok[:, None] & (ks[None, :] < H),
                    other=0.0)
        w = tl.load(W + cols[None, :] * H + ks[:, None], mask=col_ok[None, :] & (ks[:, None] < H), other=0.0)
        acc = tl.dot(x, w, acc)
    acc += tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Out + rows[:, None].to(tl.int64) * E + cols[None, :], acc.to(Out.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


def router_logits(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, tiles: dict | None = None) -> torch.Tensor:
    """x [T, H] @ w[E, H]^T + b [E] -> [T, E] in x's dtype, accumulated in fp32 (F.linear's result).
    tiles: by T unless given (benchmarks/bench_router.py times variants of both kernels)."""
    T, H = x.shape
    E = w.shape[0]
    if w.shape != (E, H) or b.shape != (E,) or not (x.is_contiguous() and w.is_contiguous()):
        raise ValueError(f"router: x {tuple(x.shape)}, weight {tuple(w.shape)}, bias {tuple(b.shape)} are not "
                         f"contiguous [T, H], [E, H], [E]")
    tiles = tiles or (ROUTER_GEMV if T * E <= ROUTER_GEMV_MAX_LOGITS else
                      ROUTER_DOT_DECODE if T <= ROUTER_DOT_DECODE_MAX_T else ROUTER_DOT_PREFILL)
    out = torch.empty((T, E), device=x.device, dtype=x.dtype)
    if "bt" in tiles:
        bt = min(tiles["bt"], max(16, triton.next_power_of_2(T)))
        be = min(tiles["be"], max(16, triton.next_power_of_2(E)))
        _router_dot_kernel[(triton.cdiv(T, bt), triton.cdiv(E, be))](x, w, b, out, T, H, E, bt, be, tiles["bk"])
    else:
        _router_gemv_kernel[(T, triton.cdiv(E, tiles["be"]))](x, w, b, out, H, E, tiles["be"], tiles["bk"])
    return out


@triton.jit
def _top_k(logits, cols, TOPK: tl.constexpr, KP: tl.constexpr):
    """Per row of `logits` [R, EP] fp32 (-inf past the last expert): the TOPK largest as expert ids
    [R, KP] int32 (ties go to the lower id) and their softmax weights [R, KP] (0 past TOPK)."""
    slot = tl.arange(0, KP)[None, :]
    ids = tl.zeros([logits.shape[0], KP], tl.int32)
    vals = tl.full([logits.shape[0], KP], float("-inf"), tl.float32)
    for j in tl.static_range(TOPK):
        best = tl.max(logits, axis=1)
        idx = tl.min(tl.where(logits == best[:, None], cols[None, :], logits.shape[1]), axis=1)
        ids = tl.where(slot == j, idx[:, None], ids)
        vals = tl.where(slot == j, best[:, None], vals)
        logits = tl.where(cols[None, :] == idx[:, None], float("-inf"), logits)
    p = tl.exp(vals - tl.max(vals, axis=1)[:, None])
    return ids, p / tl.sum(p, axis=1)[:, None]


@triton.jit
def _load_logits(Logits, rows, row_ok, E: tl.constexpr, EP: tl.constexpr):
    """Logits [R, EP] fp32 of the given token rows; padding columns -inf, rows past T all 0."""
    cols = tl.arange(0, EP)
    x = tl.load(Logits + rows[:, None] * E + cols[None, :], mask=row_ok[:, None] & (cols[None, :] < E), other=0.0)
    return tl.where(cols[None, :] < E, x.to(tl.float32), float("-inf")), cols


@triton.jit
def _topk_kernel(Logits, Ids, Weights, Hist, T, E: tl.constexpr, EP: tl.constexpr, TOPK: tl.constexpr,
                 KP: tl.constexpr, BT: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BT + tl.arange(0, BT)
    row_ok = rows < T
    logits, cols = _load_logits(Logits, rows, row_ok, E, EP)
    ids, w = _top_k(logits, cols, TOPK, KP)
    slot = tl.arange(0, KP)[None, :]
    out_ok = row_ok[:, None] & (slot < TOPK)
    tl.store(Ids + rows[:, None] * TOPK + slot, ids, mask=out_ok)
    tl.store(Weights + rows[:, None] * TOPK + slot, w, mask=out_ok)
    hist = tl.zeros([EP], tl.int32)
    for j in tl.static_range(TOPK):
        e = tl.sum(tl.where(slot == j, ids, 0), axis=1)
        hist += tl.sum((row_ok[:, None] & (e[:, None] == cols[None, :])).to(tl.int32), axis=0)
    tl.store(Hist + pid * EP + cols, hist)


@triton.jit
def _sort_kernel(Ids, Hist, Offsets, Order, A, NB, E: tl.constexpr, EP: tl.constexpr, TOPK: tl.constexpr,
                 KP: tl.constexpr, BT: tl.constexpr, CHUNK: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, EP)
    total = tl.zeros([EP], tl.int32)
    before = tl.zeros([EP], tl.int32)  # assignments to each expert in earlier blocks
    for b0 in range(0, NB, CHUNK):
        b = b0 + tl.arange(0, CHUNK)
        h = tl.load(Hist + b[:, None] * EP + cols[None, :], mask=b[:, None] < NB, other=0)
        total += tl.sum(h, axis=0)
        before += tl.sum(tl.where(b[:, None] < pid, h, 0), axis=0)
    start = tl.cumsum(total, axis=0) - total
    if pid == 0:
        tl.store(Offsets + cols, start, mask=cols < E)
        tl.store(Offsets + E, tl.sum(total, axis=0))
    # This block's assignments in flat (token, slot) order; rank among same-expert ones before them.
    i = tl.arange(0, BT * KP)
    a = pid * BT * TOPK + i
    a_ok = (i < BT * TOPK) & (a < A)
    e = tl.load(Ids + a, mask=a_ok, other=EP)
    hit = e[:, None] == cols[None, :]
    rank = tl.cumsum(hit.to(tl.int32), axis=0) - 1
    pos = tl.sum(tl.where(hit, (start + before)[None, :] + rank, 0), axis=1)
    tl.store(Order + pos, a, mask=a_ok)


def route(logits: torch.Tensor, k: int) -> Routing:
    """Top-k routing of logits [T, E] and the grouping of its T*k assignments by expert."""
    T, E = logits.shape
    if not logits.is_contiguous():
        raise ValueError(f"router logits must be contiguous, got strides {logits.stride()}")
    dev = logits.device
    EP, KP = triton.next_power_of_2(E), triton.next_power_of_2(k)
    nb = triton.cdiv(T, ROUTE_BLOCK_T)
    ids = torch.empty((T, k), device=dev, dtype=torch.int32)
    weights = torch.empty((T, k), device=dev, dtype=torch.float32)
    hist = torch.empty((nb, EP), device=dev, dtype=torch.int32)
    offsets = torch.empty((E + 1,), device=dev, dtype=torch.int32)
    order = torch.empty((T * k,), device=dev, dtype=torch.int32)
    _topk_kernel[(nb,)](logits, ids, weights, hist, T, E, EP, k, KP, ROUTE_BLOCK_T)
    _sort_kernel[(nb,)](ids, hist, offsets, order, T * k, nb, E, EP, k, KP, ROUTE_BLOCK_T, HIST_CHUNK)
    return Routing(ids, weights, offsets, order)


def route_reference(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.topk + softmax over the selected logits: (ids [T, k] int64, weights [T, k] fp32)."""
    top = torch.topk(logits.float(), k, dim=-1, sorted=True)
    return top.indices, torch.softmax(top.values, dim=-1)
