"""The OpenAI-compatible client (backends/openai_endpoint): its load schedules and serving metrics,
then whole points against a small vLLM-flavoured completions server run here on 127.0.0.1 that
streams torch_ref's greedy tokens of gpt-oss-tiny, and the child-server process handling."""

import asyncio
import json
import os
import sys
import threading
import time

import pytest
import torch
from aiohttp import web

from harness.model.load_request import LoadRequest
from backends.openai_endpoint import OpenAIEndpoint
from backends.openai_endpoint.load import RequestRecord, arrival_times
from backends.openai_endpoint.metrics import serving_columns
from backends.openai_endpoint.server import ServerError, ServerProcess, free_port
from backends.vllm.log import EngineLog
from harness.engine import ENGINE_LOG_DIR
from backends.torch_ref import TorchRef
from harness.model.spec import SPECS

TINY = SPECS["gpt-oss-tiny"]


# ---- schedules and metrics, no server -------------------------------------------------------------
def test_arrival_times_closed_and_open():
    assert arrival_times(5, None, seed=0) == [0.0] * 5
    a, b, c = arrival_times(4000, 20.0, 1), arrival_times(4000, 20.0, 1), arrival_times(4000, 20.0, 2)
    assert a == b and a != c
    gaps = [y - x for x, y in zip(a, a[1:])]
    assert a[0] == 0 and min(gaps) > 0
    assert sum(gaps) / len(gaps) == pytest.approx(1 / 20, rel=0.1)  # exponential gaps of mean 1/rate
    with pytest.raises(ValueError, match="request_rate"):
        arrival_times(3, 0.0, 0)


def _record(i, chunks, tokens=None, error=None):
    r = RequestRecord(prompt_index=i, prompt_len=10, sent_s=0.0, chunk_s=chunks,
                      chunk_tokens=tokens or [1] * len(chunks), error=error)
    r.output_tokens = sum(r.chunk_tokens)
    return r


def test_serving_columns_percentiles_and_goodput():
    fast_start = _record(0, [0.1, 0.2, 0.4])  # TTFT 100, ITL 100 and 200, E2EL 400, TPOT 150
    slow_start = _record(1, [0.3, 0.35, 0.4])  # TTFT 300, ITL 50 and 50, E2EL 400, TPOT 50
    failed = _record(0, [], error="HTTP 500: boom")
    cols = serving_columns([fast_start, slow_start, failed], duration_s=2.0, slo={"ttft_ms": 200, "tpot_ms": None})
    assert (cols["num_requests"], cols["completed_requests"], cols["failed_requests"]) == (3, 2, 1)
    assert cols["output_tok_s"] == pytest.approx(3.0)
    assert cols["total_tok_s"] == pytest.approx(13.0)
    assert cols["request_throughput_req_s"] == pytest.approx(1.0)
    assert cols["goodput_req_s"] == pytest.approx(0.5)  # only the first meets TTFT <= 200 ms
    assert cols["ttft_ms_p50"] == pytest.approx(200.0)
    assert cols["itl_ms_p50"] == pytest.approx(75.0)  # median of 100, 200, 50, 50
    assert cols["e2e_ms_p99"] == pytest.approx(400.0)
    assert cols["request_tpot_ms_mean"] == pytest.approx(100.0)
    assert serving_columns([fast_start], 1.0, {})["goodput_req_s"] is None
    with pytest.raises(ValueError, match="itl_ms"):
        serving_columns([fast_start], 1.0, {"itl_ms": 5})


def test_a_chunk_of_several_tokens_stamps_them_all():
    r = _record(0, [0.1, 0.3], tokens=[1, 3])
    assert r.token_s == [0.1, 0.3, 0.3, 0.3]
    assert r.itl_s == pytest.approx([0.2])  # ITL is per chunk, as vllm bench serve counts it


# ---- a server streaming torch_ref's tokens ---------------------------------------------------------
@pytest.fixture(scope="module")
def ref(checkpoint):
    ref = TorchRef(device="cpu")
    ref.load(LoadRequest(TINY, "mxfp4", checkpoint, device="cpu", max_batch_size=4, max_seq_len=64))
    return ref


class TinyServer:
    """/v1/completions as vLLM streams it (token ids with return_token_ids, usage last), one token
    every `step_s`; it records arrivals and requests in flight, and answers HTTP 500 to the
    requests whose arrival index is in `fail`."""

    def __init__(self, ref, step_s=0.003):
        self.ref, self.step_s = ref, step_s
        self.arrivals, self.in_flight, self.max_in_flight, self.fail = [], 0, 0, set()
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/completions", self.completions)
        self.runner = web.AppRunner(app)
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)
        self.url = f"http://127.0.0.1:{self.port}"

    async def _start(self):
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def health(self, request):
        return web.Response(text="ok")

    async def models(self, request):
        return web.json_response({"data": [{"id": "tiny"}]})

    def reset(self):
        self.arrivals, self.max_in_flight, self.fail = [], 0, set()

    async def completions(self, request):
        body = await request.json()
        index = len(self.arrivals)
        self.arrivals.append(time.perf_counter())
        if index in self.fail:
            return web.json_response({"error": {"message": "injected failure"}}, status=500)
        n = body["max_tokens"]
        tokens = self.ref.generate(torch.tensor([body["prompt"]]), n).tokens[0].tolist()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, t in enumerate(tokens):
            await asyncio.sleep(self.step_s)
            choice = {"index": 0, "text": "", "finish_reason": "length" if i == n - 1 else None}
            if body.get("return_token_ids"):
                choice["token_ids"] = [t]
            await resp.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
        usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": n}
        await resp.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        self.in_flight -= 1
        return resp

    def close(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture(scope="module")
def server(ref):
    s = TinyServer(ref)
    yield s
    s.close()


def client(server, checkpoint, **options):
    backend = OpenAIEndpoint(url=server.url, extra_body={"return_token_ids": True}, **options)
    backend.load(LoadRequest(TINY, "mxfp4", checkpoint, seed=3, device="cpu"))
    server.reset()
    return backend


def prompts(batch, length=12, seed=0):
    return torch.randint(0, TINY.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_a_batch_point_returns_the_servers_tokens_and_times(server, checkpoint, ref):
    backend = client(server, checkpoint)
    assert backend.model == "tiny"  # from /v1/models
    p = prompts(3)
    gen = backend.generate(p, 6)
    assert torch.equal(gen.tokens, ref.generate(p, 6).tokens)
    assert gen.ttft_ms > 0 and len(gen.step_ms) == 5
    # The server sleeps step_s before each token: single gaps may shrink when the client stalls, their sum not.
    assert sum(gen.step_ms) >= 5 * server.step_s * 1e3 * 0.9
    cols = backend.columns()
    assert (cols["load_mode"], cols["concurrency"], cols["request_rate"]) == ("closed", 3, None)
    assert (cols["completed_requests"], cols["failed_requests"]) == (3, 0)
    assert server.max_in_flight == 3
    assert 0 < cols["itl_ms_p50"] <= cols["itl_ms_p99"]
    assert cols["e2e_ms_p50"] >= cols["ttft_ms_p50"] + 4 * server.step_s * 1e3 * 0.9


def test_closed_loop_keeps_at_most_concurrency_in_flight(server, checkpoint):
    backend = client(server, checkpoint, num_requests=6, concurrency=2)
    backend.generate(prompts(3), 4)
    assert server.max_in_flight == 2 and len(server.arrivals) == 6
    assert backend.columns()["completed_requests"] == 6


def test_open_loop_follows_the_seeded_poisson_schedule(server, checkpoint):
    backend = client(server, checkpoint, num_requests=6, request_rate=40.0)
    backend.generate(prompts(2), 3)
    cols = backend.columns()
    assert (cols["load_mode"], cols["request_rate"], cols["concurrency"]) == ("open", 40.0, None)
    schedule = arrival_times(6, 40.0, seed=3)  # the point's seed
    seen = [t - server.arrivals[0] for t in server.arrivals]
    assert seen == sorted(seen)
    assert seen[-1] >= schedule[-1] - 0.005  # nobody arrives before their time
    assert cols["duration_s"] >= schedule[-1]


def test_an_open_loops_times_count_from_each_requests_own_sending(server, checkpoint):
    # The last of 3 prompts arrives 0.53 s into the load: counted from the load's start, that wait
    # would be the TTFT (9.2 s for 64 prompts at 8 req/s on the H200), not the server's latency.
    backend = client(server, checkpoint, num_requests=3, request_rate=2.0)
    gen = backend.generate(prompts(3), 3)
    cols = backend.columns()
    assert arrival_times(3, 2.0, seed=3)[-1] > 0.5
    assert gen.ttft_ms < 500 and gen.ttft_ms == pytest.approx(cols["ttft_ms_p99"], rel=0.05)
    assert len(gen.step_ms) == 2 and min(gen.step_ms) > 0


def test_failed_requests_are_counted_and_a_prompt_left_unanswered_fails_the_point(server, checkpoint):
    backend = client(server, checkpoint, num_requests=4, concurrency=1)
    server.fail = {1}  # prompt 1's first request; its second (request 3) succeeds
    gen = backend.generate(prompts(2), 3)
    assert gen.tokens.shape == (2, 3)
    assert backend.columns()["failed_requests"] == 1
    backend = client(server, checkpoint)
    server.fail = {0}
    with pytest.raises(RuntimeError, match="1 of 2 requests failed.*HTTP 500"):
        backend.generate(prompts(2), 3)


def test_tokens_stay_unknown_when_the_server_streams_no_ids(server, checkpoint):
    backend = OpenAIEndpoint(url=server.url)
    backend.load(LoadRequest(TINY, "mxfp4", checkpoint, device="cpu"))
    gen = backend.generate(prompts(2), 4)
    assert (gen.tokens == -1).all() and len(gen.step_ms) == 3


def test_forced_tokens_are_not_supported(server, checkpoint):
    with pytest.raises(NotImplementedError):
        client(server, checkpoint).generate(prompts(1), 3, forced=torch.zeros(1, 2, dtype=torch.long))


# ---- a child server: start, health, death, stop -----------------------------------------------------
HEALTHY = """
import http.server, subprocess, sys
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])  # a grandchild in the group
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404); self.end_headers()
print("serving", flush=True)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def test_server_process_stops_its_whole_group(tmp_path):
    port = free_port()
    server = ServerProcess("toy", [sys.executable, "-c", HEALTHY, port], port, ready_timeout_s=60, log_dir=tmp_path)
    server.start()
    assert server.alive()
    pgid = server.proc.pid
    server.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)  # no process of the group is left


def test_engine_logs_are_kept_in_the_folder_the_worker_names(tmp_path, monkeypatch):
    # The worker names the run's logs folder, so an engine killed mid-start leaves its log there.
    monkeypatch.setenv(ENGINE_LOG_DIR, str(tmp_path))
    port = free_port()
    server = ServerProcess("toy", [sys.executable, "-c", HEALTHY, port], port, ready_timeout_s=60)
    log = EngineLog()
    assert server.log_path.parent == tmp_path and os.path.dirname(log.path) == str(tmp_path)
    log.close()
    assert not os.path.exists(log.path)


def test_server_that_dies_before_ready_raises_with_its_log(tmp_path):
    port = free_port()
    crash = "import sys; print('CUDA error: no kernel image'); sys.exit(3)"
    server = ServerProcess("toy", [sys.executable, "-c", crash], port, ready_timeout_s=60, log_dir=tmp_path)
    with pytest.raises(ServerError, match=r"(?s)exited with code 3.*no kernel image"):
        server.start()
