"""Where an engine's weights come from: a checkpoint directory, or seeded synthetic weights that
the engine materialises directly in device memory (gpt-oss-120b then needs no 65 GB of disk)."""

from __future__ import annotations

from dataclasses import fields

from harness.model.load_request import LoadRequest
from harness.model.checkpoint import CONFIG, Checkpoint, CheckpointError
from harness.model.synthetic import SyntheticWeights


def open_weights(request: LoadRequest) -> Checkpoint | SyntheticWeights:
    """request.checkpoint None: SyntheticWeights(spec, seed, router_skew). Otherwise the validated
    checkpoint, whose config.json must describe the requested model."""
    if request.checkpoint is None:
        return SyntheticWeights(request.spec, request.seed, request.router_skew)
    ckpt = Checkpoint(request.checkpoint)
    want = request.spec
    differ = [f"{CONFIG} has {f.name} = {getattr(ckpt.spec, f.name)!r}, the requested {want.name} has "
              f"{getattr(want, f.name)!r}" for f in fields(want)
              if f.name != "name" and getattr(ckpt.spec, f.name) != getattr(want, f.name)]
    if differ:
        raise CheckpointError(ckpt.path, differ)
    return ckpt
