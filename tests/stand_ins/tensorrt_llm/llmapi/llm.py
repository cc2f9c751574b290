"""LLM (the PyTorch-backend LLM of tensorrt_llm/llmapi/llm.py) with the real constructor and
generate_async signatures and their argument checks; torch_ref on the checkpoint computes the
greedy tokens, streamed one per iteration like the real executor's responses."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tensorrt_llm.llmapi.llm_args import TORCH_LLM_ARGS, coerce
from tensorrt_llm.sampling_params import SamplingParams

STEP_S = 0.001  # the stand-in engine's time per token


@dataclass
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None


class RequestOutput:
    """A streaming result: `async for out in result` yields it after every new token."""

    def __init__(self, request_id: int, prompt_token_ids: list[int], tokens: list[int], streaming: bool):
        self.request_id, self.prompt_token_ids = request_id, prompt_token_ids
        self.outputs = [CompletionOutput(0)]
        self._tokens, self._streaming, self.finished = tokens, streaming, False

    async def _advance(self):
        await asyncio.sleep(STEP_S)
        out = self.outputs[0]
        out.token_ids = out.token_ids + [self._tokens[len(out.token_ids)]]
        if len(out.token_ids) == len(self._tokens):
            out.finish_reason, self.finished = "length", True

    def __aiter__(self):
        return self

    async def __anext__(self) -> "RequestOutput":
        if self.finished:
            raise StopAsyncIteration
        await self._advance()
        return self

    async def aresult(self) -> "RequestOutput":
        while not self.finished:
            await self._advance()
        return self


class LLM:
    def __init__(self, model: str | Path, tokenizer=None, tokenizer_mode: str = "auto",
                 skip_tokenizer_init: bool = False, trust_remote_code: bool = False, tensor_parallel_size: int = 1,
                 dtype: str = "auto", revision: str | None = None, tokenizer_revision: str | None = None, **kwargs):
        for key in kwargs:
            if key not in TORCH_LLM_ARGS:
                raise ValueError(f"{type(self).__name__} got invalid argument: {key}")
        self.args = {key: coerce(key, value) for key, value in kwargs.items()}
        path = Path(model)
        if not (path / "config.json").is_file():
            raise ValueError(f"{model}: no config.json (the stand-in loads local HF checkpoints only)")
        if tokenizer is None and not skip_tokenizer_init and not (path / "tokenizer.json").is_file():
            raise OSError(f"{model}: no tokenizer files; pass skip_tokenizer_init=True")
        self.tokenizer = None if skip_tokenizer_init else tokenizer
        self.max_seq_len = self.args.get("max_seq_len") or 2048
        self._engine = _torch_ref(path, self.max_seq_len)
        self._ids = 0
        self._shutdown = False

    def generate_async(self, inputs, sampling_params: SamplingParams | None = None, lora_request=None,
                       prompt_adapter_request=None, streaming: bool = False, kv_cache_retention_config=None,
                       disaggregated_params=None, _postproc_params=None, scheduling_params=None,
                       cache_salt: str | None = None) -> RequestOutput:
        if self._shutdown:
            raise RuntimeError("LLM is shutting down")
        params = sampling_params or SamplingParams()
        if not isinstance(params, SamplingParams):
            raise TypeError(f"The sampling_params must be type SamplingParams or None, but got {type(params)}")
        if params.end_id is None and self.tokenizer is None:
            raise ValueError("tokenizer is required to reset end_id if it is None, or you can explicitly specify "
                             "the end_id for sampling_params")
        prompt = inputs["prompt_token_ids"] if isinstance(inputs, dict) else inputs
        if not (isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)):
            raise TypeError(f"The inputs must be type str or list of int, but got {type(inputs)}")
        if len(prompt) + params.max_tokens > self.max_seq_len:
            raise ValueError(f"prompt length {len(prompt)} + max_tokens {params.max_tokens} exceed "
                             f"max_seq_len {self.max_seq_len}")
        if not params.greedy:
            raise NotImplementedError("the stand-in engine decodes greedily only")
        tokens = self._engine.generate(torch.tensor([prompt]), params.max_tokens).tokens[0].tolist()
        if not params.ignore_eos and params.end_id in tokens:
            tokens = tokens[:tokens.index(params.end_id) + 1]
        self._ids += 1
        return RequestOutput(self._ids, prompt, tokens, streaming)

    def shutdown(self) -> None:
        self._shutdown = True


def _torch_ref(path: Path, max_seq_len: int):
    from harness.model.load_request import LoadRequest
    from backends.torch_ref import TorchRef
    from harness.model.checkpoint import Checkpoint

    ckpt = Checkpoint(path)
    ref = TorchRef(device="cpu")
    ref.load(LoadRequest(ckpt.spec, ckpt.quant, path, device="cpu", max_seq_len=max_seq_len))
    return ref
