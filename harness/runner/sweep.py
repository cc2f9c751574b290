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
import inspect
import json
import os
import re
import shlex
import shutil
from collections import Counter, defaultdict
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Callable

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from harness.config import (Agreement, BackendChoice, ModelChoice, Parallel, PointConfig, SweepConfig, TelemetryConfig,
                            Workload)
from harness.model.spec import QUANT_MODES, SPECS
from harness.runner.point import Point, load_class, model_spec
from harness.runner.worker_process import REPO_ROOT


class SweepError(ValueError):
    """An invalid sweep: every problem, each with the points it affects; nothing was run."""


# ---- expansion -------------------------------------------------------------------------------------
def plain(cfg: DictConfig, keys) -> dict:
    """The keys of a composed config as plain, resolved Python values."""
    return {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k] for k in keys}


def combinations(config_loader, overrides: list[str], arms: list[str] = ()) -> list[list[str]]:
    """The cartesian product of the swept values, as one override list per point; with `arms`
    (engine set-ups compared in one run: "backend=vllm backend.moe_path=marlin"), that product
    once per arm, the arm's overrides last."""
    parser = OverridesParser.create(config_loader=config_loader)
    parsed = parser.parse_overrides(overrides)
    product = BasicSweeper.split_arguments(parsed, None)[0]
    if not arms:
        return product
    outside = {o.key_or_group for o in parsed}  # what the command line and the sweep's params set
    combos = []
    for arm in arms:
        try:
            own = shlex.split(str(arm))
            keys = [o.key_or_group for o in parser.parse_overrides(own) if not o.is_sweep_override()]
        except Exception as e:  # Hydra's own message names the bad override
            raise SweepError(f"arms: {arm!r} is not a list of overrides: {_first_lines(e)}") from None
        if len(keys) < len(own) or not own:
            raise SweepError(f"arms: {arm!r}: an arm is one set-up (key=value ...); sweep values with -m "
                             "on the command line or in hydra.sweeper.params")
        if both := sorted(outside & set(keys)):
            raise SweepError(f"arms: {arm!r} sets {', '.join(both)}, which the command line or the sweep also "
                             "sets; set it in every arm or outside the arms, not both")
        combos += [c + own for c in product]
    return combos


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
    """backend.python as an absolute path. A relative path (.venv-vllm/bin/python) is taken from
    the working directory where it exists there, else from the checkout the harness runs from,
    where the backend yamls' setup scripts put it."""
    if not python or "/" not in python:
        return python  # null, or a command name found on PATH
    path = Path(python).expanduser()
    if not path.is_absolute() and not path.exists():
        path = REPO_ROOT / path
    return os.path.normpath(path.absolute())  # no resolve(): a venv's python is a symlink


def _unknown_keys(node, schema: type, prefix: str = "") -> list[str]:
    """Keys the schema does not declare (`+key=value` adds them past Hydra's own struct check),
    each named and taken out of `node`, so the rest of the point can still be checked."""
    known = {f.name: f for f in fields(schema)}
    out = []
    for k in [k for k in node if k not in known and k != "hydra"]:
        out.append(f"{prefix}{k}: unknown key; known: {sorted(known)}")
        with open_dict(node):
            del node[k]
    for name, f in known.items():
        if is_dataclass(f.default_factory) and name in node:
            out += _unknown_keys(node[name], f.default_factory, f"{prefix}{name}.")
    return out


def point_config(cfg: DictConfig) -> PointConfig:
    """The typed config of one composed point; paths made absolute."""
    def backend(node) -> BackendChoice:
        b = BackendChoice.from_yaml(OmegaConf.to_container(node, resolve=True))
        b.python = _interpreter(b.python)
        return b

    model = ModelChoice(**OmegaConf.to_container(cfg.model, resolve=True))
    if model.path:
        model.path = str(Path(model.path).expanduser().resolve())
    a = cfg.agreement
    return PointConfig(backend(cfg.backend), model, cfg.quant.name, Workload(**OmegaConf.to_container(cfg.workload)),
                       TelemetryConfig.from_cfg(OmegaConf.to_container(cfg.telemetry)),
                       Agreement(a.enabled, a.seqs, a.tokens, backend(a.reference)), cfg.device,
                       Parallel(**OmegaConf.to_container(cfg.parallel)))


def _first_lines(e: Exception) -> str:
    """Hydra's message of a failed composition: its first line, and the line that names the key."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return " ".join(lines[:2])


def expand(compose: Callable[[list[str]], DictConfig], combos: list[list[str]]) -> list[Point]:
    """Compose, resolve and validate every combination; raise SweepError listing every problem."""
    problems: dict[str, list[str]] = defaultdict(list)
    configs: list[tuple[list[str], PointConfig]] = []
    # An override that some combinations lack is swept (arms add theirs to some only).
    swept = {o for o, n in Counter(o for c in combos for o in set(c)).items() if n < len(combos)}
    for combo in combos:
        label = " ".join(o for o in combo if o in swept) or "the only point"
        try:
            cfg = compose(combo)
            extra = _auto(cfg, compose)
            if extra:
                combo = combo + extra
                cfg = compose(combo)
            unknown = _unknown_keys(cfg, SweepConfig)
            config = point_config(cfg)
        except Exception as e:  # Hydra names the group or key it could not compose
            problems[_first_lines(e)].append(label)
            continue
        for problem in unknown + point_problems(config):
            problems[problem].append(label)
        configs.append((combo, config))
    seen: dict[str, str] = {}
    for combo, config in configs:
        key = json.dumps(config.to_dict(), sort_keys=True)
        if key in seen:
            problems["the same point twice (a swept key that is not part of a point?)"].append(" ".join(combo))
        seen[key] = " ".join(combo)
    if problems:
        lines = [f"invalid sweep ({len(combos)} points), nothing was run:"]
        for problem, labels in problems.items():
            lines.append("  " + problem.replace("\n", "\n    "))
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


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))


def _setups(configs: list[PointConfig]) -> list[str]:
    """Each point's engine set-up where its backend runs more than one in the sweep: the backend
    options whose values differ among that backend's points ("moe_path=marlin"); "" where it runs one."""
    options = defaultdict(list)
    for c in configs:
        options[c.backend.name].append(c.backend.options)
    varying = {name: [k for k in sorted({k for o in opts for k in o}) if len({_text(o.get(k)) for o in opts}) > 1]
               for name, opts in options.items()}
    return [" ".join(f"{k}={_text(c.backend.options.get(k))}" for k in varying[c.backend.name]) for c in configs]


def _slug(setup: str) -> str:
    """A set-up in a point id: moe_path=marlin -> moe_path.marlin; one too long or odd to read, ''
    (a digest tells such points apart)."""
    slug = "-".join(part.replace("=", ".", 1) for part in setup.split())
    return slug if len(slug) <= 40 and re.fullmatch(r"[A-Za-z0-9._-]*", slug) else ""


def _name(configs: list[tuple[list[str], PointConfig]]) -> list[Point]:
    """Readable, stable ids: backend[-setup]-model-quant-b<batch>-c<context>-n<new>; groups
    backend[-setup]-model-quant."""
    setups = _setups([c for _, c in configs])
    group_keys, group_names, point_names = [], [], []
    for (_, c), setup in zip(configs, setups):
        w = c.workload
        p = c.parallel
        engine = "-".join(filter(None, (c.backend.name, _slug(setup))))
        stem = f"{engine}-{model_spec(c.model).name}-{c.quant}" + (
            f"-tp{p.tp}ep{p.ep}dp{p.dp}" if p.gpu_count > 1 else "")
        group_keys.append(c.group_key())
        group_names.append(stem)
        point_names.append(f"{stem}-b{w.batch_size}-c{w.context_len}-n{w.new_tokens}")
    groups = _unique(group_names, group_keys)
    ids = _unique(point_names, [c.to_dict() for _, c in configs])
    return [Point(pid, g, combo, config, setup)
            for pid, g, (combo, config), setup in zip(ids, groups, configs, setups)]


# ---- validation ------------------------------------------------------------------------------------
def _options(cls: type) -> set[str] | None:
    """The engine options a backend class takes: the named parameters of its constructors, up the
    classes whose constructor passes the rest on (**options), to the contract's Backend, and those
    of its `engine_options` class, where it hands **options to one."""
    names: set[str] = set()
    if helper := getattr(cls, "engine_options", None):
        names |= {p for p in inspect.signature(helper.__init__).parameters if p != "self"}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        if klass.__module__ == "harness.engine":
            return names
        params = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names
    return names


def _backend_problems(b: BackendChoice, key: str, quant: str | None, device: str,
                      parallel: Parallel | None = None) -> list[str]:
    if not b.target:
        return [f"{key}={b.name}: no _target_ (the backend class) in its yaml"]
    try:
        cls = load_class(b.target)
    except Exception as e:
        return [f"{key}._target_={b.target}: cannot import ({type(e).__name__}: {e})"]
    out = []
    known = _options(cls)
    out += [f"{key}.{k}: not an option of {b.target}; options: {sorted(known)}" for k in b.options if k not in known]
    if b.python and not (shutil.which(b.python) or os.access(b.python, os.X_OK)):
        out.append(f"{key}.python={b.python}: not an executable")
    if quant is not None and quant in QUANT_MODES:
        supported = tuple(b.quants or cls.quants)
        if quant not in supported:
            out.append(f"quant={quant}: backend {b.name} supports only {list(supported)}")
        else:
            out += cls.problems(quant, device, b.options)
    return out + (parallel or Parallel()).refused_by(b.name, cls.parallel_keys)


def point_problems(c: PointConfig) -> list[str]:
    """What is wrong with one point's config, each problem starting with the key it concerns."""
    out = []
    if c.quant not in QUANT_MODES:
        out.append(f"quant={c.quant}: unknown quant mode; known: {list(QUANT_MODES)}")
    out += _backend_problems(c.backend, "backend", c.quant, c.device, c.parallel)
    if c.agreement.enabled:
        out += _backend_problems(c.agreement.reference, "agreement.reference", None, c.device)

    m, spec = c.model, None
    if m.path:
        if not Path(m.path).is_dir():
            out.append(f"model.path={m.path}: no such directory")
        else:
            try:
                spec = model_spec(m)
            except Exception as e:  # the validator lists every problem, one per line
                out.append(f"model.path={m.path}: " + str(e).strip())
    elif m.name not in SPECS:
        out.append(f"model={m.name}: unknown model; known: {sorted(SPECS)} (or set model.path)")
    else:
        spec = model_spec(m)
    if m.synthetic not in ("disk", "device"):
        out.append(f"model.synthetic={m.synthetic}: expected disk or device")

    out += c.parallel.problems(spec.num_attention_heads if spec else None, spec.num_local_experts if spec else None)
    w, a = c.workload, c.agreement
    out += w.problems()
    if a.enabled and not (a.seqs > 0 and a.tokens > 0):
        out.append(f"agreement.seqs={a.seqs}, agreement.tokens={a.tokens}: must be positive integers")
    if spec is not None and not w.problems() and c.positions() > spec.max_position_embeddings:
        out.append(f"workload.context_len={w.context_len} + workload.new_tokens={w.new_tokens}: "
                   f"{c.positions()} positions exceed max_position_embeddings={spec.max_position_embeddings} "
                   f"of {spec.name}")
    device = c.device
    if not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
        out.append(f"device={device}: expected auto, cpu, cuda or cuda:N")
    elif device.startswith("cuda") and c.backend.python is None and not _cuda():
        out.append(f"device={device}: no CUDA GPU is visible here (torch.cuda.is_available() is false); "
                   "use device=auto or device=cpu")
    return out
