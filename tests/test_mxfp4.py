"""The MXFP4 codec against the checkpoint's bit layout: E2M1 codes, nibble order, E8M0 scales."""

import math

import pytest
import torch

from harness.model import mxfp4
from harness.model.mxfp4 import E2M1_VALUES, dequantize, quantize


def test_every_byte_decodes_to_its_two_e2m1_codes_low_nibble_first():
    blocks = torch.arange(256, dtype=torch.uint8).view(16, 1, 16)  # all byte values, 16 per row
    out = dequantize(blocks, torch.full((16, 1), 127, dtype=torch.uint8), torch.float32).view(-1, 2)
    for byte in range(256):
        low, high = out[byte].tolist()
        assert low == E2M1_VALUES[byte & 0xF] and high == E2M1_VALUES[byte >> 4], byte
        assert math.copysign(1, low) == math.copysign(1, E2M1_VALUES[byte & 0xF])  # -0.0 keeps its sign


def test_e2m1_table_is_sign_exponent_mantissa():
    for code, value in enumerate(E2M1_VALUES):
        sign, exp, man = code >> 3, (code >> 1) & 3, code & 1
        magnitude = man * 0.5 if exp == 0 else (1 + man / 2) * 2.0 ** (exp - 1)
        assert value == (-magnitude if sign else magnitude)


def test_every_scale_byte_is_a_power_of_two_with_bias_127():
    scales = torch.arange(255, dtype=torch.uint8).view(255, 1)
    blocks = torch.full((255, 1, 16), 0xA1, dtype=torch.uint8)  # codes 1 (0.5) and 10 (-1.0)
    out = dequantize(blocks, scales, torch.float32)
    for s in range(255):
        assert out[s, 0].item() == math.ldexp(0.5, s - 127)
        assert out[s, 1].item() == math.ldexp(-1.0, s - 127)


def test_quantize_packs_even_elements_in_the_low_nibble():
    w = torch.tensor([[0.5, -6.0] * 16])  # amax 6: scale 2^0
    blocks, scales = quantize(w)
    assert blocks.shape == (1, 1, 16) and scales.shape == (1, 1)
    assert scales.item() == 127
    assert (blocks == (0xF << 4 | 0x1)).all()  # -6.0 is code 15 (high), 0.5 code 1 (low)


def test_round_trip_of_representable_weights_is_exact():
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (3, 64, 4, 16), dtype=torch.uint8, generator=g)
    scales = torch.randint(100, 150, (3, 64, 4), dtype=torch.uint8, generator=g)
    w = dequantize(blocks, scales, torch.float32)
    assert w.shape == (3, 64, 128)
    assert torch.equal(dequantize(*quantize(w), torch.float32), w)
    assert torch.equal(dequantize(*quantize(w.bfloat16()), torch.float32), w)  # E2M1 x 2^k is a bf16 value


def test_quantize_error_is_at_most_half_a_step_of_the_block():
    w = torch.randn(256, 256, generator=torch.Generator().manual_seed(1)) * 0.02
    blocks, scales = quantize(w)
    err = (dequantize(blocks, scales, torch.float32) - w).abs()
    step = torch.ldexp(torch.ones(scales.shape), scales.int() - 127).repeat_interleave(32, -1)  # one scale unit
    m = w.abs() / step  # magnitude in E2M1 units; the grid spacing is 0.5 below 2, 1 below 4, 2 up to 6
    half_spacing = torch.where(m < 2, 0.25, torch.where(m < 4, 0.5, 1.0))
    assert (err <= half_spacing * step * (1 + 1e-6)).all()
    assert (m <= 6).all()  # the scale never lets a value saturate


def test_scale_never_255_even_for_huge_values_and_zero_blocks_are_zero():
    w = torch.zeros(2, 64)
    w[0, :32] = 3e38
    blocks, scales = quantize(w)
    assert scales.max().item() <= 254
    assert scales[1].tolist() == [0, 0] and scales[0, 1].item() == 0 and (blocks[1] == 0).all()
    assert (dequantize(blocks, scales, torch.float32)[1] == 0).all()


def test_chunked_equals_unchunked(monkeypatch):
    w = torch.randn(4, 37, 96, generator=torch.Generator().manual_seed(2))
    whole = quantize(w)
    whole_w = dequantize(*whole, torch.bfloat16)
    monkeypatch.setattr(mxfp4, "_ROWS_PER_CHUNK", 5)
    chunked = quantize(w)
    assert torch.equal(chunked[0], whole[0]) and torch.equal(chunked[1], whole[1])
    assert torch.equal(dequantize(*whole, torch.bfloat16), whole_w)


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize(torch.zeros(2, 48))
    with pytest.raises(TypeError, match="uint8"):
        dequantize(torch.zeros(1, 1, 16), torch.zeros(1, 1, dtype=torch.uint8))
    with pytest.raises(ValueError, match="do not match"):
        dequantize(torch.zeros(1, 2, 16, dtype=torch.uint8), torch.zeros(1, 3, dtype=torch.uint8))
