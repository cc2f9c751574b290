"""The client side of a serving benchmark: streamed /v1/completions requests with token-id
prompts, issued in a closed loop (a fixed number in flight) or an open loop (Poisson arrivals),
one record per request with the arrival time of every streamed chunk.

Both loops are one schedule: every request has an arrival time (all 0 in a closed loop, the
cumulative sum of seeded exponential gaps in an open one) and waits for a free slot of at most
`concurrency` in flight (None: no cap).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field

import aiohttp


@dataclass
class RequestRecord:
    prompt_index: int
    prompt_len: int
    sent_s: float = 0.0  # perf_counter when the request left
    chunk_s: list[float] = field(default_factory=list)  # arrival of every chunk that carried tokens
    chunk_tokens: list[int] = field(default_factory=list)  # tokens in each of those chunks
    token_ids: list[int] = field(default_factory=list)
    output_tokens: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def ttft_s(self) -> float:
        return self.chunk_s[0] - self.sent_s

    @property
    def e2el_s(self) -> float:
        return self.chunk_s[-1] - self.sent_s

    @property
    def itl_s(self) -> list[float]:
        """Gaps between consecutive token-carrying chunks, as `vllm bench serve` counts ITL."""
        return [b - a for a, b in zip(self.chunk_s, self.chunk_s[1:])]

    @property
    def token_s(self) -> list[float]:
        """Arrival of every output token: a chunk's tokens all arrive with it."""
        return [t for t, n in zip(self.chunk_s, self.chunk_tokens) for _ in range(n)]

    @property
    def tpot_s(self) -> float | None:
        """(E2EL - TTFT) / (output tokens - 1): the time per output token after the first."""
        return (self.e2el_s - self.ttft_s) / (self.output_tokens - 1) if self.output_tokens > 1 else None


def completion_body(model: str, prompt: list[int], new_tokens: int, extra: dict | None = None) -> dict:
    """Exactly `new_tokens` greedy tokens (max_tokens with ignore_eos, which vLLM, trtllm-serve and
    SGLang accept), usage in the last chunk, plus the server-specific fields of `extra`."""
    return {"model": model, "prompt": prompt, "max_tokens": new_tokens, "ignore_eos": True, "temperature": 0.0,
            "stream": True, "stream_options": {"include_usage": True}, **(extra or {})}


async def stream_completion(session: aiohttp.ClientSession, url: str, body: dict, record: RequestRecord) -> None:
    """POST one streamed completion and fill `record`; any failure ends in record.error."""
    record.sent_s = time.perf_counter()
    usage_tokens = None
    chunks = []  # (arrival, token ids, a bare closing chunk: no ids, no text, a finish_reason)
    try:
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                record.error = f"HTTP {resp.status}: {(await resp.text())[:300]}"
                return
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                now = time.perf_counter()
                msg = json.loads(data)
                if "error" in msg:
                    record.error = f"server error: {json.dumps(msg['error'])[:300]}"
                    return
                if msg.get("usage"):
                    usage_tokens = msg["usage"].get("completion_tokens")
                # llama-server's /completion streams bare objects, its token in "tokens"
                for c in msg.get("choices") or ([msg] if "tokens" in msg else []):
                    ids = c.get("token_ids") or c.get("tokens") or []
                    chunks.append((now, ids, not ids and not c.get("text") and bool(c.get("finish_reason"))))
    except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as e:
        record.error = f"{type(e).__name__}: {e}"[:300]
        return
    if any(ids for _, ids, _ in chunks):  # the server streams token ids: they say what each chunk held
        chunks = [c for c in chunks if c[1]]
    elif chunks and chunks[-1][2] and usage_tokens == len(chunks) - 1:
        chunks.pop()  # text-less streams (no tokenizer) end with a chunk that only closes the stream
    for now, ids, _ in chunks:
        record.chunk_s.append(now)
        record.chunk_tokens.append(len(ids) or 1)
        record.token_ids += ids
    record.output_tokens = len(record.token_ids) or usage_tokens or len(record.chunk_s)
    want = body["max_tokens"]
    if not record.chunk_s:
        record.error = "the stream ended without a token"
    elif record.output_tokens != want:
        record.error = f"{record.output_tokens} tokens streamed, {want} requested (ignore_eos)"


def arrival_times(num_requests: int, request_rate: float | None, seed: int) -> list[float]:
    """Seconds after the start at which each request arrives: all at once for a closed loop
    (request_rate None), a seeded Poisson process of `request_rate` per second otherwise."""
    if request_rate is None:
        return [0.0] * num_requests
    if request_rate <= 0:
        raise ValueError(f"request_rate={request_rate}: expected a positive rate in requests per second")
    rng, t, out = random.Random(seed), 0.0, []
    for _ in range(num_requests):
        out.append(t)
        t += rng.expovariate(request_rate)
    return out


async def run_load(url: str, model: str, prompts: list[list[int]], new_tokens: int, num_requests: int,
                   concurrency: int | None, request_rate: float | None, seed: int, timeout_s: float,
                   extra_body: dict | None = None) -> tuple[list[RequestRecord], float]:
    """Issue `num_requests` requests cycling over `prompts`; return the records (in issue order)
    and the duration from the first arrival to the last completion, in seconds."""
    arrivals = arrival_times(num_requests, request_rate, seed)
    slots = asyncio.Semaphore(concurrency) if concurrency else None
    records = [RequestRecord(i % len(prompts), len(prompts[i % len(prompts)])) for i in range(num_requests)]
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    connector = aiohttp.TCPConnector(limit=concurrency or 0)

    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        start = time.perf_counter()

        async def one(rec: RequestRecord, at: float):
            await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
            body = completion_body(model, prompts[rec.prompt_index], new_tokens, extra_body)
            if slots is None:
                await stream_completion(session, url, body, rec)
            else:
                async with slots:
                    await stream_completion(session, url, body, rec)

        await asyncio.gather(*(one(r, at) for r, at in zip(records, arrivals)))
        return records, time.perf_counter() - start
