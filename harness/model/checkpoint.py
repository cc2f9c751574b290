"""GPT-OSS checkpoints in the Hugging Face layout the models ship in: read, validate, write.

A directory holds config.json (with quantization_config for MXFP4), generation_config.json and
either one model.safetensors or shards model-0000i-of-0000N.safetensors (N the last index, not
the count, as GPT-OSS names them) listed by model.safetensors.index.json. A directory downloaded
from the hub loads unchanged. Tensors are read through safetensors' memory map, one at a time, so
even gpt-oss-120b never needs its 65 GB in memory.

Validation reads only config.json, the index and each shard's header, before any engine starts,
and reports every problem it finds in one CheckpointError naming the file, the tensor, what was
expected and what was found.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open

from harness.model.spec import MXFP4_BLOCK, ModelSpec

CONFIG, GENERATION_CONFIG = "config.json", "generation_config.json"
INDEX, SINGLE = "model.safetensors.index.json", "model.safetensors"
_DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "U8": 1, "I8": 1, "I16": 2, "I32": 4, "I64": 8, "BOOL": 1,
                "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
TORCH_DTYPES = {"BF16": torch.bfloat16, "U8": torch.uint8}  # the dtypes of GPT-OSS checkpoints
_MAX_LISTED = 20  # problems spelled out in one error; the rest are counted


class CheckpointError(ValueError):
    """A checkpoint directory that engines must not load; `problems` lists every problem found."""

    def __init__(self, path: str | Path, problems: list[str]):
        self.path, self.problems = Path(path), problems
        shown = problems[:_MAX_LISTED]
        if len(problems) > _MAX_LISTED:
            shown.append(f"... and {len(problems) - _MAX_LISTED} more")
        super().__init__(f"invalid checkpoint {path}:\n  " + "\n  ".join(shown))


def _shape(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _read_header(file: Path) -> tuple[dict[str, dict], list[str]]:
    """The tensors a safetensors file describes (name -> dtype, shape, data_offsets) and the
    problems of the file itself: a header or data that the file is too short to hold."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            return {}, [f"{file.name}: truncated: {size} bytes, too short for a safetensors header"]
        (n,) = struct.unpack("<Q", raw)
        if 8 + n > size:
            return {}, [f"{file.name}: truncated: the header needs {8 + n:,} bytes, the file has {size:,}"]
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            return {}, [f"{file.name}: unreadable safetensors header ({e})"]
    header.pop("__metadata__", None)
    problems = []
    for name, t in header.items():
        begin, end = t["data_offsets"]
        if t["dtype"] in _DTYPE_BYTES and end - begin != math.prod(t["shape"]) * _DTYPE_BYTES[t["dtype"]]:
            problems.append(f"{file.name}: {name} {t['dtype']} {_shape(t['shape'])} has {end - begin:,} bytes of data")
    data_end = 8 + n + max((t["data_offsets"][1] for t in header.values()), default=0)
    if data_end > size:
        problems.append(f"{file.name}: truncated: the header describes {data_end:,} bytes, the file has {size:,}")
    elif data_end < size:
        problems.append(f"{file.name}: {size - data_end:,} bytes after the data that the header describes")
    return header, problems


def _quant_of(names: Iterable[str], cfg: dict) -> str:
    """'mxfp4' when the expert weights are _blocks/_scales, 'bf16' for transformers' dequantised
    layout; with neither present, what config.json declares."""
    for name in names:
        if name.endswith("mlp.experts.gate_up_proj_blocks"):
            return "mxfp4"
        if name.endswith("mlp.experts.gate_up_proj"):
            return "bf16"
    return "mxfp4" if "quantization_config" in cfg else "bf16"


def _scan(path: Path) -> tuple[ModelSpec, str, dict[str, tuple[str, dict]], list[str]]:
    """(spec, quant, tensor -> (file, header entry), problems) of a checkpoint directory."""
    if not path.is_dir():
        raise CheckpointError(path, ["not a directory"])
    if not (path / CONFIG).is_file():
        raise CheckpointError(path, [f"{CONFIG} is missing"])
    try:
        cfg = json.loads((path / CONFIG).read_text())
        spec = ModelSpec.from_hf_config(cfg)
    except ValueError as e:  # json.JSONDecodeError is a ValueError
        raise CheckpointError(path, [f"{CONFIG}: {e}"]) from None

    problems: list[str] = []
    if (path / INDEX).is_file():
        try:
            weight_map = json.loads((path / INDEX).read_text())["weight_map"]
        except (ValueError, KeyError) as e:
            raise CheckpointError(path, [f"{INDEX}: no readable weight_map ({e!r})"]) from None
    elif (path / SINGLE).is_file():
        weight_map = None
    else:
        raise CheckpointError(path, [f"neither {INDEX} nor {SINGLE} is there"])

    files = sorted(set(weight_map.values())) if weight_map is not None else [SINGLE]
    found: dict[str, tuple[str, dict]] = {}
    lost: set[str] = set()  # tensors of missing files: reported once, with the file
    for file in files:
        if not (path / file).is_file():
            listed = [t for t, f in weight_map.items() if f == file]
            problems.append(f"{INDEX}: maps {len(listed)} tensors (e.g. {listed[0]}) to {file}, which does not exist")
            lost.update(listed)
            continue
        header, file_problems = _read_header(path / file)
        problems += file_problems
        for name, entry in header.items():
            if weight_map is not None and weight_map.get(name) != file:
                problems.append(f"{file}: holds {name}, which {INDEX} "
                                + (f"maps to {weight_map[name]}" if name in weight_map else "does not list"))
            else:
                found[name] = (file, entry)
    if weight_map is not None:
        for name, file in weight_map.items():
            if name not in found and (path / file).is_file():
                problems.append(f"{INDEX}: maps {name} to {file}, which does not hold it")

    quant = _quant_of(found, cfg)
    declared = (cfg.get("quantization_config") or {}).get("quant_method")
    if declared not in (None, "mxfp4"):
        problems.append(f"{CONFIG}: quantization_config.quant_method={declared!r}, expected 'mxfp4' or none")
    elif (declared == "mxfp4") != (quant == "mxfp4"):
        problems.append(f"{CONFIG}: " + ("declares MXFP4, but the expert weights are bf16 (mlp.experts.gate_up_proj)"
                                         if declared else "has no quantization_config, but the expert weights are "
                                         "MXFP4 (mlp.experts.gate_up_proj_blocks)"))

    contradictions = _contradictions(spec, quant, found)
    problems += contradictions
    if not contradictions:  # otherwise every tensor would differ from the config for one reason
        problems += _compare(spec, quant, found, lost, INDEX if weight_map is not None else SINGLE)
    return spec, quant, found, problems


def _contradictions(spec: ModelSpec, quant: str, found: dict[str, tuple[str, dict]]) -> list[str]:
    """Architecture fields of config.json that the tensors' shapes disagree with."""
    def dim(name, axis, scale=1):
        if name in found:
            file, entry = found[name]
            return entry["shape"][axis] * scale, name, file, entry["shape"]
        return None

    down = ("model.layers.0.mlp.experts.down_proj_blocks", 2, MXFP4_BLOCK) if quant == "mxfp4" \
        else ("model.layers.0.mlp.experts.down_proj", 1)
    checks = {
        "vocab_size": (spec.vocab_size, dim("model.embed_tokens.weight", 0)),
        "hidden_size": (spec.hidden_size, dim("model.embed_tokens.weight", 1)),
        "num_local_experts": (spec.num_local_experts, dim("model.layers.0.mlp.router.weight", 0)),
        "num_attention_heads": (spec.num_attention_heads, dim("model.layers.0.self_attn.sinks", 0)),
        "num_attention_heads * head_dim": (spec.q_dim, dim("model.layers.0.self_attn.q_proj.weight", 0)),
        "num_key_value_heads * head_dim": (spec.kv_dim, dim("model.layers.0.self_attn.k_proj.weight", 0)),
        "intermediate_size": (spec.intermediate_size, dim(*down)),
    }
    out = [f"{CONFIG} says {field} = {want}, but {name} in {file} has shape {_shape(shape)} ({field} = {got})"
           for field, (want, seen) in checks.items() if seen is not None
           for got, name, file, shape in [seen] if got != want]
    layers = {int(m.group(1)) for name in found if (m := re.match(r"model\.layers\.(\d+)\.", name))}
    if layers and max(layers) + 1 != spec.num_hidden_layers:
        out.append(f"{CONFIG} says num_hidden_layers = {spec.num_hidden_layers}, but the tensors have layers "
                   f"0..{max(layers)} ({max(layers) + 1} layers)")
    return out


def _compare(spec: ModelSpec, quant: str, found: dict[str, tuple[str, dict]], lost: set[str],
             where: str) -> list[str]:
    expected = spec.tensors(quant)
    out = []
    for name, (shape, dtype) in expected.items():
        if name in lost:
            continue
        if name not in found:
            out.append(f"{where}: tensor {name} is missing (expected {dtype} {_shape(shape)})")
            continue
        file, entry = found[name]
        if tuple(entry["shape"]) != shape:
            out.append(f"{file}: {name} has shape {_shape(entry['shape'])}, expected {_shape(shape)}")
        if entry["dtype"] != dtype:
            out.append(f"{file}: {name} has dtype {entry['dtype']}, expected {dtype}")
    for name, (file, entry) in found.items():
        if name not in expected:
            out.append(f"{file}: unexpected tensor {name} {entry['dtype']} {_shape(entry['shape'])} "
                       f"(not part of {spec.name} in {quant} layout)")
    return out


def validate_checkpoint(path: str | Path) -> ModelSpec:
    """The spec of a valid checkpoint directory; otherwise a CheckpointError listing every problem."""
    spec, _, _, problems = _scan(Path(path))
    if problems:
        raise CheckpointError(path, problems)
    return spec


class Checkpoint:
    """A checkpoint directory: its spec, its quant layout, and its tensors read one at a time."""

    def __init__(self, path: str | Path, validate: bool = True):
        self.path = Path(path)
        self.spec, self.quant, found, problems = _scan(self.path)
        if validate and problems:
            raise CheckpointError(self.path, problems)
        self._files = {name: file for name, (file, _) in found.items()}
        self._open: dict[str, object] = {}

    def names(self) -> list[str]:
        return list(self._files)

    def get(self, name: str, device: str | torch.device = "cpu") -> torch.Tensor:
        """The tensor in its file dtype (bf16 or uint8) on `device`."""
        if name not in self._files:
            raise KeyError(f"{name!r} is not in checkpoint {self.path}")
        file = self._files[name]
        if file not in self._open:
            self._open[file] = safe_open(self.path / file, framework="pt", device="cpu")
        return self._open[file].get_tensor(name).to(device)


def plan_shards(spec: ModelSpec, quant: str = "mxfp4", max_shard_bytes: float = 4.8e9) -> dict[str, list[str]]:
    """file -> its tensors: greedy in the spec's tensor order, a new shard when the next tensor would
    pass max_shard_bytes. Shards are named as GPT-OSS names them, the "of" number being the last
    index, not the count; a single shard is model.safetensors."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, (shape, dtype) in spec.tensors(quant).items():
        nbytes = math.prod(shape) * _DTYPE_BYTES[dtype]
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    if len(shards) == 1:
        return {SINGLE: shards[0]}
    return {f"model-{i:05d}-of-{len(shards) - 1:05d}.safetensors": shard for i, shard in enumerate(shards)}


def write_checkpoint(path: str | Path, spec: ModelSpec, tensors: Iterable[tuple[str, torch.Tensor]],
                     quant: str = "mxfp4", max_shard_bytes: float = 4.8e9) -> Path:
    """Write a checkpoint of `spec` into directory `path` from (name, tensor) pairs in any order.

    Shards are planned from the spec (plan_shards), so every tensor's place in its file is known up
    front and its bytes are written there as it arrives: host memory holds one tensor, not one
    shard. Each file appears under its final name only once complete; a write that fails removes
    every file it made."""
    path = Path(path)
    expected = spec.tensors(quant)
    shards = plan_shards(spec, quant, max_shard_bytes)
    path.mkdir(parents=True, exist_ok=True)
    if any(path.glob("model*.safetensors*")):
        raise ValueError(f"write_checkpoint: {path} already holds safetensors files; give an empty directory")

    shard_writers = [_ShardWriter(path / file, {n: expected[n] for n in names}) for file, names in shards.items()]
    writers = {name: w for w in shard_writers for name in w.pending}
    try:
        for name, tensor in tensors:
            if name not in expected:
                raise ValueError(f"write_checkpoint: {name} is not a tensor of {spec.name} in {quant} layout")
            writers[name].put(name, tensor)
        unwritten = [name for w in shard_writers for name in w.pending]
        if unwritten:
            raise ValueError(f"write_checkpoint: {len(unwritten)} tensors of {spec.name} were not given "
                             f"(e.g. {unwritten[0]})")
    except BaseException:
        for w in shard_writers:
            w.discard()
        raise

    if len(shards) > 1:
        total = sum(math.prod(shape) * _DTYPE_BYTES[dtype] for shape, dtype in expected.values())
        weight_map = {name: file for file, shard in shards.items() for name in shard}
        _write_json(path / INDEX, {"metadata": {"total_size": total}, "weight_map": weight_map})
    _write_json(path / CONFIG, spec.to_hf_config(quant))
    _write_json(path / GENERATION_CONFIG, generation_config(spec))
    return path


def generation_config(spec: ModelSpec) -> dict:
    """As GPT-OSS's converter writes it: eos is <|return|> then <|endoftext|>, which is also pad."""
    return {"bos_token_id": spec.bos_token_id, "eos_token_id": [spec.eos_token_id, spec.pad_token_id],
            "pad_token_id": spec.pad_token_id}


class _ShardWriter:
    """One safetensors file written in place: its header is fixed by the planned tensors, and each
    tensor's bytes go to their offset as they arrive (the format: 8-byte little-endian header
    length, JSON header padded with spaces to 8 bytes, then the data)."""

    def __init__(self, file: Path, tensors: dict[str, tuple[tuple[int, ...], str]]):
        self.file, self.partial = file, file.with_name(file.name + ".partial")
        # Wider dtypes first, so every tensor starts aligned to its element size.
        order = sorted(tensors, key=lambda n: -_DTYPE_BYTES[tensors[n][1]])
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name in order:
            shape, dtype = tensors[name]
            nbytes = math.prod(shape) * _DTYPE_BYTES[dtype]
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.header, self.data_start, self.size = header, 8 + len(raw), 8 + len(raw) + offset
        self.raw_header = struct.pack("<Q", len(raw)) + raw
        self.pending = dict(tensors)
        self.handle = None

    def put(self, name: str, tensor: torch.Tensor):
        shape, dtype = self.pending.pop(name, (None, None))
        if shape is None:
            raise ValueError(f"write_checkpoint: {name} was given twice")
        if tuple(tensor.shape) != shape or tensor.dtype != TORCH_DTYPES[dtype]:
            raise ValueError(f"write_checkpoint: {name} is {tensor.dtype} {_shape(tensor.shape)}, "
                             f"expected {TORCH_DTYPES[dtype]} {_shape(shape)}")
        if self.handle is None:
            self.handle = open(self.partial, "wb")
            self.handle.write(self.raw_header)
            self.handle.truncate(self.size)
        self.handle.seek(self.data_start + self.header[name]["data_offsets"][0])
        self.handle.write(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().data)
        if not self.pending:
            self.handle.close()
            os.replace(self.partial, self.file)

    def discard(self):
        """Remove what this writer wrote, finished or not: a failed write leaves no shard behind."""
        if self.handle is not None and not self.handle.closed:
            self.handle.close()
        self.partial.unlink(missing_ok=True)
        if self.handle is not None:
            self.file.unlink(missing_ok=True)


def _write_json(file: Path, obj: dict):
    partial = file.with_name(file.name + ".partial")
    partial.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(partial, file)
