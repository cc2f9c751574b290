"""What GPT-OSS is: the architecture of each size, its checkpoint tensors, and what one step costs.

Every other part of the harness asks this module for shapes, counts, bytes and FLOPs, so the
constants of the architecture (SwiGLU alpha and limit, window, YaRN parameters) live here once.
Field names are those of the Hugging Face config.json that the models ship with.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

MXFP4_BLOCK = 32  # values per E8M0 scale, along the input dimension
MXFP4_BYTES_PER_VALUE = 0.5 + 1 / MXFP4_BLOCK  # 4.25 bits
QUANT_MODES = ("mxfp4", "bf16", "mxfp4_mxfp8")
# The expert weights each quant mode reads, i.e. its checkpoint layout and bytes: mxfp4_mxfp8 reads
# the MXFP4 checkpoint as mxfp4 does and differs only in its activations (MXFP8 in the MoE GEMMs),
# so its numerical reference is the MXFP4 model.
WEIGHT_FORMAT = {"mxfp4": "mxfp4", "bf16": "bf16", "mxfp4_mxfp8": "mxfp4"}


def weight_format(quant: str) -> str:
    """The weight format ('mxfp4' or 'bf16') that quant mode `quant` reads."""
    try:
        return WEIGHT_FORMAT[quant]
    except KeyError:
        raise ValueError(f"quant={quant!r}: unknown quant mode; known: {list(QUANT_MODES)}") from None

# Published as-is in the HF config; layers listed here stay bf16 under mxfp4.
MODULES_TO_NOT_CONVERT = ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]


@dataclass(frozen=True)
class RopeScaling:
    factor: float = 32.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    original_max_position_embeddings: int = 4096
    rope_type: str = "yarn"
    truncate: bool = False


@dataclass(frozen=True)
class ModelSpec:
    name: str
    num_hidden_layers: int
    num_local_experts: int
    num_experts_per_tok: int = 4
    vocab_size: int = 201088
    hidden_size: int = 2880
    intermediate_size: int = 2880
    head_dim: int = 64
    num_attention_heads: int = 64
    num_key_value_heads: int = 8
    sliding_window: int = 128
    initial_context_length: int = 4096
    max_position_embeddings: int = 131072
    rope_theta: float = 150000.0
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    swiglu_limit: float = 7.0
    rms_norm_eps: float = 1e-5
    bos_token_id: int = 199998
    eos_token_id: int = 200002
    pad_token_id: int = 199999
    # Not a config field: the SwiGLU sigmoid slope hard-coded by every implementation.
    swiglu_alpha: float = 1.702

    def __post_init__(self):
        bad = [f"{k}={getattr(self, k)}" for k in ("hidden_size", "intermediate_size")
               if getattr(self, k) % MXFP4_BLOCK]
        if bad:
            raise ValueError(f"{self.name}: {', '.join(bad)} must be multiples of the MXFP4 block {MXFP4_BLOCK}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"{self.name}: num_attention_heads={self.num_attention_heads} is not a multiple "
                             f"of num_key_value_heads={self.num_key_value_heads}")

    # ---- structure -------------------------------------------------------------------------
    @property
    def layer_types(self) -> list[str]:
        """Layer 0 is sliding-window; the pattern alternates from there."""
        return ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(self.num_hidden_layers)]

    def window(self, layer: int) -> int:
        """Keys a query of `layer` may see, itself included; 0 means unbounded."""
        return self.sliding_window if layer % 2 == 0 else 0

    @property
    def num_sliding_layers(self) -> int:
        return (self.num_hidden_layers + 1) // 2

    @property
    def num_full_layers(self) -> int:
        return self.num_hidden_layers // 2

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    # ---- config.json -----------------------------------------------------------------------
    def to_hf_config(self, quant: str = "mxfp4") -> dict:
        """config.json of a checkpoint holding the weights `quant` reads."""
        cfg = {
            "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss",
            "attention_bias": True, "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id, "pad_token_id": self.pad_token_id,
            "experts_per_token": self.num_experts_per_tok, "num_experts_per_tok": self.num_experts_per_tok,
            "head_dim": self.head_dim, "hidden_act": "silu", "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size, "initial_context_length": self.initial_context_length,
            "initializer_range": 0.02, "layer_types": self.layer_types,
            "max_position_embeddings": self.max_position_embeddings,
            "num_attention_heads": self.num_attention_heads, "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads, "num_local_experts": self.num_local_experts,
            "output_router_logits": False, "rms_norm_eps": self.rms_norm_eps,
            "rope_scaling": asdict(self.rope_scaling), "rope_theta": self.rope_theta,
            "router_aux_loss_coef": 0.9, "sliding_window": self.sliding_window, "swiglu_limit": self.swiglu_limit,
            "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.55.0.dev0",
            "use_cache": True, "vocab_size": self.vocab_size,
        }
        if weight_format(quant) == "mxfp4":
            cfg["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": MODULES_TO_NOT_CONVERT}
        return cfg

    @classmethod
    def from_hf_config(cls, cfg: dict | str | Path, name: str | None = None) -> "ModelSpec":
        """Build a spec from a config.json (dict or path). Unknown keys are ignored; missing
        architecture keys are an error naming them."""
        source = "config"
        if not isinstance(cfg, dict):
            source = str(cfg)
            cfg = json.loads(Path(cfg).read_text())
        required = ["num_hidden_layers", "num_local_experts", "hidden_size", "intermediate_size", "head_dim",
                    "num_attention_heads", "num_key_value_heads", "vocab_size", "sliding_window"]
        missing = [k for k in required if k not in cfg]
        if missing:
            raise ValueError(f"{source}: missing config keys {missing}")
        if cfg.get("model_type", "gpt_oss") != "gpt_oss":
            raise ValueError(f"{source}: model_type={cfg['model_type']!r}, expected 'gpt_oss'")
        rope = dict(cfg.get("rope_scaling") or {})
        rope_fields = RopeScaling.__dataclass_fields__
        eos = cfg.get("eos_token_id", 200002)
        kwargs = {k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg and k not in ("name", "rope_scaling")}
        kwargs["eos_token_id"] = eos[0] if isinstance(eos, list) else eos
        kwargs["num_experts_per_tok"] = cfg.get("num_experts_per_tok", cfg.get("experts_per_token", 4))
        spec = cls(name=name or _known_name(cfg) or "gpt-oss-custom",
                   rope_scaling=RopeScaling(**{k: v for k, v in rope.items() if k in rope_fields}), **kwargs)
        layer_types = cfg.get("layer_types")
        if layer_types is not None and list(layer_types) != spec.layer_types:
            raise ValueError(f"{source}: layer_types {layer_types[:4]}... differ from the GPT-OSS pattern "
                             f"(sliding first, alternating) that this harness implements")
        return spec

    # ---- checkpoint tensors (HF layout) ----------------------------------------------------
    def tensors(self, quant: str = "mxfp4") -> dict[str, tuple[tuple[int, ...], str]]:
        """Every tensor of the HF checkpoint `quant` reads, in file order: name -> (shape, safetensors dtype)."""
        packed = weight_format(quant) == "mxfp4"
        H, I, E, V = self.hidden_size, self.intermediate_size, self.num_local_experts, self.vocab_size
        out: dict[str, tuple[tuple[int, ...], str]] = {"model.embed_tokens.weight": ((V, H), "BF16")}
        for layer in range(self.num_hidden_layers):
            p = f"model.layers.{layer}."
            out[p + "input_layernorm.weight"] = ((H,), "BF16")
            for proj, rows in (("q", self.q_dim), ("k", self.kv_dim), ("v", self.kv_dim)):
                out[p + f"self_attn.{proj}_proj.weight"] = ((rows, H), "BF16")
                out[p + f"self_attn.{proj}_proj.bias"] = ((rows,), "BF16")
            out[p + "self_attn.o_proj.weight"] = ((H, self.q_dim), "BF16")
            out[p + "self_attn.o_proj.bias"] = ((H,), "BF16")
            out[p + "self_attn.sinks"] = ((self.num_attention_heads,), "BF16")
            out[p + "post_attention_layernorm.weight"] = ((H,), "BF16")
            out[p + "mlp.router.weight"] = ((E, H), "BF16")
            out[p + "mlp.router.bias"] = ((E,), "BF16")
            for proj, rows, k in (("gate_up_proj", 2 * I, H), ("down_proj", H, I)):
                x = p + f"mlp.experts.{proj}"
                if packed:
                    out[x + "_blocks"] = ((E, rows, k // MXFP4_BLOCK, MXFP4_BLOCK // 2), "U8")
                    out[x + "_scales"] = ((E, rows, k // MXFP4_BLOCK), "U8")
                else:  # transformers' dequantised layout is x @ W: [E, in, out]
                    out[x] = ((E, k, rows), "BF16")
                out[x + "_bias"] = ((E, rows), "BF16")
        out["model.norm.weight"] = ((H,), "BF16")
        out["lm_head.weight"] = ((V, H), "BF16")
        return out

    def checkpoint_bytes(self, quant: str = "mxfp4") -> int:
        size = {"BF16": 2, "U8": 1}
        return sum(math.prod(shape) * size[dt] for shape, dt in self.tensors(quant).values())

    # ---- parameter counts ------------------------------------------------------------------
    @property
    def attention_params(self) -> int:
        H = self.hidden_size
        return (self.q_dim * H + self.q_dim) + 2 * (self.kv_dim * H + self.kv_dim) \
            + (H * self.q_dim + H) + self.num_attention_heads

    @property
    def expert_weights(self) -> int:
        """Matrix weights of one expert (gate_up and down), biases excluded."""
        return 3 * self.hidden_size * self.intermediate_size

    @property
    def expert_biases(self) -> int:
        return 2 * self.intermediate_size + self.hidden_size

    @property
    def router_params(self) -> int:
        return self.num_local_experts * (self.hidden_size + 1)

    def _layer_params(self, experts: int) -> int:
        return self.attention_params + 2 * self.hidden_size + self.router_params \
            + experts * (self.expert_weights + self.expert_biases)

    @property
    def total_params(self) -> int:
        VH = self.vocab_size * self.hidden_size
        return self.num_hidden_layers * self._layer_params(self.num_local_experts) + 2 * VH + self.hidden_size

    @property
    def active_params(self) -> int:
        """Parameters one token uses: k experts a layer, unembedding included, embedding excluded."""
        VH = self.vocab_size * self.hidden_size
        return self.num_hidden_layers * self._layer_params(self.num_experts_per_tok) + VH + self.hidden_size

    # ---- bytes -----------------------------------------------------------------------------
    def expert_bytes(self, quant: str) -> float:
        """Bytes of one expert as an engine reads them: weights in `quant`'s format, biases bf16."""
        per_weight = MXFP4_BYTES_PER_VALUE if weight_format(quant) == "mxfp4" else 2.0
        return self.expert_weights * per_weight + 2 * self.expert_biases

    def weight_bytes(self, quant: str = "mxfp4") -> float:
        dense = self.total_params - self.num_hidden_layers * self.num_local_experts * self.expert_weights
        return 2 * (dense - self.num_hidden_layers * self.num_local_experts * self.expert_biases) \
            + self.num_hidden_layers * self.num_local_experts * self.expert_bytes(quant)

    def shard_weight_bytes(self, quant: str = "mxfp4", tp: int = 1, ep: int = 1) -> float:
        """Weight bytes one GPU holds with attention split over `tp` ranks by heads (q/k/v rows, sinks,
        o_proj's input columns; o_proj's bias whole on each) and the experts over `ep` ranks;
        embedding, unembedding, norms and routers replicated. tp = ep = 1 gives weight_bytes(quant)."""
        if tp < 1 or ep < 1 or self.num_key_value_heads % tp or self.num_local_experts % ep:
            raise ValueError(f"{self.name}: tp={tp} must divide num_key_value_heads={self.num_key_value_heads} "
                             f"and ep={ep} must divide num_local_experts={self.num_local_experts}")
        H, L = self.hidden_size, self.num_hidden_layers
        replicated = 2 * self.vocab_size * H + H + L * (2 * H + self.router_params + H)
        return 2 * (replicated + L * (self.attention_params - H) / tp) \
            + L * (self.num_local_experts // ep) * self.expert_bytes(quant)

    @property
    def kv_bytes_per_token_layer(self) -> int:
        return 2 * self.kv_dim * 2  # K and V, bf16

    def kv_tokens(self, context: int) -> int:
        """Token-layers of KV a sequence of `context` tokens holds: sliding layers keep only the window."""
        return self.num_sliding_layers * min(context, self.sliding_window) + self.num_full_layers * context

    def kv_cache_bytes(self, batch: int, context: int) -> int:
        return batch * self.kv_tokens(context) * self.kv_bytes_per_token_layer

    def unique_experts(self, batch: int) -> float:
        """Experts a layer touches at `batch` tokens under uniform routing: E(1-(1-k/E)^B)."""
        E, k = self.num_local_experts, self.num_experts_per_tok
        return E * (1 - (1 - k / E) ** batch)

    def decode_step_bytes(self, batch: int, context: int, quant: str = "mxfp4",
                          unique_experts: float | None = None) -> float:
        """Fewest bytes one decode step of `batch` sequences at `context` tokens must read from memory:
        weights touched (all dense weights, the experts some token routes to) plus the KV cache."""
        H, L = self.hidden_size, self.num_hidden_layers
        U = self.unique_experts(batch) if unique_experts is None else unique_experts
        per_layer = 2 * (self.attention_params + 2 * H + self.router_params) + U * self.expert_bytes(quant)
        embed_rows = batch * H * 2
        lm_head = 2 * self.vocab_size * H + 2 * H
        return L * per_layer + embed_rows + lm_head + self.kv_cache_bytes(batch, context)

    # ---- FLOPs -----------------------------------------------------------------------------
    def _attention_flops(self, queries_keys: int) -> int:
        """QK^T and PV over all layers for a total of `queries_keys` (query, key) pairs per layer."""
        return 4 * self.q_dim * queries_keys

    def decode_step_flops(self, batch: int, context: int) -> float:
        """FLOPs of one decode step: matmuls of the active parameters per token plus attention over the cache."""
        linear = 2 * (self.active_params - self.hidden_size) * batch
        keys = self.num_sliding_layers * min(context + 1, self.sliding_window) + self.num_full_layers * (context + 1)
        return linear + batch * self._attention_flops(keys)

    def prefill_flops(self, batch: int, context: int) -> float:
        T, W = context, self.sliding_window
        linear = 2 * (self.active_params - self.hidden_size) * batch * T
        full_pairs = T * (T + 1) // 2
        w = min(W, T)
        sliding_pairs = w * (w + 1) // 2 + (T - w) * W
        pairs = self.num_full_layers * full_pairs + self.num_sliding_layers * sliding_pairs
        return linear + batch * self._attention_flops(pairs)

    def prefill_bytes(self, batch: int, context: int, quant: str = "mxfp4") -> float:
        return self.decode_step_bytes(batch * context, 0, quant) + self.kv_cache_bytes(batch, context)

    def with_(self, **changes) -> "ModelSpec":
        return replace(self, **changes)


def _known_name(cfg: dict) -> str | None:
    for spec in SPECS.values():
        if all(cfg.get(k) == getattr(spec, k) for k in ("num_hidden_layers", "num_local_experts", "hidden_size",
                                                          "vocab_size", "head_dim")):
            return spec.name
    return None


SPECS: dict[str, ModelSpec] = {
    "gpt-oss-20b": ModelSpec("gpt-oss-20b", num_hidden_layers=24, num_local_experts=32),
    "gpt-oss-120b": ModelSpec("gpt-oss-120b", num_hidden_layers=36, num_local_experts=128),
    # Same structure at test size: sinks, alternating sliding/full with a window shorter than the
    # test contexts, YaRN, GQA 4:1, top-4 of 8 experts, clamped SwiGLU; head_dim 32 so other
    # engines' attention kernels accept it.
    "gpt-oss-tiny": ModelSpec(
        "gpt-oss-tiny", num_hidden_layers=4, num_local_experts=8, vocab_size=1024, hidden_size=128,
        intermediate_size=128, head_dim=32, num_attention_heads=8, num_key_value_heads=2, sliding_window=16,
        max_position_embeddings=4096, bos_token_id=1020, eos_token_id=1021, pad_token_id=1022),
}


def get_spec(name: str) -> ModelSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {sorted(SPECS)}") from None


def main() -> None:
    """`python -m harness.model.spec`: the counts and byte budgets of every known model."""
    for spec in SPECS.values():
        print(f"{spec.name}: total {spec.total_params:,} params, active {spec.active_params:,}; "
              f"weights mxfp4 {spec.weight_bytes('mxfp4') / 2**30:.2f} GiB, bf16 {spec.weight_bytes('bf16') / 2**30:.2f} GiB; "
              f"checkpoint {spec.checkpoint_bytes():,} B; KV {spec.kv_bytes_per_token_layer * spec.num_full_layers:,} B/token "
              f"on full layers; decode step bytes at batch 1, ctx 1k: {spec.decode_step_bytes(1, 1024) / 1e9:.3f} GB")


if __name__ == "__main__":
    main()
