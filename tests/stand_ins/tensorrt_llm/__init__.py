"""A stand-in for the `tensorrt_llm` package, for testing backends/tensorrt_llm where TensorRT-LLM
cannot be installed. It keeps the public surface the adapter uses with the real names, required
and optional parameters and validation (from tensorrt_llm/llmapi/llm.py, llm_args.py,
sampling_params.py and commands/serve.py): an unknown keyword, a missing end_id without a
tokenizer or a MoE backend outside the real Literal fail as they do there. The engine behind it
is torch_ref on the checkpoint directory, so the tokens it streams are real greedy tokens."""

from tensorrt_llm.llmapi import LLM
from tensorrt_llm.sampling_params import SamplingParams

__version__ = "0.0.0+stand-in"
__all__ = ["LLM", "SamplingParams"]
