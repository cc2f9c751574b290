"""MXFP4 in the layout GPT-OSS checkpoints use.

A matrix W [..., out, in] is stored as
  blocks [..., out, in/32, 16] uint8: byte j of block g holds W[..., 32g+2j] in its low nibble and
                                      W[..., 32g+2j+1] in its high nibble, as E2M1 codes;
  scales [..., out, in/32]     uint8: E8M0 exponents with bias 127 (255, NaN in OCP, never written).
Value = E2M1[code] * 2^(scale - 127).
"""

from __future__ import annotations

import torch

BLOCK = 32
SCALE_BIAS = 127
# E2M1 by 4-bit code: bit 3 sign, bits 2-1 exponent (bias 1), bit 0 mantissa.
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
# Midpoints between consecutive positive E2M1 magnitudes: round-to-nearest boundaries.
_BOUNDS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
_ROWS_PER_CHUNK = 1 << 14  # bounds the fp32 temporaries: 16k rows of a 2880-wide matrix is ~180 MB


def dequantize(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """blocks [..., out, G, 16] and scales [..., out, G] -> W [..., out, 32G] in `dtype`."""
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise TypeError(f"MXFP4 blocks/scales must be uint8, got {blocks.dtype}/{scales.dtype}")
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != BLOCK // 2:
        raise ValueError(f"MXFP4 blocks {tuple(blocks.shape)} do not match scales {tuple(scales.shape)}: "
                         f"expected blocks = scales.shape + ({BLOCK // 2},)")
    *lead, G, _ = blocks.shape
    lut = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=blocks.device)
    flat_b, flat_s = blocks.reshape(-1, G, BLOCK // 2), scales.reshape(-1, G)
    out = torch.empty(flat_b.shape[0], G, BLOCK, dtype=dtype, device=blocks.device)
    for i in range(0, flat_b.shape[0], _ROWS_PER_CHUNK):
        b, s = flat_b[i:i + _ROWS_PER_CHUNK], flat_s[i:i + _ROWS_PER_CHUNK]
        vals = torch.stack((lut[(b & 0x0F).int()], lut[(b >> 4).int()]), dim=-1).reshape(*b.shape[:-1], BLOCK)
        out[i:i + _ROWS_PER_CHUNK] = torch.ldexp(vals, s.int().unsqueeze(-1) - SCALE_BIAS).to(dtype)
    return out.reshape(*lead, G * BLOCK)


def quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W [..., out, in] (in a multiple of 32) -> (blocks, scales), round to nearest E2M1.

    The scale of a block is the smallest power of two that brings its largest magnitude to at
    most 6 (the E2M1 maximum), so no value saturates."""
    if w.shape[-1] % BLOCK:
        raise ValueError(f"MXFP4 quantize: last dimension {w.shape[-1]} is not a multiple of {BLOCK}")
    *lead, K = w.shape
    G = K // BLOCK
    flat = w.reshape(-1, G, BLOCK)
    blocks = torch.empty(flat.shape[0], G, BLOCK // 2, dtype=torch.uint8, device=w.device)
    scales = torch.empty(flat.shape[0], G, dtype=torch.uint8, device=w.device)
    bounds = torch.tensor(_BOUNDS, dtype=torch.float32, device=w.device)
    for i in range(0, flat.shape[0], _ROWS_PER_CHUNK):
        x = flat[i:i + _ROWS_PER_CHUNK].float()
        amax = x.abs().amax(-1)
        exp = torch.ceil(torch.log2(amax.clamp_min(2.0 ** -126) / 6.0)).clamp(-SCALE_BIAS, 127)
        exp = torch.where(amax > 0, exp, torch.full_like(exp, -SCALE_BIAS))
        mag = torch.ldexp(x.abs(), (-exp).int().unsqueeze(-1))
        code = torch.bucketize(mag, bounds).to(torch.uint8) | ((x < 0).to(torch.uint8) << 3)
        blocks[i:i + _ROWS_PER_CHUNK] = code[..., 0::2] | (code[..., 1::2] << 4)
        scales[i:i + _ROWS_PER_CHUNK] = (exp + SCALE_BIAS).to(torch.uint8)
    return blocks.reshape(*lead, G, BLOCK // 2), scales.reshape(*lead, G)
