"""The timing of one point, inside a worker.

Warm-up calls (untimed, short), then `repeats` measured generate calls of `new_tokens` each.
The backend times every step itself (StepBackend: CUDA events or a synchronised wall clock;
loop-owning engines: their per-token timestamps): TTFT per repeat, one duration per decode step.
Percentiles come from all steps of all repeats; decode time is never generate minus prefill.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import pyarrow as pa
import torch

from harness.config import WARMUP_RUN, WARMUP_SETTLED, Workload
from harness.engine import Backend, Generation
from harness.model.spec import ModelSpec
from harness.runner.prompts import prompts

# The columns `measure` fills. ttft_ms and tpot_ms_* have the batch meaning for every engine:
# the whole batch has its first token / its next token (serving backends put per-request means
# in columns of their own).
LATENCY_COLUMNS: dict[str, pa.DataType] = {
    "ttft_ms": pa.float64(), "ttft_ms_repeat_p50": pa.float64(), "ttft_cv": pa.float64(),
    "prefill_tok_s": pa.float64(), "tpot_ms_mean": pa.float64(),
    "tpot_ms_p50": pa.float64(), "tpot_ms_p90": pa.float64(), "tpot_ms_p99": pa.float64(),
    "decode_tok_s": pa.float64(), "e2e_ms": pa.float64(), "cv": pa.float64(),
    "warmup_calls": pa.int64(), "warmup_settled": pa.bool_(),  # settled: null unless workload.warmup_max
    "jit_compiles": pa.int64(),  # inside the measured calls (Backend.compiles); null: the engine cannot tell
}
# The columns `agreement` fills.
AGREEMENT_COLUMNS: dict[str, pa.DataType] = {
    "agreement": pa.float64(), "agreement_positions": pa.int64(),
    "agreement_forced": pa.bool_(),  # teacher-forced (true) or free-running (the engine cannot force)
}


def _check(gen: Generation, batch: int, new_tokens: int, backend: Backend) -> None:
    if tuple(gen.tokens.shape) != (batch, new_tokens) or len(gen.step_ms) != new_tokens - 1:
        raise RuntimeError(f"{type(backend).__name__}.generate returned tokens {tuple(gen.tokens.shape)} and "
                           f"{len(gen.step_ms)} step times for batch {batch}, new_tokens {new_tokens}: expected "
                           f"({batch}, {new_tokens}) and {new_tokens - 1}")


def settled(ttfts: list[float], compiles: list[int | None]) -> bool:
    """Whether the last WARMUP_RUN calls' TTFTs lie within WARMUP_SETTLED of their median and none of
    them compiled a kernel (None: the engine cannot tell)."""
    last = np.array(ttfts[-WARMUP_RUN:], dtype=np.float64)
    return (len(last) == WARMUP_RUN and bool(np.all(np.abs(last / np.median(last) - 1) <= WARMUP_SETTLED))
            and not any(compiles[-WARMUP_RUN:]))


def compiled_since(backend: Backend, before: int | None) -> int | None:
    """The engine's kernel compilations since `before` (its compiles() taken earlier); None: it cannot tell."""
    after = backend.compiles()
    return None if before is None or after is None else after - before


def warm_up(backend: Backend, x: torch.Tensor, workload: Workload) -> tuple[int, bool | None]:
    """`warmup` calls, then with `warmup_max` more until they have settled. Returns the number of
    calls and whether they settled (None without warmup_max: not looked at)."""
    tokens = min(workload.new_tokens, workload.warmup_tokens)
    ttfts, compiles = [], []

    def call():
        before = backend.compiles()
        ttfts.append(backend.generate(x, tokens).ttft_ms)
        compiles.append(compiled_since(backend, before))

    for _ in range(workload.warmup):
        call()
    if not workload.warmup_max:
        return len(ttfts), None
    while not settled(ttfts, compiles) and len(ttfts) < workload.warmup_max:
        call()
    return len(ttfts), settled(ttfts, compiles)


def measure(backend: Backend, spec: ModelSpec, workload: Workload, point_id: str, tel,
            phase: Callable[[str], None]) -> tuple[dict, list, object]:
    """Returns the point's measured columns, its samples rows [repeat, step, tpot_ms] and its
    PointTelemetry (samples() and kernels() to read)."""
    B, C, N, R = workload.batch_size, workload.context_len, workload.new_tokens, workload.repeats
    x = prompts(spec, workload.seed, C, B)
    phase("warmup")
    warmup_calls, warmup_settled = warm_up(backend, x, workload)
    phase("measure")
    gens, e2e, compiles = [], [], []
    with tel.point(point_id, profile=tel.profiles(point_id), categorize=backend.kernel_category) as pt:
        for _ in range(R):
            before = backend.compiles()
            t0 = time.perf_counter()
            gen = backend.generate(x, N, phases=pt.phases)
            e2e.append((time.perf_counter() - t0) * 1e3)
            compiles.append(compiled_since(backend, before))
            _check(gen, B, N, backend)
            gens.append(gen)
        engine_columns = backend.columns()  # of the last measured repeat, not of the profiled call
        if pt.profiling:
            phase("profile")
            with pt.profile(backend.profiler):
                backend.generate(x, 1 + tel.cfg.profile_steps, phases=pt.phases)
    steps = np.array([g.step_ms for g in gens], dtype=np.float64)  # [repeats, new_tokens - 1]
    ttfts = np.array([g.ttft_ms for g in gens], dtype=np.float64)
    ttft = float(ttfts.mean())
    per_repeat = steps.mean(axis=1)
    p50, p90, p99 = np.percentile(steps, [50, 90, 99])
    row = {
        "ttft_ms": ttft, "ttft_ms_repeat_p50": float(np.median(ttfts)),
        "ttft_cv": float(ttfts.std(ddof=1) / ttft) if R > 1 else None, "prefill_tok_s": B * C / (ttft / 1e3),
        "tpot_ms_mean": float(steps.mean()), "tpot_ms_p50": float(p50), "tpot_ms_p90": float(p90),
        "tpot_ms_p99": float(p99), "decode_tok_s": B * 1e3 / float(steps.mean()), "e2e_ms": float(np.mean(e2e)),
        "cv": float(per_repeat.std(ddof=1) / per_repeat.mean()) if R > 1 else None,
        "warmup_calls": warmup_calls, "warmup_settled": warmup_settled,
        "jit_compiles": None if None in compiles else sum(compiles),
        **backend.memory(), **pt.columns(decode_tokens=R * B * (N - 1)), **engine_columns,
    }
    samples = [[r, s + 1, float(v)] for r in range(R) for s, v in enumerate(steps[r])]
    return row, samples, pt


def agreement(backend: Backend, spec: ModelSpec, workload: Workload, reference: list[list[int]]) -> dict:
    """Share of positions where the backend's greedy token equals the reference's, with the
    reference tokens fed back (teacher forcing) where the backend can, free-running where not."""
    ref = torch.tensor(reference, dtype=torch.long)
    n, m = ref.shape
    x = prompts(spec, workload.seed, workload.context_len, n)
    try:
        got, forced = backend.generate(x, m, forced=ref).tokens, True
    except NotImplementedError:
        got, forced = backend.generate(x, m).tokens, False
    # A negative id is a token the engine did not report (a server streaming text only): unknown,
    # not a disagreement.
    known = got.cpu() >= 0
    positions = int(known.sum())
    share = float((got.cpu() == ref)[known].float().mean()) if positions else None
    return {"agreement": share, "agreement_positions": positions, "agreement_forced": forced}
