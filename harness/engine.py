"""The contract between the harness and an engine (owned by the harness). A backend author reads this page.

A backend is one class, named by `_target_` in one yaml under conf/backend/; the keys of that
yaml besides `_target_` (and the harness's own `name`, `python`, `quants`) are passed to its
constructor. The harness creates it inside a worker process, calls `load` once per
(model, quant) group, then `generate` for every point of the group, then `close`.

Two shapes of engine fit:

* Engines whose steps the harness can drive (torch_ref, triton_mxfp4, transformers) subclass
  `StepBackend` and implement `prefill` and `decode`. The harness then times every step itself:
  CUDA events on a GPU, a synchronised wall clock on a CPU.
* Engines that own their decode loop (vLLM's `LLM`, TensorRT-LLM's `LLM`, an OpenAI-compatible
  server) subclass `Backend` and implement `generate`, returning the time to the first token and
  one duration per later step taken from the engine's own per-token timestamps (never derived
  from totals; `stamped_generation` turns the stamps into a `Generation`). They mark the phases
  they can see with `phases`.

Rules every backend follows:

* `generate` produces exactly `new_tokens` tokens per sequence (ignore EOS); the prompts are
  token ids, already synthetic and seeded.
* `generate(..., forced=F)` feeds `F[:, i]` as the input of decode step i+1 instead of the
  engine's own choice (teacher forcing), and still returns the engine's own greedy choice at
  every position: the harness compares those with the reference. An engine that cannot force
  tokens raises `NotImplementedError` and the harness compares free-running tokens instead.
* Failures are exceptions: a CUDA out-of-memory error is recognised by the harness (any
  exception whose text says "out of memory"), anything else becomes an `error` row. A model that
  cannot fit is `DoesNotFit(required_bytes, available_bytes)`, which becomes a `skipped` row (from
  `load`: every point of the group; from `generate`: that point).
"""

from __future__ import annotations

import contextlib
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager

import pyarrow as pa
import torch

from harness.model.load_request import LoadRequest
from harness.telemetry.nvtx_ranges import nvtx_range

Phases = Callable[[str], ContextManager]  # phases("prefill"): a context around one phase


def no_phases(name: str) -> ContextManager:
    return contextlib.nullcontext()


# Where an engine that logs to a file of its own (vLLM's processes, a server) keeps it: the run's logs
# folder, set by the worker's parent, so a worker killed mid-start (a timeout, a stop signal) still
# leaves the engine's log beside the group's; None (a temporary folder) outside a sweep.
ENGINE_LOG_DIR = "GPTOSS_ENGINE_LOG_DIR"


def engine_log_dir() -> str | None:
    return os.environ.get(ENGINE_LOG_DIR)


# The columns an engine fills through the contract: memory() and DoesNotFit.
MEMORY_COLUMNS: dict[str, pa.DataType] = {
    "weights_gib": pa.float64(), "kv_cache_gib": pa.float64(), "required_gib": pa.float64(),
}


class DoesNotFit(Exception):
    """The model cannot be loaded on this device in this quant mode: a `skipped` row, not a failure."""

    def __init__(self, required_bytes: float, available_bytes: float, what: str = "weights"):
        self.required_bytes, self.available_bytes = required_bytes, available_bytes
        super().__init__(f"does not fit: {what} need {required_bytes / 2**30:.1f} GiB, "
                         f"{available_bytes / 2**30:.1f} GiB available")


@dataclass
class Generation:
    tokens: torch.Tensor  # [batch, new_tokens] int64 on the CPU: the engine's greedy choice per position
    ttft_ms: float  # handing over the batch -> first token of every sequence
    step_ms: list[float] = field(default_factory=list)  # one per later decode step (new_tokens - 1)


class Backend(ABC):
    quants: tuple[str, ...] = ("mxfp4", "bf16")
    # Columns this engine adds to points.parquet (what `columns()` returns), name -> arrow type
    # alias (float64, int64, string, bool); the harness's own columns are declared beside the code
    # that fills them (harness.results.POINT_COLUMNS).
    columns_schema: dict[str, str] = {}
    # Which of parallel.tp / ep / dp this engine implements (docs/multi-gpu.md); none: one GPU.
    parallel_keys: tuple[str, ...] = ()

    def __init__(self, **options):
        self.options = options

    @classmethod
    def problems(cls, quant: str, device: str, options: dict) -> list[str]:
        """Why this engine cannot run `quant` on `device` with these options, where that is known
        before anything runs (the sweep is refused with these lines); [] when nothing is known."""
        return []

    @abstractmethod
    def load(self, request: LoadRequest) -> None: ...

    @abstractmethod
    def generate(self, prompts: torch.Tensor, new_tokens: int, forced: torch.Tensor | None = None,
                 phases: Phases = no_phases) -> Generation: ...

    def memory(self) -> dict[str, float | None]:
        """weights_gib and kv_cache_gib as the engine allocated them (None when unknown)."""
        return {"weights_gib": None, "kv_cache_gib": None}

    def version(self) -> str:
        return ""

    def compiles(self) -> int | None:
        """Kernel compilations (JIT) the engine has done since it loaded, a running count; None when it
        cannot tell. The harness counts those inside each call: one inside a warm-up call keeps the
        warm-up going (workload.warmup_max), one inside a measured call is reported (jit_compiles)."""
        return None

    def columns(self) -> dict:
        """Columns beyond the measured ones, of the last generate call (e.g. engine_path: which kernels
        ran); the harness reads them after a point's measured repeats."""
        return {}

    def profiler(self, trace: Path) -> ContextManager[None] | None:
        """For an engine whose kernels run in processes of its own (vLLM's engine core, a server): a
        context around the profiled generate that profiles them and, on leaving, writes their
        Chrome trace to `trace` (gzipped) with each engine step inside a user_annotation range
        named after its phase ('prefill', 'decode'). None: the harness's torch.profiler, in the
        worker's process, sees the engine's kernels."""
        return None

    def kernel_category(self, kernel_name: str) -> str | None:
        """The category of one profiled kernel (see harness.telemetry), or None for the shared rules."""
        return None

    def close(self) -> None:
        pass


class StepBackend(Backend):
    """An engine driven step by step; the harness times each step."""

    device: torch.device

    @abstractmethod
    def prefill(self, prompts: torch.Tensor) -> torch.Tensor:
        """Run the prompts [batch, context] (a fresh cache) and return the greedy next token [batch]."""

    @abstractmethod
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token [batch] per sequence and return the greedy next token [batch]."""

    def generate(self, prompts, new_tokens, forced=None, phases=no_phases):
        prompts = prompts.to(self.device)
        if forced is not None:
            forced = forced.to(self.device)
        prefill, decode = StepClock(self.device), StepClock(self.device)
        with phases("prefill"):
            prefill.mark()
            tok = self.prefill(prompts)
            prefill.mark()
        out = [tok]
        # A clock of its own: the phase boundary may synchronise and read counters, which is
        # neither prefill nor a decode step.
        with phases("decode"):
            decode.mark()
            for i in range(new_tokens - 1):
                with nvtx_range("step"):
                    tok = self.decode(tok if forced is None else forced[:, i])
                decode.mark()
                out.append(tok)
        return Generation(torch.stack(out, 1).cpu(), prefill.elapsed_ms()[0], decode.elapsed_ms())


class StepClock:
    """Boundaries of consecutive device steps: CUDA events on a GPU (no synchronisation between
    steps), a synchronised wall clock elsewhere."""

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"
        self.marks: list = []

    def mark(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append(ev)
        else:
            self.marks.append(time.perf_counter())

    def elapsed_ms(self) -> list[float]:
        if self.cuda:
            self.marks[-1].synchronize()
            return [a.elapsed_time(b) for a, b in zip(self.marks, self.marks[1:])]
        return [(b - a) * 1e3 for a, b in zip(self.marks, self.marks[1:])]


def stamped_generation(tokens: list[list[int]], stamps: list[list[float]], start: float,
                       new_tokens: int) -> Generation:
    """Step i ends when the last sequence of the batch has its token i: TTFT is the end of step 0
    after `start`, the step times the gaps between consecutive ends (seconds in, ms out)."""
    short = sorted({len(t) for t in tokens if len(t) != new_tokens})
    if short:
        raise RuntimeError(f"the engine returned {short} tokens for some sequences, {new_tokens} requested "
                           f"with ignore_eos")
    ends = [max(s[i] for s in stamps) for i in range(new_tokens)]
    return Generation(torch.tensor(tokens, dtype=torch.int64), (ends[0] - start) * 1e3,
                      [(b - a) * 1e3 for a, b in zip(ends, ends[1:])])
