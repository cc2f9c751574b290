"""Attention kernels of triton_mxfp4 against the fp32 torch reference: fresh random inputs, outputs
poisoned with NaN before each run, relative error by dtype. On a CPU they run in Triton's
interpreter."""

import pytest
import torch

from backends.triton_mxfp4.attention import (KVCache, attention_decode, attention_prefill, attention_ref,
                                             decode_splits)
from harness.model.spec import SPECS

DEV = "cuda" if torch.cuda.is_available() else "cpu"
BF16_TOL = 1e-2


def rel_err(out, ref):
    assert not out.isnan().any(), "output has NaN (unwritten or broken)"
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def randn(*shape):
    return torch.randn(*shape, device=DEV).bfloat16()


# (query heads, kv heads, head_dim): the tiny model's shape and GPT-OSS's group of 8 at head_dim 64
SHAPES = [(8, 2, 32), (16, 2, 64)]


@pytest.mark.parametrize("heads,kv_heads,dim", SHAPES)
@pytest.mark.parametrize("window", [0, 16])
def test_prefill_matches_reference(heads, kv_heads, dim, window):
    B, T = 2, 83  # T spans two key blocks and ends mid-tile
    qkv = randn(B * T, (heads + 2 * kv_heads) * dim)
    q, k, v = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=1)
    sinks = torch.randn(heads, device=DEV)
    out = torch.full((B * T, heads * dim), float("nan"), device=DEV, dtype=torch.bfloat16)
    attention_prefill(q, k, v, sinks, B, window, out=out)
    for b in range(B):
        rows = slice(b * T, (b + 1) * T)
        ref = attention_ref(q[rows].view(T, heads, dim), k[rows].view(T, kv_heads, dim),
                            v[rows].view(T, kv_heads, dim), sinks, window)
        assert rel_err(out[rows].view(T, heads, dim), ref) < BF16_TOL


def test_prefill_sink_takes_mass():
    """A large sink leaves almost nothing for the values; a very negative one changes nothing."""
    T, heads, dim = 5, 8, 32
    qkv = randn(T, (heads + 4) * dim)
    q, k, v = qkv.split([heads * dim, 2 * dim, 2 * dim], dim=1)
    big = attention_prefill(q, k, v, torch.full((heads,), 30.0, device=DEV), 1, 0)
    none = attention_prefill(q, k, v, torch.full((heads,), -1e4, device=DEV), 1, 0)
    assert big.float().abs().max() < 1e-6
    ref = attention_ref(q.view(T, heads, dim), k.view(T, 2, dim), v.view(T, 2, dim),
                        torch.full((heads,), -1e4, device=DEV), 0)
    assert rel_err(none.view(T, heads, dim), ref) < BF16_TOL


def fill_cache(k_cache, v_cache, b, keys, values):
    """Write keys/values [S, kv_heads, D] of positions 0..S-1 into row b of a cache the way the engine
    does (slot = position % slots; later positions overwrite earlier ones)."""
    slots = k_cache.shape[2]
    for p in range(keys.shape[0]):
        k_cache[b, :, p % slots] = keys[p]
        v_cache[b, :, p % slots] = values[p]


@pytest.mark.parametrize("heads,kv_heads,dim", SHAPES)
@pytest.mark.parametrize("window,splits", [(0, 1), (0, 4), (0, 8), (16, 1), (16, 2)])
def test_decode_matches_reference(heads, kv_heads, dim, window, splits):
    positions = [0, 9, 70, 200]  # before and after a sliding ring wraps; a split with no keys at 0
    max_len = 256
    slots = window or max_len
    k_cache = torch.full((len(positions) + 1, kv_heads, slots, dim), float("nan"), device=DEV, dtype=torch.bfloat16)
    v_cache = torch.full_like(k_cache, float("nan"))
    q = randn(len(positions), heads * dim)
    sinks = torch.randn(heads, device=DEV)
    seqs = []
    for b, p in enumerate(positions):
        keys, values = randn(p + 1, kv_heads, dim), randn(p + 1, kv_heads, dim)
        fill_cache(k_cache, v_cache, b, keys, values)
        seqs.append((keys, values))
    pos = torch.tensor(positions, device=DEV, dtype=torch.int32)
    out = torch.full((len(positions), heads * dim), float("nan"), device=DEV, dtype=torch.bfloat16)
    attention_decode(q, k_cache, v_cache, sinks, pos, splits, out=out)
    for b, (p, (keys, values)) in enumerate(zip(positions, seqs)):
        ref = attention_ref(q[b].view(1, heads, dim), keys, values, sinks, window, q_start=p)
        assert rel_err(out[b].view(1, heads, dim), ref) < BF16_TOL, f"position {p}"


def test_decode_reads_strided_queries():
    """The engine passes q as a row view of the qkv buffer."""
    heads, kv_heads, dim, p = 8, 2, 32, 40
    qkv = randn(3, (heads + 2 * kv_heads) * dim)
    q = qkv[:, :heads * dim]
    k_cache, v_cache = randn(3, kv_heads, 64, dim), randn(3, kv_heads, 64, dim)
    sinks = torch.randn(heads, device=DEV)
    pos = torch.full((3,), p, device=DEV, dtype=torch.int32)
    out = attention_decode(q, k_cache, v_cache, sinks, pos, 2)
    for b in range(3):
        ref = attention_ref(q[b].view(1, heads, dim), k_cache[b, :, :p + 1].transpose(0, 1),
                            v_cache[b, :, :p + 1].transpose(0, 1), sinks, 0, q_start=p)
        assert rel_err(out[b].view(1, heads, dim), ref) < BF16_TOL


def test_kv_cache_sliding_layers_hold_only_the_window():
    spec = SPECS["gpt-oss-tiny"]
    cache = KVCache(spec, 3, 100, "cpu")
    for layer in range(spec.num_hidden_layers):
        assert cache.k[layer].shape == (3, spec.num_key_value_heads, spec.window(layer) or 100, spec.head_dim)
    per_token_layer = 2 * spec.kv_dim * 2
    assert cache.nbytes == 3 * per_token_layer * (spec.num_sliding_layers * spec.sliding_window
                                                  + spec.num_full_layers * 100)


def test_decode_splits_fill_the_gpu_only_when_there_is_work():
    assert decode_splits(1, 8, 131072, 132) == 128  # 4 programs per SM over 8 heads, rounded up
    assert decode_splits(64, 8, 131072, 132) == 2
    assert decode_splits(1, 8, 128, 132) == 1  # a sliding ring is one short split
    assert decode_splits(1, 8, 1024, 132) == 4


def test_bad_shapes_are_named():
    q = randn(4, 100)
    with pytest.raises(ValueError, match="q"):
        attention_prefill(q, q, q, torch.zeros(8, device=DEV), 1, 0)
