"""The architecture spec: published counts, checkpoint tensors and sizes, the HF config both ways."""

import math

import pytest

from harness.model import spec as spec_module
from harness.model.spec import SPECS, ModelSpec, get_spec

# The published 20b config.json (reference doc, section A), keys as shipped.
PUBLISHED_20B = {
    "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "attention_bias": True, "attention_dropout": 0.0,
    "eos_token_id": 200002, "pad_token_id": 199999, "experts_per_token": 4, "num_experts_per_tok": 4, "head_dim": 64,
    "hidden_act": "silu", "hidden_size": 2880, "intermediate_size": 2880, "initial_context_length": 4096,
    "initializer_range": 0.02, "max_position_embeddings": 131072, "num_attention_heads": 64, "num_key_value_heads": 8,
    "output_router_logits": False, "rms_norm_eps": 1e-05,
    "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0, "original_max_position_embeddings": 4096,
                     "rope_type": "yarn", "truncate": False},
    "rope_theta": 150000, "router_aux_loss_coef": 0.9, "sliding_window": 128, "swiglu_limit": 7.0,
    "tie_word_embeddings": False, "transformers_version": "4.55.0.dev0", "use_cache": True, "vocab_size": 201088,
    "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]},
    "num_hidden_layers": 24, "num_local_experts": 32,
    "layer_types": ["sliding_attention", "full_attention"] * 12,
}


def test_published_parameter_counts_and_checkpoint_bytes_print(capsys):
    spec_module.main()
    out = capsys.readouterr().out
    for number in ("20,914,757,184", "3,608,307,264", "116,829,156,672", "5,132,849,472",
                   "13,761,264,768", "65,248,815,744"):
        assert number in out
    s20, s120 = get_spec("gpt-oss-20b"), get_spec("gpt-oss-120b")
    assert (s20.total_params, s20.active_params) == (20_914_757_184, 3_608_307_264)
    assert (s120.total_params, s120.active_params) == (116_829_156_672, 5_132_849_472)
    assert (s20.checkpoint_bytes(), s120.checkpoint_bytes()) == (13_761_264_768, 65_248_815_744)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_tensor_table_matches_the_counts(name):
    s = SPECS[name]
    mx, bf = s.tensors("mxfp4"), s.tensors("bf16")
    assert len(mx) == 3 + s.num_hidden_layers * 19 and len(bf) == 3 + s.num_hidden_layers * 17
    assert sum(math.prod(shape) for shape, _ in bf.values()) == s.total_params
    E, H, I = s.num_local_experts, s.hidden_size, s.intermediate_size
    assert mx["model.layers.0.mlp.experts.gate_up_proj_blocks"] == ((E, 2 * I, H // 32, 16), "U8")
    assert mx["model.layers.0.mlp.experts.down_proj_scales"] == ((E, H, I // 32), "U8")
    assert bf["model.layers.0.mlp.experts.gate_up_proj"] == ((E, H, 2 * I), "BF16")  # x @ W layout
    assert s.checkpoint_bytes("mxfp4") == sum(math.prod(sh) * (2 if dt == "BF16" else 1) for sh, dt in mx.values())


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("quant", ["mxfp4", "bf16"])
def test_hf_config_round_trip(name, quant):
    s = SPECS[name]
    cfg = s.to_hf_config(quant)
    assert ("quantization_config" in cfg) == (quant == "mxfp4")
    assert ModelSpec.from_hf_config(cfg) == s


def test_published_configs_load():
    assert ModelSpec.from_hf_config(PUBLISHED_20B) == SPECS["gpt-oss-20b"]
    published_120b = {**PUBLISHED_20B, "num_hidden_layers": 36, "num_local_experts": 128,
                      "layer_types": ["sliding_attention", "full_attention"] * 18}
    assert ModelSpec.from_hf_config(published_120b) == SPECS["gpt-oss-120b"]


def test_bad_configs_name_the_key():
    cfg = dict(PUBLISHED_20B)
    del cfg["num_local_experts"]
    with pytest.raises(ValueError, match="num_local_experts"):
        ModelSpec.from_hf_config(cfg)
    with pytest.raises(ValueError, match="layer_types"):
        ModelSpec.from_hf_config({**PUBLISHED_20B, "layer_types": ["full_attention"] * 24})
    with pytest.raises(KeyError, match="gpt-oss-7b"):
        get_spec("gpt-oss-7b")


def test_layer_pattern_window_and_unique_experts():
    s = SPECS["gpt-oss-20b"]
    assert s.layer_types[:3] == ["sliding_attention", "full_attention", "sliding_attention"]
    assert (s.window(0), s.window(1)) == (128, 0)
    assert s.unique_experts(1) == pytest.approx(4)
    assert s.unique_experts(1000) == pytest.approx(32)
    assert s.kv_cache_bytes(1, 1000) == 12 * (128 + 1000) * 2048


def test_every_quant_mode_has_a_weight_format():
    """mxfp4_mxfp8 reads the MXFP4 checkpoint: same tensors, config and bytes as mxfp4; bf16 differs."""
    from harness.model.spec import QUANT_MODES, WEIGHT_FORMAT, weight_format

    assert set(WEIGHT_FORMAT) == set(QUANT_MODES) and set(WEIGHT_FORMAT.values()) == {"mxfp4", "bf16"}
    s = get_spec("gpt-oss-20b")
    assert s.tensors("mxfp4_mxfp8") == s.tensors("mxfp4") != s.tensors("bf16")
    assert s.to_hf_config("mxfp4_mxfp8") == s.to_hf_config("mxfp4")
    for f in ("weight_bytes", "checkpoint_bytes", "expert_bytes"):
        assert getattr(s, f)("mxfp4_mxfp8") == getattr(s, f)("mxfp4") < getattr(s, f)("bf16")
    assert s.decode_step_bytes(8, 1024, "mxfp4_mxfp8") == s.decode_step_bytes(8, 1024, "mxfp4")
    with pytest.raises(ValueError, match="quant='fp8': unknown quant mode"):
        weight_format("fp8")
