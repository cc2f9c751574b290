"""GPT-OSS in plain PyTorch, one module per block of the architecture, named as the HF checkpoint.

It is the harness's numerical oracle, so it follows the math of openai/gpt-oss (torch/model.py)
rather than any engine's shortcuts: the residual stream and the matmul inputs are in the compute
dtype (bf16 on a GPU, like the engines; float32 on a CPU, so the oracle is tight), while RMSNorm,
rotary, attention scores and softmax, the router, SwiGLU, the expert sum and the logits are fp32.

Attention keeps a plain KV cache of the full length on every layer and masks sliding layers
exactly; queries are processed in chunks so a long prefill never holds [B, H, T, T] scores.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from harness.model import mxfp4
from harness.model.rope import yarn
from harness.model.spec import ModelSpec

_SCORE_BYTES = 1 << 29  # fp32 attention scores held at once; sets the query chunk
_VOCAB_CHUNK = 1 << 15  # lm_head rows upcast to fp32 at once


class Loader:
    """Reads HF-named tensors from a weights source (Checkpoint or SyntheticWeights) onto the
    compute device: MXFP4 blocks/scales stay uint8, everything else becomes `dtype` unless asked."""

    def __init__(self, source, device: torch.device, dtype: torch.dtype):
        self.source, self.device, self.dtype = source, device, dtype
        self.shapes = {name: shape for name, (shape, _) in source.spec.tensors(source.quant).items()}

    def __call__(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        t = self.source.get(name, device=self.device)
        if tuple(t.shape) != self.shapes[name]:
            raise ValueError(f"tensor {name}: shape {tuple(t.shape)}, expected {self.shapes[name]} "
                             f"for {self.source.spec.name}")
        return t if t.dtype == torch.uint8 else t.to(dtype or self.dtype)


class Rotary(nn.Module):
    """YaRN RoPE on NeoX halves; the concentration scales both cos and sin."""

    def __init__(self, spec: ModelSpec, device: torch.device):
        super().__init__()
        self.concentration, inv_freq = yarn(spec)
        self.register_buffer("inv_freq", inv_freq.to(device))

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x [B, T, heads, D], pos [T] -> fp32 [B, T, heads, D]."""
        freqs = pos.float()[:, None] * self.inv_freq
        cos, sin = (freqs.cos() * self.concentration)[:, None], (freqs.sin() * self.concentration)[:, None]
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, get: Loader, name: str, eps: float):
        super().__init__()
        self.register_buffer("weight", get(name, torch.float32))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.float()
        return (t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight).to(x.dtype)


class Linear(nn.Module):
    def __init__(self, get: Loader, name: str, bias: bool = True, dtype: torch.dtype | None = None):
        super().__init__()
        self.register_buffer("weight", get(name + ".weight", dtype))
        self.register_buffer("bias", get(name + ".bias", dtype) if bias else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias)


class KVCache:
    """Per layer K and V [batch, kv_heads, max_len, head_dim]; a batch of B uses the first B rows."""

    def __init__(self, spec: ModelSpec, batch: int, max_len: int, device: torch.device, dtype: torch.dtype):
        shape = (batch, spec.num_key_value_heads, max_len, spec.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(spec.num_hidden_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(spec.num_hidden_layers)]
        self.batch, self.max_len = batch, max_len

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def store(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [B, T, kv_heads, D] at positions start.. and return the keys and values of
        positions 0..start+T-1, [B, kv_heads, start+T, D]."""
        B, T = k.shape[:2]
        if B > self.batch or start + T > self.max_len:
            raise ValueError(f"KV cache holds batch {self.batch} x {self.max_len} positions; asked for batch {B} "
                             f"at positions {start}..{start + T - 1} (raise max_batch_size/max_seq_len)")
        kc, vc = self.k[layer][:B], self.v[layer][:B]
        kc[:, :, start:start + T] = k.transpose(1, 2)
        vc[:, :, start:start + T] = v.transpose(1, 2)
        return kc[:, :, :start + T], vc[:, :, :start + T]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int, sinks: torch.Tensor,
           window: int, scale: float) -> torch.Tensor:
    """Causal GQA attention with per-head sink logits, fp32.

    q [B, T, H, D] at positions start..start+T-1; k, v [B, KV, S, D] at positions 0..S-1; query head
    h reads kv head h // (H/KV). A query at p sees keys p-window < j <= p (window 0: all j <= p).
    The sink joins each softmax as one more logit whose probability mass is dropped."""
    B, T, H, D = q.shape
    KV, S = k.shape[1], k.shape[2]
    G = H // KV
    q = q.float().view(B, T, KV, G, D).permute(0, 2, 3, 1, 4)  # [B, KV, G, T, D]
    k, v = k.float()[:, :, None], v.float()[:, :, None]  # [B, KV, 1, S, D]
    sink = sinks.float().view(1, KV, G, 1, 1)
    out = torch.empty_like(q)
    chunk = max(1, _SCORE_BYTES // (B * H * S * 4))
    for i in range(0, T, chunk):
        c = min(chunk, T - i)
        first, last = start + i, start + i + c - 1
        lo = max(0, first - window + 1) if window else 0
        qpos = torch.arange(first, last + 1, device=q.device)[:, None]
        kpos = torch.arange(lo, last + 1, device=q.device)[None, :]
        visible = kpos <= qpos
        if window:
            visible &= qpos - kpos < window
        s = (q[..., i:i + c, :] @ k[..., lo:last + 1, :].transpose(-1, -2)) * scale
        s = s.masked_fill(~visible, -math.inf)
        p = torch.softmax(torch.cat((s, sink.expand(B, KV, G, c, 1)), dim=-1), dim=-1)[..., :-1]
        out[..., i:i + c, :] = p @ v[..., lo:last + 1, :]
    return out.permute(0, 3, 1, 2, 4).reshape(B, T, H * D)


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec, layer: int, get: Loader, rotary: Rotary):
        super().__init__()
        p = f"model.layers.{layer}.self_attn."
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (Linear(get, p + n) for n in
                                                              ("q_proj", "k_proj", "v_proj", "o_proj"))
        self.register_buffer("sinks", get(p + "sinks", torch.float32))
        self.rotary, self.layer = rotary, layer
        self.window = spec.window(layer)
        self.heads, self.kv_heads, self.head_dim = spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim
        self.scale = spec.head_dim ** -0.5

    def forward(self, x: torch.Tensor, start: int, cache: KVCache | None) -> torch.Tensor:
        B, T, _ = x.shape
        pos = torch.arange(start, start + T, device=x.device)
        q = self.rotary(self.q_proj(x).view(B, T, self.heads, self.head_dim), pos)
        k = self.rotary(self.k_proj(x).view(B, T, self.kv_heads, self.head_dim), pos).to(x.dtype)
        v = self.v_proj(x).view(B, T, self.kv_heads, self.head_dim)
        if cache is None:
            k, v = k.transpose(1, 2), v.transpose(1, 2)
        else:
            k, v = cache.store(self.layer, start, k, v)
        out = attend(q, k, v, start, self.sinks, self.window, self.scale)
        return self.o_proj(out.to(x.dtype))


def swiglu(h: torch.Tensor, alpha: float, limit: float) -> torch.Tensor:
    """Clamped SwiGLU of interleaved rows: even = gate (clamped above), odd = up (clamped both
    sides, plus one)."""
    gate, up = h[..., 0::2].clamp(max=limit), h[..., 1::2].clamp(-limit, limit)
    return gate * torch.sigmoid(alpha * gate) * (up + 1)


class Experts(nn.Module):
    """The experts of one layer as [E, out, in] matrices (gate_up rows interleaved) plus fp32 biases.

    packed=True keeps the MXFP4 blocks/scales and dequantises one expert when a token routes to
    it, so the largest model never needs a bf16 copy of all its experts; packed=False holds them
    dequantised in the compute dtype. A bf16-layout source ([E, in, out]) is transposed, and
    quantised when packed."""

    projs = ("gate_up_proj", "down_proj")

    def __init__(self, prefix: str, get: Loader, packed: bool):
        super().__init__()
        self.packed, self.dtype = packed, get.dtype
        for proj in self.projs:
            name = prefix + proj
            if get.source.quant == "mxfp4":
                blocks, scales = get(name + "_blocks"), get(name + "_scales")
                w = None if packed else mxfp4.dequantize(blocks, scales, get.dtype)
            else:
                w = get(name).transpose(1, 2)
                blocks, scales = mxfp4.quantize(w) if packed else (None, None)
            if packed:
                self.register_buffer(proj + "_blocks", blocks)
                self.register_buffer(proj + "_scales", scales)
            else:
                self.register_buffer(proj, w.contiguous())
            self.register_buffer(proj + "_bias", get(name + "_bias", torch.float32))

    def weight(self, proj: str, e: int) -> torch.Tensor:
        if self.packed:
            return mxfp4.dequantize(getattr(self, proj + "_blocks")[e], getattr(self, proj + "_scales")[e], self.dtype)
        return getattr(self, proj)[e]

    def bias(self, proj: str, e: int) -> torch.Tensor:
        return getattr(self, proj + "_bias")[e]


class MLP(nn.Module):
    """Router (top-k, softmax over the k selected logits) and the weighted sum of k experts'
    clamped-SwiGLU MLPs; each expert's down bias is added before its routing weight."""

    def __init__(self, spec: ModelSpec, layer: int, get: Loader, packed: bool):
        super().__init__()
        p = f"model.layers.{layer}.mlp."
        self.router = Linear(get, p + "router", dtype=torch.float32)
        self.experts = Experts(p + "experts.", get, packed)
        self.top_k, self.alpha, self.limit = spec.num_experts_per_tok, spec.swiglu_alpha, spec.swiglu_limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, x = x.shape, x.reshape(-1, x.shape[-1])
        with record_function("router"):
            top = torch.topk(self.router(x.float()), self.top_k, dim=-1, sorted=True)
            weights = torch.softmax(top.values, dim=-1)
        with record_function("experts"):
            # one row per (token, slot), summed over slots in a fixed order: deterministic on any device
            out = torch.zeros(*top.indices.shape, x.shape[-1], dtype=torch.float32, device=x.device)
            ex = self.experts
            for e in top.indices.unique().tolist():
                tok, slot = (top.indices == e).nonzero(as_tuple=True)
                h = F.linear(x[tok], ex.weight("gate_up_proj", e)).float() + ex.bias("gate_up_proj", e)
                a = swiglu(h, self.alpha, self.limit).to(x.dtype)
                y = F.linear(a, ex.weight("down_proj", e)).float() + ex.bias("down_proj", e)
                out[tok, slot] = y * weights[tok, slot, None]
        return out.sum(1).to(x.dtype).view(shape)


class DecoderLayer(nn.Module):
    def __init__(self, spec: ModelSpec, layer: int, get: Loader, rotary: Rotary, packed: bool):
        super().__init__()
        p = f"model.layers.{layer}."
        self.input_layernorm = RMSNorm(get, p + "input_layernorm.weight", spec.rms_norm_eps)
        self.self_attn = Attention(spec, layer, get, rotary)
        self.post_attention_layernorm = RMSNorm(get, p + "post_attention_layernorm.weight", spec.rms_norm_eps)
        self.mlp = MLP(spec, layer, get, packed)

    def forward(self, x: torch.Tensor, start: int, cache: KVCache | None) -> torch.Tensor:
        with record_function("attention"):
            x = x + self.self_attn(self.input_layernorm(x), start, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class GptOss(nn.Module):
    """tokens [B, T] at positions start.. -> fp32 logits [B, T, V] (or [B, 1, V] with last_only)."""

    def __init__(self, source, device: torch.device, dtype: torch.dtype, packed: bool):
        super().__init__()
        spec = self.spec = source.spec
        get = Loader(source, device, dtype)
        self.register_buffer("embed_tokens", get("model.embed_tokens.weight"))
        rotary = Rotary(spec, device)
        self.layers = nn.ModuleList(DecoderLayer(spec, i, get, rotary, packed) for i in range(spec.num_hidden_layers))
        self.norm = RMSNorm(get, "model.norm.weight", spec.rms_norm_eps)
        self.register_buffer("lm_head", get("lm_head.weight"))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.buffers())

    def forward(self, tokens: torch.Tensor, start: int = 0, cache: KVCache | None = None,
                last_only: bool = False) -> torch.Tensor:
        x = F.embedding(tokens, self.embed_tokens)
        for layer in self.layers:
            x = layer(x, start, cache)
        if last_only:
            x = x[:, -1:]
        with record_function("lm_head"):
            x = self.norm(x).float()
            return torch.cat([x @ w.float().T for w in self.lm_head.split(_VOCAB_CHUNK)], dim=-1)
