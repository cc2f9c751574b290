"""triton_mxfp4: the native engine, PyTorch glue plus Triton kernels, MXFP4 experts decoded in the
kernels (model.py; kernels in attention.py, norm_rope.py, lm_head.py, moe.py; MXFP8 activations
for quant=mxfp4_mxfp8 in mxfp8.py).

On a CPU it runs in Triton's interpreter (TRITON_INTERPRET=1, set before the first import), slowly
but with the same kernels; CUDA graphs need a GPU.
"""

from __future__ import annotations

import re

from backends.triton_mxfp4 import interpret  # noqa: F401  (patches the interpreter before any kernel runs)

import torch
import triton
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

from harness.engine import DoesNotFit, LoadRequest, StepBackend
from backends.triton_mxfp4 import attention, lm_head, moe_kernels, routing
from backends.triton_mxfp4.model import Transformer
from harness.model.spec import QUANT_MODES
from harness.model.weights import open_weights


def _kernels(module, category: str) -> dict[str, str]:
    """The Triton functions of a module (the profiler names a kernel after its function)."""
    return {name: category for name, obj in vars(module).items() if isinstance(obj, (JITFunction, InterpretedFunction))}


KERNELS = {**_kernels(attention, "attention"), **_kernels(lm_head, "lm_head"), **_kernels(moe_kernels, "moe_gemm"),
           **_kernels(routing, "router"), "_add_rmsnorm_kernel": "norm", "_rope_kv_kernel": "rope"}
# The engine's only cuBLAS GEMMs are the attention block's QKV and O projections (router and lm_head
# are kernels of ours; bf16 experts run torch._grouped_mm's grouped CUTLASS GEMM). Replayed from a
# CUDA graph a kernel carries no range, so these names are all that says what it computes.
GROUPED_GEMM = re.compile(r"group", re.IGNORECASE)
CUBLAS_GEMM = re.compile(r"nvjet|gemv|gemm|splitKreduce|xmma|cutlass", re.IGNORECASE)


class JitCount:
    """Triton JIT compilations in this process since install (knobs.runtime.jit_post_compile_hook:
    a kernel built, or fetched from Triton's disk cache, at its first launch with a new
    specialisation). Triton's interpreter compiles nothing: on a CPU the count stays 0."""

    def __init__(self):
        self.n = 0
        self.chained = triton.knobs.runtime.jit_post_compile_hook  # someone else's hook keeps working
        triton.knobs.runtime.jit_post_compile_hook = self

    def __call__(self, **kwargs):
        self.n += 1
        if self.chained is not None:
            return self.chained(**kwargs)


class TritonMxfp4(StepBackend):
    quants = QUANT_MODES  # mxfp4_mxfp8 (MXFP8 activations x MXFP4 experts) is this engine's alone

    def __init__(self, cuda_graphs: bool = True, **options):
        super().__init__(cuda_graphs=cuda_graphs, **options)
        self.engine: Transformer | None = None
        self.jit: JitCount | None = None

    def load(self, request: LoadRequest) -> None:
        if request.quant not in QUANT_MODES:
            raise ValueError(f"triton_mxfp4: quant={request.quant!r}, expected one of {QUANT_MODES}")
        if torch.cuda.is_available() and request.device.startswith("cuda"):
            dev = torch.device(request.device)
            self.device = torch.device("cuda", torch.cuda.current_device() if dev.index is None else dev.index)
            torch.cuda.set_device(self.device)
            spec = request.spec
            need = spec.weight_bytes(request.quant) + spec.kv_cache_bytes(request.max_batch_size, request.max_seq_len)
            free, _ = torch.cuda.mem_get_info(self.device)
            if need > free:
                raise DoesNotFit(need, free, f"{spec.name} {request.quant} weights and KV cache")
        elif triton.knobs.runtime.interpret:
            self.device = torch.device("cpu")
        else:
            raise RuntimeError("triton_mxfp4 needs a CUDA GPU, or TRITON_INTERPRET=1 to run its kernels on the CPU")
        self.jit = JitCount()
        self.engine = Transformer(open_weights(request), request.quant, self.device, self.options["cuda_graphs"])
        self.engine.allocate(request.max_batch_size, request.max_seq_len)

    def prefill(self, prompts: torch.Tensor) -> torch.Tensor:
        return self.engine.prefill(prompts)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.engine.decode(tokens)

    def compiles(self) -> int | None:
        return None if self.jit is None else self.jit.n

    def memory(self) -> dict[str, float | None]:
        if self.engine is None:
            return {"weights_gib": None, "kv_cache_gib": None}
        return {"weights_gib": self.engine.weight_bytes / 2**30, "kv_cache_gib": self.engine.cache.nbytes / 2**30}

    def version(self) -> str:
        return f"triton {triton.__version__}, torch {torch.__version__}"

    def kernel_category(self, kernel_name: str) -> str | None:
        if kernel_name in KERNELS:
            return KERNELS[kernel_name]
        if GROUPED_GEMM.search(kernel_name):
            return "moe_gemm"
        if CUBLAS_GEMM.search(kernel_name):
            return "attention"
        return None

    def close(self) -> None:
        self.engine = None
        if self.jit is not None:
            triton.knobs.runtime.jit_post_compile_hook = self.jit.chained
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
