"""A block-scaled FP4 matmul (MXFP4 x MXFP4) through Triton's tl.dot_scaled: the probe that
calibration times for `fp4_flops`, and its torch reference.

Both operands are e2m1 codes packed two to a byte along K (low nibble first, the checkpoint's
order) with one e8m0 scale (bias 127) per 32 values. On compute capability 10.x / 12.x Triton
lowers tl.dot_scaled with two e2m1 operands to the block-scaled MMA of the FP4 tensor cores; on
other GPUs it upcasts both operands to bf16 first (emulation), which is still correct and is how
the reference test runs on a Hopper.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

SCALE_BLOCK = 32
E2M1 = tl.constexpr("e2m1")
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
# 128x128 output tiles, 256 values of K a step, two stages: 64 KiB of operands in shared memory,
# within sm_120's ~99 KiB as well as sm_100's 227 KiB.
BM, BN, BK, STAGES = 128, 128, 256, 2


def triton_version() -> str:
    return triton.__version__


@triton.jit
def _mxfp4_matmul_kernel(A, AS, B, BS, C, M, N, K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_K: tl.constexpr):
    """C [M, N] bf16 = A [M, K] @ B [N, K]^T; A, B as e2m1 bytes [rows, K/2], scales [rows, K/32]."""
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K // 2)
    rs = tl.arange(0, BLOCK_K // 32)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        a = tl.load(A + rm[:, None] * (K // 2) + k // 2 + rk[None, :], mask=rm[:, None] < M, other=0)
        a_s = tl.load(AS + rm[:, None] * (K // 32) + k // 32 + rs[None, :], mask=rm[:, None] < M, other=127)
        b = tl.load(B + rn[:, None] * (K // 2) + k // 2 + rk[None, :], mask=rn[:, None] < N, other=0)
        b_s = tl.load(BS + rn[:, None] * (K // 32) + k // 32 + rs[None, :], mask=rn[:, None] < N, other=127)
        acc = tl.dot_scaled(a, a_s, E2M1, tl.trans(b), b_s, E2M1, acc)
    tl.store(C + rm[:, None] * N + rn[None, :], acc.to(tl.bfloat16), mask=(rm[:, None] < M) & (rn[None, :] < N))


def matmul(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor,
           out: torch.Tensor) -> torch.Tensor:
    """out [M, N] = dequant(a) [M, K] @ dequant(b) [N, K]^T. K must be a multiple of BK."""
    M, N, K = a.shape[0], b.shape[0], a.shape[1] * 2
    scales_ok = a_scale.shape == (M, K // SCALE_BLOCK) and b_scale.shape == (N, K // SCALE_BLOCK)
    if K % BK or b.shape[1] * 2 != K or not scales_ok:
        raise ValueError(f"fp4 matmul: a {tuple(a.shape)}, b {tuple(b.shape)}, scales {tuple(a_scale.shape)} / "
                         f"{tuple(b_scale.shape)}: expected [M, K/2], [N, K/2], [M, K/32], [N, K/32] with K % {BK} == 0")
    grid = (triton.cdiv(M, BM), triton.cdiv(N, BN))
    _mxfp4_matmul_kernel[grid](a, a_scale, b, b_scale, out, M, N, K, BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK,
                               num_stages=STAGES)
    return out


def random_operands(m: int, n: int, k: int, device) -> tuple[torch.Tensor, ...]:
    """Uniform random e2m1 codes and scales near 1 (e8m0 126..128) for A [m, k] and B [n, k]."""
    def operand(rows):
        codes = torch.randint(0, 256, (rows, k // 2), dtype=torch.uint8, device=device)
        scales = torch.randint(126, 129, (rows, k // SCALE_BLOCK), dtype=torch.uint8, device=device)
        return codes, scales
    return (*operand(m), *operand(n))


def dequantize(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """e2m1 bytes [rows, K/2] and e8m0 scales [rows, K/32] -> fp32 [rows, K]."""
    table = torch.tensor(E2M1_VALUES + tuple(-v for v in E2M1_VALUES), device=codes.device)
    values = table[torch.stack([codes & 0xF, codes >> 4], -1).long()].reshape(codes.shape[0], -1)
    return values * torch.exp2(scales.float() - 127).repeat_interleave(SCALE_BLOCK, 1)


def reference(a, a_scale, b, b_scale) -> torch.Tensor:
    return dequantize(a, a_scale) @ dequantize(b, b_scale).T
