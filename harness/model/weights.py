"""Where an engine's weights come from: a checkpoint directory, or seeded synthetic weights made
directly in device memory (a 120b model then needs no 65 GB of disk)."""

from __future__ import annotations

from backends.base import LoadRequest
from harness.model.checkpoint import Checkpoint
from harness.model.synthetic import SyntheticWeights


def open_weights(request: LoadRequest) -> Checkpoint | SyntheticWeights:
    if request.checkpoint is None:
        return SyntheticWeights(request.spec, request.seed, request.router_skew)
    ckpt = Checkpoint(request.checkpoint)
    mismatch = [k for k in ("num_hidden_layers", "num_local_experts", "hidden_size", "intermediate_size",
                            "head_dim", "num_attention_heads", "num_key_value_heads", "vocab_size", "sliding_window")
                if getattr(ckpt.spec, k) != getattr(request.spec, k)]
    if mismatch:
        raise ValueError(f"{request.checkpoint}/config.json disagrees with model {request.spec.name} on "
                         + ", ".join(f"{k} ({getattr(ckpt.spec, k)} vs {getattr(request.spec, k)})" for k in mismatch))
    return ckpt
