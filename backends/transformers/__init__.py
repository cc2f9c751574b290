"""transformers: Hugging Face's GptOssForCausalLM, the baseline a user tries first.

The model loads from the HF checkpoint directory as a user would load it. Its MXFP4 experts run
through transformers' own MXFP4 kernels (the `kernels` package's Triton MoE, fetched from the
hub) only where those are available; otherwise they are dequantised to bf16 at load, which is
what transformers itself falls back to. The harness drives the steps: a prefill into a fresh
DynamicCache, then one-token decode steps on it, greedy argmax of the last position.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from harness.engine import DoesNotFit, LoadRequest, StepBackend
from harness.model.checkpoint import Checkpoint
from harness.model.synthetic import synthetic_checkpoint

_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


class Transformers(StepBackend):
    def __init__(self, device: str = "auto", dtype: str = "bfloat16", dequantize: str | bool = "auto",
                 attn_implementation: str = "eager", experts_implementation: str | None = None, **options):
        super().__init__(device=device, dtype=dtype, dequantize=dequantize, attn_implementation=attn_implementation,
                         experts_implementation=experts_implementation, **options)
        if dtype not in _DTYPES:
            raise ValueError(f"transformers: dtype={dtype!r}, expected one of {sorted(_DTYPES)}")
        if dequantize not in ("auto", True, False):
            raise ValueError(f"transformers: dequantize={dequantize!r}, expected auto, true or false")
        self.model = None
        self.cache = None

    def load(self, request: LoadRequest) -> None:
        import transformers

        if request.quant not in self.quants:
            raise ValueError(f"transformers: quant={request.quant!r}, expected one of {self.quants}")
        opts = self.options
        want = opts["device"]
        if want == "auto":
            want = request.device if request.device.startswith("cuda") and torch.cuda.is_available() else "cpu"
        self.device = torch.device(want)
        self.dtype = _DTYPES[opts["dtype"]]
        layout = Checkpoint(request.checkpoint).quant if request.checkpoint is not None else "mxfp4"
        if request.quant == "mxfp4" and layout != "mxfp4":
            raise ValueError(f"transformers: quant=mxfp4 needs an MXFP4 checkpoint; {request.checkpoint} holds "
                             f"{layout} experts")
        # A bf16 run of an MXFP4 checkpoint is its dequantisation, the same weights torch_ref uses.
        self.dequantised = layout == "mxfp4" and (request.quant == "bf16" or self._dequantize())
        # Before anything is written or allocated: a synthetic 120b alone is a 65 GB file.
        self._check_fit(request, "bf16" if layout == "bf16" or self.dequantised else "mxfp4")
        path = Path(request.checkpoint) if request.checkpoint is not None else \
            synthetic_checkpoint(request.spec, request.seed, request.router_skew)

        kwargs = {}
        if layout == "mxfp4":
            kwargs["quantization_config"] = transformers.Mxfp4Config(dequantize=self.dequantised)
        if opts["experts_implementation"] is not None:
            kwargs["experts_implementation"] = opts["experts_implementation"]
        # Loading straight onto the device (dequantising there) needs `accelerate`; without it the
        # model loads on the CPU and moves.
        if importlib.util.find_spec("accelerate") is not None:
            kwargs["device_map"] = self.device
        model = transformers.GptOssForCausalLM.from_pretrained(
            path, dtype=self.dtype, attn_implementation=opts["attn_implementation"], **kwargs).to(self.device)
        if self.dtype == torch.float32:  # dequantised experts stay bf16 whatever `dtype` asked for
            model.float()
        self.model = model.eval()

    def _dequantize(self) -> bool:
        """auto: transformers' MXFP4 kernels need a GPU and the `kernels` package."""
        if self.options["dequantize"] != "auto":
            return bool(self.options["dequantize"])
        return not (self.device.type == "cuda" and importlib.util.find_spec("kernels") is not None)

    def _check_fit(self, request: LoadRequest, weights: str) -> None:
        if self.device.type != "cuda":
            return
        spec = request.spec
        # Dequantised experts hold every weight at 2 bytes; the cache grows to the group's largest point.
        weight_bytes = spec.weight_bytes(weights) if self.dtype == torch.bfloat16 else \
            spec.weight_bytes(weights) * self.dtype.itemsize / 2
        need = weight_bytes + spec.kv_cache_bytes(request.max_batch_size, request.max_seq_len) \
            * self.dtype.itemsize / 2
        free, _ = torch.cuda.mem_get_info(self.device)
        if need > free:
            raise DoesNotFit(need, free, f"{spec.name} with {weights} experts in {self.options['dtype']} "
                                         f"and the KV cache")

    @torch.inference_mode()
    def prefill(self, prompts: torch.Tensor) -> torch.Tensor:
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.model.config)
        out = self.model(input_ids=prompts.to(self.device), past_key_values=self.cache, use_cache=True,
                         logits_to_keep=1)
        return out.logits[:, -1].argmax(-1)

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=tokens.to(self.device)[:, None], past_key_values=self.cache, use_cache=True)
        return out.logits[:, -1].argmax(-1)

    def columns(self) -> dict:
        """engine_path: how the experts ran (transformers' MXFP4 kernels or dequantised to bf16),
        and the experts and attention implementations transformers picked."""
        cfg = self.model.config
        # transformers may still fall back to dequantising (with a warning): ask the modules.
        kernels = any(type(m).__name__ == "Mxfp4GptOssExperts" for m in self.model.modules())
        experts = "mxfp4 kernels" if kernels else "mxfp4 dequantised to bf16" if self.dequantised else "bf16"
        return {"engine_path": f"{experts}; dtype={self.options['dtype']} "
                               f"experts={cfg._experts_implementation} attn={cfg._attn_implementation}"}

    def memory(self) -> dict[str, float | None]:
        if self.model is None:
            return {"weights_gib": None, "kv_cache_gib": None}
        weights = sum(t.nbytes for t in [*self.model.parameters(), *self.model.buffers()])
        kv = None
        if self.cache is not None:
            kv = sum(t.nbytes for layer in self.cache.layers for t in (layer.keys, layer.values)
                     if isinstance(t, torch.Tensor)) / 2**30
        return {"weights_gib": weights / 2**30, "kv_cache_gib": kv}

    def version(self) -> str:
        import transformers

        return f"transformers {transformers.__version__}"

    def close(self) -> None:
        self.model = self.cache = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
