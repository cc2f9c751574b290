"""torch_ref: the eager PyTorch GPT-OSS (backends/torch_ref/model.py), the harness's numerical oracle.

Greedy prefill and decode over a preallocated KV cache, plus `logits`, a full recomputation
without the cache that tests and the harness's agreement check compare against.
"""

from __future__ import annotations

import torch

from harness.engine import DoesNotFit, LoadRequest, StepBackend
from backends.torch_ref.model import GptOss, KVCache
from harness.model.weights import open_weights

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class TorchRef(StepBackend):
    def __init__(self, device: str = "auto", dtype: str = "auto", **options):
        super().__init__(device=device, dtype=dtype, **options)
        if device not in ("auto", "cpu") and not device.startswith("cuda"):
            raise ValueError(f"torch_ref: device={device!r}, expected auto, cpu or cuda[:N]")
        if dtype not in ("auto", *_DTYPES):
            raise ValueError(f"torch_ref: dtype={dtype!r}, expected auto, {', '.join(_DTYPES)}")
        self.model: GptOss | None = None
        self.cache: KVCache | None = None

    def load(self, request: LoadRequest) -> None:
        if request.quant not in self.quants:
            raise ValueError(f"torch_ref: quant={request.quant!r}, expected one of {self.quants}")
        self.close()  # a previous group's model must not count against this one
        want = self.options["device"]
        if want == "auto":
            want = request.device if torch.cuda.is_available() and request.device.startswith("cuda") else "cpu"
        self.device = torch.device(want)
        dtype = self.options["dtype"]
        self.dtype = _DTYPES[dtype] if dtype != "auto" else \
            torch.bfloat16 if self.device.type == "cuda" else torch.float32
        spec = request.spec
        if self.device.type == "cuda":
            kv = spec.num_hidden_layers * request.max_batch_size * request.max_seq_len * 2 * spec.kv_dim \
                * self.dtype.itemsize
            free, _ = torch.cuda.mem_get_info(self.device)
            need = spec.weight_bytes(request.quant) + kv
            if need > free:
                raise DoesNotFit(need, free, f"{spec.name} {request.quant} weights and KV cache")
        self.model = GptOss(open_weights(request), self.device, self.dtype, packed=request.quant == "mxfp4")
        self.cache = KVCache(spec, request.max_batch_size, request.max_seq_len, self.device, self.dtype)
        self.pos = self.batch = 0

    @torch.inference_mode()
    def prefill(self, prompts: torch.Tensor) -> torch.Tensor:
        logits = self.model(prompts.to(self.device), 0, self.cache, last_only=True)
        self.batch, self.pos = prompts.shape
        return logits[:, -1].argmax(-1)

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape != (self.batch,):
            raise ValueError(f"torch_ref decode: tokens of shape {tuple(tokens.shape)}, expected ({self.batch},) "
                             f"after a prefill of batch {self.batch}")
        logits = self.model(tokens.to(self.device)[:, None], self.pos, self.cache)
        self.pos += 1
        return logits[:, -1].argmax(-1)

    @torch.inference_mode()
    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """fp32 logits [B, T, V] (on the model's device) of tokens [B, T] at positions 0..T-1,
        recomputed from scratch without the KV cache."""
        return self.model(tokens.to(self.device))

    def memory(self) -> dict[str, float | None]:
        if self.model is None:
            return {"weights_gib": None, "kv_cache_gib": None}
        return {"weights_gib": self.model.nbytes / 2**30, "kv_cache_gib": self.cache.nbytes / 2**30}

    def version(self) -> str:
        return f"torch {torch.__version__}"

    def close(self) -> None:
        self.model = self.cache = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
