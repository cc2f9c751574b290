"""openai_endpoint: any OpenAI-compatible server (vLLM, trtllm-serve, SGLang) as a backend.

The point's prompts become streamed /v1/completions requests with token-id prompts and exactly
`new_tokens` greedy tokens each (ignore_eos). By default the point is one batch: its `batch`
prompts sent at once, `concurrency` = `num_requests` = batch. A serving load sets
`num_requests` (cycling over the prompts) and either `concurrency` (closed loop) or
`request_rate` (open loop, Poisson, seeded by the point's seed; `concurrency` then caps the
requests in flight). docs/serving.md defines the columns.

What the harness gets: the tokens of the first successful request of each prompt and, from the
arrival of every streamed token of those requests, the batch-wide times every engine reports
(harness.engine.stamped_generation: TTFT when every prompt has its first token, step i when every
prompt has its token i). Means and percentiles over all requests are serving columns of their own
(SERVING_COLUMNS). The serve modes of vLLM and TensorRT-LLM subclass this
with a server they start themselves (`serve()`).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import torch

from harness.engine import Backend, Generation, LoadRequest, Phases, no_phases, stamped_generation
from backends.openai_endpoint.load import RequestRecord, run_load
from backends.openai_endpoint.metrics import SERVING_COLUMNS, serving_columns
from backends.openai_endpoint.server import ServerProcess


class OpenAIEndpoint(Backend):
    columns_schema = SERVING_COLUMNS
    completions_path = "/v1/completions"  # llama-server's native /completion streams token ids

    def __init__(self, url: str | None = None, model: str | None = None, extra_body: dict | None = None,
                 num_requests: int | None = None, concurrency: int | None = None, request_rate: float | None = None,
                 slo_ttft_ms: float | None = None, slo_tpot_ms: float | None = None,
                 slo_e2el_ms: float | None = None, request_timeout_s: float = 600.0, **options):
        super().__init__(url=url, model=model, extra_body=dict(extra_body or {}), num_requests=num_requests,
                         concurrency=concurrency, request_rate=request_rate, slo_ttft_ms=slo_ttft_ms,
                         slo_tpot_ms=slo_tpot_ms, slo_e2el_ms=slo_e2el_ms, request_timeout_s=request_timeout_s,
                         **options)
        for key in ("num_requests", "concurrency"):
            if self.options[key] is not None and self.options[key] < 1:
                raise ValueError(f"{key}={self.options[key]}: expected a positive count or null")
        self.server: ServerProcess | None = None
        self.url = url
        self._columns: dict = {}

    # ---- lifecycle ----------------------------------------------------------------------------
    def serve(self, request: LoadRequest) -> ServerProcess | None:
        """The server to start for this load (the serve modes); None: use `url` as given."""
        return None

    def load(self, request: LoadRequest) -> None:
        self.request = request
        self.server = self.serve(request)
        if self.server is not None:
            self.server.start()
            self.url = self.server.url
        elif not self.url:
            raise ValueError("openai_endpoint: set backend.url to the server's base URL (http://host:port)")
        self.url = self.url.rstrip("/")
        self.model = self.options["model"] or self._served_model()

    def _served_model(self) -> str:
        with urllib.request.urlopen(self.url + "/v1/models", timeout=30) as resp:
            models = json.load(resp)["data"]
        if not models:
            raise ValueError(f"{self.url}/v1/models lists no model")
        return models[0]["id"]

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    # ---- one point --------------------------------------------------------------------------
    def generate(self, prompts: torch.Tensor, new_tokens: int, forced: torch.Tensor | None = None,
                 phases: Phases = no_phases) -> Generation:
        if forced is not None:
            raise NotImplementedError("an OpenAI-compatible server cannot be fed forced tokens")
        o = self.options
        batch = prompts.shape[0]
        num_requests = o["num_requests"] or batch
        concurrency = o["concurrency"] or (batch if o["request_rate"] is None else None)
        start = time.perf_counter()  # run_load's clock: the requests are stamped with perf_counter
        # A server overlaps one request's prefill with others' decode: the whole load is one
        # "decode" window, so its energy per token counts the prefills too (serving's J/token).
        with phases("decode"):
            records, duration_s = asyncio.run(run_load(
                self.url + self.completions_path, self.model, prompts.tolist(), new_tokens, num_requests, concurrency,
                o["request_rate"], self.request.seed, o["request_timeout_s"], o["extra_body"]))
        self._columns = {
            "load_mode": "closed" if o["request_rate"] is None else "open", "request_rate": o["request_rate"],
            "concurrency": concurrency,
            **serving_columns(records, duration_s, {k: o[f"slo_{k}"] for k in ("ttft_ms", "tpot_ms", "e2el_ms")}),
        }
        return self._generation(records, batch, new_tokens, start, own_clocks=o["request_rate"] is not None)

    def _generation(self, records: list[RequestRecord], batch: int, new_tokens: int, start: float,
                    own_clocks: bool = False) -> Generation:
        """The batch-wide Generation from each prompt's first successful request; with `own_clocks`
        (an open loop, whose requests arrive over seconds) each request's times count from its
        own sending instead of from `start`."""
        ok = [r for r in records if r.ok]
        first = {}
        for r in ok:
            first.setdefault(r.prompt_index, r)
        if len(first) < batch:
            if self.server is not None:
                self.server.check()
            failed = [r for r in records if not r.ok]
            raise RuntimeError(f"{len(failed)} of {len(records)} requests failed, {batch - len(first)} of {batch} "
                               f"prompts without an answer; first failure: {failed[0].error}")
        answers = [first[i] for i in range(batch)]
        # A server that streams no token ids leaves the tokens unknown (-1): no agreement then.
        tokens = [r.token_ids if r.token_ids else [-1] * len(r.token_s) for r in answers]
        stamps = [[t - r.sent_s for t in r.token_s] if own_clocks else r.token_s for r in answers]
        return stamped_generation(tokens, stamps, 0.0 if own_clocks else start, new_tokens)

    def columns(self) -> dict:
        """The serving load and its metrics, of the last generate (the point's last repeat)."""
        return self._columns

    def version(self) -> str:
        """What the server says of itself at /version (vLLM does), else nothing."""
        try:
            with urllib.request.urlopen(self.url + "/version", timeout=5) as resp:
                return f"server {json.load(resp)['version']}"
        except (OSError, ValueError, KeyError, TypeError):
            return ""
