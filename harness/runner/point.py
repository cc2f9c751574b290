"""What one sweep point is, and what follows from its configuration alone (no Hydra, no engine)."""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from pathlib import Path

from harness.config import ModelChoice, PointConfig
from harness.model.spec import ModelSpec, get_spec


@dataclass
class Point:
    point_id: str
    group: str  # the worker group: points that share a backend, model, quant and load options
    overrides: list[str]  # what distinguishes it, as Hydra overrides
    config: PointConfig
    setup: str = ""  # its backend options that differ from others of that backend in the sweep

    def to_dict(self) -> dict:
        return {"point_id": self.point_id, "group": self.group, "overrides": list(self.overrides),
                "config": self.config.to_dict(), "setup": self.setup}

    @classmethod
    def from_dict(cls, d: dict) -> Point:
        return cls(d["point_id"], d["group"], d["overrides"], PointConfig.from_dict(d["config"]), d.get("setup", ""))


def load_class(target: str) -> type:
    """The class a backend yaml's `_target_` names (package.module.Class)."""
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)


@functools.lru_cache(maxsize=None)
def _checkpoint_spec(path: str) -> ModelSpec:
    from harness.model.checkpoint import validate_checkpoint
    return validate_checkpoint(Path(path))


def model_spec(model: ModelChoice) -> ModelSpec:
    """The architecture: the checkpoint's config.json when model.path is set, else the named spec."""
    return _checkpoint_spec(model.path) if model.path else get_spec(model.name)
