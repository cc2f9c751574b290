"""trtllm-serve as tensorrt_llm/commands/serve.py defines it (the options the adapter passes, with
their real names), serving the stand-in LLM: /health, /v1/models and streamed /v1/completions whose
request fields are checked against the real CompletionRequest (extra fields are refused, as
its pydantic model forbids them). Chunks carry text but no token ids, as the real server's do.

    python -m tensorrt_llm.commands.serve MODEL --host 127.0.0.1 --port N [options]
"""

from __future__ import annotations

import argparse
import json
import time

import yaml
from aiohttp import web

from tensorrt_llm.llmapi import LLM
from tensorrt_llm.sampling_params import SamplingParams

COMPLETION_FIELDS = {
    "model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs", "max_tokens", "n",
    "presence_penalty", "seed", "stop", "stream", "stream_options", "suffix", "temperature", "top_p", "user",
    "lora_request", "use_beam_search", "top_k", "top_p_min", "min_p", "repetition_penalty", "length_penalty",
    "early_stopping", "stop_token_ids", "include_stop_str_in_output", "ignore_eos", "min_tokens",
    "skip_special_tokens", "spaces_between_special_tokens", "truncate_prompt_tokens", "return_context_logits",
    "detokenize", "add_special_tokens", "response_format", "disaggregated_params"}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser("trtllm-serve")
    p.add_argument("model")
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--host", default="localhost")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", choices=["pytorch", "tensorrt", "_autodeploy"], default="pytorch")
    p.add_argument("--log_level", default="info")
    p.add_argument("--max_beam_width", type=int, default=1)
    p.add_argument("--max_batch_size", type=int, default=2048)
    p.add_argument("--max_num_tokens", type=int, default=8192)
    p.add_argument("--max_seq_len", type=int, default=None)
    p.add_argument("--tp_size", type=int, default=1)
    p.add_argument("--pp_size", type=int, default=1)
    p.add_argument("--ep_size", type=int, default=None)
    p.add_argument("--gpus_per_node", type=int, default=None)
    p.add_argument("--kv_cache_free_gpu_memory_fraction", type=float, default=0.9)
    p.add_argument("--trust_remote_code", action="store_true")
    p.add_argument("--extra_llm_api_options", default=None)
    return p.parse_args(argv)


class Server:
    def __init__(self, llm: LLM, model: str, end_id: int):
        self.llm, self.model, self.end_id = llm, model, end_id

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": self.model}]})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        extra = sorted(set(body) - COMPLETION_FIELDS)
        if extra:
            return web.json_response({"error": {"message": f"extra fields not permitted: {extra}"}}, status=400)
        if body.get("detokenize", True) and self.llm.tokenizer is None:
            return web.json_response({"error": {"message": "detokenize needs a tokenizer"}}, status=400)
        params = SamplingParams(max_tokens=body.get("max_tokens") or 16, min_tokens=body.get("min_tokens", 0),
                                ignore_eos=body.get("ignore_eos", False), temperature=body.get("temperature"),
                                detokenize=False, end_id=self.end_id)
        result = self.llm.generate_async(body["prompt"], sampling_params=params, streaming=True)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        head = {"id": f"cmpl-{result.request_id}", "object": "text_completion", "created": int(time.time()),
                "model": self.model}
        async for out in result:
            choice = {"index": 0, "text": "", "logprobs": None, "finish_reason": out.outputs[0].finish_reason}
            await resp.write(f"data: {json.dumps({**head, 'choices': [choice]})}\n\n".encode())
        if (body.get("stream_options") or {}).get("include_usage", True):
            n = len(result.outputs[0].token_ids)
            usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": n,
                     "total_tokens": len(body["prompt"]) + n}
            await resp.write(f"data: {json.dumps({**head, 'choices': [], 'usage': usage})}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp


def main(argv=None) -> None:
    args = parse(argv)
    llm_args = {"max_batch_size": args.max_batch_size, "max_num_tokens": args.max_num_tokens,
                "max_seq_len": args.max_seq_len, "backend": args.backend,
                "kv_cache_config": {"free_gpu_memory_fraction": args.kv_cache_free_gpu_memory_fraction}}
    if args.extra_llm_api_options:
        with open(args.extra_llm_api_options) as f:
            llm_args.update(yaml.safe_load(f) or {})
    llm = LLM(args.model, tokenizer=args.tokenizer, tensor_parallel_size=args.tp_size, **llm_args)
    config = json.load(open(f"{args.model}/config.json"))
    eos = config["eos_token_id"]
    server = Server(llm, args.model, eos[0] if isinstance(eos, list) else eos)
    app = web.Application()
    app.router.add_get("/health", server.health)
    app.router.add_get("/v1/models", server.models)
    app.router.add_post("/v1/completions", server.completions)
    print(f"stand-in trtllm-serve on {args.host}:{args.port}", flush=True)
    web.run_app(app, host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
