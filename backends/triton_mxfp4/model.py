"""The triton_mxfp4 engine: GPT-OSS weights in device memory, a KV cache, an eager prefill and a
decode step that is captured once per batch size in a CUDA graph and replayed.

One decode step, per layer (kernels in brackets; GEMMs through cuBLAS, bias in its epilogue):
  [add_rmsnorm] residual += previous block's output, normalise
  [qkv GEMM] -> [rope_kv] rotate q, k in place, write k, v into the cache slot of this position
  [attention_decode (+ reduce)] split-K over the cache -> [o_proj GEMM]
  [add_rmsnorm] -> [moe: router GEMM, MXFP4 expert kernels (moe.py)]
    (quant=mxfp4_mxfp8: where the MoE takes its grouped path, this add_rmsnorm also writes its
    output in MXFP8, which the expert GEMMs read)
then [add_rmsnorm] final norm -> [lm_head] fp32 logits -> [argmax]. Positions live in a device
tensor that the step itself advances, so replays need nothing from the host.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.profiler import record_function

from backends.triton_mxfp4.attention import KVCache, attention_decode, attention_prefill, decode_splits
from backends.triton_mxfp4.lm_head import lm_head
from backends.triton_mxfp4 import mxfp8
from backends.triton_mxfp4.moe import moe, prepare_experts, uses_gemv
from backends.triton_mxfp4.mxfp8 import MxTensor
from backends.triton_mxfp4.moe_dense import moe_dense, prepare_dense_experts
from backends.triton_mxfp4.norm_rope import add_rmsnorm, rope_kv, rope_table
from harness.model import mxfp4
from harness.model.spec import ModelSpec, weight_format
from harness.telemetry.nvtx_ranges import nvtx_range

MOE_TOKENS = 1 << 15  # prefill runs the MoE over at most this many tokens at once (bounds its buffers)
# A prefill runs the model over at most this many tokens at once, in groups of whole sequences: its
# activations grow with the tokens (batch 64 x 8k, 2**19 tokens, peaked at 29 GiB beside weights and
# KV cache on an H200; batch 256 x 8k in one pass ran out of memory there, 2026-12-03).
PREFILL_TOKENS = 1 << 19


@contextlib.contextmanager
def scope(name: str):
    """A named range on the profiler timeline and in NVTX."""
    with record_function(name), nvtx_range(name):
        yield


@dataclass
class Layer:
    attn_norm: torch.Tensor
    qkv_w: torch.Tensor  # q, k, v projections stacked: [(Hq + 2 Hkv) D, H]
    qkv_b: torch.Tensor
    sinks: torch.Tensor  # fp32 [Hq]
    o_w: torch.Tensor
    o_b: torch.Tensor
    mlp_norm: torch.Tensor
    router_w: torch.Tensor
    router_b: torch.Tensor
    gate_up: object  # ExpertWeights (mxfp4) or DenseExperts (bf16) of the experts' first GEMM
    down: object
    window: int


def _nbytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(_nbytes(o) for o in obj.values())
    return sum(_nbytes(o) for o in vars(obj).values()) if hasattr(obj, "__dict__") else 0


class Transformer:
    """GPT-OSS on Triton kernels. `source` is a Checkpoint or SyntheticWeights; `quant` is how the
    experts run: 'mxfp4' (packed, decoded in the MoE kernels), 'mxfp4_mxfp8' (the same weights,
    MXFP8 activations in the grouped GEMMs) or 'bf16' (dequantised at load, run by torch's grouped
    GEMM: moe_dense)."""

    def __init__(self, source, quant: str, device: torch.device, cuda_graphs: bool = True):
        self.spec: ModelSpec = source.spec
        self.device, self.quant, self.weight_format = device, quant, weight_format(quant)
        self.cuda_graphs = cuda_graphs and device.type == "cuda"
        shapes = {name: shape for name, (shape, _) in self.spec.tensors(source.quant).items()}

        def get(name: str) -> torch.Tensor:
            t = source.get(name, device=device)
            if tuple(t.shape) != shapes[name]:
                raise ValueError(f"tensor {name}: shape {tuple(t.shape)}, expected {shapes[name]} for {self.spec.name}")
            return t

        self.moe = moe if self.weight_format == "mxfp4" else moe_dense
        self.embed = get("model.embed_tokens.weight")
        self.layers = [self._load_layer(get, source.quant, i) for i in range(self.spec.num_hidden_layers)]
        self.norm = get("model.norm.weight")
        self.lm_head = get("lm_head.weight")
        self.weight_bytes = _nbytes([self.embed, self.norm, self.lm_head, [vars(l) for l in self.layers]])
        self.cache: KVCache | None = None

    def _load_layer(self, get, source_quant: str, i: int) -> Layer:
        p = f"model.layers.{i}."
        a = p + "self_attn."
        qkv_w = torch.cat([get(a + f"{x}_proj.weight") for x in "qkv"])
        qkv_b = torch.cat([get(a + f"{x}_proj.bias") for x in "qkv"])
        experts = {}
        for kind in ("gate_up", "down"):
            name = p + f"mlp.experts.{kind}_proj"
            bias = get(name + "_bias")
            if self.weight_format == "mxfp4":
                if source_quant == "mxfp4":
                    blocks, scales = get(name + "_blocks"), get(name + "_scales")
                else:  # a bf16 checkpoint holds x @ W, [E, in, out]
                    blocks, scales = mxfp4.quantize(get(name).transpose(1, 2))
                experts[kind] = prepare_experts(blocks, scales, bias, kind)
            else:
                w = mxfp4.dequantize(get(name + "_blocks"), get(name + "_scales")) if source_quant == "mxfp4" \
                    else get(name).transpose(1, 2)
                experts[kind] = prepare_dense_experts(w, bias)
        return Layer(get(p + "input_layernorm.weight"), qkv_w, qkv_b, get(a + "sinks").float(),
                     get(a + "o_proj.weight"), get(a + "o_proj.bias"), get(p + "post_attention_layernorm.weight"),
                     get(p + "mlp.router.weight"), get(p + "mlp.router.bias"), experts["gate_up"], experts["down"],
                     self.spec.window(i))

    # ---- state -----------------------------------------------------------------------------
    def allocate(self, max_batch: int, max_seq_len: int) -> None:
        """(Re)allocate the KV cache and the decode step's static buffers; drops captured graphs."""
        spec, dev = self.spec, self.device
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.cache = None
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        self.cache = KVCache(spec, max_batch, max_seq_len, dev)
        self.cos, self.sin = rope_table(spec, max_seq_len, dev)
        self.pos = torch.zeros(max_batch, dtype=torch.int32, device=dev)  # position of the next token
        self.tokens = torch.zeros(max_batch, dtype=torch.int64, device=dev)
        self.next = torch.zeros(max_batch, dtype=torch.int64, device=dev)
        self.logits = torch.empty(max_batch, spec.vocab_size, dtype=torch.float32, device=dev)
        self.num_sms = torch.cuda.get_device_properties(dev).multi_processor_count if dev.type == "cuda" else 4
        self.pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None
        self.batch = self.length = 0

    # ---- the model -------------------------------------------------------------------------
    def _layers(self, x: torch.Tensor, batch: int, tokens: int, decode: bool, first: int = 0):
        """x [batch*tokens, H]: the residual stream of sequences first .. first+batch-1, updated in
        place. Returns it with the last block's output, which the caller adds (fused into the final norm)."""
        y = None
        for i, layer in enumerate(self.layers):
            with scope(f"layer{i}"):
                with scope("attention"):
                    y = self._attention(i, layer, x, y, batch, tokens, decode, first)
                with scope("moe"):
                    y = self._moe(layer, x, y)
        return x, y

    def _attention(self, i: int, L: Layer, x, y, batch: int, tokens: int, decode: bool, first: int) -> torch.Tensor:
        spec = self.spec
        pos, k_cache, v_cache = self.pos[first:first + batch], self.cache.k[i], self.cache.v[i]
        if first:  # a later group of a prefill in groups: its own rows (decode steps never slice)
            k_cache, v_cache = k_cache[first:], v_cache[first:]
        with scope("attn_norm"):
            t = add_rmsnorm(x, y, L.attn_norm, spec.rms_norm_eps)
        with scope("qkv_proj"):
            qkv = F.linear(t, L.qkv_w, L.qkv_b)
        with scope("rope"):
            rope_kv(qkv, pos, tokens, self.cos, self.sin, k_cache, v_cache, spec)
        q, k, v = qkv.split([spec.q_dim, spec.kv_dim, spec.kv_dim], dim=1)
        if decode:
            with scope("attn_decode"):
                splits = 1 if L.window else decode_splits(batch, spec.num_key_value_heads, k_cache.shape[2],
                                                          self.num_sms)
                a = attention_decode(q, k_cache, v_cache, L.sinks, pos, splits)
        else:
            with scope("attn_prefill"):
                a = attention_prefill(q, k, v, L.sinks, batch, L.window)
        with scope("o_proj"):
            return self._o_proj(a, L)

    def _o_proj(self, a: torch.Tensor, L: Layer) -> torch.Tensor:
        """The attention block's output projection (parallel.py splits it across ranks)."""
        return F.linear(a, L.o_w, L.o_b)

    def _moe(self, L: Layer, x, y) -> torch.Tensor:
        T = x.shape[0]
        t_mx = mxfp8.empty(T, self.spec.hidden_size, self.device) \
            if self.quant == "mxfp4_mxfp8" and not uses_gemv(min(T, MOE_TOKENS), self.spec) else None
        with scope("mlp_norm"):
            t = add_rmsnorm(x, y, L.mlp_norm, self.spec.rms_norm_eps, out_mx=t_mx)
        if T <= MOE_TOKENS:
            return self.moe(t, L.router_w, L.router_b, L.gate_up, L.down, self.spec, **self._mx(t_mx, 0, T))
        return torch.cat([self.moe(t[i:i + MOE_TOKENS], L.router_w, L.router_b, L.gate_up, L.down, self.spec,
                                   **self._mx(t_mx, i, i + MOE_TOKENS)) for i in range(0, T, MOE_TOKENS)])

    @staticmethod
    def _mx(t_mx: MxTensor | None, start: int, stop: int) -> dict:
        """moe()'s MXFP8 argument for rows start:stop (none in the other modes)."""
        return {} if t_mx is None else {"x_mx": t_mx.rows(start, stop)}

    def _head(self, x: torch.Tensor, y: torch.Tensor, batch: int, first: int = 0) -> None:
        """The next tokens of sequences first .. first+batch-1 into self.next."""
        with scope("final_norm"):
            t = add_rmsnorm(x, y, self.norm, self.spec.rms_norm_eps)
        with scope("lm_head"):
            logits = lm_head(t, self.lm_head, out=self.logits[first:first + batch])
        with scope("sampling"):
            torch.argmax(logits, dim=-1, out=self.next[first:first + batch])

    @torch.inference_mode()
    def prefill(self, prompts: torch.Tensor) -> torch.Tensor:
        """prompts [B, T] from position 0 (a fresh cache) -> greedy next token [B]."""
        B, T = prompts.shape
        if self.cache is None or B > self.cache.max_batch or T > self.cache.max_seq_len:
            have = None if self.cache is None else (self.cache.max_batch, self.cache.max_seq_len)
            raise ValueError(f"triton_mxfp4: prefill of batch {B} x {T} tokens does not fit the allocated "
                             f"(max_batch, max_seq_len) = {have}")
        group = max(1, PREFILL_TOKENS // T)  # sequences per pass
        with scope("prefill"):
            self.pos[:B].zero_()
            for first in range(0, B, group):
                n = min(group, B - first)
                x = F.embedding(prompts[first:first + n].reshape(-1).to(self.device), self.embed)
                x, y = self._layers(x, n, T, decode=False, first=first)
                self._head(x[T - 1::T], y[T - 1::T], n, first)
            self.pos[:B].fill_(T)
        self.batch, self.length = B, T
        return self.next[:B].clone()

    def _decode_step(self, batch: int) -> None:
        with scope("decode_step"):
            x = F.embedding(self.tokens[:batch], self.embed)
            x, y = self._layers(x, batch, 1, decode=True)
            self._head(x, y, batch)
            self.pos[:batch] += 1

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append tokens [B] (B = the prefill's batch) -> greedy next token [B]."""
        B = tokens.shape[0]
        if B != self.batch:
            raise ValueError(f"triton_mxfp4: decode of {B} tokens after a prefill of batch {self.batch}")
        if self.length >= self.cache.max_seq_len:
            raise ValueError(f"triton_mxfp4: sequence would pass max_seq_len={self.cache.max_seq_len}")
        self.tokens[:B].copy_(tokens)
        if not self.cuda_graphs:
            self._decode_step(B)
        elif B in self.graphs:
            self.graphs[B].replay()
        else:
            self._capture(B)
        self.length += 1
        return self.next[:B].clone()

    def _capture(self, batch: int) -> None:
        """Run this step eagerly on a side stream (it compiles the kernels and creates the cuBLAS
        handles), then capture the same step; capturing runs nothing, so the state advances once."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self._decode_step(batch)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            self._decode_step(batch)
        self.graphs[batch] = graph
