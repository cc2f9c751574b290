"""The small kernels of triton_mxfp4 (residual + RMSNorm, YaRN RoPE + KV write, lm_head) against
their torch references: fresh random inputs, NaN-poisoned outputs, relative error by dtype. On a
CPU they run in Triton's interpreter."""

import math

import pytest
import torch

from backends.torch_ref.model import Rotary
from backends.triton_mxfp4.lm_head import lm_head, lm_head_ref
from backends.triton_mxfp4.norm_rope import add_rmsnorm, add_rmsnorm_ref, rope_kv, rope_ref, rope_table
from harness.model.spec import SPECS
from test_triton_moe import routable_x

DEV = "cuda" if torch.cuda.is_available() else "cpu"
NAN = float("nan")


def rel_err(out, ref):
    assert not out.isnan().any(), "output has NaN (unwritten or broken)"
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def randn(*shape, dtype=torch.bfloat16):
    return torch.randn(*shape, device=DEV).to(dtype)


@pytest.mark.parametrize("rows,hidden", [(1, 128), (5, 2880)])
@pytest.mark.parametrize("with_y", [False, True])
def test_add_rmsnorm(rows, hidden, with_y):
    x, y = 3 * randn(rows, hidden), randn(rows, hidden) if with_y else None
    w = 1 + 0.1 * randn(hidden)
    x_ref, t_ref = add_rmsnorm_ref(x.clone(), y, w, 1e-5)
    out = torch.full_like(x, NAN)
    add_rmsnorm(x, y, w, 1e-5, out=out)
    assert torch.equal(x, x_ref), "the residual stream must be x + y rounded once to bf16"
    assert rel_err(out, t_ref) < 1e-2


def test_add_rmsnorm_strided_rows():
    """The engine normalises the last token of each prompt, a row view with a stride."""
    x, y, w = randn(6, 128), randn(6, 128), 1 + 0.1 * randn(128)
    x_ref, t_ref = add_rmsnorm_ref(x[2::3].clone(), y[2::3], w, 1e-5)
    t = add_rmsnorm(x[2::3], y[2::3], w, 1e-5)
    assert torch.equal(x[2::3], x_ref) and rel_err(t, t_ref) < 1e-2


def test_rope_table_is_yarn_of_the_reference():
    spec = SPECS["gpt-oss-20b"]
    cos, sin = rope_table(spec, 5000, "cpu")
    conc = 0.1 * math.log(spec.rope_scaling.factor) + 1
    torch.testing.assert_close(cos ** 2 + sin ** 2, torch.full_like(cos, conc ** 2))
    # the oracle's rotary on unit vectors gives the same table
    pos = torch.tensor([0, 1, 777, 4999])
    x = torch.zeros(1, 4, 1, 64)  # [B, T, heads, D]
    x[..., 5] = 1  # first half, dimension 5: rotates into (cos, sin) of frequency 5
    got = Rotary(spec, torch.device("cpu"))(x, pos)
    torch.testing.assert_close(got[0, :, 0, 5], cos[pos, 5])
    torch.testing.assert_close(got[0, :, 0, 37], sin[pos, 5])


@pytest.mark.parametrize("spec_name", ["gpt-oss-tiny", "gpt-oss-20b"])
@pytest.mark.parametrize("batch,tokens,slots", [(2, 7, 32), (2, 20, 16), (3, 1, 16)])
def test_rope_kv_rotates_and_writes_the_cache(spec_name, batch, tokens, slots):
    spec = SPECS[spec_name].with_(sliding_window=16)
    Hq, Hkv, D = spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim
    cos, sin = rope_table(spec, 64, DEV)
    pos0 = torch.randint(0, 64 - tokens, (batch,), device=DEV, dtype=torch.int32)
    if tokens > 1:
        pos0.zero_()  # a prompt starts at 0
    qkv = randn(batch * tokens, (Hq + 2 * Hkv) * D)
    before = qkv.clone()
    k_cache = torch.full((batch + 1, Hkv, slots, D), NAN, device=DEV, dtype=torch.bfloat16)
    v_cache = torch.full_like(k_cache, NAN)
    rope_kv(qkv, pos0, tokens, cos, sin, k_cache, v_cache, spec)

    pos = (pos0[:, None] + torch.arange(tokens, device=DEV)).flatten()
    q, k, v = before.split([Hq * D, Hkv * D, Hkv * D], dim=1)
    q_ref = rope_ref(q.view(-1, Hq, D), pos, cos, sin)
    k_ref = rope_ref(k.view(-1, Hkv, D), pos, cos, sin)
    assert rel_err(qkv[:, :Hq * D].view(-1, Hq, D), q_ref) < 1e-2
    assert rel_err(qkv[:, Hq * D:(Hq + Hkv) * D].view(-1, Hkv, D), k_ref) < 1e-2
    assert torch.equal(qkv[:, (Hq + Hkv) * D:], v), "v is not rotated"

    written = torch.zeros(batch + 1, slots, dtype=torch.bool)
    for b in range(batch):
        for t in range(max(0, tokens - slots), tokens):  # the last `slots` tokens reach the cache
            row, p = b * tokens + t, int(pos[b * tokens + t])
            assert rel_err(k_cache[b, :, p % slots], k_ref[row]) < 1e-2
            assert torch.equal(v_cache[b, :, p % slots], v[row].view(Hkv, D))
            written[b, p % slots] = True
    untouched = ~written.to(DEV)[:, None, :]  # [batch, 1 (heads), slots]
    for cache in (k_cache, v_cache):
        assert cache.isnan().all(-1).eq(untouched).all(), "wrote outside its slots"


@pytest.mark.parametrize("rows", [1, 3, 40])
def test_lm_head(rows):
    vocab, hidden = 1000, 128  # a vocabulary that ends mid-tile
    x, w = randn(rows, hidden), randn(vocab, hidden) / math.sqrt(hidden)
    out = torch.full((rows, vocab), NAN, device=DEV)
    lm_head(x, w, out=out)
    assert rel_err(out, lm_head_ref(x, w)) < 1e-5  # fp32 accumulation of exact bf16 products


@pytest.mark.parametrize("tokens", [1, 37])
def test_moe_dense_matches_the_moe_reference(tokens):
    from backends.triton_mxfp4.moe import moe_reference
    from backends.triton_mxfp4.moe_dense import moe_dense, prepare_dense_experts
    from harness.model import mxfp4

    spec = SPECS["gpt-oss-tiny"]
    E, H, I = spec.num_local_experts, spec.hidden_size, spec.intermediate_size
    router_w, router_b = randn(E, H) / math.sqrt(H), 0.1 * randn(E)
    x = routable_x(tokens, spec, router_w, router_b)
    mats = {}
    for kind, (n, k) in {"gate_up": (2 * I, H), "down": (H, I)}.items():
        blocks = torch.randint(0, 256, (E, n, k // 32, 16), device=DEV, dtype=torch.uint8)
        scales = torch.randint(118, 123, (E, n, k // 32), device=DEV, dtype=torch.uint8)
        mats[kind] = (blocks, scales, 0.1 * randn(E, n))
    dense = {kind: prepare_dense_experts(mxfp4.dequantize(b, s), bias) for kind, (b, s, bias) in mats.items()}
    out = moe_dense(x, router_w, router_b, dense["gate_up"], dense["down"], spec)
    ref = moe_reference(x, router_w, router_b, mats["gate_up"], mats["down"], spec)
    assert rel_err(out, ref) < 2e-2
