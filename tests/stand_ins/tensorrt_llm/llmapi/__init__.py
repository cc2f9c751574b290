from tensorrt_llm.llmapi.llm import LLM, RequestOutput
from tensorrt_llm.llmapi.llm_args import CudaGraphConfig, KvCacheConfig, MoeConfig
from tensorrt_llm.sampling_params import SamplingParams

__all__ = ["LLM", "RequestOutput", "CudaGraphConfig", "KvCacheConfig", "MoeConfig", "SamplingParams"]
