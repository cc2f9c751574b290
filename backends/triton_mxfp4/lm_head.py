"""The unembedding: bf16 x [M, H] against the 201,088-row bf16 lm_head, fp32 logits.

cuBLAS would round the logits to bf16, which turns near-ties of the greedy choice into coin
flips against the fp32 reference; this kernel keeps the accumulator. At batch 1 it streams the
1.16 GB matrix once (a third of a 20b decode step's bytes); the batch rows of a vocabulary tile
are adjacent programs, so at large batch the tile is read from HBM once and shared through L2.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _lm_head_kernel(X, W, Out, M, N, K, stride_x, stride_w, stride_o,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    x_ptrs = X + rm[:, None] * stride_x + rk[None, :]
    w_ptrs = W + rn[None, :] * stride_w + rk[:, None]
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for _ in range(0, K, BLOCK_K):  # K is a multiple of BLOCK_K
        x = tl.load(x_ptrs, mask=rm[:, None] < M, other=0.0)
        w = tl.load(w_ptrs, mask=rn[None, :] < N, other=0.0)
        acc = tl.dot(x, w, acc)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    tl.store(Out + rm[:, None] * stride_o + rn[None, :], acc, mask=(rm[:, None] < M) & (rn[None, :] < N))


def lm_head(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, H] bf16, weight [V, H] bf16 -> logits [M, V] fp32."""
    M, K = x.shape
    N = weight.shape[0]
    if weight.shape[1] != K or x.stride(1) != 1 or weight.stride(1) != 1:
        raise ValueError(f"lm_head: x {tuple(x.shape)} and weight {tuple(weight.shape)} are not [M, H] x [V, H] row-major")
    block_k = 64 if K % 64 == 0 else 32
    if K % block_k:
        raise ValueError(f"lm_head: hidden size {K} is not a multiple of 32")
    block_m = min(128, max(16, triton.next_power_of_2(M)))
    out = torch.empty((M, N), device=x.device, dtype=torch.float32) if out is None else out
    # Small batches stream the weight: narrow tiles, many programs, deep pipelining.
    block_n, warps, stages = (64, 4, 6) if block_m <= 32 else (128, 8, 4)
    _lm_head_kernel[(triton.cdiv(M, block_m), triton.cdiv(N, block_n))](
        x, weight, out, M, N, K, x.stride(0), weight.stride(0), out.stride(0),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages)
    return out


def lm_head_ref(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x.float() @ weight.float().T
