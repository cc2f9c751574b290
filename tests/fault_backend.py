"""A test engine: tiny, deterministic and fast when healthy, faulty on demand.

`faults` maps a fault to the batch size whose prefill triggers it:
  oom    raises an error worded like CUDA's out-of-memory error;
  error  raises an ordinary exception;
  kill   sends SIGKILL to its own process;
  hang   sleeps far past any point timeout;
  big    raises DoesNotFit (a batch the engine cannot hold, as vLLM's KV cache check does).
`does_not_fit: true` makes load raise DoesNotFit.
`prefill_ms` [a, b, ...]: the n-th prefill sleeps the n-th time, the last one from then on (an
engine whose first calls at a shape are slow).
`compiles` [a, b, ...]: the n-th prefill compiles the n-th number of kernels, the last one from then
on (an engine that meets new step shapes); without it the engine cannot tell.
"""

from __future__ import annotations

import os
import signal
import time

import torch

from harness.engine import DoesNotFit, LoadRequest, StepBackend


class FaultBackend(StepBackend):
    quants = ("mxfp4",)
    columns_schema = {"prefills": "int64"}  # prefills so far: which call a point's columns describe

    def __init__(self, faults: dict | None = None, does_not_fit: bool = False, step_ms: float = 0.2,
                 prefill_ms: list | None = None, compiles: list | None = None):
        super().__init__(faults=faults, does_not_fit=does_not_fit, step_ms=step_ms, prefill_ms=prefill_ms,
                         compiles=compiles)
        self.prefills = self.compiled = 0
        self.faults = {int(batch): fault for fault, batch in (faults or {}).items()}
        self.device = torch.device("cpu")

    def load(self, request: LoadRequest) -> None:
        if self.options["does_not_fit"]:
            raise DoesNotFit(request.spec.weight_bytes(request.quant), 0.0)
        self.vocab = request.spec.vocab_size

    def prefill(self, prompts: torch.Tensor) -> torch.Tensor:
        fault = self.faults.get(prompts.shape[0])
        if fault == "oom":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        if fault == "error":
            raise ValueError("injected fault")
        if fault == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if fault == "hang":
            time.sleep(3600)
        if fault == "big":
            raise DoesNotFit(3 * 2**30, 2**30, f"the KV cache of batch {prompts.shape[0]}")
        if times := self.options["prefill_ms"]:
            time.sleep(times[min(self.prefills, len(times) - 1)] / 1e3)
        if counts := self.options["compiles"]:
            self.compiled += counts[min(self.prefills, len(counts) - 1)]
        self.prefills += 1
        return prompts.sum(1) % self.vocab

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        time.sleep(self.options["step_ms"] / 1e3)
        return (tokens * 31 + 7) % self.vocab

    def compiles(self) -> int | None:
        return self.compiled if self.options["compiles"] else None

    def columns(self) -> dict:
        return {"prefills": self.prefills}

    def version(self) -> str:
        return "fault 1"
