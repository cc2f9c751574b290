"""What an engine is asked to load: the harness builds it from a point's model, quant and workload."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.config import Parallel
from harness.model.spec import ModelSpec


@dataclass
class LoadRequest:
    """What to load. `checkpoint` is a directory in the HF layout; None means the engine may build
    the seeded synthetic weights directly in device memory (harness.model.synthetic)."""
    spec: ModelSpec
    quant: str
    checkpoint: Path | None
    seed: int = 0
    router_skew: float = 0.0
    device: str = "cuda"
    max_batch_size: int = 1  # the largest batch and sequence length of the group, for cache sizing
    max_seq_len: int = 2048
    parallel: Parallel = field(default_factory=Parallel)  # the GPUs it spans (docs/multi-gpu.md)
