"""A sweep, expanded and checked before anything runs.

Hydra's override grammar gives the swept values (hydra.sweeper.params, then the command line; a
later value of a key replaces an earlier one); every combination is composed by Hydra itself, so
a point's config is exactly what a single run with those overrides would get. `backend: auto` and
`model: auto` are resolved here, then every point is validated and all problems are raised at
once, each naming its key and the points it affects.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Callable

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from harness.model.spec import QUANT_MODES, SPECS
from harness.runner.point import Point, load_class, model_spec, positions
from harness.runner.worker_process import REPO_ROOT

POINT_KEYS = ("backend", "model", "quant", "workload", "telemetry", "agreement", "device")
PER_POINT = ("batch_size", "context_len", "new_tokens", "warmup", "warmup_tokens", "repeats", "timeout_s")


class SweepError(ValueError):
    """An invalid sweep: every problem, each with the points it affects; nothing was run."""


# ---- expansion -------------------------------------------------------------------------------------
def plain(cfg: DictConfig, keys) -> dict:
    """The keys of a composed config as plain, resolved Python values."""
    return {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k] for k in keys}


def combinations(config_loader, overrides: list[str]) -> list[list[str]]:
    """The cartesian product of the swept values, as one override list per point."""
    parsed = OverridesParser.create(config_loader=config_loader).parse_overrides(overrides)
    return BasicSweeper.split_arguments(parsed, None)[0]


@functools.lru_cache(maxsize=None)
def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def _auto(cfg: DictConfig, compose: Callable[[list[str]], DictConfig]) -> list[str]:
    """Overrides that resolve `auto`: on a GPU gpt-oss-20b on triton_mxfp4 (torch_ref where that
    engine is absent); on a CPU gpt-oss-tiny on torch_ref."""
    extra = []
    if cfg.backend.name == "auto":
        extra.append(f"backend={'triton_mxfp4' if _cuda() and _triton_mxfp4(compose) else 'torch_ref'}")
    if cfg.model.name == "auto":
        extra.append(f"model={'gpt-oss-20b' if _cuda() else 'gpt-oss-tiny'}")
    return extra


def _triton_mxfp4(compose) -> bool:
    try:
        load_class(compose(["backend=triton_mxfp4"]).backend._target_)
        return True
    except Exception:
        return False


def _interpreter(python: str | None) -> str | None:
    """backend.python as an absolute path: a relative path (.venv-vllm/bin/python) is relative to
    the repository root, where the backend yamls and their setup scripts live."""
    if not python or "/" not in python:
        return python  # null, or a command name found on PATH
    return os.path.normpath(REPO_ROOT / Path(python).expanduser())  # no resolve(): a venv's python is a symlink


def expand(compose: Callable[[list[str]], DictConfig], combos: list[list[str]]) -> list[Point]:
    """Compose, resolve and validate every combination; raise SweepError listing every problem."""
    problems: dict[str, list[str]] = defaultdict(list)
    configs: list[tuple[list[str], dict]] = []
    # Every combination lists the keys in the same order: a column of zip(*combos) is one key.
    swept = {o for column in zip(*combos) if len(set(column)) > 1 for o in column}
    for combo in combos:
        label = " ".join(o for o in combo if o in swept) or "the only point"
        try:
            cfg = compose(combo)
            extra = _auto(cfg, compose)
            if extra:
                combo = combo + extra
                cfg = compose(combo)
        except Exception as e:  # Hydra names the group or key it could not compose
            problems[str(e).strip().splitlines()[0]].append(label)
            continue
        config = plain(cfg, POINT_KEYS)
        if config["model"].get("path"):
            config["model"]["path"] = str(Path(config["model"]["path"]).expanduser().resolve())
        for backend in (config["backend"], config["agreement"]["reference"]):
            backend["python"] = _interpreter(backend.get("python"))
        for problem in point_problems(config):
            problems[problem].append(label)
        configs.append((combo, config))
    seen: dict[str, str] = {}
    for combo, config in configs:
        key = json.dumps(config, sort_keys=True)
        if key in seen:
            problems["the same point twice (a swept key that is not part of a point?)"].append(" ".join(combo))
        seen[key] = " ".join(combo)
    if problems:
        lines = [f"invalid sweep ({len(combos)} points), nothing was run:"]
        for problem, labels in problems.items():
            lines.append(f"  {problem}")
            lines += [f"      in [{label}]" for label in labels]
        raise SweepError("\n".join(lines))
    return _name(configs)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:6]


def _unique(names: list[str], keys: list) -> list[str]:
    """Names made unique by a digest of their key where two different keys share one."""
    owners = defaultdict(set)
    for name, key in zip(names, keys):
        owners[name].add(_digest(key))
    return [n if len(owners[n]) == 1 else f"{n}-{_digest(k)}" for n, k in zip(names, keys)]


def _name(configs: list[tuple[list[str], dict]]) -> list[Point]:
    """Readable, stable ids: backend-model-quant-b<batch>-c<context>-n<new>; groups backend-model-quant."""
    group_keys, group_names, point_names = [], [], []
    for _, c in configs:
        w = c["workload"]
        stem = f"{c['backend']['name']}-{model_spec(c['model']).name}-{c['quant']['name']}"
        group_keys.append({**c, "workload": {k: v for k, v in w.items() if k not in PER_POINT},
                           "agreement": c["agreement"]["reference"]})
        group_names.append(stem)
        point_names.append(f"{stem}-b{w['batch_size']}-c{w['context_len']}-n{w['new_tokens']}")
    groups = _unique(group_names, group_keys)
    ids = _unique(point_names, [c for _, c in configs])
    return [Point(pid, g, combo, config) for pid, g, (combo, config) in zip(ids, groups, configs)]


# ---- validation ------------------------------------------------------------------------------------
def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def point_problems(c: dict) -> list[str]:
    """What is wrong with one point's config, each problem starting with the key it concerns."""
    out = []
    b, m, q, w, a = c["backend"], c["model"], c["quant"], c["workload"], c["agreement"]
    cls = None
    if not b.get("_target_"):
        out.append(f"backend={b.get('name')}: no _target_ (the backend class) in its yaml")
    else:
        try:
            cls = load_class(b["_target_"])
        except Exception as e:
            out.append(f"backend._target_={b['_target_']}: cannot import ({type(e).__name__}: {e})")
    python = b.get("python")
    if python and not (shutil.which(python) or os.access(python, os.X_OK)):
        out.append(f"backend.python={python}: not an executable")
    if q["name"] not in QUANT_MODES:
        out.append(f"quant={q['name']}: unknown quant mode; known: {list(QUANT_MODES)}")
    elif cls is not None:
        supported = tuple(b.get("quants") or cls.quants)
        if q["name"] not in supported:
            out.append(f"quant={q['name']}: backend {b['name']} supports only {list(supported)}")

    spec = None
    if m.get("path"):
        if not Path(m["path"]).is_dir():
            out.append(f"model.path={m['path']}: no such directory")
        else:
            try:
                spec = model_spec(m)
            except Exception as e:
                out.append(f"model.path={m['path']}: {str(e).splitlines()[0]}")
    elif m["name"] not in SPECS:
        out.append(f"model={m['name']}: unknown model; known: {sorted(SPECS)} (or set model.path)")
    else:
        spec = model_spec(m)
    if m.get("synthetic") not in ("disk", "device"):
        out.append(f"model.synthetic={m.get('synthetic')}: expected disk or device")

    for key in ("batch_size", "context_len", "repeats", "warmup_tokens"):
        if not _positive_int(w[key]):
            out.append(f"workload.{key}={w[key]}: must be a positive integer")
    if not (_positive_int(w["new_tokens"]) and w["new_tokens"] >= 2):
        out.append(f"workload.new_tokens={w['new_tokens']}: must be an integer >= 2 (a prefill and a decode step)")
    if not (isinstance(w["warmup"], int) and w["warmup"] >= 0):
        out.append(f"workload.warmup={w['warmup']}: must be an integer >= 0")
    for key in ("timeout_s", "load_timeout_s"):
        if not (isinstance(w[key], (int, float)) and w[key] > 0):
            out.append(f"workload.{key}={w[key]}: must be a positive number")
    if a["enabled"] and not (_positive_int(a["seqs"]) and _positive_int(a["tokens"])):
        out.append(f"agreement.seqs={a['seqs']}, agreement.tokens={a['tokens']}: must be positive integers")
    lengths_valid = _positive_int(w["context_len"]) and _positive_int(w["new_tokens"]) \
        and (not a["enabled"] or _positive_int(a["tokens"]))
    if spec is not None and lengths_valid:
        need = positions(c)
        if need > spec.max_position_embeddings:
            out.append(f"workload.context_len={w['context_len']} + workload.new_tokens={w['new_tokens']}: "
                       f"{need} positions exceed max_position_embeddings={spec.max_position_embeddings} "
                       f"of {spec.name}")
    try:
        from harness.telemetry import TelemetryConfig
        TelemetryConfig.from_cfg(c["telemetry"])
    except ValueError as e:
        out.append(str(e))
    device = c["device"]
    if not (device in ("auto", "cpu", "cuda") or (isinstance(device, str) and device.startswith("cuda:"))):
        out.append(f"device={device}: expected auto, cpu, cuda or cuda:N")
    return out
