"""The configuration classes of tensorrt_llm/llmapi/llm_args.py that the adapter builds, and the
field names LLM accepts (TorchLlmArgs with BaseLlmArgs). The real classes are pydantic models
with extra="forbid"; keyword-only dataclasses fail the same way on an unknown field."""

from __future__ import annotations

from dataclasses import dataclass, fields

MOE_BACKENDS = ("AUTO", "CUTLASS", "CUTEDSL", "WIDEEP", "TRTLLM", "DEEPGEMM", "DENSEGEMM", "VANILLA", "TRITON",
                "MARLIN", "MEGAMOE_DEEPGEMM")


@dataclass(kw_only=True)
class KvCacheConfig:
    enable_block_reuse: bool = True
    max_tokens: int | None = None
    max_attention_window: list[int] | None = None
    sink_token_length: int | None = None
    free_gpu_memory_fraction: float | None = 0.9
    host_cache_size: int | None = None
    onboard_blocks: bool = True
    cross_kv_cache_fraction: float | None = None
    secondary_offload_min_priority: int | None = None
    event_buffer_max_size: int = 0
    enable_partial_reuse: bool = True
    copy_on_partial_reuse: bool = True
    use_uvm: bool = False
    max_gpu_total_bytes: int = 0
    dtype: str = "auto"

    def __post_init__(self):
        if self.free_gpu_memory_fraction is not None and not 0 <= self.free_gpu_memory_fraction <= 1:
            raise ValueError(f"free_gpu_memory_fraction={self.free_gpu_memory_fraction} must be in [0, 1]")


@dataclass(kw_only=True)
class CudaGraphConfig:
    batch_sizes: list[int] | None = None
    max_batch_size: int = 0
    enable_padding: bool = False

    def __post_init__(self):
        if self.max_batch_size < 0:
            raise ValueError("cuda_graph_config.max_batch_size must be non-negative")


@dataclass(kw_only=True)
class MoeConfig:
    backend: str = "AUTO"
    max_num_tokens: int | None = None
    load_balancer: object = None
    disable_finalize_fusion: bool = False

    def __post_init__(self):
        if self.backend not in MOE_BACKENDS:
            raise ValueError(f"moe_config.backend={self.backend!r}: input should be one of {MOE_BACKENDS}")


# Nested configs LLM converts from dicts (pydantic validates a dict into the model).
CONFIG_FIELDS = {"kv_cache_config": KvCacheConfig, "cuda_graph_config": CudaGraphConfig, "moe_config": MoeConfig}

BASE_LLM_ARGS = (
    "model", "tokenizer", "tokenizer_mode", "custom_tokenizer", "skip_tokenizer_init", "trust_remote_code",
    "tensor_parallel_size", "dtype", "revision", "tokenizer_revision", "model_kwargs", "pipeline_parallel_size",
    "context_parallel_size", "gpus_per_node", "moe_cluster_parallel_size", "moe_tensor_parallel_size",
    "moe_expert_parallel_size", "enable_attention_dp", "enable_lm_head_tp_in_adp", "pp_partition", "cp_config",
    "load_format", "enable_lora", "lora_config", "kv_cache_config", "enable_chunked_prefill",
    "guided_decoding_backend", "batched_logits_processor", "iter_stats_max_iterations",
    "request_stats_max_iterations", "peft_cache_config", "scheduler_config", "cache_transceiver_config",
    "sparse_attention_config", "speculative_config", "max_batch_size", "max_input_len", "max_seq_len",
    "max_beam_width", "max_num_tokens", "gather_generation_logits", "num_postprocess_workers",
    "postprocess_tokenizer_dir", "reasoning_parser", "decoding_config", "mpi_session", "otlp_traces_endpoint",
    "backend", "return_perf_metrics", "perf_metrics_max_requests", "orchestrator_type", "env_overrides")
TORCH_LLM_ARGS = BASE_LLM_ARGS + (
    "garbage_collection_gen0_threshold", "cuda_graph_config", "multimodal_config", "attention_dp_config",
    "disable_overlap_scheduler", "moe_config", "nvfp4_gemm_config", "dwdp_config", "encoder_max_batch_size",
    "encoder_max_num_tokens", "attn_backend", "sampler_type", "sampler_force_async_worker",
    "enable_speculative_beam_history_d2h", "enable_early_first_token_response",
    "enable_low_latency_host_dispatch", "enable_iter_perf_stats", "enable_iter_req_stats", "print_iter_log",
    "batch_wait_timeout_ms", "batch_wait_timeout_iters", "batch_wait_max_tokens_ratio", "torch_compile_config")


def coerce(key: str, value):
    """A nested config as LLM would hold it: the class itself, or a dict validated into it."""
    cls = CONFIG_FIELDS.get(key)
    if cls is None or value is None or isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return cls(**value)
    raise TypeError(f"{key}: expected {cls.__name__} or a dict, got {type(value).__name__}")


def field_names(cls) -> list[str]:
    return [f.name for f in fields(cls)]
