"""Expert GEMMs over MXFP4 weights: the packed bytes and E8M0 scales are read from memory as
stored (4.25 bits a weight) and decoded in registers.

  grouped  tensor cores: rows are the assignments sorted by expert (routing.route), decoded by
           tl.dot_scaled (on Hopper it upcasts to bf16 before the MMA); a static grid sized for the
           worst case, where each program finds its (expert, row tile) from the expert offsets and
           programs past the last tile exit at once. SWAP puts the weights on the MMA's M side and
           the few tokens on its N side, for decode.
  gemv     CUDA cores: one program per (assignment, column tile), the expert chosen from the router
           logits inside the kernel (no routing launches), weights decoded by inline PTX (bit
           moves to fp16 pairs and HFMA2 over each 32-group). Around a one-token MMA, dot_scaled
           spends most of its time moving bytes between layouts; this path keeps the weights in
           the layout they were loaded in.

gate_up fuses bias, the clamped SwiGLU of interleaved (gate, up) rows and the routing weight, so
its output rows are already weighted; down adds the bias times the routing weight and writes one
fp32 row per assignment (per assignment and K range under the gemv's split-K, GemvTiles.split),
which _combine_kernel sums per token (so the result does not depend on scheduling, unlike atomics).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import triton
import triton.language as tl

from backends.triton_mxfp4 import mxfp8
from backends.triton_mxfp4.mxfp8 import MxTensor, _quantize_groups
from backends.triton_mxfp4.routing import _load_logits, _top_k
from harness.model.mxfp4 import BLOCK, E2M1_VALUES, SCALE_BIAS

# The interpreter hands string literals to tl.dot_scaled unwrapped; constexpr globals work in both.
E2M1 = tl.constexpr("e2m1")
E4M3 = tl.constexpr("e4m3")
BF16 = tl.constexpr("bf16")
# GPU major versions whose Triton (3.6) lowers dot_scaled natively for e4m3 x e4m3 but not for
# e4m3 x e2m1: sm_120 emits mma.sync kind::mxf8f6f4 for the former and upcasts the latter to bf16
# (benchmarks/fp4_codegen.py). There the weights are widened to e4m3 in registers, which is exact
# and costs no MMA rate (kind::mxf8f6f4 runs fp4 operands at the fp8 rate).
E2M1_AS_E4M3_MAJORS = (12,)
COMBINE_BLOCK = 1024


@dataclass(frozen=True)
class Tiles:
    bm: int  # token rows per program (the MMA's N side under swap)
    bn: int  # weight rows per program
    bk: int  # reduction elements per step
    swap: bool
    group_m: int = 1  # row tiles that share a sweep over N (L2 reuse of the weights at prefill)
    num_warps: int = 4
    num_stages: int = 3

    def fit(self, n: int, k: int) -> "Tiles":
        """The same tiles, shrunk where the matrix [n, k] is smaller than them."""
        return replace(self, bn=_fit_rows(self.bn, n), bk=max(64, min(self.bk, triton.next_power_of_2(k))))


@dataclass(frozen=True)
class GemvTiles:
    bn: int  # weight rows per program
    bk: int  # reduction elements per step
    num_warps: int = 4
    num_stages: int = 3
    # Split-K, down only: the cdiv(K, bk) reduction steps are dealt out in `split` contiguous runs,
    # run s taking steps s*S//split .. (s+1)*S//split - 1 (S steps; every run starts at a multiple
    # of bk, so loads stay 16-byte aligned, and only the last run has K's masked tail step, as
    # without split: K = 2880 at bk 512 is 6 steps, split 4 gives runs of 1, 2, 1, 2). Each
    # (column tile, assignment, run) writes its own fp32 row, summed in order by _combine_kernel;
    # more programs in flight where N / bn x assignments leaves SMs idle (down at T = 1: 360).
    # gate_up's epilogue (SwiGLU) needs whole sums, so gate_up refuses split > 1.
    split: int = 1

    def __post_init__(self):
        if self.split < 1:
            raise ValueError(f"GemvTiles.split must be >= 1, got {self.split}")

    @property
    def label(self) -> str:
        """What the benchmarks print for these tiles, e.g. "32x512 w4 split 2"."""
        return f"{self.bn}x{self.bk} w{self.num_warps}" + (f" split {self.split}" if self.split > 1 else "")

    def fit(self, n: int, k: int) -> "GemvTiles":
        """The same tiles, shrunk where the matrix [n, k] is smaller than them (split: to no more
        runs than steps)."""
        bn, bk = _fit_rows(self.bn, n), max(64, min(self.bk, triton.next_power_of_2(k)))
        # fp16x2 hands each thread whole 16-byte scale groups (pack=16): a tile of fewer than 16
        # bytes a thread would split groups across threads, so it runs on fewer warps. A step's
        # tile is the same under split (runs are whole steps), so this holds there too.
        warps = max(1, min(self.num_warps, bn * bk // 2 // (16 * 32)))
        return replace(self, bn=bn, bk=bk, num_warps=warps, split=min(self.split, triton.cdiv(k, bk)))


def _fit_rows(bn: int, n: int) -> int:
    """The largest power of two <= bn dividing n (row tiles never straddle the matrix end)."""
    while n % bn:
        bn //= 2
    if bn < 16:
        raise ValueError(f"expert matrix rows {n} need a power-of-two factor >= 16")
    return bn


@triton.jit
def _e2m1_to_e4m3(w):
    """w [R, C] uint8, two e2m1 codes each (low nibble first) -> [R, 2C] e4m3 bytes of the same
    values: exponent + 6 and mantissa << 2 for the normal codes, 0.5 (e2m1's one subnormal) -> 0x30."""
    nib = tl.reshape(tl.join(w & 15, w >> 4), [w.shape[0], w.shape[1] * 2])
    mag = nib & 7
    byte = tl.where(mag == 1, 0x30, (mag + 12) << 2)
    return (tl.where(mag == 0, 0, byte) | ((nib & 8) << 4)).to(tl.uint8)


@triton.jit
def _mx_dot(acc, x, xs, w, s, SWAP: tl.constexpr, W_E4M3: tl.constexpr):
    """acc + x @ W^T for x [BM, BK] (bf16 with xs None, or e4m3 with E8M0 scales xs [BM, BK/32]) and
    W [BN, BK] given as e2m1 pairs w [BN, BK/2] and E8M0 scales s [BN, BK/32] (widened to e4m3 under
    W_E4M3); under SWAP acc and the result are transposed, [BN, BM]."""
    x_fmt: tl.constexpr = BF16 if xs is None else E4M3
    w_fmt: tl.constexpr = E4M3 if W_E4M3 else E2M1
    if W_E4M3:
        w = _e2m1_to_e4m3(w)
    if SWAP:
        return tl.dot_scaled(w, s, w_fmt, tl.trans(x), xs, x_fmt, acc, fast_math=True)
    else:
        return tl.dot_scaled(x, xs, x_fmt, tl.trans(w), s, w_fmt, acc, fast_math=True)


@triton.jit
def _mx_step(acc, X, x_off, x_ok, XS, xs_off, W, S, w_rows, i, K: tl.constexpr, BK: tl.constexpr,
             SWAP: tl.constexpr, W_E4M3: tl.constexpr):
    """Reduction step i (inputs i*BK : (i+1)*BK): rows x_off of X (mask x_ok) against rows w_rows of W;
    XS None: X is bf16, else X is e4m3 with its scales at rows xs_off of XS.
    Offsets are i times a constant, never a quotient, so Triton sees 16-byte alignment and vectorises."""
    kx = i * BK + tl.arange(0, BK)
    kw = i * (BK // 2) + tl.arange(0, BK // 2)
    ks = i * (BK // 32) + tl.arange(0, BK // 32)
    x = tl.load(X + x_off[:, None] + kx[None, :], mask=x_ok[:, None] & (kx[None, :] < K), other=0.0)
    xs = None
    if XS is not None:
        xs = tl.load(XS + xs_off[:, None] + ks[None, :], mask=x_ok[:, None] & (ks[None, :] < K // 32), other=0)
    w = tl.load(W + w_rows[:, None] * (K // 2) + kw[None, :], mask=kw[None, :] < K // 2, other=0)
    s = tl.load(S + w_rows[:, None] * (K // 32) + ks[None, :], mask=ks[None, :] < K // 32, other=0)
    return _mx_dot(acc, x, xs, w, s, SWAP, W_E4M3)


@triton.jit
def _expert_matmul(X, x_off, x_ok, XS, xs_off, W, S, e, n0, K: tl.constexpr, N: tl.constexpr, BM: tl.constexpr,
                   BN: tl.constexpr, BK: tl.constexpr, SWAP: tl.constexpr, W_E4M3: tl.constexpr):
    """[BM, BN] fp32: rows x_off of X (scales at rows xs_off of XS when X is e4m3) times rows
    n0:n0+BN of expert e's matrix, over all of K."""
    W = W + e.to(tl.int64) * N * (K // 2)
    S = S + e.to(tl.int64) * N * (K // 32)
    w_rows = n0 + tl.arange(0, BN)
    acc = tl.zeros([BN, BM] if SWAP else [BM, BN], tl.float32)
    for i in range(0, tl.cdiv(K, BK)):
        acc = _mx_step(acc, X, x_off, x_ok, XS, xs_off, W, S, w_rows, i, K, BK, SWAP, W_E4M3)
    if SWAP:
        acc = tl.trans(acc)
    return acc


@triton.jit
def _swiglu(h, alpha, limit):
    """h [BM, 2J] with gate/up interleaved by column -> [BM, J]; gate clamped above, up both sides."""
    g, u = tl.split(tl.reshape(h, [h.shape[0], h.shape[1] // 2, 2]))
    g = tl.minimum(g, limit)
    u = tl.minimum(tl.maximum(u, -limit), limit)
    return g * tl.sigmoid(alpha * g) * (u + 1.0)


@triton.jit
def _expert_tile(Offsets, pid_m, E: tl.constexpr, EP: tl.constexpr, BM: tl.constexpr):
    """Row tile pid_m of the expert-sorted rows: (expert, first row, end row); expert E if none."""
    ex = tl.arange(0, EP)
    lo = tl.load(Offsets + ex, mask=ex < E, other=0)
    hi = tl.load(Offsets + ex + 1, mask=ex < E, other=0)
    tiles = (hi - lo + BM - 1) // BM
    ends = tl.cumsum(tiles, axis=0)
    e = tl.sum((ends <= pid_m).to(tl.int32), axis=0)
    mine = ex == e
    first = tl.sum(tl.where(mine, ends - tiles, 0), axis=0)
    start = tl.sum(tl.where(mine, lo, 0), axis=0) + (pid_m - first) * BM
    return e, start, tl.sum(tl.where(mine, hi, 0), axis=0)


@triton.jit
def _tile_of(pid, num_m, num_n, GROUP_M: tl.constexpr):
    """pid -> (row tile, column tile), GROUP_M row tiles sweeping N together."""
    in_group = GROUP_M * num_n
    first_m = (pid // in_group) * GROUP_M
    size = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + (pid % in_group) % size, (pid % in_group) // size


@triton.jit
def _routed_assignment(Logits, a, E: tl.constexpr, EP: tl.constexpr, TOPK: tl.constexpr, KP: tl.constexpr):
    """Assignment a = token * TOPK + slot routed from its token's logits: (expert, weight)."""
    logits, cols = _load_logits(Logits, tl.full([1], a // TOPK, tl.int32), tl.full([1], True, tl.int1), E, EP)
    ids, wts = _top_k(logits, cols, TOPK, KP)
    slot = tl.arange(0, KP)[None, :] == a % TOPK
    e = tl.sum(tl.sum(tl.where(slot, ids, 0), axis=1), axis=0)
    return e, tl.sum(tl.sum(tl.where(slot, wts, 0.0), axis=1), axis=0)


@triton.jit
def _gate_up_kernel(X, stride_x, XS, Order, Offsets, Weights, W, S, B, Hout, HS, num_m, alpha, limit,
                    E: tl.constexpr, EP: tl.constexpr, TOPK: tl.constexpr, K: tl.constexpr, N: tl.constexpr,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SWAP: tl.constexpr,
                    GROUP_M: tl.constexpr, W_E4M3: tl.constexpr):
    # Program (row tile of one expert, column tile); output row = sorted row. XS None: X and Hout
    # are bf16; else X is e4m3 with scales XS, and h is written in MXFP8 (values Hout, scales HS).
    pid_m, pid_n = _tile_of(tl.program_id(0), num_m, N // BN, GROUP_M)
    e, start, end = _expert_tile(Offsets, pid_m, E, EP, BM)
    if e >= E:
        return
    rows = start + tl.arange(0, BM)
    ok = rows < end
    asg = tl.load(Order + rows, mask=ok, other=0)
    tok = asg // TOPK
    row_w = tl.load(Weights + asg, mask=ok, other=0.0)
    n0 = pid_n * BN
    acc = _expert_matmul(X, tok.to(tl.int64) * stride_x, ok, XS, tok.to(tl.int64) * (K // 32), W, S, e, n0,
                         K, N, BM, BN, BK, SWAP, W_E4M3)
    acc += tl.load(B + e * N + n0 + tl.arange(0, BN))[None, :]
    h = _swiglu(acc, alpha, limit) * row_w[:, None]
    j = n0 // 2 + tl.arange(0, BN // 2)
    if XS is None:
        h = h.to(Hout.dtype.element_ty)
    else:  # BN // 2 columns are whole groups of 32 (the host asks BN % 64 == 0)
        h, scales = _quantize_groups(tl.reshape(h, [BM, BN // 64, 32]))
        h = tl.reshape(h, [BM, BN // 2])
        g = n0 // 64 + tl.arange(0, BN // 64)
        tl.store(HS + rows.to(tl.int64)[:, None] * (N // 64) + g[None, :], scales, mask=ok[:, None])
    tl.store(Hout + rows.to(tl.int64)[:, None] * (N // 2) + j[None, :], h, mask=ok[:, None])


@triton.jit
def _down_kernel(Hin, HS, Order, Offsets, Weights, W, S, B, Out, num_m, E: tl.constexpr, EP: tl.constexpr,
                 K: tl.constexpr, N: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                 SWAP: tl.constexpr, GROUP_M: tl.constexpr, W_E4M3: tl.constexpr):
    # Program (row tile of one expert, column tile); input row = sorted row, output row = assignment.
    pid_m, pid_n = _tile_of(tl.program_id(0), num_m, N // BN, GROUP_M)
    e, start, end = _expert_tile(Offsets, pid_m, E, EP, BM)
    if e >= E:
        return
    rows = start + tl.arange(0, BM)
    ok = rows < end
    asg = tl.load(Order + rows, mask=ok, other=0)
    row_w = tl.load(Weights + asg, mask=ok, other=0.0)
    n0 = pid_n * BN
    acc = _expert_matmul(Hin, rows.to(tl.int64) * K, ok, HS, rows.to(tl.int64) * (K // 32), W, S, e, n0, K, N,
                         BM, BN, BK, SWAP, W_E4M3)
    acc += row_w[:, None] * tl.load(B + e * N + n0 + tl.arange(0, BN))[None, :]
    cols = n0 + tl.arange(0, BN)
    tl.store(Out + asg.to(tl.int64)[:, None] * N + cols[None, :], acc, mask=ok[:, None])


def _fp16x2_group_dot_asm() -> str:
    """PTX for one 32-weight scale group: $16..$19 its 16 bytes (weights 8m..8m+7 in word m, low
    nibble first), $20..$35 fp16 pairs of x, pair 4m+i = (x[8m+i], x[8m+4+i]); every output $0..$15
    gets the group's dot product, in fp32 units of 2^-14 (ptxas drops the 15 copies nobody reads).

    An e2m1 code s|e1 e0|m with s at bit 15 and e1 e0 m at bits 11..9 is the fp16 of its value
    times 2^-14, for all 16 codes (0.5, e2m1's one subnormal, lands on fp16's subnormal 2^-15).
    Pair i of word q is nibble i of each 16-bit half. Its sign must move 3 bits less than its
    magnitude; so z takes, by one lop3, the sign bits of q and the rest of q rotated right by 3:
    z02 for nibbles 0 and 2, z13 for 1 and 3 (their sign and magnitude bits never collide), and a
    rotate or shift by 12 - 4i plus a mask of z gives pair i: 10 ops for 8 weights
    (_fp16x2_decode_reference does the same in NumPy). 16 HFMA2 in one chain from +0, then both
    lanes to fp32 and added."""
    lines = ["{", ".reg .b32 r, z02, z13, p, acc;", ".reg .b16 lo, hi;", ".reg .f32 flo, fhi;", "mov.b32 acc, 0;"]
    for m in range(4):
        q, x = f"${16 + m}", [f"${20 + 4 * m + i}" for i in range(4)]
        lines += [f"shf.r.wrap.b32 r, {q}, {q}, 3;",
                  f"lop3.b32 z02, {q}, r, 0x08080808, 0xE4;",  # (q & c) | (r & ~c)
                  f"lop3.b32 z13, {q}, r, 0x80808080, 0xE4;",
                  "shf.l.wrap.b32 p, z02, z02, 12;", "and.b32 p, p, 0x8E008E00;", f"fma.rn.f16x2 acc, p, {x[0]}, acc;",
                  "shl.b32 p, z13, 8;", "and.b32 p, p, 0x8E008E00;", f"fma.rn.f16x2 acc, p, {x[1]}, acc;",
                  "shl.b32 p, z02, 4;", "and.b32 p, p, 0x8E008E00;", f"fma.rn.f16x2 acc, p, {x[2]}, acc;",
                  "and.b32 p, z13, 0x8E008E00;", f"fma.rn.f16x2 acc, p, {x[3]}, acc;"]
    lines += ["mov.b32 {lo, hi}, acc;", "cvt.f32.f16 flo, lo;", "cvt.f32.f16 fhi, hi;", "add.f32 $0, flo, fhi;"]
    lines += [f"mov.b32 ${j}, $0;" for j in range(1, 16)] + ["}"]
    return "\n".join(lines)


_FP16X2_GROUP_DOT = tl.constexpr(_fp16x2_group_dot_asm())
# x * 2^c in fp16 with max|x| * 2^c in [2^13, 2^14): a product is at most 6 * 2^14 * 2^-14 = 6 and a
# lane's 16-term sum at most 96, far below fp16's 65504, while |x| down to max|x| * 2^-14 / |w| stay
# normal fp16 products (gpt-oss's hidden states after RMSNorm have no proven bound, so c is per row).
X16_TOP_EXPONENT = tl.constexpr(13)


@triton.jit
def _fp16x2_group_dot(w, xp):
    """w [R, C] uint8 (C a multiple of 16: whole scale groups), xp [C] uint32 fp16 pairs as above
    -> [R, C / 16] fp32, each group's dot product in units of 2^-14 (times xp's scale).
    pack=16 hands one asm instance 16 consecutive elements of a thread: a whole group, because
    the weight load gives each thread 16-byte vectors (rows are K/2 bytes, K a multiple of 32);
    the GPU tests would fail if a layout ever split a group."""
    out = tl.inline_asm_elementwise(_FP16X2_GROUP_DOT, "=r," * 16 + "r," * 19 + "r",
                                    [w, tl.broadcast_to(xp[None, :], w.shape)], dtype=tl.float32, is_pure=True,
                                    pack=16)
    # Keep one of each group's 16 equal outputs: splits select registers (a reduce would emit adds).
    for n in tl.static_range(3, -1, -1):
        out, _ = tl.split(tl.reshape(out, [w.shape[0], w.shape[1] // 16, 1 << n, 2]))
    return tl.reshape(out, [w.shape[0], w.shape[1] // 16])


@triton.jit
def _x_scale_exponent(x_row, k0, k1, RANGE: tl.constexpr):
    """c with max|x[k0:k1]| * 2^c in [2^X16_TOP_EXPONENT, 2 x that), clamped to [-100, 100] (x all
    zero there); k1 - k0 <= RANGE."""
    k = k0 + tl.arange(0, triton.next_power_of_2(RANGE))
    m = tl.max(tl.abs(tl.load(x_row + k, mask=k < k1, other=0.0).to(tl.float32)), axis=0)
    e = (m.to(tl.int32, bitcast=True) >> 23) - 127
    return tl.minimum(tl.maximum(X16_TOP_EXPONENT - e, -100), 100)


@triton.jit
def _x_fp16_pairs(x_row, i, x_mul, K: tl.constexpr, BK: tl.constexpr, TAIL: tl.constexpr):
    """Step i's x as _FP16X2_GROUP_DOT pairs it: [BK/2] uint32, pair j = (x[8(j//4) + j%4], x[... + 4])
    times x_mul, in fp16. Gathered in x's own layout, once per program and step, before the
    broadcast to the weights' layout."""
    j = i * (BK // 2) + tl.arange(0, BK // 2)
    k = 2 * j - (j & 3)
    if TAIL:
        lo = tl.load(x_row + k, mask=k < K, other=0.0)
        hi = tl.load(x_row + k + 4, mask=k < K, other=0.0)
    else:
        lo, hi = tl.load(x_row + k), tl.load(x_row + k + 4)
    lo = (lo.to(tl.float32) * x_mul).to(tl.float16).to(tl.uint16, bitcast=True).to(tl.uint32)
    hi = (hi.to(tl.float32) * x_mul).to(tl.float16).to(tl.uint16, bitcast=True).to(tl.uint32)
    return lo | (hi << 16)


@triton.jit
def _gemv_step(acc, x_row, W, S, i, x_mul, K: tl.constexpr, BK: tl.constexpr, TAIL: tl.constexpr):
    """acc [BN, BK/32] += per scale group, scale * (group's 32 weights . x); step i of the reduction,
    the group sums in units of 2^-14 / x_mul (_fp16x2_group_dot)."""
    kw = i * (BK // 2) + tl.arange(0, BK // 2)[None, :]
    ks = i * (BK // 32) + tl.arange(0, BK // 32)[None, :]
    if TAIL:
        w = tl.load(W + kw, mask=kw < K // 2, other=0)
        s = tl.load(S + ks, mask=ks < K // 32, other=0)
    else:
        w, s = tl.load(W + kw), tl.load(S + ks)
    part = _fp16x2_group_dot(w, _x_fp16_pairs(x_row, i, x_mul, K, BK, TAIL))
    return acc + part * (s.to(tl.int32) << 23).to(tl.float32, bitcast=True)  # 2^(s - 127)


@triton.jit
def _gemv_kernel(X, stride_x, Logits, W, S, B, Out, alpha, limit, E: tl.constexpr, EP: tl.constexpr,
                 TOPK: tl.constexpr, KP: tl.constexpr, K: tl.constexpr, N: tl.constexpr, GATE_UP: tl.constexpr,
                 BN: tl.constexpr, BK: tl.constexpr, SPLIT: tl.constexpr):
    """Program (column tile, assignment a = token * TOPK + slot, K run sp): one activation row
    against BN rows of the expert routed from the token's logits, on CUDA cores, over reduction
    steps i0 .. i1 - 1 (GemvTiles.split). Each thread holds whole 32-value scale groups (16 bytes),
    so a group's 32 products sum in registers before its one scale.
    gate_up (SPLIT 1): X is the tokens, Out is h [A, N/2] bf16 (bias, SwiGLU, routing weight);
    down: X is h in assignment order, Out is [A * SPLIT, N] fp32, row a * SPLIT + sp (run 0 adds the
    routing-weighted bias)."""
    pid_n, a, sp = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    if SPLIT == 1:  # bounds known at compile time, as before split-K
        i0: tl.constexpr = 0
        i_full: tl.constexpr = K // BK
        tail: tl.constexpr = K % BK != 0
        k1: tl.constexpr = K
        RANGE: tl.constexpr = K
    else:
        STEPS: tl.constexpr = (K + BK - 1) // BK
        RANGE: tl.constexpr = (STEPS + SPLIT - 1) // SPLIT * BK  # the most inputs a run covers
        i0, i1 = sp * STEPS // SPLIT, (sp + 1) * STEPS // SPLIT
        i_full = tl.minimum(i1, K // BK)
        tail = i1 > K // BK  # K's masked tail step, in the last run
        k1 = tl.minimum(i1 * BK, K)
    e, wt = _routed_assignment(Logits, a, E, EP, TOPK, KP)
    x_row = X + ((a // TOPK).to(tl.int64) * stride_x if GATE_UP else a.to(tl.int64) * K)
    rows = pid_n * BN + tl.arange(0, BN)
    W = W + e.to(tl.int64) * N * (K // 2) + rows[:, None] * (K // 2)
    S = S + e.to(tl.int64) * N * (K // 32) + rows[:, None] * (K // 32)
    # x goes to fp16 times 2^c, and y comes back times 2^(14 - c). c from this run's x only: y is
    # rescaled per program, so any c that keeps the run's fp16 sums in range is correct; the run's
    # own max keeps more of its small x normal than the row's would, and reads K / split of x, not K.
    c = _x_scale_exponent(x_row, i0 * BK, k1, RANGE)
    x_mul = ((c + 127) << 23).to(tl.float32, bitcast=True)
    acc = tl.zeros([BN, BK // 32], tl.float32)
    for i in range(i0, i_full):
        acc = _gemv_step(acc, x_row, W, S, i, x_mul, K, BK, False)
    if tail:
        acc = _gemv_step(acc, x_row, W, S, K // BK, x_mul, K, BK, True)
    y = tl.sum(acc, axis=1) * ((141 - c) << 23).to(tl.float32, bitcast=True)
    if GATE_UP:
        h = _swiglu((y + tl.load(B + e * N + rows))[None, :], alpha, limit) * wt
        j = pid_n * (BN // 2) + tl.arange(0, BN // 2)
        tl.store(Out + a.to(tl.int64) * (N // 2) + j[None, :], h.to(Out.dtype.element_ty))
    else:
        bias = tl.load(B + e * N + rows, mask=sp == 0, other=0.0)
        tl.store(Out + (a * SPLIT + sp).to(tl.int64) * N + rows, y + wt * bias)


@triton.jit
def _combine_kernel(Parts, Y, N: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """Y[t] = the sum of Parts rows t * ROWS .. (t + 1) * ROWS - 1, in that order."""
    t = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < N
    y = tl.zeros([BLOCK], tl.float32)
    for s in tl.static_range(ROWS):
        y += tl.load(Parts + (t * ROWS + s).to(tl.int64) * N + cols, mask=ok, other=0.0)
    tl.store(Y + t.to(tl.int64) * N + cols, y.to(Y.dtype.element_ty), mask=ok)


def _rotl(v: np.ndarray, n: int) -> np.ndarray:
    return (v << np.uint32(n)) | (v >> np.uint32(32 - n))


def _fp16x2_decode_reference(q: np.ndarray) -> list[np.ndarray]:
    """_FP16X2_GROUP_DOT's decode, op for op: uint32 words (8 e2m1 codes each, low nibble first)
    -> the 4 fp16x2 weight pairs (uint32 bit patterns), pair i = nibble i of each 16-bit half."""
    q = q.astype(np.uint32)
    r = _rotl(q, 29)
    z02 = (q & np.uint32(0x08080808)) | (r & ~np.uint32(0x08080808))
    z13 = (q & np.uint32(0x80808080)) | (r & ~np.uint32(0x80808080))
    return [p & np.uint32(0x8E008E00) for p in (_rotl(z02, 12), z13 << np.uint32(8), z02 << np.uint32(4), z13)]


def _fp16x2_group_dot_reference(w: np.ndarray, xp: np.ndarray) -> np.ndarray:
    """What _FP16X2_GROUP_DOT computes on the GPU, bit for bit: w [..., C] uint8, xp [..., C] uint32
    -> [..., C] fp32, every 16 outputs their group's sum. fma.rn.f16x2 rounds once: the float64
    w * x + acc of fp16s is exact (its terms are at most 55 bits apart only where the smaller one is
    far below half an fp16 ulp of the larger), so rounding that to fp16 is the GPU's result."""
    words = np.ascontiguousarray(w).view(np.uint32).reshape(*w.shape[:-1], -1, 4)  # little-endian, as on the GPU
    pairs = np.stack(_fp16x2_decode_reference(words), axis=-1).reshape(*words.shape[:-1], 16)  # pair 4m + i

    def halves(v):  # uint32 fp16 pairs -> [..., 2] float64
        return np.stack([v & 0xFFFF, v >> 16], axis=-1).astype(np.uint16).view(np.float16).astype(np.float64)

    products = halves(pairs) * halves(xp.reshape(pairs.shape))  # exact: 2 x 11 significant bits
    acc = np.zeros(products.shape[:-2] + (2,), np.float16)
    for j in range(16):
        acc = (products[..., j, :] + acc).astype(np.float16)
    part = acc[..., 0].astype(np.float32) + acc[..., 1].astype(np.float32)
    return np.repeat(part, 16, axis=-1)


def _interpret_mx_ops() -> None:
    """Triton 3.6's interpreter has no tl.dot_scaled and runs no PTX: give it the ops used here,
    for e2m1, e4m3 and bf16 operands (e2m1 packed along K, E8M0 scales per 32), exact in fp32 as on
    the GPU, and the gemv's PTX group dot (with its fp16 roundings)."""
    from triton._C.libtriton import ir
    from triton.runtime import interpreter as it

    lut = np.array(E2M1_VALUES, np.float32)
    e4m3 = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).float().numpy()

    def operand(h, scale, fmt, k_axis):
        if fmt == ir.ScaleDotElemTypeTY.BF16:
            return (h.data.astype(np.uint32) << 16).view(np.float32)
        if fmt == ir.ScaleDotElemTypeTY.E4M3:
            v = e4m3[h.data]
        elif fmt == ir.ScaleDotElemTypeTY.E2M1:
            v = np.stack((lut[h.data & 15], lut[h.data >> 4]), axis=k_axis + 1)
            v = v.reshape((v.shape[0], -1) if k_axis == 1 else (-1, v.shape[2]))
        else:
            raise NotImplementedError(f"interpreted dot_scaled: format {fmt}")
        s = np.repeat(np.ldexp(np.float32(1), scale.data.astype(np.int32) - SCALE_BIAS), BLOCK, axis=1)
        return v * (s if k_axis == 1 else s.T).astype(np.float32)

    def create_dot_scaled(self, lhs, lhs_scale, lhs_fmt, rhs, rhs_scale, rhs_fmt, fast_math, lhs_k_pack,
                          rhs_k_pack, acc):
        out = operand(lhs, lhs_scale, lhs_fmt, 1) @ operand(rhs, rhs_scale, rhs_fmt, 0) + acc.data
        return it.TensorHandle(out.astype(np.float32), tl.float32)

    class Results(tuple):
        def get_result(self, i):
            return self[i]

    create_inline_asm = it.InterpreterBuilder.create_inline_asm

    def create_inline_asm_mx(self, asm, constraints, values, types, is_pure, pack):
        if asm == _FP16X2_GROUP_DOT.value:
            return Results([it.TensorHandle(_fp16x2_group_dot_reference(values[0].data, values[1].data), tl.float32)])
        return create_inline_asm(self, asm, constraints, values, types, is_pure, pack)

    it.InterpreterBuilder.create_dot_scaled = create_dot_scaled
    it.InterpreterBuilder.create_inline_asm = create_inline_asm_mx


if triton.knobs.runtime.interpret:
    _interpret_mx_ops()


def _launch_opts(t) -> dict:
    return dict(num_warps=t.num_warps, num_stages=t.num_stages)


def _combine(parts, rows, out_dtype):
    """[T * rows, N] fp32 -> [T, N], each token's `rows` consecutive rows summed."""
    A, N = parts.shape
    y = torch.empty((A // rows, N), device=parts.device, dtype=out_dtype)
    _combine_kernel[(A // rows, triton.cdiv(N, COMBINE_BLOCK))](parts, y, N, rows, COMBINE_BLOCK)
    return y


def e2m1_as_e4m3(device: torch.device) -> bool:
    """Whether MXFP8 x MXFP4 products on this device widen the weights to e4m3 first."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] in E2M1_AS_E4M3_MAJORS


def _split(x: torch.Tensor | MxTensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(values, scales or None) of a bf16 or MXFP8 operand."""
    return (x.values, x.scales) if isinstance(x, MxTensor) else (x, None)


def gate_up_grouped(x: torch.Tensor | MxTensor, routing, w, spec, tiles: Tiles) -> torch.Tensor | MxTensor:
    """h [T*k, I] in expert-sorted row order: weight * swiglu(W1[e] x + b1[e]); bf16 from bf16 x,
    MXFP8 from MXFP8 x (quantised in the epilogue, which needs column tiles of whole 32-groups of h)."""
    xv, xs = _split(x)
    T, k, E = xv.shape[0], spec.num_experts_per_tok, w.blocks.shape[0]
    t = tiles.fit(w.n, w.k)
    A = T * k
    num_m = triton.cdiv(A, t.bm) + min(E, A)
    if xs is None:
        h, hs = torch.empty((A, w.n // 2), device=xv.device, dtype=torch.bfloat16), None
    elif t.bn % 64:
        raise ValueError(f"gate_up: MXFP8 output needs column tiles of a multiple of 64 rows, got {t.bn} "
                         f"(tiles {tiles.bn} fitted to {w.n} rows)")
    else:
        h, hs = mxfp8.empty(A, w.n // 2, xv.device)
    _gate_up_kernel[(num_m * (w.n // t.bn),)](
        xv, xv.stride(0), xs, routing.order, routing.offsets, routing.weights, w.blocks, w.scales, w.bias, h, hs,
        num_m, spec.swiglu_alpha, spec.swiglu_limit, E, triton.next_power_of_2(E), k, w.k, w.n, t.bm, t.bn, t.bk,
        t.swap, t.group_m, xs is not None and e2m1_as_e4m3(xv.device), **_launch_opts(t))
    return h if hs is None else MxTensor(h, hs)


def down_grouped(h: torch.Tensor | MxTensor, routing, w, spec, tiles: Tiles, out_dtype=torch.bfloat16,
                 reduce=None) -> torch.Tensor:
    """y [T, H]: per token, the sum over its experts of W2[e] h + weight * b2[e].
    reduce: called on the fp32 (token, slot) rows before they are combined, in place (expert
    parallel: the routing holds this rank's experts only, their rows are summed over the ranks, and
    the rows of other ranks' experts must start at zero)."""
    hv, hs = _split(h)
    A, k, E = hv.shape[0], spec.num_experts_per_tok, w.blocks.shape[0]
    t = tiles.fit(w.n, w.k)
    num_m = triton.cdiv(A, t.bm) + min(E, A)
    parts = (torch.empty if reduce is None else torch.zeros)((A, w.n), device=hv.device, dtype=torch.float32)
    _down_kernel[(num_m * (w.n // t.bn),)](
        hv, hs, routing.order, routing.offsets, routing.weights, w.blocks, w.scales, w.bias, parts, num_m, E,
        triton.next_power_of_2(E), w.k, w.n, t.bm, t.bn, t.bk, t.swap, t.group_m,
        hs is not None and e2m1_as_e4m3(hv.device), **_launch_opts(t))
    if reduce is not None:
        reduce(parts)
    return _combine(parts, k, out_dtype)


def _gemv(x, logits, w, spec, t: GemvTiles, out: torch.Tensor, gate_up: bool) -> torch.Tensor:
    """Launch _gemv_kernel with tiles t already fitted to w (down: out has A * t.split rows)."""
    k, E = spec.num_experts_per_tok, w.blocks.shape[0]
    _gemv_kernel[(w.n // t.bn, logits.shape[0] * k, t.split)](
        x, x.stride(0), logits, w.blocks, w.scales, w.bias, out, spec.swiglu_alpha, spec.swiglu_limit, E,
        triton.next_power_of_2(E), k, triton.next_power_of_2(k), w.k, w.n, gate_up, t.bn, t.bk, t.split,
        **_launch_opts(t))
    return out


def gate_up_gemv(x, logits, w, spec, tiles: GemvTiles) -> torch.Tensor:
    """h [T*k, I] bf16 in assignment order (token * k + slot), routed from the logits in-kernel."""
    if tiles.split > 1:
        raise ValueError(f"gate_up gemv: split {tiles.split} > 1 is for down only (the SwiGLU epilogue needs "
                         f"whole sums); use GemvTiles(..., split=1) for gate_up")
    h = torch.empty((x.shape[0] * spec.num_experts_per_tok, w.n // 2), device=x.device, dtype=torch.bfloat16)
    return _gemv(x, logits, w, spec, tiles.fit(w.n, w.k), h, True)


def down_gemv(h, logits, w, spec, tiles: GemvTiles, out_dtype=torch.bfloat16) -> torch.Tensor:
    """y [T, H] from h in assignment order: one program per (column tile, assignment, K run), then
    combine (k * split rows a token)."""
    t = tiles.fit(w.n, w.k)
    parts = torch.empty((h.shape[0] * t.split, w.n), device=h.device, dtype=torch.float32)
    return _combine(_gemv(h, logits, w, spec, t, parts, False), spec.num_experts_per_tok * t.split, out_dtype)
