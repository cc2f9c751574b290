"""The profiled window of a vLLM point. vLLM's kernels run in its engine-core process, where the
harness's torch.profiler cannot see them, so vLLM's own torch profiler (its `profiler_config`)
records them, and its trace is given the harness's phase ranges.

vLLM's worker wraps each engine step in a user_annotation named after the step's requests,
`execute_context_C(T)_generation_G(U)`: C requests prefilling T prompt tokens, G decoding U. A step
whose C requests have more than one token each between them (T > C) prefills a prompt: a `prefill`
step; the others are `decode` steps. (vLLM counts a request as prefilling until its first output is
back, and with async scheduling the step after a prefill is scheduled before that: its requests
count as prefilling one token each.) A step with no request gets no phase. Each step's phase range
runs from its start to the next step's (the host schedules step n+1 while the GPU runs step n), the
last one to the end of the trace; kernel_table puts each kernel in the phase of its launch.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

STEP = re.compile(r"execute_context_(\d+)\((\d+)\)_generation_(\d+)\((\d+)\)")
TRACES = "*.pt.trace.json*"  # torch's tensorboard_trace_handler names: <worker>.<ns>.pt.trace.json.gz


def profiler_config(trace_dir: Path) -> dict:
    """vLLM's profiler_config: torch's profiler, its traces to `trace_dir`. No Python stacks, no
    printed table of totals, no trace of the API server: a small trace, written in seconds. vLLM
    creates the profiler at the first start, so points that are not profiled run without it."""
    return {"profiler": "torch", "torch_profiler_dir": str(trace_dir), "torch_profiler_with_stack": False,
            "torch_profiler_dump_cuda_time_total": False, "ignore_frontend": True}


def phase_trace(source: Path, out: Path) -> int:
    """Write vLLM's trace `source` to `out` (gzipped) with a 'prefill' or 'decode' user_annotation
    over each engine step; returns the number of steps."""
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rt") as f:
        trace = json.load(f)
    events = trace["traceEvents"]
    spans = [e for e in events if e.get("ph") == "X" and "dur" in e]
    steps = sorted((e for e in spans if e.get("cat") == "user_annotation" and STEP.fullmatch(e["name"])),
                   key=lambda e: float(e["ts"]))
    end = max((float(e["ts"]) + float(e["dur"]) for e in spans), default=0.0)
    for step, following in zip(steps, steps[1:] + [None]):
        stop = float(following["ts"]) if following is not None else end
        requests, tokens, decoding = map(int, STEP.fullmatch(step["name"]).group(1, 2, 3))
        if not requests + decoding:  # a step with nothing scheduled (the engine idling, a dummy run)
            continue
        phase = "prefill" if tokens > requests else "decode"
        events.append({**step, "name": phase, "dur": stop - float(step["ts"]), "args": {"engine_step": step["name"]}})
    with gzip.open(out, "wt") as f:
        json.dump(trace, f)
    return len(steps)


class EngineTraces:
    """The folder vLLM writes its traces to, for one engine's life."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="vllm-traces-"))

    @contextlib.contextmanager
    def window(self, start: Callable[[], None], stop: Callable[[], None], out: Path) -> Iterator[None]:
        """Profile the engine between `start` and `stop`; its first rank's trace, with phase
        ranges, goes to `out`."""
        before = set(self.dir.glob(TRACES))
        start()
        try:
            yield
        finally:
            stop()
        new = sorted(set(self.dir.glob(TRACES)) - before)  # rank 0's first: dp0_pp0_tp0_...
        if not new:
            raise RuntimeError(f"vLLM wrote no trace to {self.dir} for the profiled window; its log says why")
        if not phase_trace(new[0], out):
            raise RuntimeError(f"vLLM's trace {new[0].name} has no engine step (execute_context_...) in it: "
                               "this vLLM names its steps otherwise; backends/vllm/profile.py reads them")

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
