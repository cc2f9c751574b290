"""torch_ref, the numerical oracle: each block against the math written out again in numpy
(float64, loops), the KV cache against full recomputation, and the backend contract."""

import math

import numpy as np
import pytest
import torch

import backends.torch_ref.model as M
from harness.model.load_request import LoadRequest
from backends.torch_ref import TorchRef
from harness.model import mxfp4
from harness.model.spec import SPECS

TINY = SPECS["gpt-oss-tiny"]
CPU = torch.device("cpu")


class DictWeights:
    """A weights source over hand-built HF-named tensors."""

    def __init__(self, spec, tensors, quant):
        self.spec, self.tensors, self.quant = spec, tensors, quant

    def names(self):
        return list(self.tensors)

    def get(self, name, device="cpu"):
        return self.tensors[name].to(device)


def random_weights(spec, seed=0, quant="mxfp4"):
    """Random weights of O(1) effect per block (so a wrong formula shows), experts exactly
    representable in MXFP4 so the mxfp4 and bf16 layouts hold the same values."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, (shape, _) in spec.tensors("bf16").items():
        r = torch.randn(shape, generator=g)
        if "norm" in name:
            t = 1 + 0.1 * r
        elif name.endswith("bias"):
            t = 0.1 * r
        elif name.endswith(("embed_tokens.weight", "sinks")):
            t = r
        elif name.endswith(("gate_up_proj", "down_proj")):  # [E, in, out]
            blocks, scales = mxfp4.quantize(r.transpose(1, 2) / math.sqrt(shape[1]))
            if quant == "mxfp4":
                out[name + "_blocks"], out[name + "_scales"] = blocks, scales
                continue
            t = mxfp4.dequantize(blocks, scales, torch.float32).transpose(1, 2)
        else:
            t = r / math.sqrt(shape[-1])
        out[name] = t.bfloat16()
    return DictWeights(spec, out, quant)


def model(spec=TINY, seed=0, quant="mxfp4", packed=True):
    return M.GptOss(random_weights(spec, seed, quant), CPU, torch.float32, packed)


def np_weight(src, name):
    """A tensor of `src` as float64 numpy; MXFP4 experts dequantised to [E, out, in]."""
    if src.quant == "mxfp4" and name.endswith(("gate_up_proj", "down_proj")):
        return mxfp4.dequantize(src.get(name + "_blocks"), src.get(name + "_scales"), torch.float64).numpy()
    return src.get(name).double().numpy()


# ---- YaRN, SwiGLU -------------------------------------------------------------------------------

def test_yarn_matches_the_reference_numbers():
    spec = SPECS["gpt-oss-20b"]
    conc, inv_freq = M.yarn(spec)
    assert conc == pytest.approx(1.34657, abs=1e-5)  # 0.1 ln 32 + 1
    freq = 150000.0 ** (np.arange(32) * 2 / 64)
    low, high = 8.0928, 17.398  # gpt-oss.md D, from the reference formulas
    np.testing.assert_allclose(inv_freq[:9], 1 / freq[:9], rtol=1e-6)  # i <= low: extrapolation
    np.testing.assert_allclose(inv_freq[18:], 1 / (32 * freq[18:]), rtol=1e-6)  # i >= high: interpolation
    ramp = (np.arange(9, 18) - low) / (high - low)
    np.testing.assert_allclose(inv_freq[9:18], (1 / (32 * freq[9:18])) * ramp + (1 / freq[9:18]) * (1 - ramp),
                               rtol=2e-4)
    plain = M.yarn(spec.with_(rope_scaling=type(spec.rope_scaling)(factor=1.0)))
    assert plain[0] == 1.0 and torch.allclose(plain[1], torch.tensor(1 / freq, dtype=torch.float32))


def test_yarn_rejects_an_impossible_correction_range():
    with pytest.raises(ValueError, match="YaRN correction range"):
        M.yarn(TINY.with_(rope_theta=10.0))


def test_swiglu_clamps_at_the_limit_on_interleaved_rows():
    alpha, limit = TINY.swiglu_alpha, TINY.swiglu_limit
    silu = lambda g: g / (1 + math.exp(-alpha * g))  # noqa: E731
    cases = [  # (gate, up, expected)
        (limit - 0.5, 0.0, silu(limit - 0.5)),
        (limit, 0.0, silu(limit)),
        (limit + 3, 0.0, silu(limit)),  # gate clamped above
        (-10.0, 0.0, silu(-10.0)),  # but not below
        (1.0, -limit - 2, silu(1.0) * (1 - limit)),  # up clamped to [-limit, limit], plus one
        (1.0, limit + 2, silu(1.0) * (1 + limit)),
        (2.0, 0.5, silu(2.0) * 1.5),
    ]
    h = torch.tensor([[g, u] for g, u, _ in cases], dtype=torch.float64).reshape(-1)  # row 2i gate, 2i+1 up
    got = M.swiglu(h, alpha, limit)
    np.testing.assert_allclose(got.numpy(), [e for *_, e in cases], rtol=1e-12)


# ---- attention: hand-checked cases and a numpy re-derivation ------------------------------------

def test_sink_mass_and_window_boundary_by_hand():
    # q = 0 makes every visible key's logit 0: each visible key gets 1/(n + e^sink), the sink the rest.
    # v one-hot by position shows exactly which keys were visible.
    S, D, W, sink = 40, 64, 16, math.log(3.0)
    q = torch.zeros(1, 1, 1, D)
    k = torch.randn(1, 1, S, D)
    v = torch.eye(S, D)[None, None]
    for p in (0, 5, 15, 16, 39):
        full = M.attend(q, k[:, :, :p + 1], v[:, :, :p + 1], p, torch.tensor([sink]), 0, 0.125)[0, 0]
        expect = torch.zeros(D)
        expect[:p + 1] = 1 / (p + 1 + 3)
        torch.testing.assert_close(full, expect)
        slid = M.attend(q, k[:, :, :p + 1], v[:, :, :p + 1], p, torch.tensor([sink]), W, 0.125)[0, 0]
        n = min(p + 1, W)  # the window counts the query itself: keys p-15..p
        expect = torch.zeros(D)
        expect[p + 1 - n:p + 1] = 1 / (n + 3)
        torch.testing.assert_close(slid, expect)


def test_gqa_query_head_reads_kv_head_h_over_group():
    B, H, KV, D, T = 1, 8, 2, 32, 5
    q = torch.zeros(B, T, H, D)
    k = torch.randn(B, KV, T, D)
    v = torch.arange(1.0, KV + 1).view(1, KV, 1, 1).expand(B, KV, T, D)  # kv head j holds value j+1
    out = M.attend(q, k, v, 0, torch.full((H,), -1e9), 0, 1.0).view(B, T, H, D)
    expect = torch.tensor([h // (H // KV) + 1.0 for h in range(H)]).view(1, 1, H, 1).expand_as(out)
    torch.testing.assert_close(out, expect)


def np_rope(x, pos, spec):
    r, d = spec.rope_scaling, spec.head_dim
    freq = spec.rope_theta ** (np.arange(0, d, 2) / d)
    low, high = (d / 2 * math.log(r.original_max_position_embeddings / (b * 2 * math.pi)) / math.log(spec.rope_theta)
                 for b in (r.beta_fast, r.beta_slow))
    ramp = np.clip((np.arange(d // 2) - low) / (high - low), 0, 1)
    inv_freq = ramp / (r.factor * freq) + (1 - ramp) / freq
    conc = 0.1 * math.log(r.factor) + 1
    ang = pos[:, None, None] * inv_freq
    c, s = np.cos(ang) * conc, np.sin(ang) * conc
    x1, x2 = x[..., :d // 2], x[..., d // 2:]
    return np.concatenate((x1 * c - x2 * s, x2 * c + x1 * s), -1)


def np_attention(x, src, layer, spec):
    """One attention block (no norm, no residual) for x [T, H], written from the model card."""
    p = f"model.layers.{layer}.self_attn."
    w = {n: np_weight(src, p + n) for n in ("q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias",
                                            "v_proj.weight", "v_proj.bias", "o_proj.weight", "o_proj.bias", "sinks")}
    T, Dh, Hq, Hk = x.shape[0], spec.head_dim, spec.num_attention_heads, spec.num_key_value_heads
    pos = np.arange(T)
    q = np_rope((x @ w["q_proj.weight"].T + w["q_proj.bias"]).reshape(T, Hq, Dh), pos, spec)
    k = np_rope((x @ w["k_proj.weight"].T + w["k_proj.bias"]).reshape(T, Hk, Dh), pos, spec)
    v = (x @ w["v_proj.weight"].T + w["v_proj.bias"]).reshape(T, Hk, Dh)
    window = spec.sliding_window if layer % 2 == 0 else T
    o = np.zeros((T, Hq, Dh))
    for h in range(Hq):
        g = h // (Hq // Hk)
        for t in range(T):
            keys = range(max(0, t - window + 1), t + 1)
            logits = np.array([q[t, h] @ k[j, g] / math.sqrt(Dh) for j in keys] + [w["sinks"][h]])
            e = np.exp(logits - logits.max())
            prob = e[:-1] / e.sum()
            o[t, h] = sum(pj * v[j, g] for pj, j in zip(prob, keys))
    return o.reshape(T, -1) @ w["o_proj.weight"].T + w["o_proj.bias"]


@pytest.mark.parametrize("layer", [0, 1])  # sliding, full
def test_attention_block_matches_numpy_past_the_window(layer):
    spec = TINY.with_(name="tiny-2", num_hidden_layers=2)
    src = random_weights(spec, seed=3)
    m = M.GptOss(src, CPU, torch.float32, packed=True)
    T = 2 * spec.sliding_window + 5
    x = torch.randn(T, spec.hidden_size, generator=torch.Generator().manual_seed(1))
    got = m.layers[layer].self_attn(x[None], 0, None)[0]
    np.testing.assert_allclose(got.numpy(), np_attention(x.double().numpy(), src, layer, spec), rtol=1e-4, atol=1e-5)


def test_attention_ignores_keys_outside_the_window():
    spec = TINY.with_(name="tiny-2", num_hidden_layers=2)
    m = model(spec)
    W = spec.sliding_window
    x = torch.randn(1, 3 * W, spec.hidden_size)
    y = x.clone()
    y[:, :W] = torch.randn(1, W, spec.hidden_size)  # only keys more than W back from the last 2W queries
    a, b = (m.layers[0].self_attn(t, 0, None)[:, 2 * W - 1:] for t in (x, y))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    full = [m.layers[1].self_attn(t, 0, None)[:, -1] for t in (x, y)]
    assert not torch.allclose(*full)


# ---- MoE ----------------------------------------------------------------------------------------

def np_mlp(t, src, layer, spec):
    p = f"model.layers.{layer}.mlp."
    wr, br = np_weight(src, p + "router.weight"), np_weight(src, p + "router.bias")
    w1, b1 = np_weight(src, p + "experts.gate_up_proj"), np_weight(src, p + "experts.gate_up_proj_bias")
    w2, b2 = np_weight(src, p + "experts.down_proj"), np_weight(src, p + "experts.down_proj_bias")
    if src.quant == "bf16":  # [E, in, out] -> [E, out, in]
        w1, w2 = w1.transpose(0, 2, 1), w2.transpose(0, 2, 1)
    alpha, limit = spec.swiglu_alpha, spec.swiglu_limit
    out = np.zeros_like(t)
    for n, x in enumerate(t):
        logits = wr @ x + br
        top = np.argsort(-logits)[:spec.num_experts_per_tok]
        weights = np.exp(logits[top] - logits[top].max())
        weights /= weights.sum()
        for e, we in zip(top, weights):
            h = w1[e] @ x + b1[e]
            g, u = np.minimum(h[0::2], limit), np.clip(h[1::2], -limit, limit)
            out[n] += we * (w2[e] @ (g / (1 + np.exp(-alpha * g)) * (u + 1)) + b2[e])
    return out


@pytest.mark.parametrize("quant,packed", [("mxfp4", True), ("mxfp4", False), ("bf16", False), ("bf16", True)])
def test_moe_matches_numpy(quant, packed):
    src = random_weights(TINY, seed=5, quant=quant)
    m = M.GptOss(src, CPU, torch.float32, packed)
    t = torch.randn(2, 9, TINY.hidden_size, generator=torch.Generator().manual_seed(2))
    got = m.layers[2].mlp(t).reshape(-1, TINY.hidden_size)
    np.testing.assert_allclose(got.numpy(), np_mlp(t.reshape(-1, TINY.hidden_size).double().numpy(), src, 2, TINY),
                               rtol=1e-4, atol=1e-5)


def test_packed_and_dequantised_experts_give_identical_logits():
    tokens = torch.randint(0, TINY.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    ref = model(quant="mxfp4", packed=True)(tokens)
    for quant, packed in (("mxfp4", False), ("bf16", False), ("bf16", True)):
        torch.testing.assert_close(model(quant=quant, packed=packed)(tokens), ref, rtol=0, atol=0)


# ---- KV cache, batching, chunking ---------------------------------------------------------------

def test_prefill_then_decode_equals_full_recomputation_at_every_position():
    m = model()
    B, T0, T = 3, 7, 3 * TINY.sliding_window + 2  # decode well past the window
    tokens = torch.randint(0, TINY.vocab_size, (B, T), generator=torch.Generator().manual_seed(4))
    full = m(tokens)
    cache = M.KVCache(TINY, B + 1, T, CPU, torch.float32)
    steps = [m(tokens[:, :T0], 0, cache)] + [m(tokens[:, t:t + 1], t, cache) for t in range(T0, T)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)


def test_batch_rows_are_independent():
    m = model()
    tokens = torch.randint(0, TINY.vocab_size, (3, 20), generator=torch.Generator().manual_seed(6))
    batched = m(tokens)
    for b in range(3):
        torch.testing.assert_close(m(tokens[b:b + 1])[0], batched[b], rtol=1e-5, atol=1e-5)


def test_query_chunking_is_exact(monkeypatch):
    m = model()
    tokens = torch.randint(0, TINY.vocab_size, (2, 45), generator=torch.Generator().manual_seed(7))
    whole = m(tokens)
    # room for 3 query rows of scores at a time: chunks straddle the window on sliding layers
    monkeypatch.setattr(M, "_SCORE_BYTES", 2 * TINY.num_attention_heads * 45 * 4 * 3)
    torch.testing.assert_close(m(tokens), whole, rtol=1e-5, atol=1e-5)


def test_cache_overflow_names_the_limits():
    m = model()
    cache = M.KVCache(TINY, 2, 8, CPU, torch.float32)
    with pytest.raises(ValueError, match="batch 2 x 8 positions"):
        m(torch.zeros(2, 9, dtype=torch.long), 0, cache)
    with pytest.raises(ValueError, match="asked for batch 3"):
        m(torch.zeros(3, 4, dtype=torch.long), 0, cache)


def test_a_wrong_shaped_tensor_is_named():
    src = random_weights(TINY)
    src.tensors["model.layers.1.self_attn.sinks"] = torch.zeros(3, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"model.layers.1.self_attn.sinks: shape \(3,\), expected \(8,\)"):
        M.GptOss(src, CPU, torch.float32, packed=True)


# ---- the backend on synthetic weights -----------------------------------------------------------

def load(seed=0, quant="mxfp4", batch=2, seq=48, **options):
    ref = TorchRef(device="cpu", **options)
    ref.load(LoadRequest(TINY, quant, None, seed=seed, device="cpu", max_batch_size=batch, max_seq_len=seq))
    return ref


def prompts(batch=2, T=20, seed=0):
    return torch.randint(0, TINY.vocab_size, (batch, T), generator=torch.Generator().manual_seed(seed))


def test_generate_with_forced_tokens_picks_the_argmax_of_full_logits():
    ref = load()
    p, new = prompts(), 24  # 20 + 24 tokens: past the window of 16 twice
    forced = torch.randint(0, TINY.vocab_size, (2, new - 1), generator=torch.Generator().manual_seed(9))
    gen = ref.generate(p, new, forced=forced)
    assert gen.tokens.shape == (2, new) and len(gen.step_ms) == new - 1
    logits = ref.logits(torch.cat((p, forced), 1))
    assert torch.equal(gen.tokens, logits[:, p.shape[1] - 1:].argmax(-1))
    assert logits.dtype == torch.float32 and logits.shape == (2, p.shape[1] + new - 1, TINY.vocab_size)


def test_free_running_generation_is_deterministic_by_seed():
    a, b, c = (load(seed=s).generate(prompts(), 12).tokens for s in (0, 0, 1))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_prefill_resets_the_cache_and_decode_checks_the_batch():
    ref = load()
    first = ref.generate(prompts(seed=1), 6).tokens
    ref.generate(prompts(seed=2), 6)
    assert torch.equal(ref.generate(prompts(seed=1), 6).tokens, first)
    with pytest.raises(ValueError, match=r"expected \(2,\)"):
        ref.decode(torch.zeros(3, dtype=torch.long))


def test_memory_and_options():
    ref = load(batch=2, seq=48)
    mem = ref.memory()
    kv = TINY.num_hidden_layers * 2 * 2 * 48 * TINY.kv_dim * 4  # fp32 on CPU
    assert mem["kv_cache_gib"] == pytest.approx(kv / 2**30)
    assert mem["weights_gib"] > TINY.weight_bytes("mxfp4") / 2**30  # dense weights are fp32 on CPU
    assert load(dtype="bfloat16").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype='half'"):
        TorchRef(dtype="half")
    with pytest.raises(ValueError, match="quant='fp8'"):
        TorchRef(device="cpu").load(LoadRequest(TINY, "fp8", None, device="cpu"))


def assert_bf16_close(got, fp32):
    """bf16 activations against the fp32 oracle: about 1-2% relative error on the tiny model."""
    assert ((got - fp32).norm() / fp32.norm()).item() < 3e-2
    assert (got.argmax(-1) == fp32.argmax(-1)).float().mean().item() >= 0.95


def test_bf16_compute_stays_close_to_fp32():
    tokens = prompts(2, 40)
    assert_bf16_close(load(dtype="bfloat16").logits(tokens), load().logits(tokens))


@pytest.mark.gpu
def test_gpu_bf16_agrees_with_cpu_fp32():
    tokens = prompts(2, 40)
    gpu = TorchRef()
    gpu.load(LoadRequest(TINY, "mxfp4", None, device="cuda", max_batch_size=2, max_seq_len=48))
    assert gpu.dtype == torch.bfloat16
    assert_bf16_close(gpu.logits(tokens).cpu(), load().logits(tokens))
