"""GPT-OSS checkpoints in the Hugging Face layout they ship in: read, validate, write.

A directory holds config.json, generation_config.json, and either one model.safetensors or shards
model-0000i-of-0000N.safetensors (N is the last index, not the count) listed by
model.safetensors.index.json. Validation runs before any engine starts and reports every problem
at once, each naming the file, the tensor, what was expected and what was found.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Iterable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from harness.model.spec import ModelSpec

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
_DTYPE_BYTES = {"BF16": 2, "U8": 1, "F16": 2, "F32": 4, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1}


class CheckpointError(ValueError):
    def __init__(self, path: Path, problems: list[str]):
        self.path, self.problems = Path(path), problems
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        super().__init__(f"invalid checkpoint {path}:\n  " + "\n  ".join(shown))


def _header(file: Path) -> tuple[dict, int]:
    """The safetensors header of `file` ({name: {dtype, shape, data_offsets}}) and where data starts."""
    with open(file, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError("shorter than a safetensors header")
        n = struct.unpack("<Q", raw)[0]
        text = f.read(n)
        if len(text) < n:
            raise ValueError(f"header says {n} bytes, file ends first")
    header = json.loads(text)
    header.pop("__metadata__", None)
    return header, 8 + n


def _weight_map(path: Path, problems: list[str]) -> dict[str, str]:
    index = path / INDEX
    if index.is_file():
        try:
            return json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            problems.append(f"{INDEX}: unreadable ({e})")
            return {}
    if (path / SINGLE).is_file():
        try:
            return {name: SINGLE for name in _header(path / SINGLE)[0]}
        except (OSError, ValueError) as e:
            problems.append(f"{SINGLE}: unreadable header ({e})")
            return {}
    problems.append(f"neither {INDEX} nor {SINGLE} found")
    return {}


def _layout(weight_map: dict[str, str]) -> str:
    return "mxfp4" if any(n.endswith("_blocks") for n in weight_map) else "bf16"


def validate_checkpoint(path: str | Path) -> ModelSpec:
    """Check every file and tensor of the checkpoint at `path` against its config; return the spec.
    Raises CheckpointError listing every problem found."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(path, ["not a directory"])
    if not (path / "config.json").is_file():
        raise CheckpointError(path, ["config.json: missing"])
    try:
        spec = ModelSpec.from_hf_config(path / "config.json")
    except (ValueError, TypeError, json.JSONDecodeError) as e:
        raise CheckpointError(path, [f"config.json: {e}"]) from None
    problems: list[str] = []
    weight_map = _weight_map(path, problems)
    quant = _layout(weight_map)
    declared = (json.loads((path / "config.json").read_text()).get("quantization_config") or {}).get("quant_method")
    if quant == "mxfp4" and declared != "mxfp4":
        problems.append(f"config.json: quantization_config.quant_method is {declared!r} but the tensors are MXFP4 "
                        "(*_blocks/*_scales)")
    expected = spec.tensors(quant)
    for name in expected.keys() - weight_map.keys():
        problems.append(f"{name}: missing (expected shape {list(expected[name][0])} {expected[name][1]})")
    for name in sorted(weight_map.keys() - expected.keys()):
        problems.append(f"{weight_map[name]}: unexpected tensor {name}")
    for file in sorted(set(weight_map.values())):
        f = path / file
        if not f.is_file():
            names = [n for n, v in weight_map.items() if v == file]
            problems.append(f"{file}: missing file, named by the index for {len(names)} tensors (e.g. {names[0]})")
            continue
        try:
            header, data_start = _header(f)
        except (OSError, ValueError) as e:
            problems.append(f"{file}: unreadable safetensors header ({e})")
            continue
        end = max((info["data_offsets"][1] for info in header.values()), default=0)
        size = f.stat().st_size
        if data_start + end > size:
            problems.append(f"{file}: truncated: tensors need {data_start + end} bytes, the file has {size}")
        for name, info in header.items():
            if weight_map.get(name) != file:
                if name in expected:
                    where = f"places in {weight_map[name]}" if name in weight_map else "does not list"
                    problems.append(f"{file}: holds {name}, which the index {where}")
                continue
            shape, dtype = expected[name]
            if list(info["shape"]) != list(shape):
                problems.append(f"{file}: {name} has shape {info['shape']}, expected {list(shape)}")
            if info["dtype"] != dtype:
                problems.append(f"{file}: {name} has dtype {info['dtype']}, expected {dtype}")
        for name in (n for n, v in weight_map.items() if v == file and n not in header):
            problems.append(f"{file}: {name} is named by the index but not in the file")
    if problems:
        raise CheckpointError(path, problems)
    return spec


class Checkpoint:
    """A validated checkpoint directory; tensors are read one at a time (memory-mapped)."""

    def __init__(self, path: str | Path, validate: bool = True):
        self.path = Path(path)
        problems: list[str] = []
        self.spec = validate_checkpoint(self.path) if validate else ModelSpec.from_hf_config(self.path / "config.json")
        self._map = _weight_map(self.path, problems)
        if problems:
            raise CheckpointError(self.path, problems)
        self.quant = _layout(self._map)

    def names(self) -> list[str]:
        return list(self._map)

    def get(self, name: str, device: str | torch.device = "cpu") -> torch.Tensor:
        if name not in self._map:
            raise KeyError(f"{self.path}: no tensor {name!r}")
        with safe_open(self.path / self._map[name], framework="pt") as f:
            t = f.get_tensor(name)
        return t.to(device)


def _shard_name(i: int, last: int) -> str:
    return f"model-{i:05d}-of-{last:05d}.safetensors"


def _save_atomic(tensors: dict[str, torch.Tensor], file: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{file.name}.", dir=file.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": "pt"})
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_checkpoint(path: str | Path, spec: ModelSpec, tensors: Iterable[tuple[str, torch.Tensor]],
                     quant: str = "mxfp4", max_shard_bytes: float = 4.8e9) -> Path:
    """Write `tensors` (in any order, one at a time) as sharded safetensors with an index, plus
    config.json and generation_config.json. Host memory holds at most one shard."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    expected = spec.tensors(quant)
    shards: list[list[str]] = [[]]
    pending: dict[str, torch.Tensor] = {}
    pending_bytes, total, written = 0, 0, []

    def flush():
        nonlocal pending, pending_bytes
        tmp = path / f".shard-{len(written):05d}.safetensors"
        _save_atomic(pending, tmp)
        written.append((tmp, list(pending)))
        pending, pending_bytes = {}, 0

    for name, t in tensors:
        if name not in expected:
            raise ValueError(f"write_checkpoint: {name!r} is not a tensor of {spec.name} ({quant})")
        shape, dtype = expected[name]
        if tuple(t.shape) != shape:
            raise ValueError(f"write_checkpoint: {name} has shape {list(t.shape)}, expected {list(shape)}")
        nbytes = t.numel() * t.element_size()
        if pending and pending_bytes + nbytes > max_shard_bytes:
            flush()
        pending[name] = t.detach().to("cpu").contiguous()
        pending_bytes += nbytes
        total += nbytes
    if pending:
        flush()
    missing = expected.keys() - {n for _, names in written for n in names}
    if missing:
        raise ValueError(f"write_checkpoint: {len(missing)} tensors of {spec.name} not given, e.g. {sorted(missing)[0]}")
    weight_map = {}
    for i, (tmp, names) in enumerate(written):
        final = path / _shard_name(i, len(written) - 1)
        os.replace(tmp, final)
        weight_map.update({n: final.name for n in names})
    (path / INDEX).write_text(json.dumps({"metadata": {"total_size": total},
                                          "weight_map": dict(sorted(weight_map.items()))}, indent=2))
    (path / "config.json").write_text(json.dumps(spec.to_hf_config(quant), indent=2))
    eos = [spec.eos_token_id, spec.pad_token_id]
    (path / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": spec.bos_token_id, "eos_token_id": eos, "pad_token_id": spec.pad_token_id,
         "do_sample": True, "transformers_version": "4.55.0.dev0"}, indent=2))
    return path
