"""MXFP8 activations for quant=mxfp4_mxfp8: e4m3 values, one E8M0 scale (bias 127) per 32 along K,
the operand format of Blackwell's block-scaled MMA (kind::mxf8f6f4) beside the MXFP4 weights.

Producers quantise in their epilogues with `_quantize_groups` (add_rmsnorm for the MoE input,
the gate_up GEMM for the down GEMM's input); `quantize_reference` is the same rule in torch.

The scale of a group is the smallest power of two that brings its largest magnitude within
e4m3's 448, so no element saturates (the rounding-up rule of NVIDIA's MXFP8 recipe; the OCP
spec's floor(log2 amax) - 8 would clip the group maximum when its mantissa exceeds 1.75). Values
are rounded to nearest even. Each element then differs from its input by at most 2^-4 of itself
(3 mantissa bits), or by 2^-10 of the scale where it falls in e4m3's subnormal range (below 2^-6).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

GROUP = 32
E4M3_MAX_MANTISSA = tl.constexpr(0x600000)  # fp32 mantissa bits of 1.75: 448 = 1.75 * 2^8
SCALE_BIAS = 127


class MxTensor(NamedTuple):
    values: torch.Tensor  # [R, K] float8_e4m3fn
    scales: torch.Tensor  # [R, K/32] uint8 E8M0

    def rows(self, start: int, stop: int) -> "MxTensor":
        return MxTensor(self.values[start:stop], self.scales[start:stop])


def empty(rows: int, k: int, device) -> MxTensor:
    if k % GROUP:
        raise ValueError(f"MXFP8: K={k} is not a multiple of the group {GROUP}")
    return MxTensor(torch.empty((rows, k), device=device, dtype=torch.float8_e4m3fn),
                    torch.empty((rows, k // GROUP), device=device, dtype=torch.uint8))


@triton.jit
def _quantize_groups(v):
    """v [R, G, 32] fp32 -> (e4m3 values [R, G, 32], E8M0 scales [R, G] uint8). The scale exponent
    comes from the bits of the group's max magnitude m * 2^E: E - 8, or E - 7 when m > 1.75."""
    amax = tl.max(tl.abs(v), axis=2)
    bits = amax.to(tl.int32, bitcast=True)
    code = ((bits >> 23) & 0xFF) - 8 + ((bits & 0x7FFFFF) > E4M3_MAX_MANTISSA).to(tl.int32)
    code = tl.minimum(tl.maximum(code, 1), 254)  # all-zero groups take the smallest normal scale
    inv = ((254 - code) << 23).to(tl.float32, bitcast=True)  # 2^(127 - code), exact
    return (v * inv[:, :, None]).to(tl.float8e4nv), code.to(tl.uint8)


def quantize_reference(x: torch.Tensor) -> MxTensor:
    """The same rule in torch: x [..., K] -> MxTensor of the same leading shape."""
    v = x.float().reshape(*x.shape[:-1], x.shape[-1] // GROUP, GROUP)
    mant, exp = torch.frexp(v.abs().amax(-1))  # amax = mant * 2^exp, mant in [0.5, 1)
    code = torch.where(mant > 0, exp - 1 + SCALE_BIAS - 8 + (mant > 0.875).int(), 1).clamp(1, 254)
    scale = torch.ldexp(torch.ones_like(mant), code - SCALE_BIAS)
    values = (v / scale[..., None]).to(torch.float8_e4m3fn).reshape(x.shape)
    return MxTensor(values, code.to(torch.uint8))


def dequantize(m: MxTensor) -> torch.Tensor:
    """fp32 values times their group's scale."""
    v = m.values.float().reshape(*m.scales.shape, GROUP)
    scale = torch.ldexp(torch.ones(m.scales.shape, device=v.device), m.scales.int() - SCALE_BIAS)
    return (v * scale[..., None]).reshape(m.values.shape)
