"""Synthetic weights: deterministic, device-independent, well-scaled, peaked, skewable, cached."""

import json
import math

import pytest
import torch

from harness.model import mxfp4, synthetic
from harness.model.checkpoint import TORCH_DTYPES, Checkpoint
from harness.model.spec import SPECS
from harness.model.synthetic import SyntheticWeights, synthetic_checkpoint

TINY = SPECS["gpt-oss-tiny"]


@pytest.fixture(scope="module")
def tiny():
    w = SyntheticWeights(TINY, seed=0)
    return w, {name: w.get(name) for name in w.names()}


def forward(tensors, spec, tokens, dtype):
    """A plain full-sequence GPT-OSS forward: the residual stream and matmul inputs in `dtype`,
    norms, rotary, softmax and the expert mix in fp32. Returns fp32 logits and the residual RMS
    after each layer."""
    w = {n: t if t.dtype == torch.uint8 else t.to(dtype) for n, t in tensors.items()}
    B, T = tokens.shape
    d, r = spec.head_dim, spec.rope_scaling
    freq = spec.rope_theta ** (torch.arange(0, d, 2) / d)
    low, high = (d / 2 * math.log(r.original_max_position_embeddings / (beta * 2 * math.pi)) / math.log(spec.rope_theta)
                 for beta in (r.beta_fast, r.beta_slow))
    extrapolate = 1 - ((torch.arange(d // 2) - low) / (high - low)).clamp(0, 1)
    inv_freq = 1 / (r.factor * freq) * (1 - extrapolate) + 1 / freq * extrapolate
    angle = torch.arange(T)[:, None] * inv_freq
    cos, sin = (f(angle)[:, None] * (0.1 * math.log(r.factor) + 1) for f in (torch.cos, torch.sin))

    def rope(x):
        x1, x2 = x.float().chunk(2, -1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), -1)

    def norm(x, weight):
        x = x.float()
        return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + spec.rms_norm_eps) * weight.float()).to(dtype)

    dist = torch.arange(T)[:, None] - torch.arange(T)[None]
    x, rms = w["model.embed_tokens.weight"][tokens], []
    for layer in range(spec.num_hidden_layers):
        p = f"model.layers.{layer}."
        t = norm(x, w[p + "input_layernorm.weight"])
        q, k, v = (t @ w[p + f"self_attn.{n}_proj.weight"].T + w[p + f"self_attn.{n}_proj.bias"] for n in "qkv")
        q, k = rope(q.view(B, T, -1, d)), rope(k.view(B, T, -1, d))
        group = spec.num_attention_heads // spec.num_key_value_heads
        k, v = k.repeat_interleave(group, 2), v.view(B, T, -1, d).float().repeat_interleave(group, 2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
        visible = (dist >= 0) & ((dist < spec.window(layer)) if spec.window(layer) else True)
        scores = scores.masked_fill(~visible, float("-inf"))
        sink = w[p + "self_attn.sinks"].float().view(1, -1, 1, 1).expand(B, -1, T, 1)
        probs = torch.softmax(torch.cat((scores, sink), -1), -1)[..., :-1]
        attn = torch.einsum("bhqk,bkhd->bqhd", probs, v).reshape(B, T, -1).to(dtype)
        x = x + attn @ w[p + "self_attn.o_proj.weight"].T + w[p + "self_attn.o_proj.bias"]

        t = norm(x, w[p + "post_attention_layernorm.weight"]).view(B * T, -1)
        top = (t @ w[p + "mlp.router.weight"].T + w[p + "mlp.router.bias"]).float().topk(spec.num_experts_per_tok)
        gates = torch.softmax(top.values, -1)
        e = p + "mlp.experts."
        w1 = mxfp4.dequantize(w[e + "gate_up_proj_blocks"], w[e + "gate_up_proj_scales"], dtype)
        w2 = mxfp4.dequantize(w[e + "down_proj_blocks"], w[e + "down_proj_scales"], dtype)
        y = torch.zeros(B * T, spec.hidden_size)
        for expert in range(spec.num_local_experts):
            tok, slot = (top.indices == expert).nonzero(as_tuple=True)
            h = (t[tok] @ w1[expert].T + w[e + "gate_up_proj_bias"][expert]).float()
            g, u = h[:, 0::2].clamp(max=spec.swiglu_limit), h[:, 1::2].clamp(-spec.swiglu_limit, spec.swiglu_limit)
            a = (g * torch.sigmoid(spec.swiglu_alpha * g) * (u + 1)).to(dtype)
            out = (a @ w2[expert].T + w[e + "down_proj_bias"][expert]).float()
            y.index_add_(0, tok, out * gates[tok, slot, None])
        x = x + y.to(dtype).view(B, T, -1)
        rms.append(x.float().pow(2).mean().sqrt().item())
    return (norm(x, w["model.norm.weight"]) @ w["lm_head.weight"].T).float(), rms


# ---- determinism ---------------------------------------------------------------------------------

def test_shapes_dtypes_and_determinism_by_seed(tiny):
    w, tensors = tiny
    for name, (shape, dtype) in TINY.tensors("mxfp4").items():
        assert tuple(tensors[name].shape) == shape and tensors[name].dtype == TORCH_DTYPES[dtype]
    again = SyntheticWeights(TINY, seed=0)
    other = SyntheticWeights(TINY, seed=1)
    for name in reversed(w.names()):  # a pure function of the name: order does not matter
        assert torch.equal(again.get(name), tensors[name]), name
        assert not torch.equal(other.get(name), tensors[name]), name


def test_chunks_do_not_change_values(tiny, monkeypatch):
    _, tensors = tiny
    monkeypatch.setattr(synthetic, "_CPU_CHUNK", 1 << 8)
    w = SyntheticWeights(TINY, seed=0)
    for name in ("lm_head.weight", "model.layers.1.mlp.experts.down_proj_blocks", "model.layers.1.mlp.router.bias"):
        assert torch.equal(w.get(name), tensors[name])


def test_skew_changes_only_router_biases(tiny):
    _, tensors = tiny
    skewed = SyntheticWeights(TINY, seed=0, router_skew=1.0)
    for name, t in tensors.items():
        assert torch.equal(skewed.get(name), t) != name.endswith("mlp.router.bias"), name


@pytest.mark.gpu
def test_same_bits_on_cuda(tiny):
    w, tensors = tiny
    for name in w.names():
        assert torch.equal(w.get(name, device="cuda").cpu(), tensors[name]), name


# ---- magnitudes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("model", sorted(SPECS))
def test_scales_stay_in_110_130(model):
    w = SyntheticWeights(SPECS[model])
    for name in ("model.layers.0.mlp.experts.gate_up_proj_scales", "model.layers.0.mlp.experts.down_proj_scales"):
        scales = w._values(name, torch.device("cpu"))(torch.arange(1 << 16))
        assert 110 <= scales.min() and scales.max() <= 130 and len(scales.unique()) == 3


def test_expert_weights_have_their_std(tiny):
    _, tensors = tiny
    L = TINY.num_hidden_layers
    e = "model.layers.2.mlp.experts."
    w1 = mxfp4.dequantize(tensors[e + "gate_up_proj_blocks"], tensors[e + "gate_up_proj_scales"], torch.float32)
    w2 = mxfp4.dequantize(tensors[e + "down_proj_blocks"], tensors[e + "down_proj_scales"], torch.float32)
    half = TINY.hidden_size // 2
    for w, want in ((w1, 1 / math.sqrt(TINY.hidden_size)),
                    (w2[:, half:], 1 / math.sqrt(TINY.intermediate_size * 2 * L))):
        assert want / math.sqrt(2) < w.std().item() < want * math.sqrt(2)  # the scale byte rounds log2(std)


def test_token_half_of_the_residual_is_only_read(tiny):
    """Layers write the second half of the hidden dims; routers read the first."""
    _, tensors = tiny
    half = TINY.hidden_size // 2
    p = "model.layers.1."
    assert (tensors[p + "self_attn.o_proj.weight"][:half] == 0).all()
    assert (tensors[p + "self_attn.o_proj.bias"][:half] == 0).all()
    assert (tensors[p + "mlp.experts.down_proj_blocks"][:, :half] == 0).all()
    assert (tensors[p + "mlp.experts.down_proj_bias"][:, :half] == 0).all()
    assert (tensors[p + "mlp.router.weight"][:, half:] == 0).all()
    assert (tensors[p + "mlp.experts.down_proj_blocks"][:, half:] != 0).any()


@pytest.mark.parametrize("context", [24, 400])  # within and far beyond the 16-token window
def test_residual_stream_stays_finite_and_well_scaled(tiny, context):
    _, tensors = tiny
    tokens = torch.randint(0, TINY.vocab_size, (2, context), generator=torch.Generator().manual_seed(context))
    logits, rms = forward(tensors, TINY, tokens, torch.float32)
    assert torch.isfinite(logits).all()
    assert 0.9 < rms[0] and rms[-1] < math.sqrt(2)  # starts at ~1, each layer adds ~1/sqrt(2L)
    assert all(b / a < 1 + 2 / TINY.num_hidden_layers for a, b in zip(rms, rms[1:]))


def test_bf16_agrees_with_fp32_on_teacher_forced_top1(tiny):
    _, tensors = tiny
    tokens = torch.randint(0, TINY.vocab_size, (4, 64), generator=torch.Generator().manual_seed(0))
    ref, _ = forward(tensors, TINY, tokens, torch.float32)
    bf16, _ = forward(tensors, TINY, tokens, torch.bfloat16)
    assert (ref.argmax(-1) == bf16.bfloat16().argmax(-1)).float().mean() >= 0.95  # engines may round logits
    p = torch.softmax(ref, -1).max(-1).values
    assert p.median() > 0.8  # peaked: one token takes most of the mass
    assert ref.argmax(-1).unique().numel() > 0.7 * tokens.numel()  # and a different token for each context


# ---- router skew ---------------------------------------------------------------------------------

def expert_load(spec, skew):
    """Experts layer 0 picks for every token of the vocabulary: routers read only the token half of
    the residual, which holds the token's embedding at every layer."""
    w = SyntheticWeights(spec, seed=0, router_skew=skew)
    x = w.get("model.embed_tokens.weight").float()
    t = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True)) * w.get("model.layers.0.post_attention_layernorm.weight")
    logits = t @ w.get("model.layers.0.mlp.router.weight").float().T + w.get("model.layers.0.mlp.router.bias")
    chosen = logits.topk(spec.num_experts_per_tok).indices
    return torch.bincount(chosen.flatten(), minlength=spec.num_local_experts).float(), \
        w.get("model.layers.0.mlp.router.bias").float()


def test_router_skew_concentrates_load_on_the_favoured_experts():
    spec = TINY.with_(num_local_experts=32, vocab_size=8192)
    uniform, _ = expert_load(spec, 0.0)
    assert uniform.max() / uniform.min() < 1.6
    previous = uniform
    for skew in (0.5, 1.0, 2.0):
        load, bias = expert_load(spec, skew)
        assert load.std() > previous.std()  # more imbalance with more skew
        busiest_by_bias = load[bias.argsort(descending=True)]
        assert busiest_by_bias[:4].sum() > busiest_by_bias[-4:].sum() * 2
        previous = load


# ---- checkpoints on disk -------------------------------------------------------------------------

def test_written_checkpoint_holds_the_same_values_and_is_reused(tiny, tmp_path, monkeypatch):
    w, tensors = tiny
    path = synthetic_checkpoint(TINY, seed=0, cache_dir=tmp_path, progress=False)
    assert path == tmp_path / "gpt-oss-tiny-s0-k0"
    ckpt = Checkpoint(path)
    assert ckpt.spec == TINY and ckpt.quant == "mxfp4"
    for name in w.names():
        assert torch.equal(ckpt.get(name), tensors[name]), name

    def no_rewrite(*args, **kwargs):
        raise AssertionError("a cached checkpoint was written again")
    monkeypatch.setattr(synthetic, "write_checkpoint", no_rewrite)
    assert synthetic_checkpoint(TINY, seed=0, cache_dir=tmp_path, progress=False) == path
    with pytest.raises(AssertionError, match="written again"):
        synthetic_checkpoint(TINY, seed=0, router_skew=0.5, cache_dir=tmp_path, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # the failed attempt left nothing


def test_incomplete_or_stale_generations_are_not_reused(tmp_path, monkeypatch):
    dead = tmp_path / "gpt-oss-tiny-s3-k0.partial-{}-999999999".format(synthetic.socket.gethostname())
    dead.mkdir()
    (dead / "config.json").write_text("{}")
    path = synthetic_checkpoint(TINY, seed=3, cache_dir=tmp_path, progress=False)
    assert not dead.exists() and Checkpoint(path).spec == TINY

    marker = json.loads((path / synthetic.MARKER).read_text())
    (path / synthetic.MARKER).write_text(json.dumps({**marker, "generator": marker["generator"] - 1}))
    (path / "model.safetensors").write_bytes(b"stale")
    assert Checkpoint(synthetic_checkpoint(TINY, seed=3, cache_dir=tmp_path, progress=False)).spec == TINY

    monkeypatch.setenv("GPTOSS_BENCH_CACHE", str(tmp_path / "env"))
    assert synthetic.cache_root() == tmp_path / "env" / "checkpoints"


def test_command_line_prints_path_bytes_and_seconds(tmp_path, capsys):
    synthetic.main(["--model", "gpt-oss-tiny", "--seed", "2", "--cache-dir", str(tmp_path)])
    path, size, seconds = capsys.readouterr().out.strip().split("\t")
    assert path == str(tmp_path / "gpt-oss-tiny-s2-k0")
    assert int(size.split()[0].replace(",", "")) > TINY.checkpoint_bytes() and seconds.endswith(" s")
