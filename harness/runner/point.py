"""What one sweep point is, and what follows from its configuration alone (no Hydra, no engine)."""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from pathlib import Path

from harness.model.spec import ModelSpec, get_spec


@dataclass
class Point:
    point_id: str
    group: str  # the worker group: points that share a backend, model, quant and load options
    overrides: list[str]  # what distinguishes it, as Hydra overrides
    config: dict  # backend, model, quant, workload, telemetry, agreement, device: resolved


def load_class(target: str) -> type:
    """The class a backend yaml's `_target_` names (package.module.Class)."""
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)


@functools.lru_cache(maxsize=None)
def _checkpoint_spec(path: str) -> ModelSpec:
    from harness.model.checkpoint import validate_checkpoint
    return validate_checkpoint(Path(path))


def model_spec(model: dict) -> ModelSpec:
    """The architecture: the checkpoint's config.json when model.path is set, else the named spec."""
    return _checkpoint_spec(model["path"]) if model.get("path") else get_spec(model["name"])


def positions(config: dict) -> int:
    """The longest sequence any call of the point reaches: its own, the profiler window's, the
    agreement check's."""
    w, tel, agreement = config["workload"], config["telemetry"], config["agreement"]
    profiled = tel.get("profile", "off") not in ("off", False, None)
    longest = max(w["new_tokens"], tel.get("profile_steps", 0) + 1 if profiled else 0,
                  agreement["tokens"] if agreement["enabled"] else 0)
    return w["context_len"] + longest
