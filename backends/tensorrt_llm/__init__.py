"""tensorrt_llm: TensorRT-LLM's LLM API on its PyTorch backend (`backend=tensorrt_llm`) and
trtllm-serve driven by the OpenAI client (`backend=tensorrt_llm_serve`).

TensorRT-LLM cannot be installed on the project's machines (it pins its own torch and numpy and
ships from NVIDIA's index), so this adapter is written from its public API: tensorrt_llm/llmapi/
llm.py (LLM, generate_async), llm_args.py (TorchLlmArgs, KvCacheConfig, CudaGraphConfig,
MoeConfig), sampling_params.py and commands/serve.py. It imports tensorrt_llm lazily, and
tests/stand_ins/tensorrt_llm checks every call it makes against those signatures. Where
TensorRT-LLM is installed: `gptoss-bench backend=tensorrt_llm backend.python=/path/to/its/python`.

The MoE path is `moe_config.backend`: TRITON (Hopper's default, bf16 activations x MXFP4,
W4A16), CUTLASS, TRTLLM (Blackwell, MXFP8 activations), gpt-oss.md section E. TensorRT-LLM does
not report the path it ran, so `engine_path` holds the one asked for.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import torch

from harness.engine import Backend, Generation, LoadRequest, Phases, no_phases, stamped_generation
from backends.openai_endpoint import OpenAIEndpoint
from backends.openai_endpoint.server import HOST, ServerProcess, free_port
from harness.model.bf16_checkpoint import engine_checkpoint

MOE_BACKENDS = ("TRITON", "CUTLASS", "TRTLLM")


class EngineOptions:
    """The engine settings both modes share (conf/backend/tensorrt_llm*.yaml)."""

    def __init__(self, moe_backend: str = "TRITON", cuda_graphs: bool = True,
                 kv_cache_dtype: str = "auto", free_gpu_memory_fraction: float = 0.9, attn_backend: str = "TRTLLM",
                 dtype: str = "auto", llm_args: dict | None = None):
        if moe_backend not in MOE_BACKENDS:
            raise ValueError(f"tensorrt_llm: moe_backend={moe_backend!r}, expected one of {MOE_BACKENDS}")
        self.moe_backend, self.cuda_graphs = moe_backend, cuda_graphs
        self.kv_cache_dtype, self.free_gpu_memory_fraction = kv_cache_dtype, free_gpu_memory_fraction
        self.attn_backend, self.dtype, self.extra = attn_backend, dtype, dict(llm_args or {})

    def llm_args(self, request: LoadRequest) -> dict:
        """TorchLlmArgs as plain values (the nested configs as dicts, as trtllm-serve's YAML holds them)."""
        batch = request.max_batch_size
        return {
            "skip_tokenizer_init": True, "tensor_parallel_size": request.parallel.tp, "dtype": self.dtype,
            "max_batch_size": batch, "max_seq_len": request.max_seq_len,
            # Block reuse off: repeats of the same prompts would otherwise skip their prefill.
            "kv_cache_config": {"free_gpu_memory_fraction": self.free_gpu_memory_fraction,
                                "dtype": self.kv_cache_dtype, "enable_block_reuse": False},
            "cuda_graph_config": {"max_batch_size": batch, "enable_padding": True} if self.cuda_graphs else None,
            "moe_config": {"backend": self.moe_backend}, "attn_backend": self.attn_backend, **self.extra,
        }

    def engine_path(self) -> str:
        return f"requested moe={self.moe_backend} attn={self.attn_backend} cuda_graphs={self.cuda_graphs}"


def _version() -> str:
    import tensorrt_llm

    return f"tensorrt_llm {tensorrt_llm.__version__}"


class TensorRTLLM(Backend):
    parallel_keys = ("tp",)  # tensor_parallel_size from parallel.tp
    engine_options = EngineOptions  # what **options takes (the sweep checks a point's keys against it)

    def __init__(self, **options):
        super().__init__(**options)
        self.engine = EngineOptions(**options)
        self.llm = None

    def load(self, request: LoadRequest) -> None:
        from tensorrt_llm import LLM
        from tensorrt_llm.llmapi import CudaGraphConfig, KvCacheConfig, MoeConfig

        self.spec = request.spec
        args = self.engine.llm_args(request)
        args["kv_cache_config"] = KvCacheConfig(**args["kv_cache_config"])
        args["moe_config"] = MoeConfig(**args["moe_config"])
        if args["cuda_graph_config"] is not None:
            args["cuda_graph_config"] = CudaGraphConfig(**args["cuda_graph_config"])
        self.llm = LLM(str(engine_checkpoint(request)), **args)

    def generate(self, prompts: torch.Tensor, new_tokens: int, forced: torch.Tensor | None = None,
                 phases: Phases = no_phases) -> Generation:
        if forced is not None:
            raise NotImplementedError("TensorRT-LLM's engine cannot be fed forced tokens")
        return asyncio.run(self._generate(prompts.tolist(), new_tokens, phases))

    async def _generate(self, prompts: list[list[int]], new_tokens: int, phases: Phases) -> Generation:
        from tensorrt_llm import SamplingParams

        # No tokenizer, so end_id and pad_id are given; temperature, top_k and top_p unset is greedy.
        params = SamplingParams(max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True, detokenize=False,
                                end_id=self.spec.eos_token_id, pad_id=self.spec.pad_token_id)
        tokens: list[list[int]] = [[] for _ in prompts]
        stamps: list[list[float]] = [[] for _ in prompts]
        started = asyncio.Event()  # every sequence has its first token

        async def stream(i: int, prompt: list[int]):
            try:
                async for out in self.llm.generate_async(prompt, sampling_params=params, streaming=True):
                    now = time.perf_counter()
                    ids = list(out.outputs[0].token_ids)  # cumulative
                    stamps[i] += [now] * (len(ids) - len(tokens[i]))
                    tokens[i] = ids
                    if all(stamps):
                        started.set()
            finally:
                started.set()  # a stream that ends early (or fails) must not hold the prefill phase open

        with phases("prefill"):
            start = time.perf_counter()
            tasks = [asyncio.create_task(stream(i, p)) for i, p in enumerate(prompts)]
            await started.wait()
        with phases("decode"):
            await asyncio.gather(*tasks)
        return stamped_generation(tokens, stamps, start, new_tokens)

    def columns(self) -> dict:
        return {"engine_path": self.engine.engine_path()}

    def version(self) -> str:
        return _version()

    def close(self) -> None:
        if self.llm is not None:
            self.llm.shutdown()
            self.llm = None


class TensorRTLLMServe(OpenAIEndpoint):
    """trtllm-serve (next to this interpreter, or `serve_command`) as a child process, driven by the
    OpenAI client. Its completions stream no token ids, so its points have no agreement."""

    parallel_keys = ("tp",)  # --tp_size from parallel.tp

    def __init__(self, serve_command: list[str] | None = None, ready_timeout_s: float = 1800.0,
                 moe_backend: str = "TRITON", cuda_graphs: bool = True,
                 kv_cache_dtype: str = "auto", free_gpu_memory_fraction: float = 0.9, attn_backend: str = "TRTLLM",
                 dtype: str = "auto", llm_args: dict | None = None, **client_options):
        # Without a tokenizer the server must not detokenize.
        client_options.setdefault("extra_body", {"detokenize": False})
        super().__init__(serve_command=serve_command, ready_timeout_s=ready_timeout_s, **client_options)
        self.engine = EngineOptions(moe_backend, cuda_graphs, kv_cache_dtype,
                                    free_gpu_memory_fraction, attn_backend, dtype, llm_args)

    def serve(self, request: LoadRequest) -> ServerProcess:
        import yaml

        args = self.engine.llm_args(request)
        cli = {key: args.pop(key) for key in ("max_batch_size", "max_seq_len", "tensor_parallel_size")}
        extra = Path(tempfile.mkstemp(prefix="trtllm-serve-", suffix=".yaml")[1])
        extra.write_text(yaml.safe_dump(args))
        port = free_port()
        command = [*(self.options["serve_command"] or [str(Path(sys.executable).parent / "trtllm-serve")]),
                   str(engine_checkpoint(request)), "--host", HOST, "--port", str(port), "--backend", "pytorch",
                   "--max_batch_size", str(cli["max_batch_size"]), "--max_seq_len", str(cli["max_seq_len"]),
                   "--tp_size", str(cli["tensor_parallel_size"]), "--extra_llm_api_options", str(extra)]
        return ServerProcess("trtllm-serve", command, port, ready_timeout_s=self.options["ready_timeout_s"])

    def columns(self) -> dict:
        return {**super().columns(), "engine_path": self.engine.engine_path()}

    def version(self) -> str:
        return _version()
