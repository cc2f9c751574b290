"""A batch's TTFT and step times from the moment each of its output tokens reached us, for the
engines whose decode loop is their own (vLLM's and TensorRT-LLM's offline engines)."""

from __future__ import annotations

import torch

from backends.base import Generation


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
